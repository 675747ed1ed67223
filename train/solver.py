"""The authors' Caffe solver (`goturn_spec.md` 3.6): SGD with Caffe's momentum form, lr/decay multipliers per
parameter group, and the ``step`` learning-rate policy.

Caffe updates ``v = m * v + lr * (g + wd * w); w -= v`` while ``torch.optim.SGD`` keeps ``v = m * v + g`` and
applies ``lr`` afterwards. The two agree only while ``lr`` is constant: at a step of the schedule Caffe's
momentum still carries the old rate (the velocity decays smoothly) whereas torch's rescales the whole velocity
at once. `CaffeSGD` implements Caffe's form exactly, so a run's trajectory across the x0.1 steps matches the
authors'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

BASE_LR = 1e-6  # solver.prototxt base_lr
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
GAMMA = 0.1  # lr_policy "step"
STEPSIZE = 100_000
CONV_MULT = (1.0, 2.0)  # lr_mult of conv weights / biases when the backbone is trained (CaffeNet's values)


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's ``SGDSolver::ComputeUpdateValue``: ``v = m*v + lr*(g + wd*w)``, ``w -= v``, per parameter
    group.

    Each group carries ``lr`` (already multiplied by its ``lr_mult``) and ``weight_decay`` (already multiplied
    by its ``decay_mult``); the momentum buffer lives in ``state[p]["momentum_buffer"]`` (zeros at the first
    step, as Caffe's history blobs start).
    """

    def __init__(self, params: Iterable, lr: float = BASE_LR, momentum: float = MOMENTUM, weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid hyper-parameters lr={lr} momentum={momentum} weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            if wd != 0:  # diff = g + wd * w in place, as Caffe's Regularize (biases: decay_mult 0)
                torch._foreach_add_(grads, params, alpha=wd)
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, grads, alpha=lr)  # v = m * v + lr * (g + wd * w)
            torch._foreach_sub_(params, bufs)  # w -= v
        return loss


OPTIMIZERS = ("caffe-sgd", "adam")


def make_optimizer(name: str, groups: list[dict], lr: float, momentum: float = MOMENTUM) -> torch.optim.Optimizer:
    """The authors' Caffe SGD, or Adam for short CPU runs from random convs (the sample preset), where plain SGD
    on the poorly conditioned random-conv features needs far more steps than a few CPU minutes allow.

    Both read each group's ``lr`` (set by `CaffeStepLR`, lr_mult applied) and its ``weight_decay``.
    """
    if name == "caffe-sgd":
        return CaffeSGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


class CaffeStepLR:
    """Caffe's ``lr_policy: "step"``: ``lr = base_lr * gamma ** floor(iter / stepsize) * lr_mult``, closed
    form.

    Closed form (not torch's multiplicative StepLR) so the rate at any step is exact and a resumed run needs
    only the step counter. Iteration ``i`` (0-based, the update that produces step ``i + 1``) uses ``lr(i)``,
    as Caffe's ``GetLearningRate`` reads ``iter_`` before incrementing it.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, base_lr: float, gamma: float = GAMMA, stepsize: int = STEPSIZE
    ):
        if stepsize <= 0:
            raise ValueError(f"stepsize must be positive, got {stepsize}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.gamma = float(gamma)
        self.stepsize = int(stepsize)
        self.iteration = 0
        self.apply()

    def rate(self, iteration: int | None = None) -> float:
        """The base rate (before lr_mult) at ``iteration`` (default: the current one)."""
        it = self.iteration if iteration is None else iteration
        return self.base_lr * self.gamma ** (it // self.stepsize)

    def apply(self) -> None:
        """Write ``rate * lr_mult`` into every group (called after each step and after loading)."""
        r = self.rate()
        for group in self.optimizer.param_groups:
            group["lr"] = r * group.get("lr_mult", 1.0)

    def step(self) -> None:
        self.iteration += 1
        self.apply()

    def state_dict(self) -> dict:
        return {
            "policy": "step",
            "base_lr": self.base_lr,
            "gamma": self.gamma,
            "stepsize": self.stepsize,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the counter; the schedule's constants come from the command line (they may be changed on
        resume on purpose, e.g. a later step), so only ``iteration`` is taken from the checkpoint."""
        self.iteration = int(state["iteration"])
        self.apply()


def param_groups(model: nn.Module, train_backbone: bool = False, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """The prototxt's ``param { lr_mult decay_mult }`` as torch parameter groups for `CaffeSGD` /
    `CaffeStepLR`.

    FC weights lr_mult 10 / decay 1, FC biases 20 / 0 (the variant's own prototxt values, from
    ``model.net.CAFFE_MULTIPLIERS``). The conv towers are frozen (``requires_grad=False`` and left out:
    Caffe's lr_mult 0, and no gradient is computed for them) unless ``train_backbone``; then they get
    CaffeNet's 1 / 2 (weights / biases) where the variant's prototxt freezes them. Biases never decay. Each
    group carries ``name``, ``lr_mult`` and ``decay_mult``; ``weight_decay`` is already multiplied by
    ``decay_mult``.
    """
    from model.net import CAFFE_MULTIPLIERS

    model.set_backbone_trainable(train_backbone)
    mult = dict(CAFFE_MULTIPLIERS[model.variant])
    if train_backbone:
        for key, default in (("conv_weight", CONV_MULT[0]), ("conv_bias", CONV_MULT[1])):
            if mult[key][0] == 0:
                mult[key] = (default, mult[key][1])
    groups = []
    for name, params in (
        ("conv_weight", model.conv_weights() if train_backbone else []),
        ("conv_bias", model.conv_biases() if train_backbone else []),
        ("fc_weight", model.fc_weights()),
        ("fc_bias", model.fc_biases()),
    ):
        if not params:
            continue
        for p in params:
            p.requires_grad_(True)
        lr_mult, decay_mult = mult[name]
        groups.append(
            {
                "name": name,
                "params": list(params),
                "lr_mult": float(lr_mult),
                "decay_mult": float(decay_mult),
                "weight_decay": weight_decay * decay_mult,
            }
        )
    return groups
