"""Tiny shard-format-v1 writer for tests and benchmarks (the real builder is `pipeline.build_shards`).

Kept independent of the builder so the loader's tests do not depend on another module's progress, and usable
where `webdataset` is missing (it falls back to `tarfile`, which writes the same layout).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Sample:
    """One v1 sample: a still (``prev`` None, boxes (1,4)) or a pair (boxes (2,4) = [prev; curr])."""

    key: str
    curr: bytes | np.ndarray
    boxes: np.ndarray
    prev: bytes | np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)  # raw members to add or override (corruption tests)


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG of an HxWx3 (RGB) or HxW (grayscale) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32))
    return buf.getvalue()


def _members(s: Sample) -> dict[str, bytes]:
    enc = {"curr.jpg": s.curr if isinstance(s.curr, bytes) else jpeg_bytes(s.curr)}
    if s.prev is not None:
        enc["prev.jpg"] = s.prev if isinstance(s.prev, bytes) else jpeg_bytes(s.prev)
    enc["boxes.npy"] = npy_bytes(s.boxes)
    enc["meta.json"] = json.dumps({"key": s.key, **s.meta}).encode()
    enc.update(s.extra)
    return {k: v for k, v in enc.items() if v is not None}


def write_tar(path: Path, samples: Iterable[Sample], index: bool = True) -> Path:
    """Write one tar (members ``<key>.<ext>``, sorted ext per key as TarWriter does) and its DALI ``.idx``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for ext, data in sorted(_members(s).items()):
                ti = tarfile.TarInfo(f"{s.key}.{ext}")
                ti.size = len(data)
                ti.mtime = 0
                ti.mode = 0o444
                tf.addfile(ti, io.BytesIO(data))
    if index:
        write_index(path)
    return path


def write_index(tar: Path) -> Path:
    """DALI wds2idx v1.2 index beside the tar."""
    from wds2idx import IndexCreator  # installed with the nvidia-dali wheel

    idx = Path(tar).with_suffix(".idx")
    with IndexCreator(str(tar), str(idx), verbose=False) as ic:
        ic.create_index()
    return idx


def write_shards(
    out: Path,
    source: str,
    samples: Sequence[Sample],
    per_tar: int = 8,
    split: str = "train",
    index: bool = True,
) -> list[Path]:
    """``{out}/{source}-{split}-{NNNNNN}.tar`` files of ``per_tar`` samples each (webdataset.TarWriter if present)."""
    paths = []
    for i in range(0, len(samples), per_tar):
        p = Path(out) / f"{source}-{split}-{i // per_tar:06d}.tar"
        try:
            import webdataset as wds
        except ImportError:
            write_tar(p, samples[i : i + per_tar], index=index)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
                for s in samples[i : i + per_tar]:
                    w.write({"__key__": s.key, **_members(s)})
            if index:
                write_index(p)
        paths.append(p)
    return paths


def textured_image(rng: np.random.Generator, w: int, h: int, gray: bool = False) -> np.ndarray:
    """A photo-like test image: smooth colour gradients plus noise and a few rectangles (compresses like a photo)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(1 if gray else 3):
        a, b, c = rng.uniform(-1, 1, 3)
        f = rng.uniform(0.005, 0.03, 2)
        chans.append(128 + 60 * np.sin(xx * f[0] + a) * np.cos(yy * f[1] + b) + 30 * c)
    img = np.stack(chans, -1) + rng.normal(0, 12, (h, w, len(chans)))
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        img[y0 : y0 + rng.integers(4, h // 3), x0 : x0 + rng.integers(4, w // 3)] = rng.uniform(0, 255, len(chans))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if gray else img


def random_box(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A box of 5-60% of the image side, anywhere (touching borders sometimes)."""
    bw, bh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float32)


def synthetic_samples(
    n: int, source: str, seed: int = 0, w: int = 640, h: int = 480, prefix: str | None = None
) -> list[Sample]:
    """``n`` samples of ``source`` ('imagenet' = stills, 'alov' = pairs) with photo-like JPEGs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        curr = textured_image(rng, w, h)
        cb = random_box(rng, w, h)
        key = f"{prefix or source}_{i:06d}"
        if source == "imagenet":
            out.append(Sample(key, jpeg_bytes(curr), cb[None]))
        else:
            prev = textured_image(rng, w, h)
            pb = random_box(rng, w, h)
            out.append(Sample(key, jpeg_bytes(curr), np.stack([pb, cb]), prev=jpeg_bytes(prev)))
    return out
