"""GOTURN tracking: one network evaluation per frame on (previous-frame crop, current-frame crop).

Two variants, chosen by the weights (``GoturnNet.variant``):

- ``authors`` (spec 4): target = crop of the previous frame at the previous box, search = crop of the current
  frame at the same box, both from `model.geometry` (``crop_geometry(...).window`` + ``crop_and_resize``,
  rounded to uint8 like the C++'s 8-bit canvas), normalised, decoded with ``unscale_uncenter``. Boxes stay
  float64.
- ``opencv`` (spec 5.2): ``cv2.TrackerGOTURN`` reproduced step by step: integer box state, float32 patch
  rectangle, edge-replicated padding, cvRound'ed patch, bit-exact ``INTER_LINEAR_EXACT`` resize, BGR minus
  128, float32 decode with cvRound, intersection with the image (helpers at the end of `model.geometry`).

The initial box must have a positive size and overlap the frame (`check_init_box`, a ValueError otherwise);
frames must not be empty. Once tracking, a box may drift out of the frame: the tracker never crashes on a lost
target (documented deviations, only where the reference would fail or degenerate):

- a non-finite network output keeps the previous box;
- ``authors``: the decode clamps each corner to the image as the C++ does; a box thinner than ``min_size`` (1
  px) along an axis (the C++ would keep ``x2 <= x1``) is widened to ``min_size`` around its centre, kept
  inside the image;
- ``opencv``: where OpenCV would return an empty ``(0, 0, 0, 0)`` box (and throw on the next ``update``), the
  previous box is kept.

Boxes in the public API are 0-based ``(x, y, w, h)`` floats (``x + w`` is the right edge); `track_step` works
on corner arrays ``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from model import geometry as G
from model import opencv_geometry as CV
from model.devices import resolve_device
from model.net import GoturnNet
from model.preprocess import normalize

if TYPE_CHECKING:
    from PIL import Image

FrameLike = Union[np.ndarray, torch.Tensor, "Image.Image"]  # noqa: UP007 - PIL stays a lazy import


# ------------------------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------------------------


_ACCEPTED_DTYPES = "uint8, uint16 (scaled >> 8) or float (0..255 values)"


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """One conversion for numpy, torch and PIL frames alike: uint16 keeps its high byte (as ``cv2.imread``
    does for 16-bit images), float is rounded then clipped to 0..255."""
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.uint16:
        return (t.to(torch.int32) >> 8).to(torch.uint8)  # torch has no shift for uint16
    if t.is_floating_point():
        # torchvision's ToTensor and most float pipelines give 0..1, which reads as black here. Checked on the
        # CPU only (on a GPU the check would cost a synchronisation per frame).
        if t.device.type == "cpu" and t.numel() and float(t.max()) <= 1.0:
            warnings.warn(
                "a float frame with no value above 1: frames hold 0..255 values, so a 0..1 image tracks as black "
                "(multiply it by 255)",
                stacklevel=3,
            )
        return t.round().clamp(0, 255).to(torch.uint8)
    raise TypeError(f"unsupported frame dtype {t.dtype}; frames must be {_ACCEPTED_DTYPES}")


def frame_to_tensor(frame: FrameLike, device: torch.device | str = "cpu", *, private: bool = False) -> torch.Tensor:
    """Any supported frame -> ``(3, H, W)`` uint8 RGB tensor on ``device``.

    numpy ``HxWx3`` RGB / ``HxW`` or ``HxWx1`` gray / ``HxWx4`` (alpha dropped); torch ``(3|1|4, H, W)`` or
    ``(H, W)`` tensors; PIL images (float ``F`` read as the numpy array it holds, every other mode through
    `model.image_modes.to_rgb8`, as the shard builder and the OTB reader read them). numpy and torch dtypes:
    uint8; uint16, scaled to 8 bit by ``>> 8`` as OpenCV reads 16-bit images; float holding 0..255 values (not
    0..1), rounded then clipped. Any other dtype is a TypeError, a frame with no rows or columns a ValueError. A
    uint8 frame already on ``device`` is used in place (no copy) unless ``private``: the trackers keep a frame
    for the next step, while a caller may refill its buffer (a camera's ring buffer, ``cap.read(buf)``).
    """
    if isinstance(frame, torch.Tensor):
        t = frame
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(f"torch frames must be (C, H, W) with C in 1, 3, 4 or (H, W); got {tuple(t.shape)}")
        # A blocking copy: from a caller's pinned buffer an asynchronous one could still be reading when the call
        # returns (init does not sync) and the caller refills the buffer with the next frame.
        t = _to_uint8(t).to(device)
    else:
        if not isinstance(frame, np.ndarray):
            try:
                from PIL import Image
            except ImportError:  # pragma: no cover - Pillow is a dependency
                Image = None
            if Image is not None and isinstance(frame, Image.Image):
                from model.image_modes import to_rgb8

                # mode F: float samples of 0..255 values, as a float array would be; every other mode through
                # the builder's and the evaluator's rule (16-bit samples keep their high byte)
                frame = np.array(frame if frame.mode == "F" else to_rgb8(frame))
            else:
                raise TypeError(f"unsupported frame type {type(frame).__name__}")
        a = frame
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"numpy frames must be HxW, HxWx1, HxWx3 or HxWx4; got shape {a.shape}")
        kind, size = a.dtype.kind, a.dtype.itemsize
        if not ((kind == "u" and size <= 2) or (kind == "f" and size <= 8)):
            raise TypeError(f"unsupported frame dtype {a.dtype}; frames must be {_ACCEPTED_DTYPES}")
        if not a.dtype.isnative:  # big-endian data (PIL I;16B): torch reads native byte order only
            a = a.astype(a.dtype.newbyteorder("="))
        elif not a.flags.writeable:  # torch.from_numpy warns on read-only memory; one frame copy is cheap
            a = a.copy()
        t = _to_uint8(torch.from_numpy(np.ascontiguousarray(a))).permute(2, 0, 1).to(device)
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"empty frame: {t.shape[1]}x{t.shape[2]} pixels")
    if private and _shares_memory(t, frame):
        t = t.clone()
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    return t


def _shares_memory(t: torch.Tensor, frame: object) -> bool:
    """Whether ``t`` may be a view of the caller's ``frame`` (a numpy array or a tensor)."""
    if isinstance(frame, torch.Tensor):
        return t.device == frame.device and t.untyped_storage().data_ptr() == frame.untyped_storage().data_ptr()
    if isinstance(frame, np.ndarray) and t.device.type == "cpu":
        return bool(np.may_share_memory(t.numpy(), frame))
    return False


# ------------------------------------------------------------------------------------------------------------
# One batched step for N sequences
# ------------------------------------------------------------------------------------------------------------


def _crop_pairs(prev: torch.Tensor, curr: torch.Tensor, crop) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and search crops with the same window; one sampling pass when the frames have the same size."""
    if prev.shape == curr.shape:
        both = crop(torch.cat([prev, curr], dim=0))
        return both[:3], both[3:]
    return crop(prev), crop(curr)


def _fix_degenerate(
    new: np.ndarray, prev: np.ndarray, sizes: np.ndarray, min_size: float, raw: np.ndarray | None = None
) -> np.ndarray:
    """Lost-target guard: a non-finite row keeps the previous box; an axis thinner than ``min_size`` becomes
    ``min_size`` wide around its centre, shifted inside the image (``sizes``: (N, 2) of W, H).

    ``raw``: the network outputs ``new`` was decoded from, tested too (the decode clamps +-inf to the image
    border, which would otherwise pass as a finite box)."""
    finite = np.isfinite(new).all(axis=-1, keepdims=True)
    if raw is not None:
        finite &= np.isfinite(raw).all(axis=-1, keepdims=True)
    out = np.where(finite, new, prev)
    for lo, hi, size in ((0, 2, sizes[:, 0]), (1, 3, sizes[:, 1])):
        thin = out[:, hi] - out[:, lo] < min_size
        if thin.any():
            m = np.minimum(min_size, size)
            c = (out[:, lo] + out[:, hi]) / 2
            a = np.clip(c - m / 2, 0.0, size - m)
            out[:, lo] = np.where(thin, a, out[:, lo])
            out[:, hi] = np.where(thin, a + m, out[:, hi])
    return out


def _authors_crops(
    prev_frames: Sequence[torch.Tensor],
    curr_frames: Sequence[torch.Tensor],
    target_windows: np.ndarray,
    search_windows: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and search crops ``(N, 3, 227, 227)`` float, one `crop_and_resize` call per frame size.

    Sequences whose previous and current frames share a size (then both windows are equal) are cropped together
    with all others of that size (per-sequence kernel launches, not the network, bound a batch of 64+ on a GPU);
    the rare sequence whose frame size changed is cropped on its own. Crops are bit-identical however they are
    grouped.
    """
    windows = search_windows
    n = len(curr_frames)
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        key = tuple(curr_frames[i].shape) if prev_frames[i].shape == curr_frames[i].shape else ("own", i)
        groups.setdefault(key, []).append(i)
    if len(groups) == 1 and next(iter(groups))[0] != "own":
        frames = torch.stack([*prev_frames, *curr_frames])
        crops = G.crop_and_resize(frames, np.concatenate([windows, windows]))
        return crops[:n], crops[n:]
    dev = curr_frames[0].device
    shape = (n, 3, G.INPUT_SIZE, G.INPUT_SIZE)
    target = torch.empty(shape, dtype=torch.float32, device=dev)
    search = torch.empty(shape, dtype=torch.float32, device=dev)
    for key, idx in groups.items():
        if key[0] == "own":
            i = idx[0]
            target[i] = G.crop_and_resize(prev_frames[i], target_windows[i])[0]
            search[i] = G.crop_and_resize(curr_frames[i], search_windows[i])[0]
            continue
        frames = torch.stack([*(prev_frames[i] for i in idx), *(curr_frames[i] for i in idx)])
        crops = G.crop_and_resize(frames, np.concatenate([windows[idx], windows[idx]]))
        where = torch.as_tensor(idx, device=dev)
        target[where] = crops[: len(idx)]
        search[where] = crops[len(idx) :]
    return target, search


def _is_channels_last(net: GoturnNet) -> bool:
    """Whether the net's convs were converted to NHWC (then feed NHWC inputs: cuDNN's fast fp16 kernels)."""
    w = net.target.conv1.weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def _net_input(net: GoturnNet, crops: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 crops -> the net's input: normalised, in its dtype and its weights' memory format."""
    memory_format = torch.channels_last if _is_channels_last(net) else torch.contiguous_format
    dtype = next(net.parameters()).dtype
    return normalize(crops, mode).to(dtype=dtype, memory_format=memory_format)


@torch.inference_mode()
def track_step(
    net: GoturnNet,
    prev_frames: Sequence[torch.Tensor],
    prev_boxes: np.ndarray,
    curr_frames: Sequence[torch.Tensor],
    normalization: str | None = None,
    min_size: float = 1.0,
    raw_outputs: list | None = None,
) -> np.ndarray:
    """Advance N independent sequences by one frame with a single batched forward pass.

    ``prev_frames`` / ``curr_frames``: N ``(3, H_i, W_i)`` uint8 RGB tensors on the net's device (see
    `frame_to_tensor`; sizes may differ between sequences). ``prev_boxes``: ``(N, 4)`` float corners
    ``(x1, y1, x2, y2)`` of each sequence's previous box (for the ``opencv`` variant they must be integers, as
    returned by a previous call or `GoturnTracker.init`). Returns the ``(N, 4)`` float64 corners of the new
    boxes, with the module docstring's guards applied. ``normalization`` defaults to ``net.normalization``. If
    ``raw_outputs`` is a list, the network's raw ``(N, 4)`` float32 output is appended to it (diagnostics).
    """
    boxes = np.asarray(prev_boxes, dtype=np.float64).reshape(-1, 4)
    n = len(prev_frames)
    if not (n == len(curr_frames) == len(boxes)):
        raise ValueError(f"got {n} previous frames, {len(curr_frames)} current frames and {len(boxes)} boxes")
    if n == 0:
        return np.zeros((0, 4))
    mode = normalization or net.normalization
    sizes = np.array([[f.shape[2], f.shape[1]] for f in curr_frames], dtype=np.float64)  # (W, H)
    dtype = next(net.parameters()).dtype
    if net.variant == "authors":
        geom = G.crop_geometry(boxes, sizes[:, 0], sizes[:, 1])
        # The authors crop the target from the previous image with that image's size (CropPadImage(bbox_prev,
        # image_prev)); it matters only where the frame size changed.
        prev_sizes = np.array([[f.shape[2], f.shape[1]] for f in prev_frames], dtype=np.float64)
        same = (prev_sizes == sizes).all()
        twin = geom.window if same else G.crop_geometry(boxes, prev_sizes[:, 0], prev_sizes[:, 1]).window
        target, search = _authors_crops(prev_frames, curr_frames, twin, geom.window)
        t, s = _net_input(net, G.to_uint8(target), mode), _net_input(net, G.to_uint8(search), mode)
        raw = net(t, s).float().cpu().numpy()
        if raw_outputs is not None:
            raw_outputs.append(raw)
        new = G.unscale_uncenter(raw.astype(np.float64), geom, sizes[:, 0], sizes[:, 1])
        return _fix_degenerate(new, boxes, sizes, min_size, raw=raw)

    # opencv: integer (x, y, w, h) state
    rects = np.rint(G.corners_to_xywh(boxes)).astype(np.int64)
    pairs, patches = [], []
    for i in range(n):
        H, W = prev_frames[i].shape[1:]
        patch = CV.opencv_patch(rects[i], W, H)
        patches.append(patch)
        pairs.append(
            _crop_pairs(prev_frames[i], curr_frames[i], lambda img, w=patch.window: CV.opencv_crop_resize(img, w))
        )
    target = normalize(torch.stack([p[0] for p in pairs]), mode).to(dtype)
    search = normalize(torch.stack([p[1] for p in pairs]), mode).to(dtype)
    out = net(target, search).float().cpu().numpy()
    if raw_outputs is not None:
        raw_outputs.append(out)
    new = rects.copy()
    for i in range(n):
        with np.errstate(invalid="ignore", over="ignore"):  # a non-finite output is caught just below
            raw = CV.opencv_decode_raw(out[i], patches[i])
        if not (np.isfinite(raw).all() and (np.abs(raw) < 2**31).all()):
            continue
        r = CV.opencv_intersect(CV.cv_round(raw), int(sizes[i, 0]), int(sizes[i, 1]))
        if r[2] > 0 and r[3] > 0:
            new[i] = r
    return G.xywh_to_corners(new.astype(np.float64))


# ------------------------------------------------------------------------------------------------------------
# Single-sequence tracker
# ------------------------------------------------------------------------------------------------------------


def prepare_net(
    weights: str | os.PathLike | GoturnNet,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
) -> GoturnNet:
    """The net of ``weights`` (a file `model.checkpoint.load_model` reads, or a net) on ``device`` in eval mode,
    in ``dtype`` and the conv memory format every tracking path uses: ``channels_last=None`` picks NHWC on the
    CPU (oneDNN: ~25% faster) and NCHW on CUDA (cuDNN at batch 1: NHWC is slower)."""
    if isinstance(weights, GoturnNet):
        net = weights.to(device).eval()
    else:
        from model.checkpoint import load_model

        net = load_model(weights, device=device)
    if dtype != next(net.parameters()).dtype:
        net = net.to(dtype)
    if channels_last is None:
        channels_last = device.type == "cpu"
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


MAX_BOX_COORDINATE = 2.0**31  # OpenCV's int; larger values also overflow the crop geometry's int64 arithmetic


def check_init_box(box_xywh: Sequence[float] | np.ndarray, width: int, height: int) -> np.ndarray:
    """The 0-based ``(x, y, w, h)`` as float64, or a ValueError unless it is 4 finite numbers with ``w, h > 0``
    overlapping the ``width`` x ``height`` frame: there is nothing to track otherwise. Both variants and the
    CLIs apply this one rule; the message says what is wrong, callers prefix it with the box as the user wrote
    it."""
    if isinstance(box_xywh, torch.Tensor):
        box_xywh = box_xywh.detach().cpu()  # a box computed with autograd, or on a GPU
    try:
        b = np.asarray(box_xywh, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        b = np.zeros(0)
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0:
        raise ValueError("expected 4 finite numbers x, y, w, h with w, h > 0")
    if np.abs(b).max() >= MAX_BOX_COORDINATE:
        raise ValueError(f"a value beyond {MAX_BOX_COORDINATE:.0e} pixels, more than any frame")
    x, y, w, h = b
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"does not overlap the {width}x{height} frame")
    return b


def initial_corners(box_xywh: Sequence[float] | np.ndarray, width: int, height: int, variant: str) -> np.ndarray:
    """The 0-based corner box tracking starts from, for a 0-based ``(x, y, w, h)`` on a ``width`` x ``height``
    frame: `check_init_box`'s rule, then for ``opencv`` the box rounded and clipped as OpenCV's ``init`` does.
    The tracker, the batched evaluator and the CLIs all start here, so they start from the same box."""
    try:
        b = check_init_box(box_xywh, width, height)
    except ValueError as e:
        raise ValueError(f"initial box {_box_text(box_xywh)}: {e}") from None
    if variant == "opencv":
        r = CV.opencv_intersect(np.rint(b).astype(np.int64), width, height)
        if r[2] <= 0 or r[3] <= 0:
            raise ValueError(
                f"initial box {_box_text(box_xywh)}: empty once rounded to whole pixels and clipped to the frame, "
                "as OpenCV does"
            )
        b = r.astype(np.float64)
    return G.xywh_to_corners(b)


def _box_text(box_xywh) -> str:
    """A box as the user wrote it, for messages (numpy arrays print without their type)."""
    if isinstance(box_xywh, np.ndarray | torch.Tensor):
        return repr(np.asarray(box_xywh).tolist())
    return repr(box_xywh)


def _initial_state(frame: FrameLike, box_xywh, variant: str, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """(frame tensor, corner box) to start tracking from (`initial_corners`)."""
    prev = frame_to_tensor(frame, device, private=True)
    H, W = prev.shape[1:]
    return prev, initial_corners(box_xywh, W, H, variant)


def _frame_hw(frame: FrameLike) -> tuple[int, int]:
    """(H, W) of any supported frame without converting it."""
    if isinstance(frame, np.ndarray):
        return int(frame.shape[0]), int(frame.shape[1])
    if isinstance(frame, torch.Tensor):
        return int(frame.shape[-2]), int(frame.shape[-1])
    return int(frame.height), int(frame.width)  # PIL


class GoturnTracker:
    """Track one object: ``init(frame, box_xywh)`` then ``update(frame) -> xywh`` per frame.

    ``weights``: a checkpoint / ``.caffemodel`` path or a `GoturnNet` (moved to ``device``, ``dtype`` and the
    memory format in place: two trackers sharing a net share those too, so pass each its own copy); a
    backbone-only file (CaffeNet convs, untrained head) is refused by `model.checkpoint.load_model`. On CUDA
    the frames are moved to the GPU once and every crop is a GPU op; ``cuda_graph=True`` (``authors`` variant
    on CUDA only) captures the whole step -- crop geometry, crops, normalisation, network, decode -- in one
    CUDA graph per frame size (bit-identical results, no per-step host work but the upload and the graph
    launch). ``dtype`` (e.g. ``torch.float16``) runs the net in reduced precision; the default float32 is what
    the parity tests check (on the CPU; on CUDA, PyTorch runs float32 convolutions in TF32 unless
    ``torch.backends.cudnn.allow_tf32 = False``). ``channels_last`` (default: on for CPU, where oneDNN runs it
    ~25% faster; off on CUDA, where it is slower at batch 1) sets the conv weights' memory format.
    """

    def __init__(
        self,
        weights: str | os.PathLike | GoturnNet,
        device: torch.device | str = "cpu",
        *,
        min_size: float = 1.0,
        cuda_graph: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)  # a missing GPU is a ValueError naming the device, before any load
        self.net = prepare_net(weights, self.device, dtype, channels_last)
        self.variant = self.net.variant
        self.min_size = float(min_size)
        if not self.min_size > 0 or not np.isfinite(self.min_size):
            raise ValueError(f"min_size must be a positive number of pixels, got {min_size!r}")
        self.use_graph = bool(cuda_graph) and self.device.type == "cuda" and self.variant == "authors"
        self._graph: _GraphStep | None = None
        self._prev: torch.Tensor | None = None
        self._box: np.ndarray | None = None  # corners
        self.last_output: np.ndarray | None = None  # raw network output of the last eager update (diagnostics)

    def init(self, frame: FrameLike, box_xywh: Sequence[float] | np.ndarray) -> None:
        """Start tracking ``box_xywh`` (0-based x, y, w, h) in ``frame``.

        ``opencv`` variant: the box is rounded to integers and intersected with the image, as OpenCV does.
        """
        self._prev, self._box = _initial_state(frame, box_xywh, self.variant, self.device)
        H, W = self._prev.shape[1:]
        if self._graph is not None:
            if self._graph.fits((H, W)):
                self._graph.reset(self._prev, self._box)
            else:
                self._graph = None

    @property
    def box(self) -> np.ndarray:
        """Current box, 0-based ``(x, y, w, h)``."""
        if self._box is None:
            raise RuntimeError("call init() first")
        return G.corners_to_xywh(self._box)

    def _graph_for(self, frame: FrameLike) -> _GraphStep | None:
        """The captured step for this frame's size, or None where the eager path must run."""
        if not self.use_graph:
            return None
        hw = _frame_hw(frame)
        if hw != tuple(self._prev.shape[1:]):
            return None
        if self._graph is None or not self._graph.fits(hw):
            self._graph = _GraphStep(self.net, self._prev, self._box, self.min_size)
        return self._graph

    def update(self, frame: FrameLike) -> np.ndarray:
        """Track into ``frame``; returns the new 0-based ``(x, y, w, h)`` box (float64)."""
        if self._prev is None or self._box is None:
            raise RuntimeError("call init() before update()")
        graph = self._graph_for(frame)
        if graph is not None:
            self._box = graph.step(frame).cpu().numpy()[0]
            self._prev = graph.prev  # the graph's buffer: holds this frame until its next step
        else:
            self._graph = None
            curr = frame_to_tensor(frame, self.device, private=True)  # kept as the next step's previous frame
            raw: list[np.ndarray] = []
            self._box = track_step(
                self.net, [self._prev], self._box[None], [curr], min_size=self.min_size, raw_outputs=raw
            )[0]
            self.last_output = raw[0][0]
            self._prev = curr
        return G.corners_to_xywh(self._box)

    def track_sequence(self, frames: Iterable[FrameLike], box_xywh: Sequence[float] | np.ndarray) -> np.ndarray:
        """Track a whole sequence: first frame + initial box in, ``(T, 4)`` xywh out (row 0 = the init box).

        On the CUDA-graph path the boxes stay on the GPU until the end (no synchronisation per frame); a frame
        of another size falls back to `update`.
        """
        it = iter(frames)
        first = next(it, None)
        if first is None:
            raise ValueError("track_sequence: no frames")
        self.init(first, box_xywh)
        out = [self.box]
        pending: list[torch.Tensor] = []

        def flush() -> None:
            if pending:
                corners = torch.cat(pending).cpu().numpy()
                self._box = corners[-1]
                out.extend(G.corners_to_xywh(corners))
                pending.clear()

        for f in it:
            graph = self._graph_for(f)
            if graph is None:
                flush()
                out.append(self.update(f))
            else:
                pending.append(graph.step(f).clone())
                self._prev = graph.prev
        flush()
        return np.stack(out)


def device_step(
    net: GoturnNet, prev: torch.Tensor, curr: torch.Tensor, box: torch.Tensor, min_size: float
) -> torch.Tensor:
    """One ``authors`` step of a single sequence in torch ops only (no host data, no sync): what `_GraphStep`
    captures. ``prev``/``curr`` (3, H, W) uint8, ``box`` (1, 4) float64 corners; returns the new (1, 4) box,
    equal to `track_step`'s (the tests compare them on the CPU)."""
    H, W = (int(v) for v in prev.shape[1:])
    window, offset, canvas, size = G.crop_step_geometry_torch(box, W, H)
    crops = G.to_uint8(G.crop_and_resize(torch.cat([prev, curr], dim=0), window))
    mode = net.normalization
    pred = net(_net_input(net, crops[:, :3], mode), _net_input(net, crops[:, 3:], mode)).float()
    return _fix_degenerate_torch(G.unscale_uncenter_torch(pred, offset, canvas, size), box, size, min_size, raw=pred)


class _GraphStep:
    """The ``authors`` step as one captured CUDA graph; the state (previous frame, box) lives in its buffers.

    Numpy frames are uploaded through a pinned staging buffer without blocking, so `GoturnTracker.track_sequence`
    keeps the GPU busy while the host prepares the next frame.
    """

    def __init__(self, net: GoturnNet, prev: torch.Tensor, box: np.ndarray, min_size: float) -> None:
        self.net = net
        self.min_size = min_size
        self.H, self.W = (int(v) for v in prev.shape[1:])
        dev = prev.device
        # The frame's device, not the current one: capture stream, events and graph pool all follow it.
        with torch.cuda.device(dev):
            self.prev = torch.empty((3, self.H, self.W), dtype=torch.uint8, device=dev)
            self.curr_hwc = torch.empty((self.H, self.W, 3), dtype=torch.uint8, device=dev)
            self.stage = torch.empty((self.H, self.W, 3), dtype=torch.uint8, pin_memory=True)
            self.stage_np = self.stage.numpy()
            self.staged = torch.cuda.Event()
            self.box = torch.empty((1, 4), dtype=torch.float64, device=dev)
            self.reset(prev, box)
            self.curr_hwc.copy_(self.prev.permute(1, 2, 0))
            saved = (self.prev.clone(), self.box.clone())
            s = torch.cuda.Stream(device=dev)
            s.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(s), torch.inference_mode():
                for _ in range(3):  # warm-up: cuDNN autotuning, lazy constants, allocator pools
                    self._body()
            torch.cuda.current_stream(dev).wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self._body()
            self.prev.copy_(saved[0])
            self.box.copy_(saved[1])

    def _body(self) -> None:
        curr = self.curr_hwc.permute(2, 0, 1)
        self.box.copy_(device_step(self.net, self.prev, curr, self.box, self.min_size))
        self.prev.copy_(curr)

    def fits(self, hw: tuple[int, int]) -> bool:
        return tuple(hw) == (self.H, self.W)

    def reset(self, prev: torch.Tensor, box: np.ndarray) -> None:
        self.prev.copy_(prev)
        self.box.copy_(torch.as_tensor(np.asarray(box, dtype=np.float64).reshape(1, 4)))

    def load(self, frame: FrameLike) -> None:
        """Put ``frame`` into the graph's input buffer (stream-ordered; never blocks on a running step)."""
        if isinstance(frame, np.ndarray) and frame.shape == (self.H, self.W, 3) and frame.dtype == np.uint8:
            self.staged.synchronize()  # the previous upload from the staging buffer has been read
            np.copyto(self.stage_np, frame)
            self.curr_hwc.copy_(self.stage, non_blocking=True)
            self.staged.record()
        else:
            self.curr_hwc.copy_(frame_to_tensor(frame, self.prev.device).permute(1, 2, 0))

    def step(self, frame: FrameLike) -> torch.Tensor:
        """One step on ``frame``; returns the (1, 4) device box buffer (overwritten by the next step)."""
        with torch.cuda.device(self.prev.device):
            self.load(frame)
            self.graph.replay()
        return self.box


def _fix_degenerate_torch(
    new: torch.Tensor, prev: torch.Tensor, size: torch.Tensor, min_size: float, raw: torch.Tensor | None = None
) -> torch.Tensor:
    """`_fix_degenerate` in torch ops (same arithmetic, both axes at once), for the graph-captured step;
    ``size`` is the ``(W, H)`` tensor of `model.geometry.crop_step_geometry_torch`."""
    finite = torch.isfinite(new).all(dim=-1, keepdim=True)
    if raw is not None:
        finite &= torch.isfinite(raw).all(dim=-1, keepdim=True)
    out = torch.where(finite, new, prev)
    lo, hi = out[..., :2], out[..., 2:]
    thin = hi - lo < min_size
    m = torch.clamp(size, max=min_size)
    a = torch.minimum(torch.clamp((lo + hi) / 2 - m / 2, min=0.0), size - m)
    return torch.cat([torch.where(thin, a, lo), torch.where(thin, a + m, hi)], dim=-1)


# ------------------------------------------------------------------------------------------------------------
# Many sequences (or objects) in lockstep: one batched forward pass per frame
# ------------------------------------------------------------------------------------------------------------


class MultiTracker:
    """Track many independent sequences, one batched forward pass per `step` (up to ``max_batch`` at a time).

    ``start(key, frame, box_xywh)`` registers a sequence; ``step({key: frame, ...})`` advances each listed
    sequence by one frame and returns ``{key: xywh}``; ``stop(key)`` forgets it. Sequences may have different
    frame sizes and lengths: pass only the keys that have a next frame. Results equal running a
    `GoturnTracker` per sequence (the batched forward differs from N=1 forwards only by float rounding).
    """

    def __init__(
        self,
        weights: str | os.PathLike | GoturnNet,
        device: torch.device | str = "cpu",
        max_batch: int = 64,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.net = prepare_net(weights, self.device, dtype, channels_last)
        self.variant = self.net.variant
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self._state: dict[Hashable, tuple[torch.Tensor, np.ndarray]] = {}

    def start(self, key: Hashable, frame: FrameLike, box_xywh: Sequence[float] | np.ndarray) -> None:
        """Begin (or restart) sequence ``key`` at ``box_xywh`` in ``frame``."""
        self._state[key] = _initial_state(frame, box_xywh, self.variant, self.device)

    def stop(self, key: Hashable) -> None:
        self._state.pop(key, None)

    def keys(self) -> list[Hashable]:
        return list(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def box(self, key: Hashable) -> np.ndarray:
        """Current 0-based ``(x, y, w, h)`` of sequence ``key``."""
        return G.corners_to_xywh(self._state[key][1])

    def step(self, frames: Mapping[Hashable, FrameLike]) -> dict[Hashable, np.ndarray]:
        """Advance each sequence in ``frames`` by its next frame; returns ``{key: (x, y, w, h)}``."""
        missing = [k for k in frames if k not in self._state]
        if missing:
            raise KeyError(f"sequences not started: {missing}")
        keys = list(frames)
        result: dict[Hashable, np.ndarray] = {}
        for s in range(0, len(keys), self.max_batch):
            chunk = keys[s : s + self.max_batch]
            curr = [frame_to_tensor(frames[k], self.device, private=True) for k in chunk]
            prev = [self._state[k][0] for k in chunk]
            boxes = np.stack([self._state[k][1] for k in chunk])
            new = track_step(self.net, prev, boxes, curr)
            for k, c, b in zip(chunk, curr, new, strict=True):
                self._state[k] = (c, b)
                result[k] = G.corners_to_xywh(b)
        return result
