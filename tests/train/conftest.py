"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scored_manifest(ray_local, tiny_manifest, tmp_path_factory) -> Path:
    """The tiny manifest with `rayssl score`'s difficulty column (curriculum runs)."""
    from rayssl.tools.score import run_score

    scored = tmp_path_factory.mktemp("scored") / "scored.parquet"
    summary = run_score(str(tiny_manifest), str(scored), resize=(32, 43), crop=32)
    assert summary["failed"] == 0 and summary["scored"] == 12
    return scored
