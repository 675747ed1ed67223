"""Device strings from users (CLI flags, API arguments) -> ``torch.device``, checked once for every entry point.

Why: a typo or a missing GPU should be one clear sentence naming the device, not a failure deep inside torch
(``Found no NVIDIA driver``) after a model has been loaded.
"""

from __future__ import annotations

import torch


def fp32_conv_math(device: torch.device) -> str:
    """How float32 convolutions run on ``device``, for bench and report headers: on CUDA, PyTorch's default lets
    cuDNN use TF32 (10-bit mantissa) for them, so "fp32" GPU figures are TF32 figures unless a user turns it off
    (``torch.backends.cudnn.allow_tf32 = False``)."""
    if device.type != "cuda":
        return "fp32 convs: ieee"
    return f"fp32 convs: {'tf32' if torch.backends.cudnn.allow_tf32 else 'ieee'}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given, checked here so
    a typo or a missing GPU is a ValueError naming the device rather than a failure deep inside torch."""
    device = str(device) if isinstance(device, torch.device) else device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use the cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev
