"""GOTURN's crop geometry and motion model: the single implementation every other module uses.

Semantics are the authors' C++ (`davheld/GOTURN` `src/helper/{image_proc,bounding_box,helper}.cpp`), written up in
`../shared/research/goturn_spec.md` sections 2 and 3.4. Boxes are float64 corner arrays ``(..., 4)`` =
``(x1, y1, x2, y2)`` in 0-based, continuous pixel coordinates of the decoded image, width = ``x2 - x1`` (no +1),
exactly the C++ ``BoundingBox``. Every function broadcasts over leading dimensions.

A crop is described by its *window*: the integer rectangle ``(x0, y0, x0 + canvas_w, y0 + canvas_h)`` of image
pixels that the authors' zero-padded canvas (``CropPadImage``) covers, including the C++'s double->int
truncations. Pixels are produced by `crop_and_resize`, which samples the zero-extended image bilinearly over the
window with half-pixel centres (one ``grid_sample``; DALI's ``warp_perspective`` with a constant border computes
the same function, so the training pipeline and the tracker share it). Versus the C++'s ``cv::resize`` of the
canvas this differs in two places, both at the crop's edge:

* canvases smaller than 227 px: in the outermost half source pixel, where ``cv::resize`` repeats the canvas edge
  while we read the true neighbouring pixel (or 0 outside the image);
* 2x windows clipped at the image's left (top) edge: ``floor(edge_x) + ROI width`` can fall one pixel short of
  the canvas (the C++'s truncations; one in eight boxes drawn uniformly over a 160x120 image), so
  ``CropPadImage`` leaves its last column (row) black where the image goes on, and the window reads the image
  pixel there. Reproducing that band would mean slicing the ROI out before every DALI warp (slice-based crops
  measured 1.8x slower on DALI's CPU backend, `dali_pipeline.md`) for one source column of the canvas; training
  and tracking agree with each other either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CONTEXT_FACTOR = 2.0  # kContextFactor: the search window is 2w x 2h around the box
SCALE_FACTOR = 10.0  # kScaleFactor: regression targets are fractions of the crop times 10
INPUT_SIZE = 227  # network input side (CaffeNet)
MAX_NUM_TRIES = 10  # kMaxNumTries of BoundingBox::Shift

ArrayLike = np.ndarray | float | int


# --------------------------------------------------------------------------------------------------------------
# Box format conversions
# --------------------------------------------------------------------------------------------------------------


def xywh_to_corners(xywh: np.ndarray, one_based: bool = False) -> np.ndarray:
    """``(x, y, w, h)`` -> 0-based corners.

    ``one_based=True`` is the OTB / Matlab convention (top-left pixel is (1, 1), the box covers columns
    ``x .. x+w-1``); it maps to the continuous 0-based corners ``(x-1, y-1, x-1+w, y-1+h)``, the same -1 the authors
    apply to every 1-based annotation they read.
    """
    b = np.asarray(xywh, dtype=np.float64)
    off = 1.0 if one_based else 0.0
    x1 = b[..., 0] - off
    y1 = b[..., 1] - off
    return np.stack([x1, y1, x1 + b[..., 2], y1 + b[..., 3]], axis=-1)


def corners_to_xywh(corners: np.ndarray, one_based: bool = False) -> np.ndarray:
    """0-based corners -> ``(x, y, w, h)``; the exact inverse of `xywh_to_corners` for the same convention."""
    c = np.asarray(corners, dtype=np.float64)
    off = 1.0 if one_based else 0.0
    return np.stack([c[..., 0] + off, c[..., 1] + off, c[..., 2] - c[..., 0], c[..., 3] - c[..., 1]], axis=-1)


def alov_points_to_corners(points: np.ndarray) -> np.ndarray:
    """ALOV300++ ``.ann`` corners ``(..., 8)`` = ``Ax Ay Bx By Cx Cy Dx Dy`` (1-based) -> 0-based corners.

    The authors (`loader_alov.cpp`) take the min / max of the four points and subtract 1 from each; the corner
    order differs between files, so it is never relied on.
    """
    p = np.asarray(points, dtype=np.float64)
    xs = p[..., 0::2]
    ys = p[..., 1::2]
    return np.stack([xs.min(-1), ys.min(-1), xs.max(-1), ys.max(-1)], axis=-1) - 1.0


# --------------------------------------------------------------------------------------------------------------
# CropPadImage geometry (spec 2.1, 2.2)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropGeometry:
    """Where ``CropPadImage(box, image)`` puts its canvas, per box (arrays over the boxes' leading dims).

    ``loc`` and ``edge_*`` stay fractional (they position the regression target, as in the C++), while ``window``
    holds the integer pixel rectangle the canvas covers after the C++'s truncations.
    """

    loc: np.ndarray  # (..., 4) ComputeCropPadImageLocation: the ROI clipped to the image, fractional
    edge_x: np.ndarray  # (...,) fractional edge spacing (how far the canvas starts left of the image)
    edge_y: np.ndarray
    canvas_w: np.ndarray  # (...,) int64: out.cols of the padded crop
    canvas_h: np.ndarray
    roi: np.ndarray  # (..., 4) int64: (left, top, width, height) of the image region copied into the canvas
    window: np.ndarray  # (..., 4) float64 with integer values: canvas corners in image pixels


def _output_size(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """compute_output_width/height: the 2x context, at least 1 px."""
    return np.maximum(1.0, CONTEXT_FACTOR * (hi - lo))


def crop_location(boxes: np.ndarray, image_w: ArrayLike, image_h: ArrayLike) -> np.ndarray:
    """ComputeCropPadImageLocation: the 2x-context window clipped to the image, as fractional corners."""
    b = np.asarray(boxes, dtype=np.float64)
    W = np.asarray(image_w, dtype=np.float64)
    H = np.asarray(image_h, dtype=np.float64)
    cx = (b[..., 0] + b[..., 2]) / 2
    cy = (b[..., 1] + b[..., 3]) / 2
    ow = _output_size(b[..., 0], b[..., 2])
    oh = _output_size(b[..., 1], b[..., 3])
    left = np.maximum(0.0, cx - ow / 2)
    top = np.maximum(0.0, cy - oh / 2)
    roi_w = np.maximum(1.0, np.minimum(ow / 2, cx) + np.minimum(ow / 2, W - cx))
    roi_h = np.maximum(1.0, np.minimum(oh / 2, cy) + np.minimum(oh / 2, H - cy))
    return np.stack([left, top, left + roi_w, top + roi_h], axis=-1)


def crop_geometry(boxes: np.ndarray, image_w: ArrayLike, image_h: ArrayLike) -> CropGeometry:
    """Everything ``CropPadImage`` computes, without touching pixels."""
    b = np.asarray(boxes, dtype=np.float64)
    W = np.asarray(image_w, dtype=np.float64)
    H = np.asarray(image_h, dtype=np.float64)
    loc = crop_location(b, W, H)
    # cv::Rect(int, ...) truncates; all values are >= 0 here so truncation == floor.
    left = np.floor(np.minimum(loc[..., 0], W - 1))
    top = np.floor(np.minimum(loc[..., 1], H - 1))
    roi_w = np.minimum(W, np.maximum(1.0, np.ceil(loc[..., 2] - loc[..., 0])))
    roi_h = np.minimum(H, np.maximum(1.0, np.ceil(loc[..., 3] - loc[..., 1])))
    ow = _output_size(b[..., 0], b[..., 2])
    oh = _output_size(b[..., 1], b[..., 3])
    canvas_w = np.maximum(np.ceil(ow), roi_w)
    canvas_h = np.maximum(np.ceil(oh), roi_h)
    cx = (b[..., 0] + b[..., 2]) / 2
    cy = (b[..., 1] + b[..., 3]) / 2
    edge_x = np.minimum(np.maximum(0.0, ow / 2 - cx), canvas_w - 1)
    edge_y = np.minimum(np.maximum(0.0, oh / 2 - cy), canvas_h - 1)
    x0 = left - np.floor(edge_x)
    y0 = top - np.floor(edge_y)
    return CropGeometry(
        loc=loc,
        edge_x=edge_x,
        edge_y=edge_y,
        canvas_w=canvas_w.astype(np.int64),
        canvas_h=canvas_h.astype(np.int64),
        roi=np.stack([left, top, roi_w, roi_h], axis=-1).astype(np.int64),
        window=np.stack([x0, y0, x0 + canvas_w, y0 + canvas_h], axis=-1),
    )


def crop_pad_image(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, CropGeometry]:
    """The authors' ``CropPadImage`` canvas for one box, pixel for pixel (an HxW[xC] array in, same dtype out).

    Kept as the literal reference of what the window means; the pipeline and the tracker use `crop_and_resize`.
    A box whose centre is outside the image (the C++ would assert) yields the canvas with whatever part of the
    ROI fits.
    """
    H, W = image.shape[:2]
    g = crop_geometry(np.asarray(box, dtype=np.float64), W, H)
    left, top, rw, rh = (int(v) for v in g.roi)
    canvas = np.zeros((int(g.canvas_h), int(g.canvas_w)) + image.shape[2:], dtype=image.dtype)
    ex, ey = int(np.floor(g.edge_x)), int(np.floor(g.edge_y))
    patch = image[top : top + rh, left : left + rw]
    ph = min(patch.shape[0], canvas.shape[0] - ey)
    pw = min(patch.shape[1], canvas.shape[1] - ex)
    canvas[ey : ey + ph, ex : ex + pw] = patch[:ph, :pw]
    return canvas, g


# --------------------------------------------------------------------------------------------------------------
# Regression targets (spec 2.3, 2.4)
# --------------------------------------------------------------------------------------------------------------


def recenter_scale(gt: np.ndarray, geom: CropGeometry) -> np.ndarray:
    """Recenter + Scale: the ground-truth box in the padded crop's frame, x10 of the crop's integer size."""
    g = np.asarray(gt, dtype=np.float64)
    ox = geom.loc[..., 0] - geom.edge_x
    oy = geom.loc[..., 1] - geom.edge_y
    sx = SCALE_FACTOR / geom.canvas_w
    sy = SCALE_FACTOR / geom.canvas_h
    return np.stack(
        [(g[..., 0] - ox) * sx, (g[..., 1] - oy) * sy, (g[..., 2] - ox) * sx, (g[..., 3] - oy) * sy], axis=-1
    )


def unscale_uncenter(pred: np.ndarray, geom: CropGeometry, image_w: ArrayLike, image_h: ArrayLike) -> np.ndarray:
    """Unscale + Uncenter: network output (x10 crop fractions) -> image corners, each corner clamped to the image.

    Exactly the authors' decode: no check that x2 > x1 (callers that need a valid box must handle that).
    """
    p = np.asarray(pred, dtype=np.float64)
    ox = geom.loc[..., 0] - geom.edge_x
    oy = geom.loc[..., 1] - geom.edge_y
    sx = geom.canvas_w / SCALE_FACTOR
    sy = geom.canvas_h / SCALE_FACTOR
    return np.stack(
        [
            np.maximum(0.0, p[..., 0] * sx + ox),
            np.maximum(0.0, p[..., 1] * sy + oy),
            np.minimum(np.asarray(image_w, dtype=np.float64), p[..., 2] * sx + ox),
            np.minimum(np.asarray(image_h, dtype=np.float64), p[..., 3] * sy + oy),
        ],
        axis=-1,
    )


# --------------------------------------------------------------------------------------------------------------
# Pixels: crop + zero pad + bilinear resize in one sampling pass
# --------------------------------------------------------------------------------------------------------------


def crop_and_resize(image: torch.Tensor, windows: torch.Tensor | np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """Sample windows of images into ``(K, C, size, size)`` float32 crops.

    ``image`` is ``(C, H, W)`` with ``K`` windows ``(K, 4)``, or ``(K, C, H, W)`` (same-size images, e.g. many
    sequences' frames) with one window per image; windows are image-pixel corners. Output pixel ``j`` reads the
    zero-extended image at ``x0 + (j + 0.5) * (x1 - x0) / size - 0.5`` with bilinear weights (``grid_sample``,
    ``align_corners=False``, zero padding): crop, zero pad and resize in one pass, on the GPU when the image is
    there. Each output element depends only on its image and window, so a crop is the same bit for bit whichever
    way it is batched. Values keep the input's range (0-255 for uint8 frames).
    """
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (K, C, H, W), got shape {tuple(image.shape)}")
    C, H, W = image.shape[-3:]
    win = torch.as_tensor(windows, dtype=torch.float64, device=image.device).reshape(-1, 4)
    K = win.shape[0]
    if image.dim() == 4 and image.shape[0] != K:
        raise ValueError(f"{image.shape[0]} images need {image.shape[0]} windows, got {K}")
    t = (torch.arange(size, dtype=torch.float64, device=image.device) + 0.5) / size
    # Positions in continuous (corner-origin) pixel units, then grid_sample's normalised [-1, 1] coordinates.
    xs = win[:, 0:1] + t[None, :] * (win[:, 2:3] - win[:, 0:1])  # (K, size)
    ys = win[:, 1:2] + t[None, :] * (win[:, 3:4] - win[:, 1:2])
    gx = (xs / W * 2 - 1).to(torch.float32)
    gy = (ys / H * 2 - 1).to(torch.float32)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (K, size, size, 2)
    src = image.to(torch.float32)
    if image.dim() == 4:
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = F.grid_sample(
        src[None], grid.reshape(1, K * size, size, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.reshape(C, K, size, size).permute(1, 0, 2, 3).contiguous()


def to_uint8(crops: torch.Tensor) -> torch.Tensor:
    """Round float crops to the nearest uint8 and saturate, like DALI's uint8 warp output (ties may differ by 1)."""
    return crops.round().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------------------
# Motion model: BoundingBox::Shift with shift_motion_model = true (spec 3.4)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionParams:
    """The values `train.sh` passes: lambda_shift 5 (Laplace b = 1/5), lambda_scale 15 (b = 1/15), scale +-0.4."""

    lambda_shift: float = 5.0
    lambda_scale: float = 15.0
    min_scale: float = -0.4
    max_scale: float = 0.4


@dataclass(frozen=True)
class MotionSample:
    """Shifted boxes plus the random draws behind them (for statistical checks and audits)."""

    boxes: np.ndarray  # (n, 4) the shifted boxes (the C++ result box)
    scale_x: np.ndarray  # (n,) clamped Laplace scale change s: new_w = w * (1 + s) before the [1, W-1] clamp
    scale_y: np.ndarray
    shift_x: np.ndarray  # (n,) Laplace draw d of the kept try: centre moves by w * d before clamping
    shift_y: np.ndarray
    tries_x: np.ndarray  # (n,) int: 1-based index of the kept try (10 = rejection loop exhausted)
    tries_y: np.ndarray


def sample_laplace(rng: np.random.Generator, lam: float, shape: tuple[int, ...]) -> np.ndarray:
    """sample_exp_two_sided: ``log(u) / lam`` with a random sign, u in (0, 1] -> Laplace(0, b = 1 / lam)."""
    u = 1.0 - rng.random(shape)
    sign = np.where(rng.random(shape) < 0.5, 1.0, -1.0)
    return np.log(u) / lam * sign


def _shift_axis(
    lo: float, hi: float, size: float, rng: np.random.Generator, n: int, p: MotionParams
) -> tuple[np.ndarray, ...]:
    """One axis of BoundingBox::Shift: new size, then the <= 10-try rejection loop for the new centre."""
    extent = hi - lo
    centre = (lo + hi) / 2
    s = np.clip(sample_laplace(rng, p.lambda_scale, (n,)), p.min_scale, p.max_scale)
    # max(1, min(size - 1, .)) in the C++ order (np.clip's order differs on a 1 px image); the width loop always
    # ends after its first try
    new_size = np.maximum(1.0, np.minimum(size - 1, extent * (1 + s)))
    d = sample_laplace(rng, p.lambda_shift, (n, MAX_NUM_TRIES))
    cand = np.clip(centre + extent * d, new_size[:, None] / 2, size - new_size[:, None] / 2)
    half = extent * CONTEXT_FACTOR / 2
    ok = (
        (cand >= centre - half)
        & (cand <= centre + half)
        & (cand - new_size[:, None] / 2 >= 0)
        & (cand + new_size[:, None] / 2 <= size)
    )
    ok[:, -1] = True  # the loop stops after the 10th try whatever it drew
    k = ok.argmax(axis=1)
    rows = np.arange(n)
    return cand[rows, k], new_size, s, d[rows, k], k + 1


def shift_boxes(
    box: np.ndarray,
    image_w: float,
    image_h: float,
    rng: np.random.Generator,
    n: int = 10,
    params: MotionParams = MotionParams(),
) -> MotionSample:
    """``n`` independent ``BoundingBox::Shift`` draws of one box (seeded by ``rng``), exactly the C++ loop."""
    b = np.asarray(box, dtype=np.float64).reshape(4)
    cx, new_w, sx, dx, tx = _shift_axis(b[0], b[2], float(image_w), rng, n, params)
    cy, new_h, sy, dy, ty = _shift_axis(b[1], b[3], float(image_h), rng, n, params)
    boxes = np.stack([cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2], axis=-1)
    return MotionSample(boxes, sx, sy, dx, dy, tx, ty)


# --------------------------------------------------------------------------------------------------------------
# Training examples (spec 3.3): one true example plus shifted ones per pair
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleWindows:
    """Windows and targets of the 1 + K examples made from one (prev, curr) pair."""

    target_window: np.ndarray  # (4,) window of the previous frame at the previous box
    search_windows: np.ndarray  # (1 + K, 4) windows in the current frame: prev box, then the shifted boxes
    targets: np.ndarray  # (1 + K, 4) current box recentred and x10 in each search crop


def example_windows(
    prev_box: np.ndarray,
    curr_box: np.ndarray,
    image_w: float,
    image_h: float,
    rng: np.random.Generator | None,
    k: int = 10,
    params: MotionParams = MotionParams(),
) -> ExampleWindows:
    """ExampleGenerator: the true example (search at ``prev_box``) and ``k`` shifts of ``curr_box``.

    Both frames must have the same size (the authors' pairs always do). ``rng`` may be None when ``k == 0``.
    """
    prev_box = np.asarray(prev_box, dtype=np.float64).reshape(4)
    curr_box = np.asarray(curr_box, dtype=np.float64).reshape(4)
    centres = [prev_box[None]]
    if k:
        if rng is None:
            raise ValueError("rng is required when k > 0")
        centres.append(shift_boxes(curr_box, image_w, image_h, rng, k, params).boxes)
    search_boxes = np.concatenate(centres, axis=0)
    sg = crop_geometry(search_boxes, image_w, image_h)
    tg = crop_geometry(prev_box, image_w, image_h)
    return ExampleWindows(tg.window, sg.window, recenter_scale(curr_box[None], sg))


# ============================================================================================================
# Device-side mirror of crop_geometry + unscale_uncenter for one tracking step (the authors' variant), in
# float64 torch ops with the same operation order as the numpy functions above, so a whole tracking step
# (crop, net, decode) can run on the GPU without a host round trip and be captured in a CUDA graph. tests/
# check that it equals the numpy reference bit for bit; the numpy functions above remain the definition.
# ============================================================================================================


def crop_step_geometry_torch(
    boxes: torch.Tensor, image_w: float, image_h: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`crop_geometry` of float64 corner boxes ``(..., 4)`` on any device, both axes at once (few kernels).

    Returns ``(window (..., 4), offset (..., 2), canvas (..., 2), size (2,))``: ``offset = loc.x1/y1 -
    edge_x/y`` and ``canvas = (canvas_w, canvas_h)`` are what `unscale_uncenter_torch` needs, ``size = (W, H)``.
    Builds no tensor from host data, so it can be captured in a CUDA graph.
    """
    b = boxes.to(torch.float64)
    axis = torch.arange(2, device=b.device)
    size = torch.where(axis == 0, float(image_w), float(image_h)).to(torch.float64)
    lo, hi = b[..., :2], b[..., 2:]
    c = (lo + hi) / 2
    out = torch.clamp(CONTEXT_FACTOR * (hi - lo), min=1.0)  # _output_size
    loc_lo = torch.clamp(c - out / 2, min=0.0)  # crop_location
    loc_ext = torch.clamp(torch.minimum(out / 2, c) + torch.minimum(out / 2, size - c), min=1.0)
    start = torch.floor(torch.minimum(loc_lo, size - 1))  # crop_geometry
    roi = torch.minimum(size, torch.clamp(torch.ceil((loc_lo + loc_ext) - loc_lo), min=1.0))
    canvas = torch.maximum(torch.ceil(out), roi)
    edge = torch.minimum(torch.clamp(out / 2 - c, min=0.0), canvas - 1)
    x0 = start - torch.floor(edge)
    return torch.cat([x0, x0 + canvas], dim=-1), loc_lo - edge, canvas, size


def unscale_uncenter_torch(
    pred: torch.Tensor, offset: torch.Tensor, canvas: torch.Tensor, size: torch.Tensor
) -> torch.Tensor:
    """`unscale_uncenter` on device tensors (float64), from `crop_step_geometry_torch`'s outputs."""
    p = pred.to(torch.float64)
    # A tensor divisor: CUDA turns division by a host scalar into a multiplication by its reciprocal, which can
    # differ from numpy's (and the eager path's) division in the last bit.
    scale = canvas / torch.full_like(canvas, SCALE_FACTOR)
    x = p * torch.cat([scale, scale], dim=-1) + torch.cat([offset, offset], dim=-1)
    return torch.cat([torch.clamp(x[..., :2], min=0.0), torch.minimum(x[..., 2:], size)], dim=-1)
