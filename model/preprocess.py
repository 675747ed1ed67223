"""Pixel normalisation of network inputs: the one function the tracker and the trainer both call.

Crops arrive as RGB ``(N, 3, H, W)`` uint8 (the training loader's and the tracker's crops). Modes:

- ``caffe``: the authors' regressor (spec 1.3): BGR channel order, values 0-255, minus the per-channel mean
  ``(104, 117, 123)`` in B, G, R order.
- ``opencv``: OpenCV's ``TrackerGOTURN`` (spec 5.2, ``blobFromImage(patch, 1, Size(), Scalar::all(128))``):
  BGR, 0-255, minus 128 in every channel.
- ``imagenet``: torchvision convention (pygoturn): RGB, /255, minus mean / divided by std.
"""

from __future__ import annotations

import torch

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# mode -> (channel order, per-channel mean, per-channel std) on 0-255 values, in that channel order: the one
# table behind `normalize` and the DALI graph's float output (`pipeline.augment_graph`)
NORMALIZATIONS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "caffe": ("BGR", CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)),
    "opencv": ("BGR", (128.0, 128.0, 128.0), (1.0, 1.0, 1.0)),
    "imagenet": ("RGB", tuple(255.0 * m for m in IMAGENET_MEAN_RGB), tuple(255.0 * v for v in IMAGENET_STD_RGB)),
}
MODES = tuple(NORMALIZATIONS)

_CONST_CACHE: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) as (1, 3, 1, 1) float32 tensors on ``device``, cached so a step allocates nothing."""
    key = (mode, device)
    if key not in _CONST_CACHE:
        _, shift, std = NORMALIZATIONS[mode]
        scale = tuple(1.0 / s for s in std)
        _CONST_CACHE[key] = (
            torch.tensor(shift, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(scale, dtype=torch.float32, device=device).view(1, 3, 1, 1),
        )
    return _CONST_CACHE[key]


def normalize(x: torch.Tensor, mode: str = "caffe") -> torch.Tensor:
    """RGB ``(N, 3, H, W)`` crops (uint8, or float holding 0-255 values) -> float32 network input, same
    device.

    Runs on whatever device ``x`` is on (no host round trip), so it can sit inside a captured CUDA graph.
    """
    if mode not in MODES:
        raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB crops, got shape {tuple(x.shape)}")
    order, _, std = NORMALIZATIONS[mode]
    shift, scale = _constants(mode, x.device)
    y = x.to(torch.float32)
    if order == "BGR":
        y = y.flip(1)  # RGB -> BGR, as cv::imread hands the C++ its pixels
    y = y - shift
    return y if std == (1.0, 1.0, 1.0) else y * scale
