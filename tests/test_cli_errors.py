"""Bad weights files and bad command lines: a clear error (``error: ...``, non-zero exit, no traceback) or an
explicit opt-in, never a crash or a silently wrong tracker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from caffekit import write_backbone
from PIL import Image

from evaluate import otb as O
from evaluate import track as T
from model.caffe_proto import CaffeModelError, NetParameter, write_caffemodel
from model.checkpoint import CheckpointError, load_model, make_checkpoint, read_weights, save_checkpoint
from model.import_caffe import checkpoint_from_import, load_caffemodel
from model.import_caffe import main as import_main
from model.net import GoturnNet
from model.tracker import GoturnTracker


@pytest.fixture(scope="module")
def backbone_files(module_scratch: Path) -> tuple[Path, Path]:
    """A CaffeNet-like conv-only ``.caffemodel`` and the backbone checkpoint `model.import_caffe` makes of it."""
    d = module_scratch / "backbone"
    d.mkdir()
    caffemodel = write_backbone(d / "bvlc_reference_caffenet.caffemodel")
    ckpt = save_checkpoint(d / "backbone.pt", checkpoint_from_import(load_caffemodel(caffemodel), "caffenet"))
    return caffemodel, ckpt


def test_backbone_only_weights_refused_for_tracking(backbone_files: tuple[Path, Path]) -> None:
    caffemodel, ckpt = backbone_files
    for path in (caffemodel, ckpt):
        with pytest.raises(CheckpointError, match=r"backbone-only.*python -m train --init"):
            load_model(path)
        with pytest.raises(CheckpointError, match="backbone-only"):
            GoturnTracker(path)
        assert load_model(path, allow_backbone=True).variant == "authors"  # explicit opt-in still works
    from train.loop import load_init  # the trainer's --init takes them: the convs only

    for path in (caffemodel, ckpt):
        assert read_weights(path).backbone_only
        net = GoturnNet("authors", init="none")
        assert load_init(net, str(path)).startswith("initialised conv towers")
        assert torch.equal(net.target.conv1.weight, read_weights(path).state["target.conv1.weight"])


def test_tracker_and_init_read_a_wrapped_checkpoint_alike(tmp_path: Path) -> None:
    """Keys saved from DDP(torch.compile(net)) carry both wrapper prefixes; one reader strips them for all."""
    from train.loop import load_init

    net = GoturnNet("opencv", init="random-features")
    wrapped = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    path = save_checkpoint(tmp_path / "wrapped.pt", make_checkpoint(net, model=wrapped))
    fresh = GoturnNet("opencv", init="none")
    assert load_init(fresh, str(path)) == f"initialised all layers from {path}"
    for loaded in (load_model(path), fresh):
        assert torch.equal(loaded.fc8.weight, net.fc8.weight)


def test_legacy_torch_checkpoint_is_not_sent_to_the_caffe_reader(tmp_path: Path) -> None:
    net = GoturnNet("opencv", init="random-features")  # not "none": uninitialised memory may hold NaN, refused
    with torch.no_grad():
        net.fc8.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.save(make_checkpoint(net), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    back = load_model(tmp_path / "legacy.pt")
    assert back.variant == "opencv" and back.fc8.bias.tolist() == [1.0, 2.0, 3.0, 4.0]
    torch.save({"format": "other"}, tmp_path / "other.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a goturn-checkpoint-v1 checkpoint"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint nor a usable Caffe model"):
        load_model(tmp_path / "garbage.pt")


def test_corrupt_caffemodel_is_a_caffe_model_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    net = NetParameter()
    blob = net.layer.add(name="conv1", type="Convolution").blobs.add()
    blob.shape.dim.extend([1])
    blob.data.append(b"\x00\x00\x80?\x00")  # 5 bytes: not a whole number of float32s
    (tmp_path / "odd.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(CaffeModelError, match="not a whole number of 4-byte floats"):
        load_caffemodel(tmp_path / "odd.caffemodel")
    net = NetParameter()
    net.layer.add(name="conv1", type="Convolution").blobs.add().shape.dim.extend([2**62, 2**62, 0])  # 0 values
    (tmp_path / "huge.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(CaffeModelError, match="a dimension over 2\\^31"):  # was numpy's bare reshape ValueError
        load_caffemodel(tmp_path / "huge.caffemodel")

    write_caffemodel(tmp_path / "ok.caffemodel", [(n, "Convolution", [np.zeros((2, 2))]) for n in ("conv1", "ip2")])
    raw = (tmp_path / "ok.caffemodel").read_bytes()
    (tmp_path / "name.caffemodel").write_bytes(raw.replace(b"conv1", b"\xffonv1"))  # one corrupted byte
    with pytest.raises(CaffeModelError, match="not valid UTF-8"):
        load_caffemodel(tmp_path / "name.caffemodel")

    for name in ("odd", "name"):
        assert import_main(["--caffemodel", str(tmp_path / f"{name}.caffemodel"), "--out", str(tmp_path / "x.pt")]) == 2
        assert capsys.readouterr().err.startswith("error: ")
    # layers of neither net: the message names the file, as every other one does
    assert import_main(["--caffemodel", str(tmp_path / "ok.caffemodel"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'ok.caffemodel'}: not a GOTURN or CaffeNet model") and "ip2" in err


def test_trackers_refuse_a_missing_gpu_in_one_sentence(monkeypatch) -> None:
    """GoturnTracker(device="cuda") without a GPU used to end in torch's multi-line 'Found no NVIDIA driver'."""
    from model.tracker import MultiTracker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cls in (GoturnTracker, MultiTracker):
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
            cls("never-read.pt", device="cuda")
        with pytest.raises(ValueError, match="unknown device 'gpu'"):
            cls("never-read.pt", device="gpu")


def test_import_caffe_binary_prototxt_is_an_error(
    backbone_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    binary = tmp_path / "deploy.prototxt"
    binary.write_bytes(b"\x96\x9d\xff\x00" * 10)
    argv = ["--caffemodel", str(backbone_files[0]), "--prototxt", str(binary), "--out", str(tmp_path / "x.pt")]
    assert import_main(argv) == 2
    assert "not a text .prototxt" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def tiny_otb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OTB root with one 3-frame sequence ``Seq`` (64x48)."""
    root = tmp_path_factory.mktemp("otb")
    (root / "Seq" / "img").mkdir(parents=True)
    for i in range(1, 4):
        Image.new("RGB", (64, 48), (i * 40, 90, 30)).save(root / "Seq" / "img" / f"{i:04d}.jpg")
    (root / "Seq" / "groundtruth_rect.txt").write_text("10,10,20,16\n" * 3)
    return root


def _cli_error(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a CLI ``main`` that must fail cleanly; returns its one-line message (argparse's last line)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    msg = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0 and msg.startswith(("error: ", "python -m")) and "error: " in msg, msg
    return msg


_G = "GARBAGE"  # replaced by a garbage weights file
CLI_CASES = {
    "otb-garbage-weights": ("otb", ["--weights", _G, "--device", "cpu"], "neither a PyTorch checkpoint"),
    "otb-bogus-device": ("otb", ["--weights", _G, "--device", "bogus"], "unknown device 'bogus'"),
    "otb-cuda-missing": ("otb", ["--weights", _G, "--device", "cuda"], "CUDA is not available"),
    "otb-batch-0": ("otb", ["--weights", _G, "--batch-sequences", "0"], "--batch-sequences: must be a positive"),
    "otb-max-frames-neg": ("otb", ["--weights", _G, "--max-frames", "-1"], "--max-frames: must be a positive"),
    "track-garbage-weights": ("track", ["--weights", _G, "--device", "cpu"], "neither a PyTorch checkpoint"),
    "track-missing-weights": ("track", ["--weights", "nope.pt", "--device", "cpu"], "nope.pt: no such file"),
    "track-bogus-device": ("track", ["--weights", _G, "--device", "bogus"], "unknown device 'bogus'"),
    "track-unknown-target": ("track", ["--weights", _G, "--target", "Seq-2"], "no target 'Seq-2'; targets: Seq"),
    "track-init-arity": ("track", ["--weights", _G, "--init", "1,2,3"], "expected 4 numbers"),
    "track-init-zero-size": ("track", ["--weights", _G, "--init", "10,10,0,0"], "w, h > 0"),
    "track-init-outside": ("track", ["--weights", _G, "--init", "100,10,5,5"], "does not overlap the 64x48 frame"),
    "track-max-frames-0": ("track", ["--weights", _G, "--max-frames", "0"], "--max-frames: must be a positive"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_evaluate_cli_errors(case: str, tiny_otb: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    cli, argv, expected = CLI_CASES[case]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x96\x9d" * 100)
    argv = [str(garbage) if a == _G else a for a in argv]
    if cli == "otb":
        main, argv = O.main, [*argv, "--otb-root", str(tiny_otb), "--out", str(tmp_path / "out"), "--quiet"]
    else:
        main, argv = T.main, [*argv, "--sequence", str(tiny_otb / "Seq"), "--out", str(tmp_path / "t")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert expected in _cli_error(main, argv, capsys)


def test_track_out_that_is_a_file_fails_before_loading_or_tracking(tiny_otb: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    out.write_text("a file")
    argv = ["--weights", "nope.pt", "--sequence", str(tiny_otb / "Seq"), "--out", str(out)]
    assert "is a file, not a folder" in _cli_error(T.main, argv, capsys)  # before the missing weights


DATA_CLI_CASES = {
    "stats-no-dir": ("stats", ["{tmp}/nope"], "no such directory"),
    "stats-plot-dir": ("stats", ["{shards}", "--plot", "{tmp}/missing/x.png"], "does not exist"),
    "stats-plot-suffix": ("stats", ["{shards}", "--plot", "{tmp}/x.txt"], "must end in .png"),
    "stats-bogus-split": ("stats", ["{shards}", "--split", "bogus"], "no shards of split 'bogus'"),
    "verify-no-dir": ("verify", ["{tmp}/nope"], "no such directory"),
    "augment-no-dir": ("augment", ["--shards", "{tmp}/nope", "--dump", "{tmp}/d.npz"], "does not exist"),
    "augment-bogus-split": (
        "augment",
        ["--shards", "{shards}", "--split", "bogus", "--dump", "{tmp}/d.npz"],
        "no '{source}-bogus-NNNNNN.tar' shards",
    ),
    "augment-odd-pairs": (
        "augment",
        ["--shards", "{shards}", "--pairs-per-batch", "3", "--dump", "{tmp}/d.npz"],
        "pairs_per_batch=3 must be a multiple of the 2 sources",
    ),
    "show-no-dir": ("show", ["--shards", "{tmp}/nope", "--out", "{tmp}/g.png"], "does not exist"),
    "show-out-dir": ("show", ["--shards", "{shards}", "--out", "{tmp}/missing/g.png"], "does not exist"),
    "show-too-many-pairs": (
        "show",
        ["--shards", "{shards}", "--out", "{tmp}/g.png", "--pairs", "200"],
        "no full batch",
    ),
    "augment-gpu-no-cuda": ("augment", ["--shards", "{shards}", "--device", "gpu", "--dump", "{tmp}/d.npz"], "CUDA"),
    # numpy added .npz and PIL chose the format by suffix, after all the work: found before it now
    "augment-dump-suffix": ("augment", ["--shards", "{shards}", "--dump", "{tmp}/d"], "must end in .npz"),
    "augment-dump-folder": ("augment", ["--shards", "{shards}", "--dump", "{tmp}/shards"], "must end in .npz"),
    "augment-negative-seed": ("augment", ["--shards", "{shards}", "--seed", "-1", "--dump", "{tmp}/d.npz"], ">= 0"),
    "show-out-suffix": ("show", ["--shards", "{shards}", "--out", "{tmp}/g"], "must end in .png or .jpg"),
    "show-out-folder": ("show", ["--shards", "{shards}", "--out", "{tmp}"], "must end in .png"),
}


@pytest.mark.parametrize("case", DATA_CLI_CASES)
def test_data_cli_errors(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """shards.stats / shards.verify / pipeline.augment / pipeline.show_batch: a user's typo is one error line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "gpu" must fail the same on a GPU machine
    import sys

    from pipeline import augment, show_batch
    from shards import stats, verify

    sys.path.insert(0, str(Path(__file__).parent))
    from shardkit import synthetic_samples, write_shards

    shards = tmp_path / "shards"
    write_shards(shards, "imagenet", synthetic_samples(4, "imagenet", seed=1, w=64, h=48), per_tar=4)
    write_shards(shards, "alov", synthetic_samples(4, "alov", seed=2, w=64, h=48), per_tar=4)
    cli, argv, expected = DATA_CLI_CASES[case]
    main = {"stats": stats.main, "verify": verify.main, "augment": augment.main, "show": show_batch.main}[cli]
    argv = [a.format(tmp=tmp_path, shards=shards) for a in argv]
    assert expected in _cli_error(main, argv, capsys)


def test_damaged_shard_folders_are_one_error_line(tmp_path: Path, capsys) -> None:
    """A partial copy (a tar cut short and no index; an index cut at a line) and a FIFO as manifest.json: one line
    naming the file, not a traceback, a DALI assertion or a hang."""
    import os
    import sys

    from pipeline import augment
    from shards import verify

    sys.path.insert(0, str(Path(__file__).parent))
    from shardkit import synthetic_samples, write_shards

    def folder(name: str) -> Path:
        d = tmp_path / name
        write_shards(d, "imagenet", synthetic_samples(4, "imagenet", seed=1, w=64, h=48), per_tar=4)
        write_shards(d, "alov", synthetic_samples(4, "alov", seed=2, w=64, h=48), per_tar=4)
        return d

    cut = folder("cut")
    (cut / "alov-train-000000.idx").unlink()
    for size in (0, 100):  # empty; cut inside the first header
        os.truncate(cut / "alov-train-000000.tar", size)
        argv = ["--shards", str(cut), "--dump", str(tmp_path / "d.npz")]
        assert "alov-train-000000.tar: not a readable tar" in _cli_error(augment.main, argv, capsys)
    short = folder("short")
    idx = short / "alov-train-000000.idx"
    idx.write_text("\n".join(idx.read_text().splitlines()[:-1]) + "\n")  # header still counts 4
    argv = ["--shards", str(short), "--sampling", "epoch", "--dump", str(tmp_path / "d.npz")]
    assert "its header counts 4 samples, its lines 3" in _cli_error(augment.main, argv, capsys)
    os.mkfifo(short / "manifest.json")
    assert verify.main([str(short)]) == 1
    out = capsys.readouterr().out
    assert "manifest.json: cannot read" in out and "not a regular file" in out


def test_wrong_sequence_or_root_folder_is_named(tiny_otb: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A missing --sequence folder says so; --otb-root naming one sequence points at its parent; a corrupt frame
    is one line naming the file, from both CLIs."""
    weights = save_checkpoint(tmp_path / "w.pt", GoturnNet("authors", init="random-features"))
    monkeypatch.chdir(tmp_path)
    argv = ["--weights", str(weights), "--sequence", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]
    assert "no such folder" in _cli_error(T.main, argv, capsys)
    argv = ["--weights", str(weights), "--otb-root", str(tiny_otb / "Seq"), "--out", str(tmp_path / "o"), "--quiet"]
    assert f"pass its parent, {tiny_otb}" in _cli_error(O.main, argv, capsys)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_otb, broken)
    (broken / "Seq" / "img" / "0002.jpg").write_bytes(b"\xff\xd8\xff truncated")
    argv = ["--weights", str(weights), "--sequence", str(broken / "Seq"), "--out", str(tmp_path / "t"), "--quiet"]
    assert "0002.jpg: cannot read the frame" in _cli_error(T.main, argv, capsys)
    argv = ["--weights", str(weights), "--otb-root", str(broken), "--out", str(tmp_path / "o"), "--quiet"]
    assert "0002.jpg: cannot read the frame" in _cli_error(O.main, argv, capsys)


def test_hostile_files_are_refused_before_they_are_read(tmp_path: Path) -> None:
    """From a security review: a deflated checkpoint (256 KB can inflate to GBs before torch's checks), a
    FIFO or /dev/zero as an OTB annotation (a hang, all memory), a gzip named .tar (webdataset inflates whole
    members) and an image PIL fails on with a non-OSError each get one clear error."""
    import io
    import lzma
    import os
    import tarfile
    import zipfile

    from evaluate.otb_data import FrameReadError, read_annotation_text, read_frame
    from model.checkpoint import CheckpointError, load_checkpoint
    from shards.dataset import open_dataset, shard_paths

    ckpt = tmp_path / "ok.pt"
    torch.save({"format": "goturn-checkpoint-v1", "model": {"fc8.bias": torch.zeros(4)}}, ckpt)
    with zipfile.ZipFile(ckpt) as z, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
    (tmp_path / "ok.pt").unlink()
    with pytest.raises(CheckpointError, match="compressed records"):
        load_checkpoint(tmp_path / "deflated.pt")

    os.mkfifo(tmp_path / "groundtruth_rect.txt")
    with pytest.raises(ValueError, match="not a regular file"):
        read_annotation_text(tmp_path / "groundtruth_rect.txt")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(ValueError, match="larger than any annotation file"):
        read_annotation_text(big)

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "alov-train-000000.tar").write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 60)
    with pytest.raises(ValueError, match="a compressed tar"):
        shard_paths(shards)
    # lzma's old format has no magic number, and tarfile's "r|*" (webdataset's) inflates it: 1 GiB from 151 KB
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tf:
        member, data = tarfile.TarInfo("k.curr.jpg"), np.random.default_rng(0).bytes(4096)
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    (shards / "alov-train-000000.tar").write_bytes(lzma.compress(inner.getvalue(), format=lzma.FORMAT_ALONE))
    with pytest.raises(ValueError, match="header at byte 0: (no tar header checksum|checksum mismatch)"):
        open_dataset(shards, split=None)

    (tmp_path / "0001.ppm").write_bytes(b"P6\n2 2\n70000\n" + b"\0" * 24)  # maxval > 65535: PIL's ValueError
    with pytest.raises(FrameReadError, match="0001.ppm: cannot read the frame"):
        read_frame(tmp_path / "0001.ppm")
    (tmp_path / "0002.ppm").write_bytes(b"P6\n13000 13000\n255\n" + b"\0" * 24)  # PIL would decode 507 MB
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(FrameReadError, match="13000x13000 pixels"):
        read_frame(tmp_path / "0002.ppm")  # PIL only warns (its own bound is 179M pixels)
