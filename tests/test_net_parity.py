"""GoturnNet, the Caffe importer and checkpoints.

The parity test writes a random-weight caffemodel of the authors' architecture with the protobuf library plus
its deploy prototxt, imports it, and checks our forward pass against ``cv2.dnn.readNetFromCaffe`` on the same
files with real image crops (OTB Man). The weights are He-scaled so activations stay large: LRN is far from
the identity and the output depends strongly on the pixels (a bias-dominated output would hide layout errors).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import caffekit as K
import numpy as np
import pytest
import torch
from PIL import Image

import model.caffe_proto as CP
from model import geometry as G
from model.caffe_proto import CaffeModelError, read_caffemodel, write_caffemodel
from model.checkpoint import CheckpointError, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from model.import_caffe import load_caffemodel
from model.import_caffe import main as import_main
from model.net import CONV_SPECS, GoturnNet, count_parameters
from model.preprocess import normalize


@pytest.fixture(scope="module")
def authors_files(module_scratch: Path) -> tuple[dict, Path, Path]:
    """Random authors-architecture weights written as deploy prototxt + caffemodel (once per module)."""
    weights = K.random_weights("authors", seed=1)
    proto, model = K.write_model(module_scratch, "authors", weights, "tracker")
    return weights, proto, model


@pytest.fixture(scope="module")
def imported(authors_files) -> GoturnNet:
    return load_model(authors_files[2])


def _man_crops(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Target / search crops (authors' geometry, uint8 RGB) of three real frame pairs at ground-truth
    boxes."""
    man = shared_data / "otb" / "Man"
    gt = np.loadtxt(man / "groundtruth_rect.txt", delimiter=",")

    def frame(i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(Image.open(man / "img" / f"{i:04d}.jpg").convert("RGB"))).permute(2, 0, 1)

    targets, searches = [], []
    for i in (1, 50, 100):
        box = G.xywh_to_corners(gt[i - 1], one_based=True)
        prev, curr = frame(i), frame(i + 1)
        win = G.crop_geometry(box, prev.shape[2], prev.shape[1]).window
        targets.append(G.crop_and_resize(prev, win))
        searches.append(G.crop_and_resize(curr, win))
    return G.to_uint8(torch.cat(targets)), G.to_uint8(torch.cat(searches))


# ------------------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------------------


def test_architecture_sizes() -> None:
    """Parameter counts of spec 1.2 / 5.1, pool5 6x6, frozen towers, separate tower tensors."""
    net = GoturnNet("authors", init="none")
    assert count_parameters(net) == 113_748_740
    assert count_parameters(net.target) == 2_334_080
    assert count_parameters(GoturnNet("opencv", init="none")) == 96_967_428
    assert net.target.conv2.groups == 2 and net.target.conv4.groups == 2 and net.target.conv5.groups == 2
    assert all(not p.requires_grad for p in net.conv_parameters())
    assert all(p.requires_grad for p in net.fc_weights() + net.fc_biases())
    assert net.target.conv1.weight.data_ptr() != net.search.conv1.weight.data_ptr()
    with torch.no_grad():
        assert net.target(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)
    assert GoturnNet("authors", init="none", train_backbone=True).target.conv1.weight.requires_grad


def test_lrn_is_caffe_across_channels() -> None:
    """Caffe LRN: x / (1 + alpha/n * sum of squares over a zero-padded window of n channels) ** beta."""
    x = torch.randn(2, 9, 4, 4, dtype=torch.float64) * 200
    n, alpha, beta = 5, 1e-4, 0.75
    sq = torch.nn.functional.pad(x * x, (0, 0, 0, 0, n // 2, n // 2))
    window = sum(sq[:, c : c + x.shape[1]] for c in range(n))
    ref = x / (1 + alpha / n * window) ** beta
    ours = torch.nn.functional.local_response_norm(x, n, alpha=alpha, beta=beta, k=1.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def _half_lrn_matches_float64(device: str) -> None:
    from model.net import _lrn

    x = torch.rand(2, 16, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 400
    x[0, 3, 2, 2] = 2000.0  # CaffeNet's conv1/conv2 activations on 0-255 input reach hundreds: squares > fp16 max
    ref = torch.nn.functional.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 3e-2)):
        out = _lrn(x.to(device, dtype)).double().cpu()
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol, msg=lambda m, d=dtype: f"{d}: {m}")


def test_half_precision_lrn_does_not_overflow_on_cpu() -> None:
    _half_lrn_matches_float64("cpu")


def test_float16_lrn_runs_in_float32_on_every_device(monkeypatch) -> None:
    """The non-CPU branch, checked in CI on the meta device: float16 reaches the LRN kernel as float32 (bfloat16
    keeps its range, so it runs natively off the CPU)."""
    import model.net as N

    seen = []
    real = N.F.local_response_norm
    monkeypatch.setattr(N.F, "local_response_norm", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    for dtype in (torch.float16, torch.bfloat16):
        out = N._lrn(torch.empty(1, 8, 3, 3, dtype=dtype, device="meta"))
        assert out.dtype == dtype
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_lrn_does_not_overflow_on_cuda() -> None:
    _half_lrn_matches_float64("cuda")


def test_fillers_and_param_groups() -> None:
    torch.manual_seed(0)
    net = GoturnNet("authors")
    assert abs(net.fc6.weight.std().item() - 0.005) < 1e-4 and torch.all(net.fc6.bias == 1)
    assert abs(net.fc8.weight.std().item() - 0.01) < 1e-3 and torch.all(net.fc8.bias == 0)
    assert abs(net.target.conv3.weight.std().item() - 0.01) < 1e-4
    assert torch.all(net.target.conv1.bias == 0) and torch.all(net.target.conv2.bias == 1)
    assert torch.all(net.search.conv4.bias == 1) and torch.all(net.search.conv3.bias == 0)
    from train.solver import param_groups

    groups = {g["name"]: g for g in param_groups(net, weight_decay=5e-4)}
    assert set(groups) == {"fc_weight", "fc_bias"}  # frozen towers are left out
    assert groups["fc_weight"]["lr_mult"] == 10 and groups["fc_weight"]["weight_decay"] == 5e-4
    assert groups["fc_bias"]["lr_mult"] == 20 and groups["fc_bias"]["weight_decay"] == 0
    assert len(groups["fc_weight"]["params"]) == 4
    net.train()
    with torch.no_grad():  # dropout only in train mode
        x = torch.zeros(2, 3, 227, 227)
        assert not torch.equal(net(x, x)[0], net.eval()(x, x)[0])


def test_normalize_modes() -> None:
    x = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert normalize(x, "caffe")[0, :, 0, 0].tolist() == [30 - 104, 20 - 117, 10 - 123]
    assert normalize(x, "opencv")[0, :, 0, 0].tolist() == [30 - 128, 20 - 128, 10 - 128]
    im = normalize(x, "imagenet")[0, :, 0, 0]
    torch.testing.assert_close(im[0], torch.tensor((10 / 255 - 0.485) / 0.229))
    assert normalize(x, "caffe").dtype == torch.float32
    with pytest.raises(ValueError, match="normalization mode must be one of"):
        normalize(x, "rgb")


# ------------------------------------------------------------------------------------------------------------
# Import and parity with OpenCV's Caffe reader
# ------------------------------------------------------------------------------------------------------------


def test_import_maps_every_blob(authors_files, imported) -> None:
    """Each Caffe blob lands in the right tensor, unchanged (conv OIHW and fc (out, in) as stored)."""
    weights = authors_files[0]
    sd = imported.state_dict()
    for name, (w, b) in weights.items():
        assert np.array_equal(sd[f"{name}.weight"].numpy(), w), name
        assert np.array_equal(sd[f"{name}.bias"].numpy(), b), name
    assert imported.variant == "authors" and imported.normalization == "caffe" and not imported.training


def test_forward_matches_opencv_dnn(authors_files, imported, shared_data) -> None:
    """Our imported net == cv2.dnn on the same prototxt + caffemodel, within 1e-4 relative error, real
    crops."""
    import cv2

    _, proto, model = authors_files
    target_u8, search_u8 = _man_crops(shared_data)
    target, search = normalize(target_u8, "caffe"), normalize(search_u8, "caffe")
    with torch.inference_mode():
        ours = imported(target, search).numpy()
    ref_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    ref_net.setInput(target.numpy(), "target")
    ref_net.setInput(search.numpy(), "image")
    ref = ref_net.forward("fc8-shapes")
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"\nauthors net vs cv2.dnn: max relative error {rel:.3e} (outputs spread {ref.std(0)})")
    assert ours.shape == ref.shape == (3, 4)
    assert ref.std(0).min() > 1.0  # the output really depends on the pixels
    assert rel < 1e-4
    # The towers are not interchangeable: feeding the crops the other way round changes the output a lot.
    with torch.inference_mode():
        swapped = imported(search, target).numpy()
    assert np.abs(swapped - ref).max() / np.abs(ref).max() > 1e-2


# ------------------------------------------------------------------------------------------------------------
# Checkpoints and the CLI
# ------------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(imported, tmp_path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "goturn.pt", imported)
    assert not list(path.parent.glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes, not mkstemp's 0600
    ckpt = torch.load(path, weights_only=True)  # the contract: plain tensors and containers only
    assert ckpt["format"] == "goturn-checkpoint-v1" and ckpt["variant"] == "authors"
    assert ckpt["normalization"] == "caffe"
    back = load_model(path)
    for k, v in imported.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k

    # A trainer checkpoint: extra keys, DDP-prefixed state dict.
    trainer = make_checkpoint(imported, step=7, optimizer={"state": {}, "param_groups": []}, rng=torch.arange(3))
    trainer["model"] = {f"module.{k}": v for k, v in trainer["model"].items()}
    save_checkpoint(tmp_path / "trainer.pt", trainer)
    assert load_checkpoint(tmp_path / "trainer.pt")["step"] == 7
    assert torch.equal(load_model(tmp_path / "trainer.pt").fc8.bias, imported.fc8.bias)

    bad = dict(make_checkpoint(imported), variant="alexnet")
    with pytest.raises(CheckpointError, match="variant"):
        save_checkpoint(tmp_path / "bad.pt", bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="goturn-checkpoint-v1"):
        load_model(tmp_path / "other.pt")


def test_cli_and_caffemodel_loading(authors_files, imported, tmp_path, capsys) -> None:
    _, proto, model = authors_files
    out = tmp_path / "goturn.pt"
    assert import_main(["--caffemodel", str(model), "--prototxt", str(proto), "--out", str(out)]) == 0
    assert "variant=authors kind=full" in capsys.readouterr().out
    assert torch.equal(load_model(out).fc7b.weight, imported.fc7b.weight)
    assert import_main(["--caffemodel", str(model), "--out", str(out), "--expect", "opencv"]) == 2
    assert "expected OpenCV's model, found the authors' model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Bad and unusual files
# ------------------------------------------------------------------------------------------------------------


def test_clear_errors_for_bad_files(authors_files, tmp_path, capsys, monkeypatch) -> None:
    model = authors_files[2]
    data = model.read_bytes()
    cases = {
        "truncated.caffemodel": (data[: len(data) // 3], "truncated"),
        "garbage.caffemodel": (
            bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
            "not a",
        ),
        "empty.caffemodel": (b"", "empty"),
        "text.caffemodel": (authors_files[1].read_bytes(), "prototxt"),
    }
    for name, (content, reason) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CaffeModelError, match=reason):
            load_caffemodel(p)
        assert import_main(["--caffemodel", str(p), "--out", str(tmp_path / "x.pt")]) == 2
        assert "error:" in capsys.readouterr().err
    with zipfile.ZipFile(tmp_path / "z.caffemodel", "w") as z:
        z.writestr("a", "b")
    with pytest.raises(CaffeModelError, match="zip"):
        read_caffemodel(tmp_path / "z.caffemodel")
    with pytest.raises(CaffeModelError, match="no such file"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    monkeypatch.setattr(CP, "MAX_FILE_BYTES", 1000)
    with pytest.raises(CaffeModelError, match="larger"):
        read_caffemodel(model)
    monkeypatch.undo()
    assert not (tmp_path / "x.pt").exists()

    # Right names, wrong shape; missing layers; unrelated network.
    rng = np.random.default_rng(0)
    conv = [(f"conv{i}", "Convolution", [rng.standard_normal((4, 3, 3, 3)), np.zeros(4)]) for i in range(1, 6)]
    write_caffemodel(tmp_path / "shape.caffemodel", conv)
    with pytest.raises(CaffeModelError, match=r"conv1.*shape \(4, 3, 3, 3\)"):
        load_caffemodel(tmp_path / "shape.caffemodel")
    write_caffemodel(
        tmp_path / "partial.caffemodel", [("fc8-shapes", "InnerProduct", [np.zeros((4, 4096)), np.zeros(4)])]
    )
    with pytest.raises(CaffeModelError, match="missing layers"):
        load_caffemodel(tmp_path / "partial.caffemodel")
    write_caffemodel(tmp_path / "lenet.caffemodel", [("ip1", "InnerProduct", [np.zeros((2, 2)), np.zeros(2)])])
    with pytest.raises(CaffeModelError, match="not a GOTURN or CaffeNet model"):
        load_caffemodel(tmp_path / "lenet.caffemodel")


def test_checkpoints_that_would_load_wrong_are_refused(imported, tmp_path, monkeypatch) -> None:
    """Weights that torch would load without a word: NaN (the tracker never moves: the lost-target guard keeps the
    box), integer tensors (cast), a key twice once DDP's prefix goes, a non-string key, a string flag."""
    good = make_checkpoint(imported, model={k: v.clone() for k, v in imported.state_dict().items()})
    nan = {**good["model"], "fc8.weight": torch.full_like(good["model"]["fc8.weight"], float("nan"))}
    ints = {**good["model"], "fc8.bias": torch.zeros(4, dtype=torch.int64)}
    twice = {**good["model"], "module.fc8.bias": good["model"]["fc8.bias"]}
    cases = {
        "nan.pt": ({**good, "model": nan}, "fc8.weight holds NaN or infinite values"),
        "ints.pt": ({**good, "model": ints}, "fc8.bias holds torch.int64 values"),
        "twice.pt": ({**good, "model": twice}, "two tensors for 'fc8.bias'"),
        "intkey.pt": ({**good, "model": {**good["model"], 0: torch.zeros(1)}}, "something other than a named"),
        "flag.pt": ({**good, "backbone_only": "no"}, "'backbone_only' is 'no'"),
    }
    for name, (ckpt, reason) in cases.items():
        torch.save(ckpt, tmp_path / name)
        with pytest.raises(CheckpointError, match=reason):
            load_model(tmp_path / name)
    rotted = bytearray(save_checkpoint(tmp_path / "rotted.pt", good).read_bytes())
    with zipfile.ZipFile(tmp_path / "rotted.pt") as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's record
    name_len, extra_len = struct.unpack_from("<HH", rotted, info.header_offset + 26)
    rotted[info.header_offset + 30 + name_len + extra_len + 1000] ^= 0x10  # one bit of one weight
    (tmp_path / "rotted.pt").write_bytes(rotted)
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_model(tmp_path / "rotted.pt")  # torch.load alone reads it, one weight changed
    legacy = tmp_path / "legacy.pt"
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_model(legacy).fc8.bias, imported.fc8.bias)
    monkeypatch.setattr("model.checkpoint.MAX_CHECKPOINT_BYTES", 1000)  # every format: refused from its size
    with pytest.raises(CheckpointError, match="more than any checkpoint"):
        load_model(legacy)
    monkeypatch.undo()
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_model(fifo)  # neither a hang nor "no such file"
    with pytest.raises(CheckpointError, match="is a FIFO"):
        save_checkpoint(fifo, imported)  # the rename would have replaced it (as root: /dev/null too)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path)


def test_caffe_files_that_would_import_wrong_are_refused(authors_files, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    layers = [
        (name, "Convolution", [rng.standard_normal((cout, cin // g, k, k)), np.zeros(cout)])
        for name, cin, cout, k, _, _, g, _ in CONV_SPECS
    ]
    search = [(f"{n}_p", t, b) for n, t, b in layers[:4]]  # conv1_p..conv4_p: cut before conv5_p
    write_caffemodel(tmp_path / "cut.caffemodel", layers + search)
    with pytest.raises(CaffeModelError, match=r"search-tower layers .* without the rest"):
        load_caffemodel(tmp_path / "cut.caffemodel")  # used to import as CaffeNet, its search tower dropped
    M = CP.MESSAGES
    net = M["NetParameter"]()
    blob = net.layer.add(name="conv1", type="Convolution").blobs.add()
    blob.shape.dim.extend([1] * 70 + [2])
    blob.data.append(np.zeros(2, np.float32).tobytes())
    (tmp_path / "axes.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(CaffeModelError, match="71 axes, Caffe allows 32"):
        read_caffemodel(tmp_path / "axes.caffemodel")
    model, out = authors_files[2], tmp_path / "x.pt"
    garbage, fifo = tmp_path / "garbage.prototxt", tmp_path / "fifo.prototxt"
    garbage.write_text("this is not a prototxt\n")
    os.mkfifo(fifo)
    for proto, reason in ((garbage, "declares no named layer"), (fifo, "FIFO")):
        assert import_main(["--caffemodel", str(model), "--prototxt", str(proto), "--out", str(out)]) == 2
        assert reason in capsys.readouterr().err
    v1 = tmp_path / "v1.prototxt"  # V1 syntax, type before name: still read
    v1.write_text('name: "x"\nlayers {\n  type: INNER_PRODUCT\n  name: "fc9"\n}\n')
    assert import_main(["--caffemodel", str(model), "--prototxt", str(v1), "--out", str(out)]) == 2
    assert "declares layers ['fc9']" in capsys.readouterr().err
    assert not out.exists()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_caffenet_backbone_v1_legacy_and_unpacked(tmp_path) -> None:
    """A V1 (``layers``) CaffeNet file with legacy 4-D blob dims feeds both towers; the head gets fillers.

    One blob is hand-encoded with *unpacked* floats (old writers) to exercise the slow path.
    """
    M = CP.MESSAGES
    rng = np.random.default_rng(3)
    net = M["NetParameter"](name="CaffeNet")
    arrays = {}
    for name, cin, cout, k, _, _, g, _ in CONV_SPECS:
        w = rng.standard_normal((cout, cin // g, k, k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        arrays[name] = (w, b)
        layer = net.layers.add(name=name, type=4)
        for a, dims in ((w, w.shape), (b, (1, 1, 1, cout))):
            blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            blob.data.append(a.tobytes())
    fc8 = net.layers.add(name="fc8", type=14)  # CaffeNet's classifier: ignored
    fc8.blobs.add(num=1, channels=1, height=10, width=3).data.append(np.zeros(30, np.float32).tobytes())
    raw = net.SerializeToString()
    # An extra V2 layer (NetParameter field 100) whose blob has legacy dims and unpacked floats (field 5, wire
    # type 5 per value), hand-encoded.
    vals = np.arange(6, dtype=np.float32)
    blob = b"".join(_varint(f << 3) + _varint(v) for f, v in ((1, 1), (2, 1), (3, 2), (4, 3)))
    blob += b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in vals)
    raw += _ld(100, _ld(1, b"unpacked") + _ld(7, blob))
    # And one whose packed floats come in two chunks (3 + 3 values), as some writers split long runs.
    split = _ld(7, _ld(1, _varint(6))) + _ld(5, vals[:3].tobytes()) + _ld(5, vals[3:].tobytes())
    raw += _ld(100, _ld(1, b"split") + _ld(7, split))
    path = tmp_path / "bvlc_reference_caffenet.caffemodel"
    path.write_bytes(raw)

    layers = {layer.name: layer for layer in read_caffemodel(path)}
    assert np.array_equal(layers["unpacked"].blobs[0], vals.reshape(1, 1, 2, 3))
    assert np.array_equal(layers["split"].blobs[0], vals)
    # Shapes that cannot be: a negative dimension, and one whose int64 product overflows to 0.
    for dims, msg in (((-2, -3), "negative dimension"), ((2**32, 2**32), "a dimension over 2\\^31")):
        bad = tmp_path / "bad.caffemodel"
        shape = _ld(1, b"".join(_varint(d & (2**64 - 1)) for d in dims))
        bad.write_bytes(_ld(100, _ld(1, b"conv1") + _ld(7, _ld(7, shape))))
        with pytest.raises(CP.CaffeModelError, match=msg):
            read_caffemodel(bad)
    result = load_caffemodel(path, seed=5)
    assert result.kind == "backbone" and result.variant == "authors"
    for name, (w, b) in arrays.items():
        for tower in ("target", "search"):
            assert np.array_equal(result.state_dict[f"{tower}.{name}.weight"].numpy(), w)
            assert np.array_equal(result.state_dict[f"{tower}.{name}.bias"].numpy(), b)
    assert "fc8" in result.layers_ignored and "unpacked" in result.layers_ignored
    assert torch.all(result.state_dict["fc6.bias"] == 1)
    again = load_caffemodel(path, seed=5).state_dict["fc6.weight"]
    assert torch.equal(result.state_dict["fc6.weight"], again)  # the head fillers are seeded
    net = GoturnNet("authors", init="none")
    net.load_state_dict(result.state_dict, strict=True)
