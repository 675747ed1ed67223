"""Training checkpoints: atomic writes, the RUN_DIR layout, RNG states as plain tensors.

Layout: ``checkpoint-{step:08d}.pt`` for the last ``keep_last`` saves plus ``checkpoint-latest.pt`` (a hard
link to the newest one, so it costs no extra disk and is replaced atomically). Every file is a plain dict that
``torch.load(weights_only=True)`` accepts, in the `goturn-checkpoint-v1` format that
``model.checkpoint.load_model`` reads (``format``, ``variant``, ``normalization``, ``model``) plus the
trainer's keys: ``optimizer``, ``scheduler``, ``step``, ``ranks`` (per rank: RNG states and data position),
``config``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from shards.format import fsync_dir

LATEST = "checkpoint-latest.pt"
INITIAL_NAME = "initial.pt"  # the untrained weights, written before step 1
_STEP_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


# ------------------------------------------------------------------------------------------------------------
# RNG states as weights_only-safe values
# ------------------------------------------------------------------------------------------------------------


def rng_state(device: torch.device | None = None) -> dict:
    """torch (CPU and this process's CUDA device), numpy global and python ``random`` states, as tensors/ints.

    Dropout draws from torch's generator of the device it runs on; numpy/python are saved for any code that
    uses the global generators.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "cuda": None,
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if state.get("cuda") is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


# ------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:08d}.pt"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Step-numbered checkpoints in ``run_dir``, oldest first."""
    out = []
    for p in Path(run_dir).glob("checkpoint-*.pt"):
        m = _STEP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def save(run_dir: Path, ckpt: dict, keep_last: int = 3) -> Path:
    """Write the step checkpoint, point ``checkpoint-latest.pt`` at it, then drop all but the last
    ``keep_last``.

    The previous latest stays untouched until the new file is complete (rename), so an interrupted save leaves
    the last good checkpoint in place. Step files beyond the one just written belong to an abandoned branch (a
    rollback: an older checkpoint linked over the latest, ``ln -f``, and resumed) and are dropped too, so they can
    neither crowd out the new ones nor be taken for the newest.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(step_path(run_dir, int(ckpt["step"])), ckpt)
    latest = run_dir / LATEST
    tmp = run_dir / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.exists():
        tmp.unlink()
    try:
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links: a copy, on disk before it is renamed into place
            shutil.copyfile(path, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, latest)
    except BaseException:  # a failed copy (a full disk) would keep up to a checkpoint's size
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(run_dir)
    step = int(ckpt["step"])
    for s, stale in step_checkpoints(run_dir):
        if s > step:
            stale.unlink(missing_ok=True)
    if keep_last > 0:
        for _, old in step_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Delete the temporary files of saves a SIGKILL interrupted (``.checkpoint-*`` / ``.initial.pt.*``: up to a
    checkpoint's size each, and a stale hard link keeps a pruned checkpoint's disk alive); returns their names.
    Only a run's sole writer may call it: rank 0, before its first save."""
    removed = []
    for pattern in (".checkpoint-*", f".{INITIAL_NAME}.*"):
        for p in Path(run_dir).glob(pattern):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def load(path: Path) -> dict:
    """A training checkpoint, read and checked like every other (`model.checkpoint.load_checkpoint`)."""
    return load_checkpoint(Path(path), map_location="cpu")
