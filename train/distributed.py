"""Process-group setup for ``torchrun``: one process per device, NCCL on GPUs, gloo on CPUs.

A plain ``python -m train`` is world size 1 and never touches ``torch.distributed``; under ``torchrun`` the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) defines the group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_index(local_rank: int) -> int:
    """This rank's CUDA device: ``LOCAL_RANK`` (torchrun: every process sees every GPU of the node), or 0 when the
    launcher gave each process one GPU of its own through ``CUDA_VISIBLE_DEVICES`` (e.g. SLURM with one GPU per
    task), where ``LOCAL_RANK`` still counts the node's processes."""
    visible = torch.cuda.device_count()
    if local_rank < visible:
        return local_rank
    own = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible == 1 and own and "," not in own:
        return 0
    raise SystemExit(
        f"LOCAL_RANK {local_rank} but only {visible} CUDA device(s) visible: use --nproc-per-node <= the number of GPUs"
    )


def setup(device_type: str) -> DistContext:
    """Initialise the default group from the environment when ``WORLD_SIZE > 1``; pick this rank's device."""
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        device = torch.device("cuda", cuda_index(local_rank))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device_type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """In-place sum over ranks (a no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj`` (plain data and CPU tensors), in rank order."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class StopVote:
    """Whether any rank wants to stop (a SIGTERM / SIGINT arrived), agreed every step without a device sync.

    Why: torchrun kills its workers 30 s after forwarding a signal, and ranks may only leave the loop together,
    at a step where all of them run the checkpoint's collectives; waiting for the next log step could take
    minutes. Each step issues a 1-int all-reduce on a CPU (gloo) group and reads the previous step's result
    (long done), so every rank sees the same answer at the same step and stops at most two steps after a
    signal, for a few microseconds a step. One process: the wish itself.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.group = dist.new_group(backend="gloo") if ctx.enabled else None
        self._pending: tuple[torch.Tensor, object] | None = None

    def poll(self, wish: bool) -> bool:
        """This rank's wish goes out; the previous step's agreed answer comes back."""
        if self.group is None:
            return wish
        agreed = False
        if self._pending is not None:
            t, work = self._pending
            work.wait()
            agreed = bool(t.item())
        t = torch.tensor([int(wish)], dtype=torch.int32)
        self._pending = (t, dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True))
        return agreed

    def close(self) -> None:
        """Finish the last vote (every rank issued the same number) before the group goes away."""
        if self._pending is not None:
            self._pending[1].wait()
            self._pending = None


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
