"""Convert Caffe GOTURN / CaffeNet weights into this project's checkpoint.

    python -m model.import_caffe --caffemodel tracker.caffemodel --out goturn.pt

Understood files (the variant is detected from the layer names):

- ``authors``: the authors' ``tracker.caffemodel`` (``conv1..conv5`` target tower, ``conv1_p..conv5_p`` search
  tower, ``fc6-new``, ``fc7-new``, ``fc7-newb``, ``fc8-shapes``).
- ``opencv``: OpenCV's ``goturn.caffemodel`` (``conv11..conv15``, ``conv21..conv25``, ``fc6``, ``fc7``,
  ``fc8``).
- ``backbone``: ``tracker_init.caffemodel`` or ``bvlc_reference_caffenet.caffemodel``: only conv weights are
  taken (CaffeNet's ``conv1..conv5`` go to both towers unless ``conv*_p`` copies exist); the head starts from
  the authors' Caffe fillers (``--seed``), as training from these files does. The checkpoint says
  ``"backbone_only": True`` so a trainer may re-draw the head with its own seed; `model.checkpoint.load_model`
  refuses such files for tracking (their head is untrained).

Every blob's shape is checked against the architecture (legacy 4-D ``num/channels/height/width`` shapes are
accepted when they hold the same values). ``--prototxt`` optionally cross-checks the deploy file's layer
names.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.caffe_proto import CaffeLayer, CaffeModelError, read_caffemodel
from model.net import CONV_SPECS, DEFAULT_NORMALIZATION, HEAD_SPECS, GoturnNet
from shards.input_files import FileTooLarge, NotRegularFile, read_regular

# Caffe layer name -> our module name, per variant.
LAYER_MAPS: dict[str, dict[str, str]] = {
    "authors": {
        **{f"conv{i}": f"target.conv{i}" for i in range(1, 6)},
        **{f"conv{i}_p": f"search.conv{i}" for i in range(1, 6)},
        "fc6-new": "fc6",
        "fc7-new": "fc7",
        "fc7-newb": "fc7b",
        "fc8-shapes": "fc8",
    },
    "opencv": {
        **{f"conv1{i}": f"target.conv{i}" for i in range(1, 6)},
        **{f"conv2{i}": f"search.conv{i}" for i in range(1, 6)},
        "fc6": "fc6",
        "fc7": "fc7",
        "fc8": "fc8",
    },
}


@dataclass
class ImportResult:
    """What a caffemodel turned into: a full state dict for ``GoturnNet(variant)`` plus provenance."""

    variant: str
    kind: str  # "full" or "backbone"
    state_dict: dict[str, torch.Tensor]
    layers_used: list[str] = field(default_factory=list)
    layers_ignored: list[str] = field(default_factory=list)


def _expected_shapes(variant: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Our module name -> (weight shape, bias shape)."""
    shapes = {}
    for tower in ("target", "search"):
        for name, cin, cout, k, _, _, g, _ in CONV_SPECS:
            shapes[f"{tower}.{name}"] = ((cout, cin // g, k, k), (cout,))
    for name, fin, fout, _, _ in HEAD_SPECS[variant]:
        shapes[name] = ((fout, fin), (fout,))
    return shapes


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    s = list(shape)
    while len(s) > 1 and s[0] == 1:
        s.pop(0)
    return tuple(s)


def _fit(arr: np.ndarray, want: tuple[int, ...], where: str) -> torch.Tensor:
    """Check a blob against the expected shape (modulo legacy leading 1s) and return it as a tensor."""
    if tuple(arr.shape) != want and _strip_ones(tuple(arr.shape)) != _strip_ones(want):
        raise CaffeModelError(f"{where}: shape {tuple(arr.shape)} does not match the GOTURN architecture's {want}")
    t = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True).reshape(want))
    if not torch.isfinite(t).all():
        raise CaffeModelError(f"{where}: contains NaN or infinite values (corrupt file?)")
    return t


def detect_variant(names: set[str]) -> str:
    """``authors`` / ``opencv`` / ``backbone`` from the layer names; CaffeModelError if none fits."""
    if {"fc6-new", "fc7-new", "fc7-newb", "fc8-shapes"} & names:
        return "authors"
    if "conv11" in names and "conv21" in names:
        return "opencv"
    if all(f"conv{i}" in names for i in range(1, 6)):
        return "backbone"
    shown = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
    raise CaffeModelError(
        "not a GOTURN or CaffeNet model: expected the authors' layers (conv1..conv5, conv1_p.., fc6-new.., "
        f"fc8-shapes), OpenCV's (conv11..conv25, fc6, fc7, fc8) or CaffeNet's conv1..conv5; found: {shown}"
    )


def convert_layers(layers: list[CaffeLayer], seed: int = 0, source: str = "caffemodel") -> ImportResult:
    """Map parsed Caffe layers to a ``GoturnNet`` state dict, checking names, blob counts and every shape."""
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.name in by_name:
            raise CaffeModelError(f"{source}: layer {layer.name!r} appears twice")
        by_name[layer.name] = layer
    try:
        kind_or_variant = detect_variant(set(by_name))
    except CaffeModelError as e:
        raise CaffeModelError(f"{source}: {e}") from None
    if kind_or_variant == "backbone":
        variant, kind = "authors", "backbone"
        mapping = {f"conv{i}": f"target.conv{i}" for i in range(1, 6)}
        search = [c for c in (f"conv{i}_p" for i in range(1, 6)) if c in by_name]
        if len(search) == 5:  # tracker_init: both towers stored
            mapping.update({f"conv{i}_p": f"search.conv{i}" for i in range(1, 6)})
        elif search:  # not CaffeNet (no search tower), not tracker_init (all of it): a file cut short?
            raise CaffeModelError(
                f"{source}: search-tower layers {search} without the rest of conv1_p..conv5_p (truncated file?)"
            )
    else:
        variant, kind = kind_or_variant, "full"
        mapping = LAYER_MAPS[variant]
    shapes = _expected_shapes(variant)

    state: dict[str, torch.Tensor] = {}
    used: list[str] = []
    missing = [c for c in mapping if c not in by_name]
    if missing:
        raise CaffeModelError(f"{source}: {variant} model is missing layers {missing} (truncated or wrong file?)")
    for caffe_name, ours in mapping.items():
        layer = by_name[caffe_name]
        if len(layer.blobs) != 2:
            raise CaffeModelError(
                f"{source}: layer {caffe_name!r} has {len(layer.blobs)} blobs, expected 2 (weights and biases)"
            )
        w_shape, b_shape = shapes[ours]
        state[f"{ours}.weight"] = _fit(layer.blobs[0], w_shape, f"{source}: layer {caffe_name!r} weights")
        state[f"{ours}.bias"] = _fit(layer.blobs[1], b_shape, f"{source}: layer {caffe_name!r} biases")
        used.append(caffe_name)

    if kind == "backbone":
        if not any(k.startswith("search.") for k in state):  # CaffeNet: one tower's weights for both towers
            for i in range(1, 6):
                for p in ("weight", "bias"):
                    state[f"search.conv{i}.{p}"] = state[f"target.conv{i}.{p}"].clone()
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            head = GoturnNet(variant)
        finally:
            torch.random.set_rng_state(gen_state)
        for name in head.fc_names:
            state[f"{name}.weight"] = getattr(head, name).weight.detach().clone()
            state[f"{name}.bias"] = getattr(head, name).bias.detach().clone()
    ignored = sorted(set(by_name) - set(used))
    return ImportResult(variant, kind, state, used, ignored)


def load_caffemodel(path: str | Path, seed: int = 0) -> ImportResult:
    """Read and convert one ``.caffemodel``; CaffeModelError with a readable reason on any problem."""
    return convert_layers(read_caffemodel(path), seed=seed, source=str(path))


MAX_PROTOTXT_BYTES = 16 << 20  # a deploy prototxt is a few KB
_LAYER_OPEN = re.compile(r"\blayers?\s*\{")
_NAME = re.compile(r"""\bname:\s*(["'])(.*?)\1""")
_TYPE = re.compile(r"""\btype:\s*["']?(\w+)""")
_WEIGHTED_TYPES = {"Convolution", "InnerProduct", "CONVOLUTION", "INNER_PRODUCT", "conv", "innerproduct"}


def check_prototxt(text: str, result: ImportResult, source: str = "prototxt") -> list[str]:
    """Layer names a deploy prototxt declares with weights that the caffemodel lacks (empty list =
    consistent); CaffeModelError when the text declares no layer at all.

    Each ``layer {`` / ``layers {`` block is read for its first ``name:`` and any weighted ``type:`` (new names,
    V1 enums, V0 strings), whatever their order; nested parameter blocks name no layer type. Linear in the text.
    """
    declared: list[str] = []
    named = 0
    for block in _LAYER_OPEN.split(text)[1:]:
        name = _NAME.search(block)
        named += name is not None
        if name and any(t in _WEIGHTED_TYPES for t in _TYPE.findall(block)):
            declared.append(name.group(2))
    if not named:
        raise CaffeModelError(f"{source}: declares no named layer (not a deploy .prototxt?)")
    return [n for n in declared if n not in result.layers_used and n not in result.layers_ignored]


def read_prototxt(path: Path) -> str:
    """A prototxt's text, read only from a regular file of at most `MAX_PROTOTXT_BYTES` (a FIFO would block)."""
    try:
        return read_regular(path, MAX_PROTOTXT_BYTES).decode("utf-8")
    except (NotRegularFile, FileTooLarge) as e:
        raise CaffeModelError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise CaffeModelError(f"{path}: not a text .prototxt (binary file?)") from None


def checkpoint_from_import(result: ImportResult, source: str) -> dict:
    """The checkpoint dict of docs/CONTRACTS.md for an imported model."""
    return {
        "format": "goturn-checkpoint-v1",
        "variant": result.variant,
        "normalization": DEFAULT_NORMALIZATION[result.variant],
        "model": result.state_dict,
        "backbone_only": result.kind == "backbone",
        "source": source,
    }


def _as_model(state: Mapping[str, torch.Tensor], variant: str) -> GoturnNet:
    net = GoturnNet(variant, init="none")
    net.load_state_dict(state, strict=True)
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.import_caffe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--caffemodel", required=True, type=Path, help="binary .caffemodel to read")
    ap.add_argument("--prototxt", type=Path, help="deploy prototxt to cross-check layer names (optional)")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint to write (e.g. goturn.pt)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the head fillers for conv-only (backbone) files")
    ap.add_argument(
        "--expect",
        choices=("authors", "opencv", "backbone"),
        help="fail unless the file is this kind (guards against a truncated full model read as a backbone)",
    )
    args = ap.parse_args(argv)

    from model.checkpoint import CheckpointError, save_checkpoint

    try:
        result = load_caffemodel(args.caffemodel, seed=args.seed)
        got = "backbone" if result.kind == "backbone" else result.variant
        if args.expect and got != args.expect:
            kinds = {"authors": "the authors' model", "opencv": "OpenCV's model", "backbone": "a CaffeNet backbone"}
            raise CaffeModelError(f"{args.caffemodel}: expected {kinds[args.expect]}, found {kinds[got]}")
        if args.prototxt is not None:
            missing = check_prototxt(read_prototxt(args.prototxt), result, str(args.prototxt))
            if missing:
                raise CaffeModelError(f"{args.prototxt} declares layers {missing} that {args.caffemodel} lacks")
        _as_model(result.state_dict, result.variant)  # strict load: proves the state dict is complete
        save_checkpoint(args.out, checkpoint_from_import(result, source=args.caffemodel.name))
    except (CaffeModelError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in result.state_dict.values())
    print(
        f"wrote {args.out}: variant={result.variant} kind={result.kind} parameters={n:,} "
        f"layers={len(result.layers_used)} ignored={result.layers_ignored or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
