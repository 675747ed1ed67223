"""Trainer tests (CPU): Caffe solver semantics, carry-over batching, exact resume, loss decrease, NaN stop,
argument errors, and two-process gloo DDP under torchrun. The real GoturnNet and DALI loader run throughout,
on tiny shards (160x120 JPEGs) with small batches to stay fast on 2 cores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train import distributed, solver
from train.checkpointing import LATEST, step_checkpoints, step_path
from train.cli import main as train_main
from train.cli import resolve
from train.data import DataError, ExampleBatcher
from train.loop import INITIAL, RunLog, Trainer, TrainingError

REPO = Path(__file__).resolve().parents[1]
FAST = ["--loader-threads", "1", "--no-progress", "--loader-pairs", "2", "--k", "10"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 stills + 24 pairs for training, 8 pairs in the ALOV val split (shard format v1, with .idx)."""
    sys.path.insert(0, str(REPO / "tests"))
    from shardkit import synthetic_samples, write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards(out, "imagenet", synthetic_samples(24, "imagenet", seed=1, w=160, h=120), per_tar=12)
    write_shards(out, "alov", synthetic_samples(24, "alov", seed=2, w=160, h=120), per_tar=12)
    val = synthetic_samples(8, "alov", seed=3, w=160, h=120, prefix="val")
    write_shards(out, "alov", val, per_tar=8, split="val")
    return out


@pytest.fixture(scope="module")
def run_1step(shards: Path, module_scratch: Path) -> Path:
    """A 1-step run started with settings off the authors preset (schedule, seed, batch, no validation)."""
    run = module_scratch / "run"
    assert train_main(_run_1step_argv(shards, run)) == 0
    return run


def _run_1step_argv(shards: Path, run: Path, *extra: str) -> list[str]:
    """`run_1step`'s command line, plus ``extra``."""
    settings = ("--lr-step", "7", "--gamma", "0.5", "--seed", "3", "--no-val", "--log-every", "1", "--keep-last", "1")
    return _argv(shards, run, 1, 11, "1e-6", *settings, *extra)


def _trainer(argv: list[str]) -> Trainer:
    """A Trainer as ``python -m train argv`` builds it (nothing run, nothing written)."""
    cfg = resolve(argv)
    ctx = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, ctx)
    finally:
        distributed.teardown()


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------------------
# Solver
# ------------------------------------------------------------------------------------------------------------


def test_caffe_sgd_is_caffes_momentum_form_across_an_lr_step():
    """v = m v + lr (g + wd w); w -= v: lr inside the velocity (unlike torch SGD, visible at an lr step)."""
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    q = torch.nn.Parameter(w0.clone())
    opt = solver.CaffeSGD([{"params": [p], "lr_mult": 10.0, "weight_decay": 5e-4}], lr=0.1, momentum=0.9)
    sched = solver.CaffeStepLR(opt, base_lr=0.1, gamma=0.1, stepsize=2)
    ref = torch.optim.SGD([q], lr=1.0, momentum=0.9, weight_decay=5e-4)
    w, v = w0.clone(), torch.zeros(5, dtype=torch.float64)
    for it in range(5):
        g = torch.randn(5, dtype=torch.float64)
        lr = 0.1 * 0.1 ** (it // 2) * 10.0
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-15)
        v = 0.9 * v + lr * (g + 5e-4 * w)
        w = w - v
        p.grad = g.clone()
        opt.step()
        sched.step()
        ref.param_groups[0]["lr"] = lr
        q.grad = g.clone()
        ref.step()
        torch.testing.assert_close(p.detach(), w, rtol=1e-13, atol=1e-13)
    assert not torch.allclose(q.detach(), w)  # torch's form rescales the whole velocity at an lr step


def test_param_groups_follow_the_prototxt():
    from model.net import GoturnNet

    net = GoturnNet("authors", init="none")
    groups = {g["name"]: g for g in solver.param_groups(net, train_backbone=False)}
    assert set(groups) == {"fc_weight", "fc_bias"}
    assert (groups["fc_weight"]["lr_mult"], groups["fc_weight"]["weight_decay"]) == (10.0, 5e-4)
    assert (groups["fc_bias"]["lr_mult"], groups["fc_bias"]["weight_decay"]) == (20.0, 0.0)
    assert not any(p.requires_grad for p in net.conv_parameters())
    groups = {g["name"]: g for g in solver.param_groups(net, train_backbone=True)}
    assert (groups["conv_weight"]["lr_mult"], groups["conv_bias"]["lr_mult"]) == (1.0, 2.0)
    assert groups["conv_bias"]["weight_decay"] == 0.0 and groups["conv_weight"]["weight_decay"] == 5e-4
    assert all(p.requires_grad for p in net.conv_parameters())


def test_step_lr_is_caffes_step_policy():
    opt = solver.CaffeSGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": 20.0}], lr=1e-6)
    s = solver.CaffeStepLR(opt, 1e-6)
    assert [s.rate(i) for i in (0, 99_999, 100_000, 250_000)] == pytest.approx([1e-6, 1e-6, 1e-7, 1e-8], rel=1e-12)
    s.load_state_dict({"iteration": 100_000})
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-6, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Batching with carry-over
# ------------------------------------------------------------------------------------------------------------


class _ListLoader:
    """Loader stand-in: items of 22 examples numbered consecutively in bbox[:, 0]; resumable by index."""

    def __init__(self, n_items: int = 6, per_item: int = 22):
        self.n, self.per, self.i = n_items, per_item, 0

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, s: dict) -> None:
        self.i = s["i"]

    def __iter__(self):
        while self.i < self.n:
            ids = torch.arange(self.i * self.per, (self.i + 1) * self.per, dtype=torch.float32)
            self.i += 1
            u8 = (ids % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
            yield {"target": u8, "search": u8.clone(), "bbox": ids[:, None].repeat(1, 4)}
        self.i = 0  # next epoch


def test_batches_of_50_carry_leftovers_and_resume_exactly():
    it = iter(ExampleBatcher(_ListLoader(), 50))
    batches = [next(it) for _ in range(5)]
    ids = torch.cat([b.bbox[:, 0] for b in batches])
    epoch = torch.arange(132, dtype=torch.float32)  # 6 items x 22: batches straddle the epoch end, no gap
    assert torch.equal(ids, torch.cat([epoch, epoch[:118]]))
    assert all(b.bbox.shape[0] == 50 for b in batches)
    # Position after batch 2 (100 examples = 5 items pulled, 10 carried: the last 10 of item 5) resumes to the
    # same batches 3..5 by pulling item 5 again; a checkpoint holds these numbers, not the leftovers' pixels.
    pos = batches[1].position
    assert pos["loader"] == {"i": 5} and pos["carry"] is None
    assert pos["replay"] == {"loader": {"i": 4}, "items": 4, "skip": 12, "rows": 10}
    from train.data import position_to_cpu

    resumed = iter(ExampleBatcher(_ListLoader(), 50, position_to_cpu(pos)))
    again = [next(resumed) for _ in range(3)]
    for a, b in zip(batches[2:], again, strict=True):
        assert torch.equal(a.bbox, b.bbox) and torch.equal(a.search, b.search)
    # Batches of 30 from items of 22: the leftovers can span items (replayed from the oldest one's state).
    small = [next(it) for it in [iter(ExampleBatcher(_ListLoader(), 40))] for _ in range(4)]
    pos = small[0].position  # 40 of 44 rows: 4 left, of item 2
    assert pos["replay"] == {"loader": {"i": 1}, "items": 1, "skip": 18, "rows": 4}
    tail = iter(ExampleBatcher(_ListLoader(), 40, position_to_cpu(pos)))
    assert all(torch.equal(next(tail).bbox, b.bbox) for b in small[1:])

    class Stateless:  # no state_dict: the position keeps the leftovers themselves
        def __iter__(self):
            return iter(_ListLoader())

    pos = next(iter(ExampleBatcher(Stateless(), 50))).position
    assert pos["replay"] is None and pos["carry"]["bbox"].shape[0] == 16


class _PairLoader(_ListLoader):
    """Items of 2 pairs x 11 examples whose examples share their pair's target crop, as GoturnLoader lays them."""

    k = 10

    def __iter__(self):
        for item in super().__iter__():
            pair = item["bbox"][:, 0].long() // 11
            item["target"] = (pair * 37 % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
            yield item


@pytest.mark.parametrize("per_item", [22, 66])
def test_batches_know_from_the_layout_which_examples_share_a_target_crop(per_item: int):
    """Batches of 30 from items of 22 (every batch starts with carry-over) or 66 (several batches cut from one
    item): `runs` equals what the pixels say, across carry-over, the epoch end and a resume. Loaders without
    ``k`` give no runs; items with one target per pair are refused."""
    from model.net import unique_consecutive_crops
    from train.data import position_to_cpu

    it = iter(ExampleBatcher(_PairLoader(per_item=per_item), 30))
    batches = [next(it) for _ in range(14)]
    pos = batches[3].position
    assert pos["replay"]["rows"] == {22: 12, 66: 12}[per_item]
    resumed = iter(ExampleBatcher(_PairLoader(per_item=per_item), 30, position_to_cpu(pos)))
    offsets = set()
    for b in batches + [next(resumed) for _ in range(8)]:
        first, index = b.runs
        uniq, ref = unique_consecutive_crops(b.target)
        assert torch.equal(index, ref) and torch.equal(b.target[first], uniq)
        offsets.add(int(b.bbox[0, 0]) % 11)
    assert len(offsets) > 5  # batches started at many positions within a pair
    assert next(iter(ExampleBatcher(_ListLoader(), 30))).runs is None

    class Compact(_PairLoader):
        expand_target = False

        def __iter__(self):
            for item in super().__iter__():
                yield {**item, "target": item["target"][::11]}

    with pytest.raises(ValueError, match="one target crop per example"):
        next(iter(ExampleBatcher(Compact(), 30)))


def test_the_prefetcher_keeps_answering_after_its_end():
    """Its thread puts one last item (the end, or the loader's error) and exits: asking again used to wait on the
    empty queue forever. Asked from a helper thread here, so that a regression fails instead of hanging."""
    import threading

    from train.data import Prefetcher

    def failing():
        raise ValueError("bad shard")
        yield

    answers = []

    def ask() -> None:
        p, q = Prefetcher(iter([]), "cpu"), Prefetcher(failing, "cpu")
        answers.append((list(p), list(p)))
        for _ in range(2):
            with pytest.raises(ValueError, match="bad shard"):
                next(q)
            answers.append("raised")
        p.close()
        q.close()

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout=60)
    assert answers == [([], []), "raised", "raised"]


def test_a_loader_failing_a_whole_epoch_says_so_with_the_last_cause():
    """Every batch undecodable (e.g. a truncated shard under the epoch reader): the error says that, with the last
    cause, instead of suggesting an empty split."""
    from pipeline.bad_samples import SampleDecodeError

    class Broken(_ListLoader):
        def __iter__(self):
            while self.i < self.n:
                self.i += 1
                raise SampleDecodeError(f"cannot read/decode sample key='k{self.i}'")
            self.i = 0
            yield from ()  # a generator, as GoturnLoader.__iter__: the error comes at next(), not at iter()

    with pytest.raises(DataError, match=r"every training loader batch of a whole epoch failed.*key='k6'$"):
        next(iter(ExampleBatcher(Broken(), 30)))


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------


def test_bad_arguments_give_clear_errors(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    def error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as e:
            resolve(argv)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "does not exist" in error(["--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no training shards" in error(["--shards", str(empty), "--out", str(tmp_path / "r")])
    if not torch.cuda.is_available():
        assert "no CUDA device" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert "nothing to resume" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--resume"])
    assert "--out is required" in error(["--shards", str(shards)])
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        assert f"{tmp_path / 'afile'} is a file, not a directory" in error(["--shards", str(shards), "--out", str(out)])
    assert "must be positive" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--steps", "0"])
    assert "finite" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--lr", "nan"])
    assert "overflows float32" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--lr", "1e38"])
    both = ["--shards", str(shards), "--out", str(tmp_path / "r")]
    assert "pass one of them" in error([*both, "--resume", "--overwrite"])
    assert "contradict each other" in error([*both, "--no-val", "--val-shards", str(shards)])
    assert "Adam keeps its own" in error([*both, "--optimizer", "adam", "--momentum", "0.5"])
    cfg = resolve(["--shards", str(shards), "--out", str(tmp_path / "r")])
    assert (cfg.preset, cfg.steps, cfg.batch_examples, cfg.lr, cfg.lr_step) == (
        "authors",
        450_000,
        50,
        1e-6,
        100_000,
    )
    assert cfg.val_shards == str(shards) and not cfg.train_backbone
    sample = resolve(["--shards", str(shards), "--out", str(tmp_path / "r"), "--preset", "sample", "--steps", "7"])
    assert sample.steps == 7 and sample.preset == "sample"
    assert not sample.overwrite  # the sample preset used to imply --overwrite: a second run silently replaced one
    assert "--k must be <= 498" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--k", "499"])
    crashed = tmp_path / "crashed"  # a run that stopped before its first checkpoint: a new one would append to it
    crashed.mkdir()
    (crashed / "log.jsonl").write_text('{"step": 1}\n')
    assert "holds files of an earlier run (log.jsonl) but no checkpoint" in error(
        ["--shards", str(shards), "--out", str(crashed)]
    )
    assert resolve(["--shards", str(shards), "--out", str(crashed), "--overwrite"]).overwrite
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LATEST).write_bytes(b"")
    assert "already holds a run" in error(["--shards", str(shards), "--out", str(tmp_path / "r"), "--preset", "sample"])


# ------------------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------------------


def _argv(shards: Path, out: Path, steps: int, batch: int, lr: str, *extra: str) -> list[str]:
    argv = ["--shards", str(shards), "--out", str(out), "--steps", str(steps), "--batch-examples", str(batch)]
    return argv + ["--lr", lr, *FAST, *extra]


def test_resume_continues_the_same_loss_curve_bit_for_bit(shards: Path, tmp_path: Path):
    """4 steps == 2 steps + resume + 2 steps: identical losses, weights, momentum (CPU, same thread count).

    Batches of 30 from loader items of 22 examples, so the checkpoint at step 2 carries 6 examples over; the
    head's dropout makes the RNG restore matter."""
    extra = ("--no-val", "--log-every", "1", "--ckpt-every", "0")
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_main(_argv(shards, full, 4, 30, "1e-5", *extra)) == 0
    assert train_main(_argv(shards, split, 2, 30, "1e-5", *extra)) == 0
    mid = _load(split / LATEST)
    assert mid["step"] == 2 and mid["ranks"][0]["data"]["replay"]["rows"] == 6  # replayed, not stored
    assert train_main(_argv(shards, split, 4, 30, "1e-5", *extra, "--resume")) == 0

    a, b = _rows(full), _rows(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ca, cb = _load(full / LATEST), _load(split / LATEST)
    assert ca["step"] == cb["step"] == 4
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert len(ca["optimizer"]["state"]) == len(cb["optimizer"]["state"]) == 8  # fc6-fc8 weights and biases
    for i, s in ca["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], cb["optimizer"]["state"][i]["momentum_buffer"])
    assert ca["format"] == "goturn-checkpoint-v1" and ca["variant"] == "authors"
    from model.checkpoint import load_model

    net = load_model(full / LATEST)
    assert torch.equal(net.fc8.bias, ca["model"]["fc8.bias"])
    assert [s for s, _ in step_checkpoints(split)] == [2, 4]  # keep_last 3 of the authors preset


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (and DALI's GPU backend for loader gpu)")
@pytest.mark.parametrize(("loader", "amp"), [("gpu", "none"), ("gpu", "bf16"), ("cpu", "none")])
def test_cuda_training_resumes_the_same_loss_curve(shards: Path, tmp_path: Path, loader: str, amp: str):
    """The CUDA paths (DALI GPU or pinned host batches, side-stream prefetch, GPU normalisation, bf16 autocast):
    2 steps + resume + 2 steps follow 4 uninterrupted steps. GPU kernels may sum in another order from run to run,
    so the curves agree within a tolerance here rather than bit for bit."""
    extra = ("--device", "cuda", "--loader-device", loader, "--amp", amp, "--no-val", "--log-every", "1")
    extra += ("--ckpt-every", "0")
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_main(_argv(shards, full, 4, 30, "1e-5", *extra)) == 0
    assert train_main(_argv(shards, split, 2, 30, "1e-5", *extra)) == 0
    assert train_main(_argv(shards, split, 4, 30, "1e-5", *extra, "--resume")) == 0
    a, b = [r["loss"] for r in _rows(full)], [r["loss"] for r in _rows(split)]
    print(f"cuda loader={loader} amp={amp}: losses {a} vs resumed {b}")
    assert len(a) == len(b) == 4 and all(0 < x < float("inf") for x in a)
    assert a == pytest.approx(b, rel=1e-3 if amp == "bf16" else 1e-4)
    ckpt = _load(full / LATEST)
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # The loss is dominated by the targets' size; the weight updates show whether the solver state resumed too.
    w = "fc8.weight"
    moved = [_load(r / LATEST)["model"][w] - _load(r / INITIAL)["model"][w] for r in (full, split)]
    assert moved[0].abs().max() > 0
    torch.testing.assert_close(moved[1], moved[0], rtol=2e-2, atol=2e-2 * float(moved[0].abs().max()))


def test_loss_decreases_and_validation_is_logged(shards: Path, tmp_path: Path, capsys):
    """The authors' rate on batches of one pair (11 examples). The untrained net outputs ~0, so the first loss
    is about the summed |targets| (~20 per example); learning the boxes' layout must take it well below. Without
    a progress bar each logged step is a line on stderr, and the closing line gives the last validation."""
    run = tmp_path / "run"
    extra = ("--log-every", "1", "--ckpt-every", "0", "--val-every", "12", "--val-batches", "1")
    assert train_main(_argv(shards, run, 12, 11, "1e-6", *extra)) == 0
    err = capsys.readouterr().err
    assert "[train] step 1/12 loss " in err and "[train] step 12/12 loss " in err and " ex/s val loss " in err
    assert re.search(r"\[train\] steps: step 12 \(loss [\d.]+ -> [\d.]+; val loss [\d.]+, mean IoU [\d.]+\)", err)
    rows = _rows(run)
    losses = [r["loss"] for r in rows]
    first, last = losses[0], sum(losses[-4:]) / 4
    print(f"loss: step 1 {first:.1f}, mean of the last 4 steps {last:.1f}: {[round(v) for v in losses]}")
    assert last < 0.6 * first
    assert {"step", "loss", "lr", "examples_per_s"} <= set(rows[0])
    assert rows[-1]["val_loss"] > 0 and 0 <= rows[-1]["val_mean_iou"] <= 1
    assert list(run.glob("events.out.tfevents.*"))


def test_validation_equals_the_expanded_batch_computation(shards: Path, tmp_path: Path):
    """`Trainer.validate` runs the target tower once per pair (layout runs); its loss and IoU must equal the
    plain forward over every example's own target crop, on the real val split (2 batches of 2 pairs)."""
    from model.preprocess import normalize
    from train import distributed
    from train.loop import Trainer, box_iou, build_loader

    cfg = resolve(_argv(shards, tmp_path / "run", 1, 22, "1e-6", "--val-batches", "2"))
    ctx = distributed.setup(cfg.device)
    try:
        trainer = Trainer(cfg, ctx)
        torch.nn.init.normal_(trainer.model.fc8.weight, std=0.05)  # a net whose boxes depend on its input
        got = trainer.validate()
        assert build_loader(cfg.shards, "train", cfg, ctx, 0).sampling == cfg.sampling == "authors"  # train.cpp's
        assert build_loader(cfg.val_shards, "val", cfg, ctx, 0).sampling == "epoch"  # no val sample twice
        loss = iou = n = n_true = 0.0
        net = trainer.model.eval()
        with torch.no_grad():
            for i, b in enumerate(build_loader(cfg.val_shards, "val", cfg, ctx, seed=cfg.seed + 1)):
                if i == 2:
                    break
                pred = net(normalize(b["target"], trainer.norm_mode), normalize(b["search"], trainer.norm_mode))
                loss += float((pred - b["bbox"]).abs().sum())
                iou += float(box_iou(pred[:: cfg.k + 1], b["bbox"][:: cfg.k + 1]).sum())
                n, n_true = n + len(pred), n_true + len(pred) // (cfg.k + 1)
    finally:
        distributed.teardown()
    assert n == 44 and len({tuple(r) for r in b["bbox"][:: cfg.k + 1].tolist()}) > 1
    assert got["val_loss"] == pytest.approx(loss / n * cfg.batch_examples, rel=1e-5)
    assert got["val_mean_iou"] == pytest.approx(iou / n_true, rel=1e-5, abs=1e-7)
    assert got["val_pairs"] == n_true == 4


def test_init_from_a_caffenet_caffemodel_trains_the_head_on_its_convs(shards: Path, tmp_path: Path, capsys):
    """``--init bvlc_reference_caffenet.caffemodel`` (the authors' start): the run's convs are the file's and stay
    frozen, the head trains; a later ``--resume`` with another ``--init`` says the file is ignored."""
    from caffekit import write_backbone

    from model.checkpoint import read_weights

    caffemodel = write_backbone(tmp_path / "bvlc_reference_caffenet.caffemodel", seed=4)
    convs = {k: v for k, v in read_weights(caffemodel).state.items() if k.startswith(("target.", "search."))}
    assert len(convs) == 20  # 5 convs x weight, bias x 2 towers
    run = tmp_path / "run"
    assert train_main(_argv(shards, run, 2, 11, "1e-5", "--no-val", "--init", str(caffemodel))) == 0
    assert f"initialised conv towers (head from Caffe fillers) from {caffemodel}" in capsys.readouterr().err
    start, end = _load(run / INITIAL)["model"], _load(run / LATEST)["model"]
    for name, w in convs.items():  # target.conv1.weight ... search.conv5.bias
        assert torch.equal(start[name], w) and torch.equal(end[name], w), name
    assert not torch.equal(start["fc8.weight"], end["fc8.weight"])
    other = write_backbone(tmp_path / "other.caffemodel", seed=5)
    assert train_main(["--out", str(run), "--resume", "--steps", "3", "--init", str(other)]) == 0
    assert f"--init {other} ignored: resuming from" in capsys.readouterr().err
    assert torch.equal(_load(run / LATEST)["model"]["search.conv1.weight"], convs["search.conv1.weight"])


def test_a_run_refused_at_its_start_leaves_nothing_behind(run_1step: Path, shards: Path, tmp_path: Path, capsys):
    """A wrong --init is refused before any step; its config.json used to stay, and the corrected command was
    then refused too, as a leftover run needing --overwrite."""
    run = tmp_path / "run"
    argv = _argv(shards, run, 1, 11, "1e-6", "--no-val", "--init", str(run_1step / INITIAL))
    assert train_main([*argv, "--variant", "opencv"]) == 1
    assert "holds a network of the 'authors' variant; train it with --variant authors" in capsys.readouterr().err
    assert list(run.iterdir()) == []
    assert train_main(argv) == 0  # the corrected command, without --overwrite


def test_the_opencv_variant_trains_on_its_227_pixel_units(shards: Path, tmp_path: Path):
    """OpenCV's net answers in 227ths of its patch (spec 5.2); the pipeline's targets are x10 crop fractions (its
    L1 loss against them used to teach the net to shrink boxes towards the top-left). Converted, the true
    example's target of a box is what OpenCV decodes back to that box, and a net answering it has no loss."""
    from model.opencv_geometry import opencv_decode_raw, opencv_patch

    trainer = _trainer(_argv(shards, tmp_path / "run", 1, 11, "1e-6", "--no-val", "--variant", "opencv"))
    assert trainer.target_scale == pytest.approx(22.7)
    true_target = torch.tensor([2.5, 2.5, 7.5, 7.5])  # no motion: the box in its 2x search crop
    box = np.array([100.0, 50.0, 40.0, 40.0])  # x, y, w, h inside a 400x300 frame
    decoded = opencv_decode_raw((true_target * trainer.target_scale).numpy(), opencv_patch(box, 400, 300))
    np.testing.assert_allclose(decoded, box, atol=1e-4)
    with torch.no_grad():
        trainer.model.fc8.weight.zero_()
        trainer.model.fc8.bias.copy_(true_target * trainer.target_scale / trainer.model.output_scale)
    crops = torch.zeros(3, 3, 227, 227, dtype=torch.uint8)
    loss = trainer.train_step(crops, crops, true_target.repeat(3, 1))
    assert loss.item() == pytest.approx(0.0, abs=1e-3)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shards: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert train_main(_argv(shards, run, 5, 11, "1e10", "--log-every", "1", "--ckpt-every", "1", "--no-val")) == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "last good checkpoint" in err
    ckpt = _load(run / LATEST)
    bad_step = len(_rows(run)) + 1
    assert ckpt["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_two_process_gloo_ddp(shards: Path, tmp_path: Path):
    """torchrun -m train with 2 CPU processes: ranks read different samples, weights stay identical."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train"]
    cmd += _argv(shards, run, 3, 11, "1e-5", "--no-val", "--log-every", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = _load(run / LATEST)
    r0, r1 = ckpt["ranks"]
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3
    assert torch.equal(r0["param_sums"], r1["param_sums"])  # identical replicas after the steps
    assert r0["data"]["loader"]["config"]["shard_id"] == 0 and r1["data"]["loader"]["config"]["shard_id"] == 1
    c0, c1 = r0["data"]["replay"], r1["data"]["replay"]  # each rank's 2nd item of 22 examples, 11 used
    assert c0["rows"] == c1["rows"] == 11 and c0["skip"] == c1["skip"] == 11 and c0["items"] == c1["items"] == 1
    assert (c0["loader"]["config"]["shard_id"], c1["loader"]["config"]["shard_id"]) == (0, 1)
    rows = _rows(run)
    assert [r["examples"] for r in rows] == [22, 44, 66]  # global batch = 2 ranks x 11
    # Resumed in one process: the running totals go on from the checkpoint's (they used to be step x 11 x the
    # new world size: 44 after 66), and the inexact resume says why in one clean clause.
    assert train_main(["--out", str(run), "--resume", "--steps", "4"]) == 0
    rows = _rows(run)
    assert [r["examples"] for r in rows] == [22, 44, 66, 77]
    assert rows[3]["elapsed_s"] > rows[2]["elapsed_s"] and _load(run / LATEST)["examples"] == 77


def _interrupt_after_start(cmd: list[str], run: Path, env: dict) -> subprocess.CompletedProcess:
    """Start ``cmd`` (a long run into ``run``), SIGTERM it once training has begun, and wait for it."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / INITIAL).exists():  # written as fit() starts, just before the first step
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_checkpoints_within_steps_and_exits_nonzero(shards: Path, tmp_path: Path, ranks: int):
    """A scheduler's SIGTERM: the run checkpoints at once, not at its next log step (under torchrun, which kills
    workers 30 s later, that used to lose everything since the last checkpoint), and the process exits
    128 + 15, so `train && evaluate` does not go on with a half-trained net."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train"]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train"]
    cmd += _argv(shards, run, 500, 11, "1e-5", "--no-val", "--log-every", "400", "--ckpt-every", "0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # torchrun SIGKILLs its workers 30 s after forwarding the signal: ample for a GPU run, not for two ranks on a
    # loaded 2-core machine finishing their step and saving 0.9 GB of weights and momentum
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "300"
    res = _interrupt_after_start(cmd, run, env)
    assert res.returncode != 0 and (ranks > 1 or res.returncode == 143), (res.returncode, res.stderr[-3000:])
    ckpt = _load(run / LATEST)
    assert 1 <= ckpt["step"] < 400 and ckpt["world_size"] == ranks
    assert _rows(run)[-1]["step"] == ckpt["step"]


def test_a_corrupt_val_sample_is_skipped_after_the_checkpoint(shards: Path, tmp_path: Path, monkeypatch, capsys):
    """An undecodable val sample costs its batch (counted, named in a warning), not the run; and the step's
    checkpoint is written before validating, so no validation failure can lose it."""
    from shardkit import synthetic_samples, write_shards

    data = tmp_path / "shards"
    data.mkdir()
    for f in shards.glob("*-train-*"):
        (data / f.name).symlink_to(f)
    val = synthetic_samples(8, "alov", seed=3, w=160, h=120, prefix="val")
    val[5].curr = val[5].curr[: len(val[5].curr) // 3]
    write_shards(data, "alov", val, per_tar=8, split="val")
    run = tmp_path / "run"
    seen = []
    validate = Trainer.validate

    def spy(self: Trainer) -> dict:
        seen.append((self.step, step_path(run, self.step).is_file()))
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", spy)
    assert train_main(_argv(data, run, 1, 11, "1e-6", "--val-every", "1", "--log-every", "1")) == 0
    assert seen == [(1, True)]  # step 1 both checkpoints and validates: the checkpoint came first
    (row,) = _rows(run)
    assert row["val_skipped_batches"] == 1 and row["val_loss"] > 0 and 0 <= row["val_mean_iou"] <= 1
    assert "validation skipped a loader batch" in capsys.readouterr().err


def test_validation_shows_a_progress_bar_only_with_progress(shards: Path, tmp_path: Path, capsys):
    trainer = _trainer(_argv(shards, tmp_path / "run", 1, 11, "1e-6", "--val-batches", "2"))
    capsys.readouterr()
    trainer.validate()
    assert capsys.readouterr().err == ""  # --no-progress
    trainer.cfg.progress = True
    trainer.validate()
    err = capsys.readouterr().err
    assert "val:" in err and "/2 [" in err


def test_random_frozen_convs_are_warned_about_once(shards: Path, tmp_path: Path):
    """The authors' recipe starts from CaffeNet convs: without --init they are Caffe-filler noise, frozen. The
    sample preset's random-features convs are deliberate, and --train-backbone trains them: no warning there."""

    def warnings(*extra: str) -> list[str]:
        trainer = _trainer(_argv(shards, tmp_path / "run", 1, 11, "1e-6", *extra))
        return [m for m in trainer.messages if "random" in m]

    (warning,) = warnings()
    assert warning.startswith("warning: ") and "frozen" in warning and "--train-backbone" in warning
    assert "--init bvlc_reference_caffenet.caffemodel" in warning and "tracker_init.caffemodel" in warning
    assert warnings("--preset", "sample") == warnings("--train-backbone") == []


def test_resume_drops_a_torn_log_line(tmp_path: Path, capsys):
    """A run killed mid-write leaves half a line at the end of log.jsonl; resuming drops it, and says so."""
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}, {"step": 3, "loss": 0.8}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    RunLog(tmp_path, True, resume_step=2).close()
    assert _rows(tmp_path) == rows[:2]
    assert "dropped 1 unparsable line" in capsys.readouterr().err


def test_resume_continues_with_the_runs_saved_settings(run_1step: Path, shards: Path, tmp_path: Path, capsys):
    """--resume takes the run's own settings (its checkpoint's), not the preset's: --shards may be left out, and
    only the options given change them, listed on stderr."""
    cfg = resolve(["--out", str(run_1step), "--resume", "--steps", "2"])
    got = (cfg.shards, cfg.steps, cfg.lr_step, cfg.gamma, cfg.seed, cfg.batch_examples, cfg.loader_pairs)
    assert got == (str(shards), 2, 7, 0.5, 3, 11, 2)
    assert (cfg.optimizer, cfg.val_shards, cfg.keep_last, cfg.progress) == ("caffe-sgd", None, 1, True)
    err = capsys.readouterr().err
    assert "overridden: --steps 1 -> 2" in err and "--lr-step" not in err and "--progress" not in err
    cfg = resolve(["--shards", str(shards), "--out", str(run_1step), "--resume", "--steps", "2", "--lr", "2e-6"])
    assert (cfg.lr_step, cfg.batch_examples, cfg.lr) == (7, 11, 2e-6)
    assert "--lr 1e-06 -> 2e-06" in capsys.readouterr().err
    # ... and trains on: hard links for the checkpoints (replaced, never rewritten), copies of the rest.
    clone = tmp_path / "clone"
    clone.mkdir()
    for f in run_1step.iterdir():
        if f.suffix == ".pt":
            os.link(f, clone / f.name)
        else:
            (clone / f.name).write_bytes(f.read_bytes())
    assert train_main(["--out", str(clone), "--resume", "--steps", "2", "--no-progress"]) == 0
    assert [r["step"] for r in _rows(clone)] == [1, 2]
    assert json.loads((clone / "config.json").read_text())["lr_step"] == 7


def test_resume_applies_a_changed_momentum_and_weight_decay(run_1step: Path, shards: Path, capsys):
    """optimizer.load_state_dict restores the checkpoint's groups: the command line's --momentum and
    --weight-decay must be put back (biases keep no decay), with a message; random-conv warning only at the start."""
    trainer = _trainer(_run_1step_argv(shards, run_1step, "--resume", "--momentum", "0.5", "--weight-decay", "1e-3"))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["fc_weight"]["momentum"] == groups["fc_bias"]["momentum"] == 0.5
    assert (groups["fc_weight"]["weight_decay"], groups["fc_bias"]["weight_decay"]) == (1e-3, 0.0)
    assert any("momentum 0.9 -> 0.5" in m and "weight decay 0.0005 -> 0.001" in m for m in trainer.messages)
    assert not any("random" in m for m in trainer.messages)


def test_resume_refuses_another_optimizer(run_1step: Path, shards: Path):
    with pytest.raises(TrainingError, match=r"--optimizer caffe-sgd, which cannot continue as --optimizer adam"):
        _trainer(_run_1step_argv(shards, run_1step, "--resume", "--optimizer", "adam"))


def test_resume_exactness_ignores_the_shards_spelling_not_the_sampling(run_1step: Path, shards: Path):
    """The loader compares the shards' names and counts itself: another spelling of the folder resumes exactly.
    Another --sampling draws other batches: an inexact resume, said so, rather than a silent replay."""
    argv = _run_1step_argv(shards, run_1step, "--resume")
    argv[argv.index("--shards") + 1] += "/"
    trainer = _trainer(argv)
    assert trainer.cfg.shards == f"{shards}/"
    assert trainer.last_position is not None and not any("not exact" in m for m in trainer.messages)
    trainer = _trainer(_run_1step_argv(shards, run_1step, "--resume", "--sampling", "epoch"))
    assert trainer.last_position is None
    assert any("resume is not exact (changed sampling)" in m for m in trainer.messages)


def test_skipped_training_batches_are_logged(tmp_path: Path, capsys):
    """Batches lost to undecodable samples (the authors' sampling goes on past them) are counted in log.jsonl and
    TensorBoard, not only printed."""
    from shardkit import synthetic_samples, write_shards

    data = tmp_path / "shards"
    write_shards(data, "imagenet", synthetic_samples(6, "imagenet", seed=1, w=96, h=72), per_tar=3)
    write_shards(data, "alov", synthetic_samples(6, "alov", seed=2, w=96, h=72), per_tar=3)
    os.truncate(data / "alov-train-000001.tar", 4096)  # 3 of the 6 pairs lost
    run = tmp_path / "run"
    assert train_main(_argv(data, run, 4, 11, "1e-6", "--no-val", "--log-every", "4", "--keep-last", "1")) == 0
    warned = capsys.readouterr().err.count("skipped a loader batch")
    (row,) = _rows(run)
    # The row counts the skips before the step's batch; the prefetch thread may have warned of later ones.
    assert 1 <= row["skipped_batches"] <= warned


def test_training_on_a_truncated_shard_stops_with_one_clear_line(tmp_path: Path, capsys):
    """The epoch reader on a tar cut short: the run ends at once with one error line naming the shard (DALI's
    reader would follow the index past the end of the file), not a traceback or a crash."""
    from shardkit import synthetic_samples, write_shards

    data = tmp_path / "shards"
    write_shards(data, "imagenet", synthetic_samples(6, "imagenet", seed=1, w=96, h=72), per_tar=3)
    write_shards(data, "alov", synthetic_samples(6, "alov", seed=2, w=96, h=72), per_tar=3)
    os.truncate(data / "alov-train-000001.tar", 4096)
    assert train_main(_argv(data, tmp_path / "run", 2, 11, "1e-6", "--no-val", "--sampling", "epoch")) == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert "alov-train-000001.tar is shorter than its index says" in line and "sampling='authors'" in line


def test_cuda_device_of_a_rank(monkeypatch):
    """torchrun: LOCAL_RANK picks the GPU; a launcher that gives each process its own GPU (CUDA_VISIBLE_DEVICES
    with one entry, LOCAL_RANK still counting the node's processes) gets device 0; too few GPUs is a clear error."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert distributed.cuda_index(0) == 0
    with pytest.raises(SystemExit, match="LOCAL_RANK 3 but only 1 CUDA device"):
        distributed.cuda_index(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert distributed.cuda_index(3) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.cuda_index(1) == 1
    with pytest.raises(SystemExit, match="use --nproc-per-node"):
        distributed.cuda_index(2)


def test_checkpoint_files_after_a_rollback_and_a_killed_save(tmp_path: Path):
    """Step files beyond the one just written are an abandoned branch (an older checkpoint linked over the latest
    and resumed): keep-last used to delete the rollback's source and keep them. Temporary files of a save that
    a SIGKILL cut short are removed (each can be a checkpoint's size)."""
    from model.checkpoint import FORMAT
    from train.checkpointing import remove_stale_temps, save, step_checkpoints

    def ckpt(step: int) -> dict:
        return {"format": FORMAT, "variant": "authors", "normalization": "caffe", "model": {}, "step": step}

    for s in (2, 4, 6):
        save(tmp_path, ckpt(s), keep_last=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [4, 6]
    save(tmp_path, ckpt(5), keep_last=2)  # resumed from step 4
    assert [s for s, _ in step_checkpoints(tmp_path)] == [4, 5]
    assert torch.load(tmp_path / "checkpoint-latest.pt", weights_only=True)["step"] == 5
    for name in (".checkpoint-00000007.pt.x1y2.tmp", ".checkpoint-latest.pt.tmp-123", ".initial.pt.ab.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == sorted(
        [".checkpoint-00000007.pt.x1y2.tmp", ".checkpoint-latest.pt.tmp-123", ".initial.pt.ab.tmp"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000004.pt",
        "checkpoint-00000005.pt",
        "checkpoint-latest.pt",
    ]


def test_latest_without_hard_links_and_on_a_full_disk(shards: Path, tmp_path: Path, monkeypatch):
    """Where the file system has no hard links, latest is a copy that is fsynced before its rename, and a copy
    that fails (a full disk) leaves no temporary file; a failed save is one TrainingError naming the cause and
    the last good checkpoint (torch's writer reports a full disk as "unexpected pos", the cause chained)."""
    import errno

    from model.checkpoint import FORMAT
    from train import checkpointing

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    ckpt = {"format": FORMAT, "variant": "authors", "normalization": "caffe", "model": {}, "step": 2}
    checkpointing.save(tmp_path / "a", ckpt)
    assert any(".checkpoint-latest.pt.tmp-" in p for p in synced)  # the copy itself, not only the folder
    assert torch.load(tmp_path / "a" / LATEST, weights_only=True)["step"] == 2

    def full(src, dst):
        Path(dst).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.shutil, "copyfile", full)
    with pytest.raises(OSError, match="No space left"):
        checkpointing.save(tmp_path / "a", {**ckpt, "step": 4})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "checkpoint-00000002.pt",
        "checkpoint-00000004.pt",
        LATEST,
    ]
    assert torch.load(tmp_path / "a" / LATEST, weights_only=True)["step"] == 2

    trainer = _trainer(_argv(shards, tmp_path / "run", 2, 11, "1e-6", "--no-val"))

    def torch_full_disk(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 455015744") from e

    monkeypatch.setattr(checkpointing, "save", torch_full_disk)
    with pytest.raises(TrainingError, match=r"cannot write a checkpoint in .*No space left on device.*no checkpoint"):
        trainer.save_checkpoint()


def test_non_finite_weights_are_never_saved(shards: Path, tmp_path: Path):
    """A step's loss comes from the weights before its update: the update itself can make them non-finite, and
    the checkpoint of that step must not be written as a "good" one."""
    trainer = _trainer(_argv(shards, tmp_path / "run", 2, 11, "1e-6", "--no-val"))
    with torch.no_grad():
        trainer.model.fc8.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="non-finite weights after step 0: stopping without saving"):
        trainer.save_checkpoint()
    assert not list((tmp_path / "run").glob("checkpoint-*.pt"))


def test_the_time_limit_is_checked_every_step(shards: Path, tmp_path: Path, monkeypatch):
    """It was read only at log steps: with --log-every 1000 a 3-second limit let a run go on for minutes. On a
    fake clock where each step takes a minute, a 1.5-minute limit ends the run right after step 2."""
    from types import SimpleNamespace

    from train import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real_step = Trainer.train_step

    def minute_step(self, *args):
        clock[0] += 60.0
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", minute_step)
    run = tmp_path / "run"
    argv = _argv(shards, run, 200, 11, "1e-6", "--no-val", "--log-every", "1000", "--ckpt-every", "0")
    assert train_main([*argv, "--time-limit", "1.5"]) == 0
    (row,) = _rows(run)
    assert row["step"] == 2 and row["elapsed_s"] == 120.0


def test_resuming_a_complete_run_changes_nothing(run_1step: Path, capsys):
    """It ran no step yet rewrote config.json and log.jsonl and added an empty event file."""
    before = {p.name: p.stat().st_mtime_ns for p in run_1step.iterdir()}
    assert train_main(["--out", str(run_1step), "--resume", "--no-progress"]) == 2
    assert "is complete (step 1 of --steps 1); pass a larger --steps" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run_1step.iterdir()} == before


def test_positions_of_older_checkpoints_with_leftover_pixels_resume(tmp_path: Path):
    """Checkpoints before the replay format hold the leftovers' pixels: they resume as before, their positions
    keep pixels until those rows are used, then switch to replays; every step matches the uninterrupted run."""
    from train.data import position_to_cpu

    for per_item, batch in ((44, 50), (88, 50), (22, 30), (66, 25)):
        ref = [b for b, _ in zip(ExampleBatcher(_ListLoader(per_item=per_item), batch), range(12), strict=False)]
        for cut in range(1, 8):
            old = position_to_cpu(ref[cut].position)
            if old["replay"] is None:
                continue
            # the old format: the leftovers themselves, no replay
            loader = _ListLoader(per_item=per_item)
            rows = ExampleBatcher(loader, batch, old)  # rebuild the carry the replay describes ...
            old = {"items": old["items"], "loader": old["loader"], "carry": rows.carry, "replay": None}
            resumed = ExampleBatcher(_ListLoader(per_item=per_item), batch, position_to_cpu(old))
            got = [b for b, _ in zip(resumed, range(12 - cut - 1), strict=False)]
            for a, b in zip(ref[cut + 1 :], got, strict=True):
                assert torch.equal(a.bbox, b.bbox), (per_item, batch, cut)
            for b_idx, b in enumerate(got[:-1]):  # ... and every position of the resumed run resumes exactly
                again = ExampleBatcher(_ListLoader(per_item=per_item), batch, position_to_cpu(b.position))
                nxt = next(iter(again))
                assert torch.equal(nxt.bbox, got[b_idx + 1].bbox), (per_item, batch, cut, b_idx)


def test_a_replay_past_a_skipped_batch_does_not_count_it_again(capsys):
    """Resuming pulls the leftovers' items again; a batch the loader failed among them was skipped (and logged)
    by the run before its checkpoint, so the resumed run must neither count nor print it as a new skip."""
    from pipeline.bad_samples import SampleDecodeError
    from train.data import position_to_cpu

    class Flaky(_ListLoader):
        def __iter__(self):
            for item in super().__iter__():
                if self.i == 3:  # the third item of every epoch fails to decode
                    raise SampleDecodeError("cannot read/decode sample key='k3'")
                yield item

    batches = [b for b, _ in zip(ExampleBatcher(Flaky(per_item=22), 60), range(4), strict=False)]
    pos = next(b.position for b in batches if (r := b.position["replay"]) and r["items"] < 3 <= b.position["items"])
    assert "skipped a loader batch" in capsys.readouterr().err  # the run before the checkpoint reported it
    resumed = ExampleBatcher(Flaky(per_item=22), 60, position_to_cpu(pos))
    assert resumed.skipped_items == 0 and "skipped a loader batch" not in capsys.readouterr().err
    later = [b for b, _ in zip(resumed, range(2), strict=False)]
    i = next(k for k, b in enumerate(batches) if b.position is pos)
    for a, b in zip(batches[i + 1 :], later, strict=False):
        assert torch.equal(a.bbox, b.bbox)
