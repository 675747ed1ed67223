"""Planning: turn annotations into the full, ordered list of samples and their shards before reading a pixel.

Everything that decides *what* goes *where* happens here, from annotations and file sizes only, so the output
cannot depend on worker timing and an interrupted build can tell which shards are still valid (each shard has
a ``plan_hash`` over its samples' specs and input file sizes/mtimes). Images are decoded later, per sample
(`pipeline.sample_build`); a sample whose image turns out to be unusable is left out of its planned shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import PIL
import simplejpeg

from pipeline import alov, imagenet_det
from shards.format import SCHEMA_VERSION, make_key, shard_name
from shards.input_files import NotRegularFile, is_dir_entry, named_folder, not_regular, read_regular

BUILDER_VERSION = "2"  # bump when the bytes a plan produces change (invalidates shards kept for resuming)
META_ESTIMATE = 3 * 512 + 1024  # tar headers and small members of a sample, for the shard size plan

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


class InputLayoutError(ValueError):
    """A source gives no sample at all (e.g. annotations one folder level off): an empty build is an error,
    not a success."""


class PlannedImage(NamedTuple):
    """An input image: absolute path, display path (``<root name>/<relative>``), size, mtime when planned."""

    path: str
    rel: str
    size: int
    mtime_ns: int


class PlannedSample(NamedTuple):
    """One sample to write: images ``(curr,)`` or ``(prev, curr)`` and their rule-derived boxes (pre-clip)."""

    key: str
    source: str
    split: str
    images: tuple[PlannedImage, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    display_size: tuple[int, int] | None  # ImageNet XML (width, height): rescale when the decoded size differs
    meta: str  # the static meta.json fields as canonical JSON (a str is ~3x smaller in memory than a dict)


@dataclass
class Skip:
    """A skipped input (file, object or annotation line) and the reason, for the manifest."""

    path: str
    reason: str


@dataclass
class XmlRecord:
    """Planning outcome of one ImageNet XML, kept for the manifest accounting."""

    rel: str
    error: str | None  # plan-time reason the whole XML/image is skipped
    objects: list[tuple[int, str | None, str | None]] = field(default_factory=list)  # (index, drop, key)
    drop_details: dict[int, str] = field(default_factory=dict)  # index -> what a listed drop saw


@dataclass
class VideoRecord:
    """Planning outcome of one ALOV video: per line (line_no, plan-time reason) and per pair (i, j, key)."""

    rel: str
    split: str | None
    error: str | None
    lines: list[tuple[int, str | None]] = field(default_factory=list)
    pairs: list[tuple[int, int, str | None]] = field(default_factory=list)  # key None: not planned


@dataclass
class SourcePlan:
    """All samples of one source plus what accounting needs to explain every input."""

    source: str
    samples: list[PlannedSample]
    skipped: list[Skip]
    warnings: list[Skip]
    xmls: list[XmlRecord] = field(default_factory=list)
    videos: list[VideoRecord] = field(default_factory=list)
    extra_folders: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class ShardPlan:
    """A shard: name, samples in write order, and the hash that decides whether a kept file is valid."""

    name: str
    source: str
    split: str
    samples: list[PlannedSample]
    plan_hash: str


def _json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def _rel(root: Path, path: Path | str) -> str:
    return f"{root.name}/{Path(path).relative_to(root).as_posix()}"


def _rel_dir(root: Path, folder: Path) -> str:
    """A folder's display path, ending in ``/`` (``<root name>/`` for the root itself)."""
    return _rel(root, folder).removesuffix("/.") + "/"


def misplaced_files(ann_root: Path, suffix: str, skip: Callable[[str], bool]) -> list[tuple[Path, int]]:
    """Folders holding ``suffix`` files where the one-level listing does not look (the root itself, or below
    a sub-folder), with counts, so that a tree one level off is reported instead of silently read as empty.

    Sub-folders named so that ``skip(name)`` is true are not searched. Linked folders are followed, as the
    listing follows them, each real folder once (a link back up the tree is no loop).
    """
    out: list[tuple[Path, int]] = []
    top = sum(1 for e in os.scandir(ann_root) if e.name.endswith(suffix) and not is_dir_entry(e))
    if top:
        out.append((ann_root, top))
    subs = sorted(p for p in ann_root.iterdir() if p.is_dir())
    seen = {(s.st_dev, s.st_ino) for s in (os.stat(p) for p in [ann_root, *subs])}  # read (or skipped) already
    for sub in (p for p in subs if not skip(p.name)):
        for nested in sorted(e.path for e in os.scandir(sub) if is_dir_entry(e)):
            for folder, dirs, names in os.walk(nested, followlinks=True):
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:
                    dirs.clear()
                    continue
                seen.add((st.st_dev, st.st_ino))
                dirs.sort()
                n = sum(1 for name in names if name.endswith(suffix))
                if n:
                    out.append((Path(folder), n))
    return out


def _misplaced_skips(ann_root: Path, misplaced: list[tuple[Path, int]], suffix: str, layout: str) -> list[Skip]:
    """One skip entry per folder of misplaced annotation files."""
    out = []
    for folder, n in misplaced:
        depth = len(folder.relative_to(ann_root).parts)
        where = f"{depth} folder levels down" if depth else "directly in the annotation root"
        reason = f"misplaced_annotation: {_files(n, suffix)} {where}, not read (expected {layout})"
        out.append(Skip(_rel_dir(ann_root, folder), reason))
    return out


def _files(n: int, suffix: str) -> str:
    return f"{n} {suffix} file{'' if n == 1 else 's'}"


def _layout_error(
    source: str, option: str, ann_root: Path, layout: str, suffix: str, found: list[str]
) -> InputLayoutError:
    return InputLayoutError(
        f"no {source} annotation files where they are read: expected {layout} under {option} {ann_root}; "
        f"found {'; '.join(found) or f'no {suffix} file at any depth'}. Point {option} at the folder "
        f"that holds the sub-folders."
    )


def _misplaced_found(ann_root: Path, misplaced: list[tuple[Path, int]], suffix: str) -> list[str]:
    """What a listing found at the wrong depth, for the error message."""
    found = []
    top = sum(n for folder, n in misplaced if folder == ann_root)
    deeper = [(folder, n) for folder, n in misplaced if folder != ann_root]
    if top:
        found.append(f"{_files(top, suffix)} directly in {ann_root} (not in sub-folders)")
    if deeper:
        example = deeper[0][0].relative_to(ann_root).as_posix()
        found.append(
            f"{_files(sum(n for _, n in deeper), suffix)} deeper, in {len(deeper)} folder(s) such as {example}/"
        )
    return found


def _no_samples(source: str, ann_root: Path, total: int, what: str, reasons: Counter, hint: str) -> InputLayoutError:
    why = ", ".join(f"{code} {n}" for code, n in sorted(reasons.items())) or "none"
    return InputLayoutError(f"no {source} sample from {ann_root}: all {total} {what} skipped ({why}); {hint}")


# ------------------------------------------------------------------------------------------------------------
# ImageNet DET
# ------------------------------------------------------------------------------------------------------------


def parse_xml_task(
    args: tuple[str, str],
) -> tuple[str, str | None, imagenet_det.XmlAnnotation | None, tuple | None]:
    """Worker task: read an XML, stat its image -> (xml path, error, annotation, (image, size, mtime, kind)),
    kind None for a regular file, else what it is (a FIFO would block the decoder forever)."""
    xml_path, images_root = args
    try:
        ann = imagenet_det.read_annotation(xml_path)
    except imagenet_det.XmlError as e:
        return xml_path, f"xml_error: {e}", None, None
    except NotRegularFile as e:
        return xml_path, f"not_regular_file: {e}", None, None
    except OSError as e:
        return xml_path, f"xml_error: unreadable: {e.strerror or e}", None, None
    image = os.path.join(images_root, ann.folder, ann.filename + imagenet_det.IMAGE_SUFFIX)
    try:
        st = os.stat(image)
    except OSError:
        return xml_path, None, ann, None
    return xml_path, None, ann, (image, st.st_size, st.st_mtime_ns, not_regular(st.st_mode))


def plan_imagenet(images_root: Path, ann_root: Path, map_fn: MapFn) -> SourcePlan:
    """One still sample per kept object of every XML (split ``train``: the authors train on all of DET)."""
    images_root, ann_root = named_folder(images_root), named_folder(ann_root)  # "." has a name to record
    files, extras = imagenet_det.list_annotation_files(ann_root)
    misplaced = misplaced_files(ann_root, ".xml", lambda name: "extra" in name)
    if not files:
        found = _misplaced_found(ann_root, misplaced, ".xml")
        found += [f"{_files(n, '.xml')} in the negative-only folder {f.name}/ (skipped)" for f, n in extras if n]
        raise _layout_error("ImageNet DET", "--imagenet-annotations", ann_root, imagenet_det.LAYOUT, ".xml", found)
    plan = SourcePlan("imagenet", [], [], [])
    for folder, n in extras:
        plan.extra_folders.append((_rel(ann_root, folder), n))
        plan.skipped.append(Skip(_rel_dir(ann_root, folder), f"extra_folder: negative-only folder, {n} XML files"))
    plan.skipped += _misplaced_skips(ann_root, misplaced, ".xml", imagenet_det.LAYOUT)
    for folder, n in misplaced:  # counted in xml_files (one record each), listed per folder
        plan.xmls += [XmlRecord(_rel_dir(ann_root, folder), "misplaced_annotation") for _ in range(n)]
    seen: dict[str, str] = {}
    key_owner: dict[str, str] = {}  # sample key -> the XML it was made from
    tasks = ((str(f), str(images_root)) for f in files)
    for xml_path, error, ann, image in map_fn(parse_xml_task, tasks):
        rel = _rel(ann_root, xml_path)
        if error is not None or ann is None:
            plan.xmls.append(XmlRecord(rel, error))
            plan.skipped.append(Skip(rel, error or "xml_error"))
            continue
        rec = XmlRecord(rel, None, [(o.index, o.drop, None) for o in ann.objects])
        rec.drop_details = {
            o.index: f"xmin, ymin, xmax, ymax {list(o.box)} in a {ann.width}x{ann.height} image"
            if o.box is not None
            else "a <bndbox> coordinate missing or not a number"
            for o in ann.objects
            if o.drop not in (None, "too_large")
        }
        plan.xmls.append(rec)
        kept = [o for o in ann.objects if o.drop is None]
        image_rel = f"{images_root.name}/{ann.image_relpath}"
        if not kept:
            drops = ", ".join(f"{o.drop}" for o in ann.objects) or "no objects"
            rec.error = "no_kept_object"
            plan.skipped.append(Skip(rel, f"no_kept_object: {len(ann.objects)} objects ({drops})"))
            continue
        if image is None:
            rec.error = "missing_image"
            plan.skipped.append(Skip(image_rel, f"missing_image: referenced by {rel}"))
            continue
        if image[3] is not None:
            rec.error = "not_regular_file"
            plan.skipped.append(Skip(image_rel, f"not_regular_file: {image[3]}, referenced by {rel}"))
            continue
        img_key = f"{ann.folder}/{ann.filename}"
        if img_key in seen:
            rec.error = "duplicate_image"
            plan.skipped.append(Skip(rel, f"duplicate_image: {image_rel} already annotated by {seen[img_key]}"))
            continue
        keys = {o.index: make_key("imagenet", ann.folder, ann.filename, f"obj{o.index:02d}") for o in kept}
        clash = next((k for k in keys.values() if k in key_owner), None)
        if clash is not None:  # two file names that differ only in characters the key format replaces
            rec.error = "duplicate_key"
            plan.skipped.append(Skip(rel, f"duplicate_key: sample key {clash} already made from {key_owner[clash]}"))
            continue
        seen[img_key] = rel
        key_owner.update(dict.fromkeys(keys.values(), rel))
        pimg = PlannedImage(image[0], image_rel, image[1], image[2])
        for o in kept:
            key = keys[o.index]
            meta = {
                "source": "imagenet",
                "split": "train",
                "key": key,
                "annotation": rel,
                "image": image_rel,
                "folder": ann.folder,
                "filename": ann.filename,
                "object_index": o.index,
                "synset": o.name,
                "xml_width": ann.width,
                "xml_height": ann.height,
                "xml_box": list(o.box),
            }
            box = tuple(float(v) for v in o.box)
            size = (ann.width, ann.height)
            plan.samples.append(PlannedSample(key, "imagenet", "train", (pimg,), (box,), size, _json(meta)))
        rec.objects = [(i, d, keys.get(i)) for i, d, _ in rec.objects]
    if not plan.samples:
        reasons = Counter((r.error or "").split(":")[0] for r in plan.xmls)
        hint = f"images are read as {images_root}/<folder>/<filename>{imagenet_det.IMAGE_SUFFIX} (--imagenet-images)"
        raise _no_samples("ImageNet DET", ann_root, len(plan.xmls), "XML files", reasons, hint)
    return plan


# ------------------------------------------------------------------------------------------------------------
# ALOV300++
# ------------------------------------------------------------------------------------------------------------


def plan_alov(frames_root: Path, ann_root: Path, val_fraction: float, keep_vot_overlap: bool) -> SourcePlan:
    """One pair sample per two consecutive usable annotation lines of every kept video."""
    frames_root, ann_root = named_folder(frames_root), named_folder(ann_root)  # "." has a name to record
    videos = alov.list_videos(ann_root, frames_root, val_fraction, keep_vot_overlap)
    misplaced = misplaced_files(ann_root, ".ann", lambda name: False)
    if not videos:
        found = _misplaced_found(ann_root, misplaced, ".ann")
        raise _layout_error("ALOV300++", "--alov-annotations", ann_root, alov.LAYOUT, ".ann", found)
    plan = SourcePlan("alov", [], [], [])
    plan.skipped += _misplaced_skips(ann_root, misplaced, ".ann", alov.LAYOUT)
    for folder, n in misplaced:  # counted in videos (one record each), listed per folder
        plan.videos += [VideoRecord(_rel_dir(ann_root, folder), None, "misplaced_annotation") for _ in range(n)]
    seen: dict[str, str] = {}
    for v in videos:
        rel = _rel(ann_root, v.ann_path)
        if v.name in seen:  # keys are alov/<video>/...: a video name must be unique across categories
            plan.videos.append(VideoRecord(rel, v.split, "duplicate_video"))
            plan.skipped.append(Skip(rel, f"duplicate_video: {v.name} already read from {seen[v.name]}"))
            continue
        seen[v.name] = rel
        if v.split is None:
            plan.videos.append(VideoRecord(rel, None, "vot2014_overlap"))
            plan.skipped.append(Skip(rel, "vot2014_overlap: excluded (use --keep-vot-overlap to keep)"))
            continue
        try:
            lines = alov.parse_ann(read_regular(v.ann_path, alov.MAX_ANN_BYTES))
        except (OSError, ValueError) as e:
            code = "not_regular_file" if isinstance(e, NotRegularFile) else "ann_error"
            plan.videos.append(VideoRecord(rel, v.split, code))
            plan.skipped.append(Skip(rel, f"{code}: {e}"))
            continue
        rec = VideoRecord(rel, v.split, None)
        plan.videos.append(rec)
        try:
            index = alov.FrameIndex(alov.list_frames(v.frames_dir))
        except OSError:
            index = None
        if index is None or not index.frames:
            rec.error = "missing_frames_dir"
            rec.lines = [(ln.line_no, "missing_frames_dir") for ln in lines]
            plan.skipped.append(Skip(rel, f"missing_frames_dir: no frames in {_rel(frames_root, v.frames_dir)}"))
            continue
        if len(lines) < 2:
            rec.error = "too_few_annotations"
            rec.lines = [(ln.line_no, "too_few_annotations") for ln in lines]
            plan.skipped.append(Skip(rel, f"too_few_annotations: {len(lines)} annotation line(s)"))
            continue
        annotated: set[int] = set()
        usable: list[tuple[AnnTarget | None, str | None]] = []
        for ln in lines:
            reason = ln.error
            where = f"{rel}:{ln.line_no}"
            target = None
            if reason is None:
                annotated.add(ln.frame)
                hit = index.lookup(ln.frame)
                if hit is None:  # the input that is missing is the frame file: name it
                    path = v.frames_dir / f"{ln.frame:08d}.jpg"
                    where = _rel(frames_root, path)
                    kind = _not_regular_path(path)
                    reason = f"frame {ln.frame} annotated on {rel}:{ln.line_no}"
                    reason = f"not_regular_file: {reason} is {kind}" if kind else f"missing_frame: {reason} has no file"
                else:
                    path = v.frames_dir / hit[0]
                    img = PlannedImage(str(path), _rel(frames_root, path), hit[1], hit[2])
                    target = AnnTarget(ln, img)
            rec.lines.append((ln.line_no, reason.split(":")[0] if reason else None))
            if reason:
                plan.skipped.append(Skip(where, reason))
            usable.append((target, reason))
        for n in index.missing_numbers():
            if n not in annotated:
                path = v.frames_dir / f"{n:08d}.jpg"
                kind = _not_regular_path(path)
                reason = f"not_regular_file: {kind}" if kind else "missing_frame"
                plan.warnings.append(Skip(_rel(frames_root, path), f"{reason}: not annotated, no pair affected"))
        for i in range(len(lines) - 1):
            a, b = usable[i][0], usable[i + 1][0]
            if a is None or b is None:
                rec.pairs.append((i, i + 1, None))
                continue
            key = make_key("alov", v.name, f"{a.line.frame:08d}_{b.line.frame:08d}")
            rec.pairs.append((i, i + 1, key))
            meta = {
                "source": "alov",
                "split": v.split,
                "key": key,
                "category": v.category,
                "video": v.name,
                "annotation": rel,
                "prev_frame": a.line.frame,
                "curr_frame": b.line.frame,
                "prev_line": a.line.line_no,
                "curr_line": b.line.line_no,
                "prev_image": a.image.rel,
                "curr_image": b.image.rel,
                "ann_points": [list(a.line.points), list(b.line.points)],
            }
            plan.samples.append(
                PlannedSample(key, "alov", v.split, (a.image, b.image), (a.line.box, b.line.box), None, _json(meta))
            )
    if not plan.samples:
        reasons = Counter(r.error or "no_usable_pair" for r in plan.videos)
        hint = f"frames are read as {frames_root}/<category>/<video>/*.jpg (--alov-frames)"
        raise _no_samples("ALOV300++", ann_root, len(plan.videos), ".ann files", reasons, hint)
    return plan


def _not_regular_path(path: Path) -> str | None:
    """What sits at ``path`` when it is there but is no regular file (the frame listing ignores such)."""
    try:
        return not_regular(os.stat(path).st_mode)
    except OSError:
        return None


class AnnTarget(NamedTuple):
    """A usable annotation line and the frame file it points to."""

    line: alov.AnnLine
    image: PlannedImage


# ------------------------------------------------------------------------------------------------------------
# Shuffling and shard assignment
# ------------------------------------------------------------------------------------------------------------


def shuffle_order(key: str, seed: int) -> str:
    """Sort key of the seeded shuffle: hash of (seed, key), independent of listing order and versions."""
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def estimated_bytes(sample: PlannedSample) -> int:
    """Tar bytes a sample will take (input file sizes; re-encoded images change this a little)."""
    return META_ESTIMATE + sum(512 + -(-img.size // 512) * 512 for img in sample.images)


def plan_hash(name: str, samples: list[PlannedSample]) -> str:
    """Fingerprint of everything that determines a shard's bytes (the decoders' versions too: they decide what is
    rejected or re-encoded)."""
    h = hashlib.sha256()
    versions = [SCHEMA_VERSION, BUILDER_VERSION, PIL.__version__, simplejpeg.__version__]
    h.update(json.dumps([*versions, name]).encode())
    for s in samples:
        imgs = [(i.rel, i.size, i.mtime_ns) for i in s.images]
        h.update(json.dumps([s.key, imgs, s.boxes, s.display_size, s.meta], sort_keys=True).encode())
    return h.hexdigest()


def assign_shards(samples: list[PlannedSample], seed: int, shard_size: int) -> list[ShardPlan]:
    """Shuffle each (source, split) with the seed and cut it into shards of about ``shard_size`` bytes."""
    groups: dict[tuple[str, str], list[PlannedSample]] = {}
    for s in samples:
        groups.setdefault((s.source, s.split), []).append(s)
    shards: list[ShardPlan] = []
    for (source, split), group in sorted(groups.items()):
        first = len(shards)
        keys = [s.key for s in group]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate sample keys in {source}/{split}")
        group.sort(key=lambda s: shuffle_order(s.key, seed))
        current: list[PlannedSample] = []
        size = 0
        for s in group:
            est = estimated_bytes(s)
            if current and size + est > shard_size:
                shards.append(_shard(source, split, len(shards) - first, current))
                current, size = [], 0
            current.append(s)
            size += est
        if current:
            shards.append(_shard(source, split, len(shards) - first, current))
    return shards


def _shard(source: str, split: str, index: int, samples: list[PlannedSample]) -> ShardPlan:
    name = shard_name(source, split, index)
    return ShardPlan(name, source, split, samples, plan_hash(name, samples))
