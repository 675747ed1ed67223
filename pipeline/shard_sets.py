"""The shard sets a training loader reads: one per source of a split, with sample counts known up front.

Why up front: an epoch's length, equal on every DDP rank, and whether a source needs the still/pair branch of the
DALI graph must be known before any pipeline is built. Counts come from the DALI ``.idx`` files (one line per
sample, cheap) or, without them, from the tar headers. File names and member names follow `shards.format`, and
the tars of a build directory are `shards.dataset.shard_paths`' (the manifest's list when there is one).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shards.dataset import shard_paths
from shards.format import (
    MAX_INDEX_BYTES,
    MAX_MEMBER_BYTES,
    PREV,
    SOURCES,
    index_name,
    parse_shard_name,
    refuse_unsafe_tar,
    split_member_name,
)


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
    short_tars: tuple[str, ...] = ()  # tars shorter than their index says (a truncated copy): see GoturnLoader

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def entries(self) -> Iterator[tuple[int, str, dict[str, tuple[int, int]]]]:
        """(tar number, key, {ext: (data offset, size)}) of every sample, in tar order (`index_entries`)."""
        idxs = self.index_paths or (None,) * len(self.tars)
        for t, (tar, idx) in enumerate(zip(self.tars, idxs, strict=True)):
            for key, members in index_entries(tar, idx):
                yield t, key, members


def index_entries(tar: str | Path, idx: str | Path | None) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Per sample, in tar order: (key, {ext: (data offset, size)}), from the DALI ``.idx`` (cheap: one line per
    sample, ``ext offset size name`` per member) or, without one, the tar headers."""
    if idx is not None:
        return _read_index(Path(idx))
    refuse_unsafe_tar(tar)
    by_key: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(tar, "r:") as tf:  # plain tar, as v1 shards are
            for m in tf:
                key, ext = split_member_name(m.name)
                if m.isfile() and ext:
                    by_key.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError) as e:  # a truncated or empty copy, without the index that would say so
        raise ValueError(f"{tar}: not a readable tar ({e}): a partial copy? Copy it again or leave it out") from None
    return list(by_key.items())


def _count(token: str) -> bool:
    """An index number: ASCII digits, few enough for int() (it refuses over 4,300) and for any real tar."""
    return token.isdigit() and len(token) <= 18


def _read_index(idx: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Parse and check a ``.idx``: DALI trusts it (bad offsets crashed the process), so every member must be
    ``ext offset size name`` with a 512-aligned offset and a plausible size. A ValueError names the file and
    line. Whether the members lie inside the tar is the caller's question (a truncated copy: `find_shards`)."""
    if idx.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{idx}: {idx.stat().st_size} bytes, more than any shard's index ({MAX_INDEX_BYTES})")
    try:
        lines = idx.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{idx}: not a DALI wds2idx v1.x index (non-ASCII bytes)") from None
    head = lines[0].split() if lines else []
    if not head or not head[0].startswith("v1"):
        raise ValueError(f"{idx}: not a DALI wds2idx v1.x index")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        f = line.split()
        bad = not f or len(f) % 4 or not all(_count(t) for i, t in enumerate(f) if i % 4 in (1, 2))
        members = {} if bad else {f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)}
        if bad or any(o % 512 or n > MAX_MEMBER_BYTES for o, n in members.values()):
            raise ValueError(
                f"{idx}:{lineno}: not 'ext offset size name' members with 512-aligned offsets: {line[:200]!r} "
                "(a damaged or foreign index: delete it and rebuild it with python -m pipeline.build_shards, or "
                "DALI's wds2idx)"
            )
        out.append((split_member_name(f[3])[0], members))
    if len(head) > 1 and _count(head[1]) and int(head[1]) != len(out):  # DALI asserts on the mismatch
        raise ValueError(
            f"{idx}: its header counts {head[1]} samples, its lines {len(out)} (a cut or edited index: delete it and "
            "rebuild it with python -m pipeline.build_shards, or DALI's wds2idx)"
        )
    return out


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
        counts, pairs, stills, short = [], False, False, []
        for t, i in zip(tars, idxs, strict=True):
            entries = index_entries(t, i if have_idx else None)
            members = [set(exts) for _, exts in entries]
            if max((o + n for _, m in entries for o, n in m.values()), default=0) > t.stat().st_size:
                short.append(str(t))
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
                short_tars=tuple(short),
            )
        )
    return sets
