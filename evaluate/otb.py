"""One-pass OTB evaluation: track (one sequence at a time, or N in lockstep batches), write got10k-layout results,
score, plot, report.

    python -m evaluate.otb --weights FILE --otb-root DIR [--version 2015|2013|tb50] [--sequences A,B]
        --out DIR [--device auto|cpu|cuda] [--batch-sequences N] [--name TRACKER]
        [--protocol got10k|pysot|otb] [--results DIR]
    python -m evaluate.otb            # the sample run's latest checkpoint on the sample OTB sequences

Outputs in ``--out``: ``<tracker>/<Seq>.txt`` (1-based x,y,w,h), ``<tracker>/times/<Seq>_time.txt``,
``report.json``, ``report.md``, ``success_plot.png``, ``precision_plot.png``. ``--results DIR`` scores the
result folders of any trackers (subfolders of DIR) without running a model (add ``--weights`` to run ours
too).

Conventions: OTB ground truth is 1-based; the tracker is initialised with 0-based corners
(``xywh_to_corners(gt, one_based=True)``) and its boxes are written back 1-based, as the authors do. Under
``--protocol pysot`` the tracker is initialised with, and the first row records, ``GT + (0.5, 0.5)``
exactly like pysot's ``tools/test.py``, and Tiger1 starts at frame 6; ``--protocol otb`` scores as the OTB
Matlab toolkit does (Tiger1 from frame 6 too; see `evaluate.metrics`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluate import metrics as M
from evaluate.lockstep import BatchStepper, TrackJob, TrackOutput, track_lockstep
from evaluate.otb_data import (
    INIT_OMIT,
    INIT_OMIT_PROTOCOLS,
    VERSIONS,
    Discovery,
    FrameReadError,
    OTBSequence,
    find_sequences,
    frame_size,
    read_frame,
)
from evaluate.results import (
    META_FILE,
    displayable,
    find_result,
    read_meta,
    read_result,
    read_times,
    result_name,
    write_meta,
    write_result,
)
from model.geometry import corners_to_xywh
from model.tracker import initial_corners

log = logging.getLogger("evaluate.otb")

SAMPLE_WEIGHTS = Path("runs/sample/checkpoint-latest.pt")
SAMPLE_OTB = Path("data/sample/otb")
SAMPLE_OUT = Path("reports/sample")


@dataclass
class TrackerScores:
    """Scores of one tracker over the sequences it has results for."""

    name: str
    per_sequence: dict[str, M.Curves]
    overall: M.Curves
    fps: float
    fps_end_to_end: float
    device: str
    missing: list[str] = field(default_factory=list)
    batch_sequences: int | None = None  # sequences per forward pass when the FPS was measured (None: unknown)

    @property
    def complete(self) -> bool:
        """Results for every evaluated sequence: only such trackers are ranked and plotted against each other."""
        return not self.missing


def init_box(seq: OTBSequence, protocol: str) -> np.ndarray:
    """The 1-based xywh the tracker starts from (pysot's test.py adds 0.5 px via its centre round trip)."""
    box = seq.gt[0].astype(np.float64).copy()
    if protocol == "pysot":
        box[:2] += 0.5
    return box


def run_tracker(
    stepper: BatchStepper,
    sequences: Sequence[OTBSequence],
    tracker_dir: Path,
    protocol: str = "got10k",
    batch_sequences: int = 1,
    device: str = "",
    max_frames: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Track every sequence in lockstep batches and write its result and time files; returns run facts.

    Each sequence's files are written as soon as it ends, so an unreadable frame later on
    (`evaluate.otb_data.FrameReadError`, raised with the count of sequences saved) loses no finished work.
    At batch 1 (the rules' FPS, formats_and_eval.md 2.10) the first sequence is the warm-up: left out of both
    FPS figures (named in ``meta.json``, so that re-scoring leaves it out too) when there are others.
    """
    inits = [init_box(s, protocol) for s in sequences]
    starts = start_boxes(sequences, inits, stepper.variant)
    jobs = [
        TrackJob(s.name, s.frames[:max_frames] if max_frames else s.frames, b)
        for s, b in zip(sequences, starts, strict=True)
    ]
    (Path(tracker_dir) / META_FILE).unlink(missing_ok=True)  # an earlier run's facts must not describe this one
    saved: list[str] = []
    batch = min(batch_sequences, len(jobs))
    warm_up = batch == 1 and len(jobs) > 1  # one at a time: the first sequence ends before the second starts
    warm_up_end: list[float] = []

    def save(i: int, out: TrackOutput) -> None:
        xywh = corners_to_xywh(out.boxes, one_based=True)
        xywh[0] = inits[i]  # both toolkits record the given box for frame 1
        write_result(tracker_dir, result_name(sequences[i], protocol), xywh, out.times)
        saved.append(sequences[i].name)
        if i == 0:
            warm_up_end.append(time.perf_counter())

    _warm_up(stepper, jobs[0])
    total = sum(len(j.frames) for j in jobs)
    bar = tqdm(total=total, unit="frame", desc=f"tracking {len(jobs)} sequences", disable=not show_progress)
    t0 = time.perf_counter()
    try:
        outs = track_lockstep(stepper, jobs, batch_size=batch, progress=bar.update, on_done=save)
    except FrameReadError as e:
        raise FrameReadError(f"{e}; the {len(saved)} sequence(s) finished before it are saved in {tracker_dir}") from e
    finally:
        bar.close()
    timed = outs[1:] if warm_up else outs
    start = warm_up_end[0] if warm_up and warm_up_end else t0
    wall = time.perf_counter() - start
    frames = sum(len(o.times) - 1 for o in timed)
    facts = {
        "device": device,
        "fps": M.tracking_fps([o.times for o in timed]),
        "fps_end_to_end": frames / wall if wall > 0 else -1.0,  # the same frames as "fps"
        "warm_up": result_name(sequences[0], protocol) if warm_up else None,  # left out of the FPS
        "protocol": protocol,
        "batch_sequences": batch,
        "frames": total,
        "max_frames": max_frames,
        "results": [result_name(s, protocol) for s in sequences],  # what this run wrote (older files may remain)
    }
    write_meta(tracker_dir, facts)
    return facts


class InitBoxError(ValueError):
    """A sequence's first ground-truth row cannot start a track (empty, non-finite, outside the frame)."""


def start_boxes(sequences: Sequence[OTBSequence], inits: Sequence[np.ndarray], variant: str) -> list[np.ndarray]:
    """The 0-based corner box each sequence starts from: its 1-based initial box through the tracker's own rule
    (`model.tracker.initial_corners`: checked, and rounded and clipped for the opencv variant), so an evaluation
    starts exactly where ``GoturnTracker.init`` would. Checked before any tracking: a first ground-truth row
    that cannot start a track is an `InitBoxError` naming the sequence."""
    out = []
    for seq, b in zip(sequences, inits, strict=True):
        f = seq.frames[0]
        w, h = (f.shape[1], f.shape[0]) if isinstance(f, np.ndarray) else frame_size(f)
        try:
            out.append(initial_corners(b - [1.0, 1.0, 0.0, 0.0], w, h, variant))
        except ValueError as e:
            raise InitBoxError(
                f"{seq.name}: first row of {seq.gt_file} (1-based {b.tolist()}): {e}; "
                "fix the annotation or leave the sequence out with --sequences"
            ) from None
    return out


def write_first_box_baseline(
    sequences: Sequence[OTBSequence], tracker_dir: Path, protocol: str = "got10k", max_frames: int | None = None
) -> None:
    """Result files of the "stay at the first box" tracker: the floor any tracker should beat; score it with
    ``--results`` next to real trackers."""
    for seq in sequences:
        n = min(len(seq), max_frames) if max_frames else len(seq)
        write_result(tracker_dir, result_name(seq, protocol), np.tile(init_box(seq, protocol), (n, 1)))


def _warm_up(stepper: BatchStepper, job: TrackJob) -> None:
    """One untimed step (lazy CUDA / allocator initialisation stays out of the timings)."""
    f = job.frames[0]
    frame = stepper.prepare(f if isinstance(f, np.ndarray) else read_frame(f))
    stepper.step([frame], np.asarray(job.init_box, dtype=np.float64)[None], [frame])
    stepper.sync()


def score_tracker(
    tracker_dir: Path,
    sequences: Sequence[OTBSequence],
    protocol: str = "got10k",
    max_frames: int | None = None,
    exact: bool = False,
) -> TrackerScores | None:
    """Score the result files in ``tracker_dir``; sequences lacking a usable result are missing.

    ``exact``: read only the file name this protocol writes (a run just made), never another toolkit's spelling
    of the same sequence that an older run may have left in the folder.
    """
    per: dict[str, M.Curves] = {}
    times: dict[str, np.ndarray] = {}  # by result file stem
    missing: list[str] = []
    stems: list[str] = []  # the result files scored
    meta = read_meta(tracker_dir)
    run_cut = meta.get("max_frames")  # a smoke-test run's --max-frames
    for seq in sequences:
        if exact:
            path = tracker_dir / f"{result_name(seq, protocol)}.txt"
            path = path if path.is_file() else None
        else:
            path = find_result(tracker_dir, seq, protocol)
        if path is None:
            missing.append(seq.name)
            continue
        stems.append(path.stem)
        gt = seq.gt[:max_frames] if max_frames else seq.gt
        try:
            boxes = read_result(path)
            per[seq.name] = M.sequence_curves(boxes[:max_frames] if max_frames else boxes, gt, protocol)
        except ValueError as e:
            omit = INIT_OMIT.get(seq.folder.name.lower(), 0) if protocol in INIT_OMIT_PROTOCOLS else 0
            if omit and str(e).startswith(f"{len(gt) + omit} result rows"):
                e = f"{e}; a run from frame 1 (--protocol got10k), while {protocol} starts at frame {omit + 1}"
            elif isinstance(run_cut, int) and not max_frames and str(e).startswith(f"{run_cut} result rows"):
                e = f"{e}; the run tracked the first {run_cut} frames only: score it with --max-frames {run_cut}"
            log.warning("%s: %s: %s (skipped)", tracker_dir.name, path.name, e)
            missing.append(seq.name)
            continue
        t = read_times(tracker_dir, path)
        if t is not None:
            times[path.stem] = t
    if missing:
        log.warning("%s: no usable result for %d sequence(s): %s", tracker_dir.name, len(missing), ", ".join(missing))
    if not per:
        return None
    written = meta.get("results")
    written = {w for w in written if isinstance(w, str)} if isinstance(written, list) else None
    older = sorted(set(stems) - written) if written is not None and not exact else []
    if older:  # a run writes its own files only: these are left from an earlier run, maybe under other rules
        log.warning(
            "%s: %s not written by the folder's last run (meta.json: protocol %s): scored anyway",
            tracker_dir.name,
            ", ".join(f"{s}.txt" for s in older),
            meta.get("protocol", "?"),
        )
    warm_up = meta.get("warm_up")  # the run's first sequence at batch 1: not timed, when others are
    timed = [t for stem, t in times.items() if stem != warm_up] or list(times.values())
    fps = M.tracking_fps(timed) if timed else -1.0
    overall = M.mean_curves(list(per.values()))
    # The run's end-to-end rate covers the frames it tracked: it describes these scores only when they are the same.
    same_run = meta.get("frames") == overall.frames and not missing and not older
    batch = meta.get("batch_sequences")
    return TrackerScores(
        tracker_dir.name,
        per,
        overall,
        fps,
        float(meta["fps_end_to_end"]) if same_run else -1.0,
        str(meta.get("device", "unknown")),
        missing,
        batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else None,
    )


def build_report(
    scores: Sequence[TrackerScores],
    protocol: str = "got10k",
    sequences: Sequence[OTBSequence] = (),
    notes=(),
    not_found: Sequence[str] = (),
) -> dict:
    """report.json: the run's settings, then ``{"trackers": {NAME: {"overall": {...}, "curves": {...},
    "complete": bool, "missing": [SEQ, ...], "sequences": {SEQ: {...}}}}}``; an incomplete tracker's overall
    scores cover its own sequences only. The curves (success over ``iou_thresholds``, precision over
    ``error_thresholds_px``) let other tools re-plot or merge the results."""
    trackers = {}
    for s in scores:
        trackers[s.name] = {
            "overall": {
                "success_auc": s.overall.success_auc,
                "precision_20": s.overall.precision_20,
                "success_rate_50": s.overall.success_rate_50,
                "norm_precision": _json_number(s.overall.norm_precision_score),
                "frames": s.overall.frames,
                "fps": s.fps,
                "fps_end_to_end": s.fps_end_to_end,
                "fps_batch_sequences": s.batch_sequences,
                "device": s.device,
            },
            "curves": {"success": s.overall.success.tolist(), "precision": s.overall.precision.tolist()},
            "complete": s.complete,
            "missing": list(s.missing),
            "sequences": {
                n: {"success_auc": c.success_auc, "precision_20": c.precision_20, "frames": c.frames}
                for n, c in s.per_sequence.items()
            },
        }
    invalid = invalid_rows(sequences)
    return {
        "protocol": protocol,
        "rules": M.PROTOCOL_RULES[protocol],
        "norm_precision_definition": M.NORM_PRECISION_DEFINITIONS[protocol],
        "iou_thresholds": M.IOU_THRESHOLDS.tolist(),
        "error_thresholds_px": M.CE_THRESHOLDS.tolist(),
        "invalid_ground_truth_rows": invalid,
        "sequences_not_found": list(not_found),  # of the version's list (or the names asked for), under the root
        "notes": list(notes),
        "trackers": trackers,
    }


def invalid_rows(sequences: Sequence[OTBSequence]) -> dict[str, int]:
    """Sequence -> its ground-truth rows that fail the OTB validity rule (only sequences that have some)."""
    return {q.name: int((~q.valid).sum()) for q in sequences if not q.valid.all()}


def _json_number(v: float) -> float | None:
    """NaN (a metric the protocol does not define) as JSON null: strict JSON has no NaN."""
    return None if np.isnan(v) else v


def _fps_cell(s: TrackerScores) -> str:
    """Tracking FPS with the batch it was measured at: lockstep batches give throughput, not single-stream speed."""
    if s.fps <= 0:
        return "n/a"
    return f"{s.fps:.1f}" + (f" (batch {s.batch_sequences})" if s.batch_sequences and s.batch_sequences > 1 else "")


def _fmt_fps(v: float) -> str:
    return f"{v:.1f}" if v > 0 else "n/a"


def _fmt_metric(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.4f}"


def markdown_report(scores: Sequence[TrackerScores], protocol: str, discovery: Discovery, notes: list[str]) -> str:
    """The human-readable table (also printed)."""
    rules = M.PROTOCOL_RULES[protocol]
    lines = [
        "# OTB one-pass evaluation (OPE)",
        "",
        f"Protocol: **{protocol}** ({rules}); {len(discovery.sequences)} sequences ({discovery.mode}).",
        "Success AUC = mean success over 21 IoU thresholds (IoU > t); P@20 = precision at 20 px;",
        "FPS = frames after the first / tracking time (no I/O, no init); end-to-end includes decoding. At",
        "batch 1 (the default) it is single-stream speed, the first of several sequences left out (warm-up); with",
        "`--batch-sequences N` (faster) a run reports throughput at that batch, marked `(batch N)`.",
        f"Norm. precision: {M.NORM_PRECISION_DEFINITIONS[protocol]}.",
    ]
    invalid = invalid_rows(discovery.sequences)
    if invalid:
        listed = ", ".join(f"{k} {v}" for k, v in invalid.items())
        lines.append(
            f"- Invalid ground-truth rows (not all of x, y, w, h > 0), scored by the {protocol} rules: {listed}"
        )
    lines += [f"- {n}" for n in notes]
    if discovery.missing:
        lines.append(f"- Missing under the root (skipped): {', '.join(discovery.missing)}")
    header = [
        "| Tracker | Success AUC | P@20 | Norm. precision | Sequences | Frames | FPS (tracking) "
        "| FPS (end-to-end) | Device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def rows(group: Sequence[TrackerScores]) -> list[str]:
        return [
            f"| {s.name} | {s.overall.success_auc:.4f} | {s.overall.precision_20:.4f} | "
            f"{_fmt_metric(s.overall.norm_precision_score)} | {len(s.per_sequence)} | {s.overall.frames} | "
            f"{_fps_cell(s)} | {_fmt_fps(s.fps_end_to_end)} | {s.device} |"
            for s in sorted(group, key=lambda s: -s.overall.success_auc)
        ]

    lines += ["", *header, *rows([s for s in scores if s.complete])]
    incomplete = [s for s in scores if not s.complete]
    if incomplete:
        lines += [
            "",
            "## Not ranked: results missing for some sequences",
            "",
            "Their scores cover fewer sequences, so they are not comparable with the table above and are left out",
            "of the plots; to compare on a common subset, pass `--sequences`.",
            "",
            *header,
            *rows(incomplete),
        ]
        lines += [f"\n{s.name}: no result for {', '.join(s.missing)}" for s in incomplete]
    names = [s.name for s in scores]
    lines += ["", "## Per sequence (success AUC / P@20)", ""]
    lines.append("| Sequence | Frames | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for seq in discovery.sequences:
        cells = []
        frames = ""
        for s in scores:
            c = s.per_sequence.get(seq.name)
            cells.append(f"{c.success_auc:.3f} / {c.precision_20:.3f}" if c else "-")
            frames = frames or (str(c.frames) if c else "")
        lines.append(f"| {seq.name} | {frames} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path, scores: Sequence[TrackerScores], protocol: str, discovery: Discovery, notes: list[str]
) -> str:
    """report.json, report.md, success_plot.png and precision_plot.png in ``out``; returns the markdown."""
    from evaluate.plots import precision_plot, success_plot

    out.mkdir(parents=True, exist_ok=True)
    report = build_report(scores, protocol, discovery.sequences, notes, discovery.missing)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown_report(scores, protocol, discovery, notes)
    (out / "report.md").write_text(md, errors="surrogateescape")  # folder names that are not UTF-8 keep their bytes
    curves = {s.name: s.overall for s in scores if s.complete}
    smoke = ", SMOKE TEST" if any(n.startswith("SMOKE TEST") for n in notes) else ""
    suffix = f" ({protocol}, {len(discovery.sequences)} seq.{smoke})"
    success_plot(curves, out / "success_plot.png", "Success plots of OPE" + suffix)
    precision_plot(curves, out / "precision_plot.png", "Precision plots of OPE" + suffix)
    return md


def result_folders(results: Path) -> list[Path]:
    """Tracker folders of a results directory: subfolders holding at least one result ``.txt`` file (a tracker's
    ``times/`` folder, given by mistake as the results directory's child, is not one)."""
    return sorted(
        p for p in results.iterdir() if p.is_dir() and any(not q.name.endswith("_time.txt") for q in p.glob("*.txt"))
    )


def positive_int(text: str) -> int:
    """argparse type for counts: 0 or a negative number is a usage error, never a silent default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluate.otb", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, help=f"checkpoint to evaluate (default {SAMPLE_WEIGHTS})")
    p.add_argument("--otb-root", type=Path, default=None, help=f"folder of OTB sequences (default {SAMPLE_OTB})")
    p.add_argument(
        "--version",
        type=str.lower,
        choices=sorted(VERSIONS),
        help="OTB list; default: 2015 if complete, else all found",
    )
    p.add_argument("--sequences", help="comma-separated names in any toolkit's spelling (Jogging-1, Jogging.1)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {SAMPLE_OUT})")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--batch-sequences",
        type=positive_int,
        default=1,
        help="sequences tracked in lockstep: 1 (default) times single-stream speed, as the rules ask; more (e.g. "
        "128 on cuda, 8 on cpu) evaluate faster, their FPS then being throughput",
    )
    p.add_argument("--name", default="GOTURN", help="tracker name (result folder, legend)")
    p.add_argument("--protocol", choices=M.PROTOCOLS, default="got10k", help="scoring rules (default got10k)")
    p.add_argument("--results", type=Path, help="score existing result folders (subfolders of this directory)")
    p.add_argument(
        "--max-frames", type=positive_int, default=None, help="smoke tests only: first K frames per sequence"
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="network precision; half on cuda also stores the net NHWC (faster; numbers shift slightly)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no printed table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    run_model = args.weights is not None or args.results is None
    weights = args.weights or SAMPLE_WEIGHTS
    root = args.otb_root or SAMPLE_OTB
    out = args.out or SAMPLE_OUT
    if run_model and not weights.is_file():
        hint = " Run `make demo` (or the trainer on the sample shards) first." if args.weights is None else ""
        raise SystemExit(f"error: checkpoint {weights} not found.{hint}")
    if not root.is_dir():
        hint = " Run `make demo` to generate the sample data." if args.otb_root is None else ""
        raise SystemExit(f"error: OTB root {root} not found.{hint}")
    names = [n.strip() for n in args.sequences.split(",") if n.strip()] if args.sequences else None
    try:
        disc = find_sequences(root, args.version, names, args.protocol)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    notes: list[str] = []
    if disc.mode == "all folders":
        n = len(disc.sequences)
        msg = f"{root} is not a complete OTB-100 root: evaluating every sequence folder found ({n})"
        log.info(msg)
        notes.append(msg)
    if args.max_frames:
        notes.append(f"SMOKE TEST: only the first {args.max_frames} frames of each sequence (not a benchmark)")
    others: list[Path] = []  # result folders to score beside the run
    if args.results is not None:
        if not args.results.is_dir():
            raise SystemExit(f"error: results folder {args.results} not found")
        if args.out is None:  # the default is the sample run's report, which a re-score would overwrite
            raise SystemExit("error: --results needs --out, the folder the report goes to")
        others = result_folders(args.results)
        if not others and any(args.results.glob("*.txt")):
            raise SystemExit(
                f"error: {args.results} holds result files itself: --results takes the folder of tracker folders "
                f"(pass {args.results.parent})"
            )
        if run_model:
            this_run = (out / args.name).resolve()
            others = [t for t in others if t.resolve() != this_run]  # scored as the run, from its own files
            if any(t.name == args.name for t in others):
                raise SystemExit(
                    f"error: {args.results / args.name} has the name of the tracker being run (--name "
                    f"{args.name}): pass another --name so the report can tell them apart"
                )
    scores: list[TrackerScores] = []
    if run_model:
        from evaluate.steppers import device_name, load_stepper
        from model.caffe_proto import CaffeModelError
        from model.checkpoint import CheckpointError
        from model.devices import resolve_device

        try:
            dev = resolve_device(args.device)
        except ValueError as e:
            raise SystemExit(f"error: --device: {e}") from None
        batch = args.batch_sequences
        import torch

        dtype = getattr(torch, args.dtype)
        half_cuda = dev.type == "cuda" and dtype != torch.float32
        try:
            stepper = load_stepper(weights, dev, dtype=dtype, channels_last=True if half_cuda else None)
        except (CheckpointError, CaffeModelError) as e:
            raise SystemExit(f"error: --weights: {e}") from None
        tdir = out / args.name
        if args.dtype != "float32":
            notes.append(f"network in {args.dtype}")
        try:
            facts = run_tracker(
                stepper,
                disc.sequences,
                tdir,
                args.protocol,
                batch,
                device_name(dev),
                args.max_frames,
                not args.quiet,
            )
        except (InitBoxError, FrameReadError) as e:
            raise SystemExit(f"error: {e}") from None
        log.info(
            "tracked %d frames: %.1f frames/s tracking, %.1f end to end on %s (batch %d)",
            facts["frames"],
            facts["fps"],
            facts["fps_end_to_end"],
            facts["device"],
            facts["batch_sequences"],
        )
        s = score_tracker(tdir, disc.sequences, args.protocol, args.max_frames, exact=True)
        assert s is not None
        scores.append(s)
    if args.results is not None:
        for tdir in others:
            s = score_tracker(tdir, disc.sequences, args.protocol, args.max_frames)
            if s is None:
                log.warning("%s: no result file matches the sequences (skipped)", tdir)
            else:
                scores.append(s)
        if not scores:
            raise SystemExit(f"error: no tracker results for these sequences under {args.results}")
        if not any(s.complete for s in scores):
            raise SystemExit(
                f"error: no tracker under {args.results} has usable results for all {len(disc.sequences)} "
                "sequences (see the warnings above): pass --sequences to evaluate the ones they cover"
            )
    md = write_outputs(out, scores, args.protocol, disc, notes)
    if not args.quiet:
        print(displayable(md))  # a terminal cannot show raw bytes
        print(
            displayable(
                f"report: {out / 'report.json'}, {out / 'report.md'}, plots: {out / 'success_plot.png'}, "
                f"{out / 'precision_plot.png'}"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
