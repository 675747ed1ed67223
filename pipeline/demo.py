"""The embedded end-to-end demo (`make demo`): sample data -> shards -> training -> OTB-style evaluation.

It proves the whole system works on a fresh machine and that training does something: the report compares the
trained tracker with the same network before training and with the "stay at the first box" baseline on held-out
generated sequences (and on the real OTB ``Man`` sequence when ``../shared/data`` is beside the checkout).

    python -m pipeline.demo [--size medium|small] [--train-minutes 8] [--steps N] [--device auto|cpu|cuda]
                            [--data DIR] [--shards DIR] [--run DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REAL_MAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "otb" / "Man"
TRACKERS = ("GOTURN-trained", "GOTURN-untrained", "stay-at-first-box")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["small", "medium"], default="medium", help="sample data size")
    p.add_argument("--train-minutes", type=float, default=None, help="training time limit (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the sample preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data", type=Path, default=Path("data/sample"))
    p.add_argument("--shards", type=Path, default=Path("shards/sample"))
    p.add_argument("--run", type=Path, default=Path("runs/sample"))
    p.add_argument("--out", type=Path, default=Path("reports/sample"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-frames", type=int, default=None, help="evaluate only the first K frames (smoke tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def evaluate_all(
    otb_root: Path, out: Path, trained: Path, untrained: Path, device: str, max_frames: int | None, quiet: bool
) -> dict:
    """Track with both networks, write the baseline, then score the three together (one report, one plot)."""
    from evaluate import otb
    from evaluate.otb_data import find_sequences

    if out.exists():
        shutil.rmtree(out)
    common = ["--otb-root", str(otb_root), "--out", str(out), "--device", device, "--quiet"]
    if max_frames:
        common += ["--max-frames", str(max_frames)]
    for name, weights in (("GOTURN-trained", trained), ("GOTURN-untrained", untrained)):
        otb.main([*common, "--weights", str(weights), "--name", name])
    otb.write_first_box_baseline(find_sequences(otb_root).sequences, out / "stay-at-first-box", max_frames=max_frames)
    score = [a for a in common if a != "--quiet"] if not quiet else common
    otb.main([*score, "--results", str(out)])
    return json.loads((out / "report.json").read_text())


def table(report: dict, title: str) -> str:
    rows = [f"{title}", "| tracker | success AUC | precision@20 | frames |", "|---|---|---|---|"]
    for name in TRACKERS:
        o = report["trackers"][name]["overall"]
        rows.append(f"| {name} | {o['success_auc']:.3f} | {o['precision_20']:.3f} | {o['frames']} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device

    t = _stage(f"1/5 sample data ({args.size}) in {args.data}")
    from pipeline.make_sample_data import ensure_sample_data, shard_sources

    ensure_sample_data(args.data, seed=args.seed, size=args.size, progress=not args.quiet)
    _done(t)

    t = _stage(f"2/5 shards in {args.shards}")
    from pipeline import build_shards

    bargv = [f"--{k.replace('_', '-')}={v}" for k, v in shard_sources(args.data).items()]
    bargv += ["--out", str(args.shards), "--seed", str(args.seed)] + (["--no-progress"] if args.quiet else [])
    rc = build_shards.main(bargv)
    if rc:
        return rc
    _done(t)

    length = f"{args.steps} steps" if args.steps is not None else "the sample preset: 8-10 min on 2 CPU cores"
    t = _stage(f"3/5 training on {device} ({length}) into {args.run}")
    from train import cli as train_cli

    targv = ["--preset", "sample", "--shards", str(args.shards), "--out", str(args.run), "--overwrite"]
    targv += ["--device", device, "--seed", str(args.seed)]
    if args.train_minutes is not None:
        targv += ["--time-limit", str(args.train_minutes)]
    if args.steps is not None:
        targv += ["--steps", str(args.steps)]
    if args.quiet:
        targv += ["--no-progress"]
    rc = train_cli.main(targv)
    if rc:
        return rc
    trained = args.run / "checkpoint-latest.pt"
    untrained = args.run / "initial.pt"  # the trainer's weights before step 1
    _done(t)

    t = _stage(f"4/5 evaluation into {args.out}")
    reports = {"held-out generated sequences": evaluate_all(
        args.data / "otb", args.out / "heldout", trained, untrained, device, args.max_frames, args.quiet
    )}  # fmt: skip
    if REAL_MAN.is_dir():
        real_root = args.out / "_otb_real"
        real_root.mkdir(parents=True, exist_ok=True)
        link = real_root / "Man"
        if not link.exists():
            link.symlink_to(REAL_MAN, target_is_directory=True)
        reports["real OTB sequence Man"] = evaluate_all(
            real_root, args.out / "real-otb", trained, untrained, device, args.max_frames, args.quiet
        )
    _done(t)

    t = _stage("5/5 GIF of one tracked held-out sequence")
    from evaluate import track
    from evaluate.otb_data import find_sequences

    seq = find_sequences(args.data / "otb").sequences[0]
    gif_args = ["--weights", str(trained), "--sequence", str(args.data / "otb" / seq.name)]
    gif_args += ["--out", str(args.out / "gif"), "--gif", "--device", device] + (["--quiet"] if args.quiet else [])
    if args.max_frames:
        gif_args += ["--max-frames", str(args.max_frames)]
    track.main(gif_args)
    _done(t)

    summary = {title: {n: r["trackers"][n]["overall"] for n in TRACKERS} for title, r in reports.items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = "\n\n".join(table(r, f"**{title}**") for title, r in reports.items())
    (args.out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nreport: {args.out.resolve()} (plots, report.json and report.md per evaluation, gif/)")
    print(f"total demo time: {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
