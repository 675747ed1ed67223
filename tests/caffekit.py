"""Test helpers: deploy prototxts of both GOTURN variants and random-weight caffemodels written with protobuf.

The prototxts are the deploy forms of the authors' ``nets/tracker.prototxt`` (old ``input:``/``input_dim:``
syntax, inputs ``target`` / ``image``, loss layers dropped) and of OpenCV's ``goturn.prototxt`` (inputs
``data1`` / ``data2``, output ``out`` of the Power layer ``scale``), generated from the same layer tables as
`model.net`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.caffe_proto import write_caffemodel
from model.net import CONV_SPECS, HEAD_SPECS

CAFFE_HEAD_NAMES = {
    "authors": {"fc6": "fc6-new", "fc7": "fc7-new", "fc7b": "fc7-newb", "fc8": "fc8-shapes"},
    "opencv": {"fc6": "fc6", "fc7": "fc7", "fc8": "fc8"},
}


def conv_names(variant: str) -> tuple[list[str], list[str]]:
    """Caffe names of the target tower's and the search tower's conv1..conv5."""
    if variant == "authors":
        return [f"conv{i}" for i in range(1, 6)], [f"conv{i}_p" for i in range(1, 6)]
    return [f"conv1{i}" for i in range(1, 6)], [f"conv2{i}" for i in range(1, 6)]


def _tower(names: list[str], bottom: str, suffix: str) -> tuple[list[str], str]:
    """Layers conv1..pool5 of one CaffeNet tower; returns (layer texts, name of the pool5 top)."""
    out = []
    x = bottom
    pool = {1: f"pool1{suffix}", 2: f"pool2{suffix}", 5: f"pool5{suffix}"}
    norm = {1: f"norm1{suffix}", 2: f"norm2{suffix}"}
    for i, (name, (_, _, cout, k, s, p, g, _)) in enumerate(zip(names, CONV_SPECS, strict=True), start=1):
        extra = (f"    pad: {p}\n" if p else "") + (f"    group: {g}\n" if g > 1 else "")
        extra += f"    stride: {s}\n" if s > 1 else ""
        out.append(
            f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{x}"\n  top: "{name}"\n'
            f"  convolution_param {{\n    num_output: {cout}\n    kernel_size: {k}\n{extra}  }}\n}}\n"
        )
        out.append(f'layer {{\n  name: "relu_{name}"\n  type: "ReLU"\n  bottom: "{name}"\n  top: "{name}"\n}}\n')
        x = name
        if i in pool:
            out.append(
                f'layer {{\n  name: "{pool[i]}"\n  type: "Pooling"\n  bottom: "{x}"\n  top: "{pool[i]}"\n'
                "  pooling_param {\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n  }\n}\n"
            )
            x = pool[i]
        if i in norm:
            out.append(
                f'layer {{\n  name: "{norm[i]}"\n  type: "LRN"\n  bottom: "{x}"\n  top: "{norm[i]}"\n'
                "  lrn_param {\n    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n  }\n}\n"
            )
            x = norm[i]
    return out, x


def deploy_prototxt(variant: str) -> str:
    """Deploy prototxt text of ``variant`` (TEST phase: dropout is the identity)."""
    t_names, s_names = conv_names(variant)
    in_t, in_s = ("target", "image") if variant == "authors" else ("data1", "data2")
    text = [f'name: "{"CaffeNet" if variant == "authors" else "GOTURN"}"\n']
    for name in (in_t, in_s):
        text.append(f'input: "{name}"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n')
    t_layers, t_top = _tower(t_names, in_t, "" if variant == "authors" else "_t")
    s_layers, s_top = _tower(s_names, in_s, "_p" if variant == "authors" else "_s")
    text += t_layers + s_layers
    text.append(
        f'layer {{\n  name: "concat"\n  type: "Concat"\n  bottom: "{t_top}"\n  bottom: "{s_top}"\n'
        '  top: "pool5_concat"\n  concat_param {\n    axis: 1\n  }\n}\n'
    )
    x = "pool5_concat"
    specs = HEAD_SPECS[variant]
    for j, (ours, _, fout, _, _) in enumerate(specs):
        cname = CAFFE_HEAD_NAMES[variant][ours]
        text.append(
            f'layer {{\n  name: "{cname}"\n  type: "InnerProduct"\n  bottom: "{x}"\n  top: "{ours}"\n'
            f"  inner_product_param {{\n    num_output: {fout}\n  }}\n}}\n"
        )
        x = ours
        if j < len(specs) - 1:
            text.append(f'layer {{\n  name: "relu_{ours}"\n  type: "ReLU"\n  bottom: "{x}"\n  top: "{x}"\n}}\n')
            text.append(
                f'layer {{\n  name: "drop_{ours}"\n  type: "Dropout"\n  bottom: "{x}"\n  top: "{x}"\n'
                "  dropout_param {\n    dropout_ratio: 0.5\n  }\n}\n"
            )
    if variant == "opencv":
        text.append(
            'layer {\n  name: "scale"\n  type: "Power"\n  bottom: "fc8"\n  top: "out"\n'
            "  power_param {\n    power: 1\n    scale: 10\n    shift: 0\n  }\n}\n"
        )
    return "".join(text)


def caffe_layers(variant: str, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> list:
    """Our module names -> ``(caffe name, type, [w, b])`` in the variant's naming, for `write_caffemodel`."""
    t_names, s_names = conv_names(variant)
    layers = []
    for i in range(5):
        layers.append((t_names[i], "Convolution", list(weights[f"target.conv{i + 1}"])))
        layers.append((s_names[i], "Convolution", list(weights[f"search.conv{i + 1}"])))
    for ours, *_ in HEAD_SPECS[variant]:
        layers.append((CAFFE_HEAD_NAMES[variant][ours], "InnerProduct", list(weights[ours])))
    return layers


def random_weights(variant: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random weights with He-scaled gaussians (activations stay O(input), so LRN is far from the identity and
    the output depends strongly on the pixels) and random biases; the two towers get independent draws."""
    rng = np.random.default_rng(seed)
    w = {}
    for tower in ("target", "search"):
        for name, cin, cout, k, _, _, g, _ in CONV_SPECS:
            std = np.float32(np.sqrt(2.0 / (cin // g * k * k)))
            w[f"{tower}.{name}"] = (
                rng.standard_normal((cout, cin // g, k, k), dtype=np.float32) * std,
                rng.standard_normal(cout, dtype=np.float32),
            )
    for name, fin, fout, _, _ in HEAD_SPECS[variant]:
        std = np.float32(np.sqrt(2.0 / fin))
        w[name] = (
            rng.standard_normal((fout, fin), dtype=np.float32) * std,
            rng.standard_normal(fout, dtype=np.float32),
        )
    return w


def write_backbone(path: Path, seed: int = 0) -> Path:
    """A CaffeNet-like conv-only ``.caffemodel`` (what ``bvlc_reference_caffenet`` gives ``train --init``)."""
    rng = np.random.default_rng(seed)
    layers = [
        (name, "Convolution", [rng.normal(0, 0.01, (cout, cin // g, k, k)), rng.normal(0, 0.1, cout)])
        for name, cin, cout, k, _, _, g, _ in CONV_SPECS
    ]
    write_caffemodel(path, layers)
    return Path(path)


def write_model(folder: Path, variant: str, weights: dict, stem: str) -> tuple[Path, Path]:
    """Write ``{stem}.prototxt`` + ``{stem}.caffemodel`` of ``weights`` into ``folder``; absolute paths
    back."""
    folder = Path(folder).resolve()
    proto = folder / f"{stem}.prototxt"
    model = folder / f"{stem}.caffemodel"
    proto.write_text(deploy_prototxt(variant))
    write_caffemodel(model, caffe_layers(variant, weights), name=stem)
    return proto, model
