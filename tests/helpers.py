"""Helpers shared by the tests: the parity fixtures in `../shared`, `rel_l2`, SAM mask checks and
a drawn test image.

Import from here (`from tests.helpers import rel_l2`), not from `conftest`. Tests that need
the fixtures in `../shared/parity` carry `needs_shared`: without that folder they are skipped
with one clear reason instead of failing at import.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EVIT_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity"

needs_shared = pytest.mark.skipif(
    not (PARITY / "synth.py").exists(),
    reason=f"parity fixtures not found at {PARITY}: check out the project with its shared/ "
           "folder beside it, or set EVIT_SHARED=/path/to/shared")


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


def rel_l2(out, ref, floor: float = 0.0) -> float:
    """`||out - ref|| / max(||ref||, floor)` in float64 (floor: for reference values near 0)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), floor))


def assert_masks_match(mask: np.ndarray, logits: np.ndarray, ref_mask: np.ndarray,
                       ref_logits_s4: np.ndarray, margin: float = 1e-3) -> None:
    """Boolean masks equal except where the logit is within `margin` of the threshold (the
    reference's logits are known on every 4th pixel; elsewhere ours stand in for them)."""
    assert mask.shape == ref_mask.shape and mask.dtype == bool
    bad = mask != ref_mask
    assert not (bad & (np.abs(logits) > margin)).any(), f"{int(bad.sum())} pixels differ"
    assert not (bad[..., ::4, ::4] & (np.abs(ref_logits_s4) > margin)).any()


def drawn_scene(h: int = 120, w: int = 160) -> np.ndarray:
    """A small RGB test image: a sky gradient, a red disc, a blue box, a green triangle."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = (200 - 100 * yy / h).astype(np.uint8)
    img[..., 1] = 180
    img[(yy - h * 0.45) ** 2 + (xx - w * 0.3) ** 2 < (h * 0.2) ** 2] = (220, 40, 40)
    img[int(h * 0.55):int(h * 0.9), int(w * 0.55):int(w * 0.9)] = (40, 60, 200)
    tri = (yy > h * 0.1) & (yy < h * 0.45) & (np.abs(xx - w * 0.75) < (yy - h * 0.1) * 0.8)
    img[tri] = (30, 160, 50)
    return img
