"""Read v1 shards with the ``webdataset`` library: `open_dataset` and the safe per-sample decoder.

Only the four v1 members are decoded, each by an explicit handler (PIL for JPEG,
``np.load(allow_pickle=False)`` for ``.npy``, ``json`` for ``.json``); unknown members are dropped undecoded,
so a shard can never make us unpickle anything. Shard lists are always absolute local paths, so no name is
ever interpreted as a ``pipe:`` URL.
"""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from shards.format import (
    BUILD_STATE_DIR,
    CURR,
    MANIFEST_NAME,
    MAX_PIXELS,
    META,
    PREV,
    layout_problems,
    parse_shard_name,
    read_manifest,
    refuse_unsafe_tar,
)


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> HxWx3 uint8 RGB; ValueError past the builder's pixel limit (a forged header's bomb)."""
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise ValueError(f"a {im.width}x{im.height} JPEG: more than any v1 image ({MAX_PIXELS} pixels)")
        return np.array(im.convert("RGB"))  # writable (torch.as_tensor warns on read-only arrays)


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw WebDataset sample (member bytes) -> ``{"__key__", "__url__", "curr", "prev", "boxes", "meta"}``.

    ``prev`` is None for ImageNet stills (their ``boxes`` is (1, 4)); pairs have ``boxes`` (2, 4) = [prev;
    curr].
    """
    key = sample.get("__key__")
    meta = json.loads(sample[META]) if META in sample else None
    if META in sample and not isinstance(meta, dict):
        raise ValueError(f"sample {key!r}: meta.json must hold an object")
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    # A pair cut short (a truncated tar read with a skipping handler) must not pass for a still.
    boxes, problems = layout_problems(members, meta.get("source") if meta else None)
    if problems:
        raise ValueError(f"sample {key!r}: {'; '.join(problems)} (truncated shard?)")
    return {
        "__key__": sample["__key__"],
        "__url__": sample.get("__url__"),
        "curr": decode_jpeg(sample[CURR]),
        "prev": decode_jpeg(sample[PREV]) if PREV in sample else None,
        "boxes": boxes,
        "meta": meta,
    }


def shard_paths(dir_or_pattern: str | os.PathLike, source: str | None = None, split: str | None = "train") -> list[str]:
    """Absolute shard paths: a build directory (its manifest's shard list), or a glob / brace pattern of tars.

    ``source`` / ``split`` filter by the v1 file name (``None`` = all); files named otherwise are kept only
    when given explicitly by a pattern. A directory without manifest is read as is (hand-made tars), unless it
    holds the builder's ``.build/``: then it is an unfinished (re)build, whose tars may mix two builds.
    """
    path = Path(dir_or_pattern)
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if manifest.is_file():
            names = [entry["file"] for entry in read_manifest(manifest)["shards"]]
        elif (path / BUILD_STATE_DIR).is_dir():
            raise FileNotFoundError(
                f"{path} holds an unfinished shard build: it has the builder's {BUILD_STATE_DIR}/ but no "
                f"{MANIFEST_NAME} (the build was interrupted or failed, and its tars may mix two builds); rerun "
                f"python -m pipeline.build_shards with the same arguments to resume it"
            )
        else:
            names = sorted(p.name for p in path.iterdir())
        files = [path / n for n in names if parse_shard_name(n)]
    else:
        files = []
        for pattern in braceexpand(str(dir_or_pattern)):
            hits = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            files += [Path(h) for h in hits]
    out = []
    for f in files:
        parsed = parse_shard_name(f.name)
        if parsed and ((source and parsed[0] != source) or (split and parsed[1] != split)):
            continue
        if not f.is_file():
            raise FileNotFoundError(f"no such shard folder or shard: {f}")
        with open(f, "rb") as fh:
            magic = fh.read(6)
        if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
            raise ValueError(
                f"{f}: a compressed tar (gzip / bzip2 / xz / zstd); shard format v1 is plain tar, which DALI indexes "
                "and readers can bound (webdataset would inflate every member whole)"
            )
        out.append(os.path.abspath(f))
    return out


def open_dataset(
    dir_or_pattern: str | os.PathLike,
    source: str | None = None,
    split: str | None = "train",
    *,
    shardshuffle: int | bool = False,
    resampled: bool = False,
    seed: int | None = None,
    handler: Any = None,
) -> Any:
    """A ``webdataset.WebDataset`` pipeline of decoded samples (see `decode_sample`).

    Shards are split across ranks with ``wds.split_by_node`` and across DataLoader workers with
    ``wds.split_by_worker``, per shard: a worker left without a shard yields nothing (``empty_check=False``:
    more workers than shards is no error), so spread data over at least ranks x workers shards to use them all.
    Ranks then hold different sample counts: under DDP use ``resampled=True`` and ``.with_epoch(n)`` so every
    rank runs the same number of steps (SCHEMA.md).
    ``shardshuffle``: a shard-shuffle buffer size (False = file order, True = 100); ``seed``: its seed, and with
    ``resampled=True`` the resampling's (the same draws every run, distinct per rank and worker); ``handler``:
    a webdataset error handler (default: raise), e.g. ``wds.warn_and_continue`` to skip bad samples.
    """
    import webdataset as wds

    urls = shard_paths(dir_or_pattern, source, split)
    if not urls:
        raise FileNotFoundError(f"no shards for source={source!r} split={split!r} in {dir_or_pattern}")
    for url in urls:  # webdataset hands them to tarfile's "r|*", which inflates any compression it recognises
        refuse_unsafe_tar(url)  # (lzma's old format has no magic number) and reads members whole
    handler = handler or wds.reraise_exception
    if resampled and seed is not None:
        # wds.WebDataset(resampled=True) ignores ``seed`` (its shard sampler seeds from the pid and the clock):
        # build the same pipeline with a seeded, deterministic sampler, distinct per rank and worker.
        shards = wds.ResampledShards(urls, seed=seed, deterministic=True)
        return wds.DataPipeline(
            shards, wds.tarfile_to_samples(handler=handler), wds.map(decode_sample, handler=handler)
        )
    if shardshuffle is True:
        shardshuffle = 100
    ds = wds.WebDataset(
        urls,
        shardshuffle=int(shardshuffle) if shardshuffle else False,
        resampled=resampled,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        handler=handler,
        seed=seed,
        empty_check=False,
    )
    return ds.map(decode_sample, handler=handler)
