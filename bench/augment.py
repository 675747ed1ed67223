"""Training-example throughput: the DALI loader (pipeline.augment) vs the seed's inline Python loop.

Why: the seed made its 11 examples per pair in Python inline with training; this measures what the DALI graph buys
on the same images. Both sides read the same shard samples (photo-like 640x480 JPEG q90: ImageNet-style stills and
ALOV-style pairs, 1:1). Baselines, each one process:

* the seed as written (`seed_pair_as_written`): pygoturn's per-pair work, redundant decodes, per-example target
  crops, INTER_CUBIC and torchvision normalisation included; the RESULT ratio is against it;
* a tidied loop (`seed_pair`): the same examples without the redundant work (cv2.imdecode once per image, the
  authors' zero canvas (model.geometry.crop_pad_image) + cv2.resize INTER_LINEAR, the target cropped once,
  float32 CHW Caffe normalisation, or none), the bar a careful engineer would set without DALI.

DALI is timed end to end through GoturnLoader (torch tensors out, including interleaving and the per-example
target repeat), drawing pairs as the trainer does by default (the authors' sampling, `pipeline.group_sampler`),
and once more with DALI's own sequential reader (``sampling="epoch"``). Repeats are interleaved (each round runs
every configuration once, baselines included), so a burst of load on this shared machine hits all of them; the
RESULT ratio is the median of the per-round ratios, printed with their range.

    python bench/augment.py                  # CPU backend, 2 threads
    python bench/augment.py --device gpu     # on a GPU machine (mixed decoder, GPU crops)

Last line: ``RESULT examples_per_s=<DALI, uint8 output> examples/s ratio=<that over the seed as written>``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402

from model import geometry as G  # noqa: E402
from pipeline.augment import GoturnLoader  # noqa: E402

CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


def make_shards(out: Path, unique: int, total: int, w: int = 640, h: int = 480, seed: int = 0) -> None:
    """``total`` samples per source (``unique`` distinct images cycled, so generation stays fast on big runs)."""
    from shardkit import Sample, jpeg_bytes, random_box, textured_image, write_shards

    rng = np.random.default_rng(seed)
    stills, pairs = [], []
    for _ in range(unique):
        img = textured_image(rng, w, h)
        stills.append((jpeg_bytes(img), random_box(rng, w, h)[None]))
        dx, dy = rng.integers(-12, 13, 2)
        prev = np.roll(img, (int(dy), int(dx)), axis=(0, 1))  # the next frame: the scene moved a little
        pb = random_box(rng, w, h)
        cb = pb + np.array([dx, dy, dx, dy], np.float32)
        cb = np.clip(cb, 0, [w, h, w, h]).astype(np.float32)
        pairs.append((jpeg_bytes(img), np.stack([pb, cb]), jpeg_bytes(prev)))
    s_img = [Sample(f"img{i:06d}", *stills[i % unique]) for i in range(total)]
    s_alov = [
        Sample(f"vid{i:06d}", pairs[i % unique][0], pairs[i % unique][1], prev=pairs[i % unique][2])
        for i in range(total)
    ]
    write_shards(out, "imagenet", s_img, per_tar=256)
    write_shards(out, "alov", s_alov, per_tar=256)


def load_pairs(shards: Path, limit: int) -> list[tuple[bytes, bytes | None, np.ndarray]]:
    """(curr.jpg, prev.jpg or None, boxes) of the first ``limit`` samples per source, alternating sources."""
    per_src = []
    for src in ("imagenet", "alov"):
        got: dict[str, dict[str, bytes]] = {}
        for tar in sorted(shards.glob(f"{src}-train-*.tar")):
            with tarfile.open(tar) as tf:
                for m in tf:
                    key, ext = m.name.split(".", 1)
                    got.setdefault(key, {})[ext] = tf.extractfile(m).read()
            if len(got) >= limit:
                break
        per_src.append(
            [
                (d["curr.jpg"], d.get("prev.jpg"), np.load(__import__("io").BytesIO(d["boxes.npy"])))
                for d in list(got.values())[:limit]
            ]
        )
    return [p for ab in zip(*per_src, strict=True) for p in ab]


# ----------------------------------------------------------------------------------------------------------------
# the seed's inline loop
# ----------------------------------------------------------------------------------------------------------------


def seed_pair(curr_jpg: bytes, prev_jpg: bytes | None, boxes: np.ndarray, rng, k: int, normalise: bool):
    """One pair -> (target (1+k,3,227,227), search (1+k,3,227,227), bbox (1+k,4)), the seed's examples tidied."""
    import cv2

    curr = cv2.imdecode(np.frombuffer(curr_jpg, np.uint8), cv2.IMREAD_COLOR)
    prev = cv2.imdecode(np.frombuffer(prev_jpg, np.uint8), cv2.IMREAD_COLOR) if prev_jpg else curr
    H, W = curr.shape[:2]
    pb, cb = boxes[0].astype(np.float64), boxes[-1].astype(np.float64)
    size = (G.INPUT_SIZE, G.INPUT_SIZE)

    def crop(img, box):
        canvas, geom = G.crop_pad_image(img, box)
        return cv2.resize(canvas, size, interpolation=cv2.INTER_LINEAR), geom

    tgt, _ = crop(prev, pb)
    centres = np.concatenate([pb[None], G.shift_boxes(cb, W, H, rng, k).boxes])
    search, bbox = [], []
    for b in centres:
        s, geom = crop(curr, b)
        search.append(s)
        bbox.append(G.recenter_scale(cb, geom))
    search = np.stack(search)
    if normalise:
        tgt = tgt.astype(np.float32) - CAFFE_MEAN_BGR
        search = search.astype(np.float32) - CAFFE_MEAN_BGR
    tgt = np.ascontiguousarray(np.broadcast_to(tgt.transpose(2, 0, 1), (1 + k, 3) + size))
    return tgt, np.ascontiguousarray(search.transpose(0, 3, 1, 2)), np.asarray(bbox, np.float32)


def seed_pair_as_written(curr_jpg: bytes, prev_jpg: bytes | None, boxes: np.ndarray, rng, k: int, normalise: bool):
    """One pair as the seed (pygoturn master, ``train.make_transformed_samples``) really makes it.

    Its per-pair work, re-expressed with this repo's geometry: every ``get_orig_sample`` call decodes the JPEG
    again (cv2 + BGR->RGB): 2 decodes for an ImageNet still, 5 for an ALOV pair (``get_sample`` reads each frame
    twice); all 11 examples crop *and* resize their target again; resizes are ``cv2.INTER_CUBIC``; each example's
    two crops go through a freshly built ``ToTensor() + Normalize(ImageNet)`` and are copied into preallocated
    (11, 3, S, S) batch tensors; one ``BoundingBox::Shift`` per example. (The seed trains at 224 px; 227 here so
    both sides make the same output.)
    """
    import cv2
    from torchvision import transforms

    from model.preprocess import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    assert normalise, "the seed always normalises"
    size = (G.INPUT_SIZE, G.INPUT_SIZE)

    def imread(jpg: bytes) -> np.ndarray:
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def example(target_img, target_box, search_img, search_box, gt_box):
        t, _ = G.crop_pad_image(target_img, target_box)
        s, g = G.crop_pad_image(search_img, search_box)
        t = cv2.resize(t, size, interpolation=cv2.INTER_CUBIC)
        s = cv2.resize(s, size, interpolation=cv2.INTER_CUBIC)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)])
        return tf(t), tf(s), torch.from_numpy(G.recenter_scale(gt_box, g)).float()

    pb, cb = boxes[0].astype(np.float64), boxes[-1].astype(np.float64)
    x1 = torch.empty(1 + k, 3, *size)
    x2 = torch.empty(1 + k, 3, *size)
    y = torch.empty(1 + k, 4)
    orig = imread(curr_jpg)  # make_transformed_samples: get_orig_sample(idx)
    H, W = orig.shape[:2]
    if prev_jpg is not None:  # ALOVDataset.get_sample: curr twice, prev twice
        curr, _ = imread(curr_jpg), imread(curr_jpg)
        _, prev = imread(prev_jpg), imread(prev_jpg)
        x1[0], x2[0], y[0] = example(prev, pb, curr, pb, cb)
    else:  # ILSVRC2014_DET_Dataset.get_sample: one more read, a shifted "true" example
        img = imread(curr_jpg)
        x1[0], x2[0], y[0] = example(img, cb, img, G.shift_boxes(cb, W, H, rng, 1).boxes[0], cb)
    for i in range(k):  # shift_crop_training_sample + crop_sample of the current frame, per example
        shifted = G.shift_boxes(cb, W, H, rng, 1).boxes[0]
        x1[i + 1], x2[i + 1], y[i + 1] = example(orig, cb, orig, shifted, cb)
    return x1, x2, y


def bench_seed(pairs, n: int, repeats: int, k: int, normalise: bool, fn=seed_pair) -> tuple[list[float], list[float]]:
    """(examples/s, examples per CPU-second) of ``repeats`` runs of ``n`` pairs each (after one warm-up pair)."""
    rng = np.random.default_rng(0)
    it = itertools.cycle(pairs)
    fn(*next(it), rng, k, normalise)
    rates, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn(*next(it), rng, k, normalise)
        rates.append(n * (1 + k) / (time.perf_counter() - t0))
        cpu.append(n * (1 + k) / (time.process_time() - c0))
    return rates, cpu


# ----------------------------------------------------------------------------------------------------------------
# DALI
# ----------------------------------------------------------------------------------------------------------------


def bench_dali(
    shards: Path,
    device: str,
    output: str,
    ppb: int,
    threads: int,
    batches: int,
    repeats: int,
    k: int,
    first_epoch: int = 0,
    **kw,
) -> tuple[list[float], list[float]]:
    """(examples/s, per CPU-second) over ``repeats`` epochs from ``first_epoch``: each 3 warm-up batches (build,
    prefetch) + ``batches``.

    CPU time is the whole process's (DALI's worker threads included), so it shows efficiency independent of how
    busy the machine is; wall-clock is what a trainer gets.
    """
    loader = GoturnLoader(shards, device=device, pairs_per_batch=ppb, k=k, num_threads=threads, output=output, **kw)
    if len(loader) < 3 + batches:
        raise SystemExit(f"need {3 + batches} batches per epoch, the shards give {len(loader)}")
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    rates, cpu = [], []
    for r in range(first_epoch, first_epoch + repeats):
        loader.set_epoch(r)
        it = iter(loader)
        for _ in range(3):
            b = next(it)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            b = next(it)
        sync()
        rates.append(batches * len(b["bbox"]) / (time.perf_counter() - t0))
        cpu.append(batches * len(b["bbox"]) / (time.process_time() - c0))
        del it
    assert b["search"].dtype == (torch.uint8 if output == "uint8" else torch.float32)
    loader.close()
    return rates, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--shards", type=Path, default=None, help="existing shards (default: generate)")
    ap.add_argument("--threads", type=int, default=None, help="DALI num_threads (default 2 cpu / 8 gpu)")
    ap.add_argument("--pairs-per-batch", type=int, default=None, help="default 32 cpu / 256 gpu")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per repeat (default 6 cpu / 12 gpu)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (every configuration once each)")
    ap.add_argument("--baseline-pairs", type=int, default=48, help="pairs per baseline repeat")
    ap.add_argument("--unique", type=int, default=48, help="distinct images per source")
    ap.add_argument("--skip-baseline", action="store_true")
    a = ap.parse_args(argv)
    gpu = a.device == "gpu"
    threads = a.threads or (8 if gpu else 2)
    ppb = a.pairs_per_batch or (256 if gpu else 32)
    batches = a.batches or (12 if gpu else 6)
    k = 10
    tmp = None
    shards = a.shards
    if shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_augment_")
        shards = Path(tmp.name)
        total = (4 + batches) * ppb // 2
        t0 = time.perf_counter()
        make_shards(shards, a.unique, total)
        print(
            f"generated {total} stills + {total} pairs (640x480 q90, {a.unique} distinct each) in "
            f"{time.perf_counter() - t0:.1f}s"
        )
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ncpu = len(os.sched_getaffinity(0))
    authors = {"sampling": "authors"}  # the trainer's default: pairs drawn as train.cpp draws them
    runs = {}  # row name, output -> one (examples/s, per CPU-s) measurement function for one round
    for output, extra, kw in (
        ("uint8", "", authors),
        ("uint8", " (epoch reader)", {"sampling": "epoch"}),
        ("uint8", " (channels_last)", {**authors, "channels_last": True}),
        ("float", "", authors),
    ):
        name = f"DALI {a.device}{extra}, {threads} threads, batch {ppb} pairs"
        runs[name, output] = lambda rnd, o=output, kw=kw: bench_dali(
            shards, a.device, o, ppb, threads, batches, 1, k, first_epoch=rnd, **kw
        )
    if not a.skip_baseline:
        import cv2

        pairs = load_pairs(shards, a.unique)
        name = "seed as written: pygoturn's per-pair work, 1 process"
        runs[name, "float"] = lambda rnd: bench_seed(pairs, a.baseline_pairs, 1, k, True, seed_pair_as_written)
        for norm in (True, False):
            name = f"tidied seed loop: cv2 decode+crop+resize, 1 process (cv2 threads {cv2.getNumThreads()})"
            runs[name, "float" if norm else "uint8"] = lambda rnd, norm=norm: bench_seed(
                pairs, a.baseline_pairs, 1, k, norm
            )
    got = {key: ([], []) for key in runs}
    for rnd in range(a.repeats):  # interleaved: round rnd measures every configuration once
        for key, run in runs.items():
            r, c = run(rnd)
            got[key][0].extend(r)
            got[key][1].extend(c)
    rows = [(n, o, *got[n, o]) for n, o in runs]
    short = {(n.split(",")[0].split(":")[0], o): r for n, o, r, _ in rows}  # per-round rates by short name
    med = {key: statistics.median(r) for key, r in short.items()}
    print(f"\nload average before/after: {load0} / {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {ncpu} CPUs")
    print(f"{'pipeline':<74} {'output':<7} {'examples/s median':>18} {'min':>7} {'max':>7} {'per CPU-s':>10}")
    for n, o, r, c in rows:
        print(
            f"{n:<74} {o:<7} {statistics.median(r):>18.0f} {min(r):>7.0f} {max(r):>7.0f} {statistics.median(c):>10.0f}"
        )
    head = med[("DALI " + a.device, "uint8")]
    if not a.skip_baseline:
        dali_u, seed_w = short["DALI " + a.device, "uint8"], short["seed as written", "float"]
        paired = [d / s for d, s in zip(dali_u, seed_w, strict=True)]
        seed_f = med[("seed as written", "float")]
        base_f, base_u = med[("tidied seed loop", "float")], med[("tidied seed loop", "uint8")]
        dali_f = med[("DALI " + a.device, "float")]
        print("\nratios (of medians; the RESULT ratio is the median of the per-round ratios):")
        print(
            f"  DALI uint8 (normalised later on the GPU) / seed as written : {head / seed_f:.2f}x   per round: "
            f"median {statistics.median(paired):.2f}x, range {min(paired):.2f}-{max(paired):.2f}x  <- RESULT ratio"
        )
        print(f"  DALI float32 / seed as written                             : {dali_f / seed_f:.2f}x")
        print(f"  DALI uint8 / tidied loop float32                           : {head / base_f:.2f}x")
        print(f"  DALI float32 / tidied loop float32 (same work on the CPU)  : {dali_f / base_f:.2f}x")
        print(f"  DALI uint8 / tidied loop uint8 (neither normalises)        : {head / base_u:.2f}x")
        epoch = med[(f"DALI {a.device} (epoch reader)", "uint8")]
        print(f"  DALI uint8: authors' sampling / epoch reader               : {head / epoch:.2f}x")
        ratio = f"{statistics.median(paired):.2f}"
    else:
        ratio = "n/a"
    if tmp is not None:
        tmp.cleanup()
    print(f"RESULT examples_per_s={head:.0f} examples/s ratio={ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
