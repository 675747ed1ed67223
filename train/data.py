"""Training batches from the augmentation loader: the authors' 50-example batches with carry-over, an exact
data position for resuming, and a background prefetcher that overlaps data work with the training step.

The loader yields ``pairs x (1 + k)`` examples per item; the authors append every pair's 11 examples to a
buffer and step whenever it holds 50, the leftovers starting the next batch (`goturn_spec.md` 3.5).
`ExampleBatcher` does exactly that. Its *position* after a batch is the loader state after the last item pulled
plus where the leftover examples came from (the loader state before the item they start in, and how many of its
rows were used), so a resume pulls those items again and sees the very same batches; a checkpoint stores a few
numbers instead of the leftovers' pixels (up to ~50 MB a rank).
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from model.net import pair_runs
from pipeline.bad_samples import SampleDecodeError

KEYS = ("target", "search", "bbox")
MAX_BAD_ITEMS = 100  # consecutive undecodable loader batches before the run gives up


class DataError(RuntimeError):
    """The training data cannot go on (nothing decodes, empty split); the trainer reports it in one line."""


@dataclass
class Batch:
    """One training batch plus the data position right after it (what a checkpoint taken after it stores)."""

    target: torch.Tensor  # uint8 (B, 3, 227, 227)
    search: torch.Tensor  # uint8 (B, 3, 227, 227)
    bbox: torch.Tensor  # float32 (B, 4)
    position: dict
    runs: tuple[torch.Tensor, torch.Tensor] | None = None  # `model.net.pair_runs` of the batch, where known
    # Loader batches this process skipped (undecodable) before this batch was cut: the count a log row after it
    # reports, whatever the prefetch thread has pulled (and skipped) ahead of it meanwhile.
    skipped: int = 0


def _loader_state(loader: Any) -> Any:
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def _advance(origins: list[tuple[Any, int, int]], offset: int, rows: int) -> tuple[list[tuple[Any, int, int]], int]:
    """The carry's origins after ``rows`` more of its rows are used: items wholly used drop out."""
    offset += rows
    i = 0
    while i < len(origins) and offset >= origins[i][2]:
        offset -= origins[i][2]
        i += 1
    return origins[i:], offset if i < len(origins) else 0


class ExampleBatcher:
    """Re-chunks loader items into batches of exactly ``batch_examples`` examples, carrying leftovers over.

    ``position`` (from a checkpoint) restores the loader state and the carried-over examples: a ``replay`` (the
    loader state before the item the leftovers start in, and the rows of it already used) re-pulls those items,
    which a seeded loader gives again bit for bit; positions of loaders without ``state_dict`` hold the
    leftovers themselves (``carry``), as older checkpoints do. Loaders without ``state_dict``/``load_state_dict``
    are fast-forwarded by re-reading the consumed items (exact for a seeded loader, but slow; a warning says so).
    With a CUDA ``device`` every item is first copied into memory of torch's caching allocator on the current
    stream (host items pinned and copied without blocking; GPU items of DALI's backend cloned, then the stream
    synchronised before the loader's buffer is released): the batches then live in memory whose reuse torch
    orders against the training stream (``record_stream``), which the loader's own buffers would not be.

    Loader items hold whole pairs of ``loader.k + 1`` examples (as `GoturnLoader` does, with its default
    ``expand_target=True``); then every batch also carries ``runs``, which examples share a target crop, known
    from the layout alone (a batch cut at row ``start`` of the carry-over + item rows starts at example
    ``(start - len(carry)) % (k + 1)`` of its pair), so the trainer finds the distinct targets without reading
    anything back from the GPU. For other loaders ``runs`` is None.
    """

    def __init__(
        self, loader: Any, batch_examples: int, position: dict | None = None, device: torch.device | None = None
    ):
        if batch_examples <= 0:
            raise ValueError(f"batch_examples must be positive, got {batch_examples}")
        self.loader = loader
        self.batch_examples = int(batch_examples)
        self.device = torch.device(device) if device is not None else None
        k = getattr(loader, "k", None)
        expanded = getattr(loader, "expand_target", True)  # GoturnLoader(expand_target=False): one target per pair
        self.per_pair = k + 1 if isinstance(k, int) and k >= 0 and expanded else None
        self.skipped_items = 0
        self._replaying = False  # pulling items the run already used before its checkpoint: its skips are old
        self.items = 0  # loader items pulled so far (fast-forward when the loader has no state)
        self.carry: dict[str, torch.Tensor] | None = None
        self._skip = 0
        self._stream: Iterator[dict[str, torch.Tensor]] | None = None  # items left over from a replay
        # Where the carry's rows come from: (loader state before the item, items before it, its rows), oldest
        # first, and how many rows of the oldest are used already.
        self._origins: list[tuple[Any, int, int]] = []
        self._offset = 0
        self._state = _loader_state(loader)
        if position is not None:
            self.items = int(position.get("items", 0))
            replay, carry, state = position.get("replay"), position.get("carry"), position.get("loader")
            if replay is not None and hasattr(loader, "load_state_dict"):
                self._replay(replay, self.items)
            else:
                if carry is not None and int(carry["bbox"].shape[0]) > 0:
                    self.carry = {k: carry[k] for k in KEYS}
                    # rows from before any item pulled here: positions keep them as pixels until they are used
                    self._offset = -int(carry["bbox"].shape[0])
                if state is not None and hasattr(loader, "load_state_dict"):
                    loader.load_state_dict(state)
                elif self.items:
                    warnings.warn(
                        f"loader has no state_dict: fast-forwarding {self.items} loader batches to resume",
                        stacklevel=2,
                    )
                    self._skip = self.items
                self._state = _loader_state(loader)

    def _replay(self, replay: dict, items: int) -> None:
        """Rebuild the carry of a position: the loader state before the item it starts in, then its items."""
        self.loader.load_state_dict(replay["loader"])
        self.items = int(replay["items"])
        self._state = _loader_state(self.loader)
        self._stream = self._items()
        self._replaying = True
        try:
            parts = [self._next_item(self._stream) for _ in range(items - self.items)]
        finally:
            self._replaying = False
        skip = int(replay["skip"])
        self.carry = {k: torch.cat([p[k] for p in parts])[skip:] for k in KEYS}
        self._offset = skip
        self.skipped_items = 0  # batches the run already skipped (and logged) before its checkpoint
        if int(self.carry["bbox"].shape[0]) != int(replay["rows"]):
            raise DataError(
                f"resume: the loader gave {int(self.carry['bbox'].shape[0])} leftover examples where the checkpoint "
                f"recorded {int(replay['rows'])} (other shards or loader settings than the run's?)"
            )
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the carry is used on the prefetch stream

    def _items(self) -> Iterator[dict[str, torch.Tensor]]:
        """Loader items forever, epoch after epoch (a finished epoch restarts the loader's iterator).

        A batch the loader cannot decode (``SampleDecodeError``: a corrupt sample, named in the message) is
        reported and skipped, as the loader allows, instead of ending a days-long run; only a loader that fails
        ``MAX_BAD_ITEMS`` times in a row, or for a whole epoch, stops it (`DataError`, with the last cause).
        """
        empty = bad = 0
        last_error: Exception | None = None
        while True:
            n = 0
            it = iter(self.loader)
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    break
                except SampleDecodeError as e:
                    if bad + 1 >= MAX_BAD_ITEMS:
                        raise DataError(f"{bad + 1} training loader batches in a row failed; the last: {e}") from e
                    bad += 1
                    last_error = e
                    self.skipped_items += 1
                    if not self._replaying:  # a replay's skips were reported by the run before its checkpoint
                        print(f"[train] warning: skipped a loader batch: {e}", file=sys.stderr)
                    it = iter(self.loader)  # the loader continues with the next batch
                    continue
                n += 1
                bad = 0
                if self._skip:
                    self._skip -= 1
                    continue
                yield item
            empty = 0 if n else empty + 1
            if empty >= 2 and bad:  # one empty pass is a loader restored exactly at an epoch's end
                raise DataError(
                    f"every training loader batch of a whole epoch failed ({bad} in a row); the last: {last_error}"
                )
            if empty >= 2:
                raise DataError("the training loader produced no batch in a whole epoch (empty split?)")

    def _next_item(self, items: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pull one loader item (on the device) and note where its rows come from."""
        item = next(items)
        before = (self._state, self.items)
        self.items += 1
        self._state = _loader_state(self.loader)
        rows = {k: int(item[k].shape[0]) for k in KEYS}
        if len(set(rows.values())) != 1:
            raise ValueError(f"loader item rows differ {rows}: batches need one target crop per example")
        self._origins.append((*before, rows["bbox"]))
        return self._adopt({k: item[k] for k in KEYS})

    def __iter__(self) -> Iterator[Batch]:
        B = self.batch_examples
        items, self._stream = self._stream or self._items(), None
        while True:
            parts = self._next_item(items)
            carried = 0
            if self.carry is not None:
                dev = parts["bbox"].device
                carried = int(self.carry["bbox"].shape[0])
                parts = {k: torch.cat([self.carry[k].to(dev), parts[k]]) for k in KEYS}
            n = int(parts["bbox"].shape[0])
            start = 0
            while n - start >= B:
                chunk = {k: parts[k][start : start + B] for k in KEYS}
                runs = pair_runs(B, (start - carried) % self.per_pair, self.per_pair) if self.per_pair else None
                start += B
                rest = {k: parts[k][start:] for k in KEYS} if start < n else None
                self.carry = rest
                position = self._position_view(rest, start)
                yield Batch(chunk["target"], chunk["search"], chunk["bbox"], position, runs, self.skipped_items)
            self.carry = {k: parts[k][start:] for k in KEYS} if start < n else None
            self._origins, self._offset = _advance(self._origins, self._offset, start)

    def _adopt(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = self.device
        if dev is None or dev.type != "cuda":
            return parts
        out, foreign = {}, False
        for k, v in parts.items():
            if v.device.type == "cpu":
                out[k] = v.pin_memory().to(dev, non_blocking=True)
            else:
                out[k] = v.clone()
                foreign = True
        if foreign:
            torch.cuda.current_stream(dev).synchronize()
        return out

    def _position_view(self, rest: dict[str, torch.Tensor] | None, used: int) -> dict:
        """Position after the batch just cut (``used`` rows of carry + item so far): a replay of the leftovers'
        items where the loader has a state, else the leftovers themselves (references, copied when saved)."""
        if rest is None:
            return {"items": self.items, "loader": self._state, "carry": None, "replay": None}
        if self._state is None:
            return {"items": self.items, "loader": None, "carry": rest, "replay": None}
        origins, offset = _advance(self._origins, self._offset, used)
        if offset < 0:  # some leftovers are an old checkpoint's pixels, of no item this process pulled
            return {"items": self.items, "loader": self._state, "carry": rest, "replay": None}
        state, items, _ = origins[0]
        replay = {"loader": state, "items": items, "skip": offset, "rows": int(rest["bbox"].shape[0])}
        return {"items": self.items, "loader": self._state, "carry": None, "replay": replay}


def position_to_cpu(position: dict) -> dict:
    """A saveable copy of a `Batch.position` (carry on the CPU, contiguous)."""
    carry = position.get("carry")
    if carry is not None:
        carry = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in carry.items()}
    return {"items": position["items"], "loader": position["loader"], "carry": carry, "replay": position.get("replay")}


class Prefetcher:
    """Runs the batcher in a background thread, ``depth`` batches ahead, moving each batch to ``device``.

    On CUDA, host batches are pinned and copied with ``non_blocking`` on a side stream; batches already on the
    GPU (DALI's GPU backend) are re-chunked on that stream too. The consumer waits on the batch's event, so
    the copy overlaps the previous training step and never races it. No random numbers are drawn in the
    thread, so the training RNG stream is the same with or without prefetching.
    """

    def __init__(self, batches: Iterator[Batch] | Callable[[], Iterator[Batch]], device: torch.device, depth: int = 2):
        self.device = torch.device(device)
        self.depth = max(1, int(depth))
        self._source = batches
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._end: BaseException | None = None  # the thread's last word (end or error): the answer from then on
        self._thread = threading.Thread(target=self._run, name="train-prefetch", daemon=True)
        self._thread.start()

    def _put(self, obj: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            ctx = torch.cuda.stream(self._stream) if self._cuda else contextlib.nullcontext()
            with ctx:
                it = self._source() if callable(self._source) else iter(self._source)
                for b in it:
                    event = None
                    if self._cuda:
                        runs = tuple(self._to_device(t) for t in b.runs) if b.runs is not None else None
                        target, search, bbox = (self._to_device(t) for t in (b.target, b.search, b.bbox))
                        b = replace(b, target=target, search=search, bbox=bbox, runs=runs)
                        event = torch.cuda.Event()
                        event.record(self._stream)
                    if not self._put((b, event)):
                        return
        except BaseException as e:  # forwarded to the consumer, which re-raises it with its traceback
            self._put(e)
            return
        self._put(StopIteration())

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.device == self.device:
            return t
        if t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        obj = self._end or self._queue.get()  # after the end, the thread is gone: waiting would never return
        if isinstance(obj, BaseException):
            self._end = obj
            raise StopIteration if isinstance(obj, StopIteration) else obj
        b, event = obj
        if event is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(event)
            for t in (b.target, b.search, b.bbox, *(b.runs or ())):
                t.record_stream(cur)
        return b

    def close(self) -> None:
        """Stop the thread (if it is blocked in the loader: a daemon thread never keeps the process up)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)
