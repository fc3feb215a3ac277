"""Shared fixtures of the training tests: a per-session tfds dir with the tiny embedded set."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """data_dir holding `evit_shapes/tiny` (built once per session, or reused from
    $EVIT_TEST_DATA_DIR to skip the ~10 s build)."""
    from train.datasets.builder import ensure_built
    d = os.environ.get("EVIT_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
    return ensure_built("tiny", d)
