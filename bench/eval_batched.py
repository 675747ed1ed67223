"""Multi-sequence tracking throughput: lockstep batches against one-by-one tracking (same sequences, process).

    python bench/eval_batched.py                   # CPU, small (what `make bench` runs)
    python bench/eval_batched.py --device cuda     # the lead's H100 run (goal: >= 15000 frames/s batched)

Frames are decoded (synthetic, OTB-like sizes) and uploaded to the device before timing, so the numbers are the
tracking rate of formats doc 2.10: crop + forward + box decode per frame, no I/O, no init. Each mode runs
``--repeats`` times after a warm-up, the modes interleaved; medians are reported. Modes: ``batched``
(evaluate.otb's stepper: `model.tracker.track_step`, one crop call per frame size and one forward pass per
lockstep batch) and ``one-by-one`` (batch 1, what a `GoturnTracker` per sequence does). Also reports how far
batched boxes are from one-by-one boxes. The last line is

    RESULT frames_per_s=<batched> frames/s ratio=<batched / one-by-one>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.lockstep import TrackJob, track_lockstep  # noqa: E402
from evaluate.metrics import tracking_fps  # noqa: E402
from evaluate.steppers import GoturnStepper, device_name  # noqa: E402
from model.devices import fp32_conv_math, resolve_device  # noqa: E402
from model.geometry import xywh_to_corners  # noqa: E402

# (H, W) of OTB frames, most common first (320x240, 640x480, 640x360, ...).
OTB_SIZES = [(240, 320), (480, 640), (360, 640), (240, 320), (480, 640), (576, 768), (352, 624), (400, 300)]


def make_jobs(n_seq: int, n_frames: int, device: torch.device, pool: int = 6, seed: int = 0) -> list[TrackJob]:
    """``n_seq`` sequences of ``n_frames`` device frames (a bright square drifting over noise), cycling
    through ``pool`` distinct frames per sequence to bound memory."""
    rng = np.random.default_rng(seed)
    jobs = []
    for k in range(n_seq):
        h, w = OTB_SIZES[k % len(OTB_SIZES)]
        frames = []
        for t in range(pool):
            f = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            x, y = w // 3 + 3 * t, h // 3 + 2 * t
            f[y : y + h // 5, x : x + w // 6] = (220, 180, 40)
            frames.append(torch.from_numpy(f).permute(2, 0, 1).contiguous().to(device))
        box = np.array([w // 3, h // 3, w // 6, h // 5], dtype=np.float64)
        jobs.append(TrackJob(f"seq{k}", [frames[t % pool] for t in range(n_frames)], xywh_to_corners(box)))
    return jobs


def build_net(weights: str | None, device: torch.device, dtype: torch.dtype):
    """Checkpoint weights, or Caffe-filler random weights with fc8 near "no motion" (boxes stay sane)."""
    if weights:
        from model.checkpoint import load_model

        net = load_model(weights, device)
    else:
        from model.net import GoturnNet

        torch.manual_seed(0)
        net = GoturnNet(device=device)
        with torch.no_grad():
            net.fc8.weight.mul_(0.02)
            net.fc8.bias.copy_(torch.tensor([2.5, 2.5, 7.5, 7.5], device=device))
    return net.to(dtype).eval()


def run_once(stepper, jobs: list[TrackJob], batch: int) -> tuple[float, float, list]:
    """One timed run: tracking frames/s (sum of updates / sum of step times), wall-clock frames/s, outputs."""
    n_updates = sum(len(j.frames) - 1 for j in jobs)
    t0 = time.perf_counter()
    outs = track_lockstep(stepper, jobs, batch_size=batch, workers=1)
    wall = n_updates / (time.perf_counter() - t0)
    return tracking_fps([o.times for o in outs]), wall, outs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--sequences", type=int, default=None, help="sequences (cpu 4, cuda 256)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (cpu 4, cuda 30)")
    p.add_argument("--batch", type=int, default=None, help="lockstep batch (default: all sequences)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per mode (cpu 2, cuda 3)")
    p.add_argument(
        "--one-by-one-sequences",
        type=int,
        default=None,
        help="sequences for the batch-1 baseline (default: all; the per-frame rate does not depend on it)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true", help="NHWC network (faster fp16 convolutions)")
    p.add_argument("--weights", default=None, help="checkpoint (default: random weights)")
    args = p.parse_args(argv)

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed 227x227 inputs: let cuDNN pick its fastest kernels
    n_seq = args.sequences or (256 if cuda else 4)
    n_frames = args.frames or (30 if cuda else 4)
    batch = args.batch or n_seq
    args.repeats = args.repeats or (3 if cuda else 2)
    dtype = getattr(torch, args.dtype)
    net = build_net(args.weights, dev, dtype)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)

    jobs = make_jobs(n_seq, n_frames, dev)
    print(
        f"device {device_name(dev)}, {n_seq} sequences x {n_frames} frames, batch {batch}, {args.dtype}"
        f"{', channels_last' if args.channels_last else ''}, "
        f"torch {torch.__version__}, {fp32_conv_math(dev)}"
    )

    base_jobs = jobs[: args.one_by_one_sequences] if args.one_by_one_sequences else jobs
    modes = {"batched": (GoturnStepper(net, dev), jobs, batch), "one_by_one": (GoturnStepper(net, dev), base_jobs, 1)}
    for stepper, js, b in modes.values():  # warm-up: allocator, cuDNN autotuning
        track_lockstep(stepper, js[: max(1, b)], batch_size=b, workers=1)
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    outs: dict[str, list] = {}
    for _ in range(args.repeats):  # modes interleaved, so a drifting machine load hits all of them alike
        for m, (stepper, js, b) in modes.items():
            fps, wall, outs[m] = run_once(stepper, js, b)
            runs[m].append((fps, wall))
    results = {m: statistics.median(r[0] for r in rs) for m, rs in runs.items()}
    labels = {
        "batched": f"batched (lockstep, batch {batch})",
        "one_by_one": f"one-by-one (batch 1, {len(base_jobs)} seq)",
    }
    for m in ("batched", "one_by_one"):
        if m in runs:
            wall = statistics.median(r[1] for r in runs[m])
            print(f"{labels[m]:<32}: {results[m]:10.1f} frames/s tracking, {wall:10.1f} wall")
    diff = max(
        float(np.abs(a.boxes - b.boxes).max()) for a, b in zip(outs["batched"], outs["one_by_one"], strict=False)
    )
    print(f"parity: batched vs one-by-one boxes, max |difference| = {diff:.3g} px")
    ratio = results["batched"] / results["one_by_one"]
    print(f"RESULT frames_per_s={results['batched']:.1f} frames/s ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
