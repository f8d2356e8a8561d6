"""Shared pytest fixtures: the shared real-data folder, a tiny random model, a temp run folder.

Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]

HOW_TO_GET_DATA = (
    "real benchmark files not found: set SINTERNAL_SHARED_DATA to a folder laid out like the kit's "
    "shared/data (see README, 'Real benchmark data'), or place it at ../shared/data beside the clone"
)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("SINTERNAL_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    cand = REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public datasets; skips (with how to get it) where it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip(HOW_TO_GET_DATA)
    return d
