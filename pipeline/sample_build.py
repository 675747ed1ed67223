"""Worker side: validate a planned sample's images by a full decode and produce its tar members.

Runs in the worker processes (or in-process with ``--workers 1``). The result is either the members to write
or the reasons the sample is left out; the main process writes members in planned order, so results never
depend on which worker finished first.
"""

from __future__ import annotations

import io
import json
import time
from typing import NamedTuple

import numpy as np

from pipeline.image_check import CheckedImage, ImageRejected, check_image, read_image_file
from pipeline.imagenet_det import scale_box
from pipeline.plan import PlannedSample
from shards.format import BOXES, CURR, META, PREV


class Failure(NamedTuple):
    """Why a sample was left out: which image/box (role 0 = first image), path, reason code, detail."""

    role: int
    path: str
    code: str
    detail: str


class SampleOutcome(NamedTuple):
    """Members to write (None when rejected), failures, per-sample notes for the manifest, stage timings."""

    key: str
    members: dict[str, bytes] | None
    failures: tuple[Failure, ...]
    converted: tuple[tuple[str, str], ...]  # (image path, why its bytes were converted)
    rescaled: bool
    clipped: tuple[int, ...]  # roles whose box was clipped to the image
    t_validate: float
    t_encode: float


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[np.ndarray, bool]:
    """Clip corners to the image ``[0, W] x [0, H]``; return float32 corners and whether anything moved."""
    x1, y1, x2, y2 = box
    c = (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )
    return np.asarray(c, dtype=np.float32), c != tuple(box)


def npy_bytes(boxes: np.ndarray) -> bytes:
    """``np.save`` bytes (float32, little-endian, no pickle): DALI's numpy decoder and np.load read them."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(boxes, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def meta_bytes(meta: dict) -> bytes:
    """Canonical JSON (sorted keys, no spaces), so equal metadata is equal bytes."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build_sample(s: PlannedSample) -> SampleOutcome:
    """Decode-validate every image of ``s``, derive its final boxes, and encode its members."""
    t0 = time.perf_counter()
    checked: list[CheckedImage] = []
    failures: list[Failure] = []
    for role, img in enumerate(s.images):
        try:
            checked.append(check_image(read_image_file(img.path)))
        except ImageRejected as e:
            failures.append(Failure(role, img.rel, e.code, e.detail))
    t1 = time.perf_counter()
    if failures:
        return SampleOutcome(s.key, None, tuple(failures), (), False, (), t1 - t0, 0.0)

    sizes = {(c.width, c.height) for c in checked}
    if len(sizes) > 1:
        detail = " vs ".join(f"{c.width}x{c.height}" for c in checked)
        failures.append(Failure(len(checked) - 1, s.images[-1].rel, "frame_size_mismatch", detail))
    boxes, clipped, rescaled = [], [], False
    for role, (box, c) in enumerate(zip(s.boxes, checked, strict=True)):
        if s.display_size is not None:
            box, scaled = scale_box(box, s.display_size[0], s.display_size[1], c.width, c.height)
            rescaled = rescaled or scaled
        b, moved = clip_box(box, c.width, c.height)
        if not (b[2] > b[0] and b[3] > b[1]):
            detail = f"box {tuple(round(v, 2) for v in box)} has no area inside {c.width}x{c.height}"
            failures.append(Failure(role, s.images[role].rel, "box_outside_image", detail))
        if moved:
            clipped.append(role)
        boxes.append(b)
    if failures:
        return SampleOutcome(s.key, None, tuple(failures), (), False, (), t1 - t0, 0.0)

    converted = tuple((img.rel, c.converted) for img, c in zip(s.images, checked, strict=True) if c.converted)
    meta = json.loads(s.meta)
    meta.update(
        width=checked[-1].width,
        height=checked[-1].height,
        rescaled=rescaled,
        clipped=[role in clipped for role in range(len(boxes))],
        converted=[c.converted for c in checked],
    )
    members = {CURR: checked[-1].data, BOXES: npy_bytes(np.stack(boxes)), META: meta_bytes(meta)}
    if len(checked) == 2:
        members[PREV] = checked[0].data
    t2 = time.perf_counter()
    return SampleOutcome(s.key, members, (), converted, rescaled, tuple(clipped), t1 - t0, t2 - t1)
