"""Sample data in the real ImageNet DET 2014, ALOV300++ and OTB layouts: the writers, the items, the CLI.

Why: the real sets are tens of GB behind registration walls, yet the whole pipeline (shard builder, loader,
training, tracker, OTB evaluation) must run end to end on a laptop and in CI. This module takes the scenes
`pipeline.sample_scenes` paints (textured backgrounds and objects, smooth motion, scale change, partial
occlusion, objects crossing the border, some grayscale frames) and writes them in the real layouts and
annotation formats (``../shared/research/formats_and_eval.md`` sections 1, 3, 4), so the code that reads them
is the code that reads the real data. ``--with-bad-inputs`` adds the real sets' known defects (truncated /
PNG / CMYK JPEGs, broken XML, VID-ordered XML, a malformed ``.ann`` line, a missing ALOV frame).

It holds the size specs (`SIZES`), the format writers (`imagenet_xml`, `alov_ann`, `otb_rows`, JPEG and
file writing), one task per ImageNet image / ALOV video / OTB sequence / bad-input set, the manifest, and
`make_sample_data`, `ensure_sample_data`, `shard_sources` and `main`.

Everything is a pure function of (seed, size, with_bad_inputs): every item draws from its own
``numpy.random.default_rng([seed, domain, index])``, files carry no timestamps and the manifest is sorted
JSON, so the same arguments give byte-identical trees (same platform and library versions). The bad inputs
are extra files: the clean part is identical with or without the flag, and the manifest's counts describe it.

    python -m pipeline.make_sample_data --out data/sample [--seed 0] [--size small|medium] [--with-bad-inputs]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.alov import VAL_FRACTION as VAL_RATIO
from pipeline.imagenet_det import MAX_RATIO, rule_drop_reason
from pipeline.sample_scenes import (
    Look,
    Video,
    background,
    place,
    random_look,
    render_sprite,
    render_video,
    to_image,
    video_knobs,
)

FORMAT = "goturn-sample-data-v1"
MANIFEST = "sample_manifest.json"
MANAGED = ("imagenet", "alov", "otb", MANIFEST)  # what the generator owns inside --out (and may delete)
JPEG_QUALITY = 90

DET_TRAIN = "ILSVRC2014_DET_train"
DET_BBOX = "ILSVRC2014_DET_bbox_train"
EXTRA_FOLDER = "ILSVRC2013_train_extra0"
ALOV_IMAGES = "imagedata++"
ALOV_ANN = "alov300++_rectangleAnnotation_full"

# Real ILSVRC DET synsets (airplane, antelope, apple, backpack, banjo, bicycle, car, dog, cat, motorcycle).
SYNSETS = (
    "n02691156",
    "n02419796",
    "n07739125",
    "n02769748",
    "n02787622",
    "n02834778",
    "n02958343",
    "n02084071",
    "n02121808",
    "n03790512",
)
# Real ALOV300++ category names; the category steers which difficulty its videos get (see
# `pipeline.sample_scenes.video_knobs`).
ALOV_CATEGORIES_MEDIUM = (
    "01-Light",
    "02-SurfaceCover",
    "03-Specularity",
    "05-Shape",
    "06-MotionSmoothness",
    "08-Clutter",
    "09-Confusion",
    "11-Occlusion",
    "12-MovingCamera",
    "13-ZoomingCamera",
)
ALOV_CATEGORIES_SMALL = ("01-Light", "11-Occlusion")
# Holds only the bad-input videos, so the clean categories' train / val splits never change.
BAD_CATEGORY = "14-LongDuration"
# Held-out evaluation sequences, named after what each stresses (never a real OTB name: the OTB loader applies
# per-name windows such as David's or Tiger1's).
OTB_SEQUENCES = (
    "SynGray",
    "SynOcclusion",
    "SynScale",
    "SynBorder",
    "SynFast",
    "SynClutter",
    "SynPan",
    "SynLight",
)
FRAME_SIZES = ((320, 240), (352, 264), (384, 288), (400, 300), (448, 336), (480, 360))
STILL_SIZES = FRAME_SIZES + ((300, 400), (360, 480))  # ImageNet also has portrait images

# rng domains: each item's generator is default_rng([seed, domain, index]), independent of every other item
_D_IMAGENET, _D_EXTRA, _D_ALOV, _D_OTB, _D_BAD, _D_LAYOUT = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class SizeSpec:
    """How much of each format one ``--size`` makes."""

    synsets: int
    images_per_synset: int
    extra_images: int
    categories: tuple[str, ...]
    videos_per_category: int
    video_frames: tuple[int, int]
    otb_sequences: tuple[str, ...]
    otb_frames: tuple[int, int]
    frame_sizes: tuple[tuple[int, int], ...]
    object_size: tuple[float, float]  # geometric-mean side of the tracked object, px
    bad_video_frames: int


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(
        synsets=2,
        images_per_synset=10,
        extra_images=2,
        categories=ALOV_CATEGORIES_SMALL,
        videos_per_category=5,  # int(0.2 * 5) = 1 validation video per category
        video_frames=(26, 32),
        otb_sequences=OTB_SEQUENCES[:2],
        otb_frames=(28, 32),
        frame_sizes=((320, 240), (352, 264)),
        object_size=(36.0, 70.0),
        bad_video_frames=26,
    ),
    "medium": SizeSpec(
        synsets=10,
        images_per_synset=40,
        extra_images=10,
        categories=ALOV_CATEGORIES_MEDIUM,
        videos_per_category=6,
        video_frames=(60, 100),
        otb_sequences=OTB_SEQUENCES,
        otb_frames=(60, 100),
        frame_sizes=FRAME_SIZES,
        object_size=(42.0, 110.0),
        bad_video_frames=41,
    ),
}


# ------------------------------------------------------------------------------------------------------------
# Writers of the real formats
# ------------------------------------------------------------------------------------------------------------


def _jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def _xml_object(name: str, box: tuple[int, int, int, int], truncated: int, order: tuple[str, ...]) -> str:
    vals = dict(zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    coords = "".join(f"\t\t\t<{k}>{vals[k]}</{k}>\n" for k in order)
    return (
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{truncated}</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n{coords}\t\t</bndbox>\n\t</object>\n"
    )


def imagenet_xml(
    folder: str,
    filename: str,
    width: int,
    height: int,
    objects: Iterable[dict[str, Any]],
    order: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax"),
    database: str = "ILSVRC_2014",
) -> str:
    """PASCAL-VOC XML laid out byte for byte like ILSVRC's (tab indents, no declaration, no final newline).

    ``objects``: dicts with ``name``, ``box`` (xmin, ymin, xmax, ymax ints, 0-based) and ``truncated``.
    ``order`` is the bndbox child order (ImageNet VID writes xmax, xmin, ymax, ymin).
    """
    head = (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<source>\n\t\t<database>{database}</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n"
    )
    body = "".join(_xml_object(o["name"], o["box"], o["truncated"], order) for o in objects)
    return head + body + "</annotation>"


def alov_ann(boxes: np.ndarray, frames: Iterable[int]) -> str:
    """``.ann`` text: ``frame Ax Ay Bx By Cx Cy Dx Dy``, 1-based, 2 decimals, corners in the real order.

    The order is that of ``01-Light_video00001.ann``: (xmax,ymin), (xmin,ymin), (xmin,ymax), (xmax,ymax).
    ``boxes`` are 0-based corners indexed by frame - 1; readers subtract 1 from min / max (loader_alov.cpp).
    """
    lines = []
    for f in frames:
        x1, y1, x2, y2 = (float(c) + 1.0 for c in boxes[f - 1])
        lines.append(f"{f} {x2:.2f} {y1:.2f} {x1:.2f} {y1:.2f} {x1:.2f} {y2:.2f} {x2:.2f} {y2:.2f}\n")
    return "".join(lines)


def otb_rows(boxes: np.ndarray, delimiter: str) -> str:
    """``groundtruth_rect.txt``: 1-based integer x, y, w, h per frame (``xywh_to_corners(one_based=True)``)"""
    r = np.rint(boxes).astype(np.int64)
    w = np.maximum(r[:, 2] - r[:, 0], 1)
    h = np.maximum(r[:, 3] - r[:, 1], 1)
    return "".join(
        delimiter.join(str(int(v)) for v in row) + "\n" for row in zip(r[:, 0] + 1, r[:, 1] + 1, w, h, strict=True)
    )


def _classify(box: tuple[int, int, int, int], W: int, H: int) -> str:
    """What the builder will do with this object (`pipeline.imagenet_det.rule_drop_reason`, the authors' filters
    in their order): 'too_large', 'invalid' or 'kept'."""
    return {"too_large": "too_large", "invalid_box": "invalid", None: "kept"}[rule_drop_reason(box, W, H)]


# ------------------------------------------------------------------------------------------------------------
# Items: one ImageNet image, ALOV video or OTB sequence per task (picklable: inline or in worker processes)
# ------------------------------------------------------------------------------------------------------------


def _still(rng: np.random.Generator, synset: str, n_obj: int, force: str = "") -> dict[str, Any]:
    """Paint one still with ``n_obj`` objects and their XML annotations.

    Like the real DET set, some objects are larger than MAX_RATIO of the image, some are cut by the border
    (``truncated``) and a few boxes are broken; ``force`` ('large' / 'invalid') makes the first object so.
    """
    W, H = (int(v) for v in STILL_SIZES[rng.integers(len(STILL_SIZES))])
    frame = background(rng, H, W)
    objects: list[dict[str, Any]] = []
    shapes: list[tuple[Look, np.ndarray]] = []  # painted largest first, so small objects stay visible
    for j in range(n_obj):
        look = random_look(rng)
        large = force == "large" if j == 0 and force else rng.random() < 0.1
        if large:
            w, h = rng.uniform(0.7, 0.92) * W, rng.uniform(0.3, 0.92) * H
            if rng.random() < 0.5:
                w, h = rng.uniform(0.3, 0.92) * W, rng.uniform(0.7, 0.92) * H
        else:
            s = rng.uniform(0.15, 0.5) * min(W, H)
            ar = math.sqrt(rng.uniform(0.55, 1.8))
            w, h = min(s * ar, 0.6 * W), min(s / ar, 0.6 * H)
        if not large and rng.random() < 0.12:  # cut by the left or right image border
            x1 = rng.choice([rng.uniform(-0.35, 0) * w, W - w + rng.uniform(0, 0.35) * w])
            y1 = rng.uniform(0, H - h)
        else:
            x1, y1 = rng.uniform(0, W - w), rng.uniform(0, H - h)
        box = np.array([x1, y1, x1 + w, y1 + h])
        shapes.append((look, box))
        vis = np.clip(box, 0, [W - 1, H - 1, W - 1, H - 1])  # real DET boxes stay within 0..size-1
        ib = tuple(int(v) for v in np.rint(vis))
        truncated = int(bool(np.any(np.abs(vis - box) > 0.5)))
        corrupt = force == "invalid" if j == 0 and force else rng.random() < 0.04
        if corrupt:  # the kinds of broken boxes GOTURN's loader drops
            kind = rng.integers(3)
            if kind == 0:
                ib = (ib[0], ib[1], ib[0], ib[3])  # xmax == xmin
            elif kind == 1:
                ib = (ib[0], ib[3], ib[2], ib[1])  # ymax < ymin
            else:
                ib = (-int(rng.integers(1, 8)), ib[1], ib[2], ib[3])  # xmin < 0
        name = synset if j == 0 else SYNSETS[int(rng.integers(len(SYNSETS)))]
        objects.append({"name": name, "box": ib, "truncated": truncated, "status": _classify(ib, W, H)})
    for look, box in sorted(shapes, key=lambda lb: -(lb[1][2] - lb[1][0]) * (lb[1][3] - lb[1][1])):
        place(frame, render_sprite(look, math.ceil(box[2] - box[0]), math.ceil(box[3] - box[1])), box)
    return {"frame": frame, "width": W, "height": H, "objects": objects, "gray": bool(rng.random() < 0.1)}


def _imagenet_task(root: str, seed: int, index: int, synset: str, name: str, force: str) -> dict[str, Any]:
    rng = np.random.default_rng([seed, _D_IMAGENET, index])
    n_obj = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
    if force == "empty" or (not force and rng.random() < 0.04):  # negatives: an XML without objects
        n_obj = 0
    st = _still(rng, synset, n_obj, force)
    gray = st["gray"] or force == "gray"
    base = Path(root) / "imagenet"
    _write(base / DET_TRAIN / synset / f"{name}.JPEG", _jpeg_bytes(to_image(st["frame"], gray)))
    xml = imagenet_xml(synset, name, st["width"], st["height"], st["objects"])
    _write(base / DET_BBOX / synset / f"{name}.xml", xml)
    statuses = [o["status"] for o in st["objects"]]
    truncated = sum(o["truncated"] for o in st["objects"])
    return {"kind": "imagenet", "gray": gray, "statuses": statuses, "truncated": truncated, "n": 1}


def _extra_task(root: str, seed: int, index: int, name: str) -> dict[str, Any]:
    """A negative of the ``extra`` folder: scene only, XML without objects (GOTURN skips these folders)."""
    rng = np.random.default_rng([seed, _D_EXTRA, index])
    W, H = (int(v) for v in STILL_SIZES[rng.integers(len(STILL_SIZES))])
    base = Path(root) / "imagenet"
    img = _jpeg_bytes(to_image(background(rng, H, W), False))
    _write(base / DET_TRAIN / EXTRA_FOLDER / f"{name}.JPEG", img)
    _write(base / DET_BBOX / EXTRA_FOLDER / f"{name}.xml", imagenet_xml(EXTRA_FOLDER, name, W, H, []))
    return {"kind": "extra", "n": 1}


def _alov_video_name(category: str, number: int) -> str:
    return f"{category}_video{number:05d}"


def _write_alov(root: Path, category: str, number: int, video: Video, ann: str, drop: int = 0) -> None:
    """Frames ``imagedata++/<cat>/<video>/NNNNNNNN.jpg`` (1-based; ``drop`` leaves one out) + the ``.ann``."""
    vname = _alov_video_name(category, number)
    vdir = root / "alov" / ALOV_IMAGES / category / vname
    for i, im in enumerate(video.frames, 1):
        if i != drop:
            _write(vdir / f"{i:08d}.jpg", _jpeg_bytes(im))
    _write(root / "alov" / ALOV_ANN / category / f"{vname}.ann", ann)


def _alov_task(
    root: str, seed: int, index: int, category: str, number: int, T: int, spec_name: str, gray: bool
) -> dict[str, Any]:
    spec = SIZES[spec_name]
    rng = np.random.default_rng([seed, _D_ALOV, index])
    W, H = (int(v) for v in spec.frame_sizes[rng.integers(len(spec.frame_sizes))])
    kn = video_knobs(rng, category)
    if gray:
        kn = replace(kn, gray=True)
    video = render_video(rng, T, W, H, rng.uniform(*spec.object_size), kn)
    ann = list(range(1, T + 1, 5))
    _write_alov(Path(root), category, number, video, alov_ann(video.boxes, ann))
    return {
        "kind": "alov",
        "video": _alov_video_name(category, number),
        "category": category,
        "frames": T,
        "annotated_frames": len(ann),
        "pairs": len(ann) - 1,
        "width": W,
        "height": H,
        "grayscale": video.gray,
        "n": T,
    }


def _otb_task(root: str, seed: int, index: int, name: str, T: int, spec_name: str) -> dict[str, Any]:
    spec = SIZES[spec_name]
    rng = np.random.default_rng([seed, _D_OTB, index])  # its own domain: never a training scene
    W, H = (int(v) for v in spec.frame_sizes[rng.integers(len(spec.frame_sizes))])
    video = render_video(rng, T, W, H, rng.uniform(*spec.object_size), video_knobs(rng, name))
    sdir = Path(root) / "otb" / name
    for i, im in enumerate(video.frames, 1):
        _write(sdir / "img" / f"{i:04d}.jpg", _jpeg_bytes(im))
    delim = "," if index % 2 == 0 else "\t"  # the real files use both (Man: comma, Crossing: tab)
    _write(sdir / "groundtruth_rect.txt", otb_rows(video.boxes, delim))
    return {
        "kind": "otb",
        "name": name,
        "frames": T,
        "width": W,
        "height": H,
        "grayscale": video.gray,
        "delimiter": "comma" if delim == "," else "tab",
        "n": T,
    }


# What a robust reader is expected to do with each bad input (documented in the manifest entry).
BAD_EXPECT = {
    "truncated_jpeg": "image fails a full decode: skip it (its objects are lost)",
    "png_as_jpeg": "PNG bytes under .JPEG: sniff magic bytes, decode, re-encode as RGB JPEG",
    "cmyk_jpeg": "CMYK JPEG: convert to RGB and re-encode",
    "malformed_xml": "not well-formed XML: skip the image",
    "vid_order_xml": "bndbox children in ImageNet VID order (xmax, xmin, ymax, ymin): valid, parse by tag",
    "ann_malformed_line": "one .ann line has 5 of 9 fields: skip that line, keep the rest of the video",
    "alov_missing_frame": "an annotated frame is missing: drop the pairs that need it, map frames by name",
}


def _bad_task(root: str, seed: int, spec_name: str) -> dict[str, Any]:
    """The real sets' known defects, as extra files in the same layouts; returns their manifest entries."""
    spec = SIZES[spec_name]
    base = Path(root)
    out: list[dict[str, Any]] = []
    synset = SYNSETS[0]
    kinds = ("truncated_jpeg", "png_as_jpeg", "cmyk_jpeg", "malformed_xml", "vid_order_xml")
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, _D_BAD, k])
        st = _still(rng, synset, 2)
        name = f"{synset}_{900001 + k}"  # far above the clean ids (< 100000)
        img_rel = f"imagenet/{DET_TRAIN}/{synset}/{name}.JPEG"
        xml_rel = f"imagenet/{DET_BBOX}/{synset}/{name}.xml"
        im = to_image(st["frame"], False)
        data = _jpeg_bytes(im)
        order = ("xmin", "ymin", "xmax", "ymax")
        xml = imagenet_xml(synset, name, st["width"], st["height"], st["objects"])
        if kind == "truncated_jpeg":
            data = data[: len(data) // 2]
        elif kind == "png_as_jpeg":
            buf = io.BytesIO()
            im.save(buf, "PNG")
            data = buf.getvalue()
        elif kind == "cmyk_jpeg":
            data = _jpeg_bytes(im.convert("CMYK"))
        elif kind == "malformed_xml":
            xml = xml[: xml.index("<xmax>") + len("<xmax>") + 1]  # cut inside the first box: unclosed elements
        else:
            order = ("xmax", "xmin", "ymax", "ymin")
            xml = imagenet_xml(synset, name, st["width"], st["height"], st["objects"], order)
        _write(base / img_rel, data)
        _write(base / xml_rel, xml)
        statuses = [o["status"] for o in st["objects"]]
        out.append(
            {
                "kind": kind,
                "path": xml_rel if kind.endswith("xml") else img_rel,
                "image": img_rel,
                "xml": xml_rel,
                "objects": len(statuses),
                "objects_kept": statuses.count("kept"),
                "objects_too_large": statuses.count("too_large"),
                "objects_invalid": statuses.count("invalid"),
                "bndbox_order": list(order),
                "expect": BAD_EXPECT[kind],
            }
        )
    T = spec.bad_video_frames
    ann = list(range(1, T + 1, 5))
    for number, kind in enumerate(("ann_malformed_line", "alov_missing_frame"), start=1):
        rng = np.random.default_rng([seed, _D_BAD, len(kinds) + number])
        W, H = spec.frame_sizes[0]
        video = render_video(rng, T, W, H, float(np.mean(spec.object_size)), video_knobs(rng, BAD_CATEGORY))
        vname = _alov_video_name(BAD_CATEGORY, number)
        ann_rel = f"alov/{ALOV_ANN}/{BAD_CATEGORY}/{vname}.ann"
        img_dir = f"alov/{ALOV_IMAGES}/{BAD_CATEGORY}/{vname}"
        text = alov_ann(video.boxes, ann)
        entry: dict[str, Any] = {
            "kind": kind,
            "video": vname,
            "category": BAD_CATEGORY,
            "frames": T,
            "annotated_frames": len(ann),
            "ann": ann_rel,
            "images": img_dir,
            "expect": BAD_EXPECT[kind],
        }
        if kind == "ann_malformed_line":
            lines = text.splitlines(keepends=True)
            lines[2] = " ".join(lines[2].split()[:5]) + "\n"  # frame 11 loses its last two corners
            _write_alov(base, BAD_CATEGORY, number, video, "".join(lines))
            entry.update(path=ann_rel, line=3, frame=ann[2])
        else:
            missing = ann[3]  # annotated frame 16: pairs 11->16 and 16->21 are lost
            _write_alov(base, BAD_CATEGORY, number, video, text, drop=missing)
            entry.update(path=f"{img_dir}/{missing:08d}.jpg", frame=missing, annotated=True)
        out.append(entry)
    return {"kind": "bad", "entries": out, "n": T * 2 + len(kinds)}


# ------------------------------------------------------------------------------------------------------------
# Orchestration and manifest
# ------------------------------------------------------------------------------------------------------------

Task = tuple[Callable[..., dict[str, Any]], tuple[Any, ...], int]  # function, arguments, images it writes


def _prepare_out(out: Path) -> None:
    """Clear what an earlier run made in ``out``; refuse to touch a folder this generator did not write."""
    present = [p for p in MANAGED if (out / p).exists()]
    if not present:
        return
    try:
        ok = json.loads((out / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise FileExistsError(f"{out} holds {present} but no {MANIFEST} of this generator; not overwriting it")
    for p in present:
        q = out / p
        if q.is_dir():
            shutil.rmtree(q)
        else:
            q.unlink()


def _tasks(seed: int, size: str, root: str, with_bad_inputs: bool) -> list[Task]:
    """Every item to make, with its own seed index; lengths and ids come from one layout generator."""
    spec = SIZES[size]
    layout = np.random.default_rng([seed, _D_LAYOUT, 0])
    tasks: list[Task] = []
    idx = 0
    for synset in SYNSETS[: spec.synsets]:
        ids = np.sort(layout.choice(np.arange(1, 100000), spec.images_per_synset, replace=False))
        for j, num in enumerate(ids):
            # every quirk exists for any seed and size: an empty image, a large / invalid object, a gray one
            force = {0: "empty", 1: "large", 2: "invalid", 3: "gray"}.get(j, "") if synset == SYNSETS[0] else ""
            tasks.append((_imagenet_task, (root, seed, idx, synset, f"{synset}_{int(num)}", force), 1))
            idx += 1
    for j in range(spec.extra_images):
        tasks.append((_extra_task, (root, seed, j, f"ILSVRC2013_train_{j + 1:08d}"), 1))
    idx = 0
    for c, category in enumerate(spec.categories):
        for number in range(1, spec.videos_per_category + 1):
            T = int(layout.integers(spec.video_frames[0], spec.video_frames[1] + 1))
            gray = c == 0 and number == 2  # at least one grayscale training video (more come at random)
            tasks.append((_alov_task, (root, seed, idx, category, number, T, size, gray), T))
            idx += 1
    for idx, name in enumerate(spec.otb_sequences):
        T = int(layout.integers(spec.otb_frames[0], spec.otb_frames[1] + 1))
        tasks.append((_otb_task, (root, seed, idx, name, T, size), T))
    if with_bad_inputs:
        tasks.append((_bad_task, (root, seed, size), 2 * spec.bad_video_frames + 5))
    return tasks


def _run(task: Task) -> dict[str, Any]:
    fn, args, _ = task
    return fn(*args)


def _manifest(seed: int, size: str, with_bad_inputs: bool, results: list[dict[str, Any]]) -> dict[str, Any]:
    spec = SIZES[size]
    imn = [r for r in results if r["kind"] == "imagenet"]
    statuses = [s for r in imn for s in r["statuses"]]
    videos = sorted((r for r in results if r["kind"] == "alov"), key=lambda r: r["video"])
    for cat in spec.categories:  # GOTURN's split: per category, the last int(0.2 n) videos are validation
        vs = [v for v in videos if v["category"] == cat]
        n_val = int(VAL_RATIO * len(vs))
        for i, v in enumerate(vs):
            v["split"] = "val" if i >= len(vs) - n_val else "train"
    seqs = sorted((r for r in results if r["kind"] == "otb"), key=lambda r: r["name"])
    bad = [e for r in results if r["kind"] == "bad" for e in r["entries"]]
    strip = ("kind", "n")
    return {
        "format": FORMAT,
        "complete": True,
        "seed": seed,
        "size": size,
        "with_bad_inputs": with_bad_inputs,
        "generator": "pipeline.make_sample_data",
        "note": "counts describe the clean data; bad_inputs lists the extra files --with-bad-inputs adds",
        "imagenet": {
            "images_dir": f"imagenet/{DET_TRAIN}",
            "annotations_dir": f"imagenet/{DET_BBOX}",
            "synsets": list(SYNSETS[: spec.synsets]),
            "images": len(imn),
            "images_with_kept_objects": sum(1 for r in imn if "kept" in r["statuses"]),
            "images_without_objects": sum(1 for r in imn if not r["statuses"]),
            "images_grayscale": sum(1 for r in imn if r["gray"]),
            "objects": len(statuses),
            "objects_kept": statuses.count("kept"),
            "objects_too_large": statuses.count("too_large"),
            "objects_invalid": statuses.count("invalid"),
            "objects_truncated": sum(r["truncated"] for r in imn),
            "pairs": statuses.count("kept"),
            "max_ratio": MAX_RATIO,
            "extra_folder": EXTRA_FOLDER,
            "extra_images": sum(1 for r in results if r["kind"] == "extra"),
        },
        "alov": {
            "images_dir": f"alov/{ALOV_IMAGES}",
            "annotations_dir": f"alov/{ALOV_ANN}",
            "categories": list(spec.categories),
            "videos": len(videos),
            "frames": sum(v["frames"] for v in videos),
            "annotated_frames": sum(v["annotated_frames"] for v in videos),
            "pairs": sum(v["pairs"] for v in videos),
            "videos_grayscale": sum(1 for v in videos if v["grayscale"]),
            "frames_grayscale": sum(v["frames"] for v in videos if v["grayscale"]),
            "val_ratio": VAL_RATIO,
            "train_videos": sum(1 for v in videos if v["split"] == "train"),
            "val_videos": sum(1 for v in videos if v["split"] == "val"),
            "per_video": [{k: v for k, v in r.items() if k not in strip} for r in videos],
        },
        "otb": {
            "root": "otb",
            "sequences": len(seqs),
            "frames": sum(s["frames"] for s in seqs),
            "sequences_grayscale": sum(1 for s in seqs if s["grayscale"]),
            "per_sequence": [{k: v for k, v in r.items() if k not in strip} for r in seqs],
        },
        "bad_inputs": sorted(bad, key=lambda e: (e["kind"], e["path"])),
    }


def make_sample_data(
    out: Path | str = Path("data/sample"),
    seed: int = 0,
    size: str = "medium",
    with_bad_inputs: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Generate the sample tree under ``out`` (replacing an earlier one) and return its manifest.

    ``workers``: processes that render items (None: 1 for small, up to 2 for medium); the bytes are the same
    for any value since every item has its own seed. ``progress`` defaults to a tqdm bar for ``medium``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_out(out)
    _write(out / MANIFEST, json.dumps({"format": FORMAT, "complete": False}) + "\n")  # claims the folder
    tasks = _tasks(seed, size, str(out), with_bad_inputs)
    if workers is None:
        workers = 1 if size == "small" else min(2, os.cpu_count() or 1)
    show = (size == "medium") if progress is None else progress
    results: list[dict[str, Any]] = []
    with tqdm(total=sum(t[2] for t in tasks), disable=not show, desc="sample data", unit="img") as bar:
        if workers > 1:
            # spawn, not fork: callers (the demo, tests) may hold torch / thread pools that must not be forked
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
                for t, r in zip(tasks, ex.map(_run, tasks, chunksize=4), strict=True):
                    results.append(r)
                    bar.update(t[2])
        else:
            for t in tasks:
                results.append(_run(t))
                bar.update(t[2])
    manifest = _manifest(seed, size, with_bad_inputs, results)
    _write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def shard_sources(root: Path | str) -> dict[str, Path]:
    """The four source folders of a sample tree, keyed like `pipeline.build_shards`'s options."""
    root = Path(root)
    return {
        "imagenet_images": root / "imagenet" / "ILSVRC2014_DET_train",
        "imagenet_annotations": root / "imagenet" / "ILSVRC2014_DET_bbox_train",
        "alov_frames": root / "alov" / "imagedata++",
        "alov_annotations": root / "alov" / "alov300++_rectangleAnnotation_full",
    }


def ensure_sample_data(
    out: Path | str = Path("data/sample"),
    seed: int = 0,
    size: str = "medium",
    with_bad_inputs: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The manifest of ``out`` if it holds a complete tree made with these arguments, else generate it."""
    try:
        m = json.loads((Path(out) / MANIFEST).read_text())
        same = (m.get("seed"), m.get("size"), m.get("with_bad_inputs")) == (seed, size, with_bad_inputs)
        if m.get("format") == FORMAT and m.get("complete") and same:
            return m
    except (OSError, ValueError, AttributeError):
        pass
    return make_sample_data(out, seed, size, with_bad_inputs, workers, progress)


def main(argv: list[str] | None = None) -> int:
    """CLI: generate, then print one line of counts."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.make_sample_data", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/sample"), help="output folder (default data/sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=sorted(SIZES), default="medium")
    ap.add_argument("--with-bad-inputs", action="store_true", help="add truncated/PNG/CMYK JPEGs, broken XML, ...")
    ap.add_argument("--workers", type=int, default=None, help="render processes (default: 1 small, 2 medium)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    progress = False if args.quiet else None
    m = make_sample_data(args.out, args.seed, args.size, args.with_bad_inputs, args.workers, progress)
    i, a, o = m["imagenet"], m["alov"], m["otb"]
    print(
        f"{args.out}: imagenet {i['images']} images / {i['objects']} objects ({i['objects_kept']} kept) "
        f"+ {i['extra_images']} extra; alov {a['videos']} videos / {a['frames']} frames / {a['pairs']} pairs;"
        " "
        f"otb {o['sequences']} sequences / {o['frames']} frames; {len(m['bad_inputs'])} bad inputs "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
