"""Single-stream tracking speed of `model.tracker.GoturnTracker`: frames/s end to end.

    python bench/track.py                              # CPU, 2 threads (goal >= 20 frames/s)
    python bench/track.py --device cuda                # the lead's H100 run (goal >= 1500 frames/s)

Frames come from the real OTB Man sequence when present (../shared/data/otb/Man, or --sequence DIR), else from
generated 241x193 frames; the sequence is looped to ``--frames`` frames. Rows:

- ``decoded``: decoded RGB frames in host memory in, one ``update()`` per frame, the box back on the host after
  every frame (upload, crops, net, decode, box download): the number that counts (RESULT line);
- ``+ JPEG decode``: the same with each frame decoded by PIL inside the loop (only with real JPEGs);
- ``sequence``: ``track_sequence`` (CUDA graph path: boxes stay on the GPU until the end of the sequence);
- ``net only``: the bare forward pass at batch 1 (reference).

Defaults are the fast configurations: on CUDA the CUDA-graph path, the towers on two streams and fp16 (the
parity tests check fp32: ``--dtype fp32``); on CPU fp32 with channels_last conv weights. ``--no-cuda-graph``,
``--serial-towers`` and ``--channels-last`` / ``--no-channels-last`` switch them. Random weights (Caffe fillers,
fc8 set near the no-motion output so boxes stay sane) unless ``--weights``. The last line is

    RESULT fps=<decoded frames/s> frames/s ratio=n/a
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.checkpoint import load_model  # noqa: E402
from model.devices import fp32_conv_math  # noqa: E402
from model.net import GoturnNet  # noqa: E402
from model.tracker import GoturnTracker  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def find_sequence(arg: str | None) -> Path | None:
    candidates = [Path(arg)] if arg else [REPO.parent / "shared/data/otb/Man", REPO / "data/sample/otb/Man"]
    for c in candidates:
        if (c / "img").is_dir() and any((c / "img").glob("*.jpg")):
            return c
    if arg:
        raise SystemExit(f"no img/*.jpg under {arg}")
    return None


def load_frames(seq: Path | None) -> tuple[list[Path], list[np.ndarray], tuple[float, ...]]:
    """(jpeg paths, decoded RGB frames, initial 0-based xywh box)."""
    if seq is None:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 200, (193, 241, 3), dtype=np.uint8)
        frames = [np.roll(base, (i % 20) - 10, axis=1) for i in range(40)]
        return [], frames, (68.0, 47.0, 26.0, 39.0)
    paths = sorted((seq / "img").glob("*.jpg"))
    frames = [np.array(Image.open(p).convert("RGB")) for p in paths]
    gt = np.loadtxt(seq / "groundtruth_rect.txt", delimiter=",")[0]
    return paths, frames, (gt[0] - 1, gt[1] - 1, gt[2], gt[3])


def build_net(weights: str | None, device: torch.device) -> GoturnNet:
    if weights:
        return load_model(weights, device)
    torch.manual_seed(0)
    net = GoturnNet("authors")
    with torch.no_grad():
        net.fc8.weight.mul_(0.01)
        net.fc8.bias.copy_(torch.tensor([2.5, 2.5, 7.5, 7.5]))
    return net.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(fn, n: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn(n)
    sync(device)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--weights", help="checkpoint or .caffemodel (default: random weights)")
    ap.add_argument("--sequence", help="OTB-style folder with img/*.jpg and groundtruth_rect.txt")
    ap.add_argument("--frames", type=int, help="frames per timed run (default 100 on CPU, 3000 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="network precision (default fp16 on CUDA, else fp32)")
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--serial-towers", action="store_true", help="CUDA: run the two towers one after the other")
    ap.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="conv weight memory format (default: GoturnTracker's, on for CPU only)",
    )
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    n = args.frames or (3000 if device.type == "cuda" else 100)
    args.dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    seq = find_sequence(args.sequence)
    paths, frames, init = load_frames(seq)
    net = build_net(args.weights, device)
    net.parallel_towers = not args.serial_towers
    graph = device.type == "cuda" and not args.no_cuda_graph
    tracker = GoturnTracker(net, device, cuda_graph=graph, dtype=DTYPES[args.dtype], channels_last=args.channels_last)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    cl = tracker.net.target.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}{threads}; frames {'OTB ' + seq.name if seq else 'generated'} "
        f"{frames[0].shape[1]}x{frames[0].shape[0]}; {n} frames per run; dtype {args.dtype}; "
        f"cuda graph {graph}; channels_last {cl}; "
        f"towers on two streams {device.type == 'cuda' and net.parallel_towers}; {fp32_conv_math(device)}"
    )

    def run_decoded(k: int) -> None:
        tracker.init(frames[0], init)
        for i in range(1, k + 1):
            tracker.update(frames[i % len(frames)])

    def run_jpeg(k: int) -> None:
        tracker.init(frames[0], init)
        for i in range(1, k + 1):
            tracker.update(np.array(Image.open(paths[i % len(paths)]).convert("RGB")))

    def run_sequence(k: int) -> None:
        tracker.track_sequence((frames[i % len(frames)] for i in range(k + 1)), init)

    target = torch.zeros(1, 3, 227, 227, device=device, dtype=DTYPES[args.dtype])

    def run_net(k: int) -> None:
        with torch.inference_mode():
            for _ in range(k):
                tracker.net(target, target)

    rows = [("decoded frames in, boxes out", run_decoded)]
    if paths:
        rows.append(("+ JPEG decode (PIL) in the loop", run_jpeg))
    rows += [("sequence (track_sequence)", run_sequence), ("net only, batch 1", run_net)]
    results = {}
    for label, fn in rows:
        fn(min(20, n))  # warm-up: allocator, cuDNN autotune, graph capture
        fps = [time_loop(fn, n, device) for _ in range(args.repeats)]
        results[label] = statistics.median(fps)
        print(f"  {label:34s} {results[label]:9.1f} frames/s  ({1000 / results[label]:.3f} ms/frame)")
    print(f"  boxes sane: last box {np.round(tracker.box, 2).tolist()}")
    print(f"RESULT fps={results['decoded frames in, boxes out']:.1f} frames/s ratio=n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
