"""The DALI op graph that makes GOTURN training examples: decode, motion model, crops, optional normalisation.

Why one graph for both backends: ``device="gpu"`` (mixed nvJPEG decoder, GPU warps) trains at GPU speed, and
``device="cpu"`` runs the same ops on DALI's CPU backend for GPU-less machines and the tests, so what the tests
check on the CPU is what a GPU trains on. Semantics are exactly `model.geometry`
(`../shared/research/goturn_spec.md` sections 2, 3.3-3.5):

* Per decoded pair (ImageNet stills are pairs of one image with itself) the graph makes the authors' true example
  (search window at the previous box) and ``k`` examples whose search window is centred on
  ``BoundingBox::Shift(curr_box)``. The shift is the C++ loop itself, not an approximation: every one of the
  ``kMaxNumTries = 10`` tries is drawn up front (``(10, 2, k)`` uniforms) and the first accepted one is selected
  (min-reduction over the try index of accepted tries, then a one-hot sum, exact because every other term is
  ``x * 0``). The draws are consumed in the same roles as `model.geometry.shift_boxes` consumes its generator's,
  so feeding DALI's draws to that function reproduces the boxes (the tests do exactly this: equal, bar a rare
  last-bit difference of DALI's ``log``, ~1e-14 px, in about one box in thousands).
* All box arithmetic is float64, operation for operation as in `model.geometry.crop_geometry` (floor
  truncations, ceil'd canvas, fractional edge spacing) and `recenter_scale`; DALI's float constants are float32,
  so non-float32-exact constants (e.g. the +-0.4 scale limits) are assembled exactly from float32 parts.
* A crop is ``fn.experimental.warp_perspective`` of the zero-extended image over the window with
  ``pixel_origin="corner"``: the same bilinear function as `model.geometry.crop_and_resize`.
* Sources (``imagenet``, ``alov``) each get a reader and a per-source batch of ``pairs_per_batch / n_sources``.
  Sample ``p`` of the DALI batch holds pair ``p`` of every source, and the crops are stacked per sample, so the
  output already alternates pair by pair (ImageNet, ALOV, ImageNet, ...) as the authors alternate
  ``train_image()`` / ``train_video()``, and reaches torch without a copy (the CPU backend is memory-bound).

`pipeline.augment.GoturnLoader` builds one of these per epoch and turns its outputs into torch batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from nvidia.dali import Pipeline

from model.geometry import CONTEXT_FACTOR, INPUT_SIZE, MAX_NUM_TRIES, SCALE_FACTOR, MotionParams
from model.preprocess import NORMALIZATIONS
from pipeline.shard_sets import ShardSet
from shards.format import BOXES, CURR, PREV

DEFAULT_MOTION = MotionParams()  # train.sh's lambda_shift 5, lambda_scale 15, scale +-0.4
READER_EXTS = [PREV, CURR, BOXES]  # the reader's outputs, in this order
AUDIT_NAMES = ("windows", "search_boxes", "target_box", "size")  # per source
DRAW_NAMES = ("u_scale", "v_scale", "u_shift", "v_shift")  # per source, debug only
MAX_STACK_INPUTS = 999  # DALI's fn.stack takes at most this many inputs: the batch's crops are stacked in one


def max_k(n_sources: int) -> int:
    """The largest K (shifted examples per pair) the graph can stack for ``n_sources`` shard sets."""
    return MAX_STACK_INPUTS // n_sources - 1


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
    new = dmath.max(dmath.min(extent * (1.0 + s), size - 1.0), 1.0)  # (2, k); the C++ order, as the geometry
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
    # adjust_orientation off: boxes are in the stored pixels (the builder bakes any EXIF rotation in, and
    # shards.verify refuses one), so a stray tag must not rotate the image under them.
    dec = {"device": "mixed", "jpeg_fancy_upsampling": True} if gpu else {"device": "cpu"}
    dec["adjust_orientation"] = False

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
    shp = fn.peek_image_shape(curr_jpg, adjust_orientation=False) if gpu else curr_hwc.shape()
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
        "boxes": boxes,
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


def _goturn_pipeline_fn(
    readers: Sequence[dict], graph_kw: dict, expand_target: bool, audit_names: Sequence[str], out_layout: str
):
    """The pipeline body: one reader + example graph per source; crops of all sources stacked per sample.

    Sample ``p`` of the batch holds pair ``p`` of every source, so stacking per sample gives the final batch
    layout (pairs alternating between sources, examples grouped by pair) with no copy outside DALI:
    ``target`` / ``search`` (n_src * (1 + k), 3, 227, 227) ("FCHW"; (..., 227, 227, 3) for "FHWC") and ``bbox``
    (n_src, 1 + k, 4) per sample; then each source's input boxes (CPU, float64), then the audit outputs.
    """
    from nvidia.dali import fn, types

    per = []
    for r in readers:
        if "feed" in r:  # the authors' sampling: members read by `pipeline.group_sampler`
            feed = r["feed"]
            outs = fn.external_source(source=feed, num_outputs=feed.num_outputs, batch=True, dtype=types.UINT8, ndim=1)
            prev_jpg, curr_jpg, boxes_raw = outs if len(outs) == 3 else (None, *outs)  # stills: no prev.jpg
        else:
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
    outs = [target, search, bbox, *[g["boxes"] for g in per]]  # the input boxes per source: checked on the host
    for g in per:
        outs.extend(g[n] for n in audit_names)
    return tuple(outs)


def reader_kwargs(
    s: ShardSet, shard_id: int, num_shards: int, shuffle_buffer: int, seed: int, tar_order_seed: int | None = None
) -> dict:
    """fn.readers.webdataset arguments of one source (shared by the training and the diagnostic pipelines).

    ``tar_order_seed`` (the same on every rank, new every epoch) permutes the tars: the reader shards by sample
    over the tars in the order given, and its shuffle buffer only mixes ``shuffle_buffer`` neighbours, so without
    it every epoch would read nearly the same order. None keeps the sorted order.
    """
    order = np.arange(len(s.tars))
    if tar_order_seed is not None:
        order = np.random.default_rng([int(tar_order_seed), len(s.tars)]).permutation(len(s.tars))
    reader = {
        "paths": [s.tars[i] for i in order],
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
        reader["index_paths"] = [s.index_paths[i] for i in order]
    return reader


def check_options(device: str, output: str, normalization: str) -> None:
    """ValueError naming the bad one of the graph's choices (the loader checks them before any other work)."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if output not in ("uint8", "float"):
        raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")


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
    feeds: Sequence[Callable[[int], tuple]] | None = None,
) -> Pipeline:
    """Build (not start) the DALI pipeline: one reader per shard set, each with a batch of ``pairs_per_source``.

    Outputs: ``target``, ``search`` (per sample (n_src * (1 + k), 3, 227, 227), or n_src targets without
    ``expand_target``; (..., 227, 227, 3) with ``channels_last``), ``bbox`` (n_src, 1 + k, 4); then each source's
    input boxes ((1, 4) or (2, 4), float64, CPU: `pipeline.bad_samples.box_problems`); then per source the
    `AUDIT_NAMES` (``audit``) and `DRAW_NAMES` (``debug_draws``) outputs, listed in ``pipe.audit_names``.

    Readers use ``stick_to_shard=True`` (each rank only ever reads its own contiguous sample range of the
    concatenated tars, mixed by a ``shuffle_buffer``-sample buffer; ``reader_seed``, shared by the ranks, also
    permutes the tars) and ``pad_last_batch=False`` (the iterator stops before a rank runs out, see
    `GoturnLoader`). With ``feeds`` (one `pipeline.group_sampler` feed per shard set)
    the samples come from those instead of the readers: the authors' sampling. Random ops get explicit seeds, so
    CPU and GPU graphs draw the same numbers for the same ``seed``.
    """
    from nvidia.dali import pipeline_def

    check_options(device, output, normalization)
    ss = np.random.SeedSequence([seed, 0x60721])
    readers = []
    for i, s in enumerate(shard_sets):
        op_seeds = [int(x) & 0x7FFFFFFF for x in np.random.SeedSequence([seed, i, 7]).generate_state(5)]
        reader = reader_kwargs(
            s,
            shard_id,
            num_shards,
            shuffle_buffer,
            reader_seed if reader_seed is not None else op_seeds[4],
            reader_seed,
        )
        still = True if not s.has_pairs else (False if not s.has_stills else None)
        source = {"feed": feeds[i]} if feeds is not None else {"reader": reader}
        readers.append({**source, "still": still, "seeds": op_seeds[:4]})
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
