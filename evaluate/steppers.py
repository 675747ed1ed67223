"""Adapters from a checkpoint to the `evaluate.lockstep.BatchStepper` interface, over `model.tracker`.

`GoturnStepper` calls `model.tracker.track_step`, which crops all sequences whose frames share a size in one
call and runs one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.net import GoturnNet
from model.tracker import frame_to_tensor, prepare_net, track_step


def device_name(device: torch.device) -> str:
    """Human-readable device for reports: the GPU model, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{cpu or 'unknown'} ({torch.get_num_threads()} threads)"


class GoturnStepper:
    """`track_step` for the lockstep driver: frames are uploaded once (current frame, then previous frame)."""

    def __init__(self, net: GoturnNet, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @property
    def variant(self) -> str:
        """The net's variant: how the initial box is taken (`model.tracker.initial_corners`)."""
        return self.net.variant

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        return frame_to_tensor(frame, self.device)

    def step(self, prev: Sequence[torch.Tensor], boxes: np.ndarray, curr: Sequence[torch.Tensor]) -> np.ndarray:
        return track_step(self.net, prev, boxes, curr)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def load_stepper(
    weights: str | Path | GoturnNet,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
) -> GoturnStepper:
    """The batched stepper for a checkpoint (any file `model.checkpoint.load_model` reads) or a net, prepared as
    `GoturnTracker` prepares it (`model.tracker.prepare_net`), so both give the same boxes.

    ``dtype`` (e.g. ``torch.float16`` on CUDA) runs the network in reduced precision; ``channels_last`` (None:
    the tracker's choice for the device) stores it NHWC, which `track_step` then feeds NHWC inputs.
    """
    return GoturnStepper(prepare_net(weights, device, dtype, channels_last), device)
