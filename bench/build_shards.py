"""Benchmark the shard builder: images/s on generated 500x375 JPEGs (ImageNet DET layout), full validation.

Generates ``--images`` photo-like JPEGs encoded like the real ILSVRC JPEGs in ``../shared/data`` (4:4:4
chroma, high quality: ~150 KB, and a full decode costs about as much CPU as theirs) with one kept
object each in a temporary DET tree, then times complete builds (plan + full decode of every image +
tar/idx/sha256 + manifest) with ``--workers 1`` and ``--workers 2``, ``--repeats`` interleaved rounds (median
reported), on a warm page cache. The time split: parse = planning (XML parsing, listing, shard assignment,
wall s); validate = full decode and checks (summed over worker processes); encode = npy/json members (summed
over workers); write = tar writing, hashing, fsync and index (main process, wall s).

Last line: ``RESULT build_images_per_s=<workers-2 images/s> images/s ratio=<workers 2 over workers 1>``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.build_shards import BuildConfig, build  # noqa: E402

W, H = 500, 375


def photo_like(rng: np.random.Generator) -> Image.Image:
    """Smooth colour layout + mid-frequency texture + sensor-like noise: compresses/decodes like a photo."""
    low = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    mid = (rng.random((47, 63, 3)) * 255).astype(np.uint8)
    a = 0.6 * np.asarray(Image.fromarray(low).resize((W, H), Image.BICUBIC), dtype=np.float32)
    a += 0.3 * np.asarray(Image.fromarray(mid).resize((W, H), Image.BILINEAR), dtype=np.float32)
    a += rng.normal(0.0, 5.0, (H, W, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_det_tree(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, int]:
    """``n`` JPEG + XML pairs in ``<root>/images/<synset>/``, ``.../annotations/<synset>/``; total bytes."""
    rng = np.random.default_rng(seed)
    images, anns = root / "images", root / "annotations"
    total = 0
    for i in range(n):
        synset = f"n0{1000000 + i % 3}"
        name = f"{synset}_{i:06d}"
        (images / synset).mkdir(parents=True, exist_ok=True)
        (anns / synset).mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        photo_like(rng).save(buf, format="JPEG", quality=95, subsampling=0)
        (images / synset / f"{name}.JPEG").write_bytes(buf.getvalue())
        total += buf.tell()
        x1, y1 = int(rng.integers(0, 250)), int(rng.integers(0, 180))
        xml = (
            f"<annotation><folder>{synset}</folder><filename>{name}</filename>"
            f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
            f"<object><name>{synset}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x1 + 150}</xmax><ymax>{y1 + 120}</ymax></bndbox></object></annotation>"
        )
        (anns / synset / f"{name}.xml").write_text(xml)
    return images, anns, total


def run_once(images: Path, anns: Path, out: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(out=out, imagenet_images=images, imagenet_annotations=anns, workers=workers, progress=False)
    t0 = time.perf_counter()
    c0 = os.times()
    report = build(cfg)
    c1 = os.times()
    wall = time.perf_counter() - t0
    n = report.manifest["accounting"]["imagenet"]["xml_files"]["written"]
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    t = report.timings
    return {"wall": wall, "ips": n / wall, "n": n, "cpu_ms": 1000 * cpu / n, **{k: t[k] for k in t}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="generated JPEGs (a build of 300 took only ~0.6 s)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds: 1 worker, then 2, each round")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_build_shards_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        images, anns, nbytes = make_det_tree(root, a.images)
        print(
            f"generated {a.images} JPEGs {W}x{H} ({nbytes / a.images / 1000:.0f} KB avg) in "
            f"{time.perf_counter() - t:.1f}s; {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}"
        )
        run_once(images, anns, root / "warm", 1)  # warm page cache and imports
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(a.repeats):  # interleaved, so a burst of load on the machine hits both worker counts
            for workers in runs:
                runs[workers].append(run_once(images, anns, root / f"out{workers}", workers))
        rows = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
        print()
        print(
            f"{'workers':>7} {'images':>6} {'wall s':>7} {'images/s':>9} {'CPU ms/img':>10} "
            f"{'parse s':>7} {'validate':>9} {'encode':>7} {'write s':>7}"
        )
        for workers, r in rows.items():
            print(
                f"{workers:>7} {r['n']:>6.0f} {r['wall']:>7.3f} {r['ips']:>9.1f} {r['cpu_ms']:>10.2f} "
                f"{r['parse']:>7.3f} {r['validate']:>9.3f} {r['encode']:>7.3f} {r['write']:>7.3f}"
            )
        print(
            "(validate / encode: seconds summed over worker processes; median of "
            f"{a.repeats} runs; load avg now {os.getloadavg()[0]:.2f})"
        )
        ratio = rows[2]["ips"] / rows[1]["ips"]
        print(f"RESULT build_images_per_s={rows[2]['ips']:.1f} images/s ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
