"""bench/gpu_checks.sh is the one prepared run a scarce GPU session gets; CI (no GPU) keeps its references valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_checks.sh"


def _commands() -> str:
    return SCRIPT.read_text().replace("\\\n", " ")


def test_script_is_valid_bash_and_names_existing_cuda_tests():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_wheels.sh")], check=True)
    ids = re.findall(r"(tests/test_\w+\.py)::(\w+)", _commands())
    assert len(ids) >= 3, ids
    for path, name in ids:
        src = (REPO / path).read_text()
        assert re.search(rf"^def {name}\(", src, re.M), f"{path}::{name} no longer exists"
        assert re.search(rf"skipif\(not torch\.cuda\.is_available\(\).*\n(@.*\n)*def {name}\(", src), name


def test_bench_options_in_the_script_exist():
    calls = re.findall(r'"\$PY" (bench/\w+\.py)([^\n]*)', _commands())
    assert {c[0] for c in calls} >= {"bench/augment.py", "bench/track.py", "bench/train.py", "bench/eval_batched.py"}
    for bench, args in calls:
        declared = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", (REPO / bench).read_text()))
        used = set(re.findall(r"(--[\w-]+)", args))
        assert used <= declared, f"{bench}: {sorted(used - declared)} not among its options"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_cuda_it_stops_at_once_instead_of_reporting_skipped_tests_as_passed(tmp_path: Path):
    res = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no CUDA device" in (tmp_path / "gpu_checks.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_a_cuda_test_that_skips_counts_as_failed(tmp_path: Path):
    """A python that claims CUDA but whose tests skip: each CUDA test is reported failed, not passed."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\n"
        'if [ "$1" = "-c" ] && [[ "$2" == *cuda.is_available* ]]; then exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    # The script's per-check limits are for a GPU machine; this checks its bookkeeping, so a loaded CI machine's
    # slow pytest start-ups must not turn a skip into a timeout: `timeout` here runs its command without a limit.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text('#!/bin/bash\nwhile [ "$1" = -k ]; do shift 2; done\nshift\nexec "$@"\n')
    (bin_dir / "timeout").chmod(0o755)
    env = {"PYTHON": str(fake), "PATH": f"{bin_dir}:/usr/bin:/bin", "PARTS": "tests"}
    res = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    log = (tmp_path / "gpu_checks.log").read_text()
    assert res.returncode == 1, log[-2000:]
    body = log.split("== summary")[0]
    assert body.count("pytest skipped it although this machine has CUDA") == 6  # 3 tests + 3 training configs
    assert "FAILED: CUDA test: DALI GPU graph = CPU graph (exit 3)" in log
