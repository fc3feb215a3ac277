"""EfficientViT-SAM at parity with the authors' PyTorch predictor, all five models.

Per model: the reference's synthetic state dict is converted strictly, the predictor
encodes the fixture's 480x640 image (one compiled encoder per model), and the three prompt
sets (one click, multimask; a box and a background click; two clicks and a mask prompt) are
decoded together in one compiled call of the decoder that all five models share. Checked:
the embedding, IoUs, low-res logits and full-size logits (relative L2 <= 1e-5), and the
boolean masks (equal except within 1e-3 of the threshold).

IoU predictions are a few scalars, some close to 0 (0.029 for L1's box prompt, 0.018 for
XL1's mask prompt), where float32 noise alone (~2e-7 absolute, measured by decoding the
reference's own embedding) is a ~1e-5 relative error: L1's box prompt measured 7.7e-6 with
the pure-JAX depthwise op and 1.4e-5 with the native kernels, the same 4e-7 absolute. Their
error is therefore taken against max(||ref||, 0.1): relative L2 for any IoU vector of norm
>= 0.1 (most of them), an absolute 1e-6 below it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import evit_jax
from evit_jax.sam import SamPredictor
from evit_jax.sam import prompts as P
from evit_jax.sam.predictor import upscale
from tests.helpers import assert_masks_match, needs_shared, rel_l2, synth_case

pytestmark = needs_shared  # every test runs a fixture
TOL = 1e-5
NAMES = evit_jax.list_models("efficientvit-sam-*")


def test_every_sam_model_is_covered():
    assert NAMES == [f"efficientvit-sam-{v}" for v in ("l0", "l1", "l2", "xl0", "xl1")]


@pytest.fixture(scope="module")
def shared_decode():
    """One jitted decoder and post-processing for all models (they share the decoder)."""
    decoders = {evit_jax.create_model(n).prompt_decoder() for n in NAMES}
    assert len(decoders) == 1, "the zoo's SAM models should share one decoder"
    return jax.jit(decoders.pop().apply), jax.jit(upscale)


def _prompt_batch(p: SamPredictor, g: dict) -> tuple[np.ndarray, ...]:
    """The three prompt sets as one padded batch, through the predictor's transforms."""
    rows = []
    for i in (1, 2, 3):
        c, lab = P.check_points(g[f"p{i}_point_coords"], g[f"p{i}_point_labels"],
                                p.original_size)
        box = g.get(f"p{i}_box")
        box = None if box is None else p.transform.apply_boxes(box[None], p.original_size)
        rows.append(P.prompt_tokens(p.transform.apply_coords(c[None], p.original_size),
                                    lab[None], box, 1))
    n = max(r[1].shape[1] for r in rows)
    padded = [P.pad_tokens(c, lab, n, 1) for c, lab in rows]
    coords = np.concatenate([c for c, _ in padded])
    labels = np.concatenate([lab for _, lab in padded])
    masks = np.zeros((3, 256, 256), np.float32)
    masks[2] = g["p3_mask_input"][0]
    return coords, labels, masks, np.array([False, False, True])


@pytest.mark.parametrize("name", NAMES)
def test_sam_parity(name, shared_decode):
    sd, g = synth_case(name)
    variables = evit_jax.convert_state_dict(name, {"state_dict": sd})  # strict
    p = SamPredictor(evit_jax.create_model(name), variables)
    p.set_image(g["image"])
    assert p.original_size == tuple(g["original_size"])
    assert p.input_size == tuple(g["input_size"])
    err = rel_l2(p.features, g["image_embeddings"].transpose(0, 2, 3, 1))
    print(f"{name}: image_embeddings rel-L2 {err:.2e}")
    assert p.features.shape == (1, 64, 64, 256) and err <= TOL

    decode, up = shared_decode
    low, iou = decode(p.decoder_variables, p.features, *_prompt_batch(p, g))
    logits = np.asarray(up(low, *p._maps))
    low, iou = np.asarray(low), np.asarray(iou)
    for row, i in enumerate((1, 2, 3)):
        sl = slice(1, 4) if i == 1 else slice(0, 1)  # p1 multimask, p2 / p3 single mask
        ref_iou = g[f"p{i}_iou"]
        errs = {"iou": float(np.linalg.norm(iou[row, sl] - ref_iou)
                             / max(np.linalg.norm(ref_iou), 0.1)),
                "low_res_logits": rel_l2(low[row, sl], g[f"p{i}_low_res_logits"]),
                "mask_logits_s4": rel_l2(logits[row, sl, ::4, ::4], g[f"p{i}_mask_logits_s4"])}
        print(f"{name} p{i}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        assert max(errs.values()) <= TOL, (i, errs)
        assert_masks_match(logits[row, sl] > 0, logits[row, sl], g[f"p{i}_mask"],
                           g[f"p{i}_mask_logits_s4"])
