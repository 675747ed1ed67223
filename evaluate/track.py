"""Track one sequence and draw it: frames with the predicted box (red) and the ground truth (green) if
present, plus an animated GIF (Pillow only, no video dependency).

    python -m evaluate.track --weights FILE --sequence DIR --out DIR [--gif] [--init x,y,w,h] [--device auto]

``DIR`` is an OTB-style folder (``img/`` + ``groundtruth_rect*.txt``) or a folder of images (then
``--init``, a 1-based OTB ``x,y,w,h``, is required). Writes ``<out>/frames/NNNN.jpg``, ``<out>/<name>.txt``
(1-based x,y,w,h) and, with ``--gif``, ``<out>/<name>.gif``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from evaluate import metrics as M
from evaluate.lockstep import TrackJob, track_lockstep
from evaluate.otb import positive_int
from evaluate.otb_data import (
    FrameReadError,
    frame_size,
    list_images,
    load_sequence,
    parse_gt_text,
    read_frame,
    target_names,
)
from evaluate.results import displayable, write_result
from model.geometry import corners_to_xywh, xywh_to_corners
from model.tracker import check_init_box, initial_corners
from shards.input_files import named_folder

PRED_COLOR = (255, 40, 40)
GT_COLOR = (40, 220, 40)


def draw_boxes(frame: np.ndarray, pred_xywh: np.ndarray | None, gt_xywh: np.ndarray | None = None) -> Image.Image:
    """One annotated frame; boxes are 1-based OTB xywh, drawn on the pixels they cover."""
    im = Image.fromarray(frame)
    d = ImageDraw.Draw(im)
    width = max(1, round(min(im.size) / 150))
    for box, color in ((gt_xywh, GT_COLOR), (pred_xywh, PRED_COLOR)):
        if box is None or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            continue
        x1, y1, x2, y2 = xywh_to_corners(np.asarray(box), one_based=True)
        d.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
    return im


def gif_frame(im: Image.Image, max_side: int = 480) -> Image.Image:
    """Downscale a drawn frame for the GIF so long sequences stay small in memory and on disk."""
    scale = min(1.0, max_side / max(im.size))
    if scale == 1.0:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)


def save_gif(frames: Sequence[Image.Image], path: Path, fps: float = 25.0) -> Path:
    """Animated, looping GIF of the drawn frames."""
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluate.track", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--sequence", type=Path, required=True, help="OTB folder or a folder of images")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gif", action="store_true", help="also write an animated GIF")
    p.add_argument("--init", help="1-based x,y,w,h of frame 1 (default: first ground-truth row)")
    p.add_argument("--target", help="which target of a multi-target folder (e.g. Jogging-2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-frames", type=positive_int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seq_dir = named_folder(args.sequence)  # "." has the sequence's name
    gt = None
    name = seq_dir.name
    try:
        targets = target_names(seq_dir) if seq_dir.is_dir() else []
        seq = load_sequence(seq_dir, name=args.target) if targets else None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if seq is not None:
        frames, gt, name = list(seq.frames), seq.gt, seq.name
        if len(targets) > 1 and not args.target:
            others = ", ".join(t for t, _ in targets if t != name)
            print(
                displayable(
                    f"{seq_dir} has {len(targets)} targets: tracking {name} (also: {others}; pick with --target)"
                )
            )
    else:
        if args.target:
            raise SystemExit(f"error: --target {args.target}: {seq_dir} has no groundtruth_rect*.txt")
        img_dir = seq_dir / "img" if (seq_dir / "img").is_dir() else seq_dir
        frames = list_images(img_dir) if img_dir.is_dir() else []
    if not seq_dir.is_dir():
        raise SystemExit(f"error: --sequence {seq_dir}: no such folder")
    if not frames:
        raise SystemExit(f"error: no images found in {seq_dir}")
    if args.max_frames:
        frames = frames[: args.max_frames]
        gt = gt[: args.max_frames] if gt is not None else None
    try:
        w, h = frame_size(frames[0])
    except FrameReadError as e:
        raise SystemExit(f"error: {e}") from None
    if args.init:
        try:
            rows = parse_gt_text(args.init, "--init")
            if len(rows) != 1:
                raise ValueError(f"expected one box x,y,w,h, got {len(rows)}")
            check_init_box(rows[0] - [1, 1, 0, 0], w, h)  # the tracker's own rule, on the 0-based box
        except ValueError as e:
            raise SystemExit(f"error: --init {args.init}: {str(e).removeprefix('--init:1: ')}") from None
        init = rows[0]
    elif gt is not None:
        init = gt[0]
    else:
        raise SystemExit("error: no ground truth in the folder: pass --init x,y,w,h (1-based)")
    if args.out.exists() and not args.out.is_dir():  # found now, not after the tracking
        raise SystemExit(f"error: --out {args.out} is a file, not a folder")
    from evaluate.steppers import load_stepper
    from model.caffe_proto import CaffeModelError
    from model.checkpoint import CheckpointError
    from model.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: --device: {e}") from None
    try:
        stepper = load_stepper(args.weights, device)
    except (CheckpointError, CaffeModelError) as e:
        raise SystemExit(f"error: --weights: {e}") from None
    try:  # where GoturnTracker.init would start (checked; rounded and clipped for the opencv variant)
        start = initial_corners(init - [1.0, 1.0, 0.0, 0.0], w, h, stepper.variant)
    except ValueError as e:
        where = f"--init {args.init}" if args.init else f"first ground-truth row of {name}"
        raise SystemExit(f"error: {where}: {e}") from None
    bar = tqdm(total=len(frames), unit="frame", desc=name, disable=args.quiet)
    try:
        (out,) = track_lockstep(stepper, [TrackJob(name, frames, start)], 1, bar.update)
    except FrameReadError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        bar.close()
    xywh = corners_to_xywh(out.boxes, one_based=True)
    xywh[0] = init
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out, name, xywh)
    fdir = args.out / "frames"
    fdir.mkdir(exist_ok=True)
    for old in fdir.glob("[0-9][0-9][0-9][0-9]*.jpg"):  # a longer earlier run's frames would outlive this one's
        old.unlink()
    drawn = []
    for i, f in enumerate(frames):
        im = draw_boxes(read_frame(f), xywh[i], gt[i] if gt is not None else None)
        im.save(fdir / f"{i + 1:04d}.jpg", quality=90)
        if args.gif:
            drawn.append(gif_frame(im))
    legend = "red: tracker" + (", green: ground truth" if gt is not None else "")
    print(displayable(f"{len(frames)} frames drawn in {fdir} ({legend})"))
    if gt is not None and not args.init:  # tracked from the ground truth's first box: scored as evaluate.otb does
        c = M.sequence_curves(xywh, gt, "got10k")
        print(displayable(f"{name}: success AUC {c.success_auc:.3f}, precision@20 {c.precision_20:.3f} (got10k rules)"))
    if args.gif:
        print(displayable(f"GIF: {save_gif(drawn, args.out / f'{name}.gif')}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
