"""pytest fixtures shared by the tests (plain helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest

from tests.helpers import load_synth


@pytest.fixture(scope="session")
def synth():
    return load_synth()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """A tfds data_dir holding the tiny embedded set `evit_shapes/tiny` (built once per
    session, or reused from $EVIT_TEST_DATA_DIR to skip the ~10 s build)."""
    from evit_jax.data.shapes_tfds import ensure_built
    d = os.environ.get("EVIT_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
    return ensure_built("tiny", d)
