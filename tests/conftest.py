"""Shared fixtures. Real-format data lives in ../shared/data beside the checkout (present in CI, absent in a
user's clone): tests that need it skip with a clear message instead of failing."""

from __future__ import annotations

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
