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

MODES = ("caffe", "opencv", "imagenet")
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

_CONST_CACHE: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) as (1, 3, 1, 1) float32 tensors on ``device``, cached so a step allocates nothing."""
    key = (mode, device)
    if key not in _CONST_CACHE:
        if mode == "caffe":
            shift, scale = CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)
        elif mode == "opencv":
            shift, scale = (128.0, 128.0, 128.0), (1.0, 1.0, 1.0)
        else:
            shift = tuple(255.0 * m for m in IMAGENET_MEAN_RGB)
            scale = tuple(1.0 / (255.0 * s) for s in IMAGENET_STD_RGB)
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
    shift, scale = _constants(mode, x.device)
    y = x.to(torch.float32)
    if mode != "imagenet":
        y = y.flip(1)  # RGB -> BGR, as cv::imread hands the C++ its pixels
        return y - shift
    return (y - shift) * scale
