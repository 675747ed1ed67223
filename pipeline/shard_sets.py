"""The shard sets a training loader reads: one per source of a split, with sample counts known up front.

Why up front: an epoch's length, equal on every DDP rank, and whether a source needs the still/pair branch of the
DALI graph must be known before any pipeline is built. Counts come from the DALI ``.idx`` files (one line per
sample, cheap) or, without them, from the tar headers. File names and member names follow `shards.format`, and
the tars of a build directory are `shards.dataset.shard_paths`' (the manifest's list when there is one).
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shards.dataset import shard_paths
from shards.format import PREV, SOURCES, index_name, parse_shard_name, split_member_name


@dataclass(frozen=True)
class ShardSet:
    """The tars of one source and split, with their sample counts and what kind of samples they hold."""

    source: str
    split: str
    tars: tuple[str, ...]
    index_paths: tuple[str, ...] | None  # None when any .idx is missing (DALI then infers the index)
    counts: tuple[int, ...]
    has_pairs: bool  # some sample has prev.jpg
    has_stills: bool  # some sample lacks prev.jpg

    @property
    def num_samples(self) -> int:
        return sum(self.counts)


def index_entries(tar: str | Path, idx: str | Path | None) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Per sample, in tar order: (key, {ext: (data offset, size)}), from the DALI ``.idx`` (cheap: one line per
    sample, ``ext offset size name`` per member) or, without one, the tar headers."""
    if idx is not None:
        lines = Path(idx).read_text().splitlines()
        head = lines[0].split() if lines else []
        if not head or not head[0].startswith("v1"):
            raise ValueError(f"{idx}: not a DALI wds2idx v1.x index")
        out = []
        for line in lines[1:]:
            f = line.split()
            members = {f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f) - 3, 4)}
            out.append((split_member_name(f[3])[0], members))
        return out
    by_key: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            key, ext = split_member_name(m.name)
            if m.isfile() and ext:
                by_key.setdefault(key, {})[ext] = (m.offset_data, m.size)
    return list(by_key.items())


def find_shards(shards: str | Path, split: str = "train", sources: Sequence[str] | None = None) -> list[ShardSet]:
    """The shard sets of ``split`` under ``shards`` (format v1 names), one per source, in the authors' order."""
    root = Path(shards)
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory {root} does not exist")
    found: dict[str, list[Path]] = {}
    for p in sorted(map(Path, shard_paths(root, split=split)), key=lambda p: p.name):
        found.setdefault(parse_shard_name(p.name)[0], []).append(p)
    wanted = list(sources) if sources is not None else [s for s in SOURCES if s in found]
    if not wanted:
        raise FileNotFoundError(f"no '{{source}}-{split}-NNNNNN.tar' shards in {root}")
    sets = []
    for src in wanted:
        tars = found.get(src)
        if not tars:
            raise FileNotFoundError(f"no {src}-{split}-*.tar shards in {root}")
        idxs = [t.with_name(index_name(t.name)) for t in tars]
        have_idx = all(i.is_file() for i in idxs)
        counts, pairs, stills = [], False, False
        for t, i in zip(tars, idxs, strict=True):
            members = [set(exts) for _, exts in index_entries(t, i if have_idx else None)]
            counts.append(len(members))
            pairs |= any(PREV in s for s in members)
            stills |= any(PREV not in s for s in members)
        sets.append(
            ShardSet(
                source=src,
                split=split,
                tars=tuple(str(t) for t in tars),
                index_paths=tuple(str(i) for i in idxs) if have_idx else None,
                counts=tuple(counts),
                has_pairs=pairs,
                has_stills=stills,
            )
        )
    return sets
