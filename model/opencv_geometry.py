"""OpenCV's ``TrackerGOTURN`` arithmetic (spec 5.2), used only by the tracker's ``opencv`` variant.

A separate algorithm from the authors' geometry (`model.geometry`), kept apart so neither reads like the other:
OpenCV keeps an integer Rect, computes its patch rectangle in float32, pads by edge replication, cuts the patch
with cvRound'ed coordinates, resizes it with the bit-exact INTER_LINEAR_EXACT and rounds the decoded box. The
tests reproduce ``cv2.TrackerGOTURN`` with it to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OPENCV_INPUT_SIZE = 227


def cv_round(x: np.ndarray) -> np.ndarray:
    """cvRound / ``saturate_cast<int>`` of finite values: round half to even (the default FP rounding
    mode)."""
    return np.rint(np.asarray(x)).astype(np.int64)


@dataclass(frozen=True)
class OpenCVPatch:
    """The patch OpenCV cuts from both frames around an integer box."""

    rect: np.ndarray  # (..., 4) float32 targetPatchRect (x, y, w, h), in coordinates of the padded image
    window: np.ndarray  # (..., 4) int64 (x0, y0, w, h): the patch in image pixels (outside = replicated border)


def opencv_patch(rects: np.ndarray, image_w: int, image_h: int) -> OpenCVPatch:
    """``targetPatchRect`` of ``TrackerGOTURNImpl::update`` for integer ``(x, y, w, h)`` rects, float32 like
    C++.

    The frame is padded by ``(int)R.w`` / ``(int)R.h`` on each side, so patch pixel ``j`` reads image column
    ``cvRound(R.x) - (int)R.w + j`` clamped to the image (BORDER_REPLICATE).
    """
    r = np.asarray(rects, dtype=np.float64)
    x, y, w, h = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    f32 = np.float32
    cx = (x + w / 2).astype(f32)  # prevCenter = (float)(prevBB.x + prevBB.width / 2), double inside
    cy = (y + h / 2).astype(f32)
    rw = (w * 2.0).astype(f32)
    rh = (h * 2.0).astype(f32)
    # (float)(prevCenter.x - prevBB.width * padTargetPatch / 2.0 + targetPatchRect.width): double arithmetic
    rx = (cx.astype(np.float64) - w * 2.0 / 2.0 + rw.astype(np.float64)).astype(f32)
    ry = (cy.astype(np.float64) - h * 2.0 / 2.0 + rh.astype(np.float64)).astype(f32)
    rw = np.minimum(rw, f32(image_w))
    rh = np.minimum(rh, f32(image_h))
    rx = np.maximum(f32(-image_w * 0.5), np.minimum(rx, f32(image_w * 1.5)))
    ry = np.maximum(f32(-image_h * 0.5), np.minimum(ry, f32(image_h * 1.5)))
    pad_x = np.trunc(rw).astype(np.int64)  # copyMakeBorder(..., (int)R.h, (int)R.h, (int)R.w, (int)R.w)
    pad_y = np.trunc(rh).astype(np.int64)
    window = np.stack([cv_round(rx) - pad_x, cv_round(ry) - pad_y, cv_round(rw), cv_round(rh)], axis=-1)
    return OpenCVPatch(rect=np.stack([rx, ry, rw, rh], axis=-1), window=window)


def opencv_decode_raw(out: np.ndarray, patch: OpenCVPatch) -> np.ndarray:
    """The four float32 values OpenCV passes to cvRound: ``(x, y, w, h)`` of the new box (before rounding).

    ``out`` is the net's ``scale`` output (10 x fc8, 227-pixel patch units). Every operation is float32, in
    the C++ order, so rounding matches; parity tests also use these values to measure the distance to a .5
    boundary.
    """
    o = np.asarray(out, dtype=np.float32)
    rx, ry, rw, rh = (patch.rect[..., i] for i in range(4))
    s = np.float32(OPENCV_INPUT_SIZE)
    x = (rx + (o[..., 0] * rw) / s) - rw
    y = (ry + (o[..., 1] * rh) / s) - rh
    w = ((o[..., 2] - o[..., 0]) * rw) / s
    h = ((o[..., 3] - o[..., 1]) * rh) / s
    return np.stack([x, y, w, h], axis=-1).astype(np.float32)


def opencv_intersect(rects: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
    """``Rect & Rect(0, 0, W, H)`` on int64 ``(x, y, w, h)``; an empty result is ``(0, 0, 0, 0)`` as in
    OpenCV."""
    r = np.asarray(rects, dtype=np.int64)
    x1 = np.maximum(r[..., 0], 0)
    y1 = np.maximum(r[..., 1], 0)
    x2 = np.minimum(r[..., 0] + r[..., 2], image_w)
    y2 = np.minimum(r[..., 1] + r[..., 3], image_h)
    ok = (r[..., 2] > 0) & (r[..., 3] > 0) & (x2 > x1) & (y2 > y1)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
    return np.where(ok[..., None], out, 0)


def opencv_linear_exact_taps(src_size: int, dst_size: int = OPENCV_INPUT_SIZE) -> tuple[np.ndarray, ...]:
    """Source taps and 8-bit fixed-point weights of ``cv::resize(..., INTER_LINEAR_EXACT)`` along one axis.

    OpenCV's ``interpolationLinear::getCoeffs``: ``f = (1 / (dst / src)) * (d + 0.5) - 0.5`` in double, weight
    of the right tap ``cvRound(frac(f) * 256)``; outputs left of the first source pixel or right of the last
    one repeat it. Returns int64 ``(i0, i1, w0, w1)`` with ``w0 + w1 == 256``.
    """
    if src_size < 1:
        raise ValueError(f"source size must be >= 1, got {src_size}")
    inv = dst_size / src_size
    scale = 1.0 / inv
    f = scale * (np.arange(dst_size, dtype=np.float64) + 0.5) - 0.5
    i = np.floor(f)
    w1 = np.rint((f - i) * 256.0).astype(np.int64)
    i = i.astype(np.int64)
    left = (i < 0) | (src_size == 1)
    right = ~left & (i >= src_size - 1)
    i0 = np.where(left, 0, np.where(right, src_size - 1, i))
    i1 = np.where(left | right, i0, i + 1)
    w1 = np.where(left | right, 0, w1)
    return i0, i1, 256 - w1, w1


def opencv_crop_resize(image: torch.Tensor, window: np.ndarray, size: int = OPENCV_INPUT_SIZE) -> torch.Tensor:
    """OpenCV's patch: replicate-padded crop of ``window`` then ``INTER_LINEAR_EXACT`` resize, bit for bit.

    ``image`` is ``(C, H, W)`` uint8 on any device; ``window`` one int ``(x0, y0, w, h)``. Returns ``(C, size,
    size)`` uint8. Integer arithmetic as in ``resize_bitExact<uchar>``: horizontal pass ``w0*p0 + w1*p1`` (8
    fractional bits), vertical pass likewise, then ``(v + 2**15) >> 16``.
    """
    C, H, W = image.shape
    x0, y0, w, h = (int(v) for v in np.asarray(window).reshape(4))
    w, h = max(w, 1), max(h, 1)  # OpenCV would assert on an empty patch; the tracker never asks for one
    dev = image.device
    ix0, ix1, wx0, wx1 = (torch.as_tensor(a, device=dev) for a in opencv_linear_exact_taps(w, size))
    iy0, iy1, wy0, wy1 = (torch.as_tensor(a, device=dev) for a in opencv_linear_exact_taps(h, size))
    cols0 = (ix0 + x0).clamp_(0, W - 1)
    cols1 = (ix1 + x0).clamp_(0, W - 1)
    rows0 = (iy0 + y0).clamp_(0, H - 1)
    rows1 = (iy1 + y0).clamp_(0, H - 1)

    def hpass(rows: torch.Tensor) -> torch.Tensor:
        r = image.index_select(1, rows).to(torch.int32)  # (C, size, W)
        return r.index_select(2, cols0) * wx0.to(torch.int32) + r.index_select(2, cols1) * wx1.to(torch.int32)

    v = hpass(rows0) * wy0.to(torch.int32)[:, None] + hpass(rows1) * wy1.to(torch.int32)[:, None]
    return ((v + (1 << 15)) >> 16).clamp_(0, 255).to(torch.uint8)
