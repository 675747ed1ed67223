"""Adapters from a checkpoint to the `evaluate.lockstep.BatchStepper` interface, over `model.tracker`.

`GoturnStepper` calls `model.tracker.track_step` as is. `GroupedGoturnStepper` (the default for the
``authors`` variant) computes exactly the same step -- same geometry, same sampling grid values, same uint8
rounding, same batched forward, same decode and guards, bit for bit (tests/test_evaluate_otb.py) -- but
samples the crops of all targets whose frames share a size in one ``grid_sample`` call and runs the geometry
vectorised, instead of a Python loop of per-target kernels: at batch 64+ on a GPU the per-target launches,
not the network, bound `track_step`'s throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import geometry as G
from model.checkpoint import load_model
from model.net import GoturnNet
from model.preprocess import normalize
from model.tracker import _fix_degenerate, frame_to_tensor, track_step


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        return frame_to_tensor(frame, self.device)

    def step(self, prev: Sequence[torch.Tensor], boxes: np.ndarray, curr: Sequence[torch.Tensor]) -> np.ndarray:
        return track_step(self.net, prev, boxes, curr)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def sample_grid(windows: np.ndarray, H: int, W: int, device: torch.device, size: int = G.INPUT_SIZE) -> torch.Tensor:
    """``grid_sample`` grid ``(G, size, size, 2)`` of one window per image, for ``H x W`` images.

    The values come from the same float64 ops as in `model.geometry.crop_and_resize`, and ``grid_sample``
    computes every output element independently of the batch, so each crop equals
    ``crop_and_resize(image_g, windows[g])`` bit for bit.
    """
    win = torch.as_tensor(windows, dtype=torch.float64, device=device).reshape(-1, 4)
    t = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size
    xs = win[:, 0:1] + t[None, :] * (win[:, 2:3] - win[:, 0:1])
    ys = win[:, 1:2] + t[None, :] * (win[:, 3:4] - win[:, 1:2])
    gx = (xs / W * 2 - 1).to(torch.float32)
    gy = (ys / H * 2 - 1).to(torch.float32)
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def sample_with_grid(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero-padded sampling of ``(G, C, H, W)`` images -> ``(G, C, size, size)`` float32."""
    return F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class GroupedGoturnStepper(GoturnStepper):
    """`track_step` for the ``authors`` variant, one crop call per frame size (see the module docstring).

    ``channels_last`` feeds the network NHWC inputs (set it when the net was converted with
    ``net.to(memory_format=torch.channels_last)``; cuDNN's fastest fp16 convolutions want it).
    """

    min_size = 1.0  # track_step's default guard

    def __init__(self, net: GoturnNet, device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        super().__init__(net, device)
        self.dtype = next(self.net.parameters()).dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _net_input(self, crops: torch.Tensor) -> torch.Tensor:
        """Float crops -> network input: the values of ``normalize(to_uint8(crops))`` without the uint8 round
        trip (rounded, clamped floats are exact integers, which is all ``normalize`` reads from uint8)."""
        x = normalize(crops.round_().clamp_(0, 255), self.net.normalization)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    @torch.inference_mode()
    def step(self, prev: Sequence[torch.Tensor], boxes: np.ndarray, curr: Sequence[torch.Tensor]) -> np.ndarray:
        if self.net.variant != "authors":
            return track_step(self.net, prev, boxes, curr)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(curr)
        sizes = np.array([[c.shape[2], c.shape[1]] for c in curr], dtype=np.float64)  # (W, H)
        geom = G.crop_geometry(boxes, sizes[:, 0], sizes[:, 1])
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            key = tuple(curr[i].shape) if prev[i].shape == curr[i].shape else ("single", i)
            groups.setdefault(key, []).append(i)
        shape = (n, 3, G.INPUT_SIZE, G.INPUT_SIZE)
        target = search = None
        if len(groups) > 1 or next(iter(groups))[0] == "single":
            target = torch.empty(shape, dtype=torch.float32, device=self.device)
            search = torch.empty(shape, dtype=torch.float32, device=self.device)
        for key, idx in groups.items():
            if key[0] == "single":  # frame size changed inside a sequence: crop the two frames separately
                i = idx[0]
                target[i] = G.crop_and_resize(prev[i], geom.window[i])[0]
                search[i] = G.crop_and_resize(curr[i], geom.window[i])[0]
                continue
            grid = sample_grid(geom.window[idx], int(key[1]), int(key[2]), self.device)
            t = sample_with_grid(torch.stack([prev[i] for i in idx]), grid)
            s = sample_with_grid(torch.stack([curr[i] for i in idx]), grid)
            if target is None:
                target, search = t, s
            else:
                where = torch.as_tensor(idx, device=self.device)
                target[where] = t
                search[where] = s
        pred = self.net(self._net_input(target), self._net_input(search))
        pred = pred.float().cpu().numpy().astype(np.float64)
        new = G.unscale_uncenter(pred, geom, sizes[:, 0], sizes[:, 1])
        return _fix_degenerate(new, boxes, sizes, self.min_size)


def load_stepper(
    weights: str | Path | GoturnNet,
    device: torch.device,
    grouped: bool = True,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> GoturnStepper:
    """The batched stepper for a checkpoint (any file `model.checkpoint.load_model` reads) or a net.

    ``dtype`` (e.g. ``torch.float16`` on CUDA) runs the network in reduced precision, as `GoturnTracker` does;
    ``channels_last`` stores it NHWC. Both change the numbers slightly; the defaults are what the tests check.
    """
    net = weights if isinstance(weights, GoturnNet) else load_model(weights, device)
    if dtype is not None:
        net = net.to(dtype)
    if not grouped:
        return GoturnStepper(net, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return GroupedGoturnStepper(net, device, channels_last=channels_last)
