"""OPE success, precision and normalized precision, numerically identical to the toolkits (formats doc 2).

Three protocol profiles, because the toolkits score the same result files differently (section 2.11):

- ``got10k`` (default, = ``got10k.experiments.ExperimentOTB``): the first predicted box is replaced by the
  ground truth, no validity test on the ground truth (a zero box simply gets IoU 0 and an ordinary centre
  error), IoU with got10k's ``eps`` in the denominator. Normalized precision follows got10k HEAD's
  ``ExperimentLaSOT``: centre error divided by ``max(1, gt_wh)``, curve over ``linspace(0, 0.5, 51)``, score
  = mean of the curve.
- ``pysot`` (= pysot ``OPEBenchmark`` + ``toolkit/utils/statistics.py``): the first frame is scored as
  written; a ground-truth row with ``w <= 0 or h <= 0`` fails every IoU threshold, one whose centre is not >
  0 counts as a precision *hit* at every threshold (the Matlab ``-1`` quirk); normalized precision = value
  at 0.20 of ``arange(0, 51) / 100`` with centres divided by ``gt_wh + 1e-16``.
- ``otb`` (= the OTB Matlab toolkit's ``calcSeqErrRobust.m``, where most published OTB numbers come from):
  the first predicted box is replaced by the ground truth; from frame 2 on, a predicted box that is all NaN or
  has ``w <= 0`` or ``h <= 0`` is replaced by the previous one (where the ground truth has no NaN); a
  ground-truth row is valid when all four of x, y, w, h are > 0, and an invalid one fails every IoU threshold
  (IoU -1) and is a precision *hit* at every threshold (error -1); IoU ``calcRectInt`` (no eps). The toolkit
  has no normalized precision (reported as NaN).

Shared: 21 IoU thresholds ``linspace(0, 1, 21)`` with strict ``>``, AUC = mean of the 21 values; 0..50 px
with ``<=``, precision reported at 20 px; per-sequence curves over all frames, averaged over sequences
unweighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0, 1, 21)
CE_THRESHOLDS = np.arange(0, 51)
NCE_THRESHOLDS = {"got10k": np.linspace(0, 0.5, 51), "pysot": np.arange(0, 51) / 100, "otb": np.linspace(0, 0.5, 51)}
PROTOCOLS = ("got10k", "pysot", "otb")
PROTOCOL_RULES = {  # how reports name each profile
    "got10k": "got10k ExperimentOTB rules",
    "pysot": "pysot OPEBenchmark rules",
    "otb": "OTB Matlab toolkit rules (calcSeqErrRobust)",
}
NORM_PRECISION_DEFINITIONS = {  # what "normalized precision" means under each profile (not an OTB metric)
    "got10k": "got10k HEAD: mean of the curve over normalized centre errors 0..0.5",
    "pysot": "pysot: value at 0.20 of the normalized centre-error curve",
    "otb": "not defined by the OTB toolkit",
}


def rect_iou(rects1: np.ndarray, rects2: np.ndarray) -> np.ndarray:
    """IoU of ``(x, y, w, h)`` rows, operation for operation got10k's ``rect_iou`` (eps, clip to [0, 1])."""
    a = np.asarray(rects1, dtype=np.float64)
    b = np.asarray(rects2, dtype=np.float64)
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    y2 = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


def overlap_ratio(rects1: np.ndarray, rects2: np.ndarray) -> np.ndarray:
    """pysot's ``overlap_ratio``: the same IoU without eps (only called where the GT has positive area)."""
    a = np.asarray(rects1, dtype=np.float64)
    b = np.asarray(rects2, dtype=np.float64)
    left = np.maximum(a[:, 0], b[:, 0])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    top = np.maximum(a[:, 1], b[:, 1])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.maximum(0, right - left) * np.maximum(0, bottom - top)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(np.minimum(1, inter / union), 0)


def centers(rects: np.ndarray) -> np.ndarray:
    """Box centres ``x + (w - 1) / 2`` (every OTB toolkit; the offset cancels in centre errors)."""
    r = np.asarray(rects, dtype=np.float64)
    return r[..., :2] + (r[..., 2:] - 1) / 2


def center_error(rects1: np.ndarray, rects2: np.ndarray) -> np.ndarray:
    """Euclidean centre distance in pixels (got10k ``center_error``)."""
    d = centers(rects1) - centers(rects2)
    return np.sqrt(np.sum(np.power(d, 2), axis=-1))


def normalized_center_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """got10k HEAD ``normalized_center_error``: centre difference divided by ``max(1, gt_wh)`` per axis."""
    g = np.asarray(gt, dtype=np.float64)
    d = (centers(pred) - centers(g)) / np.maximum(np.array([[1.0, 1.0]]), g[:, 2:])
    return np.sqrt(np.sum(np.power(d, 2), axis=-1))


@dataclass(frozen=True)
class Curves:
    """Success (21), precision (51) and normalized precision (51) curves of one sequence or of the mean."""

    success: np.ndarray
    precision: np.ndarray
    norm_precision: np.ndarray
    frames: int
    protocol: str = "got10k"

    @property
    def success_auc(self) -> float:
        """Mean of the 21 success values (not a trapezoid; max 20/21 because the test is strict)."""
        return float(np.mean(self.success))

    @property
    def precision_20(self) -> float:
        return float(self.precision[20])

    @property
    def success_rate_50(self) -> float:
        """Fraction with IoU > 0.5."""
        return float(self.success[len(IOU_THRESHOLDS) // 2])

    @property
    def norm_precision_score(self) -> float:
        """got10k: mean of the 0..0.5 curve; pysot: value at 0.20; otb: NaN (the toolkit has none)."""
        if self.protocol == "pysot":
            return float(self.norm_precision[20])
        if self.protocol == "otb":
            return float("nan")
        return float(np.mean(self.norm_precision))


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.array(pred, dtype=np.float64).reshape(-1, 4)
    g = np.array(gt, dtype=np.float64).reshape(-1, 4)
    if len(p) != len(g):
        raise ValueError(f"{len(p)} result rows for {len(g)} ground-truth rows")
    if len(g) == 0:
        raise ValueError("empty sequence")
    return p, g


def sequence_curves(pred: np.ndarray, gt: np.ndarray, protocol: str = "got10k") -> Curves:
    """Curves of one sequence from result rows and ground truth, both ``(x, y, w, h)``, same convention."""
    p, g = _check(pred, gt)
    n = len(g)
    if protocol == "got10k":
        p[0] = g[0]
        ious = rect_iou(p, g)
        ce = center_error(p, g)
        nce = normalized_center_error(p, g)
    elif protocol == "pysot":
        ious = np.full(n, -1.0)
        ok = np.sum(g[:, 2:] > 0, axis=1) == 2
        ious[ok] = overlap_ratio(g[ok], p[ok])
        ce = _pysot_dist(centers(g), centers(p))
        wh = g[:, 2:4] + 1e-16
        ce_norm_g, ce_norm_p = centers(g) / wh, centers(p) / wh
        nce = _pysot_dist(ce_norm_g, ce_norm_p)
    elif protocol == "otb":
        p = _otb_repair(p, g)
        p[0] = g[0]
        ok = np.sum(g > 0, axis=1) == 4  # NaN > 0 is False: NaN rows are invalid too
        ious = np.full(n, -1.0)
        ious[ok] = calc_rect_int(p[ok], g[ok])
        ce = np.full(n, -1.0)
        ce[ok] = center_error(p[ok], g[ok])
        nce = np.full(n, np.nan)
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    with np.errstate(invalid="ignore"):
        succ = np.sum(ious[:, None] > IOU_THRESHOLDS[None, :], axis=0) / float(n)
        prec = np.sum(ce[:, None] <= CE_THRESHOLDS[None, :], axis=0) / float(n)
        nprec = np.sum(nce[:, None] <= NCE_THRESHOLDS[protocol][None, :], axis=0) / float(n)
    return Curves(succ, prec, nprec, n, protocol)


def calc_rect_int(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The OTB Matlab toolkit's ``calcRectInt``: pixel-inclusive corners (``right = x + w - 1``), the overlap
    ``max(0, min(right) - max(left) + 1)`` per axis, IoU without eps (only called on valid ground truth).
    Matlab's ``min`` / ``max`` skip NaN (``max(NaN, 3)`` is 3), hence ``fmin`` / ``fmax``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.fmax(0, np.fmin(a[:, 0] + a[:, 2] - 1, b[:, 0] + b[:, 2] - 1) - np.fmax(a[:, 0], b[:, 0]) + 1)
    ih = np.fmax(0, np.fmin(a[:, 1] + a[:, 3] - 1, b[:, 1] + b[:, 3] - 1) - np.fmax(a[:, 1], b[:, 1]) + 1)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)


def _otb_repair(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``calcSeqErrRobust.m``: from frame 2 on, a prediction that is all NaN or has ``w <= 0`` or ``h <= 0``
    takes the previous row (after that row's own repair) where the ground-truth row has no NaN. Matlab's ``if``
    of a vector holds only when every element does, so a row with only some NaN is left as it is (and fails)."""
    p = p.copy()
    for i in range(1, len(p)):
        bad = np.isnan(p[i]).all() or p[i, 2] <= 0 or p[i, 3] <= 0
        if bad and not np.isnan(g[i]).any():
            p[i] = p[i - 1]
    return p


def _pysot_dist(gt_c: np.ndarray, res_c: np.ndarray) -> np.ndarray:
    """pysot ``success_error`` distances: -1 (a hit at every threshold) where the GT centre is not > 0."""
    dist = np.full(len(gt_c), -1.0)
    ok = np.sum(gt_c > 0, axis=1) == 2
    dist[ok] = np.sqrt(np.sum(np.power(gt_c[ok] - res_c[ok], 2), axis=1))
    return dist


def mean_curves(per_sequence: Sequence[Curves]) -> Curves:
    """Overall curves: the unweighted mean of the per-sequence curves (what every OTB toolkit reports)."""
    if not per_sequence:
        raise ValueError("no sequences")
    protocol = per_sequence[0].protocol
    return Curves(
        np.mean([c.success for c in per_sequence], axis=0),
        np.mean([c.precision for c in per_sequence], axis=0),
        np.mean([c.norm_precision for c in per_sequence], axis=0),
        int(sum(c.frames for c in per_sequence)),
        protocol,
    )


def tracking_fps(times: Sequence[np.ndarray]) -> float:
    """Section 2.10: ``sum(N - 1) / sum(update time)`` over sequences, init frames excluded; -1 if unknown."""
    frames = 0
    total = 0.0
    for t in times:
        t = np.asarray(t, dtype=np.float64).reshape(-1)[1:]
        frames += len(t)
        total += float(np.sum(t))
    return frames / total if total > 0 else -1.0


def got10k_fps(times: np.ndarray) -> float:
    """got10k's per-sequence speed ``mean(1 / t)`` over frames with ``t > 0`` (kept for comparison)."""
    t = np.asarray(times, dtype=np.float64)
    t = t[t > 0]
    return float(np.mean(1.0 / t)) if len(t) else -1.0
