"""GOTURN trainer: ``python -m train`` (one process) or ``torchrun --nproc-per-node N -m train`` (DDP).

The authors' recipe (``goturn_spec.md`` 3.5, 3.6): batches of 50 examples cut from the loader's stream of
1 + 10 examples per pair with the leftovers carried into the next batch, the summed L1 loss on the x10
targets, Caffe's SGD (momentum 0.9, base lr 1e-6, FC lr_mult 10 / 20, weight decay 5e-4 on weights only),
lr x0.1 every 100k steps, convs frozen. Modules: `train.cli` (arguments, presets), `train.loop` (the loop),
`train.solver` (Caffe SGD, multipliers, step LR), `train.data` (batches, carry-over, prefetch),
`train.checkpointing` (atomic checkpoints, RNG states), `train.distributed` (torchrun process group).
"""

DDP_SEMANTICS = """\
  --batch-examples is per process. With N processes every step consumes N x batch-examples examples (the
  global batch); each rank draws its own stream of pairs (the authors' sampling, with replacement, seeded by
  rank; with --sampling epoch it reads its own part of the shards: DALI shard_id = rank, num_shards = N) and
  cuts its own 50-example batches with its own carry-over. Each rank's loss is the authors' sum over its own batch
  and DDP averages the gradients over ranks, so one update has the size of a single process's 50-example
  summed gradient, with N times less noise. This is what Caffe's own multi-GPU solver does (it divides the
  summed gradients by the number of solvers), so --lr and the schedule (--steps, --lr-step, all counted in
  steps) need no change: N GPUs run the authors' 450k steps in about the same time while seeing N times the
  examples. To train on the authors' number of examples instead, divide --steps and --lr-step by N (raising
  --lr with N is the linear-scaling heuristic, not the authors' recipe). The logged loss is the mean over
  ranks of each rank's batch loss (the single-process unit); examples_per_s counts all ranks. Checkpoints hold
  every rank's data position and RNG state: an exact resume needs the same N (with another N the weights and
  solver resume and the data order restarts, with a warning)."""

__doc__ += "\nDDP semantics:\n" + DDP_SEMANTICS + "\n"
