"""Checkpoints (docs/CONTRACTS.md): a dict saved with ``torch.save`` and always read with
``weights_only=True``.

``{"format": "goturn-checkpoint-v1", "variant": str, "normalization": str, "model": state_dict, ...}``; the
trainer adds optimizer / scheduler / step / rng / data-position keys to the same dict, which `load_model`
ignores.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch

from model.net import DEFAULT_NORMALIZATION, VARIANTS, GoturnNet
from model.preprocess import MODES
from shards.format import fsync_dir
from shards.input_files import not_regular

FORMAT = "goturn-checkpoint-v1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


class CheckpointError(ValueError):
    """A file that is not a usable GOTURN checkpoint; the message says why."""


def make_checkpoint(net: GoturnNet, **extra: Any) -> dict[str, Any]:
    """The contract's dict for ``net`` (its variant and normalization) plus any ``extra`` keys (``model=`` gives
    the state dict to store, e.g. CPU copies, in place of ``net.state_dict()``)."""
    return {
        "format": FORMAT,
        "variant": net.variant,
        "normalization": net.normalization,
        "model": net.state_dict(),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any] | GoturnNet, **extra: Any) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename, fsync of the folder): a crash never
    leaves a half-written file.

    ``checkpoint`` is either a ready dict (must hold the contract's keys) or a `GoturnNet` (wrapped with
    `make_checkpoint`). Returns the final path.
    """
    ckpt = make_checkpoint(checkpoint, **extra) if isinstance(checkpoint, GoturnNet) else {**checkpoint, **extra}
    _validate(ckpt, str(path))
    path = Path(path)
    if path.exists() and (kind := not_regular(path.stat().st_mode)):  # the rename would replace e.g. /dev/null
        raise CheckpointError(f"{path} is {kind}, not a file to write a checkpoint to")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make this one file unreadable to the user's group
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _validate(ckpt: Mapping[str, Any], where: str) -> None:
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{where}: not a {FORMAT} checkpoint (format={fmt!r})")
    if ckpt.get("variant") not in VARIANTS:
        raise CheckpointError(f"{where}: unknown variant {ckpt.get('variant')!r}; expected one of {VARIANTS}")
    if ckpt.get("normalization") not in MODES:
        raise CheckpointError(f"{where}: unknown normalization {ckpt.get('normalization')!r}; expected {MODES}")
    if not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{where}: no 'model' state dict")
    if not isinstance(ckpt.get("backbone_only", False), bool):
        raise CheckpointError(f"{where}: 'backbone_only' is {ckpt['backbone_only']!r}, not true or false")
    bad = [k for k, v in ckpt["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: the state dict maps {bad[:3]!r} to something other than a named tensor")


def _torch_reason(e: Exception) -> str:
    """The first sentence of the line that says what went wrong: torch's messages run to paragraphs of
    advice (about ``weights_only=False``, which this project never uses)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = next((ln.split("WeightsUnpickler error:", 1)[1] for ln in lines if "WeightsUnpickler error:" in ln), "")
    line = line.strip() or (lines[0] if lines else type(e).__name__)
    return line.split(". ")[0].rstrip(".")


MAX_CHECKPOINT_BYTES = 4 << 30  # the largest training checkpoint (net + Adam moments) is ~1.4 GB


def check_zip_records(path: str | os.PathLike, crcs: bool = False) -> None:
    """Refuse, before ``torch.load`` reads anything, a file or zip records larger than any checkpoint (torch would
    read them into memory) and compressed records, which ``torch.save`` never writes (a 256 KB file can inflate
    to gigabytes before torch's own checks). ``crcs``: also every record against its CRC-32 (torch.load checks
    none, so a damaged copy loaded with some weights silently changed; ~0.13 s for the 455 MB net; legacy-format
    files carry no checksum)."""
    size = os.stat(path).st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, more than any checkpoint ({MAX_CHECKPOINT_BYTES} bytes)")
    if not zipfile.is_zipfile(path):
        return  # legacy (pre-1.6) format: torch.load(weights_only=True) reads it, uncompressed
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            raise CheckpointError(f"{path}: a zip with compressed records, which torch.save never writes")
        if sum(i.file_size for i in infos) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: records of more than {MAX_CHECKPOINT_BYTES} bytes")
        if not crcs:
            return
        try:
            bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: a damaged zip ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: record {bad!r} fails its CRC check (a damaged copy?)")


def torch_load(path: str | os.PathLike, *, verify: bool = False, **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)`` (no arbitrary pickles) after `check_zip_records` (with the checksums when
    ``verify``: a full load; a peek at a few keys through ``mmap`` skips them): every checkpoint this project
    reads, the tracker's and the trainer's, comes through here."""
    check_zip_records(path, crcs=verify)
    return torch.load(path, weights_only=True, **kwargs)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint dict (`torch_load`, checksums verified)."""
    try:
        ckpt = torch_load(path, verify=True, map_location=map_location)
    except CheckpointError:  # the size, record and checksum checks' own messages
        raise
    except Exception as e:  # torch raises several types for non-zip / unpickling failures
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({_torch_reason(e)})"
        ) from None
    _validate(ckpt, str(path))
    return ckpt


def _strip_wrappers(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Keys without DDP / torch.compile prefixes; two keys that become one (``module.fc8.weight`` beside
    ``fc8.weight``) are an error, not a silent pick."""
    out = {}
    for key, v in state.items():
        k, changed = key, True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        if k in out:
            raise CheckpointError(f"{where}: two tensors for {k!r} once wrapper prefixes are removed ({key!r})")
        out[k] = v
    return out


def _check_values(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Weights are finite floating-point numbers: a NaN head tracks by never moving (the lost-target guard keeps
    the box), an integer or complex tensor would be cast without a word."""
    for k, v in state.items():
        if not v.is_floating_point():
            raise CheckpointError(f"{where}: {k} holds {v.dtype} values, not floating-point weights")
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: {k} holds NaN or infinite values (a diverged or damaged run?)")


# torch.save's legacy (non-zip) format starts with its pickled magic number (torch.serialization.MAGIC_NUMBER).
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: zip (the default since torch 1.6) or the legacy pickle format (a pickle PROTO opcode,
    then the magic number); everything else is offered to the Caffe reader."""
    with open(path, "rb") as f:
        head = f.read(64)
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head)


def _refuse_backbone(where: str) -> NoReturn:
    raise CheckpointError(
        f"{where}: a backbone-only model (CaffeNet conv weights, e.g. bvlc_reference_caffenet / tracker_init, "
        f"with an untrained head) cannot track; it only initialises training (`python -m train --init {where}`)"
    )


class Weights(NamedTuple):
    """What a weights file holds, whichever kind it is (see `read_weights`)."""

    variant: str
    normalization: str
    state: dict[str, torch.Tensor]  # keys without DDP / torch.compile wrapper prefixes
    backbone_only: bool  # conv towers only (CaffeNet / tracker_init): the head is untrained


def read_weights(path: str | os.PathLike) -> Weights:
    """The weights of a checkpoint (ours or a trainer's) or of a ``.caffemodel``, told apart by content.

    The one reader behind the tracker's ``--weights`` (`load_model`) and the trainer's ``--init``. A file that is
    not a torch file goes to `model.import_caffe`; its errors name the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if kind := not_regular(path.stat().st_mode):
        raise CheckpointError(f"{path} is {kind}, not a weights file")
    if _is_torch_file(path):
        ckpt = load_checkpoint(path, map_location="cpu")
        state = _strip_wrappers(ckpt["model"], str(path))
        _check_values(state, str(path))
        return Weights(ckpt["variant"], ckpt["normalization"], state, ckpt.get("backbone_only", False))
    from model.caffe_proto import CaffeModelError
    from model.import_caffe import load_caffemodel

    try:
        result = load_caffemodel(path)
    except CaffeModelError as e:
        if path.suffix.lower() == ".caffemodel":
            raise
        reason = str(e).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: neither a PyTorch checkpoint nor a usable Caffe model: {reason}") from None
    return Weights(result.variant, DEFAULT_NORMALIZATION[result.variant], result.state_dict, result.kind == "backbone")


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_backbone: bool = False
) -> GoturnNet:
    """A `GoturnNet` in eval mode from a checkpoint (ours or a trainer's) or directly from a ``.caffemodel``.

    The variant and normalization come from the file (`read_weights`). Backbone-only files (conv weights, head
    from random fillers) are refused unless ``allow_backbone``: a tracker built from one would run silently with
    a random head.
    """
    w = read_weights(path)
    if w.backbone_only and not allow_backbone:
        _refuse_backbone(str(path))
    net = GoturnNet(w.variant, init="none", normalization=w.normalization)
    try:
        net.load_state_dict(w.state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit GoturnNet({w.variant!r}): {e}") from None
    return net.to(device).eval()
