"""``python -m train``: argument parsing, preset resolution and early, readable errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from train import DDP_SEMANTICS, solver
from train.config import FIELD_NAMES, PRESETS, TrainConfig

_S = PRESETS["sample"]
_CONVS = "trained" if _S["train_backbone"] else "frozen"
_VAL = f"validation every {_S['val_every']} steps"
EPILOG = f"""presets:
  sample   (default without --shards) the embedded demo: shards/sample -> runs/sample on the CPU, at most
           {_S["steps"]} steps or {_S["time_limit"]:g} minutes, lr {_S["lr"]:g}, convs {_CONVS}, {_VAL}
  authors  (default with --shards) the paper: 450k steps of 50 examples, base lr 1e-6 (FC x10/x20), momentum
           0.9, weight decay 5e-4 on weights, lr x0.1 every 100k steps, convs frozen
  explicit options override the preset's values. --resume continues with the run's saved settings instead
  (from its checkpoint; --shards may be left out): only the options given override them.

multi-GPU / multi-process:
{DDP_SEMANTICS}
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train GOTURN with the authors' recipe (Caffe SGD, summed L1, 50-example batches).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="named defaults (see below)")
    a("--shards", help="training shard folder (shard format v1, from python -m pipeline.build_shards)")
    a(
        "--val-shards",
        help="shard folder holding the ALOV val split (default: --shards when it has val shards)",
    )
    a("--no-val", action="store_true", help="never validate")
    a("--out", help="run directory: checkpoints, log.jsonl, TensorBoard events")
    a("--init", help="initial weights: a .caffemodel (via model.import_caffe) or a goturn checkpoint")
    a(
        "--variant",
        choices=["authors", "opencv"],
        help="network variant (default authors; opencv to fine-tune its model: its FC head, convs frozen unless "
        "--train-backbone; targets in its 227-pixel patch units, on the authors' crops, which are black outside "
        "the image where OpenCV repeats the edge pixels)",
    )
    a(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint-latest.pt (model, solver, RNG, data) with the run's saved settings; "
        "options given override them",
    )
    a("--overwrite", action="store_true", default=None, help="start afresh even if OUT holds a run")
    a("--steps", type=int, help="total solver steps (authors: 450000)")
    a("--batch-examples", type=int, help="examples per step and per process (authors: 50)")
    a(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="training device (default: cuda if any)",
    )
    a(
        "--loader-device",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="DALI backend (default: as --device)",
    )
    a("--amp", choices=["none", "bf16"], help="bf16 autocast for the forward pass (default none)")
    a(
        "--train-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the conv towers too",
    )
    a("--seed", type=int, help="seed of weights, dropout and augmentation (default 0)")
    a("--conv-init", choices=["caffe", "random-features"], help="conv init without --init (model/net.py)")
    a("--optimizer", choices=solver.OPTIMIZERS, help="caffe-sgd (authors, default) or adam (sample preset)")
    a("--lr", type=float, help="Caffe base_lr (authors: 1e-6; FC weights x10, biases x20; logged as lr)")
    a("--lr-step", type=int, help="steps between lr x gamma (authors: 100000)")
    a("--gamma", type=float, help="lr decay factor at each --lr-step (authors: 0.1)")
    a("--momentum", type=float, help="(authors: 0.9)")
    a("--weight-decay", type=float, help="on weights only (authors: 5e-4)")
    a("--log-every", type=int, help="steps between log.jsonl rows / TensorBoard points")
    a("--ckpt-every", type=int, help="steps between checkpoints (always one at the end)")
    a("--keep-last", type=int, help="step-numbered checkpoints to keep (0 = all)")
    a("--val-every", type=int, help="steps between validations (0 = only at the end)")
    a("--val-batches", type=int, help="loader batches per validation and process (0 = whole val split)")
    a("--time-limit", type=float, help="stop (with a checkpoint) after this many minutes (0 = none)")
    a("--loader-pairs", type=int, help="pairs per loader batch (each gives 1 + k examples)")
    a("--k", type=int, help="shifted examples per pair (authors: 10)")
    a(
        "--sampling",
        choices=["authors", "epoch"],
        help="training pairs: authors = a uniform image / video, then a uniform object / pair, with replacement "
        "(train.cpp; default); epoch = every shard sample once per epoch",
    )
    a("--loader-threads", type=int, help="DALI CPU threads (default: the loader's)")
    a("--prefetch", type=int, help="batches prepared ahead of the step (default 2)")
    a("--compile", action="store_true", default=None, help="torch.compile the network")
    a("--no-progress", action="store_true", help="no tqdm bar: a line per logged step instead (batch jobs' logs)")
    return p


def _has_split(shards: Path, split: str) -> bool:
    return any(shards.glob(f"*-{split}-*.tar"))


def _saved_settings(parser: argparse.ArgumentParser, latest: Path) -> dict:
    """The configuration a run stored in its checkpoint (the one its state belongs to), read without loading the
    tensors (mmap), so that --resume continues the run as it was started."""
    from model.checkpoint import torch_load

    try:
        ckpt = torch_load(latest, map_location="cpu", mmap=True)
    except Exception as e:  # noqa: BLE001 - unreadable / foreign file: say which and why, no traceback
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        parser.error(f"--resume: {latest} is not a readable checkpoint of python -m train ({why})")
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(saved, dict):
        parser.error(f"--resume: {latest} holds no training settings (not a checkpoint of python -m train)")
    return {k: v for k, v in saved.items() if k in FIELD_NAMES}


def _saved_step(latest: Path) -> int:
    """The step a run's latest checkpoint holds (read without loading the tensors)."""
    from model.checkpoint import torch_load

    return int(torch_load(latest, map_location="cpu", mmap=True).get("step", 0))


# Not reported as overridden on resume: set per invocation, or (--init) ignored by a resume, as the trainer says.
_UNLISTED = ("out", "resume", "overwrite", "progress", "init")


def resolve(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` into a checked `TrainConfig`; any problem exits via ``parser.error`` (no traceback).

    A new run starts from its preset; ``--resume`` starts from the run's saved settings (its checkpoint's
    ``config``), so it keeps the schedule, data and solver it was started with, and only options given on the
    command line change them (listed on stderr). ``--device auto`` / ``--loader-device auto`` count as not given.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues a run, --overwrite starts one afresh: pass one of them")
    if args.no_val and args.val_shards:
        parser.error("--no-val and --val-shards contradict each other: pass one of them")
    from train.checkpointing import LATEST  # imports torch: only once the arguments parse

    preset = args.preset or ("authors" if args.shards else "sample")
    values = dict(PRESETS[preset])
    values["preset"] = preset
    given = {
        name: v
        for name, v in vars(args).items()
        if name in FIELD_NAMES and v is not None and name not in ("device", "loader_device", "resume")
    }
    if args.out:
        existing = next((p for p in (Path(args.out), *Path(args.out).parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            parser.error(f"--out {args.out}: {existing} is a file, not a directory")
    saved = None
    if args.resume:
        out = args.out or values.get("out")
        if not out:
            parser.error("--out is required with --resume (the run directory)")
        latest = Path(out) / LATEST
        if not latest.is_file():
            parser.error(f"--resume: {latest} does not exist (nothing to resume; drop --resume to start)")
        saved = _saved_settings(parser, latest)
        if args.preset and args.preset != saved.get("preset"):
            parser.error(
                f"--preset {args.preset}: the run in {out} was started with the {saved.get('preset')} preset and "
                "--resume continues with its saved settings; give only the options to change"
            )
        values = {**saved, "out": str(out)}
    values.update(given)
    values["progress"] = not args.no_progress
    values["resume"] = args.resume
    if args.resume:
        values["overwrite"] = False
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in FIELD_NAMES})

    import torch

    # ---- device -------------------------------------------------------------------------------------------
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if args.device != "auto":
        cfg.device = args.device
    elif saved is None:
        cfg.device = "cuda" if cuda else "cpu"
    elif cfg.device == "cuda" and not cuda:
        parser.error("--resume: the run trained on --device cuda and no CUDA device is available; pass --device cpu")
    if args.loader_device == "gpu" and cfg.device != "cuda":
        parser.error("--loader-device gpu needs --device cuda")
    if args.loader_device != "auto":
        cfg.loader_device = args.loader_device
    elif saved is None or (cfg.loader_device == "gpu" and cfg.device != "cuda"):
        cfg.loader_device = "gpu" if cfg.device == "cuda" else "cpu"
    if cfg.amp == "bf16" and cfg.device == "cuda" and not torch.cuda.is_bf16_supported():
        parser.error("--amp bf16: this GPU does not support bfloat16")

    # ---- data ---------------------------------------------------------------------------------------------
    if not cfg.shards:
        parser.error("--shards is required")
    shards = Path(cfg.shards)
    if not shards.is_dir():
        if args.resume and not args.shards:
            hint = " (the run's saved --shards; pass --shards where the folder is now)"
        else:
            hint = " (build it with: python -m pipeline.build_shards)" if preset == "sample" else ""
        parser.error(f"shard folder {shards} {'is a file' if shards.exists() else 'does not exist'}{hint}")
    if not _has_split(shards, "train"):
        parser.error(f"{shards} holds no training shards (*-train-*.tar)")
    if args.no_val:
        cfg.val_shards = None
    elif args.val_shards:
        if not Path(args.val_shards).is_dir() or not _has_split(Path(args.val_shards), "val"):
            parser.error(f"--val-shards {args.val_shards}: no *-val-*.tar shards there")
    elif saved is None or saved.get("val_shards") == saved.get("shards"):  # the default: --shards' val split
        cfg.val_shards = str(shards) if _has_split(shards, "val") else None
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and not cfg.val_shards and not args.no_val:
        print(f"[train] warning: no validation: {shards} has no val split (pass --val-shards DIR)", file=sys.stderr)
    sources = {s for s in ("imagenet", "alov") if any(shards.glob(f"{s}-train-*.tar"))}
    if cfg.loader_pairs % max(len(sources), 1):
        parser.error(f"--loader-pairs {cfg.loader_pairs} must be a multiple of the {len(sources)} sources in {shards}")
    if main_rank and len(sources) == 1:
        (only,) = sources
        print(
            f"[train] warning: {shards} holds {only} training shards only: no 1:1 ImageNet / ALOV mix", file=sys.stderr
        )

    # ---- numbers ------------------------------------------------------------------------------------------
    for name in ("steps", "batch_examples", "log_every", "loader_pairs", "lr_step", "prefetch"):
        if getattr(cfg, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    from pipeline.augment_graph import max_k

    if cfg.k > max_k(2):
        parser.error(f"--k must be <= {max_k(2)} (the DALI graph stacks 2 x (k + 1) crops per batch), got {cfg.k}")
    for name in ("ckpt_every", "keep_last", "val_every", "val_batches", "k", "seed", "loader_threads"):
        if getattr(cfg, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    reals = (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.gamma, cfg.time_limit)
    if not all(math.isfinite(v) for v in reals):  # nan passes every comparison below
        parser.error("--lr, --momentum, --weight-decay, --gamma and --time-limit must be finite numbers")
    if cfg.lr * 20 > 3.4e38:  # the FC biases' rate (x20) as float32: torch would fail with an overflow traceback
        parser.error(f"--lr {cfg.lr:g}: the FC biases' rate (x20) overflows float32 (the authors' base rate is 1e-6)")
    if cfg.lr <= 0 or cfg.momentum < 0 or cfg.weight_decay < 0 or not 0 < cfg.gamma <= 1 or cfg.time_limit < 0:
        parser.error("--lr must be > 0, --momentum/--weight-decay/--time-limit >= 0, 0 < --gamma <= 1")
    if args.momentum is not None and cfg.optimizer == "adam":
        parser.error("--momentum applies to --optimizer caffe-sgd; Adam keeps its own moment estimates")

    # ---- run directory ------------------------------------------------------------------------------------
    if not cfg.out:
        parser.error("--out is required with --shards (the run directory)")
    out = Path(cfg.out)
    if cfg.init and not cfg.resume and not Path(cfg.init).is_file():  # a resume ignores --init
        parser.error(f"--init {cfg.init}: {'not a file' if Path(cfg.init).exists() else 'no such file'}")
    if not cfg.resume and (out / LATEST).exists() and not cfg.overwrite:
        parser.error(f"{out} already holds a run: pass --resume to continue it or --overwrite to start afresh")
    # Rank 0 only: under torchrun it writes config.json at once, which a slower rank would take for a leftover.
    left = sorted(p.name for pat in RUN_FILES for p in out.glob(pat)) if out.is_dir() and main_rank else []
    if not cfg.resume and left and not cfg.overwrite:  # e.g. a run that stopped before its first checkpoint
        parser.error(
            f"{out} holds files of an earlier run ({', '.join(left[:4])}{', ...' if len(left) > 4 else ''}) but no "
            "checkpoint to resume: pass --overwrite to start afresh there (a new run would append to its log)"
        )
    if saved is not None and int(os.environ.get("RANK", "0")) == 0:
        new = cfg.to_dict()
        changed = [
            f"--{k.replace('_', '-')} {saved[k]} -> {new[k]}"
            for k in saved
            if k not in _UNLISTED and saved[k] != new[k]
        ]
        if changed:
            print(f"[train] --resume: the run's saved settings, overridden: {', '.join(changed)}", file=sys.stderr)
    return cfg


RUN_FILES = ("checkpoint-*.pt", "log.jsonl", "events.out.tfevents.*", "config.json")  # what a run writes


def forget_unstarted_run(out: Path) -> None:
    """A run that failed before writing anything but its config.json (a wrong --init, unusable shards) leaves
    nothing behind, so the corrected command starts without --overwrite."""
    from train.loop import INITIAL

    if [p.name for pat in RUN_FILES for p in out.glob(pat)] == ["config.json"] and not (out / INITIAL).exists():
        (out / "config.json").unlink()


def clear_run_dir(out: Path) -> None:
    """--overwrite: remove what a previous run wrote (only the trainer's own files)."""
    if not out.is_dir():
        return
    from train.checkpointing import remove_stale_temps

    for pattern in RUN_FILES:
        for f in out.glob(pattern):
            f.unlink()
    remove_stale_temps(out)  # what interrupted saves left behind


def main(argv: list[str] | None = None) -> int:
    cfg = resolve(argv)
    from train.checkpointing import LATEST
    from train.loop import TrainingError, run

    out = Path(cfg.out)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if cfg.resume:
        done = _saved_step(out / LATEST)
        if done >= cfg.steps:  # nothing to train: leave the run's files as they are
            print(
                f"error: the run in {out} is complete (step {done} of --steps {cfg.steps}); pass a larger --steps "
                "to train on",
                file=sys.stderr,
            )
            return 2
    if is_main:
        try:
            if cfg.overwrite and not cfg.resume:
                clear_run_dir(out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        except OSError as e:
            print(f"error: --out {out}: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        summary = run(cfg)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        if is_main and not cfg.resume:
            forget_unstarted_run(out)
        return 1
    if is_main:
        first = summary["first_loss"]
        last = summary["last_loss"]
        losses = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no step run"
        if "val_loss" in summary:
            losses += f"; val loss {summary['val_loss']:.3f}, mean IoU {summary['val_mean_iou']:.3f}"
        print(
            f"[train] {summary['stop_reason']}: step {summary['step']} ({losses}) "
            f"in {summary['elapsed_s']:.0f} s; "
            f"checkpoint {summary['checkpoint']}",
            file=sys.stderr,
        )
    if summary["stop_reason"] == "interrupted":  # like a process the signal ended: `train && evaluate` stops
        return 128 + (summary["signal"] or signal.SIGTERM)
    return 0
