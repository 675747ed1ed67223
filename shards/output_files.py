"""Output files named on a command line: checked before the work whose result they receive, and large ``.npz``
files written one batch at a time.

Why: numpy adds ``.npz`` to a name without it and PIL picks the format from the suffix, so a name that is a folder,
lacks the suffix or lies in a missing folder used to fail (or be written elsewhere) only after the work was done.
And ``np.savez_compressed`` needs every array whole in memory: an audit dump of a few hundred batches of 227x227
crops would need gigabytes of RAM (twice, for the concatenation) where one batch's worth is enough.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

COPY_CHUNK = 16 << 20  # bytes copied from a spool file into the zip at a time


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


class NpzStream:
    """An ``.npz`` (deflated, as ``np.savez_compressed`` writes it) built from rows appended batch by batch.

    Numeric arrays go to raw spool files in a temporary folder beside ``path`` (so memory holds one batch); text
    arrays, a few bytes a row, stay in memory. ``close()`` writes each array as one ``NAME.npy`` zip member,
    copying the spool in chunks, into a temporary file renamed onto ``path``: a failed run leaves no partial file.
    Use as a context manager; an exception inside discards everything.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._spool = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._rows: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}  # numeric: dtype, row shape, rows so far
        self._text: dict[str, list[np.ndarray]] = {}
        self._whole: dict[str, np.ndarray] = {}

    def append(self, name: str, rows: Any) -> None:
        """Add ``rows`` (first axis) to array ``name``; every batch of one array has the same dtype and row shape."""
        a = np.asarray(rows)
        if a.ndim == 0:
            raise ValueError(f"{name}: rows need a first axis")
        if a.dtype.kind in "USO":
            self._text.setdefault(name, []).append(a.astype(str))
            return
        dtype, shape, n = self._rows.get(name, (a.dtype, a.shape[1:], 0))
        if (a.dtype, a.shape[1:]) != (dtype, shape):
            raise ValueError(f"{name}: rows of {a.dtype} {a.shape[1:]} after rows of {dtype} {shape}")
        with open(self._spool / name, "ab") as f:
            f.write(np.ascontiguousarray(a).tobytes())
        self._rows[name] = (dtype, shape, n + len(a))

    def put(self, name: str, array: Any) -> None:
        """A small array written as it is (metadata, say)."""
        self._whole[name] = np.asarray(array)

    def close(self) -> None:
        """Write the ``.npz`` and remove the spool."""
        tmp = self.path.with_name(f".{self.path.name}.part")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                for name, (dtype, shape, n) in self._rows.items():
                    descr = np.lib.format.dtype_to_descr(dtype)
                    header = {"descr": descr, "fortran_order": False, "shape": (n, *shape)}
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out, open(self._spool / name, "rb") as src:
                        np.lib.format.write_array_header_1_0(out, header)
                        shutil.copyfileobj(src, out, COPY_CHUNK)
                small = {n: np.concatenate(parts) for n, parts in self._text.items()} | self._whole
                for name, a in small.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array(out, a, allow_pickle=False)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            self.discard()

    def discard(self) -> None:
        """Remove the spool without writing anything."""
        shutil.rmtree(self._spool, ignore_errors=True)

    def __enter__(self) -> NpzStream:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
