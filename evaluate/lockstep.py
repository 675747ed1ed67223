"""Lockstep tracking of many sequences: one batched forward pass per step for every active target.

Why: GOTURN runs one small network per frame, so one-by-one tracking leaves a GPU idle; the authors suggest
batching targets for multi-object tracking. ``batch_size`` slots advance together; a sequence that ends
frees its slot and the next pending sequence is initialised into it (continuous batching), so sequences of
different lengths drop out without stalling the others. Frames are decoded ahead in a thread pool and never
timed: the per-frame times cover crop + forward + box decode only (formats doc section 2.10: no I/O, so
neither the JPEG decode nor the host-to-device upload of a frame); a batched step's time is split evenly
over its targets.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evaluate.otb_data import read_frame

Frame = Any  # a path (decoded here) or anything the stepper's `prepare` accepts (array, device tensor)


class BatchStepper(Protocol):
    """What the driver needs from a tracker (adapters in `evaluate.steppers`)."""

    variant: str  # "authors" or "opencv": which rule turns a user's initial box into the start box

    def prepare(self, frame: np.ndarray) -> Any:
        """One decoded HxWx3 uint8 RGB frame -> the tracker's frame object (e.g. a device tensor), once."""
        ...

    def step(self, prev: Sequence[Any], boxes: np.ndarray, curr: Sequence[Any]) -> np.ndarray:
        """One GOTURN step for B targets: previous frames + previous 0-based corner boxes ``(B, 4)`` + current
        frames -> new 0-based corner boxes ``(B, 4)``."""
        ...

    def sync(self) -> None:
        """Block until queued device work is done (so timers read real time)."""
        ...


@dataclass
class TrackJob:
    """One target to track: its frames (paths, decoded arrays or device tensors) and the 0-based corner box of
    frame 0."""

    name: str
    frames: Sequence[Frame]
    init_box: np.ndarray


@dataclass
class TrackOutput:
    """Per-frame 0-based corner boxes (row 0 = the init box) and seconds (row 0 = init)."""

    name: str
    boxes: np.ndarray
    times: np.ndarray


@dataclass
class _Slot:
    job: int
    t: int  # index of the frame the slot's state belongs to
    prev: Any
    box: np.ndarray
    ahead: deque[Any] = field(default_factory=deque)  # frames t+1, t+2, ... (decode futures or ready frames)
    next_submit: int = 1


def _result(x: Any) -> Any:
    return x.result() if isinstance(x, Future) else x


def _decode(f: Frame) -> Any:
    """Paths are decoded (RGB, grayscale expanded); decoded arrays / tensors pass through."""
    return read_frame(f) if isinstance(f, str | Path) else f


def track_lockstep(
    stepper: BatchStepper,
    jobs: Sequence[TrackJob],
    batch_size: int = 32,
    progress: Callable[[int], Any] | None = None,
    workers: int = min(8, os.cpu_count() or 1),
    prefetch: int = 2,
    on_done: Callable[[int, TrackOutput], Any] | None = None,
) -> list[TrackOutput]:
    """Track every job, ``batch_size`` at a time in lockstep; outputs in job order.

    ``progress(n)`` is called with the number of frames finished after every step (e.g. ``tqdm.update``);
    ``on_done(i, output)`` as soon as job ``i`` has its last box, so a caller can save finished sequences
    before a later one fails (an unreadable frame raises `evaluate.otb_data.FrameReadError`).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    outs = [TrackOutput(j.name, np.zeros((len(j.frames), 4), dtype=np.float64), np.zeros(len(j.frames))) for j in jobs]
    pending = deque(i for i, j in enumerate(jobs) if len(j.frames) > 0)
    slots: list[_Slot | None] = [None] * batch_size
    pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def top_up(s: _Slot) -> None:
        frames = jobs[s.job].frames
        while len(s.ahead) < prefetch and s.next_submit < len(frames):
            f = frames[s.next_submit]
            s.ahead.append(pool.submit(read_frame, f) if isinstance(f, str | Path) else f)
            s.next_submit += 1

    def start(j: int) -> _Slot | None:
        job = jobs[j]
        t0 = time.perf_counter()
        prev = stepper.prepare(_decode(job.frames[0]))
        stepper.sync()
        box = np.asarray(job.init_box, dtype=np.float64).reshape(4)
        outs[j].times[0] = time.perf_counter() - t0  # init (decode + upload): never part of the FPS
        outs[j].boxes[0] = box
        if progress:
            progress(1)
        if len(job.frames) == 1:
            if on_done:
                on_done(j, outs[j])
            return None
        s = _Slot(j, 0, prev, box)
        top_up(s)
        return s

    try:
        while True:
            for k in range(batch_size):
                while slots[k] is None and pending:
                    slots[k] = start(pending.popleft())
            active = [s for s in slots if s is not None]
            if not active:
                break
            curr_np = [_result(s.ahead.popleft()) for s in active]
            for s in active:
                top_up(s)
            curr = [stepper.prepare(f) for f in curr_np]  # upload = I/O, outside the timed step
            stepper.sync()
            t0 = time.perf_counter()
            boxes = np.asarray(stepper.step([s.prev for s in active], np.stack([s.box for s in active]), curr))
            stepper.sync()
            dt = (time.perf_counter() - t0) / len(active)
            for s, b, c in zip(active, boxes, curr, strict=True):
                s.t += 1
                s.prev, s.box = c, np.asarray(b, dtype=np.float64)
                outs[s.job].boxes[s.t] = s.box
                outs[s.job].times[s.t] = dt
            if progress:
                progress(len(active))
            for k, s in enumerate(slots):
                if s is not None and s.t == len(jobs[s.job].frames) - 1:
                    slots[k] = None
                    if on_done:
                        on_done(s.job, outs[s.job])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outs
