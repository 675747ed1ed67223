"""Result files in the got10k layout: ``<dir>/<Seq>.txt`` (x,y,w,h per line, comma, 1-based OTB convention)
and ``<dir>/times/<Seq>_time.txt`` (seconds per frame, the first line is the init frame).

Why this layout: got10k's ``ExperimentOTB.report`` and pysot's loaders read it directly, and results of
other trackers downloaded in it can be scored next to ours (``python -m evaluate.otb --results DIR``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.otb_data import OTBSequence, name_aliases, parse_gt_text, read_annotation_text

META_FILE = "meta.json"

log = logging.getLogger(__name__)


def displayable(text: str) -> str:
    """``text`` with file-name bytes that are not UTF-8 (which Python holds as lone surrogates, and which a terminal,
    matplotlib or a strict encoder refuses) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def result_name(seq: OTBSequence, protocol: str) -> str:
    """File stem the protocol's toolkit expects: got10k ``Jogging.1`` / ``Human4``, pysot ``Jogging-1`` /
    ``Human4-2``. ``otb`` takes pysot's (the spelling of the OTB toolkit's Python port; the Matlab toolkit keeps
    its results in .mat files, which no text layout matches)."""
    return seq.got10k_name if protocol == "got10k" else seq.pysot_name


def write_result(tracker_dir: str | Path, stem: str, boxes_xywh: np.ndarray, times: np.ndarray | None = None) -> Path:
    """Write one sequence's boxes (``%.3f``, comma, like got10k) and, if given, its per-frame times."""
    tracker_dir = Path(tracker_dir)
    tracker_dir.mkdir(parents=True, exist_ok=True)
    path = tracker_dir / f"{stem}.txt"
    np.savetxt(path, np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4), fmt="%.3f", delimiter=",")
    if times is not None:
        (tracker_dir / "times").mkdir(exist_ok=True)
        np.savetxt(tracker_dir / "times" / f"{stem}_time.txt", np.asarray(times, dtype=np.float64), fmt="%.8f")
    return path


def find_result(tracker_dir: str | Path, seq: OTBSequence, protocol: str = "got10k") -> Path | None:
    """The result file of ``seq``: the ``protocol``'s own spelling first, then any other toolkit's
    (``Jogging-1``, ``Jogging.1``, ...). When several spellings exist (runs under both protocols in one folder)
    the protocol's wins and the others are named in a warning."""
    tracker_dir = Path(tracker_dir)
    found: list[Path] = []
    for stem in dict.fromkeys([result_name(seq, protocol), *name_aliases(seq)]):
        p = tracker_dir / f"{stem}.txt"
        if p.is_file() and not any(p.samefile(q) for q in found):  # case-insensitive file systems
            found.append(p)
    if len(found) > 1:
        log.warning(
            "%s: %s scored as %s; also there: %s",
            tracker_dir.name,
            found[0].name,
            seq.name,
            ", ".join(q.name for q in found[1:]),
        )
    return found[0] if found else None


def read_result(path: str | Path) -> np.ndarray:
    """Boxes of a result file; comma, tab or space separated (trackers in the wild use all three)."""
    path = Path(path)
    return parse_gt_text(read_annotation_text(path), str(path))


def read_times(tracker_dir: str | Path, result_path: str | Path) -> np.ndarray | None:
    """Per-frame times next to a result file (``times/<stem>_time.txt``), or None."""
    p = Path(tracker_dir) / "times" / f"{Path(result_path).stem}_time.txt"
    if not p.is_file():
        return None
    try:
        return np.asarray([float(t) for t in read_annotation_text(p).split()], dtype=np.float64)
    except ValueError as e:  # not numbers, or not a sane file: the FPS is then unknown, the scores still count
        log.warning("%s: unreadable times (%s); FPS not reported", p, e)
        return None


def write_meta(tracker_dir: str | Path, meta: dict[str, Any]) -> None:
    """Run facts a later ``--results`` evaluation cannot recover from the boxes (device, end-to-end FPS)."""
    Path(tracker_dir).mkdir(parents=True, exist_ok=True)
    (Path(tracker_dir) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(tracker_dir: str | Path) -> dict[str, Any]:
    """The run facts of `write_meta`, or {} for a folder without them or with a file of other content."""
    p = Path(tracker_dir) / META_FILE
    try:
        meta = json.loads(read_annotation_text(p)) if p.is_file() else {}
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested past the parser's depth
        log.warning("%s: unreadable (%s); device and end-to-end FPS not reported", p, e)
        return {}
    if not isinstance(meta, dict):
        return {}
    fps = meta.get("fps_end_to_end", -1.0)
    meta["fps_end_to_end"] = float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else -1.0
    return meta
