"""Session-wide fixtures: the real sample data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HRMCOND_SHARED_DATA`` or ``../shared/data`` beside the checkout (the samples are not redistributed)."""
    return Path(os.environ.get("HRMCOND_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {path} (set HRMCOND_SHARED_DATA to the shared/data folder)")
    return path
