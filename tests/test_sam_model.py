"""EfficientViT-SAM building blocks against PyTorch, the zoo rows, conversion, transforms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
from evit_jax.convert import CheckpointMismatchError
from evit_jax.convert.keymap import _torch_to_flax_kernel
from evit_jax.models.sam import EfficientViTSam
from evit_jax.models.sam.mask_decoder import ConvTranspose2x2
from evit_jax.models.sam.prompt_encoder import PatchConv, PositionEmbeddingRandom
from evit_jax.models.sam.transformer import Attention
from evit_jax.sam.transforms import postprocess_matrices, preprocess, preprocess_shape
from evit_jax.zoo import abstract_variables
from tests.sam_helpers import rel_l2, sam_case

NAMES = evit_jax.list_models("efficientvit-sam-*")
# Parameter counts of the reference models (spec section 5.1, measured).
PARAMS_M = {"l0": 34.79, "l1": 47.65, "l2": 61.33, "xl0": 116.96, "xl1": 203.35}


@pytest.mark.parametrize("name", NAMES)
def test_zoo_rows(name):
    spec = evit_jax.model_info(name)
    model = evit_jax.create_model(name)
    assert isinstance(model, EfficientViTSam) and spec.task == "sam" and spec.norm_eps == 1e-6
    size = 1024 if "xl" in name else 512
    assert model.head_cfg.encoder_size == size and spec.resolution == (size, size)
    abstract = abstract_variables(model)
    top = set(abstract["params"])
    assert top == {"image_encoder", "prompt_encoder", "mask_decoder"}
    n = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    assert round(n / 1e6, 2) == PARAMS_M[name.rsplit("-", 1)[1]]


def test_conversion_is_strict():
    sd, _ = sam_case("efficientvit-sam-l0")
    key = "mask_decoder.output_upscaling.0.weight"
    with pytest.raises(CheckpointMismatchError, match="output_upscaling_0/kernel"):
        evit_jax.convert_state_dict("efficientvit-sam-l0", {k: v for k, v in sd.items()
                                                            if k != key})
    with pytest.raises(CheckpointMismatchError, match="prompt_encoder.extra"):
        evit_jax.convert_state_dict("efficientvit-sam-l0", {**sd, "prompt_encoder.extra":
                                                            np.zeros(3, np.float32)})
    v = evit_jax.convert_state_dict("efficientvit-sam-l0", sd)
    pe = v["params"]["prompt_encoder"]["pe_layer"]["positional_encoding_gaussian_matrix"]
    np.testing.assert_array_equal(pe, sd["prompt_encoder.pe_layer."
                                         "positional_encoding_gaussian_matrix"])


def test_conv_transpose_matches_torch_and_flax():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 5, 2, 2)).astype(np.float32)  # torch (C_in, C_out, 2, 2)
    b = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(2, 8, 3, 4)).astype(np.float32)
    conv = torch.nn.ConvTranspose2d(8, 5, 2, 2)
    conv.weight.data, conv.bias.data = torch.from_numpy(w), torch.from_numpy(b)
    want = conv(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    params = {"params": {"kernel": _torch_to_flax_kernel(w), "bias": b}}  # the keymap rule
    got = ConvTranspose2x2(5).apply(params, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, want, atol=1e-5)
    flax_ct = nn.ConvTranspose(5, (2, 2), (2, 2), padding="VALID", transpose_kernel=True)
    np.testing.assert_allclose(flax_ct.apply(params, x.transpose(0, 2, 3, 1)), want, atol=1e-5)


def test_patch_conv_and_position_encoding_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3, 2, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    x = rng.normal(size=(2, 3, 8, 6)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), stride=2).numpy()
    got = PatchConv(4).apply({"params": {"kernel": _torch_to_flax_kernel(w), "bias": b}},
                             x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-5)
    g = rng.normal(size=(2, 16)).astype(np.float32)
    c = rng.random((5, 2)).astype(np.float32)
    ang = 2 * np.pi * ((2 * c.astype(np.float64) - 1) @ g)
    got = PositionEmbeddingRandom(16).apply(
        {"params": {"positional_encoding_gaussian_matrix": g}}, c)
    np.testing.assert_allclose(got, np.concatenate([np.sin(ang), np.cos(ang)], -1), atol=1e-5)


def test_attention_broadcasts_a_shared_image_and_masks_keys():
    att = Attention(32, 4, 2)
    rng = np.random.default_rng(2)
    q, img = rng.normal(size=(3, 5, 32)), rng.normal(size=(1, 7, 32))
    v = jax.jit(att.init)(jax.random.key(0), q, img, img)
    apply = jax.jit(att.apply)
    shared = apply(v, q, img, img)  # 3 queries against one image
    tiled = apply(v, q, np.repeat(img, 3, 0), np.repeat(img, 3, 0))
    np.testing.assert_allclose(shared, tiled, atol=1e-5)
    mask = np.array([[True] * 5 + [False] * 2] * 3)
    np.testing.assert_allclose(apply(v, q, np.repeat(img, 3, 0), np.repeat(img, 3, 0), mask),
                               apply(v, q, img[:, :5], img[:, :5]), atol=1e-5)


def test_preprocess_resizes_normalises_and_pads():
    img = np.random.default_rng(3).integers(0, 256, (30, 40, 3), np.uint8)
    x = preprocess(img, 64)
    assert x.shape == (1, 64, 64, 3) and x.dtype == np.float32
    assert preprocess_shape(30, 40, 64) == (48, 64)
    assert (x[0, 48:] == 0).all() and np.abs(x[0, :48]).max() > 0
    same = preprocess(np.pad(img, ((0, 10), (24, 0), (0, 0))), 64)  # longest side 64: no resize
    assert same.shape == (1, 64, 64, 3) and (same[0, 40:] == 0).all()
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(same[0, 0, 24], (img[0, 0] - mean) / std, atol=1e-5)


@pytest.mark.parametrize("original", [(480, 640), (17, 30), (1500, 999), (1024, 700)])
def test_postprocess_matrices_match_torch_interpolate(original):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional.interpolate
    low = np.random.default_rng(4).normal(size=(1, 2, 256, 256)).astype(np.float32)
    input_size = preprocess_shape(*original, 1024)
    ref = f(torch.from_numpy(low), (1024, 1024), mode="bilinear", align_corners=False)
    ref = ref[..., :input_size[0], :input_size[1]]
    ref = f(ref, original, mode="bilinear", align_corners=False).numpy()
    mh, mw = postprocess_matrices(256, 1024, input_size, original)
    got = mh.astype(np.float64) @ low @ mw.T.astype(np.float64)
    assert rel_l2(got, ref) < 5e-7


def test_encode_image_checks_the_size_and_call_without_prompts():
    model = evit_jax.create_model("efficientvit-sam-l0")
    v = abstract_variables(model)
    def shape(*args, **kw):
        return jax.eval_shape(lambda v, *a: model.apply(v, *a, **kw), v, *args)

    with pytest.raises(ValueError, match="512x512"):
        shape(jnp.zeros((1, 256, 256, 3)), method="encode_image")
    emb = shape(jnp.zeros((2, 512, 512, 3)), method="encode_image")
    assert emb.shape == (2, 64, 64, 256) and emb.dtype == jnp.float32
    assert shape(jnp.zeros((1, 128, 128, 3))).shape == (1, 64, 64, 256)
    low, iou = shape(*model.example_inputs())
    assert low.shape == (1, 4, 256, 256) and iou.shape == (1, 4)


def test_bfloat16_decoder_close_to_float32():
    sd, g = sam_case("efficientvit-sam-l0")
    model = evit_jax.create_model("efficientvit-sam-l0")
    dv = model.decoder_variables(evit_jax.convert_state_dict("efficientvit-sam-l0", sd))
    emb = g["image_embeddings"].transpose(0, 2, 3, 1)
    coords = np.array([[[640.0, 480.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, -1]], np.int32)
    f32 = jax.jit(model.prompt_decoder().apply)(dv, emb, coords, labels)
    bf16 = evit_jax.create_model("efficientvit-sam-l0", dtype=jnp.bfloat16).prompt_decoder()
    b16 = jax.jit(bf16.apply)(dv, emb, coords, labels)
    assert b16[0].dtype == jnp.float32
    assert rel_l2(b16[0], f32[0]) < 3e-2 and rel_l2(b16[1], f32[1]) < 3e-2
