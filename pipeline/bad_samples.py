"""Naming the sample behind a DALI decode failure, so a corrupt shard gives a clear error instead of a bare one.

Why a replay: DALI reports the failing shard and key only for some decoder errors, and drops the whole batch. The
loader replays the batch's readers (bytes only, cheap), checks each sample's members the way training reads them
(DALI's own CPU decoder, ``boxes.npy`` without pickle) and raises `SampleDecodeError` naming every bad one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.augment_graph import READER_EXTS
from pipeline.shard_sets import ShardSet, index_entries
from shards.format import (
    BOXES,
    CURR,
    PREV,
    box_rows,
    box_values_problem,
    layout_problems,
    sample_kind,
    split_member_name,
)

DATA_OPS_RE = re.compile(r"fn\.(decoders|readers|peek_image_shape)")  # DALI errors raised by the data ops
_SOURCE_INFO_RE = re.compile(r"(?P<tar>[^\s'\"]+?\.tar):(?P<offset>\d+):(?P<member>[^\s'\"]+)")
# The webdataset reader's check of a .idx against its tar (a truncated tar): "line" counts from 0, the header.
_BAD_INDEX_RE = re.compile(r'Malformed index file at "(?P<stem>[^"]+?)\.idx" line (?P<line>\d+) - (?P<what>[^\n|]+)')


class SampleDecodeError(RuntimeError):
    """A sample in a batch could not be read or decoded; the message names the shard and the key."""


def _index_key(stem: str, line: int) -> str:
    """The sample key on line ``line`` (0 = the header) of the DALI index ``<stem>.idx``, or "?" when unreadable."""
    try:
        return index_entries(f"{stem}.tar", f"{stem}.idx")[line - 1][0] if line >= 1 else "?"
    except (OSError, IndexError, ValueError):
        return "?"


def split_source_info(info: str) -> tuple[str, str]:
    """DALI's source info ``'<tar>:<offset>:<key>.<ext>'`` -> (tar, key)."""
    tar, _, member = info.rsplit(":", 2)
    return tar, split_member_name(member)[0]


READ_REQUIRED = frozenset({CURR, BOXES})  # what a sample must hold of what the loader reads (no meta.json)


def member_problems(members: dict[str, bytes]) -> list[str]:
    """What is wrong with one sample's members as the loader reads them (`READER_EXTS`, empty when absent): the
    v1 layout (`shards.format.layout_problems`), then each image decoded with DALI's own CPU decoder, as training
    decodes it."""
    present = {ext: data for ext, data in members.items() if data}
    _, problems = layout_problems(present, None, READ_REQUIRED)
    for ext in (CURR, PREV):
        err = _probe_decode(present[ext]) if ext in present else None
        if err:
            problems.append(f"{ext} does not decode ({err})")
    return problems


def _probe_decode(data: bytes) -> str | None:
    """Decode one JPEG with DALI's CPU decoder in a throwaway pipeline; the error text or None."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def probe():
        return fn.decoders.image(fn.external_source(name="jpg", dtype=types.UINT8, ndim=1), output_type=types.RGB)

    pipe = probe()
    try:
        pipe.build()
        pipe.feed_input("jpg", [np.frombuffer(data, dtype=np.uint8)])
        pipe.run()
        return None
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "failure" in ln.lower() or "decode" in ln.lower()]
        return (detail[-1] if detail else lines[-1] if lines else "error")[:160]
    finally:
        del pipe


def find_bad_samples(
    shard_sets: Sequence[ShardSet], reader_kw: Sequence[dict], batch_size: int, batch_index: int
) -> list[tuple[str, str, list[str]]]:
    """Replay the readers (bytes only, cheap) up to batch ``batch_index`` and check each of its samples.

    Needed because DALI names the failing sample only for some decoder errors.
    """
    from nvidia.dali import fn, pipeline_def

    def body():
        outs = []
        for kw in reader_kw:
            outs.extend(fn.readers.webdataset(ext=READER_EXTS, missing_component_behavior="empty", **kw))
        return tuple(outs)

    pipe = pipeline_def(body, batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=1)()
    pipe.build()
    for _ in range(batch_index):
        pipe.run()
    outs = pipe.run()
    del pipe
    bad = []
    for s in range(len(shard_sets)):
        tls = outs[3 * s : 3 * s + 3]
        for i in range(batch_size):
            members = {ext: np.asarray(tl[i]).tobytes() for ext, tl in zip(READER_EXTS, tls, strict=True)}
            problems = member_problems(members)
            if not problems:
                continue
            info = next((tl[i].source_info() for tl in tls if tl[i].source_info()), None)
            if info:
                bad.append((*split_source_info(info), problems))
            else:  # none of the members the reader reads: DALI has no name for it
                bad.extend(
                    (tar, key, problems) for tar, key in _memberless(shard_sets[s]) if (tar, key, problems) not in bad
                )
    return bad


def _memberless(ss: ShardSet) -> list[tuple[str, str]]:
    """(tar, key) of the set's samples without any member the loader reads (a stray ``README`` in a tar, say),
    from the index or tar headers; DALI's reader gives such a sample no source info. [("?", "?")] if unreadable."""
    found = []
    try:
        for t, key, exts in ss.entries():
            if not set(exts) & set(READER_EXTS):
                found.append((ss.tars[t], key))
    except (OSError, ValueError):  # an unreadable tar: what the ones before it named still stands
        pass
    return found or [("?", "?")]


SetPairs = bool | dict[tuple[str, str], bool]  # whether a set's samples are pairs: all of them, or per (tar, key)


def set_pairs(ss: ShardSet) -> SetPairs:
    """Which samples of a set are pairs (a pair's ``boxes.npy`` holds two rows, a still's one): all or none, or in
    a set holding both (hand-made shards: the builder never mixes them) per sample, from the index."""
    if not (ss.has_pairs and ss.has_stills):
        return ss.has_pairs
    return {(ss.tars[t], key): PREV in exts for t, key, exts in ss.entries()}


def box_problems(box_outputs: Sequence[Any], pairs: Sequence[SetPairs]) -> list[tuple[str, str, list[str]]]:
    """Samples of a batch whose input boxes (the graph's per-source ``boxes`` outputs) are no v1 boxes: NaN or
    inverted boxes decode and crop without an error, and the graph takes a pair's previous box from the first
    row and its current box from the last, so a pair with one row would train as if it never moved and a still
    with two rows on a made-up motion. ``pairs``: per source, `set_pairs`. Cheap: one vectorised check per
    source, per-sample work only when it fails."""
    bad = []
    for tl, pair in zip(box_outputs, pairs, strict=True):
        try:
            dense = np.asarray(tl.as_tensor())
            if isinstance(pair, bool) and dense.shape[1] == box_rows(pair) and box_values_problem(dense) is None:
                continue
        except RuntimeError:  # not one dense tensor: (1, 4) and (2, 4) boxes in one batch
            pass
        for i in range(len(tl)):
            boxes = np.asarray(tl[i])
            tar, key = split_source_info(tl[i].source_info() or "?:0:?")
            is_pair = pair if isinstance(pair, bool) else pair.get((tar, key), len(boxes) == 2)
            problem = box_values_problem(boxes)
            if len(boxes) != box_rows(is_pair):
                problem = f"boxes.npy holds {len(boxes)} rows, expected {box_rows(is_pair)} for {sample_kind(is_pair)}"
            if problem:
                bad.append((tar, key, [problem]))
    return bad


def _named(bad: Sequence[tuple[str, str, list[str]]] | None) -> list[str]:
    return [f"key={key!r} in shard {tar}: {'; '.join(p)}" for tar, key, p in (bad or [])]


def _listed(found: list[str]) -> str:
    return " and ".join(found[:4]) + (f" (+{len(found) - 4} more)" if len(found) > 4 else "")


def refuse(bad: Sequence[tuple[str, str, list[str]]]) -> SampleDecodeError:
    """A batch that decoded but holds samples that must not train (`box_problems`) -> an error naming them."""
    what = "cannot train on sample " + _listed(_named(bad))
    return SampleDecodeError(
        f"{what}. The loader dropped the whole batch; iterating again continues with the next one. Re-validate "
        "(python -m shards.verify) or rebuild the shard."
    )


def explain(
    err: Exception, bad: Sequence[tuple[str, str, list[str]]] | None, shard_sets: Sequence[ShardSet]
) -> SampleDecodeError:
    """DALI's RuntimeError -> an error naming the shard(s), the key(s) and what is wrong with each."""
    text = str(err)
    first = " | ".join(line.strip() for line in text.splitlines() if line.strip())[:600]
    found = _named(bad)
    if not found:
        m = _SOURCE_INFO_RE.search(text)
        if m:
            tar, key = split_source_info(f"{m['tar']}:{m['offset']}:{m['member']}")
            found = [f"key={key!r} in shard {tar} (member {m['member']!r})"]
    if not found:
        m = _BAD_INDEX_RE.search(text)
        if m:
            key = _index_key(m["stem"], int(m["line"]))
            found = [f"key={key!r} in shard {m['stem']}.tar: {m['what'].strip()} (truncated shard?)"]
    if found:
        what = "cannot read/decode sample " + _listed(found)
    else:
        tars = [t for s in shard_sets for t in s.tars]
        shown = ", ".join(tars[:8]) + (f", ... ({len(tars)} tars)" if len(tars) > 8 else "")
        what = f"a sample of this batch could not be read/decoded (not identified) from shards [{shown}]"
    return SampleDecodeError(
        f"{what}. DALI dropped the whole batch; iterating again continues with the next one. Re-validate or "
        f"rebuild the shard. DALI said: {first}"
    )
