"""Input trees and cached builds for the shard-builder tests (test_build_shards.py, test_shards.py).

Builds are cached per process, so the session fixtures of both modules (which run in one xdist group) share
them. Expected values in the tests are computed from these inputs with the standard library, never with the
builder's own parsers.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.build_shards import BuildConfig, BuildReport, build

_CACHE: dict[str, tuple[Path, BuildReport]] = {}
ALOV_REAL_VIDEOS = [f"01-Light_video{n:05d}" for n in (1, 2, 3, 4, 5, 16)]  # 00016 overlaps VOT-2014
ALOV_REAL_SIZE = (1280, 720)  # 01-Light_video00001 boxes reach x=1107


def jpeg(w: int, h: int, seed: int = 0, mode: str = "RGB", **save: object) -> bytes:
    """A small textured JPEG (or PNG with format='PNG')."""
    rng = np.random.default_rng(seed)
    a = (rng.random((max(h // 8, 1), max(w // 8, 1), 3)) * 255).astype(np.uint8)
    im = Image.fromarray(a).resize((w, h), Image.BILINEAR).convert(mode)
    buf = io.BytesIO()
    fmt = save.pop("format", "JPEG")
    im.save(buf, format=fmt, **({"quality": 90} | save if fmt == "JPEG" else save))
    return buf.getvalue()


def exif_segment(orientation: int | None) -> bytes:
    """An APP1 Exif segment with that orientation (None: not parseable)."""
    body = b"Exif\0\0garbage!" if orientation is None else Image.Exif()
    if orientation is not None:
        body[0x0112] = orientation
        body = body.tobytes()
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def with_exif(data: bytes, *orientations: int | None) -> bytes:
    """``data`` (a JPEG) with one Exif segment per orientation right after its start-of-image marker."""
    return data[:2] + b"".join(exif_segment(o) for o in orientations) + data[2:]


def cut_short(data: bytes, keep: float = 0.75) -> bytes:
    """A JPEG cut inside its scan data and closed with an end-of-image marker: PIL and DALI decode it without an
    error (the missing blocks grey); only libjpeg's warning tells."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def flat_jpeg(w: int, h: int, factors: list[tuple[int, int]], scans: int | None = None) -> bytes:
    """A valid baseline JPEG, flat grey (128), with any sampling factors per component (PIL writes only 4:4:4,
    4:2:2 and 4:2:0): every block is DC difference 0 then end-of-block, each a 1-bit Huffman code. ``scans``:
    that many of the components, each in a scan of its own (1x1 factors only), instead of one interleaved scan."""

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1 for symbol 0 (DC: category 0; AC: EOB)
    ids = range(1, len(factors) + 1)
    sof = bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([len(factors)])
    sof += b"".join(bytes([c, (fh << 4) | fv, 0]) for c, (fh, fv) in zip(ids, factors, strict=True))
    sos = bytes([len(factors)]) + b"".join(bytes([c, 0x00]) for c in ids) + bytes([0, 63, 0])
    hmax, vmax = max(f[0] for f in factors), max(f[1] for f in factors)
    mcus = -(-w // (8 * hmax)) * -(-h // (8 * vmax)) if len(factors) > 1 else -(-w // 8) * -(-h // 8)
    bits = 2 * mcus * (sum(fh * fv for fh, fv in factors) if len(factors) > 1 else 1)
    scan = bytes(bits // 8) + (bytes([0xFF >> (bits % 8)]) if bits % 8 else b"")  # padded with 1-bits
    head = segment(0xDB, bytes(1) + bytes([1] * 64)) + segment(0xC0, sof)
    head += segment(0xC4, b"\x00" + one_code) + segment(0xC4, b"\x10" + one_code)
    if scans is None:
        return b"\xff\xd8" + head + segment(0xDA, sos) + scan + b"\xff\xd9"
    bits = 2 * -(-w // 8) * -(-h // 8)  # a non-interleaved scan: one block per 8x8 of the image
    scan = bytes(bits // 8) + (bytes([0xFF >> (bits % 8)]) if bits % 8 else b"")
    body = b"".join(segment(0xDA, bytes([1, c, 0x00, 0, 63, 0])) + scan for c in list(ids)[:scans])
    return b"\xff\xd8" + head + body + b"\xff\xd9"


def cached_build(
    name: str, tmp_root: Callable[[str], Path], make: Callable[[Path], BuildConfig]
) -> tuple[Path, BuildReport]:
    """Build once per process: ``make(dir)`` creates inputs under ``dir`` and returns the config."""
    if name not in _CACHE:
        root = tmp_root(name)
        cfg = make(root)
        _CACHE[name] = (root, build(cfg))
    return _CACHE[name]


def real_tree(root: Path, shared: Path) -> BuildConfig:
    """Real ImageNet XML + JPEGs copied into the DET layout; the real ALOV .ann with generated frames."""
    ann_dir = shared / "imagenet_xml" / "annotations"
    img_dir = shared / "imagenet_xml" / "images"
    det_ann, det_img = root / "det_ann", root / "det_img"
    for sub in ann_dir.iterdir():
        shutil.copytree(sub, det_ann / sub.name)
        shutil.copytree(img_dir / sub.name, det_img / sub.name)
    frames, anns = root / "alov_frames", root / "alov_ann"
    (anns / "01-Light").mkdir(parents=True)
    frame = jpeg(*ALOV_REAL_SIZE, seed=1)
    text = (shared / "alov" / "01-Light_video00001.ann").read_text()
    n_frames = max(int(line.split()[0]) for line in text.splitlines() if line.strip())
    for video in ALOV_REAL_VIDEOS:
        (anns / "01-Light" / f"{video}.ann").write_text(text)
        vdir = frames / "01-Light" / video
        vdir.mkdir(parents=True)
        for i in range(1, n_frames + 1):
            (vdir / f"{i:08d}.jpg").write_bytes(frame)
    return BuildConfig(
        out=root / "out",
        imagenet_images=det_img,
        imagenet_annotations=det_ann,
        alov_frames=frames,
        alov_annotations=anns,
        workers=2,
        progress=False,
    )


SMALL_SHARD = 60_000  # many shards from the small sample data: exercises splitting, resuming, node splits


def sample_tree(root: Path) -> BuildConfig:
    """`pipeline.make_sample_data` (small, with bad inputs), built into many small shards."""
    from pipeline.make_sample_data import make_sample_data

    data = root / "data"
    make_sample_data(data, seed=0, size="small", with_bad_inputs=True, progress=False)
    return sample_config(data, root / "out", workers=1)


def sample_config(data: Path, out: Path, workers: int) -> BuildConfig:
    return BuildConfig(
        out=out,
        imagenet_images=data / "imagenet" / "ILSVRC2014_DET_train",
        imagenet_annotations=data / "imagenet" / "ILSVRC2014_DET_bbox_train",
        alov_frames=data / "alov" / "imagedata++",
        alov_annotations=data / "alov" / "alov300++_rectangleAnnotation_full",
        shard_size=SMALL_SHARD,
        workers=workers,
        progress=False,
    )


def sample_args(cfg: BuildConfig) -> list[str]:
    """The CLI arguments equivalent to a `sample_config`."""
    return [
        "--imagenet-images", str(cfg.imagenet_images),
        "--imagenet-annotations", str(cfg.imagenet_annotations),
        "--alov-frames", str(cfg.alov_frames),
        "--alov-annotations", str(cfg.alov_annotations),
        "--out", str(cfg.out),
        "--shard-size", str(cfg.shard_size),
        "--seed", str(cfg.seed),
    ]  # fmt: skip


def xml(folder: str, name: str, w: int, h: int, boxes: list[tuple], order: str = "xmin ymin xmax ymax") -> str:
    objs = "".join(
        "<object><name>n0</name><bndbox>"
        + "".join(f"<{t}>{dict(zip(('xmin', 'ymin', 'xmax', 'ymax'), b, strict=True))[t]}</{t}>" for t in order.split())
        + "</bndbox></object>"
        for b in boxes
    )
    size = f"<size><width>{w}</width><height>{h}</height></size>"
    return f"<annotation><folder>{folder}</folder><filename>{name}</filename>{size}{objs}</annotation>"


def edge_tree(root: Path) -> BuildConfig:
    """Hand-made edge cases with known outcomes (see EDGE_EXPECT in test_build_shards.py)."""
    img, ann = root / "img", root / "ann"

    def put(folder: str, name: str, data: bytes | None, xml_text: str, ann_folder: str | None = None) -> None:
        (img / folder).mkdir(parents=True, exist_ok=True)
        (ann / (ann_folder or folder)).mkdir(parents=True, exist_ok=True)
        if data is not None:
            (img / folder / f"{name}.JPEG").write_bytes(data)
        (ann / (ann_folder or folder) / f"{name}.xml").write_text(xml_text)

    f = "n01"
    put(f, "rescale", jpeg(200, 150), xml(f, "rescale", 400, 300, [(40, 40, 120, 100)]))
    put(f, "clip", jpeg(200, 150), xml(f, "clip", 200, 150, [(150, 20, 230, 60)]))  # xmax > W: kept, clipped
    put(f, "outside", jpeg(200, 150), xml(f, "outside", 200, 150, [(210, 20, 250, 60), (10, 10, 50, 50)]))
    put(f, "gray", jpeg(120, 90, mode="L"), xml(f, "gray", 120, 90, [(10, 10, 40, 40)]))
    put(f, "progressive", jpeg(120, 90, progressive=True), xml(f, "progressive", 120, 90, [(10, 10, 40, 40)]))
    exif = Image.Exif()
    exif[0x0112] = 6
    put(f, "rotated", jpeg(120, 90, exif=exif.tobytes()), xml(f, "rotated", 120, 90, [(10, 10, 40, 40)]))
    put(f, "empty", b"", xml(f, "empty", 120, 90, [(10, 10, 40, 40)]))
    put(f, "garbage", b"\xff\xd8\xff" + bytes(range(256)) * 4, xml(f, "garbage", 120, 90, [(10, 10, 40, 40)]))
    put(f, "gif", b"GIF89a" + bytes(100), xml(f, "gif", 120, 90, [(10, 10, 40, 40)]))
    put(f, "missing", None, xml(f, "missing", 120, 90, [(10, 10, 40, 40)]))
    put(
        f,
        "badcoord",
        jpeg(120, 90),
        xml(f, "badcoord", 120, 90, [("abc", 10, 40, 40), (" 12.7", 10, 40, 40)]),
    )
    put(f, "nosize", jpeg(120, 90), "<annotation><folder>n01</folder><filename>nosize</filename></annotation>")
    secret = root / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file://{secret}">]>'
        "<annotation><folder>&e;</folder><filename>xxe</filename><size><width>9</width><height>9</height></size>"
        "</annotation>"
    )
    put(f, "xxe", jpeg(9, 9), xxe)
    put(f, "escape", jpeg(9, 9), xml("..", "escape", 120, 90, [(10, 10, 40, 40)]))
    put(f, "huge", jpeg(9, 9), xml(f, "huge", 120, 90, [(1, 1, 5, 5)]) + " " * (4 << 20))
    put(f, "dup", jpeg(120, 90), xml(f, "dup", 120, 90, [(10, 10, 40, 40)]))
    put(f, "dup", None, xml(f, "dup", 120, 90, [(20, 20, 50, 50)]), ann_folder="n02")  # same image, 2nd XML
    put("ILSVRC2013_train_extra0", "neg", jpeg(50, 50), xml("ILSVRC2013_train_extra0", "neg", 50, 50, []))

    frames, anns = root / "frames", root / "anns"
    cat = "01-Light"
    (anns / cat).mkdir(parents=True)

    def video(name: str, lines: str, n_frames: int, bad: dict[int, bytes | None] | None = None) -> None:
        (anns / cat / f"{name}.ann").write_text(lines)
        vdir = frames / cat / name
        vdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, n_frames + 1):
            data = (bad or {}).get(i, jpeg(100, 80, seed=i))
            if data is not None:
                (vdir / f"{i:08d}.jpg").write_bytes(data)

    def row(frame: int, x1: float, y1: float, x2: float, y2: float) -> str:  # corner order of the real file
        return f"{frame} {x2} {y1} {x1} {y1} {x1} {y2} {x2} {y2}\n"

    # v1: boxes partly outside (clipped), fully outside (its pairs dropped), blank line, duplicate, out of
    # range
    video(
        "01-Light_video00001",
        row(1, 11, 11, 31, 31) + "\n" + row(2, 91, 11, 121, 31) + row(3, 201, 201, 221, 221)
        + row(4, 11, 11, 31, 31) + row(4, 12, 12, 32, 32) + row(5, 21, 21, 41, 41) + row(99, 1, 1, 9, 9),
        6,
    )  # fmt: skip
    # v2: corrupt middle frame (truncated JPEG), unannotated gap (frame 4 missing), 1.5-style gap numbering
    good = jpeg(100, 80, seed=7)
    video(
        "01-Light_video00002",
        row(1, 11, 11, 31, 31) + row(3, 11, 11, 31, 31) + row(5, 11, 11, 31, 31) + row(6, 11, 11, 31, 31),
        6,
        {3: good[: len(good) // 2], 4: None},
    )
    video("01-Light_video00003", row(1, 11, 11, 31, 31), 2)  # one annotation: too few
    (anns / cat / "01-Light_video00004.ann").write_text(row(1, 11, 11, 31, 31) + row(2, 11, 11, 31, 31))  # no frames
    video("01-Light_video00005", row(1, 11, 11, 31, 31) + row(2, 11, 11, 31, 31), 2, {2: jpeg(120, 80)})
    return BuildConfig(
        out=root / "out",
        imagenet_images=img,
        imagenet_annotations=ann,
        alov_frames=frames,
        alov_annotations=anns,
        alov_val_fraction=0.0,
        workers=1,
        progress=False,
    )


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a build as ``{key: {ext: bytes}}``, read with `tarfile` (not with our readers)."""
    samples: dict[str, dict[str, bytes]] = {}
    for entry in json.loads((out / "manifest.json").read_text())["shards"]:
        with tarfile.open(out / entry["file"]) as tf:
            for info in tf:
                base = info.name.rsplit("/", 1)
                dot = base[-1].index(".")
                key = info.name[: len(info.name) - len(base[-1]) + dot]
                samples.setdefault(key, {})[base[-1][dot + 1 :]] = tf.extractfile(info).read()
    return samples
