"""GOTURN training batches for PyTorch from shard-format-v1 tars, made by NVIDIA DALI.

Why DALI: the seed port made its 1 true + 10 shifted examples per pair in Python, inline with training, which caps
a GPU at about a tenth of what it could train. Here decoding, the motion model, the crops and (optionally) the
normalisation run in one DALI graph (`pipeline.augment_graph`), on the GPU or on DALI's CPU backend, and
`GoturnLoader` adds what a trainer needs around it: epochs, DDP sharding, determinism, exact resume and clear
errors for corrupt samples (`pipeline.bad_samples`). ``python -m pipeline.augment --dump FILE.npz`` writes the
first batches with every example's source windows for auditing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.geometry import INPUT_SIZE, MotionParams
from pipeline.augment_graph import (
    DEFAULT_MOTION,
    DRAW_NAMES,
    build_pipeline,
    check_options,
    max_k,
    reader_kwargs,
)
from pipeline.bad_samples import (
    DATA_OPS_RE,
    SampleDecodeError,
    box_problems,
    explain,
    find_bad_samples,
    refuse,
    set_pairs,
    split_source_info,
)
from pipeline.group_sampler import GroupSampler, drawn_problems, stream_seed
from pipeline.shard_sets import ShardSet, find_shards
from shards.output_files import NpzStream, output_file_problem

SAMPLINGS = ("epoch", "authors")  # every sample once per epoch | uniform image / video, then object / pair

__all__ = ["GoturnLoader", "SampleDecodeError", "ShardSet", "build_pipeline", "dump_batches", "find_shards"]


def _to_torch(tl: Any, gpu_device: torch.device | None) -> torch.Tensor:
    """DALI TensorList -> torch tensor without a copy (dynamic executor: buffers stay valid)."""
    t = tl.as_tensor()
    if gpu_device is not None and type(t).__name__ == "TensorGPU":
        with torch.cuda.device(gpu_device):
            return torch.from_dlpack(t)
    return torch.from_dlpack(t)


class GoturnLoader:
    """Iterable of GOTURN training batches (dicts of torch tensors) from shard-format-v1 tars.

    Each batch: ``target`` and ``search`` (N, 3, 227, 227) uint8 RGB (or normalised float32 with
    ``output="float"``), ``bbox`` (N, 4) float32 targets x10, N = ``pairs_per_batch * (1 + k)``; pairs alternate
    between the sources (ImageNet, ALOV, ImageNet, ...), and each pair's examples are [true, shift_1..shift_k] with
    the pair's target crop repeated (``expand_target=False``: one target per pair, (pairs, 3, 227, 227), for a
    trainer that repeats it on the GPU). ``channels_last=True`` yields the same (N, 3, 227, 227) tensors in
    ``torch.channels_last`` memory format (a free view of DALI's HWC crops; saves a transpose on the CPU backend).
    Tensors are zero-copy views of DALI's buffers, on the GPU with ``device="gpu"``. ``audit=True`` adds
    ``keys`` (list of N ``"<tar>:<key>"``), ``source``, ``example_index``, ``target_windows`` /
    ``search_windows`` (N, 4) float64 source-image pixels, ``search_boxes``, ``target_box`` and ``image_size``
    (CPU tensors).

    Epoch: one pass over each rank's share of the *largest* source (``len(self)`` batches, equal on every rank:
    ``(n_largest // num_shards) // (pairs_per_batch // n_sources)``); smaller sources are cycled as often as needed
    (through the shuffle buffer again). Epoch ``e`` is a deterministic function of ``(seed, e, shard_id,
    num_shards)`` and of nothing else: a new DALI pipeline is built per epoch with a seed derived from those, the
    tars are read in an order drawn anew each epoch (the same on every rank), and rank ``r`` reads the contiguous
    sample range ``(r + e) % num_shards`` of each source (DALI shards by sample over the concatenated tars), so
    ranks are disjoint within an epoch, together cover the largest source except each rank's last
    ``< pairs_per_source`` samples of its range (the shuffled tail, different every epoch), and see different data
    in a different order every epoch.

    Sampling: ``sampling="epoch"`` (the above) reads every sample once per epoch, so an image (video) counts as
    often as it has objects (pairs). ``sampling="authors"`` draws as ``train.cpp`` does (`pipeline.group_sampler`):
    a uniform image (video), then a uniform object (pair) of it, with replacement; each rank and epoch draws its
    own stream, an epoch is just ``len(self)`` batches, and batch ``b`` of an epoch is a pure function of
    ``(seed, epoch, shard_id, b)``. The trainer uses ``"authors"`` by default.

    Position and resume: iteration continues from ``(epoch, batch)``; breaking out of the loop and iterating again
    resumes where it stopped, and a finished epoch advances ``epoch``. ``state_dict()`` records the position plus
    this rank's DALI checkpoint; ``load_state_dict()`` restores it exactly: from the checkpoint when it was taken by
    the same rank with the same configuration (instant), else by rebuilding the epoch's pipeline and skipping
    ``batch`` batches (same batches, costs their compute). ``set_epoch(e)`` jumps to the start of epoch ``e``.

    Normalisation: uint8 output (the trainer's) is normalised later on the device, by
    ``model.preprocess.normalize`` with the network's own mode (4x less host traffic); ``output="float"`` makes
    the pipeline emit that normalised float32 instead (``caffe``: BGR minus 104/117/123, 0-255; ``opencv``: BGR
    minus 128; ``imagenet``: RGB, (x/255 - mean) / std), and ``loader.output`` says which one a batch holds.

    A sample that cannot be decoded raises `SampleDecodeError` naming its shard and key (never a hang); that batch
    is lost, and iterating again continues with the next batch.
    """

    def __init__(
        self,
        shards: str | Path,
        split: str = "train",
        device: str = "cpu",
        pairs_per_batch: int = 32,
        k: int = 10,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        *,
        sources: Sequence[str] | None = None,
        normalization: str = "caffe",
        output: str = "uint8",
        num_threads: int | None = None,
        prefetch: int = 2,
        device_id: int | None = None,
        shuffle_buffer: int = 1024,
        motion: MotionParams = DEFAULT_MOTION,
        expand_target: bool = True,
        channels_last: bool = False,
        audit: bool = False,
        debug_draws: bool = False,
        sampling: str = "epoch",
    ) -> None:
        check_options(device, output, normalization)
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
        if k < 0:
            raise ValueError("k must be >= 0")
        if pairs_per_batch < 1:
            raise ValueError(f"pairs_per_batch must be >= 1, got {pairs_per_batch}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device='gpu' needs a CUDA GPU and none is visible; use device='cpu'")
        self.shard_sets = find_shards(shards, split, sources)
        short = [t for s in self.shard_sets for t in s.short_tars]
        if short and sampling == "epoch":  # DALI's reader follows the index past the end of the file: a crash
            raise ValueError(
                f"{short[0]} is shorter than its index says (a truncated copy?); DALI's reader would read past its "
                "end. Re-copy it (python -m shards.verify checks a build), or use sampling='authors', whose batches "
                "that draw a lost sample fail with its name (the trainer reports and skips them)"
            )
        need = num_shards if sampling == "epoch" else 1  # the epoch reader shards every source by sample
        for s in self.shard_sets:  # every source feeds every batch: each must have data for every rank
            if s.num_samples < need:
                raise ValueError(
                    f"{s.source} {split} has {s.num_samples} samples in {len(s.tars)} shard(s), "
                    + ("none to draw from" if s.num_samples == 0 else f"fewer than the {num_shards} ranks reading it")
                    + "; rebuild the shards or leave the source out (sources=...)"
                )
        n_src = len(self.shard_sets)
        if k > max_k(n_src):
            raise ValueError(f"k={k} is more than the {max_k(n_src)} shifted examples per pair the graph can stack")
        if pairs_per_batch % n_src:
            raise ValueError(f"pairs_per_batch={pairs_per_batch} must be a multiple of the {n_src} sources")
        self.shards, self.split, self.device = str(shards), split, device
        self.pairs_per_batch, self.pairs_per_source, self.k = pairs_per_batch, pairs_per_batch // n_src, k
        self.seed, self.shard_id, self.num_shards = int(seed), int(shard_id), int(num_shards)
        self.sources = tuple(s.source for s in self.shard_sets)
        self.normalization, self.output, self.motion = normalization, output, motion
        self.num_threads = num_threads or max(1, min(8, len(os.sched_getaffinity(0))))
        self.prefetch, self.device_id, self.shuffle_buffer = prefetch, device_id, shuffle_buffer
        self.expand_target, self.channels_last = expand_target, channels_last
        self.audit, self.debug_draws = audit, debug_draws
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.sampling = sampling
        authors = sampling == "authors"
        self._samplers = [GroupSampler(s, self.pairs_per_source) for s in self.shard_sets] if authors else []
        self._set_pairs = [] if authors else [set_pairs(s) for s in self.shard_sets]  # the reader's batches' check
        self.epoch_source = max(self.shard_sets, key=lambda s: s.num_samples).source
        n_max = max(s.num_samples for s in self.shard_sets)
        self.steps_per_epoch = (n_max // num_shards) // self.pairs_per_source
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{n_max} {self.epoch_source} samples over {num_shards} ranks give no full batch of "
                f"{self.pairs_per_source} pairs per source; use fewer ranks or a smaller pairs_per_batch"
            )
        self.epoch, self.batch = 0, 0
        self._pipe = None
        self._pipe_pos: tuple[int, int] | None = None  # (epoch, batches already returned) of the live pipeline
        self._after_error = False  # the live pipeline's last run failed: its DALI checkpoint lags by that batch
        self._restore: bytes | str | None = None

    # -- public API ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch, identical on every rank."""
        return self.steps_per_epoch

    @property
    def examples_per_batch(self) -> int:
        return self.pairs_per_batch * (1 + self.k)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (like DistributedSampler.set_epoch)."""
        if (epoch, 0) != (self.epoch, self.batch):
            self.epoch, self.batch, self._restore = int(epoch), 0, None

    def state_dict(self) -> dict:
        """Data position (epoch, batch) plus this rank's DALI checkpoint for an instant exact resume."""
        cpt = self._restore  # loaded but not yet used: pass it on unchanged
        if self._pipe is not None and self._pipe_pos == (self.epoch, self.batch) and self.batch > 0:
            # After a failed batch DALI's checkpoint does not count it: leave it out, resume by skipping (exact).
            cpt = None if self._after_error else self._pipe.checkpoint()
        return {
            "format": "goturn-loader-v1",
            "epoch": self.epoch,
            "batch": self.batch,
            "config": self._config(),
            "dali_checkpoint": cpt,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s position (see the class docstring for how)."""
        if state.get("format") != "goturn-loader-v1":
            raise ValueError("not a GoturnLoader state dict")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if self.batch >= self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        same = state.get("config") == self._config()
        self._restore = state.get("dali_checkpoint") if same and self.batch > 0 else None
        self._close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.batch < self.steps_per_epoch:
            pipe = self._pipeline()
            try:
                outs = pipe.run()
            except RuntimeError as e:
                failed = self.batch
                self.batch += 1
                self._pipe_pos, self._after_error = (self.epoch, self.batch), True
                bad = self._diagnose(failed)
                if bad or DATA_OPS_RE.search(str(e)):
                    raise explain(e, bad, self.shard_sets) from e
                raise
            self.batch += 1
            self._pipe_pos, self._after_error = (self.epoch, self.batch), False
            # DALI's own reader hands boxes.npy straight to the graph (the authors' sampler's feed checks each
            # sample it draws before DALI sees it): a batch with bad boxes is dropped, the pipeline stays where
            # it is, and iterating again continues
            bad = [] if self._samplers else box_problems(outs[3 : 3 + len(self.shard_sets)], self._set_pairs)
            if bad:
                raise refuse(bad)
            yield self._assemble(outs, pipe.audit_names, self.batch - 1)
        self._close()
        self.epoch, self.batch = self.epoch + 1, 0

    def close(self) -> None:
        """Free the DALI pipeline (and its GPU memory) now."""
        self._close()

    # -- internals -------------------------------------------------------------------------------------------------

    def _config(self) -> dict:
        return {
            "shards": [[os.path.basename(t) for t in s.tars] for s in self.shard_sets],  # movable directory
            "counts": [list(s.counts) for s in self.shard_sets],
            "split": self.split,
            "device": self.device,
            "pairs_per_batch": self.pairs_per_batch,
            "k": self.k,
            "seed": self.seed,
            "shard_id": self.shard_id,
            "num_shards": self.num_shards,
            "output": self.output,
            "normalization": self.normalization,
            "motion": asdict(self.motion),
            "shuffle_buffer": self.shuffle_buffer,
            "expand_target": self.expand_target,
            "channels_last": self.channels_last,
            "audit": self.audit,
            "debug_draws": self.debug_draws,
            "sampling": self.sampling,
        }

    def _close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None
        self._pipe_pos, self._after_error = None, False

    def _epoch_seed(self) -> tuple[int, int]:
        """(pipeline seed for this rank, reader shuffle seed shared by all ranks) of the current epoch."""
        a = np.random.SeedSequence([self.seed, self.epoch, self.shard_id, self.num_shards]).generate_state(1)[0]
        b = np.random.SeedSequence([self.seed, self.epoch, 0xF00D]).generate_state(1)[0]
        return int(a & 0x7FFFFFFF), int(b & 0x7FFFFFFF)

    def _reader_shard(self) -> int:
        """The reader's shard this epoch: rotated by one per epoch, so a rank reads other samples each epoch."""
        return (self.shard_id + self.epoch) % self.num_shards

    def _pipeline(self):
        if self._pipe is not None and self._pipe_pos == (self.epoch, self.batch):
            return self._pipe
        self._close()
        seed, rseed = self._epoch_seed()
        kw = {
            "pairs_per_source": self.pairs_per_source,
            "device": self.device,
            "device_id": self.device_id,
            "k": self.k,
            "seed": seed,
            "shard_id": self._reader_shard(),
            "num_shards": self.num_shards,
            "shuffle_buffer": self.shuffle_buffer,
            "num_threads": self.num_threads,
            "prefetch": self.prefetch,
            "params": self.motion,
            "output": self.output,
            "normalization": self.normalization,
            "expand_target": self.expand_target,
            "channels_last": self.channels_last,
            "audit": self.audit,
            "debug_draws": self.debug_draws,
            "reader_seed": rseed,
            "feeds": [smp.feed(self._stream_seed(i)) for i, smp in enumerate(self._samplers)] or None,
        }
        pipe, skip = None, self.batch
        if self._restore is not None:
            try:
                pipe = build_pipeline(self.shard_sets, checkpoint=self._restore, **kw)
                pipe.build()
                skip = 0
            except RuntimeError:
                pipe = None  # incompatible checkpoint (other DALI version...): fall back to skipping
            self._restore = None
        if pipe is None:
            pipe = build_pipeline(self.shard_sets, **kw)
            pipe.build()
        for _ in range(skip):
            with contextlib.suppress(RuntimeError):  # a bad batch is lost again, exactly as the first time
                pipe.run()
        self._pipe, self._pipe_pos = pipe, (self.epoch, self.batch)
        return pipe

    def _stream_seed(self, source_index: int) -> int:
        """The authors' sampling: this rank's draw stream of one source in the current epoch."""
        return stream_seed(self.seed, self.epoch, self.shard_id, source_index)

    def _diagnose(self, batch_index: int) -> list[tuple[str, str, list[str]]] | None:
        """Which samples of this epoch's batch ``batch_index`` are broken (None if the replay itself fails)."""
        if self._samplers:
            try:
                return [
                    bad
                    for i, smp in enumerate(self._samplers)
                    for bad in drawn_problems(smp, self._stream_seed(i), batch_index)
                ]
            except Exception:  # noqa: BLE001 - diagnosis is best effort; the original error is still raised
                return None
        _, rseed = self._epoch_seed()
        kws = [
            reader_kwargs(s, self._reader_shard(), self.num_shards, self.shuffle_buffer, rseed, rseed)
            for s in self.shard_sets
        ]
        try:
            return find_bad_samples(self.shard_sets, kws, self.pairs_per_source, batch_index)
        except Exception:  # noqa: BLE001 - diagnosis is best effort; the original error is still raised
            return None

    def _assemble(self, outs: Sequence[Any], audit_names: Sequence[str], batch_index: int) -> dict[str, Any]:
        """DALI outputs -> torch views (the graph already laid the batch out; no copy here)."""
        gpu = torch.device("cuda", self._pipe.device_id) if self.device == "gpu" else None
        if self.channels_last:  # NHWC memory seen as NCHW: torch.channels_last, no copy

            def crops(tl):
                return _to_torch(tl, gpu).view(-1, INPUT_SIZE, INPUT_SIZE, 3).permute(0, 3, 1, 2)
        else:

            def crops(tl):
                return _to_torch(tl, gpu).view(-1, 3, INPUT_SIZE, INPUT_SIZE)

        batch: dict[str, Any] = {
            "target": crops(outs[0]),
            "search": crops(outs[1]),
            "bbox": _to_torch(outs[2], gpu).view(-1, 4),
        }
        if audit_names:
            n, n_src = len(audit_names), len(self.shard_sets)
            per = {name: [outs[3 + n_src + i * n + j] for i in range(n_src)] for j, name in enumerate(audit_names)}
            batch.update(self._audit(per, audit_names, 1 + self.k, batch_index))
        return batch

    def _audit(self, per: dict, names: Sequence[str], e: int, batch_index: int) -> dict[str, Any]:
        n_src = len(self.shard_sets)
        P = self.pairs_per_source

        def cpu(name: str) -> np.ndarray:
            a = np.stack([np.asarray(tl.as_tensor()) for tl in per[name]], axis=1)  # (P, n_src, ...)
            return a.reshape((P * n_src,) + a.shape[2:])

        if self._samplers:  # external source: no DALI source info; the draw is recomputed
            draws = [smp.draw(self._stream_seed(i), batch_index) for i, smp in enumerate(self._samplers)]
            infos = [list(zip(d.tars, d.keys, strict=True)) for d in draws]
        else:
            infos = [[split_source_info(tl[i].source_info()) for i in range(P)] for tl in per["windows"]]
        pair_keys = [f"{infos[s][p][0]}:{infos[s][p][1]}" for p in range(P) for s in range(n_src)]
        pair_src = [self.sources[s] for p in range(P) for s in range(n_src)]
        windows = cpu("windows")  # (pairs, e, 4)
        out: dict[str, Any] = {
            "keys": [kk for kk in pair_keys for _ in range(e)],
            "source": [ss for ss in pair_src for _ in range(e)],
            "example_index": torch.arange(e).repeat(P * n_src),
            "target_windows": torch.from_numpy(np.repeat(windows[:, 0], e, axis=0)),
            "search_windows": torch.from_numpy(windows.reshape(-1, 4)),
            "search_boxes": torch.from_numpy(cpu("search_boxes").reshape(-1, 4)),
            "target_box": torch.from_numpy(np.repeat(cpu("target_box"), e, axis=0)),
            "image_size": torch.from_numpy(np.repeat(cpu("size"), e, axis=0)),
        }
        for n in DRAW_NAMES:
            if n in names:
                out[n] = torch.from_numpy(np.stack([np.asarray(tl.as_tensor()) for tl in per[n]], axis=1))
        return out


# ----------------------------------------------------------------------------------------------------------------
# CLI: dump batches for auditing
# ----------------------------------------------------------------------------------------------------------------


def dump_batches(loader: GoturnLoader, n_batches: int, path: str | Path) -> int:
    """Write the first ``n_batches`` batches as numpy arrays in one .npz (crops uint8, windows in source pixels),
    going on into the next epochs when one epoch holds fewer (``epoch`` records each batch's); returns the batches
    written. Streamed batch by batch (``NpzStream``), so memory holds one batch whatever ``n_batches`` is."""
    written = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with NpzStream(path) as out:
        while written < n_batches:
            before = written
            for b in loader:
                for name, v in b.items():
                    out.append(name, v.cpu().numpy() if isinstance(v, torch.Tensor) else v)
                out.append("batch_index", np.full(loader.examples_per_batch, written, dtype=np.int64))
                out.append("epoch", np.full(loader.examples_per_batch, loader.epoch, dtype=np.int64))
                written += 1
                if written >= n_batches:
                    break
            if written == before:  # an epoch without batches: nothing more will come
                break
        meta = {
            "format": "goturn-augment-dump-v1",
            "config": loader._config(),
            "normalization": loader.normalization,
            "output": loader.output,
            "windows": "x1,y1,x2,y2 in source-image pixels (integers) that each 227x227 crop covers",
            "bbox": "current box in the search crop, x10 of the crop (model.geometry.recenter_scale)",
        }
        out.put("meta_json", np.array(json.dumps(meta)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.augment --shards DIR --dump FILE.npz``: write the first batches for auditing."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.augment", description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="directory of {source}-{split}-NNNNNN.tar (+ .idx)")
    ap.add_argument("--split", default="train", help="train or val (default train)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="DALI backend")
    ap.add_argument("--batches", type=int, default=1, help="batches to write")
    ap.add_argument("--pairs-per-batch", type=int, default=8, help="pairs per batch, a multiple of the sources")
    ap.add_argument("--k", type=int, default=10, help="shifted examples per pair (authors: 10)")
    ap.add_argument("--seed", type=int, default=0, help="augmentation seed")
    ap.add_argument(
        "--sampling", choices=SAMPLINGS, default="authors", help="how pairs are drawn (default: as the trainer)"
    )
    ap.add_argument("--num-threads", type=int, default=None, help="DALI CPU threads")
    ap.add_argument("--dump", required=True, help="output .npz")
    a = ap.parse_args(argv)
    if a.batches < 1 or a.pairs_per_batch < 1 or a.k < 0 or a.seed < 0:
        ap.error("--batches and --pairs-per-batch must be >= 1, --k and --seed >= 0")
    if a.num_threads is not None and a.num_threads < 1:
        ap.error("--num-threads must be >= 1")
    if problem := output_file_problem(a.dump, (".npz",)):
        ap.error(f"--dump {a.dump}: {problem}")
    try:
        loader = GoturnLoader(
            a.shards,
            a.split,
            a.device,
            a.pairs_per_batch,
            a.k,
            a.seed,
            num_threads=a.num_threads,
            audit=True,
            sampling=a.sampling,
        )
    except (FileNotFoundError, ValueError) as e:  # no such folder / split, bad batch size for the sources
        ap.error(str(e))
    try:
        n = dump_batches(loader, a.batches, a.dump)
    except SampleDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {a.dump}: {n * loader.examples_per_batch} examples ({n} batches of {loader.examples_per_batch}) "
        f"from {', '.join(loader.sources)}; keys, target/search windows, bbox, uint8 crops"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
