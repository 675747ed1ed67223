"""Shared fixtures. Real-format data lives in ../shared/data beside the checkout (present in CI, absent in a
user's clone): tests that need it skip with a clear message instead of failing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# Modules sharing expensive per-process fixtures (cached builds, written nets) run on one xdist worker; every other
# module is a unit of its own. `make test` asks for `--dist loadgroup`, but pytest-xdist 3.8 tags grouped tests by
# rewriting ``Item._nodeid``, which pytest 9.2 no longer reads: each test became a unit, so both workers built the
# same fixtures and heavy tests ran side by side. The grouping is therefore made here, from one table.
XDIST_GROUPS = {
    "test_build_shards.py": "shards",
    "test_shards.py": "shards",
    "test_cli_errors.py": "net",
    "test_net_parity.py": "net",
    "test_net_shared_targets.py": "net",
    "test_tracker.py": "net",
    "test_tracker_opencv.py": "net",
    "test_evaluate_otb.py": "evaluate",
    "test_metrics.py": "evaluate",
    "test_otb_data.py": "evaluate",
}


def xdist_unit(nodeid: str) -> str:
    """The scheduling unit of a test: its module's group, else its module."""
    module = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(module.rsplit("/", 1)[-1], module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return ModuleGroupScheduling(config, log)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real OTB Man, a real ALOV .ann, real ImageNet XML + JPEGs), or skip."""
    if not (SHARED_DATA / "otb" / "Man" / "groundtruth_rect.txt").is_file():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only present beside the project's CI checkout)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def module_scratch(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder for one module's shared checkpoints and runs, deleted when the module's tests are done.

    Module fixtures that write nets (0.45-1.4 GB a file) put them here: ``tmp_path_factory`` folders would
    otherwise live until the session ends, and a full suite would need ~19 GB of disk.
    """
    d = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield d
    shutil.rmtree(d, ignore_errors=True)
