"""The training loop: one process per device, DDP when launched by torchrun, exact resume.

Per step: a prefetched uint8 batch (already on the device), `model.preprocess.normalize` on the device,
forward (optionally under bf16 autocast; the target tower once per distinct target crop), the authors' summed
L1 loss in fp32, backward (DDP all-reduces the FC gradients), the solver (`CaffeSGD`, or Adam for the sample
preset), then the step LR. The loss stays on the device; it is read back only at log / checkpoint / validation
steps (one all-reduce of the pending losses), and which examples share a target crop comes from the batch layout
(`model.net.pair_runs`), not from the pixels, so a step reads nothing back from the GPU. A non-finite loss found
where losses are read back stops the run before any checkpoint of the bad state is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

if TYPE_CHECKING:
    from pipeline.augment import GoturnLoader

from model.checkpoint import make_checkpoint, save_checkpoint
from model.geometry import SCALE_FACTOR
from model.net import pair_runs, unique_consecutive_crops
from train import checkpointing, distributed, solver
from train.config import TrainConfig
from train.data import DataError, ExampleBatcher, Prefetcher, position_to_cpu


class TrainingError(RuntimeError):
    """A run that cannot continue (bad loss, bad resume); the CLI prints the message, no traceback."""


# ------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------


INITIAL = checkpointing.INITIAL_NAME  # model-only checkpoint of the weights before step 1


def build_loader(shards: str, split: str, cfg: TrainConfig, ctx: distributed.DistContext, seed: int) -> GoturnLoader:
    """`pipeline.augment.GoturnLoader` for this rank's shard of ``split``."""
    from pipeline.augment import GoturnLoader

    kwargs = {
        "split": split,
        "device": cfg.loader_device,
        "pairs_per_batch": cfg.loader_pairs,
        "k": cfg.k,
        "seed": seed,
        "shard_id": ctx.rank,
        "num_shards": ctx.world_size,
        # Validation reads the val split in epoch order (no sample twice), from the same epoch 0 every time.
        "sampling": cfg.sampling if split == "train" else "epoch",
    }
    if cfg.loader_threads:
        kwargs["num_threads"] = cfg.loader_threads
    if cfg.loader_device == "gpu":
        kwargs["device_id"] = ctx.device.index if ctx.device.type == "cuda" else ctx.local_rank
    return GoturnLoader(shards, **kwargs)


def load_init(model: torch.nn.Module, path: str) -> str:
    """Copy ``--init`` weights (a checkpoint or a caffemodel, `model.checkpoint.read_weights`) into ``model``; a
    backbone-only file (CaffeNet / tracker_init) sets the convs only, so the head keeps this run's seeded Caffe
    fillers. Returns a one-line summary."""
    from model.caffe_proto import CaffeModelError
    from model.checkpoint import CheckpointError, read_weights

    try:
        w = read_weights(path)
    except (CheckpointError, CaffeModelError) as e:
        raise TrainingError(f"--init {str(e).splitlines()[0]}") from None
    if w.variant != model.variant and not w.backbone_only:
        raise TrainingError(
            f"--init {path} holds a network of the {w.variant!r} variant; train it with --variant {w.variant}"
        )
    state = w.state
    if w.backbone_only:
        state = {k: v for k, v in state.items() if k.startswith(("target.", "search."))}
    try:
        model.load_state_dict(state, strict=not w.backbone_only)
    except RuntimeError as e:
        raise TrainingError(f"--init {path} does not fit GoturnNet({model.variant!r}): {e}") from None
    what = "conv towers (head from Caffe fillers)" if w.backbone_only else "all layers"
    return f"initialised {what} from {path}"


def sum_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' loss: |pred - target| summed over batch and coordinates (Caffe ASUM), in fp32."""
    return (pred.float() - target.float()).abs().sum()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes ``(N, 4)`` row by row; degenerate predictions (x2 < x1) count as empty.

    Computed in the x10 crop frame: a per-axis scaling leaves IoU unchanged, so it equals the image-frame IoU.
    """
    ix = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    iy = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


class RunLog:
    """``log.jsonl`` + TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Rows after the checkpoint belong to the interrupted tail that is about to be recomputed; a line the
            # interruption tore (killed mid-write, full disk) is dropped too rather than blocking the resume.
            keep, torn = [], 0
            for ln in self.path.read_text(errors="replace").splitlines():
                try:
                    step = json.loads(ln)["step"] if ln.strip() else None
                except (ValueError, KeyError, TypeError):
                    torn += 1
                    continue
                if step is not None and step <= resume_step:
                    keep.append(ln)
            if torn:
                print(
                    f"[train] {self.path}: dropped {torn} unparsable line(s) (torn by an interruption?)",
                    file=sys.stderr,
                )
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            tmp.replace(self.path)
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run, closed in close()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir), purge_step=None if resume_step is None else resume_step + 1)

    def row(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                prefix = "val" if key.startswith("val_") else "train"
                self.writer.add_scalar(f"{prefix}/{key.removeprefix('val_')}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


# ------------------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------------------


class Trainer:
    """Holds model, solver, data and logs for one process; `fit` runs to ``cfg.steps`` or a stop condition."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.DistContext):
        from model.net import GoturnNet

        self.cfg = cfg
        self.ctx = ctx
        self.run_dir = Path(cfg.out)
        self.device = ctx.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ckpt = None
        if cfg.resume:
            latest = self.run_dir / checkpointing.LATEST
            if not latest.is_file():
                raise TrainingError(f"--resume: no {latest} to resume from")
            try:
                ckpt = checkpointing.load(latest)
            except Exception as e:  # unreadable / foreign file: say which and why, no traceback
                raise TrainingError(f"--resume: cannot load {latest}: {e}") from None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = GoturnNet(variant=cfg.variant, init=cfg.conv_init, device=self.device)
        self.messages: list[str] = []
        self._fresh_epoch = 0
        if cfg.init and ckpt is None:
            self.messages.append(load_init(self.model, cfg.init))
        elif cfg.init and cfg.init != ckpt.get("config", {}).get("init"):  # the run's own --init is no news
            self.messages.append(f"--init {cfg.init} ignored: resuming from {self.run_dir / checkpointing.LATEST}")
        elif ckpt is None and cfg.conv_init == "caffe" and not cfg.train_backbone:
            # The authors start from CaffeNet's convs; without them the frozen towers give near-constant features.
            self.messages.append(
                "warning: no --init: the conv towers start from random Caffe fillers and stay frozen, so only the "
                "FC head learns, on random features. Pass CaffeNet weights (--init bvlc_reference_caffenet.caffemodel "
                "or --init tracker_init.caffemodel) or train the convs too (--train-backbone)."
            )
        groups = solver.param_groups(self.model, cfg.train_backbone, cfg.weight_decay)
        self.optimizer = solver.make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
        self.scheduler = solver.CaffeStepLR(self.optimizer, cfg.lr, cfg.gamma, cfg.lr_step)
        self.step = 0
        position = None
        self._seed_rngs(cfg.seed + 7919 * ctx.rank)  # dropout masks differ across ranks, reproducibly
        if ckpt is not None:
            position = self._restore(ckpt)
        self.module = self.model
        if ctx.enabled:
            self.module = DDP(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        self.forward = torch.compile(self.module) if cfg.compile else self.module
        self.norm_mode = self.model.normalization
        # the pipeline's targets are x10 crop fractions (the authors' units); OpenCV's net answers in 227ths
        self.target_scale = self.model.crop_units / SCALE_FACTOR
        try:
            self.loader = build_loader(cfg.shards, "train", cfg, ctx, seed=cfg.seed)
        except (ValueError, FileNotFoundError) as e:  # too few samples for the ranks / batch, missing split
            raise TrainingError(f"training data in {cfg.shards}: {e}") from None
        if position is None and self._fresh_epoch and hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self._fresh_epoch)  # not the epochs already seen, after an inexact resume
        if cfg.val_shards:  # fail now, not at the first validation hours later
            try:
                build_loader(cfg.val_shards, "val", cfg, ctx, seed=cfg.seed + 1)
            except (ValueError, FileNotFoundError) as e:
                raise TrainingError(
                    f"validation data in {cfg.val_shards}: {e} (use --no-val, --val-shards or a smaller --loader-pairs)"
                ) from None
        self.batcher = ExampleBatcher(self.loader, cfg.batch_examples, position, device=self.device)
        self.last_position = position
        self.skipped_batches = 0  # as of the last batch trained on (`Batch.skipped`)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext()
        )
        self.last_ckpt: Path | None = self.run_dir / checkpointing.LATEST if ckpt is not None else None
        self._interrupted = False
        self.signal: int | None = None  # the signal that interrupted the run (the CLI exits 128 + it)
        self._t0: float | None = None  # when fit() started (for the checkpoint's running elapsed_s)
        # Running totals carried across resumes (a resume may change the world size: never recompute them).
        self.examples_before = int(ckpt.get("examples", 0)) if ckpt is not None else 0
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0)) if ckpt is not None else 0.0
        self.resume_step = self.step

    # ---- state --------------------------------------------------------------------------------------------

    @staticmethod
    def _seed_rngs(seed: int) -> None:
        import random

        import numpy as np

        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _restore(self, ckpt: dict) -> dict | None:
        cfg, ctx = self.cfg, self.ctx
        if ckpt.get("variant", cfg.variant) != cfg.variant:
            raise TrainingError(f"--resume: checkpoint variant {ckpt.get('variant')!r} != {cfg.variant!r}")
        saved = ckpt.get("config", {})
        if saved.get("optimizer", cfg.optimizer) != cfg.optimizer:  # their states differ (momentum vs Adam moments)
            raise TrainingError(
                f"--resume: the run was trained with --optimizer {saved['optimizer']}, which cannot continue as "
                f"--optimizer {cfg.optimizer}; drop --optimizer, or start a new run (another --out) from these "
                f"weights with --init {self.run_dir / checkpointing.LATEST}"
            )
        self.model.load_state_dict(ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise TrainingError(
                f"--resume: the optimizer state does not fit this run's parameter groups ({e}); "
                "was the run started with a different --train-backbone?"
            ) from None
        self._apply_solver_settings()
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        ranks = ckpt.get("ranks") or []
        # Settings that change the data stream. The shard *path* is not one: the loader compares the shards' file
        # names and counts itself, so a moved folder or a trailing slash still resumes exactly.
        changed = [
            k
            for k in ("seed", "batch_examples", "loader_pairs", "k", "sampling", "loader_device")
            if k in saved and saved[k] != getattr(cfg, k)
        ]
        if len(ranks) != ctx.world_size or changed:
            parts = [f"world size {len(ranks)} -> {ctx.world_size}"] if len(ranks) != ctx.world_size else []
            parts += [f"changed {', '.join(changed)}"] if changed else []
            why = ", ".join(parts)
            epochs = [r["data"]["loader"].get("epoch", -1) for r in ranks if (r.get("data") or {}).get("loader")]
            self._fresh_epoch = max(epochs, default=-1) + 1
            self.messages.append(
                f"resume is not exact ({why}): weights and solver resume, the data restarts at epoch "
                f"{self._fresh_epoch} with reseeded RNGs"
            )
            self._seed_rngs(cfg.seed + 7919 * ctx.rank + 104729 * self.step)
            return None
        mine = ranks[ctx.rank]
        if saved.get("device", self.device.type) != self.device.type:  # dropout draws from the device's generator
            self.messages.append(
                f"resume on {self.device.type} of a run trained on {saved['device']}: the data stream resumes "
                "exactly, dropout masks do not (another device's random generator)"
            )
        checkpointing.set_rng_state(mine["rng"], self.device)
        return mine["data"]

    def _apply_solver_settings(self) -> None:
        """Put this run's --momentum / --weight-decay back into the groups ``optimizer.load_state_dict`` just
        replaced with the checkpoint's, so a value changed on resume takes effect (biases keep decay_mult 0)."""
        cfg = self.cfg
        changes = set()
        for g in self.optimizer.param_groups:
            decay_mult = g.get("decay_mult", 1.0)
            if "momentum" in g and g["momentum"] != cfg.momentum:  # CaffeSGD only; Adam has no momentum
                changes.add(f"momentum {g['momentum']:g} -> {cfg.momentum:g}")
                g["momentum"] = cfg.momentum
            if decay_mult and g["weight_decay"] != cfg.weight_decay * decay_mult:
                changes.add(f"weight decay {g['weight_decay'] / decay_mult:g} -> {cfg.weight_decay:g}")
            g["weight_decay"] = cfg.weight_decay * decay_mult
        if changes:
            self.messages.append(f"resume: {', '.join(sorted(changes))} (the command line's values replace the run's)")

    def checkpoint_dict(self) -> dict:
        """This run's state, gathered from every rank (a collective: all ranks must call it)."""
        with torch.no_grad():
            sums = torch.stack([p.detach().float().sum() for p in self.model.parameters()]).cpu()
        if not torch.isfinite(sums).all():  # the losses so far were finite, this step's update was not
            raise self._non_finite(f"non-finite weights after step {self.step}")
        mine = {
            "rng": checkpointing.rng_state(self.device),
            "data": position_to_cpu(self.last_position) if self.last_position is not None else None,
            "param_sums": sums,  # per-parameter sums: equal on every rank unless DDP replicas diverged
        }
        ranks = distributed.all_gather_objects(mine, self.ctx)
        if not self.ctx.is_main:
            return {}
        if any(not torch.equal(r["param_sums"], ranks[0]["param_sums"]) for r in ranks[1:]):
            print(f"[train] warning: replicas differ at step {self.step} (DDP out of sync?)", file=sys.stderr)
        opt = self.optimizer.state_dict()
        opt["state"] = {i: {k: v.detach().cpu() for k, v in s.items()} for i, s in opt["state"].items()}
        return make_checkpoint(
            self.model,
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=opt,
            scheduler=self.scheduler.state_dict(),
            step=self.step,
            examples=self.examples_done(),
            elapsed_s=self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0),
            world_size=self.ctx.world_size,
            ranks=ranks,
            config=self.cfg.to_dict(),
            torch_version=str(torch.__version__),
        )

    def examples_done(self) -> int:
        """Training examples seen by the run so far, over every rank and every resume."""
        return self.examples_before + (self.step - self.resume_step) * self.cfg.batch_examples * self.ctx.world_size

    def save_checkpoint(self) -> None:
        ckpt = self.checkpoint_dict()
        if self.ctx.is_main:
            with self._writing("a checkpoint"):
                checkpointing.save(self.run_dir, ckpt, self.cfg.keep_last)
            self.last_ckpt = self.run_dir / checkpointing.LATEST

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A failed write (a full disk: torch's zip writer says "unexpected pos ...", the OSError chained) as one
        TrainingError naming the OS error and the last good checkpoint."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            cause = e
            while not isinstance(cause, OSError) and (cause.__cause__ or cause.__context__) is not None:
                cause = cause.__cause__ or cause.__context__
            raise TrainingError(f"cannot write {what} in {self.run_dir} ({cause}); {self._kept()}") from e

    # ---- steps --------------------------------------------------------------------------------------------

    def net_targets(self, bbox: torch.Tensor) -> torch.Tensor:
        """The pipeline's x10 crop-fraction targets in the units the net answers in (`target_scale`)."""
        return bbox * self.target_scale if self.target_scale != 1.0 else bbox

    def train_step(
        self,
        target: torch.Tensor,
        search: torch.Tensor,
        bbox: torch.Tensor,
        runs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One solver iteration on a uint8 batch already on the device; returns the (device) loss. ``runs``:
        the batch's `model.net.pair_runs` (on the device), else the distinct targets are found from the pixels."""
        pred = self.predict(self.forward, target, search, runs)
        loss = sum_l1(pred, self.net_targets(bbox))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def predict(
        self,
        net: Callable,
        target: torch.Tensor,
        search: torch.Tensor,
        runs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Normalise uint8 crops on the device and run ``net``, the target tower once per distinct target crop
        (a pair's 1 + k examples share one): from ``runs`` (`model.net.pair_runs`) where the batch layout is
        known, else from the pixels (`model.net.unique_consecutive_crops`, which reads a count back)."""
        from model.preprocess import normalize

        if runs is not None:
            first, index = runs
            targets = target.index_select(0, first)
        else:
            targets, index = unique_consecutive_crops(target)
        t = normalize(targets, self.norm_mode)
        s = normalize(search, self.norm_mode)
        with self.autocast:
            return net(t, s, index)

    @torch.no_grad()
    def validate(self) -> dict:
        """Val loss (per ``batch_examples`` examples, the training loss' unit), mean IoU of true examples, and
        ``val_pairs``, the pairs they cover.

        Every validation of a run reads the same pairs with the same shifts: the loader's epoch 0 with seed
        ``seed + 1``. As for a training epoch, each rank reads its share of the largest source and drops its last
        ``< pairs_per_source`` samples (every rank runs the same number of batches), so ``val_pairs`` can be a
        little below the split's size, and depends on the number of ranks (``--val-batches`` caps it too).

        A val batch with an undecodable sample is skipped with a warning and counted (``val_skipped_batches``), as
        training skips one: a corrupt val sample must not end the run. A tqdm bar shows progress (rank 0, with
        progress on): a closing validation over the whole split can outlast a short run's training.
        """
        from pipeline.augment import SampleDecodeError

        cfg = self.cfg
        try:
            loader = build_loader(cfg.val_shards, "val", cfg, self.ctx, seed=cfg.seed + 1)
        except (ValueError, FileNotFoundError) as e:
            raise TrainingError(
                f"validation data in {cfg.val_shards}: {e} (use --no-val, --val-shards or a smaller --loader-pairs)"
            ) from None
        self.model.eval()
        acc = torch.zeros(5, dtype=torch.float64, device=self.device)  # loss, examples, IoU, true ones, skipped
        per_pair = cfg.k + 1
        # Every loader batch starts at a pair and holds whole pairs, so one layout serves all (no pixel compare).
        runs = tuple(r.to(self.device) for r in pair_runs(loader.examples_per_batch, 0, per_pair))
        total = min(cfg.val_batches, len(loader)) if cfg.val_batches else len(loader)
        bar = None
        if cfg.progress and self.ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="val", unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)
        it = iter(loader)
        for _ in range(total):
            try:
                item = next(it)
            except StopIteration:
                break
            except SampleDecodeError as e:  # every rank still reaches the all-reduce below
                acc[4] += 1
                print(f"[train] warning: validation skipped a loader batch: {e}", file=sys.stderr)
                it, item = iter(loader), None  # the loader continues with the next batch
            if bar is not None:
                bar.update(1)
            if item is None:
                continue
            t = item["target"].to(self.device, non_blocking=True)
            s = item["search"].to(self.device, non_blocking=True)
            bb = self.net_targets(item["bbox"].to(self.device, non_blocking=True).float())
            pred = self.predict(self.model, t, s, runs).float()
            acc[0] += (pred - bb).abs().sum().double()
            acc[1] += bb.shape[0]
            acc[2] += box_iou(pred[::per_pair], bb[::per_pair]).sum().double()
            acc[3] += bb[::per_pair].shape[0]
            if item["search"].is_cuda:  # zero-copy DALI GPU buffers: finish reading them before the loader reuses them
                torch.cuda.current_stream(self.device).synchronize()
        if bar is not None:
            bar.close()
        del loader
        self.model.train()
        distributed.all_reduce_sum(acc, self.ctx)
        loss_sum, n, iou_sum, n_true, skipped = acc.tolist()
        out = {"val_skipped_batches": int(skipped)} if skipped else {}
        if n:
            out.update(
                val_loss=loss_sum / n * cfg.batch_examples, val_mean_iou=iou_sum / max(n_true, 1), val_pairs=int(n_true)
            )
        return out

    # ---- main loop ----------------------------------------------------------------------------------------

    def _sync_point(
        self, pending: list[tuple[int, torch.Tensor]], out_of_time: bool
    ) -> tuple[list[float], bool, bool, int]:
        """The one read-back of a logging step: the pending steps' losses (mean over ranks) and the stop flags
        (any rank interrupted / out of time; loader batches skipped, all ranks) in a single all-reduce. A
        non-finite loss stops the run here, before any checkpoint of that state is written."""
        flags = [float(self._interrupted), float(out_of_time), float(self.skipped_batches)]
        losses = torch.stack([v for _, v in pending]).float()
        buf = torch.cat([losses, torch.tensor(flags, device=losses.device)])
        distributed.all_reduce_sum(buf, self.ctx)
        vals = (buf[: len(pending)] / self.ctx.world_size).tolist()
        interrupted, timed_out, skipped = buf[-3].item() > 0, buf[-2].item() > 0, int(buf[-1].item())
        for (step, _), v in zip(pending, vals, strict=True):
            if not math.isfinite(v):
                raise self._non_finite(f"non-finite loss ({v}) at step {step}")
        return vals, interrupted, timed_out, skipped

    def _kept(self) -> str:
        return f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written"

    def _non_finite(self, what: str) -> TrainingError:
        """The stop for a state that must not be saved, saying which checkpoint is the last good one."""
        return TrainingError(
            f"{what}: stopping without saving this state; {self._kept()}. Lower --lr, check --init, or inspect the "
            "data (python -m shards.verify names broken samples)."
        )

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._interrupted:  # second signal: give up at once
            raise KeyboardInterrupt
        self._interrupted = True
        self.signal = signum

    def fit(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        start_step = self.step
        log = RunLog(self.run_dir, ctx.is_main, resume_step=start_step if cfg.resume else None)
        for m in self.messages:
            if ctx.is_main:
                print(f"[train] {m}", file=sys.stderr)
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread (e.g. a test's thread)
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        vote = distributed.StopVote(ctx)
        distributed.barrier(ctx)  # every rank has its handlers before initial.pt (below) says training starts
        bar = None
        if ctx.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
        if ctx.is_main and (stale := checkpointing.remove_stale_temps(self.run_dir)):
            print(f"[train] removed temporary files of interrupted saves: {', '.join(stale)}", file=sys.stderr)
        if start_step == 0 and ctx.is_main:  # the untrained network, for before/after comparisons; CPU tensors, so
            cpu_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}  # a plain torch.load works
            with self._writing(INITIAL):
                save_checkpoint(self.run_dir / INITIAL, make_checkpoint(self.model, model=cpu_state))
        prefetch = Prefetcher(lambda: iter(self.batcher), self.device, cfg.prefetch)
        pending: list[tuple[int, torch.Tensor]] = []
        first_loss = last_loss = None
        last_val: dict[str, float] = {}
        stop_reason = "steps"
        t0 = self._t0 = time.perf_counter()
        window_t = t0
        window_steps = 0
        self.model.train()
        try:
            while self.step < cfg.steps:
                lr = self.scheduler.rate()
                try:
                    b = next(prefetch)
                except DataError as e:
                    raise TrainingError(str(e)) from None
                loss = self.train_step(b.target, b.search, b.bbox, b.runs)
                self.step += 1
                window_steps += 1
                self.last_position = b.position
                self.skipped_batches = b.skipped
                pending.append((self.step, loss))
                if bar is not None:
                    bar.update(1)
                s = self.step
                do_ckpt = cfg.ckpt_every > 0 and s % cfg.ckpt_every == 0
                do_val = bool(cfg.val_shards) and cfg.val_every > 0 and s % cfg.val_every == 0
                last = s >= cfg.steps
                out_of_time = cfg.time_limit > 0 and (time.perf_counter() - t0) > cfg.time_limit * 60
                stop_now = vote.poll(self._interrupted or out_of_time)  # under DDP: agreed by all ranks, this step
                if not (s % cfg.log_every == 0 or do_ckpt or do_val or last or stop_now):
                    continue
                vals, interrupted, timed_out, skipped = self._sync_point(pending, out_of_time)
                if first_loss is None:
                    first_loss = vals[0]
                last_loss = vals[-1]
                now = time.perf_counter()
                ex_s = window_steps * cfg.batch_examples * ctx.world_size / max(now - window_t, 1e-9)
                row = {
                    "step": s,
                    "loss": vals[-1],
                    "loss_avg": sum(vals) / len(vals),
                    "lr": lr,
                    "examples_per_s": ex_s,
                    "examples": self.examples_done(),
                    "elapsed_s": self.elapsed_before + (now - t0),  # over every resume, as "examples"
                }
                if skipped:  # loader batches lost to undecodable samples (named on stderr), all ranks, this process
                    row["skipped_batches"] = skipped
                pending.clear()
                stop = interrupted or timed_out
                if do_ckpt or stop or (last and cfg.final_checkpoint):  # before validating: a failure there
                    self.save_checkpoint()  # must not cost the step's checkpoint
                if do_val or (cfg.val_shards and (last or timed_out)):  # always a closing validation
                    row.update(self.validate())
                log.row(row)
                if "val_loss" in row:
                    last_val = {"val_loss": row["val_loss"], "val_mean_iou": row["val_mean_iou"]}
                if bar is not None:
                    post = {"loss": f"{vals[-1]:.2f}", "ex/s": f"{ex_s:.0f}", "lr": f"{lr:.1e}"}
                    if "val_mean_iou" in row:
                        post["val_iou"] = f"{row['val_mean_iou']:.3f}"
                    bar.set_postfix(post, refresh=False)
                elif ctx.is_main:  # --no-progress (a batch job's log): one line per logged step instead
                    print(f"[train] {row_text(row, cfg.steps)}", file=sys.stderr)
                if stop:
                    stop_reason = "interrupted" if interrupted else "time limit"
                    break
                window_t = time.perf_counter()
                window_steps = 0
            vote.close()  # not on an error: another rank may never issue the vote this one would wait for
        finally:
            prefetch.close()
            if bar is not None:
                bar.close()
            log.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        distributed.barrier(ctx)
        return {
            "step": self.step,
            "start_step": start_step,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "stop_reason": stop_reason,
            "signal": self.signal,
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "elapsed_s": time.perf_counter() - t0,
            **last_val,
        }


def row_text(row: dict, steps: int) -> str:
    """One logged step in a line: ``step 20/450000 loss 812.4 lr 1e-06 63 ex/s[ val loss 790.1 iou 0.412]``."""
    text = f"step {row['step']}/{steps} loss {row['loss']:.4g} lr {row['lr']:.3g} {row['examples_per_s']:.0f} ex/s"
    if "val_loss" in row:
        text += f" val loss {row['val_loss']:.4g} iou {row['val_mean_iou']:.3f}"
    return text + (f" skipped {row['skipped_batches']} batches" if "skipped_batches" in row else "")


def run(cfg: TrainConfig) -> dict:
    """Train one process (under torchrun: this rank) per ``cfg``; returns a summary (rank 0's view)."""
    ctx = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, ctx).fit()
    finally:
        distributed.teardown()
