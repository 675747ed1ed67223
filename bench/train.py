"""Benchmark the trainer: examples/s end to end (loader + batching + prefetch + step) against the bare step.

Both are measured in the same run on the same device with the same `train.loop.Trainer`:

- bare: ``Trainer.train_step`` on one uint8 batch already on the device (normalise, forward, summed L1,
  backward, Caffe SGD, step LR), i.e. the speed the data path must keep up with;
- end to end: ``Trainer.fit`` exactly as ``python -m train`` runs it (DALI loader -> 50-example re-chunking
with
  carry-over -> background prefetch / host-to-device copy -> step), read back from its log.jsonl windows.

Each figure is the median over windows of ``--window`` steps (device synchronised at window ends; the first
windows are warm-up and dropped); half the bare windows run before the end-to-end run and half after it.
Without ``--shards`` photo-like 640x480 JPEG shards are generated in a temporary folder (ImageNet-style stills
and ALOV-style pairs, 1:1). ``--loader synthetic`` replaces DALI with pre-made device-resident batches, which
isolates the trainer's own overhead (for machines without DALI).

Last line: ``RESULT examples_per_s=<end to end> examples/s ratio=<end to end over bare step>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.devices import fp32_conv_math  # noqa: E402
from model.net import pair_runs  # noqa: E402
from train import distributed  # noqa: E402
from train import loop as train_loop  # noqa: E402
from train.config import PRESETS, TrainConfig  # noqa: E402


def make_shards(out: Path, n: int, unique: int = 96) -> None:
    """``n`` stills + ``n`` pairs of photo-like 640x480 JPEGs in shard format v1 (tests/shardkit).

    Only ``unique`` distinct samples per source are encoded and then repeated under new keys: JPEG encoding in
    Python would otherwise dominate a short GPU session, and decoding costs the same either way.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from shardkit import Sample, synthetic_samples, write_shards

    for source, seed in (("imagenet", 1), ("alov", 2)):
        base = synthetic_samples(min(n, unique), source, seed=seed)
        samples = [
            Sample(f"{b.key}_{i // len(base):04d}", b.curr, b.boxes, prev=b.prev)
            for i, b in zip(range(n), itertools.cycle(base))
        ]
        write_shards(out, source, samples, per_tar=256)


def pair_targets(n: int, per_pair: int, g: torch.Generator) -> torch.Tensor:
    """``n`` target crops laid out as the loader lays them: each pair's ``per_pair`` examples share one crop."""
    distinct = torch.randint(0, 256, (-(-n // per_pair), 3, 227, 227), dtype=torch.uint8, generator=g)
    return distinct.repeat_interleave(per_pair, dim=0)[:n]


class SyntheticLoader:
    """GoturnLoader stand-in: a few pre-made batches, already where the DALI GPU backend would put them."""

    def __init__(self, device: torch.device, pairs: int, k: int, n_distinct: int = 4):
        n = pairs * (k + 1)
        self.k = k  # the batch layout ExampleBatcher derives the shared target crops from, as with GoturnLoader
        g = torch.Generator().manual_seed(0)
        self.batches = [
            {
                "target": pair_targets(n, k + 1, g).to(device),
                "search": torch.randint(0, 256, (n, 3, 227, 227), dtype=torch.uint8, generator=g).to(device),
                "bbox": (torch.rand(n, 4, generator=g) * 10).to(device),
            }
            for _ in range(n_distinct)
        ]
        self.i = 0

    def __len__(self) -> int:
        return 1_000_000

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, s: dict) -> None:
        self.i = s["i"]

    def __iter__(self):
        while True:
            b = self.batches[self.i % len(self.batches)]
            self.i += 1
            yield {k: v.clone() for k, v in b.items()}  # a fresh tensor per batch, as a real loader hands out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(trainer: train_loop.Trainer, batch: int, windows: int, window: int, warmup: int) -> list[float]:
    """examples/s per window of ``Trainer.train_step`` on a device-resident uint8 batch."""
    dev = trainer.device
    g = torch.Generator().manual_seed(1)
    t = pair_targets(batch, trainer.cfg.k + 1, g).to(dev)
    s = torch.randint(0, 256, (batch, 3, 227, 227), dtype=torch.uint8, generator=g).to(dev)
    bb = (torch.rand(batch, 4, generator=g) * 10).to(dev)
    runs = tuple(x.to(dev) for x in pair_runs(batch, 0, trainer.cfg.k + 1))  # as ExampleBatcher gives them
    for _ in range(warmup):
        trainer.train_step(t, s, bb, runs)
    sync(dev)
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(window):
            loss = trainer.train_step(t, s, bb, runs)
        loss.item()  # the same per-window sync the trainer's log step does
        rates.append(window * batch / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--batch-examples", type=int, default=50)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--shards", help="shard folder (default: generated photo-like shards)")
    ap.add_argument("--samples", type=int, default=None, help="generated samples per source")
    ap.add_argument("--loader", choices=["dali", "synthetic"], default="dali")
    ap.add_argument("--loader-pairs", type=int, default=None, help="pairs per loader batch")
    ap.add_argument("--loader-threads", type=int, default=0)
    ap.add_argument("--window", type=int, default=None, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=None, help="timed windows (after 2 warm-up windows)")
    ap.add_argument("--train-backbone", action="store_true")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    window = a.window or (50 if gpu else 2)
    windows = a.windows or (8 if gpu else 4)
    pairs = a.loader_pairs or (32 if gpu else 8)
    samples = a.samples or (768 if gpu else 48)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        shards = a.shards
        if shards is None and a.loader == "dali":
            t0 = time.perf_counter()
            make_shards(tmp / "shards", samples)
            print(f"generated {samples} stills + {samples} pairs (640x480) in {time.perf_counter() - t0:.0f} s")
            shards = str(tmp / "shards")
        total_steps = window * (windows + 2)
        cfg = TrainConfig(**{k: v for k, v in PRESETS["authors"].items() if k in TrainConfig.__dataclass_fields__})
        cfg.shards = shards or ""
        cfg.out = str(tmp / "run")
        cfg.steps = total_steps
        cfg.batch_examples = a.batch_examples
        cfg.device = device
        cfg.loader_device = "gpu" if gpu else "cpu"
        cfg.amp = a.amp
        cfg.train_backbone = a.train_backbone
        cfg.log_every = window
        cfg.ckpt_every = 0
        cfg.val_every = 0
        cfg.loader_pairs = pairs
        cfg.loader_threads = a.loader_threads
        cfg.compile = a.compile
        cfg.progress = False
        cfg.final_checkpoint = False
        if a.loader == "synthetic":
            train_loop.build_loader = lambda shards, split, c, ctx, seed: SyntheticLoader(
                ctx.device, c.loader_pairs, c.k
            )
        Path(cfg.out).mkdir(parents=True)
        ctx = distributed.setup(device)
        trainer = train_loop.Trainer(cfg, ctx)
        name = torch.cuda.get_device_name(ctx.device) if gpu else f"CPU x{torch.get_num_threads()} threads"
        print(
            f"device {name}; batch {a.batch_examples}, amp {a.amp}, loader {a.loader} ({cfg.loader_device}), "
            f"{pairs} pairs x {cfg.k + 1} examples per loader batch; windows of {window} steps; "
            f"{fp32_conv_math(ctx.device)}"
        )

        # Bare windows before and after the end-to-end run, so a drift of the machine's speed hits both alike.
        bare = bare_step(trainer, a.batch_examples, (windows + 1) // 2, window, warmup=2 * window)
        trainer.step = 0
        summary = trainer.fit()
        bare += bare_step(trainer, a.batch_examples, windows // 2, window, warmup=1)
        rows = [json.loads(ln) for ln in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
        e2e = [r["examples_per_s"] for r in rows[2:]]  # drop 2 warm-up windows (pipeline build, first batches)
        assert summary["step"] == total_steps, summary

    bare_m, e2e_m = statistics.median(bare), statistics.median(e2e)
    print(f"{'':12} {'median ex/s':>12} {'min':>10} {'max':>10}  windows")
    print(f"{'bare step':12} {bare_m:12.1f} {min(bare):10.1f} {max(bare):10.1f}  {len(bare)}")
    print(f"{'end to end':12} {e2e_m:12.1f} {min(e2e):10.1f} {max(e2e):10.1f}  {len(e2e)}")
    print(f"RESULT examples_per_s={e2e_m:.1f} examples/s ratio={e2e_m / bare_m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
