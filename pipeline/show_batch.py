"""Draw a training batch: per pair the target crop and its search crops with the regression target boxed.

Why: the augmentation (motion model, zero padding at the borders, x10 targets) is easiest to trust by looking.
``python -m pipeline.show_batch --shards DIR --out grid.png``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from model.geometry import INPUT_SIZE, SCALE_FACTOR
from pipeline.augment import SAMPLINGS, GoturnLoader, SampleDecodeError, find_shards
from shards.output_files import output_file_problem

LABEL_H = 14


def _tile(crop_chw: np.ndarray, box_x10: np.ndarray | None, colour: str, label: str) -> Image.Image:
    """One 227x227 crop with its box (x10 crop fractions -> pixels) and a caption strip."""
    im = Image.new("RGB", (INPUT_SIZE, INPUT_SIZE + LABEL_H), "white")
    im.paste(Image.fromarray(np.ascontiguousarray(crop_chw.transpose(1, 2, 0))), (0, LABEL_H))
    d = ImageDraw.Draw(im)
    d.text((2, 1), label, fill="black")
    box = None if box_x10 is None else np.asarray(box_x10, dtype=np.float64) * INPUT_SIZE / SCALE_FACTOR
    if box is not None and np.isfinite(box).all():  # a broken shard's box is drawn as it is, never a crash
        x1, x2 = sorted((box[0], box[2]))
        y1, y2 = sorted((box[1], box[3]))
        d.rectangle([x1, y1 + LABEL_H, x2, y2 + LABEL_H], outline=colour, width=2)
    elif box is not None:
        d.text((2, LABEL_H + 2), "box not finite", fill=colour)
    return im


def render(batch: dict, k: int, max_pairs: int | None = None) -> Image.Image:
    """Grid image: one row per pair = [target | true example | shift 1 .. shift k]."""
    e = 1 + k
    n_pairs = len(batch["bbox"]) // e
    if max_pairs is not None:
        n_pairs = min(n_pairs, max_pairs)
    cw, ch = INPUT_SIZE + 2, INPUT_SIZE + LABEL_H + 2
    grid = Image.new("RGB", ((1 + e) * cw, n_pairs * ch), (40, 40, 40))
    target = batch["target"].cpu().numpy()
    search = batch["search"].cpu().numpy()
    bbox = batch["bbox"].cpu().numpy()
    for p in range(n_pairs):
        j = p * e
        src = batch["source"][j] if "source" in batch else ""
        key = batch["keys"][j].rsplit(":", 1)[-1] if "keys" in batch else ""
        key = key.removeprefix(f"{src}/")  # the key's end names the sample: keep it when the caption is cut
        label = f"{src}: {key}" if len(src) + len(key) <= 34 else f"{src}: ...{key[-(31 - len(src)) :]}"
        tbox = batch["target_box"][j].cpu().numpy() if "target_box" in batch else None
        grid.paste(_tile(target[j], tbox, "yellow", label), (0, p * ch))
        for i in range(e):
            lab = "true (prev box)" if i == 0 else f"shift {i}"
            grid.paste(_tile(search[j + i], bbox[j + i], "lime", lab), ((1 + i) * cw, p * ch))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.show_batch", description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="shard folder ({source}-{split}-NNNNNN.tar + .idx)")
    ap.add_argument("--out", required=True, help="output .png")
    ap.add_argument("--split", default="train", help="train or val (default train)")
    ap.add_argument("--pairs", type=int, default=4, help="rows (pairs) to draw")
    ap.add_argument("--k", type=int, default=10, help="shifted examples per pair (authors: 10)")
    ap.add_argument("--seed", type=int, default=0, help="augmentation seed")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="DALI backend")
    ap.add_argument(
        "--sampling", choices=SAMPLINGS, default="authors", help="how pairs are drawn (default: as the trainer)"
    )
    a = ap.parse_args(argv)
    if a.pairs < 1 or a.k < 0 or a.seed < 0:
        ap.error("--pairs must be >= 1, --k and --seed >= 0")
    if problem := output_file_problem(a.out, (".png", ".jpg", ".jpeg")):
        ap.error(f"--out {a.out}: {problem}")
    try:
        n_src = len(find_shards(a.shards, a.split))
        ppb = max(n_src, -(-a.pairs // n_src) * n_src)
        loader = GoturnLoader(
            a.shards, a.split, a.device, ppb, a.k, a.seed, audit=True, num_threads=2, sampling=a.sampling
        )
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    try:
        batch = next(iter(loader))
    except SampleDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    render(batch, a.k, a.pairs).save(a.out)
    print(
        f"wrote {a.out}: {min(a.pairs, ppb)} pairs x (target + {1 + a.k} search crops); yellow = previous box in "
        "the target crop, green = regression target in each search crop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
