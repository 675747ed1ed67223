"""The GOTURN network (spec section 1): two CaffeNet conv towers, a fully connected regression head.

Two variants share the towers and differ only in the head:

- ``authors``: the authors' ``nets/tracker.prototxt``: fc6 / fc7 / fc7b (4096, ReLU, dropout 0.5) and fc8 (4);
  the output is fc8 = box corners in the search crop, x10 of the crop's size (spec 1.4).
- ``opencv``: OpenCV's ``goturn.prototxt`` (spec 5.1): fc6 / fc7 (4096) and fc8 (4), then a Power layer that
  multiplies by 10; the output is in 227-pixel patch units.

Each tower keeps its own parameters (``target.*`` and ``search.*``): the authors' towers hold identical
CaffeNet weights, but the caffemodels store both copies and OpenCV's trained model has different ones. The
towers are frozen by default (``requires_grad=False``), as the authors' ``lr_mult: 0``. Layers follow Caffe
exactly: max pooling before LRN, ``LRN(5, alpha=1e-4, beta=0.75, k=1)`` across channels with alpha divided by
the window size (which is what ``torch.nn.functional.local_response_norm`` computes), conv2/4/5 in 2 groups,
target features first in the concatenation, C-H-W flattening (Caffe's InnerProduct layout, weights ``(out,
in)``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.geometry import SCALE_FACTOR
from model.opencv_geometry import OPENCV_INPUT_SIZE

VARIANTS = ("authors", "opencv")
DEFAULT_NORMALIZATION = {"authors": "caffe", "opencv": "opencv"}

# CaffeNet conv layers: (name, in, out, kernel, stride, pad, groups, bias filler value) -- spec 1.2.
CONV_SPECS = (
    ("conv1", 3, 96, 11, 4, 0, 1, 0.0),
    ("conv2", 96, 256, 5, 1, 2, 2, 1.0),
    ("conv3", 256, 384, 3, 1, 1, 1, 0.0),
    ("conv4", 384, 384, 3, 1, 1, 2, 1.0),
    ("conv5", 384, 256, 3, 1, 1, 2, 1.0),
)
POOL5_FEATURES = 256 * 6 * 6  # one tower's pool5, flattened C-H-W
FC_HIDDEN = 4096
# Head layers per variant: (our name, fan-in, fan-out, weight std, bias value) -- Caffe fillers of each
# prototxt.
HEAD_SPECS = {
    "authors": (
        ("fc6", 2 * POOL5_FEATURES, FC_HIDDEN, 0.005, 1.0),
        ("fc7", FC_HIDDEN, FC_HIDDEN, 0.005, 1.0),
        ("fc7b", FC_HIDDEN, FC_HIDDEN, 0.005, 1.0),
        ("fc8", FC_HIDDEN, 4, 0.01, 0.0),
    ),
    "opencv": (
        ("fc6", 2 * POOL5_FEATURES, FC_HIDDEN, 0.005, 1.0),
        ("fc7", FC_HIDDEN, FC_HIDDEN, 0.005, 1.0),
        ("fc8", FC_HIDDEN, 4, 0.01, 0.0),
    ),
}
OUTPUT_SCALE = {"authors": 1.0, "opencv": 10.0}  # OpenCV's `scale` Power layer
# One search-crop width (or height) in the units of the net's output: the authors regress x10 crop fractions
# (spec 2.3); OpenCV's decode reads its outputs as 227-pixel patch units (spec 5.2), so its labels were those.
CROP_UNITS = {"authors": SCALE_FACTOR, "opencv": float(OPENCV_INPUT_SIZE)}
# Caffe's per-parameter learning-rate / weight-decay multipliers (prototxt `param {}` blocks).
CAFFE_MULTIPLIERS = {
    # group: (lr_mult, decay_mult)
    "authors": {
        "conv_weight": (0.0, 1.0),
        "conv_bias": (0.0, 0.0),
        "fc_weight": (10.0, 1.0),
        "fc_bias": (20.0, 0.0),
    },
    "opencv": {
        "conv_weight": (1.0, 1.0),
        "conv_bias": (2.0, 0.0),
        "fc_weight": (1.0, 1.0),
        "fc_bias": (2.0, 0.0),
    },
}


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}  # per device, shared (kept off the module: deepcopy)


def _lrn(x: torch.Tensor) -> torch.Tensor:
    """Caffe's LRN(5, 1e-4, 0.75, k=1) across channels, computed in float32 for half inputs on every device:
    in float16 the squares of activations above ~256 (common for CaffeNet's conv1/conv2 on 0-255 input)
    overflow to inf and zero the output; on the CPU, torch's avg_pool3d also lacks half kernels."""
    if x.dtype == torch.float16 or (x.device.type == "cpu" and x.dtype == torch.bfloat16):
        return F.local_response_norm(x.float(), 5, alpha=1e-4, beta=0.75, k=1.0).to(x.dtype)
    return F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)


class CaffeNetTower(nn.Module):
    """conv1..pool5 of CaffeNet: 3x227x227 -> 256x6x6."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, cin, cout, k, s, p, g, _ in CONV_SPECS:
            self.add_module(name, nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True)
        x = _lrn(x)
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True)
        x = _lrn(x)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return F.max_pool2d(F.relu(self.conv5(x)), 3, 2, ceil_mode=True)


INITS = ("caffe", "random-features", "none")
RANDOM_FEATURE_GAIN = 0.05  # brings He-init pool5 features from ~37 down to ~2 for 0-255 Caffe input


class GoturnNet(nn.Module):
    """GOTURN: ``forward(target, search)`` on normalised ``(N, 3, 227, 227)`` float crops -> ``(N, 4)`` boxes.

    ``init="caffe"`` draws every parameter from the prototxt's fillers (seed with ``torch.manual_seed``);
    ``init="random-features"`` keeps the head's Caffe fillers but gives both towers the same variance-preserving
    random convs (He normal, zero bias, conv1 scaled by `RANDOM_FEATURE_GAIN`): for training *without* pretrained
    CaffeNet weights (the embedded sample), since the Caffe fillers' bias-1 convs give frozen features that are
    nearly constant (pool5 mean 1.17, std 0.095 across inputs), which SGD cannot learn motion from in minutes.
    ``init="none"`` leaves memory uninitialised, for loaders that overwrite every tensor anyway (saves ~1 s).
    ``normalization`` names the `model.preprocess.normalize` mode the weights expect (default per variant).
    """

    def __init__(
        self,
        variant: str = "authors",
        train_backbone: bool = False,
        init: str = "caffe",
        normalization: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.variant = variant
        self.normalization = normalization or DEFAULT_NORMALIZATION[variant]
        self.output_scale = OUTPUT_SCALE[variant]
        self.crop_units = CROP_UNITS[variant]
        build_on = "meta" if init == "none" else device
        self.target = CaffeNetTower(device=build_on)
        self.search = CaffeNetTower(device=build_on)
        self.fc_names = tuple(spec[0] for spec in HEAD_SPECS[variant])
        for name, fin, fout, _, _ in HEAD_SPECS[variant]:
            self.add_module(name, nn.Linear(fin, fout, device=build_on))
        self.dropout = nn.Dropout(0.5)
        # CUDA inference runs the search tower on a side stream, concurrently with the target tower: at batch 1
        # each tower fills only part of a GPU (H100, fp16, bare net in a CUDA graph: 1933 -> 2712 frames/s).
        self.parallel_towers = True
        if init == "none":
            self.to_empty(device=device if device is not None else "cpu")
        else:
            self.reset_parameters()
            if init == "random-features":
                self.reset_random_feature_convs()
        self.set_backbone_trainable(train_backbone)

    # ---- construction helpers
    # --------------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Caffe fillers of the prototxt: gaussian weights, constant biases (spec 1.2 table)."""
        for tower in (self.target, self.search):
            for name, *_, bias_value in CONV_SPECS:
                conv = getattr(tower, name)
                conv.weight.normal_(0.0, 0.01)
                conv.bias.fill_(bias_value)
        for name, _, _, std, bias_value in HEAD_SPECS[self.variant]:
            fc = getattr(self, name)
            fc.weight.normal_(0.0, std)
            fc.bias.fill_(bias_value)

    @torch.no_grad()
    def reset_random_feature_convs(self) -> None:
        """He-normal convs with zero bias, conv1 x `RANDOM_FEATURE_GAIN` (pool5 features of order 1), the same
        tensors in both towers (as CaffeNet weights are)."""
        for name, *_ in CONV_SPECS:
            t, s = getattr(self.target, name), getattr(self.search, name)
            nn.init.kaiming_normal_(t.weight, nonlinearity="relu")
            t.bias.zero_()
            if name == "conv1":
                t.weight.mul_(RANDOM_FEATURE_GAIN)
            s.weight.copy_(t.weight)
            s.bias.copy_(t.bias)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (default, as the authors' lr_mult 0) or unfreeze both conv towers."""
        for p in self.conv_parameters():
            p.requires_grad_(trainable)

    # ---- parameter groups for the trainer
    # ---------------------------------------------------------------------

    def conv_parameters(self) -> Iterator[nn.Parameter]:
        """Both towers' conv weights and biases."""
        yield from self.target.parameters()
        yield from self.search.parameters()

    def conv_weights(self) -> list[nn.Parameter]:
        return [m.weight for t in (self.target, self.search) for m in t.children()]

    def conv_biases(self) -> list[nn.Parameter]:
        return [m.bias for t in (self.target, self.search) for m in t.children()]

    def fc_weights(self) -> list[nn.Parameter]:
        """Head weights (Caffe: lr_mult 10, decay_mult 1 in the authors' prototxt)."""
        return [getattr(self, n).weight for n in self.fc_names]

    def fc_biases(self) -> list[nn.Parameter]:
        """Head biases (Caffe: lr_mult 20, decay_mult 0 in the authors' prototxt)."""
        return [getattr(self, n).bias for n in self.fc_names]

    # ---- forward
    # ----------------------------------------------------------------------------------------------

    def features(
        self, target: torch.Tensor, search: torch.Tensor, target_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """pool5 of both towers, concatenated target first and flattened C-H-W: ``(N, 18432)``.

        With ``target_index`` (N,), ``target`` holds only distinct crops and example i uses
        ``target[target_index[i]]`` (see `unique_consecutive_crops`): the target tower runs once per pair.
        """
        if self.parallel_towers and target.is_cuda and not torch.is_grad_enabled():
            t, s = self._towers_on_two_streams(target, search)
        else:
            t, s = self.target(target), self.search(search)
        if target_index is not None:
            t = t.index_select(0, target_index)
        return torch.cat([torch.flatten(t, 1), torch.flatten(s, 1)], dim=1)

    def _towers_on_two_streams(self, target: torch.Tensor, search: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fork the search tower onto a side stream and join; same kernels, so bit-identical results. Works
        inside CUDA-graph capture (the fork becomes a parallel branch of the graph)."""
        dev = target.device
        side = _SIDE_STREAMS.get(dev)
        if side is None:
            side = _SIDE_STREAMS[dev] = torch.cuda.Stream(device=dev)
        main = torch.cuda.current_stream(dev)
        side.wait_stream(main)
        t = self.target(target)
        with torch.cuda.stream(side):
            s = self.search(search)
        main.wait_stream(side)
        if not torch.cuda.is_current_stream_capturing():  # caching-allocator bookkeeping across streams
            search.record_stream(side)
            s.record_stream(main)
        return t, s

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """FC layers on pool5 features -> ``(N, 4)`` (x10 for the opencv variant, its Power layer)."""
        for name in self.fc_names[:-1]:
            x = self.dropout(F.relu(getattr(self, name)(x)))
        out = getattr(self, self.fc_names[-1])(x)
        return out * self.output_scale if self.output_scale != 1.0 else out

    def forward(
        self, target: torch.Tensor, search: torch.Tensor, target_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.features(target, search, target_index))


def unique_consecutive_crops(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each run of identical consecutive crops once, plus the index that expands them back.

    A pair's 1 + K training examples share one target crop (the authors' ``target_pad_``), so a batch holds
    ~5 distinct targets per 50 examples; running the target tower on those alone nearly halves the conv work of a
    training step with results identical to the expanded batch. The number of runs sizes the output, so on a GPU
    this reads one count back (the host waits for the work queued before it).
    """
    n = crops.shape[0]
    flat = crops.reshape(n, -1)
    new = torch.ones(n, dtype=torch.bool, device=crops.device)
    if n > 1:
        new[1:] = (flat[1:] != flat[:-1]).any(dim=1)
    return crops[new], torch.cumsum(new, 0) - 1


def pair_runs(n: int, offset: int, per_pair: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`unique_consecutive_crops`' answer from the batch layout instead of the pixels, on the host (no GPU sync).

    For ``n`` consecutive examples whose first is example ``offset`` (0-based) of a pair of ``per_pair``
    examples sharing one target crop: ``(first, index)``, the positions of each pair's first example in the
    batch and, per example, which of those it uses (``target[first][index]`` is ``target``).
    """
    pos = (torch.arange(n) + offset) // per_pair
    new = torch.ones(n, dtype=torch.bool)
    new[1:] = pos[1:] != pos[:-1]
    return new.nonzero().flatten(), pos - pos[0]


def count_parameters(net: nn.Module) -> int:
    """Number of scalar parameters (113,748,740 for ``authors``; spec 1.2)."""
    return sum(p.numel() for p in net.parameters())
