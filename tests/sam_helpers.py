"""Helpers of the SAM tests (fixtures through tests/conftest.py, a drawn test image)."""

from __future__ import annotations

import numpy as np

from tests.helpers import rel_l2, synth_case

__all__ = ["assert_masks_match", "drawn_scene", "rel_l2", "sam_case"]


def sam_case(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the reference's synthetic state dict, golden arrays) of a SAM fixture."""
    return synth_case(name)


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
