"""Metric parity: our curves against got10k 0.1.3's ExperimentOTB report on the same result files, pysot's
statistics on its own rules, and the golden values of formats_and_eval.md section 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluate import metrics as M
from evaluate.results import read_result, write_result


def _gt(n: int, rng: np.random.Generator) -> np.ndarray:
    xy = rng.uniform(1, 300, (n, 2)).round()
    wh = rng.uniform(5, 80, (n, 2)).round()
    return np.column_stack([xy, wh])


def _synthetic(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sequences with invalid GT rows (zero, negative x/y, zero w), boxes outside the image, NaN and zero-size
    predictions, exact IoU / error threshold ties."""
    rng = np.random.default_rng(seed)
    seqs = {}
    for k, n in enumerate((40, 57, 13, 100)):
        gt = _gt(n, rng)
        pred = gt + rng.normal(0, [6, 6, 4, 4], (n, 4))
        pred[rng.random(n) < 0.2] += [200, -150, 0, 0]  # far off / partly outside the image (negative y)
        seqs[f"Seq{k}"] = (gt, pred)
    gt, pred = seqs["Seq0"]
    gt[[5, 17, 39]] = 0  # Board / Twinnings style zero rows (the last one at the end of the sequence)
    gt[8] = [319, -3, 32, 35]  # Biker: y < 0
    gt[9] = [0, 316, 22, 51]  # Crowds: x = 0
    gt[10, 2] = 0  # zero width
    pred[12] = np.nan
    pred[13, 2:] = 0
    pred[14] = [-500, -500, 20, 20]
    gt1, pred1 = seqs["Seq1"]
    pred1[3] = gt1[3] + [20, 0, 0, 0]  # centre error exactly 20 px
    pred1[4] = [gt1[4, 0], gt1[4, 1], gt1[4, 2] / 2, gt1[4, 3]]  # IoU exactly 0.5
    pred1[5] = gt1[5]  # IoU exactly 1
    return seqs


class _FakeOTB:
    """The two things ExperimentOTB.report uses from its dataset: names and (img_files, anno) iteration."""

    def __init__(self, seqs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.seq_names = list(seqs)
        self._annos = [gt for gt, _ in seqs.values()]

    def __len__(self) -> int:
        return len(self.seq_names)

    def __iter__(self):
        return iter([([], a) for a in self._annos])


def _got10k_report(tmp_path: Path, seqs: dict[str, tuple[np.ndarray, np.ndarray]], tracker: str) -> dict:
    from got10k.experiments import ExperimentOTB

    exp = ExperimentOTB.__new__(ExperimentOTB)  # its __init__ would try to download OTB
    exp.dataset = _FakeOTB(seqs)
    exp.result_dir = str(tmp_path / "results")
    exp.report_dir = str(tmp_path / "reports")
    exp.nbins_iou, exp.nbins_ce = 21, 51
    exp.plot_curves = lambda names: None  # plots are ours; its 300-dpi figures only cost time
    return exp.report([tracker])[tracker]


def test_parity_with_got10k_report(tmp_path: Path) -> None:
    seqs = _synthetic()
    tdir = tmp_path / "results" / "T"
    for name, (_, pred) in seqs.items():
        write_result(tdir, name, pred, np.full(len(pred), 0.01))
    ref = _got10k_report(tmp_path, seqs, "T")
    per = []
    for name, (gt, _) in seqs.items():
        c = M.sequence_curves(read_result(tdir / f"{name}.txt"), gt, "got10k")
        per.append(c)
        r = ref["seq_wise"][name]
        np.testing.assert_allclose(c.success, r["success_curve"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(c.precision, r["precision_curve"], rtol=0, atol=1e-9)
        assert abs(c.success_auc - r["success_score"]) < 1e-9
        assert abs(c.precision_20 - r["precision_score"]) < 1e-9
    overall = M.mean_curves(per)
    np.testing.assert_allclose(overall.success, ref["overall"]["success_curve"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(overall.precision, ref["overall"]["precision_curve"], rtol=0, atol=1e-9)
    assert abs(overall.success_auc - ref["overall"]["success_score"]) < 1e-9
    assert abs(overall.precision_20 - ref["overall"]["precision_score"]) < 1e-9
    written = json.loads((tmp_path / "reports" / "T" / "performance.json").read_text())["T"]["overall"]
    assert written["success_score"] == ref["overall"]["success_score"]  # the report above is what got10k writes


def test_iou_and_center_error_equal_got10k_functions() -> None:
    from got10k.utils.metrics import center_error, rect_iou

    rng = np.random.default_rng(1)
    a = np.column_stack([rng.uniform(-50, 300, (5000, 2)), rng.uniform(0, 90, (5000, 2))])
    b = np.column_stack([rng.uniform(-50, 300, (5000, 2)), rng.uniform(0, 90, (5000, 2))])
    b[:100] = a[:100]
    b[100:200, 2:] = 0
    np.testing.assert_array_equal(M.rect_iou(a, b), rect_iou(a.copy(), b.copy()))
    np.testing.assert_array_equal(M.center_error(a, b), center_error(a, b))


def test_golden_gt_as_prediction() -> None:
    rng = np.random.default_rng(2)
    gt = _gt(50, rng)
    for protocol in M.PROTOCOLS:
        c = M.sequence_curves(gt, gt, protocol)
        assert c.success_auc == pytest.approx(20 / 21, abs=1e-12)
        assert c.precision_20 == 1.0 and c.success[-1] == 0.0
        if protocol == "otb":  # the Matlab toolkit defines no normalized precision
            assert np.isnan(c.norm_precision_score)
        else:
            assert c.norm_precision_score == 1.0
    assert M.mean_curves([c, c]).success_auc == pytest.approx(20 / 21, abs=1e-12)


# pysot toolkit/utils/statistics.py (STVIR/pysot), verbatim logic: the independent reference of the profile.
def _pysot_success_overlap(gt_bb: np.ndarray, result_bb: np.ndarray, n_frame: int) -> np.ndarray:
    thresholds_overlap = np.arange(0, 1.05, 0.05)
    success = np.zeros(len(thresholds_overlap))
    iou = np.ones(len(gt_bb)) * (-1)
    mask = np.sum(gt_bb[:, 2:] > 0, axis=1) == 2
    iou[mask] = M.overlap_ratio(gt_bb[mask], result_bb[mask])
    for i in range(len(thresholds_overlap)):
        success[i] = np.sum(iou > thresholds_overlap[i]) / float(n_frame)
    return success


def _pysot_success_error(gt_center: np.ndarray, result_center: np.ndarray, thresholds, n_frame: int) -> np.ndarray:
    success = np.zeros(len(thresholds))
    dist = np.ones(len(gt_center)) * (-1)
    mask = np.sum(gt_center > 0, axis=1) == 2
    dist[mask] = np.sqrt(np.sum(np.power(gt_center[mask] - result_center[mask], 2), axis=1))
    for i in range(len(thresholds)):
        success[i] = np.sum(dist <= thresholds[i]) / float(n_frame)
    return success


def _pysot_center(b: np.ndarray) -> np.ndarray:
    return np.array([(b[:, 0] + (b[:, 2] - 1) / 2), (b[:, 1] + (b[:, 3] - 1) / 2)]).T


def test_pysot_profile_equals_pysot_statistics() -> None:
    for gt, pred in _synthetic(3).values():
        n = len(gt)
        c = M.sequence_curves(pred, gt, "pysot")
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(c.success, _pysot_success_overlap(gt, pred, n), rtol=0, atol=1e-12)
            ref_p = _pysot_success_error(_pysot_center(gt), _pysot_center(pred), np.arange(0, 51, 1), n)
            np.testing.assert_allclose(c.precision, ref_p, rtol=0, atol=1e-12)
            wh = gt[:, 2:4] + 1e-16
            ref_n = _pysot_success_error(_pysot_center(gt) / wh, _pysot_center(pred) / wh, np.arange(0, 51) / 100, n)
            np.testing.assert_allclose(c.norm_precision, ref_n, rtol=0, atol=1e-12)


def test_section_2_6_zero_gt_frames_got10k_vs_pysot() -> None:
    """100 frames, 10 zero-GT rows: AUC identical, P@20 0.89 (got10k) vs 0.99 (pysot), as in formats doc."""
    rng = np.random.default_rng(4)
    gt = np.column_stack([rng.uniform(30, 200, (100, 2)).round(), np.full((100, 2), 40.0)])
    pred = gt + [3, -2, 4, 0]
    pred[0] = gt[0]  # pysot keeps the first row as written: make it GT so only the invalid rows differ
    pred[50] += [60, 0, 0, 0]  # one valid miss
    zero = np.arange(90, 100)
    gt[zero] = 0
    pred[zero] = [100, 100, 40, 40]  # far from GT centre (-0.5, -0.5)
    g = M.sequence_curves(pred, gt, "got10k")
    p = M.sequence_curves(pred, gt, "pysot")
    assert g.success_auc == pytest.approx(p.success_auc, abs=1e-12)
    assert (g.precision_20, p.precision_20) == (pytest.approx(0.89), pytest.approx(0.99))
    # The first frame: pysot scores what was written, got10k replaces it by the GT.
    shifted = pred.copy()
    shifted[0] = gt[0] + [0.5, 0.5, 0, 0]
    assert M.sequence_curves(shifted, gt, "got10k").success_auc == g.success_auc
    assert M.sequence_curves(shifted, gt, "pysot").success_auc <= p.success_auc


def test_nan_and_length_mismatch() -> None:
    gt = np.array([[10, 10, 20, 20], [10, 10, 20, 20], [10, 10, 20, 20.0]])
    pred = gt.copy()
    pred[1] = np.nan
    c = M.sequence_curves(pred, gt)
    assert c.success[0] == pytest.approx(2 / 3) and c.precision[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="result rows"):
        M.sequence_curves(pred[:2], gt)


def test_fps_rule() -> None:
    times = [np.array([0.5, 0.01, 0.01, 0.02]), np.array([0.3, 0.04])]
    assert M.tracking_fps(times) == pytest.approx(4 / 0.08)
    assert M.tracking_fps([np.array([0.5])]) == -1.0
    assert M.got10k_fps(np.array([0.5, 0.0, 0.25])) == pytest.approx(3.0)


# The OTB Matlab toolkit (v1.0) calcSeqErrRobust.m + calcRectInt.m, transcribed loop by loop: the independent
# reference of the "otb" profile.
def _mmin(x: float, y: float) -> float:
    """Matlab's scalar ``min``: NaN is skipped unless both are NaN."""
    return y if np.isnan(x) else x if np.isnan(y) else min(x, y)


def _mmax(x: float, y: float) -> float:
    return y if np.isnan(x) else x if np.isnan(y) else max(x, y)


def _matlab_seq_err(res: np.ndarray, anno: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    res = res.copy()
    for i in range(1, len(anno)):
        r, r_anno = res[i], anno[i]
        left = np.isnan(r) | (r[2] <= 0) | (r[3] <= 0)  # isnan(r) | r(3)<=0 | r(4)<=0: a 1x4 vector
        if np.all(left & ~np.isnan(r_anno)):  # Matlab's `if` of a vector: every element true
            res[i] = res[i - 1]
    rect_mat = res.copy()
    rect_mat[0] = anno[0]
    center_gt = np.column_stack([anno[:, 0] + (anno[:, 2] - 1) / 2, anno[:, 1] + (anno[:, 3] - 1) / 2])
    center = np.column_stack([rect_mat[:, 0] + (rect_mat[:, 2] - 1) / 2, rect_mat[:, 1] + (rect_mat[:, 3] - 1) / 2])
    err_center = np.sqrt(np.sum((center - center_gt) ** 2, axis=1))
    idx = np.sum(anno > 0, axis=1) == 4
    cover = -np.ones(len(anno))
    for i in np.flatnonzero(idx):
        a, b = rect_mat[i], anno[i]
        ra, ta, rb, tb = a[0] + a[2] - 1, a[1] + a[3] - 1, b[0] + b[2] - 1, b[1] + b[3] - 1
        w = _mmax(0.0, _mmin(ra, rb) - _mmax(a[0], b[0]) + 1)
        h = _mmax(0.0, _mmin(ta, tb) - _mmax(a[1], b[1]) + 1)
        inter = w * h
        cover[i] = inter / (a[2] * a[3] + b[2] * b[3] - inter)
    err_center[~idx] = -1
    return cover, err_center


def test_otb_profile_equals_the_matlab_toolkit() -> None:
    seqs = _synthetic(5)
    gt, pred = seqs["Seq2"]
    pred[4] = np.nan  # all NaN: repaired from the previous row
    pred[5] = [np.nan, 3, 20, 20]  # some NaN: Matlab's vector `if` leaves it; its min / max skip the NaN
    pred[6, 3] = -2  # negative height: repaired
    gt[7] = np.nan  # a NaN ground-truth row: no repair there, and invalid
    pred[7] = np.nan
    for gt, pred in seqs.values():
        n = len(gt)
        c = M.sequence_curves(pred, gt, "otb")
        cover, err = _matlab_seq_err(pred, gt)
        with np.errstate(invalid="ignore"):
            ref_s = np.array([np.sum(cover > t) / n for t in np.arange(0, 1.05, 0.05)])
            ref_p = np.array([np.sum(err <= t) / n for t in np.arange(0, 51)])
        np.testing.assert_allclose(c.success, ref_s, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c.precision, ref_p, rtol=0, atol=1e-12)
    # Where every ground-truth row is valid and every prediction sane, the three toolkits agree.
    rng = np.random.default_rng(6)
    gt = _gt(80, rng)
    pred = gt + rng.normal(0, [5, 5, 3, 3], (80, 4))
    o, g = M.sequence_curves(pred, gt, "otb"), M.sequence_curves(pred, gt, "got10k")
    np.testing.assert_allclose(o.success, g.success, rtol=0, atol=1e-12)
    np.testing.assert_allclose(o.precision, g.precision, rtol=0, atol=1e-12)


def test_section_2_6_under_the_otb_rules() -> None:
    """Zero ground-truth rows: failures in success, hits in precision (the Matlab -1 quirk), like pysot."""
    rng = np.random.default_rng(4)
    gt = np.column_stack([rng.uniform(30, 200, (100, 2)).round(), np.full((100, 2), 40.0)])
    pred = gt + [3, -2, 4, 0]
    pred[50] += [60, 0, 0, 0]
    gt[90:] = 0
    pred[90:] = [100, 100, 40, 40]
    o, g = M.sequence_curves(pred, gt, "otb"), M.sequence_curves(pred, gt, "got10k")
    assert o.success_auc == pytest.approx(g.success_auc, abs=1e-12)
    assert (g.precision_20, o.precision_20) == (pytest.approx(0.89), pytest.approx(0.99))


def test_plots_take_any_tracker_name(tmp_path: Path) -> None:
    """A results folder's name is the legend: bytes that are not UTF-8 and ``$`` (matplotlib's math) used to crash
    the plots after the reports were written."""
    from evaluate.plots import precision_plot, success_plot

    gt = np.array([[1, 1, 10, 10]] * 5, dtype=float)
    c = M.sequence_curves(gt, gt)
    for plot in (success_plot, precision_plot):
        path = plot({"Bad\udcff": c, r"a$\frac$b": c, "Man $5": c}, tmp_path / f"{plot.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
