"""``python -m shards.stats DIR [--plot FILE]``: what is in a shard directory, as text histograms (and a PNG).

Reads only ``boxes.npy`` and ``meta.json`` (JPEGs are skipped, so it is fast). Histograms per source:
- box size: ``sqrt(w*h / (W*H))``, the box's linear size relative to the image;
- aspect: ``log2(w / h)``;
- motion (pairs only): centre displacement between prev and curr in units of the prev box size
  (``|dc_x / w_prev|, |dc_y / h_prev|`` combined as a norm), the quantity GOTURN's Laplace motion model draws;
- scale change (pairs only): ``log2(sqrt(area_curr / area_prev))``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from shards.dataset import shard_paths
from shards.format import (
    BOXES,
    MANIFEST_NAME,
    META,
    box_values_problem,
    parse_shard_name,
    read_boxes,
    read_manifest,
    refuse_unsafe_tar,
    split_member_name,
)
from shards.output_files import output_file_problem

HISTOGRAMS = {
    "box size (sqrt area ratio)": np.linspace(0.0, 1.0, 11),
    "aspect log2(w/h)": np.linspace(-3.0, 3.0, 13),
    "motion |dcentre|/prev size": np.array([0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, np.inf]),
    "scale change log2": np.linspace(-1.0, 1.0, 11),
}


def shard_statistics(paths: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per source: the statistics of every sample, from ``boxes.npy`` + ``meta.json`` only."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unusable: list[str] = []  # "<tar>: <key>: <why>" of samples left out
    for path in paths:
        parsed = parse_shard_name(Path(path).name)
        source = parsed[0] if parsed else "unknown"
        refuse_unsafe_tar(path)
        members: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(path, "r|") as tf:  # streaming: JPEG members are skipped, never read into memory
            for info in tf:
                key, ext = split_member_name(info.name)
                if ext in (BOXES, META) and info.isreg():
                    if info.size > 1 << 20:  # a few hundred bytes in any real shard: never read a header's gigabytes
                        raise ValueError(f"{path}: {info.name} claims {info.size} bytes")
                    members[key][ext] = tf.extractfile(info).read()
        for key, m in members.items():
            try:
                boxes, W, H = _sample_geometry(m)
            except (ValueError, KeyError, TypeError, RecursionError, ArithmeticError) as e:  # edited: counted
                unusable.append(f"{path}: {key}: {type(e).__name__}: {str(e)[:100]}")
                continue
            v = values[source]
            w, h = boxes[-1, 2] - boxes[-1, 0], boxes[-1, 3] - boxes[-1, 1]
            v["box size (sqrt area ratio)"].append(float(np.sqrt(w * h / (W * H))))
            v["aspect log2(w/h)"].append(float(np.log2(w / h)))
            if len(boxes) == 2:
                pw, ph = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
                dx = ((boxes[1, 0] + boxes[1, 2]) - (boxes[0, 0] + boxes[0, 2])) / 2 / pw
                dy = ((boxes[1, 1] + boxes[1, 3]) - (boxes[0, 1] + boxes[0, 3])) / 2 / ph
                v["motion |dcentre|/prev size"].append(float(np.hypot(dx, dy)))
                v["scale change log2"].append(float(0.5 * np.log2(w * h / (pw * ph))))
    if unusable:
        print(
            f"warning: {len(unusable)} sample(s) with unusable boxes / meta left out, e.g. {unusable[0]} "
            "(python -m shards.verify lists them all)",
            file=sys.stderr,
        )
    return values


def _sample_geometry(m: dict[str, bytes]) -> tuple[np.ndarray, float, float]:
    """(boxes as float64, width, height) of one sample; ValueError / KeyError / TypeError when its members are
    not v1's (missing, forged npy header, boxes that are no corner boxes, meta without a size)."""
    boxes = read_boxes(m[BOXES])
    if boxes.dtype != np.float32 or boxes.shape not in ((1, 4), (2, 4)):
        raise ValueError(f"boxes.npy is {boxes.dtype} {boxes.shape}, not float32 (1, 4) or (2, 4)")
    if problem := box_values_problem(boxes):
        raise ValueError(problem)
    boxes = boxes.astype(np.float64)
    meta = json.loads(m[META])
    W, H = float(meta["width"]), float(meta["height"])  # an int of 400 digits: OverflowError, an ArithmeticError
    if not (0 < W < math.inf and 0 < H < math.inf):
        raise ValueError(f"meta size {W}x{H}")
    return boxes, W, H


def text_histogram(name: str, data: list[float], edges: np.ndarray, width: int = 40) -> str:
    """One histogram as aligned text rows ``[lo, hi)  count  ####``; out-of-range values go to end bins."""
    arr = np.clip(np.asarray(data, dtype=np.float64), edges[0], np.nextafter(edges[-1], -np.inf))
    counts, _ = np.histogram(arr, bins=edges)
    peak = max(int(counts.max()), 1)
    rows = [f"  {name} (n={len(data)}, median {np.median(data):.3f})"]
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        rows.append(f"    [{lo:6.2f}, {hi:6.2f})  {int(c):7d}  {'#' * round(width * c / peak)}")
    return "\n".join(rows)


def report(directory: Path, values: dict[str, dict[str, list[float]]], split: str | None = None) -> str:
    """Counts from the manifest (of ``split`` only, when given, like the histograms), then the histograms per
    source."""
    lines = []
    manifest = directory / MANIFEST_NAME
    if manifest.is_file():
        try:
            lines += _manifest_lines(directory, read_manifest(manifest), split)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # an edited manifest: say so, go on
            lines.append(
                f"{directory}: manifest counts unreadable ({type(e).__name__}: {e}); run python -m shards.verify"
            )
    for source, v in sorted(values.items()):
        lines.append(f"{source}:")
        for name, edges in HISTOGRAMS.items():
            if v.get(name):
                lines.append(text_histogram(name, v[name], edges))
    return "\n".join(lines)


def _manifest_lines(directory: Path, m: dict, split: str | None) -> list[str]:
    lines = []
    shards = [s for s in m["shards"] if split is None or s.get("split") == split]
    what = f" of split {split}" if split else ""
    lines.append(f"{directory}: {len(shards)} shards{what}, {sum(s['bytes'] for s in shards) / 1e6:.1f} MB")
    for source, splits in m["counts"].items():
        for sp, c in splits.items():
            if split is None or sp == split:
                lines.append(f"  {source:9s} {sp:5s} " + "  ".join(f"{k} {v}" for k, v in c.items()))
    for source, acc in m["accounting"].items():  # the build's inputs (all splits): skipped per quantity
        for qty, q in acc.items():
            if isinstance(q, dict) and q.get("skipped"):
                lines.append(f"  {source} {qty} skipped: {sum(q['skipped'].values())} of {q['total']}")
    lines.append(f"  re-encoded images: {len(m['reencoded'])}")
    return lines


def plot(values: dict[str, dict[str, list[float]]], out: Path) -> None:
    """2x2 PNG of the same histograms (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, edges) in zip(axes.flat, HISTOGRAMS.items(), strict=True):
        finite = edges[np.isfinite(edges)]
        for source, v in sorted(values.items()):
            if v.get(name):
                data = np.clip(v[name], finite[0], finite[-1])
                ax.hist(data, bins=np.linspace(finite[0], finite[-1], 21), alpha=0.6, label=source)
        ax.set_title(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m shards.stats", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="build output directory")
    p.add_argument("--split", default=None, help="only this split (default: all)")
    p.add_argument("--plot", type=Path, help="also write the histograms to this .png (or .svg, .pdf)")
    a = p.parse_args(argv)
    if not a.directory.is_dir():
        p.error(f"{a.directory}: no such directory")
    if a.plot and (problem := output_file_problem(str(a.plot), (".png", ".svg", ".pdf"))):
        p.error(f"--plot {a.plot}: {problem}")
    try:
        paths = shard_paths(a.directory, None, a.split)
    except (FileNotFoundError, ValueError) as e:  # a missing shard, an unfinished build, a compressed tar
        p.error(str(e))
    if not paths:
        p.error(f"{a.directory}: no shards" + (f" of split {a.split!r}" if a.split else ""))
    try:
        values = shard_statistics(paths)
    except (tarfile.TarError, OSError, ValueError, EOFError, KeyError, TypeError) as e:  # a damaged shard
        print(f"error: cannot read the shards ({type(e).__name__}: {e}); run python -m shards.verify", file=sys.stderr)
        return 1
    print(report(a.directory, values, a.split))
    if a.plot:
        plot(values, a.plot)
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
