"""A fast `make demo` (small data, a few steps, a few frames): every artefact is produced and valid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from pipeline import demo


@pytest.fixture(scope="module")
def demo_run(module_scratch: Path) -> Path:
    root = module_scratch
    argv = ["--size", "small", "--steps", "2", "--train-minutes", "3", "--max-frames", "6", "--device", "cpu"]
    argv += ["--data", str(root / "data"), "--shards", str(root / "shards"), "--run", str(root / "run")]
    argv += ["--out", str(root / "report"), "--quiet"]
    assert demo.main(argv) == 0
    return root


def test_shards_and_training_artefacts(demo_run: Path) -> None:
    manifest = json.loads((demo_run / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["imagenet"]["train"]["samples"] > 0
    assert manifest["counts"]["alov"]["train"]["samples"] > 0
    for shard in manifest["shards"]:
        assert (demo_run / "shards" / shard["file"]).is_file()
    run = demo_run / "run"
    assert (run / "checkpoint-latest.pt").is_file() and (run / "initial.pt").is_file()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert list(run.glob("events.out.tfevents.*"))


def test_reports_compare_the_three_trackers(demo_run: Path) -> None:
    report_dir = demo_run / "report" / "heldout"
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["trackers"]) == set(demo.TRACKERS)
    for name in demo.TRACKERS:
        overall = report["trackers"][name]["overall"]
        assert 0.0 <= overall["success_auc"] <= 1.0 and 0.0 <= overall["precision_20"] <= 1.0
        assert overall["frames"] > 0
        assert (report_dir / name).is_dir()
    for plot in ("success_plot.png", "precision_plot.png"):
        with Image.open(report_dir / plot) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    summary = json.loads((demo_run / "report" / "summary.json").read_text())
    assert "held-out generated sequences" in summary
    assert (demo_run / "report" / "summary.md").read_text().count("| GOTURN-trained |") == len(summary)


def test_gif_of_a_tracked_sequence(demo_run: Path) -> None:
    gifs = list((demo_run / "report" / "gif").rglob("*.gif"))
    assert len(gifs) == 1
    with Image.open(gifs[0]) as im:
        assert im.format == "GIF" and im.n_frames >= 2
