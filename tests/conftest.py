"""Shared test helpers: where the parity fixtures live, and how to load them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EVIT_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity"


def load_synth():
    """The fixtures' weight synthesizer (`../shared/parity/synth.py`), imported by path."""
    path = PARITY / "synth.py"
    if not path.exists():
        raise FileNotFoundError(
            f"parity fixtures not found at {PARITY}: check out the project with its shared/ "
            "folder beside it, or set EVIT_SHARED=/path/to/shared")
    spec = importlib.util.spec_from_file_location("evit_parity_synth", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fixture_dirs(name: str) -> tuple[Path, Path]:
    """(schema folder, golden folder) of a zoo name: timm names have their own."""
    if name.startswith("efficientvit_"):
        return PARITY / "schemas_timm", PARITY / "golden_timm"
    return PARITY / "schemas", PARITY / "golden"


def has_fixture(name: str) -> bool:
    return (fixture_dirs(name)[1] / f"{name}.npz").exists()


def synth_case(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(reference state dict, golden arrays) of one fixture."""
    synth = load_synth()
    schemas, goldens = fixture_dirs(name)
    golden = synth.load_golden(name, goldens)
    sd = synth.synthesize(synth.load_schema(name, schemas), int(golden["seed"]))
    return sd, golden


def rel_l2(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="session")
def synth():
    return load_synth()
