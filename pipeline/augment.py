"""GOTURN training examples from shard-format-v1 tars with NVIDIA DALI, fed to PyTorch.

Why DALI: the seed port made its 1 true + 10 shifted examples per pair in Python, inline with training, which caps
a GPU at about a tenth of what it could train. Here decoding, the motion model, the crops and (optionally) the
normalisation run in one DALI graph, on the GPU (``device="gpu"``: mixed nvJPEG decoder, GPU warps) or on DALI's
CPU backend (``device="cpu"``: same graph, used by tests and GPU-less machines).

Semantics are exactly `model.geometry` (`../shared/research/goturn_spec.md` sections 2, 3.3-3.5):

* Per decoded pair (ImageNet stills are pairs of one image with itself) the graph makes the authors' true example
  (search window at the previous box) and ``k`` examples whose search window is centred on
  ``BoundingBox::Shift(curr_box)``. The shift is the C++ loop itself, not an approximation: every one of the
  ``kMaxNumTries = 10`` tries is drawn up front (``(10, 2, k)`` uniforms) and the first accepted one is selected
  (min-reduction over the try index of accepted tries, then a one-hot sum, exact because every other term is
  ``x * 0``). The draws are consumed in the same roles as `model.geometry.shift_boxes` consumes its generator's,
  so feeding DALI's draws to that function reproduces the boxes bit for bit (the tests do exactly this).
* All box arithmetic is float64, operation for operation as in `model.geometry.crop_geometry` (floor
  truncations, ceil'd canvas, fractional edge spacing) and `recenter_scale`; DALI's float constants are float32,
  so non-float32-exact constants (e.g. the +-0.4 scale limits) are assembled exactly from float32 parts.
* A crop is ``fn.experimental.warp_perspective`` of the zero-extended image over the window with
  ``pixel_origin="corner"``: the same bilinear function as `model.geometry.crop_and_resize`.
* Sources (``imagenet``, ``alov``) each get a reader and a per-source batch of ``pairs_per_batch / n_sources``.
  Sample ``p`` of the DALI batch holds pair ``p`` of every source, and the crops are stacked per sample, so the
  output already alternates pair by pair (ImageNet, ALOV, ImageNet, ...) as the authors alternate
  ``train_image()`` / ``train_video()``, and reaches torch without a copy (the CPU backend is memory-bound).

See `GoturnLoader` for epochs, DDP sharding, determinism and resuming.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.geometry import CONTEXT_FACTOR, INPUT_SIZE, MAX_NUM_TRIES, SCALE_FACTOR, MotionParams
from model.preprocess import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

DEFAULT_MOTION = MotionParams()  # train.sh's lambda_shift 5, lambda_scale 15, scale +-0.4
SOURCES = ("imagenet", "alov")  # the authors' order: train_image() then train_video()
NORMALIZATIONS = {
    # model.preprocess.normalize's modes as (channel order, per-channel mean, per-channel std) on 0-255 values
    "caffe": ("BGR", CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)),
    "opencv": ("BGR", (128.0, 128.0, 128.0), (1.0, 1.0, 1.0)),
    "imagenet": ("RGB", tuple(255 * m for m in IMAGENET_MEAN_RGB), tuple(255 * v for v in IMAGENET_STD_RGB)),
}
_SHARD_RE = re.compile(r"^(?P<source>[A-Za-z0-9]+)-(?P<split>[A-Za-z0-9]+)-(?P<num>\d{6})\.tar$")
_DATA_OPS_RE = re.compile(r"fn\.(decoders|readers|peek_image_shape)")
_SOURCE_INFO_RE = re.compile(r"(?P<tar>[^\s'\"]+?\.tar):(?P<offset>\d+):(?P<member>[^\s'\"]+)")


class SampleDecodeError(RuntimeError):
    """A sample in a batch could not be read or decoded; the message names the shard and the key."""


# ----------------------------------------------------------------------------------------------------------------
# Shard discovery
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSet:
    """The tars of one source and split, with their sample counts and what kind of samples they hold."""

    source: str
    split: str
    tars: tuple[str, ...]
    index_paths: tuple[str, ...] | None  # None when any .idx is missing (DALI then infers the index)
    counts: tuple[int, ...]
    has_pairs: bool  # some sample has prev.jpg
    has_stills: bool  # some sample lacks prev.jpg

    @property
    def num_samples(self) -> int:
        return sum(self.counts)


def _scan_members(tar: Path, idx: Path | None) -> list[set[str]]:
    """Extensions per sample, from the .idx (cheap) or the tar headers (fallback)."""
    if idx is not None:
        lines = idx.read_text().splitlines()
        head = lines[0].split()
        if not head or not head[0].startswith("v1"):
            raise ValueError(f"{idx}: not a DALI wds2idx v1.x index")
        samples = []
        for line in lines[1:]:
            f = line.split()
            samples.append(set(f[0::4]))
        return samples
    by_key: dict[str, set[str]] = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)
            dot = base[-1].find(".")
            if dot < 0:
                continue
            key = m.name[: len(m.name) - len(base[-1]) + dot]
            by_key.setdefault(key, set()).add(base[-1][dot + 1 :])
    return list(by_key.values())


def find_shards(shards: str | Path, split: str = "train", sources: Sequence[str] | None = None) -> list[ShardSet]:
    """The shard sets of ``split`` under ``shards`` (format v1 names), one per source, in the authors' order."""
    root = Path(shards)
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory {root} does not exist")
    found: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        m = _SHARD_RE.match(p.name)
        if m and m["split"] == split:
            found.setdefault(m["source"], []).append(p)
    wanted = list(sources) if sources is not None else [s for s in SOURCES if s in found]
    wanted += [] if sources is not None else sorted(s for s in found if s not in SOURCES)
    if not wanted:
        raise FileNotFoundError(f"no '{{source}}-{split}-NNNNNN.tar' shards in {root}")
    sets = []
    for src in wanted:
        tars = found.get(src)
        if not tars:
            raise FileNotFoundError(f"no {src}-{split}-*.tar shards in {root}")
        idxs = [t.with_suffix(".idx") for t in tars]
        have_idx = all(i.is_file() for i in idxs)
        counts, pairs, stills = [], False, False
        for t, i in zip(tars, idxs, strict=True):
            members = _scan_members(t, i if have_idx else None)
            counts.append(len(members))
            pairs |= any("prev.jpg" in s for s in members)
            stills |= any("prev.jpg" not in s for s in members)
        sets.append(
            ShardSet(
                source=src,
                split=split,
                tars=tuple(str(t) for t in tars),
                index_paths=tuple(str(i) for i in idxs) if have_idx else None,
                counts=tuple(counts),
                has_pairs=pairs,
                has_stills=stills,
            )
        )
    return sets


# ----------------------------------------------------------------------------------------------------------------
# The DALI graph
# ----------------------------------------------------------------------------------------------------------------


def _f32_parts(x: float) -> list[float]:
    """Split a float64 into float32-exact parts whose float64 sum is exactly ``x`` (DALI constants are float32)."""
    parts, r = [], float(x)
    for _ in range(3):
        p = float(np.float32(r))
        parts.append(p)
        r = r - p
        if r == 0.0:
            break
    assert math.fsum(parts) == float(x), x
    return parts


def _const64(like: Any, x: float) -> Any:
    """``x`` as an exact float64 operand next to the float64 node ``like`` (a plain float when float32-exact)."""
    parts = _f32_parts(x)
    if len(parts) == 1:
        return parts[0]  # promoted exactly to float64 by DALI's arithmetic
    out = like * 0.0
    for p in parts:
        out = out + p
    return out


def _laplace(fn: Any, types: Any, dmath: Any, lam: float, shape: list[int], seeds: Sequence[int]) -> tuple:
    """sample_exp_two_sided as `model.geometry.sample_laplace`: ``log(1 - U) / lam * (V < 0.5 ? 1 : -1)``."""
    u = fn.random.uniform(range=[0.0, 1.0], shape=shape, dtype=types.FLOAT64, seed=seeds[0])
    v = fn.random.uniform(range=[0.0, 1.0], shape=shape, dtype=types.FLOAT64, seed=seeds[1])
    sign = fn.cast(v < 0.5, dtype=types.FLOAT64) * 2.0 - 1.0  # exactly +-1
    return dmath.log(1.0 - u) / _const64(u, lam) * sign, u, v


def _clip(dmath: Any, x: Any, lo: Any, hi: Any) -> Any:
    """np.clip(x, lo, hi) = minimum(maximum(x, lo), hi)."""
    return dmath.min(dmath.max(x, lo), hi)


def _shift(fn, types, dmath, lo, hi, size, k: int, params: MotionParams, seeds: Sequence[int]) -> dict:
    """BoundingBox::Shift of both axes at once: ``lo``, ``hi``, ``size`` are (2, 1) = (x; y) float64 nodes.

    Returns the new centres and sizes (2, k) and the raw draws; semantics of `model.geometry._shift_axis`.
    The first accepted of the 10 tries is found with a min-reduction over ``try index + 100 * rejected`` and taken
    with a one-hot sum (exact: every other term is ``cand * 0``), fewer DALI ops than a chain of selects.
    """
    extent = hi - lo
    centre = (lo + hi) / 2
    s_lap, us, vs = _laplace(fn, types, dmath, params.lambda_scale, [2, k], seeds[0:2])
    s = _clip(dmath, s_lap, _const64(s_lap, params.min_scale), _const64(s_lap, params.max_scale))
    new = _clip(dmath, extent * (1.0 + s), 1.0, size - 1.0)  # (2, k)
    d, ud, vd = _laplace(fn, types, dmath, params.lambda_shift, [MAX_NUM_TRIES, 2, k], seeds[2:4])
    half_new = new / 2
    cand = _clip(dmath, centre + extent * d, half_new, size - half_new)  # (10, 2, k)
    half = extent * CONTEXT_FACTOR / 2
    ok = (cand >= centre - half) & (cand <= centre + half) & (cand - half_new >= 0.0) & (cand + half_new <= size)
    tries = types.Constant(np.arange(MAX_NUM_TRIES, dtype=np.float32).reshape(MAX_NUM_TRIES, 1, 1))
    score = tries + fn.cast(ok, dtype=types.FLOAT) * -100.0 + 100.0  # accepted tries score < 100
    first = dmath.min(fn.reductions.min(score, axes=[0]), float(MAX_NUM_TRIES - 1))  # the 10th is always kept
    picked = cand * fn.cast(tries == first, dtype=types.FLOAT64)  # the chosen try, zeros elsewhere
    r = picked[0]
    for t in range(1, MAX_NUM_TRIES):  # DALI reductions lack float64; adding exact zeros is exact
        r = r + picked[t]
    return {"centre": r, "size": new, "draws": (us, vs, ud, vd)}


def _crop_geometry(dmath, lo, hi, size) -> dict:
    """`model.geometry.crop_geometry` on (2, n) = (x; y) float64 nodes, ``size`` (2, 1) = (W; H)."""
    c = (lo + hi) / 2
    o = dmath.max(1.0, CONTEXT_FACTOR * (hi - lo))  # _output_size
    loc_lo = dmath.max(0.0, c - o / 2)
    roi = dmath.max(1.0, dmath.min(o / 2, c) + dmath.min(o / 2, size - c))
    loc_hi = loc_lo + roi
    start = dmath.floor(dmath.min(loc_lo, size - 1.0))
    roi_int = dmath.min(size, dmath.max(1.0, dmath.ceil(loc_hi - loc_lo)))
    canvas = dmath.max(dmath.ceil(o), roi_int)
    edge = dmath.min(dmath.max(0.0, o / 2 - c), canvas - 1.0)
    x0 = start - dmath.floor(edge)
    return {"loc_lo": loc_lo, "edge": edge, "canvas": canvas, "w0": x0, "w1": x0 + canvas}


def _recenter_scale(g_lo, g_hi, geom: dict) -> tuple:
    """`model.geometry.recenter_scale`: box corners (2, n) in the crop frame, x10 of the integer canvas."""
    origin = geom["loc_lo"] - geom["edge"]
    scale = SCALE_FACTOR / geom["canvas"]
    return (g_lo - origin) * scale, (g_hi - origin) * scale


def _example_graph(
    prev_jpg,
    curr_jpg,
    boxes_raw,
    *,
    still: bool | None,
    device: str,
    layout: str,
    k: int,
    params: MotionParams,
    output: str,
    normalization: str,
    seeds: Sequence[int],
    debug_draws: bool,
) -> dict:
    """One source: its target crop (3, 227, 227), its 1 + k search crops (list of (3, 227, 227)) and the boxes.

    ``still`` True / False / None = all stills / all pairs / decide per sample. ``layout`` "CHW": crops are sampled
    from the decoded image transposed once (cheaper than transposing 12 crops; the CPU backend is memory-bound);
    "HWC": crops stay HWC (channels-last output, or float output where crop_mirror_normalize transposes anyway).
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    gpu = device == "gpu"
    dec = {"device": "mixed", "jpeg_fancy_upsampling": True} if gpu else {"device": "cpu"}

    def planar(img):  # decoded RGB HWC -> the crop source: BGR for Caffe float output, CHW if asked
        if output == "float" and NORMALIZATIONS[normalization][0] == "BGR":
            img = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.BGR)
        return fn.transpose(img, perm=[2, 0, 1]) if layout == "CHW" else img

    curr_hwc = fn.decoders.image(curr_jpg, output_type=types.RGB, **dec)
    curr = planar(curr_hwc)
    if still is True:
        prev = curr
    elif still is False:
        prev = planar(fn.decoders.image(prev_jpg, output_type=types.RGB, **dec))
    else:
        prev = _decode_prev_or_curr(prev_jpg, curr, dec, planar)

    # Image size: from the JPEG header on the GPU path (keeps the CPU box math independent of the GPU decode).
    shp = fn.peek_image_shape(curr_jpg) if gpu else curr_hwc.shape()
    size = fn.reshape(fn.cast(fn.stack(shp[1], shp[0]), dtype=types.FLOAT64), shape=[2, 1])  # (W; H)

    boxes = fn.cast(fn.decoders.numpy(boxes_raw), dtype=types.FLOAT64)  # (2, 4) [prev; curr] or (1, 4)
    pb = fn.reshape(boxes[0], shape=[2, 2])  # rows: (x1, y1), (x2, y2)
    cb = fn.reshape(boxes[-1], shape=[2, 2])
    p_lo, p_hi = fn.reshape(pb[0], shape=[2, 1]), fn.reshape(pb[1], shape=[2, 1])
    c_lo, c_hi = fn.reshape(cb[0], shape=[2, 1]), fn.reshape(cb[1], shape=[2, 1])

    if k > 0:
        sh = _shift(fn, types, dmath, c_lo, c_hi, size, k, params, seeds)
        half = sh["size"] / 2
        s_lo = fn.cat(p_lo, sh["centre"] - half, axis=1)  # (2, 1 + k): true example first
        s_hi = fn.cat(p_hi, sh["centre"] + half, axis=1)
    else:
        sh, s_lo, s_hi = None, p_lo, p_hi
    geom = _crop_geometry(dmath, s_lo, s_hi, size)
    t_lo, t_hi = _recenter_scale(c_lo, c_hi, geom)  # current box in every search crop
    bbox = fn.transpose(fn.cat(t_lo, t_hi, axis=0), perm=[1, 0])  # (1 + k, 4)
    windows = fn.transpose(fn.cat(geom["w0"], geom["w1"], axis=0), perm=[1, 0])
    search_boxes = fn.transpose(fn.cat(s_lo, s_hi, axis=0), perm=[1, 0])
    tb_lo, tb_hi = _recenter_scale(p_lo, p_hi, geom)  # previous box in the target crop (column 0), for display
    target_box = fn.cat(tb_lo, tb_hi, axis=0)[:, 0]

    # Destination -> source maps: src = x0 + (j + 0.5) * canvas / 227 in corner-origin pixels.
    w0, cv = geom["w0"], geom["canvas"]
    sx, sy = cv[0] / float(INPUT_SIZE), cv[1] / float(INPUT_SIZE)
    z = sx * 0.0
    mats = fn.reshape(
        fn.cast(fn.stack(sx, z, w0[0], z, sy, w0[1], z, z, z + 1.0, axis=1), dtype=types.FLOAT),
        shape=[k + 1, 3, 3],
    )
    if gpu:
        mats = mats.gpu()

    def warp(img, i):
        return fn.experimental.warp_perspective(
            img,
            mats[i],
            size=[INPUT_SIZE, INPUT_SIZE],
            border_mode="constant",
            fill_value=[0.0],
            interp_type=types.INTERP_LINEAR,
            pixel_origin="corner",
        )

    crops = [warp(curr, i) for i in range(k + 1)]
    target = crops[0] if still is True else warp(prev, 0)  # a still's target crop is its true search crop
    out = {
        "target": target,
        "crops": crops,
        "bbox": bbox,
        "windows": windows,
        "search_boxes": search_boxes,
        "target_box": target_box,
        "size": fn.reshape(size, shape=[2]),
    }
    if debug_draws and sh is not None:
        for i, name in enumerate(DRAW_NAMES):  # not zip(strict=True): AutoGraph (conditionals) lacks its kwargs
            out[name] = sh["draws"][i]
    return out


def _decode_prev_or_curr(prev_jpg, curr, dec: dict, planar):
    """Mixed still/pair shards: decode ``prev.jpg`` where the sample has one, else reuse ``curr`` (a still)."""
    from nvidia.dali import fn, types

    # An if statement (not a conditional expression): DALI's AutoGraph turns it into a per-sample split/merge.
    if prev_jpg.shape()[0] > 0:  # noqa: SIM108
        prev = planar(fn.decoders.image(prev_jpg, output_type=types.RGB, **dec))
    else:
        prev = curr
    return prev


READER_EXTS = ["prev.jpg", "curr.jpg", "boxes.npy"]
BATCH_NAMES = ("target", "search", "bbox")  # combined over sources, already in the loader's output layout
AUDIT_NAMES = ("windows", "search_boxes", "target_box", "size")  # per source
DRAW_NAMES = ("u_scale", "v_scale", "u_shift", "v_shift")  # per source, debug only


def _goturn_pipeline_fn(
    readers: Sequence[dict], graph_kw: dict, expand_target: bool, audit_names: Sequence[str], out_layout: str
):
    """The pipeline body: one reader + example graph per source; crops of all sources stacked per sample.

    Sample ``p`` of the batch holds pair ``p`` of every source, so stacking per sample gives the final batch
    layout (pairs alternating between sources, examples grouped by pair) with no copy outside DALI:
    ``target`` / ``search`` (n_src * (1 + k), 3, 227, 227) ("FCHW"; (..., 227, 227, 3) for "FHWC") and ``bbox``
    (n_src, 1 + k, 4) per sample.
    """
    from nvidia.dali import fn, types

    per = []
    for r in readers:
        prev_jpg, curr_jpg, boxes_raw = fn.readers.webdataset(
            ext=READER_EXTS, missing_component_behavior="empty", **r["reader"]
        )
        per.append(_example_graph(prev_jpg, curr_jpg, boxes_raw, still=r["still"], seeds=r["seeds"], **graph_kw))
    e = 1 + graph_kw["k"]
    search = fn.stack(*[c for g in per for c in g["crops"]], axis=0, axis_name="F")
    target = fn.stack(*[g["target"] for g in per for _ in range(e if expand_target else 1)], axis=0, axis_name="F")
    if graph_kw["output"] == "float":
        _, mean, std = NORMALIZATIONS[graph_kw["normalization"]]
        cmn = {"dtype": types.FLOAT, "mean": list(mean), "std": list(std), "output_layout": out_layout}
        search = fn.crop_mirror_normalize(search, **cmn)
        target = fn.crop_mirror_normalize(target, **cmn)
    bbox = fn.cast(fn.stack(*[g["bbox"] for g in per], axis=0), dtype=types.FLOAT)
    outs = [target, search, bbox]
    for g in per:
        outs.extend(g[n] for n in audit_names)
    return tuple(outs)


def _reader_kwargs(s: ShardSet, shard_id: int, num_shards: int, shuffle_buffer: int, seed: int) -> dict:
    """fn.readers.webdataset arguments of one source (shared by the training and the diagnostic pipelines)."""
    reader = {
        "paths": list(s.tars),
        "shard_id": shard_id,
        "num_shards": num_shards,
        "stick_to_shard": True,
        "pad_last_batch": False,
        "random_shuffle": shuffle_buffer > 1,
        "initial_fill": max(1, shuffle_buffer),
        "seed": int(seed),
        "name": f"reader_{s.source}",
    }
    if s.index_paths is not None:
        reader["index_paths"] = list(s.index_paths)
    return reader


def build_pipeline(
    shard_sets: Sequence[ShardSet],
    *,
    pairs_per_source: int,
    device: str = "cpu",
    device_id: int | None = None,
    k: int = 10,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    shuffle_buffer: int = 1024,
    num_threads: int = 2,
    prefetch: int = 2,
    params: MotionParams = DEFAULT_MOTION,
    output: str = "uint8",
    normalization: str = "caffe",
    expand_target: bool = True,
    channels_last: bool = False,
    audit: bool = False,
    debug_draws: bool = False,
    checkpoint: bytes | str | None = None,
    reader_seed: int | None = None,
):
    """Build (not start) the DALI pipeline: one reader per shard set, each with a batch of ``pairs_per_source``.

    Outputs: ``target``, ``search`` (per sample (n_src * (1 + k), 3, 227, 227), or n_src targets without
    ``expand_target``; (..., 227, 227, 3) with ``channels_last``), ``bbox`` (n_src, 1 + k, 4); then per source
    the `AUDIT_NAMES` (``audit``) and `DRAW_NAMES` (``debug_draws``) outputs, listed in ``pipe.audit_names``.

    Readers use ``stick_to_shard=True`` (each rank only ever reads its own contiguous sample range of the
    concatenated tars; every pass over it is a fresh shuffle) and ``pad_last_batch=False`` (the iterator stops
    before a rank runs out, see `GoturnLoader`). Random ops get explicit seeds, so CPU and GPU graphs draw the same
    numbers for the same ``seed``.
    """
    from nvidia.dali import pipeline_def

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if output not in ("uint8", "float"):
        raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    ss = np.random.SeedSequence([seed, 0x60721])
    readers = []
    for i, s in enumerate(shard_sets):
        op_seeds = [int(x) & 0x7FFFFFFF for x in np.random.SeedSequence([seed, i, 7]).generate_state(5)]
        reader = _reader_kwargs(
            s, shard_id, num_shards, shuffle_buffer, reader_seed if reader_seed is not None else op_seeds[4]
        )
        still = True if not s.has_pairs else (False if not s.has_stills else None)
        readers.append({"reader": reader, "still": still, "seeds": op_seeds[:4]})
    out_layout = "FHWC" if channels_last else "FCHW"
    graph_kw = {
        "device": device,
        "layout": "HWC" if channels_last or output == "float" else "CHW",
        "k": k,
        "params": params,
        "output": output,
        "normalization": normalization,
        "debug_draws": debug_draws,
    }
    audit_names = (AUDIT_NAMES if audit or debug_draws else ()) + (DRAW_NAMES if debug_draws and k > 0 else ())
    conditionals = any(r["still"] is None for r in readers)
    kw = {
        "batch_size": pairs_per_source,
        "num_threads": num_threads,
        "device_id": (device_id if device_id is not None else _default_device_id()) if device == "gpu" else None,
        "seed": int(ss.generate_state(1)[0] & 0x7FFFFFFF),
        "prefetch_queue_depth": prefetch,
        "enable_conditionals": conditionals,
        "enable_checkpointing": True,
    }
    if checkpoint is not None:
        kw["checkpoint"] = checkpoint
    pipe = pipeline_def(_goturn_pipeline_fn, **kw)(readers, graph_kw, expand_target, audit_names, out_layout)
    pipe.audit_names = audit_names  # remembered for the iterator
    return pipe


def _default_device_id() -> int:
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def _member_problems(members: dict[str, bytes], still_ok: bool = True) -> list[str]:
    """What is wrong with one sample's raw members (decoded with DALI's own CPU decoder, as training does)."""
    problems = []
    for ext in ("curr.jpg", "prev.jpg"):
        data = members.get(ext, b"")
        if not data:
            if ext == "curr.jpg":
                problems.append("curr.jpg missing or empty")
            continue
        err = _probe_decode(data)
        if err:
            problems.append(f"{ext} does not decode ({err})")
    raw = members.get("boxes.npy", b"")
    try:
        import io

        boxes = np.load(io.BytesIO(raw), allow_pickle=False)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] not in (1, 2):
            problems.append(f"boxes.npy has shape {boxes.shape}, expected (2, 4) or (1, 4)")
        elif boxes.shape[0] == 2 and not members.get("prev.jpg"):
            problems.append("boxes.npy has 2 rows but the sample has no prev.jpg")
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        problems.append(f"boxes.npy unreadable ({type(e).__name__}: {str(e)[:80]})")
    return problems


def _probe_decode(data: bytes) -> str | None:
    """Decode one JPEG with DALI's CPU decoder in a throwaway pipeline; the error text or None."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def probe():
        return fn.decoders.image(fn.external_source(name="jpg", dtype=types.UINT8, ndim=1), output_type=types.RGB)

    pipe = probe()
    try:
        pipe.build()
        pipe.feed_input("jpg", [np.frombuffer(data, dtype=np.uint8)])
        pipe.run()
        return None
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "failure" in ln.lower() or "decode" in ln.lower()]
        return (detail[-1] if detail else lines[-1] if lines else "error")[:160]
    finally:
        del pipe


def _find_bad_samples(
    shard_sets: Sequence[ShardSet], reader_kw: Sequence[dict], batch_size: int, batch_index: int
) -> list[tuple[str, str, list[str]]]:
    """Replay the readers (bytes only, cheap) up to batch ``batch_index`` and check each of its samples.

    Needed because DALI names the failing sample only for some decoder errors.
    """
    from nvidia.dali import fn, pipeline_def

    def body():
        outs = []
        for kw in reader_kw:
            outs.extend(fn.readers.webdataset(ext=READER_EXTS, missing_component_behavior="empty", **kw))
        return tuple(outs)

    pipe = pipeline_def(body, batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=1)()
    pipe.build()
    for _ in range(batch_index):
        pipe.run()
    outs = pipe.run()
    del pipe
    bad = []
    for s in range(len(shard_sets)):
        tls = outs[3 * s : 3 * s + 3]
        for i in range(batch_size):
            members = {ext: np.asarray(tl[i]).tobytes() for ext, tl in zip(READER_EXTS, tls, strict=True)}
            info = next((tl[i].source_info() for tl in tls if tl[i].source_info()), "?:0:?")
            problems = _member_problems(members)
            if problems:
                tar, key = _split_source_info(info)
                bad.append((tar, key, problems))
    return bad


def _explain(err: Exception, bad: Sequence[tuple[str, str, list[str]]] | None, shard_sets) -> SampleDecodeError:
    """DALI's RuntimeError -> an error naming the shard(s), the key(s) and what is wrong with each."""
    text = str(err)
    first = " | ".join(line.strip() for line in text.splitlines() if line.strip())[:600]
    found = [f"key={key!r} in shard {tar}: {'; '.join(p)}" for tar, key, p in (bad or [])]
    if not found:
        m = _SOURCE_INFO_RE.search(text)
        if m:
            tar, key = _split_source_info(f"{m['tar']}:{m['offset']}:{m['member']}")
            found = [f"key={key!r} in shard {tar} (member {m['member']!r})"]
    if found:
        what = "cannot read/decode sample " + " and ".join(found[:4])
        what += f" (+{len(found) - 4} more)" if len(found) > 4 else ""
    else:
        tars = [t for s in shard_sets for t in s.tars]
        shown = ", ".join(tars[:8]) + (f", ... ({len(tars)} tars)" if len(tars) > 8 else "")
        what = f"a sample of this batch could not be read/decoded (not identified) from shards [{shown}]"
    return SampleDecodeError(
        f"{what}. DALI dropped the whole batch; iterating again continues with the next one. Re-validate or "
        f"rebuild the shard. DALI said: {first}"
    )


# ----------------------------------------------------------------------------------------------------------------
# PyTorch iterator
# ----------------------------------------------------------------------------------------------------------------


def _to_torch(tl: Any, gpu_device: torch.device | None) -> torch.Tensor:
    """DALI TensorList -> torch tensor without a copy (dynamic executor: buffers stay valid)."""
    t = tl.as_tensor()
    if gpu_device is not None and type(t).__name__ == "TensorGPU":
        with torch.cuda.device(gpu_device):
            return torch.from_dlpack(t)
    return torch.from_dlpack(t)


def _split_source_info(info: str) -> tuple[str, str]:
    """'<tar>:<offset>:<key>.boxes.npy' -> (tar, key)."""
    tar, _, member = info.rsplit(":", 2)
    base = member.rsplit("/", 1)[-1]
    dot = base.find(".")
    return tar, member[: len(member) - len(base) + dot] if dot >= 0 else member


class GoturnLoader:
    """Iterable of GOTURN training batches (dicts of torch tensors) from shard-format-v1 tars.

    Each batch: ``target`` and ``search`` (N, 3, 227, 227) uint8 RGB (or normalised float32 with
    ``output="float"``), ``bbox`` (N, 4) float32 targets x10, N = ``pairs_per_batch * (1 + k)``; pairs alternate
    between the sources (ImageNet, ALOV, ImageNet, ...), and each pair's examples are [true, shift_1..shift_k] with
    the pair's target crop repeated (``expand_target=False``: one target per pair, (pairs, 3, 227, 227), for a
    trainer that repeats it on the GPU). ``channels_last=True`` yields the same (N, 3, 227, 227) tensors in
    ``torch.channels_last`` memory format (a free view of DALI's HWC crops; saves a transpose on the CPU backend).
    Tensors are zero-copy views of DALI's buffers, on the GPU with ``device="gpu"``. ``audit=True`` adds
    ``keys`` (list of N ``"<tar>:<key>"``), ``source``, ``example_index``, ``target_windows`` /
    ``search_windows`` (N, 4) float64 source-image pixels, ``search_boxes``, ``target_box`` and ``image_size``
    (CPU tensors).

    Epoch: one pass over each rank's share of the *largest* source (``len(self)`` batches, equal on every rank:
    ``(n_largest // num_shards) // (pairs_per_batch // n_sources)``); smaller sources are cycled as often as needed
    (each pass over them is a fresh shuffle). Epoch ``e`` is a deterministic function of ``(seed, e, shard_id,
    num_shards)`` and of nothing else: a new DALI pipeline is built per epoch with a seed derived from those, and
    rank ``r`` reads the contiguous sample range ``(r + e) % num_shards`` of each source (DALI shards by sample over
    the concatenated tars), so ranks are disjoint within an epoch, together cover the largest source except each
    rank's last ``< pairs_per_source`` samples of its range (the shuffled tail, different every epoch), and see
    different data in different epochs.

    Position and resume: iteration continues from ``(epoch, batch)``; breaking out of the loop and iterating again
    resumes where it stopped, and a finished epoch advances ``epoch``. ``state_dict()`` records the position plus
    this rank's DALI checkpoint; ``load_state_dict()`` restores it exactly: from the checkpoint when it was taken by
    the same rank with the same configuration (instant), else by rebuilding the epoch's pipeline and skipping
    ``batch`` batches (same batches, costs their compute). ``set_epoch(e)`` jumps to the start of epoch ``e``.

    Normalisation: uint8 output is normalised by the trainer on the GPU with
    ``model.preprocess.normalize(x, mode=loader.normalization)`` (4x less host traffic); ``output="float"`` makes
    the pipeline emit that normalised float32 instead (``caffe``: BGR minus 104/117/123, 0-255; ``opencv``: BGR
    minus 128; ``imagenet``: RGB, (x/255 - mean) / std), and ``loader.output`` says which one a batch holds.

    A sample that cannot be decoded raises `SampleDecodeError` naming its shard and key (never a hang); that batch
    is lost, and iterating again continues with the next batch.
    """

    def __init__(
        self,
        shards: str | Path,
        split: str = "train",
        device: str = "cpu",
        pairs_per_batch: int = 32,
        k: int = 10,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        *,
        sources: Sequence[str] | None = None,
        normalization: str = "caffe",
        output: str = "uint8",
        num_threads: int | None = None,
        prefetch: int = 2,
        device_id: int | None = None,
        shuffle_buffer: int = 1024,
        motion: MotionParams = DEFAULT_MOTION,
        expand_target: bool = True,
        channels_last: bool = False,
        audit: bool = False,
        debug_draws: bool = False,
    ) -> None:
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
        if k < 0:
            raise ValueError("k must be >= 0")
        self.shard_sets = find_shards(shards, split, sources)
        n_src = len(self.shard_sets)
        if pairs_per_batch % n_src:
            raise ValueError(f"pairs_per_batch={pairs_per_batch} must be a multiple of the {n_src} sources")
        self.shards, self.split, self.device = str(shards), split, device
        self.pairs_per_batch, self.pairs_per_source, self.k = pairs_per_batch, pairs_per_batch // n_src, k
        self.seed, self.shard_id, self.num_shards = int(seed), int(shard_id), int(num_shards)
        self.sources = tuple(s.source for s in self.shard_sets)
        self.normalization, self.output, self.motion = normalization, output, motion
        self.num_threads = num_threads or max(1, min(8, len(os.sched_getaffinity(0))))
        self.prefetch, self.device_id, self.shuffle_buffer = prefetch, device_id, shuffle_buffer
        self.expand_target, self.channels_last = expand_target, channels_last
        self.audit, self.debug_draws = audit, debug_draws
        self.epoch_source = max(self.shard_sets, key=lambda s: s.num_samples).source
        n_max = max(s.num_samples for s in self.shard_sets)
        self.steps_per_epoch = (n_max // num_shards) // self.pairs_per_source
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{n_max} {self.epoch_source} samples over {num_shards} ranks give no full batch of "
                f"{self.pairs_per_source} pairs per source; use fewer ranks or a smaller pairs_per_batch"
            )
        if output not in ("uint8", "float") or normalization not in NORMALIZATIONS or device not in ("cpu", "gpu"):
            raise ValueError("bad output / normalization / device")
        self.epoch, self.batch = 0, 0
        self._pipe = None
        self._pipe_pos: tuple[int, int] | None = None  # (epoch, batches already returned) of the live pipeline
        self._restore: bytes | str | None = None

    # -- public API ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch, identical on every rank."""
        return self.steps_per_epoch

    @property
    def examples_per_batch(self) -> int:
        return self.pairs_per_batch * (1 + self.k)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (like DistributedSampler.set_epoch)."""
        if (epoch, 0) != (self.epoch, self.batch):
            self.epoch, self.batch, self._restore = int(epoch), 0, None

    def state_dict(self) -> dict:
        """Data position (epoch, batch) plus this rank's DALI checkpoint for an instant exact resume."""
        cpt = self._restore  # loaded but not yet used: pass it on unchanged
        if self._pipe is not None and self._pipe_pos == (self.epoch, self.batch) and self.batch > 0:
            cpt = self._pipe.checkpoint()
        return {
            "format": "goturn-loader-v1",
            "epoch": self.epoch,
            "batch": self.batch,
            "config": self._config(),
            "dali_checkpoint": cpt,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s position (see the class docstring for how)."""
        if state.get("format") != "goturn-loader-v1":
            raise ValueError("not a GoturnLoader state dict")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if self.batch >= self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        same = state.get("config") == self._config()
        self._restore = state.get("dali_checkpoint") if same and self.batch > 0 else None
        self._close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.batch < self.steps_per_epoch:
            pipe = self._pipeline()
            try:
                outs = pipe.run()
            except RuntimeError as e:
                failed = self.batch
                self.batch += 1
                self._pipe_pos = (self.epoch, self.batch)
                bad = self._diagnose(failed)
                if bad or _DATA_OPS_RE.search(str(e)):
                    raise _explain(e, bad, self.shard_sets) from e
                raise
            self.batch += 1
            self._pipe_pos = (self.epoch, self.batch)
            yield self._assemble(outs, pipe.audit_names)
        self._close()
        self.epoch, self.batch = self.epoch + 1, 0

    def close(self) -> None:
        """Free the DALI pipeline (and its GPU memory) now."""
        self._close()

    # -- internals -------------------------------------------------------------------------------------------------

    def _config(self) -> dict:
        return {
            "shards": [[os.path.basename(t) for t in s.tars] for s in self.shard_sets],  # movable directory
            "counts": [list(s.counts) for s in self.shard_sets],
            "split": self.split,
            "device": self.device,
            "pairs_per_batch": self.pairs_per_batch,
            "k": self.k,
            "seed": self.seed,
            "shard_id": self.shard_id,
            "num_shards": self.num_shards,
            "output": self.output,
            "normalization": self.normalization,
            "motion": asdict(self.motion),
            "shuffle_buffer": self.shuffle_buffer,
            "expand_target": self.expand_target,
            "channels_last": self.channels_last,
            "audit": self.audit,
            "debug_draws": self.debug_draws,
        }

    def _close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None
        self._pipe_pos = None

    def _epoch_seed(self) -> tuple[int, int]:
        """(pipeline seed for this rank, reader shuffle seed shared by all ranks) of the current epoch."""
        a = np.random.SeedSequence([self.seed, self.epoch, self.shard_id, self.num_shards]).generate_state(1)[0]
        b = np.random.SeedSequence([self.seed, self.epoch, 0xF00D]).generate_state(1)[0]
        return int(a & 0x7FFFFFFF), int(b & 0x7FFFFFFF)

    def _pipeline(self):
        if self._pipe is not None and self._pipe_pos == (self.epoch, self.batch):
            return self._pipe
        self._close()
        seed, rseed = self._epoch_seed()
        kw = {
            "pairs_per_source": self.pairs_per_source,
            "device": self.device,
            "device_id": self.device_id,
            "k": self.k,
            "seed": seed,
            "shard_id": (self.shard_id + self.epoch) % self.num_shards,
            "num_shards": self.num_shards,
            "shuffle_buffer": self.shuffle_buffer,
            "num_threads": self.num_threads,
            "prefetch": self.prefetch,
            "params": self.motion,
            "output": self.output,
            "normalization": self.normalization,
            "expand_target": self.expand_target,
            "channels_last": self.channels_last,
            "audit": self.audit,
            "debug_draws": self.debug_draws,
            "reader_seed": rseed,
        }
        pipe, skip = None, self.batch
        if self._restore is not None:
            try:
                pipe = build_pipeline(self.shard_sets, checkpoint=self._restore, **kw)
                pipe.build()
                skip = 0
            except RuntimeError:
                pipe = None  # incompatible checkpoint (other DALI version...): fall back to skipping
            self._restore = None
        if pipe is None:
            pipe = build_pipeline(self.shard_sets, **kw)
            pipe.build()
        for _ in range(skip):
            with contextlib.suppress(RuntimeError):  # a bad batch is lost again, exactly as the first time
                pipe.run()
        self._pipe, self._pipe_pos = pipe, (self.epoch, self.batch)
        return pipe

    def _diagnose(self, batch_index: int) -> list[tuple[str, str, list[str]]] | None:
        """Which samples of this epoch's batch ``batch_index`` are broken (None if the replay itself fails)."""
        _, rseed = self._epoch_seed()
        kws = [
            _reader_kwargs(
                s, (self.shard_id + self.epoch) % self.num_shards, self.num_shards, self.shuffle_buffer, rseed
            )
            for s in self.shard_sets
        ]
        try:
            return _find_bad_samples(self.shard_sets, kws, self.pairs_per_source, batch_index)
        except Exception:  # noqa: BLE001 - diagnosis is best effort; the original error is still raised
            return None

    def _assemble(self, outs: Sequence[Any], audit_names: Sequence[str]) -> dict[str, Any]:
        """DALI outputs -> torch views (the graph already laid the batch out; no copy here)."""
        gpu = torch.device("cuda", self._pipe.device_id) if self.device == "gpu" else None
        if self.channels_last:  # NHWC memory seen as NCHW: torch.channels_last, no copy

            def crops(tl):
                return _to_torch(tl, gpu).view(-1, INPUT_SIZE, INPUT_SIZE, 3).permute(0, 3, 1, 2)
        else:

            def crops(tl):
                return _to_torch(tl, gpu).view(-1, 3, INPUT_SIZE, INPUT_SIZE)

        batch: dict[str, Any] = {
            "target": crops(outs[0]),
            "search": crops(outs[1]),
            "bbox": _to_torch(outs[2], gpu).view(-1, 4),
        }
        if audit_names:
            n = len(audit_names)
            per = {
                name: [outs[3 + i * n + j] for i in range(len(self.shard_sets))] for j, name in enumerate(audit_names)
            }
            batch.update(self._audit(per, audit_names, 1 + self.k))
        return batch

    def _audit(self, per: dict, names: Sequence[str], e: int) -> dict[str, Any]:
        n_src = len(self.shard_sets)
        P = self.pairs_per_source

        def cpu(name: str) -> np.ndarray:
            a = np.stack([np.asarray(tl.as_tensor()) for tl in per[name]], axis=1)  # (P, n_src, ...)
            return a.reshape((P * n_src,) + a.shape[2:])

        infos = [[_split_source_info(tl[i].source_info()) for i in range(P)] for tl in per["windows"]]
        pair_keys = [f"{infos[s][p][0]}:{infos[s][p][1]}" for p in range(P) for s in range(n_src)]
        pair_src = [self.sources[s] for p in range(P) for s in range(n_src)]
        windows = cpu("windows")  # (pairs, e, 4)
        out: dict[str, Any] = {
            "keys": [kk for kk in pair_keys for _ in range(e)],
            "source": [ss for ss in pair_src for _ in range(e)],
            "example_index": torch.arange(e).repeat(P * n_src),
            "target_windows": torch.from_numpy(np.repeat(windows[:, 0], e, axis=0)),
            "search_windows": torch.from_numpy(windows.reshape(-1, 4)),
            "search_boxes": torch.from_numpy(cpu("search_boxes").reshape(-1, 4)),
            "target_box": torch.from_numpy(np.repeat(cpu("target_box"), e, axis=0)),
            "image_size": torch.from_numpy(np.repeat(cpu("size"), e, axis=0)),
        }
        for n in DRAW_NAMES:
            if n in names:
                out[n] = torch.from_numpy(np.stack([np.asarray(tl.as_tensor()) for tl in per[n]], axis=1))
        return out


# ----------------------------------------------------------------------------------------------------------------
# CLI: dump batches for auditing
# ----------------------------------------------------------------------------------------------------------------


def dump_batches(loader: GoturnLoader, n_batches: int, path: str | Path) -> dict[str, np.ndarray]:
    """The first ``n_batches`` batches as numpy arrays in one .npz (crops uint8, windows in source pixels)."""
    acc: dict[str, list] = {}
    for i, b in enumerate(loader):
        for name, v in b.items():
            acc.setdefault(name, []).append(v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        if i + 1 >= n_batches:
            break
    arrays = {n: np.concatenate(v, axis=0) for n, v in acc.items()}
    arrays["batch_index"] = np.repeat(np.arange(len(acc["bbox"])), loader.examples_per_batch)
    meta = {
        "format": "goturn-augment-dump-v1",
        "config": loader._config(),
        "normalization": loader.normalization,
        "output": loader.output,
        "windows": "x1,y1,x2,y2 in source-image pixels (integers) that each 227x227 crop covers",
        "bbox": "current box in the search crop, x10 of the crop (model.geometry.recenter_scale)",
    }
    arrays["meta_json"] = np.array(json.dumps(meta))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.augment --shards DIR --dump FILE.npz``: write the first batches for auditing."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="directory of {source}-{split}-NNNNNN.tar (+ .idx)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--pairs-per-batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--dump", required=True, help="output .npz")
    a = ap.parse_args(argv)
    loader = GoturnLoader(
        a.shards, a.split, a.device, a.pairs_per_batch, a.k, a.seed, num_threads=a.num_threads, audit=True
    )
    arrays = dump_batches(loader, a.batches, a.dump)
    n = len(arrays["bbox"])
    print(
        f"wrote {a.dump}: {n} examples ({arrays['batch_index'].max() + 1} batches of {loader.examples_per_batch}) "
        f"from {', '.join(loader.sources)}; keys, target/search windows, bbox, uint8 crops"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
