"""The authors' training-pair sampler: a uniform image (video), then a uniform object (pair) within it.

Why: ``train.cpp`` draws ``rand() % n_images`` then an object of that image, and ``rand() % n_videos`` then
``rand() % (n_ann - 1)`` (goturn_spec.md 3.1-3.2), with replacement. Reading every shard sample once per epoch
instead weights an image by its number of objects and a video by its number of pairs, i.e. by its length (ALOV300++
videos run from tens to thousands of frames, annotated every fifth). Shards hold one sample per object
(pair), so the group of a sample is its key without the last component (``imagenet/<folder>/<file>``,
``alov/<video>``; ``shards/SCHEMA.md``).

The draws of batch ``b`` are a pure function of ``(seed, b)``: any batch can be recomputed (resume, naming a
corrupt sample) without replaying the ones before it. Members are read with ``os.pread`` at the offsets of the
DALI ``.idx`` files (tar headers when an index is missing) and fed to the DALI graph by ``fn.external_source``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.bad_samples import READ_REQUIRED, member_problems
from pipeline.shard_sets import ShardSet
from shards.format import BOXES, CURR, PREV, layout_problems

MEMBERS = (PREV, CURR, BOXES)  # the external source's outputs, as the reader's READER_EXTS (stills: no PREV)
_EMPTY = np.zeros(0, dtype=np.uint8)


@dataclass(frozen=True)
class Draw:
    """One source's samples of one batch: global sample ids, their keys and shards."""

    ids: np.ndarray
    keys: list[str]
    tars: list[str]


class GroupSampler:
    """Samples of one shard set drawn as the authors draw them (see the module docstring).

    The index is built once; `feed` gives the per-epoch DALI source, called with the batch index.
    """

    def __init__(self, shard_set: ShardSet, batch_size: int) -> None:
        self._fds: dict[int, int] = {}  # tar index -> open descriptor, opened on first read
        self.batch_size = int(batch_size)
        self.tars = list(shard_set.tars)
        self.members = MEMBERS if shard_set.has_pairs else MEMBERS[1:]  # stills only: no prev.jpg output
        self.keys: list[str] = []
        tar_of, spans = [], []
        for t, key, members in shard_set.entries():
            self.keys.append(key)
            tar_of.append(t)
            spans.append([members.get(ext, (0, 0)) for ext in self.members])
        if not self.keys:
            raise ValueError(f"no samples in {self.tars}")
        self.tar_of = np.asarray(tar_of, dtype=np.int64)
        self.spans = np.asarray(spans, dtype=np.int64)  # (n, members, (offset, size))
        _, group_of = np.unique([k.rsplit("/", 1)[0] for k in self.keys], return_inverse=True)
        self.group_members = np.argsort(group_of, kind="stable")  # sample ids, grouped
        self.group_size = np.bincount(group_of)
        self.group_start = np.concatenate([[0], np.cumsum(self.group_size)[:-1]])

    @property
    def num_groups(self) -> int:
        return len(self.group_size)

    def draw(self, seed: int, batch: int) -> Draw:
        """The samples of batch ``batch`` of stream ``seed``: uniform groups, a uniform member of each."""
        rng = np.random.default_rng([int(seed), int(batch)])
        g = rng.integers(self.num_groups, size=self.batch_size)
        m = (rng.random(self.batch_size) * self.group_size[g]).astype(np.int64)  # uniform in [0, size)
        ids = self.group_members[self.group_start[g] + m]
        return Draw(ids, [self.keys[i] for i in ids], [self.tars[self.tar_of[i]] for i in ids])

    def read(self, sample: int) -> list[np.ndarray]:
        """The raw bytes of `members` (empty when the sample lacks one)."""
        t = int(self.tar_of[sample])
        fd = self._fds.get(t)
        if fd is None:
            fd = self._fds[t] = os.open(self.tars[t], os.O_RDONLY)
        out = []
        for ext, (offset, size) in zip(self.members, self.spans[sample], strict=True):
            data = os.pread(fd, int(size), int(offset)) if size else b""
            if len(data) != size:
                raise OSError(
                    f"{self.tars[t]}: short read of {self.keys[sample]}.{ext} ({len(data)} of {size} bytes at offset "
                    f"{offset}; truncated shard?)"
                )
            out.append(np.frombuffer(data, dtype=np.uint8) if size else _EMPTY)
        return out

    def feed(self, seed: int) -> _Feed:
        """The DALI ``external_source`` of stream ``seed``: batch ``i`` -> its members, one list per output."""
        return _Feed(self, int(seed))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


class _Feed:
    """A one-argument callable, so DALI passes the batch index and restores it from a checkpoint."""

    def __init__(self, sampler: GroupSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    @property
    def num_outputs(self) -> int:
        return len(self.sampler.members)

    def __call__(self, batch: int) -> tuple[list[np.ndarray], ...]:
        """Batch ``batch``'s members. An unreadable sample (truncated shard, I/O error), or one whose boxes break
        the v1 layout (NaN, inverted, a pair with one box: DALI would train on them), is fed empty, so DALI fails
        this batch as it fails a corrupt JPEG and the loader names the sample; raising here instead would leave
        DALI's batch counter behind (every later batch would retry this one)."""
        cols: tuple[list[np.ndarray], ...] = tuple([] for _ in self.sampler.members)
        for i in self.sampler.draw(self.seed, batch).ids:
            try:
                members = self.sampler.read(int(i))
            except OSError:
                members = [_EMPTY] * len(cols)
            if layout_problems(present_members(self.sampler.members, members), None, READ_REQUIRED)[1]:
                members = [_EMPTY] * len(cols)
            for col, data in zip(cols, members, strict=True):
                col.append(data)
        return cols


def present_members(exts: Sequence[str], raw: Sequence[np.ndarray]) -> dict[str, memoryview]:
    """The non-empty members of one read sample, as `shards.format.layout_problems` takes them (no copies)."""
    return {ext: a.data for ext, a in zip(exts, raw, strict=True) if a.size}


def stream_seed(seed: int, epoch: int, shard_id: int, source_index: int) -> int:
    """Each rank, epoch and source draws its own stream, as the authors' one process draws with replacement."""
    return int(np.random.SeedSequence([seed, epoch, shard_id, source_index, 0x5A]).generate_state(1)[0])


def drawn_problems(sampler: GroupSampler, seed: int, batch: int) -> list[tuple[str, str, list[str]]]:
    """(tar, key, problems) of every broken sample of one drawn batch, for `pipeline.bad_samples.explain`."""
    d = sampler.draw(seed, batch)
    bad = []
    for sample, key, tar in zip(d.ids, d.keys, d.tars, strict=True):
        try:
            raw = sampler.read(int(sample))
        except OSError as e:  # truncated shard, vanished file: the sample cannot be read at all
            bad.append((tar, key, [f"unreadable ({str(e).removeprefix(f'{tar}: ')})"]))
            continue
        problems = member_problems(dict(zip(sampler.members, (a.tobytes() for a in raw), strict=True)))
        if problems:
            bad.append((tar, key, problems))
    return bad
