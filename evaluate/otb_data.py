"""OTB-2013 / OTB-100 (2015) / TB-50 loader with every quirk of the real data (formats_and_eval.md section 1).

Why a loader of our own: the toolkits disagree on names (``Jogging.1`` vs ``Jogging-1``), on Tiger1's start
and on how missing folders are treated, and the raw folders hold more images than annotations for a few
sequences. The rules here: list and sort ``img/`` (never synthesise file names: BlurCar1/3/4 start above 1,
Board has 5 digits), apply the frame windows *by position*, parse any of comma / tab / space, keep invalid
rows (with a mask), and assert ``len(frames) == len(rows)``. Boxes stay in the file's 1-based ``(x, y, w,
h)`` (Matlab) convention.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evaluate.metrics import PROTOCOLS
from model.image_modes import to_rgb8
from shards.format import MAX_PIXELS
from shards.input_files import FileTooLarge, NotRegularFile, named_folder, read_regular

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# Folder lists exactly as got10k 0.1.3 ``datasets/otb.py`` (one folder may hold several targets).
# fmt: off
OTB2013_FOLDERS: tuple[str, ...] = (
    "Basketball", "Bolt", "Boy", "Car4", "CarDark", "CarScale", "Coke", "Couple", "Crossing", "David",
    "David2", "David3", "Deer", "Dog1", "Doll", "Dudek", "FaceOcc1", "FaceOcc2", "Fish", "FleetFace",
    "Football", "Football1", "Freeman1", "Freeman3", "Freeman4", "Girl", "Ironman", "Jogging", "Jumping",
    "Lemming", "Liquor", "Matrix", "Mhyang", "MotorRolling", "MountainBike", "Shaking", "Singer1", "Singer2",
    "Skating1", "Skiing", "Soccer", "Subway", "Suv", "Sylvester", "Tiger1", "Tiger2", "Trellis", "Walking",
    "Walking2", "Woman"
)
TB50_FOLDERS: tuple[str, ...] = (
    "Basketball", "Biker", "Bird1", "BlurBody", "BlurCar2", "BlurFace", "BlurOwl", "Bolt", "Box", "Car1",
    "Car4", "CarDark", "CarScale", "ClifBar", "Couple", "Crowds", "David", "Deer", "Diving", "DragonBaby",
    "Dudek", "Football", "Freeman4", "Girl", "Human3", "Human4", "Human6", "Human9", "Ironman", "Jump",
    "Jumping", "Liquor", "Matrix", "MotorRolling", "Panda", "RedTeam", "Shaking", "Singer2", "Skating1",
    "Skating2", "Skiing", "Soccer", "Surfer", "Sylvester", "Tiger2", "Trellis", "Walking", "Walking2", "Woman"
)
TB100_FOLDERS: tuple[str, ...] = (
    "Bird2", "BlurCar1", "BlurCar3", "BlurCar4", "Board", "Bolt2", "Boy", "Car2", "Car24", "Coke", "Coupon",
    "Crossing", "Dancer", "Dancer2", "David2", "David3", "Dog", "Dog1", "Doll", "FaceOcc1", "FaceOcc2",
    "Fish", "FleetFace", "Football1", "Freeman1", "Freeman3", "Girl2", "Gym", "Human2", "Human5", "Human7",
    "Human8", "Jogging", "KiteSurf", "Lemming", "Man", "Mhyang", "MountainBike", "Rubik", "Singer1", "Skater",
    "Skater2", "Subway", "Suv", "Tiger1", "Toy", "Trans", "Twinnings", "Vase"
) + TB50_FOLDERS
# fmt: on
VERSIONS: dict[str, tuple[str, ...]] = {  # got10k's names, and their otb20xx / otb100 spellings (lower case)
    "2013": OTB2013_FOLDERS,
    "otb2013": OTB2013_FOLDERS,
    "2015": TB100_FOLDERS,
    "otb2015": TB100_FOLDERS,
    "tb100": TB100_FOLDERS,
    "otb100": TB100_FOLDERS,
    "tb50": TB50_FOLDERS,
}
# Targets per folder where a folder is not exactly one target (section 1.5): the annotation files to use.
MULTI_TARGET = {"Jogging": 2, "Skating2": 2}

# Raw folders with more images than annotation rows: the evaluated slice by position (section 1.6; identical
# in got10k ``OTB.__getitem__``, OTBPY ``get_format`` and the Matlab configs). Applied only when the counts
# differ, so a re-packaged folder that already holds just the annotated frames is read as is.
FRAME_WINDOWS: dict[str, slice] = {
    "david": slice(300 - 1, 770),
    "football1": slice(0, 74),
    "freeman3": slice(0, 460),
    "freeman4": slice(0, 283),
    "diving": slice(0, 215),
}
# The Matlab toolkit's init-omit for Tiger1 (OPE starts at frame 6, 349 frames): pysot / OTB / pytracking
# apply it, got10k does not. Frames *and* annotation rows are dropped.
INIT_OMIT = {"tiger1": 5}
INIT_OMIT_PROTOCOLS = ("pysot", "otb")

_GT_RE = re.compile(r"^groundtruth_rect(?:\.(\d+))?\.txt$")


@dataclass(frozen=True)
class OTBSequence:
    """One tracking target: its frames and 1-based ``(x, y, w, h)`` ground truth, one row per frame."""

    name: str  # canonical id, no dots: "Man", "Jogging-1", "Human4"
    folder: Path
    frames: tuple[Path, ...]
    gt: np.ndarray  # (N, 4) float64, 1-based xywh exactly as in the file
    valid: np.ndarray  # (N,) bool: the OTB rule (finite, all four of x, y, w, h > 0); invalid rows are kept
    gt_file: str  # annotation file name inside the folder
    first_frame: int  # 1-based position in the sorted img/ listing of frames[0]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def got10k_name(self) -> str:
        """got10k's spelling (``Jogging.1``), used for its result files."""
        return got10k_name(self.name)

    @property
    def pysot_name(self) -> str:
        """pysot's spelling (``Jogging-1``, ``Human4-2``), used for its result files."""
        m = _GT_RE.match(self.gt_file)
        if m and m.group(1) and "-" not in self.name:
            return f"{self.name}-{m.group(1)}"
        return self.name


def got10k_name(canonical: str) -> str:
    """Canonical id -> got10k name: the target suffix ``-k`` of a multi-target folder becomes ``.k``."""
    return re.sub(r"-(\d+)$", r".\1", canonical)


def name_aliases(seq: OTBSequence) -> list[str]:
    """Every spelling the toolkits use for a target's result file, most specific first (section 1.5)."""
    base = [
        seq.name,
        seq.got10k_name,
        seq.pysot_name,
        seq.name.replace("-", "_"),
        seq.pysot_name.replace("-", "_"),
    ]
    out: list[str] = []
    for n in base + [n[:1].lower() + n[1:] for n in base] + [n.lower() for n in base]:
        if n not in out:
            out.append(n)
    return out


def parse_gt_text(text: str, source: str = "<text>") -> np.ndarray:
    """Annotation text -> ``(N, 4)`` float64; comma, tab or space delimited, empty lines skipped."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").replace("\t", " ").split()
        if not parts:
            continue
        if len(parts) != 4:
            raise ValueError(f"{source}:{lineno}: expected 4 numbers (x, y, w, h), got {line[:80]!r}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise ValueError(f"{source}:{lineno}: not a number in {line[:80]!r}") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def otb_valid_mask(gt: np.ndarray) -> np.ndarray:
    """The OTB Matlab validity rule (``calcSeqErrRobust``): every value finite and > 0."""
    g = np.asarray(gt, dtype=np.float64)
    return np.all(np.isfinite(g) & (g > 0), axis=-1)


def _natural_key(path: Path) -> list[str | int]:
    """``frame2.jpg`` before ``frame10.jpg``: digit runs compare as numbers (OTB's zero-padded names keep their
    plain order)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in frame order: sorted by name with numbers compared as numbers, so a folder of
    ``1.jpg ... 12.jpg`` plays in order too. Hidden files such as macOS's ``._0001.jpg`` resource forks are
    skipped, as got10k's glob does. OTB's frames are ``.jpg``: where there are some, other images (a thumbnail, a
    saved plot) are left out with a warning instead of being played as frames; a folder of other images plays
    them all (``evaluate.track`` on any sequence)."""
    files = [
        p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    jpgs = [p for p in files if p.suffix.lower() == ".jpg"]
    if jpgs and len(jpgs) < len(files):
        others = sorted(p.name for p in files if p.suffix.lower() != ".jpg")
        log.warning("%s: %d images that are not .jpg left out (%s)", folder, len(others), ", ".join(others[:3]))
        files = jpgs
    return sorted(files, key=_natural_key)


MAX_TEXT_BYTES = 16 << 20  # an OTB annotation or result file is a few hundred KB


def read_annotation_text(path: Path) -> str:
    """An annotation (or result) file's text; ``utf-8-sig`` drops the byte-order mark some Windows editors
    write. Read through `shards.input_files.read_regular` (the builder's reader): only a regular file of at most
    `MAX_TEXT_BYTES`, opened without blocking (a FIFO hung, ``/dev/zero`` ate memory)."""
    try:
        data = read_regular(path, MAX_TEXT_BYTES)
    except NotRegularFile as e:
        raise ValueError(f"{path}: {e}") from None
    except FileTooLarge as e:
        raise ValueError(f"{path}: {e}: larger than any annotation file") from None
    except FileNotFoundError:
        raise
    except OSError as e:  # unreadable (permissions, I/O error): a bad input, reported as one like the rest
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


class FrameReadError(ValueError):
    """A frame file that cannot be decoded (truncated, corrupt, not an image); the message names the file."""


@contextlib.contextmanager
def _frame_file(path: str | Path) -> Iterator[Image.Image]:
    """The opened image; any failure is a `FrameReadError` naming the file (PIL's decoders raise OSError,
    ValueError, NotImplementedError, ...). A header claiming more than `MAX_PIXELS` (the shard builder's bound)
    is refused before decoding: PIL only warns below 179 million pixels, and a few hundred bytes can claim them."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width}x{im.height} pixels, more than {MAX_PIXELS} (a decompression bomb?)")
            yield im
    except Exception as e:  # noqa: BLE001 - see above
        raise FrameReadError(f"{path}: cannot read the frame ({type(e).__name__}: {e})") from e


def read_frame(path: str | Path) -> np.ndarray:
    """Decode a frame to ``HxWx3`` uint8 RGB (`model.image_modes.to_rgb8`: gray expanded by content, 16-bit
    samples by their high byte, as the shard builder and the tracker read them)."""
    with _frame_file(path) as im:
        return np.asarray(to_rgb8(im), dtype=np.uint8).copy()


def frame_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a frame file from its header alone (no decode)."""
    with _frame_file(path) as im:
        return im.size


def annotation_files(folder: Path) -> list[Path]:
    """Non-empty ``groundtruth_rect[.k].txt`` files of a folder, in got10k's order (sorted by name)."""
    files = sorted(p for p in folder.glob("groundtruth*.txt") if _GT_RE.match(p.name))
    kept = []
    for p in files:
        if read_annotation_text(p).strip():
            kept.append(p)
        else:
            log.info("%s is empty (ignored)", p)
    return kept


def target_names(folder: Path) -> list[tuple[str, Path]]:
    """``(canonical id, annotation file)`` for every target of a folder (Jogging -> Jogging-1, Jogging-2)."""
    folder = named_folder(folder)
    files = annotation_files(folder)
    m = re.fullmatch(r"(.+)-(\d+)", folder.name)
    own = [f for f in files if m and f.name == f"groundtruth_rect.{m.group(2)}.txt"]
    if own:  # pysot's copies of a two-target folder (Jogging-1/, Jogging-2/, each with both files): its own target
        return [(folder.name, own[0])]
    if len(files) == 1:
        return [(folder.name, files[0])]
    return [(f"{folder.name}-{i}", f) for i, f in enumerate(files, 1)]


def load_sequence(
    folder: str | Path, gt_file: str | Path | None = None, name: str | None = None, protocol: str = "got10k"
) -> OTBSequence:
    """Load one target of an OTB folder, windows applied; raises when frames and annotation rows disagree."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    folder = named_folder(folder)
    if gt_file is None:
        targets = target_names(folder)
        if not targets:
            raise FileNotFoundError(f"no non-empty groundtruth_rect*.txt in {folder}")
        if name is None:
            name, gt_path = targets[0]
        else:
            hits = [t for t in targets if t[0] == name] or [t for t in targets if _norm(t[0]) == _norm(name)]
            if not hits:
                raise ValueError(f"{folder}: no target {name!r}; targets: {', '.join(t[0] for t in targets)}")
            name, gt_path = hits[0]
    else:
        gt_path = folder / gt_file if not Path(gt_file).is_absolute() else Path(gt_file)
    name = name or folder.name
    gt = parse_gt_text(read_annotation_text(gt_path), str(gt_path))
    img_dir = folder / "img"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} not found")
    frames = list_images(img_dir)
    start = 0
    key = folder.name.lower()
    if key in FRAME_WINDOWS and len(frames) != len(gt):
        win = FRAME_WINDOWS[key]
        start = win.start or 0
        frames = frames[win]
    if protocol in INIT_OMIT_PROTOCOLS and key in INIT_OMIT:
        omit = INIT_OMIT[key]
        if len(frames) == len(gt):
            frames, gt, start = frames[omit:], gt[omit:], start + omit
    if len(frames) != len(gt):
        raise ValueError(
            f"{name}: {len(frames)} frames in {img_dir} (after the window), {len(gt)} rows in {gt_path.name}"
        )
    if len(gt) == 0:
        raise ValueError(f"{name}: empty sequence")
    valid = otb_valid_mask(gt)
    if not valid.all():
        log.info("%s: %d invalid ground-truth rows kept (OTB rule: all four > 0)", name, int((~valid).sum()))
    return OTBSequence(name, folder, tuple(frames), gt, valid, gt_path.name, start + 1)


def is_sequence_folder(folder: Path) -> bool:
    """A folder with ``img/`` and at least one ``groundtruth_rect*.txt``."""
    return (folder / "img").is_dir() and any(_GT_RE.match(p.name) for p in folder.glob("groundtruth*.txt"))


def _norm(s: str) -> str:
    return re.sub(r"[-._]", "", s).lower()


@dataclass(frozen=True)
class Discovery:
    """What `find_sequences` found: the loaded targets, the names it could not find, and how it chose them."""

    sequences: list[OTBSequence]
    missing: list[str]
    mode: str  # "version <v>", "all folders", "names"


def find_sequences(
    root: str | Path,
    version: str | None = None,
    names: Sequence[str] | None = None,
    protocol: str = "got10k",
) -> Discovery:
    """Resolve the targets to evaluate under ``root``.

    ``names`` (any toolkit spelling, case-insensitive) wins; else ``version``'s folder list; else, when
    ``root`` holds the whole OTB-100 set, OTB-100, otherwise every sequence folder found (the sample data).
    Missing targets are reported and skipped; finding none is an error.
    """
    root = named_folder(root)
    if not root.is_dir():
        raise FileNotFoundError(f"OTB root {root} does not exist")
    present = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_sequence_folder(p)}
    if version is not None and str(version).lower() not in VERSIONS:
        raise ValueError(f"unknown OTB version {version!r}; choose from {sorted(VERSIONS)}")
    if names:
        folders, mode = list(present), "names"
    elif version is not None:
        folders, mode = list(VERSIONS[str(version).lower()]), f"version {version}"
    elif all(_version_folders(f, present) for f in TB100_FOLDERS):
        folders, mode = list(TB100_FOLDERS), "version 2015"
    else:
        folders, mode = list(present), "all folders"
    targets: list[tuple[str, Path, str]] = []  # (canonical id, folder, annotation file name)
    missing: list[str] = []
    seen: dict[str, str] = {}  # target id -> the folder it is taken from (sorted: a raw folder before its copies)
    for f in folders:
        found = _version_folders(f, present)
        if not found:
            n = MULTI_TARGET.get(f, 1)
            missing.extend([f] if n == 1 else [f"{f}-{i}" for i in range(1, n + 1)])
            continue
        for folder in found:
            folder_targets = target_names(folder)
            if folder.name != f and folder.name.lower().startswith(f.lower()):  # david/: named David
                folder_targets = [(f + tname[len(f) :], gt) for tname, gt in folder_targets]
            if not folder_targets and not names:  # every groundtruth_rect*.txt empty: reported, not dropped silently
                missing.append(f"{folder.name} (no non-empty groundtruth_rect*.txt)")
            for tname, gt in folder_targets:
                if tname in seen:  # a raw two-target folder beside pysot's copies (Jogging/ and Jogging-1/)
                    log.warning(
                        "target %s is in %s/ and %s/: evaluated once, from %s/",
                        tname,
                        seen[tname],
                        folder.name,
                        seen[tname],
                    )
                    continue
                seen[tname] = folder.name
                targets.append((tname, folder, gt.name))
    if names:
        targets, not_found = _select(targets, names)
        missing.extend(not_found)
    if missing:
        shown = ", ".join(missing[:10]) + (
            f", ... (+{len(missing) - 10} more, listed in the report)" if len(missing) > 10 else ""
        )
        log.warning("%d sequence(s) not found under %s (%s), skipped: %s", len(missing), root, mode, shown)
    if not targets:
        hint = ""
        if is_sequence_folder(root):  # --otb-root named one sequence instead of the folder holding them
            hint = f"; {root} is itself a sequence folder: pass its parent, {root.parent}, and --sequences {root.name}"
        what = f"missing: {', '.join(missing)}" if missing else "no sequence folder (img/ + groundtruth_rect*.txt)"
        raise FileNotFoundError(f"no OTB sequences found under {root} ({mode}; {what}){hint}")
    seqs = [load_sequence(folder, gt, tname, protocol) for tname, folder, gt in targets]
    return Discovery(seqs, missing, mode)


def _version_folders(name: str, present: dict[str, Path]) -> list[Path]:
    """The folder(s) of a version list's entry: the raw OTB folder, or pysot's per-target copies of a two-target
    one (``Jogging-1/``, ``Jogging-2/``, as pysot's testing_dataset README prepares them); [] when absent. Names
    match in any case (``david/``, as some copies spell them), the exact spelling first."""
    if name in present:
        return [present[name]]
    lower = {k.lower(): v for k, v in present.items()}
    if name.lower() in lower:
        return [lower[name.lower()]]
    copies = [f"{name}-{i}".lower() for i in range(1, MULTI_TARGET.get(name, 0) + 1)]
    return [lower[c] for c in copies] if copies and all(c in lower for c in copies) else []


def _aliases(tname: str, gt_file: str) -> list[str]:
    m = _GT_RE.match(gt_file)
    pysot = f"{tname}-{m.group(1)}" if m and m.group(1) and "-" not in tname else tname
    base = [tname, got10k_name(tname), pysot]
    return [_norm(a) for a in base]


def _select(
    targets: list[tuple[str, Path, str]], names: Sequence[str]
) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """Pick targets by any toolkit spelling; a multi-target folder's name ("Jogging") selects all of them."""
    chosen: list[tuple[str, Path, str]] = []
    missing: list[str] = []
    for n in names:
        hits = [t for t in targets if _norm(n) in _aliases(t[0], t[2])]
        hits = hits or [t for t in targets if _norm(t[1].name) == _norm(n)]
        if not hits:
            missing.append(n)
        chosen.extend(t for t in hits if t not in chosen)
    return chosen, missing


def expected_targets(version: str) -> list[str]:
    """Canonical target ids of a version (51 for 2013, 100 for 2015, 50 for tb50)."""
    out: list[str] = []
    for f in VERSIONS[str(version).lower()]:
        n = MULTI_TARGET.get(f, 1)
        out.extend([f] if n == 1 else [f"{f}-{i}" for i in range(1, n + 1)])
    return out


def iter_frames(seq: OTBSequence) -> Iterable[np.ndarray]:
    """Decoded frames of a sequence in order."""
    for p in seq.frames:
        yield read_frame(p)
