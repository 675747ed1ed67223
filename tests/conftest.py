"""Shared fixtures. Real-format data lives in ../shared/data beside the checkout (present in CI, absent in a
user's clone): tests that need it skip with a clear message instead of failing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
