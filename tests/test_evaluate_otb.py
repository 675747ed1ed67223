"""evaluate.otb / evaluate.track end to end (random weights, few frames), lockstep batching against one-by-one
tracking, and scoring of other trackers' results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluate import otb as O
from evaluate.lockstep import TrackJob, track_lockstep
from evaluate.otb_data import FrameReadError, find_sequences, parse_gt_text
from evaluate.results import read_result, write_result
from evaluate.steppers import GoturnStepper
from model.geometry import corners_to_xywh, xywh_to_corners

OVERALL_KEYS = {"success_auc", "precision_20", "success_rate_50", "norm_precision", "frames", "fps", "fps_end_to_end"}
OVERALL_KEYS |= {"fps_batch_sequences", "device"}
REPORT_KEYS = {"protocol", "rules", "norm_precision_definition", "iou_thresholds", "error_thresholds_px"}
REPORT_KEYS |= {"invalid_ground_truth_rows", "sequences_not_found", "notes", "trackers"}
SEQ_KEYS = {"success_auc", "precision_20", "frames"}


@pytest.fixture(scope="module")
def random_net():
    """Caffe-filler random weights, with fc8 scaled towards the "no motion" output (2.5, 2.5, 7.5, 7.5): boxes
    then stay well-formed for several frames instead of collapsing to 1 px at once, where float rounding of
    different batch sizes is amplified by the crop windows' integer truncations."""
    from model.net import GoturnNet

    torch.manual_seed(0)
    net = GoturnNet().eval()
    with torch.no_grad():
        net.fc8.weight.mul_(0.02)
        net.fc8.bias.copy_(torch.tensor([2.5, 2.5, 7.5, 7.5]))
    return net


@pytest.fixture(scope="module")
def random_checkpoint(random_net, module_scratch: Path) -> Path:
    """One random-weight checkpoint for the module (the net is 113M parameters: build and save it once)."""
    from model.checkpoint import save_checkpoint

    return save_checkpoint(module_scratch / "random.pt", random_net)


def _frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Noise with a bright square moving right: content the crops can tell apart."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        f = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        x = 10 + 2 * t
        f[12:28, x : x + 14] = (230, 200, 60)
        out.append(f)
    return out


def _otb_folder(root: Path, name: str, frames: list[np.ndarray], gt: np.ndarray, gt_file: str = "") -> None:
    (root / name / "img").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(root / name / "img" / f"{i:04d}.jpg", quality=95)
    text = "\n".join(",".join(str(int(v)) for v in r) for r in gt) + "\n"
    (root / name / (gt_file or "groundtruth_rect.txt")).write_text(text)


class _ShiftStepper:
    """Fake tracker: each step moves the box by the value stored in the current frame (cheap, exact)."""

    variant = "authors"

    def prepare(self, frame):
        return frame

    def step(self, prev, boxes, curr):
        return np.asarray(boxes) + np.array([float(np.asarray(c).flat[0]) for c in curr])[:, None]

    def sync(self) -> None:
        pass


def test_lockstep_dropout_and_refill_match_batch_one() -> None:
    lengths = [5, 1, 3, 7, 2, 4]
    jobs = [
        TrackJob(
            f"s{k}",
            [np.full((2, 2), k * 10 + t, dtype=np.float64) for t in range(n)],
            np.array([k, 0, 5, 5.0]),
        )
        for k, n in enumerate(lengths)
    ]
    ref = track_lockstep(_ShiftStepper(), jobs, batch_size=1, workers=1)
    for out, job, n in zip(ref, jobs, lengths, strict=True):
        expect = job.init_box + np.concatenate([[0], np.cumsum([f[0, 0] for f in job.frames[1:]])])[:, None]
        np.testing.assert_array_equal(out.boxes, expect)
        assert out.times.shape == (n,) and (out.times >= 0).all()
    for b in (2, 3, 4, 6, 10):
        outs = track_lockstep(_ShiftStepper(), jobs, batch_size=b)
        for o, r in zip(outs, ref, strict=True):
            assert o.name == r.name
            np.testing.assert_array_equal(o.boxes, r.boxes)


def test_result_conversion_and_protocol_init(tmp_path: Path) -> None:
    """A tracker that never moves writes the 1-based GT back exactly (got10k) or GT + 0.5 (pysot's init)."""

    seen = []

    class Still(_ShiftStepper):
        def step(self, prev, boxes, curr):
            seen.append(np.asarray(boxes, dtype=np.float64).copy())
            return np.asarray(boxes, dtype=np.float64)

    gt = np.array([[11, 21, 15, 9]] * 3 + [[13, 20, 15, 9]])
    _otb_folder(tmp_path / "otb", "Still", _frames(4, 40, 60, 0), gt)
    seqs = find_sequences(tmp_path / "otb").sequences
    for protocol, shift in (("got10k", 0.0), ("pysot", 0.5)):
        tdir = tmp_path / protocol / "T"
        facts = O.run_tracker(Still(), seqs, tdir, protocol, 2, "cpu:test", show_progress=False)
        res = read_result(tdir / "Still.txt")
        np.testing.assert_allclose(res, np.tile(gt[0] + [shift, shift, 0, 0], (4, 1)), atol=1e-9)
        assert len(np.loadtxt(tdir / "times" / "Still_time.txt")) == 4
        assert facts["frames"] == 4 and facts["device"] == "cpu:test"
    # the tracker saw the 0-based corners of the 1-based GT (GOTURN's -1)
    np.testing.assert_array_equal(seen[0], [[10, 20, 25, 29]])


def test_batched_equals_one_by_one(random_net) -> None:
    """Lockstep batches (with drop-out and refill) vs a GoturnTracker per sequence."""
    from model.tracker import GoturnTracker

    specs = [
        (4, 48, 64, [9.0, 11.0, 16.0, 18.0]),
        (3, 40, 72, [8.0, 10.0, 17.0, 19.0]),
        (5, 48, 64, [11, 13, 12, 14]),
    ]
    jobs = []
    for k, (n, h, w, box) in enumerate(specs):
        jobs.append(TrackJob(f"s{k}", _frames(n, h, w, 10 + k), xywh_to_corners(np.array(box, dtype=float))))
    batched = track_lockstep(GoturnStepper(random_net), jobs, batch_size=2)
    for job, out in zip(jobs, batched, strict=True):
        t = GoturnTracker(random_net, "cpu")
        single = t.track_sequence(job.frames, corners_to_xywh(job.init_box))
        np.testing.assert_allclose(corners_to_xywh(out.boxes), single, rtol=0, atol=1e-3)


def test_man_end_to_end(shared_data: Path, random_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["--weights", str(random_checkpoint), "--otb-root", str(shared_data / "otb"), "--sequences", "Man"]
    argv += ["--out", str(out), "--device", "cpu", "--max-frames", "6", "--batch-sequences", "2", "--quiet"]
    assert O.main(argv) == 0
    res = read_result(out / "GOTURN" / "Man.txt")
    gt = parse_gt_text((shared_data / "otb" / "Man" / "groundtruth_rect.txt").read_text())
    assert res.shape == (6, 4) and np.isfinite(res).all() and (res[:, 2:] >= 1).all()
    np.testing.assert_array_equal(res[0], gt[0])
    times = np.loadtxt(out / "GOTURN" / "times" / "Man_time.txt")
    assert times.shape == (6,) and (times > 0).all()
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == REPORT_KEYS and set(rep["trackers"]) == {"GOTURN"}
    assert rep["protocol"] == "got10k" and any(n.startswith("SMOKE TEST") for n in rep["notes"])
    t = rep["trackers"]["GOTURN"]
    assert set(t) == {"overall", "curves", "complete", "missing", "sequences"} and set(t["overall"]) == OVERALL_KEYS
    assert len(t["curves"]["success"]) == len(rep["iou_thresholds"]) == 21
    assert np.mean(t["curves"]["success"]) == pytest.approx(t["overall"]["success_auc"])
    assert t["overall"]["fps_batch_sequences"] == 1  # one sequence: lockstep batch 1, a single-stream figure
    assert t["complete"] is True and t["missing"] == []
    assert set(t["sequences"]) == {"Man"} and set(t["sequences"]["Man"]) == SEQ_KEYS
    assert t["overall"]["frames"] == 6 and t["overall"]["fps"] > 0 and t["overall"]["device"].startswith("cpu")
    assert 0 <= t["overall"]["success_auc"] <= 20 / 21 and 0 <= t["overall"]["precision_20"] <= 1
    assert "| GOTURN |" in (out / "report.md").read_text()
    for png in ("success_plot.png", "precision_plot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Re-scoring the written files (--results) reproduces the report.
    again = tmp_path / "again"
    argv = ["--results", str(out), "--otb-root", str(shared_data / "otb"), "--sequences", "Man"]
    assert O.main([*argv, "--out", str(again), "--max-frames", "6", "--quiet"]) == 0
    rep2 = json.loads((again / "report.json").read_text())["trackers"]["GOTURN"]
    assert rep2["overall"] == t["overall"] and rep2["sequences"] == t["sequences"]


def test_a_named_half_precision_run(random_checkpoint: Path, tmp_path: Path) -> None:
    """``--name`` names the result folder and the report's tracker; ``--dtype bfloat16`` runs the net in bfloat16
    and says so in the report; both runs start from the ground truth's first box."""
    root = tmp_path / "otb"
    gt = np.array([[11, 13, 14, 16]] * 5)
    _otb_folder(root, "Square", _frames(5, 48, 64, 2), gt)
    reports, boxes = {}, {}
    for name, dtype in (("Full", "float32"), ("Half", "bfloat16")):
        out = tmp_path / name
        argv = ["--weights", str(random_checkpoint), "--otb-root", str(root), "--out", str(out), "--device", "cpu"]
        assert O.main([*argv, "--name", name, "--dtype", dtype, "--quiet"]) == 0
        res = read_result(out / name / "Square.txt")
        assert res.shape == (5, 4) and np.isfinite(res).all() and (res[0] == gt[0]).all()
        boxes[name] = res
        reports[name] = json.loads((out / "report.json").read_text())
        assert set(reports[name]["trackers"]) == {name} and "| " + name + " |" in (out / "report.md").read_text()
    assert "network in bfloat16" in reports["Half"]["notes"]
    assert not any("network in" in n for n in reports["Full"]["notes"])
    assert 0 < np.abs(boxes["Half"] - boxes["Full"]).max() < 1  # bfloat16 really ran: near, not equal


def test_a_partial_version_root_and_rescoring_a_smoke_run(
    random_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--version 2015`` on a root holding one of its sequences: one warning line (it was 99), the names in
    report.json too; re-scoring the --max-frames run without --max-frames says what to add."""
    root = tmp_path / "otb"
    _otb_folder(root, "Man", _frames(5, 48, 64, 2), np.array([[11, 13, 14, 16]] * 5))
    out = tmp_path / "run"
    argv = ["--weights", str(random_checkpoint), "--otb-root", str(root), "--out", str(out), "--device", "cpu"]
    assert O.main([*argv, "--version", "2015", "--max-frames", "3", "--quiet"]) == 0
    not_found = [r.message for r in caplog.records if "not found under" in r.message]
    assert len(not_found) == 1 and not_found[0].startswith("99 sequence(s) not found under")
    report = json.loads((out / "report.json").read_text())
    assert len(report["sequences_not_found"]) == 99 and "Basketball" in report["sequences_not_found"]
    again = ["--results", str(out), "--otb-root", str(root), "--out", str(tmp_path / "again"), "--quiet"]
    with pytest.raises(SystemExit):
        O.main(again)
    assert "the run tracked the first 3 frames only: score it with --max-frames 3" in caplog.text
    assert O.main([*again, "--max-frames", "3"]) == 0


def test_results_mode_several_trackers(tmp_path: Path) -> None:
    root = tmp_path / "otb"
    rng = np.random.default_rng(3)
    gts = {}
    for name, n in (("Jogging", 5), ("Walker", 6)):
        frames = _frames(n, 40, 60, 4)
        for k in (1, 2) if name == "Jogging" else (0,):
            gt = np.column_stack([rng.integers(1, 30, (n, 2)), rng.integers(5, 20, (n, 2))])
            _otb_folder(root, name, frames, gt, f"groundtruth_rect.{k}.txt" if k else "")
            gts[f"{name}-{k}" if k else name] = gt
    res = tmp_path / "results"
    for canon, gt in gts.items():
        write_result(res / "Perfect", canon.replace("-", "."), gt)  # got10k names: Jogging.1
        if canon != "Walker":
            write_result(res / "Shifted", canon, gt + [3, 0, 0, 0])  # pysot names: Jogging-1; Walker missing
    O.write_first_box_baseline(find_sequences(root).sequences, res / "FirstBox")
    out = tmp_path / "out"
    assert O.main(["--results", str(res), "--otb-root", str(root), "--out", str(out), "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())["trackers"]
    assert set(rep) == {"Perfect", "Shifted", "FirstBox"}
    assert 0 < rep["FirstBox"]["overall"]["success_auc"] < 20 / 21
    assert rep["Perfect"]["overall"]["success_auc"] == pytest.approx(20 / 21)
    assert rep["Perfect"]["overall"]["precision_20"] == 1.0 and rep["Perfect"]["overall"]["fps"] == -1
    assert set(rep["Perfect"]["sequences"]) == {"Jogging-1", "Jogging-2", "Walker"}
    assert set(rep["Shifted"]["sequences"]) == {"Jogging-1", "Jogging-2"}
    assert rep["Shifted"]["complete"] is False and rep["Shifted"]["missing"] == ["Walker"]
    assert rep["Perfect"]["complete"] is True and rep["FirstBox"]["complete"] is True
    md = (out / "report.md").read_text()
    ranked, unranked = md.split("## Not ranked: results missing for some sequences")
    assert "| Perfect |" in ranked and "| FirstBox |" in ranked and "| Shifted |" not in ranked
    assert "| Shifted |" in unranked.split("## Per sequence")[0] and "Shifted: no result for Walker" in md
    assert (out / "success_plot.png").is_file() and (out / "precision_plot.png").is_file()
    # A smoke test over full-length results scores their first frames (every file used to fail the length check).
    short = tmp_path / "short"
    assert O.main(["--results", str(res), "--otb-root", str(root), "--out", str(short), "--quiet",
                   "--max-frames", "3"]) == 0  # fmt: skip
    rep3 = json.loads((short / "report.json").read_text())["trackers"]
    assert rep3["Perfect"]["complete"] is True and rep3["Perfect"]["overall"]["frames"] == 9  # 3 targets x 3
    # Only trackers with every sequence are compared: none at all is an error that says how to narrow the set.
    for t in ("Perfect", "FirstBox"):
        (res / t / "Walker.txt").unlink()
    with pytest.raises(SystemExit, match="no tracker under .* has usable results for all 3 sequences"):
        O.main(["--results", str(res), "--otb-root", str(root), "--out", str(tmp_path / "o2"), "--quiet"])
    assert O.main(["--results", str(res), "--otb-root", str(root), "--out", str(tmp_path / "o3"), "--quiet",
                   "--sequences", "Jogging-1,Jogging-2"]) == 0  # fmt: skip


def test_the_protocols_own_spelling_is_scored_first(tmp_path: Path) -> None:
    """A folder holding both toolkits' files of a sequence (runs under both protocols): each protocol scores
    its own file, and a run just made is scored from exactly the file it wrote, never an older spelling."""
    gt = np.array([[11, 21, 15, 9]] * 4)
    for k in (1, 2):
        _otb_folder(tmp_path / "otb", "Jogging", _frames(4, 40, 60, k), gt, f"groundtruth_rect.{k}.txt")
    seq = find_sequences(tmp_path / "otb").sequences[0]
    assert seq.name == "Jogging-1"
    tdir = tmp_path / "T"
    write_result(tdir, "Jogging.1", gt)  # got10k's spelling: perfect
    write_result(tdir, "Jogging-1", gt + [30, 0, 0, 0])  # pysot's spelling: far off
    from evaluate.results import find_result

    assert find_result(tdir, seq, "got10k").name == "Jogging.1.txt"
    assert find_result(tdir, seq, "pysot").name == "Jogging-1.txt"
    assert O.score_tracker(tdir, [seq], "got10k").overall.success_auc == pytest.approx(20 / 21)
    assert O.score_tracker(tdir, [seq], "pysot").overall.success_auc == 0.0
    (tdir / "Jogging.1.txt").unlink()
    assert O.score_tracker(tdir, [seq], "got10k").per_sequence  # any spelling for results from elsewhere
    assert O.score_tracker(tdir, [seq], "got10k", exact=True) is None  # but not for the run just written


def test_a_results_folder_named_like_the_run_is_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    """Both would be keyed by one name in report.json and the plots, so one would silently vanish."""
    _otb_folder(tmp_path / "otb", "Seq", _frames(3, 40, 60, 0), np.array([[11, 21, 15, 9]] * 3))
    write_result(tmp_path / "res" / "GOTURN", "Seq", np.array([[11, 21, 15, 9]] * 3))
    argv = ["--weights", str(random_checkpoint), "--otb-root", str(tmp_path / "otb"), "--quiet", "--device", "cpu"]
    with pytest.raises(SystemExit, match="has the name of the tracker being run"):
        O.main([*argv, "--results", str(tmp_path / "res"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # refused before tracking anything


def test_an_unreadable_frame_names_its_file_and_keeps_finished_sequences(tmp_path: Path) -> None:
    gt = np.array([[11, 21, 15, 9]] * 4)
    for name in ("A", "B"):
        _otb_folder(tmp_path / "otb", name, _frames(4, 40, 60, 0), gt)
    bad = tmp_path / "otb" / "B" / "img" / "0003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    seqs = find_sequences(tmp_path / "otb").sequences
    tdir = tmp_path / "T"
    with pytest.raises(FrameReadError, match=r"0003\.jpg: cannot read the frame.*1 sequence\(s\) finished"):
        O.run_tracker(_ShiftStepper(), seqs, tdir, "got10k", 1, show_progress=False)
    assert read_result(tdir / "A.txt").shape == (4, 4) and not (tdir / "B.txt").exists()


def test_evaluation_starts_from_the_trackers_own_initial_box(tmp_path: Path) -> None:
    """The opencv variant rounds and clips the first box to the frame as `GoturnTracker.init` does; a first row
    that cannot start a track is an error naming the sequence, before anything is tracked."""

    class Still(_ShiftStepper):
        variant = "opencv"

        def step(self, prev, boxes, curr):
            return np.asarray(boxes, dtype=np.float64)

    from model.tracker import initial_corners

    gt = np.array([[-9.4, 21, 30, 9]] * 3)  # 1-based: starts 10.4 px left of the frame
    _otb_folder(tmp_path / "otb", "Edge", _frames(3, 40, 60, 0), gt)
    seqs = find_sequences(tmp_path / "otb").sequences
    seqs[0].gt[:] = gt  # _otb_folder writes integers; keep the fractional box
    O.run_tracker(Still(), seqs, tmp_path / "T", "got10k", 1, show_progress=False)
    res = read_result(tmp_path / "T" / "Edge.txt")
    np.testing.assert_allclose(res[0], gt[0])  # frame 1 records the given box, as both toolkits do
    clipped = initial_corners(gt[0] - [1, 1, 0, 0], 60, 40, "opencv")
    np.testing.assert_array_equal(clipped, [0, 20, 20, 29])  # OpenCV: round, then intersect with the frame
    np.testing.assert_allclose(res[1:], np.tile(corners_to_xywh(clipped, one_based=True), (2, 1)), atol=1e-9)
    seqs[0].gt[0] = [70, 21, 30, 9]  # wholly right of the 60 px frame
    with pytest.raises(O.InitBoxError, match="Edge: first row of groundtruth_rect.txt .*does not overlap"):
        O.run_tracker(Still(), seqs, tmp_path / "T2", "got10k", 1, show_progress=False)
    assert not (tmp_path / "T2").exists()


def test_no_arguments_without_sample_run_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="make demo"):
        O.main([])


def test_track_cli_draws_frames_and_gif(shared_data: Path, random_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from evaluate import metrics as M
    from evaluate import track

    out = tmp_path / "vis"
    argv = [
        "--weights",
        str(random_checkpoint),
        "--sequence",
        str(shared_data / "otb" / "Man"),
        "--out",
        str(out),
    ]
    assert track.main([*argv, "--gif", "--max-frames", "3", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["0001.jpg", "0002.jpg", "0003.jpg"]
    with Image.open(out / "Man.gif") as gif:
        assert gif.n_frames == 3
    assert read_result(out / "Man.txt").shape == (3, 4)
    gt = parse_gt_text((shared_data / "otb" / "Man" / "groundtruth_rect.txt").read_text())[:3]
    score = M.sequence_curves(read_result(out / "Man.txt"), gt, "got10k")
    printed = f"Man: success AUC {score.success_auc:.3f}, precision@20 {score.precision_20:.3f} (got10k rules)"
    assert printed in capsys.readouterr().out  # a sequence with ground truth is scored


class _ClockStepper(_ShiftStepper):
    """Each step advances a fake clock (``time.perf_counter`` in the test): 30 ms for the first ``slow`` steps
    (a warm-up: lazy initialisation, cold caches), 3 ms after. Timings the test sets, not measures."""

    def __init__(self, clock: list[float], slow: int) -> None:
        self.clock, self.slow, self.calls = clock, slow, 0

    def step(self, prev, boxes, curr):
        self.calls += 1
        self.clock[0] += 0.03 if self.calls <= self.slow else 0.003
        return super().step(prev, boxes, curr)


def test_at_batch_1_the_first_sequence_is_the_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules' FPS (formats_and_eval.md 2.10): batch 1, the first sequence left out as the warm-up, in the run's
    figures and when its files are scored again; a batched run's throughput covers every sequence."""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    for name, seed in (("Alpha", 0), ("Beta", 1)):
        _otb_folder(tmp_path / "otb", name, _frames(5, 40, 60, seed), np.array([[11, 21, 15, 9]] * 5))
    seqs = find_sequences(tmp_path / "otb").sequences
    tdir = tmp_path / "res" / "Still"
    # the untimed warm-up step and Alpha's 4 updates take 30 ms each, Beta's 3 ms
    facts = O.run_tracker(_ClockStepper(clock, 5), seqs, tdir, "got10k", 1, "cpu:test", show_progress=False)
    assert facts["warm_up"] == "Alpha" and facts["batch_sequences"] == 1
    assert facts["fps"] == pytest.approx(1 / 0.003) and facts["fps_end_to_end"] == pytest.approx(1 / 0.003)
    assert O.score_tracker(tdir, seqs).fps == pytest.approx(1 / 0.003)  # re-scored: meta.json names the warm-up
    assert O.score_tracker(tdir, seqs[:1]).fps == pytest.approx(1 / 0.03)  # the warm-up alone: its own times
    facts = O.run_tracker(_ClockStepper(clock, 0), seqs, tdir, "got10k", 2, "cpu:test", show_progress=False)
    assert facts["warm_up"] is None and facts["fps"] == pytest.approx(2 / 0.003)  # 2 frames a step, all counted


def test_otb_protocol_report_and_rescoring_errors(tmp_path: Path) -> None:
    """Under the OTB Matlab rules: Tiger1-style invalid rows are listed, normalized precision is not claimed,
    batched FPS names its batch; --results needs --out and refuses a tracker folder given for its parent."""
    gt = np.array([[11, 21, 15, 9]] * 5)
    gt[3] = 0  # a Board-style zero row
    _otb_folder(tmp_path / "otb", "Seq", _frames(5, 40, 60, 0), gt)
    _otb_folder(tmp_path / "otb", "Two", _frames(5, 40, 60, 1), np.array([[12, 20, 15, 9]] * 5))
    seqs = find_sequences(tmp_path / "otb", protocol="otb").sequences
    tdir = tmp_path / "res" / "Still"
    O.run_tracker(_ShiftStepper(), seqs, tdir, "otb", 2, "cpu:test", show_progress=False)
    out = tmp_path / "out"
    assert O.main(["--results", str(tmp_path / "res"), "--otb-root", str(tmp_path / "otb"), "--out", str(out),
                   "--protocol", "otb", "--quiet"]) == 0  # fmt: skip
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"] == "otb" and rep["invalid_ground_truth_rows"] == {"Seq": 1}
    overall = rep["trackers"]["Still"]["overall"]
    assert overall["norm_precision"] is None and overall["fps_batch_sequences"] == 2
    md = (out / "report.md").read_text()
    assert "OTB Matlab toolkit rules" in md and "Seq 1" in md and "(batch 2)" in md
    assert "not defined by the OTB toolkit" in md
    argv = ["--results", str(tmp_path / "res"), "--otb-root", str(tmp_path / "otb"), "--quiet"]
    with pytest.raises(SystemExit, match="--results needs --out"):
        O.main(argv)
    argv[1] = str(tdir)
    with pytest.raises(SystemExit, match=r"holds result files itself.*pass .*res\)"):
        O.main([*argv, "--out", str(tmp_path / "o2")])


def test_rescoring_names_results_left_from_an_earlier_run(tmp_path: Path, caplog) -> None:
    """A run rewrites only its own sequences' files: re-scoring the folder says which files are older, and the
    last run's end-to-end FPS is not reported for a set of files it did not make."""
    gt = np.array([[11, 21, 15, 9]] * 4)
    for name in ("A", "B"):
        _otb_folder(tmp_path / "otb", name, _frames(4, 40, 60, 0), gt)
    seqs = find_sequences(tmp_path / "otb").sequences
    tdir = tmp_path / "res" / "T"
    O.run_tracker(_ShiftStepper(), seqs, tdir, "got10k", 2, "cpu:test", show_progress=False)
    assert O.score_tracker(tdir, seqs, "got10k").fps_end_to_end > 0  # the run's own files: its figure stands
    O.run_tracker(_ShiftStepper(), seqs[:1], tdir, "pysot", 1, "cpu:test", show_progress=False)
    with caplog.at_level("WARNING"):
        s = O.score_tracker(tdir, seqs, "pysot")
    assert "B.txt not written by the folder's last run (meta.json: protocol pysot)" in caplog.text
    assert set(s.per_sequence) == {"A", "B"} and s.fps_end_to_end == -1.0
