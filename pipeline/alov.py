"""ALOV300++ annotations, read exactly as the authors' ``loader_alov.cpp`` reads them.

Layout: ``<ann_root>/<category>/<video>.ann`` and ``<frames_root>/<category>/<video>/*.jpg``; categories and
``.ann`` files are taken in sorted order. An ``.ann`` line is ``frame Ax Ay Bx By Cx Cy Dx Dy`` (1-based); the
box is the min/max of the four corners minus 1 (`model.geometry.alov_points_to_corners`) and frame ``n`` is
the ``n``-th file of the sorted ``*.jpg`` list. Training pairs are consecutive annotation lines ``i -> i+1``.
Per category the last ``int(0.2 * n)`` videos form ``val`` (``n`` counted after removing the 7 VOT-2014
videos, which the authors' README asks users to delete).

Robustness on top of the authors (their ``fscanf`` loop reads garbage after a malformed line): whitespace-only
lines are ignored, a line that is not exactly 1 integer + 8 finite numbers is ``malformed_line``, a zero-area
box is ``invalid_box``, a repeated frame number is ``duplicate_frame``. Such a line, and a line whose frame
file is missing, is skipped and breaks the chain: only pairs of two consecutive usable lines are formed (we
never pair frames the authors would not have paired). If a frame file is missing from a video, position
indexing would silently shift every later frame, so frames are looked up by their number when the numbering
has a gap (for intact videos this is the same file as the authors' position rule).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.geometry import alov_points_to_corners
from shards.input_files import is_file_entry

MAX_ANN_BYTES = 2 << 20  # a real .ann file is a few KB: 2 MB is some 25,000 lines
MAX_ANN_LINES = 20_000  # each line costs a parsed record (and a skip entry when bad): bounded per file
LAYOUT = "<annotations>/<category>/<video>.ann"  # the one level the C++ reads
VAL_FRACTION = 0.2  # val_ratio

# VOT-2014 overlap (GOTURN README; pygoturn datasets.py `exclude`)
VOT2014_OVERLAP = frozenset(
    {
        "01-Light_video00016",
        "01-Light_video00022",
        "01-Light_video00023",
        "02-SurfaceCover_video00012",
        "03-Specularity_video00003",
        "03-Specularity_video00012",
        "10-LowContrast_video00013",
    }
)


@dataclass(frozen=True)
class AnnLine:
    """One non-blank ``.ann`` line: its 1-based line number, frame number, 8 corner values, 0-based box."""

    line_no: int
    frame: int | None
    points: tuple[float, ...] | None
    box: tuple[float, float, float, float] | None
    error: str | None  # None when usable


@dataclass(frozen=True)
class AlovVideo:
    """One ``.ann`` file and where its frames are, with the split the authors' rule gives it."""

    category: str
    name: str
    ann_path: Path
    frames_dir: Path
    split: str | None  # None: excluded (VOT-2014 overlap)


_INT = re.compile(r"[0-9]{1,12}", re.ASCII)  # a frame number; int() refuses over 4,300 digits
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_line(line_no: int, text: str) -> AnnLine:
    """Parse one line; malformed or degenerate lines carry an ``error`` instead of raising."""
    fields = text.split()
    if len(fields) != 9:
        return AnnLine(line_no, None, None, None, f"malformed_line: expected 9 fields, got {len(fields)}")
    # ASCII numbers only: Python's int() / float() also take "1_4" and other scripts' digits, which no .ann holds
    if not _INT.fullmatch(fields[0]) or not all(_FLOAT.fullmatch(v) for v in fields[1:]):
        return AnnLine(line_no, None, None, None, f"malformed_line: not numbers: {text.strip()[:80]!r}")
    frame = int(fields[0])
    points = tuple(float(v) for v in fields[1:])
    if frame < 1 or not all(math.isfinite(v) for v in points):
        return AnnLine(line_no, None, None, None, f"malformed_line: bad values: {text.strip()[:80]!r}")
    x1, y1, x2, y2 = (float(v) for v in alov_points_to_corners(np.asarray(points)))
    if not (x2 > x1 and y2 > y1):
        return AnnLine(line_no, frame, points, None, "invalid_box: zero width or height")
    return AnnLine(line_no, frame, points, (x1, y1, x2, y2), None)


def parse_ann(data: bytes) -> list[AnnLine]:
    """All non-blank lines of an ``.ann`` file, in file order, duplicates of an earlier frame flagged."""
    if len(data) > MAX_ANN_BYTES:
        raise ValueError(f"file larger than {MAX_ANN_BYTES} bytes")
    text = data.decode("utf-8-sig", errors="replace")  # -sig: a byte-order mark is not part of line 1
    lines: list[AnnLine] = []
    seen: set[int] = set()
    for no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) == MAX_ANN_LINES:
            raise ValueError(f"more than {MAX_ANN_LINES} annotation lines: not an ALOV annotation file")
        line = parse_line(no, raw)
        if line.error is None and line.frame in seen:
            line = AnnLine(no, line.frame, line.points, line.box, f"duplicate_frame: frame {line.frame} again")
        if line.frame is not None:
            seen.add(line.frame)
        lines.append(line)
    return lines


def list_videos(ann_root: Path, frames_root: Path, val_fraction: float, keep_vot_overlap: bool) -> list[AlovVideo]:
    """Every ``.ann`` file in sorted categories with its split (last ``int(val_fraction*n)`` per category)."""
    videos: list[AlovVideo] = []
    for cat in sorted(p for p in ann_root.iterdir() if p.is_dir()):
        # every entry so named: a FIFO, dangling link or loop is then a counted skip with its reason, not lost
        anns = sorted(Path(e.path) for e in os.scandir(cat) if e.name.endswith(".ann"))
        names = [a.name[: -len(".ann")] for a in anns]
        kept = [n for n in names if keep_vot_overlap or n not in VOT2014_OVERLAP]
        num_val = int(val_fraction * len(kept))
        val = set(kept[len(kept) - num_val :]) if num_val else set()
        for ann, name in zip(anns, names, strict=True):
            split = None if name not in kept else ("val" if name in val else "train")
            videos.append(AlovVideo(cat.name, name, ann, frames_root / cat.name / name, split))
    return videos


def list_frames(frames_dir: Path) -> list[tuple[str, int, int]]:
    """Sorted ``*.jpg`` files of a video as (name, size, mtime_ns)."""
    out = []
    for e in os.scandir(frames_dir):
        if e.name.lower().endswith(".jpg") and is_file_entry(e):
            st = e.stat()
            out.append((e.name, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def _frame_number(stem: str) -> int | None:
    """The frame number a file stem spells in ASCII digits (``00000042`` -> 42), else None (``²`` is a digit
    to ``str.isdigit`` but not to ``int``)."""
    return int(stem) if stem.isascii() and stem.isdigit() and len(stem) <= 12 else None


class FrameIndex:
    """Frame n -> file: the n-th sorted file (authors), or the file numbered n when numbering has a gap."""

    def __init__(self, frames: list[tuple[str, int, int]]) -> None:
        self.frames = frames
        self.by_number: dict[int, int] = {}
        for pos, (name, _, _) in enumerate(frames):
            stem = name.rsplit(".", 1)[0]
            number = _frame_number(stem)
            if number is not None:
                self.by_number.setdefault(number, pos)

    def lookup(self, frame: int) -> tuple[str, int, int] | None:
        pos = frame - 1
        if 0 <= pos < len(self.frames):
            name = self.frames[pos][0]
            stem = name.rsplit(".", 1)[0]
            if _frame_number(stem) in (None, frame):
                return self.frames[pos]
        hit = self.by_number.get(frame)
        return self.frames[hit] if hit is not None else None

    def missing_numbers(self) -> list[int]:
        """Frame numbers absent from an otherwise 1..max numbered sequence (a deleted or lost frame file)."""
        if not self.by_number:
            return []
        # Up to the last number of a plausibly numbered run: one stray '99999999999.jpg' must not make the
        # list (and the build's memory) 10^11 long.
        numbers = sorted(self.by_number)
        top = max((n for n in numbers if n <= 2 * len(numbers) + 16), default=0)
        return [n for n in range(1, top + 1) if n not in self.by_number]
