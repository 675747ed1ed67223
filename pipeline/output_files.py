"""The check of an output file named on a command line, made before the work whose result it receives.

Why: numpy adds ``.npz`` to a name without it and PIL picks the format from the suffix, so a name that is a folder,
lacks the suffix or lies in a missing folder used to fail (or be written elsewhere) only after the work was done.
"""

from __future__ import annotations

from pathlib import Path


def output_file_problem(path: str, suffixes: tuple[str, ...]) -> str | None:
    """What is wrong with writing ``path`` (one of ``suffixes``, lower case), or None."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        return f"must end in {' or '.join(suffixes)} (the file format follows the name)"
    if p.is_dir():
        return "is a folder"
    if not p.parent.is_dir():
        return f"folder {p.parent} does not exist"
    return None
