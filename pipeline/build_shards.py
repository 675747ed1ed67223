"""Build GOTURN training shards (format v1) from ImageNet DET 2014 and ALOV300++.

``python -m pipeline.build_shards --help``; console script ``goturn-build-shards``.

Stages, so one example can be followed from annotation to tar member:
1. plan (`pipeline.plan`, with `pipeline.imagenet_det` / `pipeline.alov` applying the authors' rules): every
   sample, seeded shuffle per source/split, assignment to shards by estimated size -- all before any decode;
2. per sample, in worker processes (`pipeline.sample_build`): full image decode (`pipeline.image_check`),
   final boxes (rescale, clip), members ``curr.jpg`` / ``prev.jpg`` / ``boxes.npy`` / ``meta.json``;
3. in this process, in planned order: deterministic tar + DALI index (`shards.tarwriter`), written under a
   temporary name, fsynced and renamed; a per-shard record in ``{out}/.build/`` makes the build resumable;
4. ``manifest.json`` (`pipeline.accounting`), written last: its presence means the build is complete.

Re-running with the same inputs and arguments reuses every shard whose record, plan hash and sha256 still
match and rewrites the rest, so a killed build ends byte-identical to an uninterrupted one. ``--out`` is owned
by the builder: stale ``{source}-{split}-NNNNNN.tar/.idx`` files that the current plan does not produce are
removed, and shard-named files it has no record of and its manifest does not list (someone else's) stop the
build unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.accounting import assemble
from pipeline.alov import VAL_FRACTION
from pipeline.plan import InputLayoutError, MapFn, ShardPlan, SourcePlan, assign_shards, plan_alov, plan_imagenet
from pipeline.sample_build import build_sample
from pipeline.workers import OrderedPool, WorkerDied
from shards.format import (
    BUILD_STATE_DIR,
    FORMAT_NAME,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    fsync_dir,
    index_name,
    parse_shard_name,
    read_manifest,
    sha256_file,
    tar_of_index,
)
from shards.tarwriter import TarShardWriter

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data" / "sample"
SAMPLE_OUT = REPO / "shards" / "sample"
PARTIAL = ".partial"
DEFAULT_SHARD_SIZE = "512MB"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


class BuildLocked(RuntimeError):
    """Another build holds the output directory's lock."""


class OutputInUse(RuntimeError):
    """``--out`` holds shards of a source this build does not read: building would delete them."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build depends on (``workers`` and ``progress`` do not change the output, so the manifest,
    a function of the inputs and the output-affecting options only, does not record them)."""

    out: Path
    imagenet_images: Path | None = None
    imagenet_annotations: Path | None = None
    alov_frames: Path | None = None
    alov_annotations: Path | None = None
    shard_size: int = 512 * 10**6
    workers: int = 1
    alov_val_fraction: float = VAL_FRACTION
    keep_vot_overlap: bool = False
    seed: int = 0
    progress: bool = True
    overwrite: bool = False  # allow deleting shards of sources this build does not read


@dataclass
class BuildReport:
    """The manifest, what this run did, where its time went (seconds; validate/encode summed over workers)."""

    manifest: dict[str, Any]
    workers: int = 1
    shards_written: int = 0
    shards_reused: int = 0
    images_decoded: int = 0
    removed: list[str] = field(default_factory=list)  # shard / index files of earlier builds deleted from --out
    timings: dict[str, float] = field(default_factory=dict)


def parse_size(text: str) -> int:
    """``512MB`` -> 512e6, ``1GiB`` -> 2**30, ``4096`` -> 4096 bytes."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 512MB, 1GiB, 100000)")
    num, unit, binary = float(m[1]), m[2].upper(), bool(m[3])
    power = " KMGT".index(unit) if unit else 0
    value = int(num * (1024 if binary else 1000) ** power)
    if value < 1:
        raise argparse.ArgumentTypeError("shard size must be at least 1 byte")
    return value


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + PARTIAL)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# Resume records
# ------------------------------------------------------------------------------------------------------------


def _record_path(out: Path, name: str) -> Path:
    return out / BUILD_STATE_DIR / (name[: -len(".tar")] + ".json")


def reusable_record(out: Path, shard: ShardPlan) -> dict[str, Any] | None:
    """The shard's record when the files on disk are exactly what this plan would write (sha256 checked)."""
    try:
        rec = json.loads(_record_path(out, shard.name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("plan_hash") != shard.plan_hash or not rec.keys() >= RECORD_KEYS:
        return None
    tar, idx = out / shard.name, out / index_name(shard.name)
    try:  # a record edited or torn by hand: rebuild the shard rather than fail every rerun on it
        if rec["samples"] == 0:
            return rec
        if tar.stat().st_size != rec["bytes"] or sha256_file(tar) != rec["sha256"]:
            return None
        if hashlib.sha256(idx.read_bytes()).hexdigest() != rec["index_sha256"]:
            return None
    except (OSError, KeyError, TypeError):
        return None
    return rec


RECORD_KEYS = frozenset(
    {"name", "plan_hash", "failed", "converted", "rescaled", "clipped", "samples", "bytes", "sha256", "index_sha256"}
)  # every key `write_shard` stores: a record lacking one (edited by hand) is not reused


def write_shard(out: Path, shard: ShardPlan, outcomes: Any, bar: tqdm, times: dict[str, float]) -> dict[str, Any]:
    """Write one shard from its outcomes (in planned order); returns its resume record."""
    tar, idx = out / shard.name, out / index_name(shard.name)
    tmp = out / (shard.name + PARTIAL)
    rec: dict[str, Any] = {"name": shard.name, "plan_hash": shard.plan_hash, "failed": {}, "converted": []}
    rec.update(rescaled=[], clipped=[])
    with open(tmp, "wb") as f:
        writer = TarShardWriter(f)
        for s in shard.samples:
            o = next(outcomes)
            if o.key != s.key:
                raise RuntimeError(f"out-of-order result {o.key} for {s.key}")
            times["validate"] += o.t_validate
            times["encode"] += o.t_encode
            t = time.perf_counter()
            if o.members is None:
                rec["failed"][o.key] = [list(fl) for fl in o.failures]
            else:
                writer.add_sample(o.key, o.members)
                rec["converted"] += [list(c) for c in o.converted]
                if o.rescaled:
                    rec["rescaled"].append(o.key)
                rec["clipped"] += [[o.key, r] for r in o.clipped]
            times["write"] += time.perf_counter() - t
            bar.update(1)
        t = time.perf_counter()
        summary = writer.close()
        f.flush()
        os.fsync(f.fileno())
    rec.update(samples=summary.samples, bytes=summary.bytes, sha256=summary.sha256)
    if summary.samples == 0:  # every planned sample was rejected: no file (DALI cannot index an empty tar)
        tmp.unlink()
        rec.update(bytes=0, sha256=None, index_sha256=None)
    else:
        index = summary.index.encode()
        idx_tmp = out / (idx.name + PARTIAL)
        with open(idx_tmp, "wb") as f:
            f.write(index)
            f.flush()
            os.fsync(f.fileno())
        rec["index_sha256"] = hashlib.sha256(index).hexdigest()
    # The record first: a build killed between the two leaves a recorded name (ours, rebuilt on resume since
    # its sha256 does not match), never a shard file without a record (`_check_ownership` would call it foreign).
    _atomic_write(_record_path(out, shard.name), json.dumps(rec, sort_keys=True).encode())
    if summary.samples:
        fsync_dir(out / BUILD_STATE_DIR)  # the record's rename survives a power cut before the shard's does
        os.replace(tmp, tar)
        os.replace(idx_tmp, idx)
    times["write"] += time.perf_counter() - t
    return rec


def _clean_stale(out: Path, keep: set[str], planned: set[str]) -> list[str]:
    """Remove shard/index files and records from earlier builds that the current plan does not produce; returns
    the names of the shard and index files removed (the CLI lists them)."""
    removed = []
    for p in sorted(out.iterdir()):
        name = tar_of_index(p.name)
        if parse_shard_name(name) and name not in keep:
            p.unlink()
            removed.append(p.name)
    for p in (out / BUILD_STATE_DIR).glob("*.json"):
        if p.stem + ".tar" not in planned:
            p.unlink()
    return removed


# ------------------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------------------


def _arguments(cfg: BuildConfig) -> dict[str, Any]:
    def s(p: Path | None) -> str | None:
        return None if p is None else str(p)

    return {
        "imagenet_images": s(cfg.imagenet_images),
        "imagenet_annotations": s(cfg.imagenet_annotations),
        "alov_frames": s(cfg.alov_frames),
        "alov_annotations": s(cfg.alov_annotations),
        "out": str(cfg.out),
        "shard_size": cfg.shard_size,
        "alov_val_fraction": cfg.alov_val_fraction,
        "keep_vot_overlap": cfg.keep_vot_overlap,
        "seed": cfg.seed,
    }


def build(cfg: BuildConfig) -> BuildReport:
    """Plan, write (or reuse) every shard, then write the manifest. Safe to re-run after any interruption."""
    t_start = time.perf_counter()
    out = cfg.out
    created = not out.exists()
    _check_out(cfg)
    ours = (out / BUILD_STATE_DIR).is_dir()
    if not ours:  # checked before .build/ exists: a refused folder is left as it was
        _check_ownership(cfg)
    (out / BUILD_STATE_DIR).mkdir(parents=True, exist_ok=True)
    lock = open(out / BUILD_STATE_DIR / "lock", "w")  # noqa: SIM115 - held for the whole build
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BuildLocked(f"another build is writing to {out}") from None
    try:
        if ours:  # under the lock: a build running now cannot be mistaken for someone else's files
            _check_ownership(cfg)
        _check_foreign_shards(cfg)
        for p in list(out.glob("*" + PARTIAL)) + list((out / BUILD_STATE_DIR).glob("*" + PARTIAL)):
            p.unlink()
        return _build_locked(cfg, t_start)
    except InputLayoutError:
        if created:  # refused while planning: leave no empty --out (with only .build/lock) behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.close()


def _check_out(cfg: BuildConfig) -> None:
    """``--out`` must be a folder (or not exist yet)."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise OutputInUse(f"--out {cfg.out} is a file, not a folder: pass a folder (it is created if missing)")


def _check_ownership(cfg: BuildConfig) -> None:
    """Shard files in ``--out`` that no build of this tool wrote are someone else's, e.g. hand-made tars: a build
    would replace or delete them, so refuse unless ``overwrite``. Ours are those with a record in ``.build/``
    (written before a shard's rename, so a killed build leaves none unrecorded; `_adopt_listed` gives the shards
    of a manifest one before the manifest goes) or listed in ``manifest.json``."""
    out = cfg.out
    if not out.is_dir() or cfg.overwrite:
        return
    ours = {p.stem + ".tar" for p in (out / BUILD_STATE_DIR).glob("*.json")}
    with contextlib.suppress(OSError, ValueError):  # no manifest (interrupted or first build), or unreadable
        ours |= {e["file"] for e in read_manifest(out / MANIFEST_NAME)["shards"]}
    theirs = sorted(
        p.name for p in out.iterdir() if parse_shard_name(tar_of_index(p.name)) and tar_of_index(p.name) not in ours
    )
    if theirs:
        raise OutputInUse(
            f"{out} holds shard files that no build of this tool wrote ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}: no record in {BUILD_STATE_DIR}/, not in {MANIFEST_NAME}): a build "
            "would replace or delete them. Use another --out, or pass --overwrite to replace them."
        )


def _adopt_listed(out: Path) -> None:
    """Before the manifest is removed, give each shard it lists and ``.build/`` has no record of (a folder copied
    without ``.build/``) a stub record: not reusable (the shard is rebuilt, as without one), but it keeps the
    file the builder's own if this build is killed before rewriting it."""
    try:
        listed = [e["file"] for e in read_manifest(out / MANIFEST_NAME)["shards"]]
    except (OSError, ValueError):
        return
    for name in listed:
        if parse_shard_name(name) and not _record_path(out, name).exists():
            _atomic_write(_record_path(out, name), json.dumps({"name": name, "adopted": True}).encode())
    fsync_dir(out / BUILD_STATE_DIR)


def _check_foreign_shards(cfg: BuildConfig) -> None:
    """``--out`` is the builder's (stale shards are removed), so shards of a source this build does not read,
    e.g. an ImageNet build followed by an ALOV-only command, would be deleted: refuse unless ``overwrite``."""
    reads = {src for src, ann in (("imagenet", cfg.imagenet_annotations), ("alov", cfg.alov_annotations)) if ann}
    found = sorted({parsed[0] for p in cfg.out.iterdir() if (parsed := parse_shard_name(p.name))} - reads)
    if found and not cfg.overwrite:
        raise OutputInUse(
            f"{cfg.out} holds {' and '.join(found)} shards, which this build (reading {' and '.join(sorted(reads))}) "
            f"would delete. Build every source in one command (as the README shows), use another --out, or pass "
            f"--overwrite to replace them."
        )


def _build_locked(cfg: BuildConfig, t_start: float) -> BuildReport:
    out = cfg.out
    times = {"parse": 0.0, "validate": 0.0, "encode": 0.0, "write": 0.0, "verify_kept": 0.0}
    report = BuildReport({}, workers=cfg.workers)
    with OrderedPool(cfg.workers) as pool:
        t = time.perf_counter()
        plans: list[SourcePlan] = []
        if cfg.imagenet_annotations is not None and cfg.imagenet_images is not None:
            xml_map = _progress_map(pool, "parse xml", cfg.progress)
            plans.append(plan_imagenet(cfg.imagenet_images, cfg.imagenet_annotations, xml_map))
        if cfg.alov_annotations is not None and cfg.alov_frames is not None:
            plans.append(plan_alov(cfg.alov_frames, cfg.alov_annotations, cfg.alov_val_fraction, cfg.keep_vot_overlap))
        shards = assign_shards([s for p in plans for s in p.samples], cfg.seed, cfg.shard_size)
        times["parse"] = time.perf_counter() - t
        # no manifest until this build is complete (removed only now: a plan that fails leaves a build intact)
        _adopt_listed(out)
        (out / MANIFEST_NAME).unlink(missing_ok=True)

        t = time.perf_counter()
        records: dict[str, dict[str, Any]] = {}
        todo: list[ShardPlan] = []
        for sh in shards:
            rec = reusable_record(out, sh)
            if rec is None:
                todo.append(sh)
            else:
                records[sh.name] = rec
        times["verify_kept"] = time.perf_counter() - t
        report.shards_reused = len(records)

        total = sum(len(sh.samples) for sh in todo)
        report.images_decoded = sum(len(s.images) for sh in todo for s in sh.samples)
        with tqdm(total=total, desc="shards", unit="sample", disable=not cfg.progress or None) as bar:
            outcomes = pool.map(build_sample, (s for sh in todo for s in sh.samples), chunk=8)
            for sh in todo:
                records[sh.name] = write_shard(out, sh, outcomes, bar, times)
        report.shards_written = len(todo)

    keep = {sh.name for sh in shards if records[sh.name]["samples"] > 0}
    report.removed = _clean_stale(out, keep, {sh.name for sh in shards})
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "arguments": _arguments(cfg),
    }
    sections = assemble(plans, shards, records)
    manifest["counts"] = sections.pop("counts")
    manifest["accounting"] = sections.pop("accounting")
    manifest["shards"] = [
        {
            "file": sh.name,
            "samples": records[sh.name]["samples"],
            "bytes": records[sh.name]["bytes"],
            "sha256": records[sh.name]["sha256"],
            "index": index_name(sh.name),
            "source": sh.source,
            "split": sh.split,
        }
        for sh in shards
        if sh.name in keep
    ]
    manifest.update(sections)
    _atomic_write(out / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    times["total"] = time.perf_counter() - t_start
    report.manifest = manifest
    report.timings = times
    return report


def _progress_map(pool: OrderedPool, desc: str, enabled: bool) -> MapFn:
    """The pool's ordered map, with a progress bar over the items."""

    def map_fn(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        yield from tqdm(pool.map(fn, items, chunk=64), desc=desc, unit="file", disable=not enabled or None)

    return map_fn


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> BuildConfig:
    p = argparse.ArgumentParser(
        prog="goturn-build-shards",
        description="Build GOTURN WebDataset shards (format v1) from ImageNet DET 2014 and ALOV300++. "
        "With no source arguments, builds the embedded sample data into shards/sample/.",
    )
    p.add_argument("--imagenet-images", type=Path, help="ILSVRC2014_DET_train (images as <folder>/<name>.JPEG)")
    p.add_argument("--imagenet-annotations", type=Path, help="ILSVRC2014_DET_bbox_train (<subfolder>/*.xml)")
    p.add_argument("--alov-frames", type=Path, help="imagedata++ (<category>/<video>/*.jpg)")
    p.add_argument("--alov-annotations", type=Path, help="alov300++_rectangleAnnotation_full (<category>/*.ann)")
    p.add_argument("--out", type=Path, help="output directory (default for the sample: shards/sample)")
    p.add_argument(
        "--shard-size",
        type=parse_size,
        default=parse_size(DEFAULT_SHARD_SIZE),
        help="target bytes per shard, e.g. 512MB (10^6) or 1GiB (2^30); default %(default)s bytes",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes (default: all CPUs)")
    p.add_argument(
        "--alov-val-fraction",
        type=float,
        default=VAL_FRACTION,
        help=f"last int(f*n) videos per ALOV category go to val (authors: {VAL_FRACTION}; 0 for the release model)",
    )
    p.add_argument("--keep-vot-overlap", action="store_true", help="keep the 7 ALOV videos that overlap VOT-2014")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow replacing or deleting shards in --out that this build did not write: another source's, or "
        "hand-made ones (refused otherwise)",
    )
    a = p.parse_args(argv)
    for x, y in (("imagenet_images", "imagenet_annotations"), ("alov_frames", "alov_annotations")):
        if (getattr(a, x) is None) != (getattr(a, y) is None):
            p.error(f"--{x.replace('_', '-')} and --{y.replace('_', '-')} go together")
    if not 0 <= a.alov_val_fraction < 1:
        p.error("--alov-val-fraction must be in [0, 1)")
    if a.workers < 1:
        p.error("--workers must be >= 1")
    sources = [a.imagenet_images, a.imagenet_annotations, a.alov_frames, a.alov_annotations]
    if all(s is None for s in sources):
        from pipeline.make_sample_data import ensure_sample_data, shard_sources

        ensure_sample_data(SAMPLE_DATA, seed=0, size="medium")
        for option, folder in shard_sources(SAMPLE_DATA).items():
            setattr(a, option, folder)
        a.out = a.out or SAMPLE_OUT
    elif a.out is None:
        p.error("--out is required when sources are given")
    for s in (a.imagenet_images, a.imagenet_annotations, a.alov_frames, a.alov_annotations):
        if s is not None and not s.is_dir():
            p.error(f"not a directory: {s}")
    return BuildConfig(
        out=a.out,
        imagenet_images=a.imagenet_images,
        imagenet_annotations=a.imagenet_annotations,
        alov_frames=a.alov_frames,
        alov_annotations=a.alov_annotations,
        shard_size=a.shard_size,
        workers=a.workers,
        alov_val_fraction=a.alov_val_fraction,
        keep_vot_overlap=a.keep_vot_overlap,
        seed=a.seed,
        progress=not a.no_progress,
        overwrite=a.overwrite,
    )


def summary_text(report: BuildReport) -> str:
    """Human-readable summary: counts per source/split, skipped inputs by reason, shards, timings."""
    m = report.manifest
    lines = []
    for source, splits in m["counts"].items():
        for split, c in splits.items():
            lines.append(f"{source:9s} {split:5s} " + " ".join(f"{k}={v}" for k, v in c.items()))
    for source, acc in m["accounting"].items():
        for qty, q in acc.items():
            if isinstance(q, dict) and "total" in q:
                skipped = ", ".join(f"{k} {v}" for k, v in q["skipped"].items()) or "none"
                lines.append(f"{source:9s} {qty}: {q['total']} = {q['written']} written + skipped ({skipped})")
    n_bytes = sum(s["bytes"] for s in m["shards"])
    lines.append(
        f"shards: {len(m['shards'])} ({n_bytes / 1e6:.1f} MB; written {report.shards_written}, "
        f"reused {report.shards_reused}); skipped entries: {len(m['skipped'])}; "
        f"re-encoded: {len(m['reencoded'])}"
    )
    t = report.timings
    lines.append(
        f"time: total {t['total']:.2f}s, parse {t['parse']:.2f}s, validate {t['validate']:.2f} worker-s, "
        f"encode {t['encode']:.2f} worker-s, write {t['write']:.2f}s ({report.workers} workers)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``goturn-build-shards``)."""
    cfg = parse_args(argv)
    try:
        report = build(cfg)
    except (BuildLocked, InputLayoutError, OutputInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerDied as e:
        print(
            f"error: {e}. The build stopped; finished shards are kept: rerun the same command to resume "
            f"(with fewer --workers if memory ran out).",
            file=sys.stderr,
        )
        return 1
    print(summary_text(report))
    if report.removed:
        print(f"removed from {cfg.out} (earlier builds' files this plan does not produce): {', '.join(report.removed)}")
    print(f"manifest: {cfg.out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
