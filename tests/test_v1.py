"""The v1 paper's EfficientViT-Base (seed 003): zoo entries, the paper's params and MACs, the
forward pass, fuse_bn, bf16, save / load, and the ablation options of `create_model`.

No weights or code of these models exist, so there is no parity fixture: the figures the paper
prints (Tables 2-3) are what the reconstruction is held to (docs/v1.md). Counting traces shapes
only; the few compiled forward passes run on a 64x64 input and share one module fixture.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import evit_jax
from evit_jax.bench.macs import count_params, count_program_macs
from evit_jax.bench.programs import random_variables
from evit_jax.bench.zoo_table import format_row, row
from evit_jax.errors import UserError
from evit_jax.models.v1 import V1Backbone, V1Config
from evit_jax.models.v1_blocks import avg_pool2
from evit_jax.nn.attention import LiteMLA, softmax_attention
from evit_jax.zoo import BACKBONES, abstract_variables, init_variables
from tests.helpers import rel_l2

TOLERANCE = 0.03  # the bar for params and MACs against the paper
CLS = ["efficientvit-base-r192", "efficientvit-base-r224", "efficientvit-base-r224-w1.2"]
SEG = "efficientvit-base-seg-cityscapes"
V1 = CLS + [SEG]
README = Path(__file__).resolve().parents[1] / "README.md"


def _flat(tree) -> dict[str, tuple]:
    return {"/".join(k): tuple(v.shape) for k, v in flatten_dict(tree).items()}


def _macs(model, hw: tuple[int, int]) -> int:
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    return count_program_macs(lambda v, x: model.apply(v, x), abstract_variables(model),
                              x)["total"]


def test_zoo_entries_and_model_info():
    assert evit_jax.list_models("efficientvit-base*") == sorted(V1)
    for name in V1:
        spec = evit_jax.model_info(name)
        assert spec.family == "v1" and spec.checkpoint is None
        assert {"params", "macs"} <= set(spec.paper)
    r192, w12 = evit_jax.model_info(CLS[0]), evit_jax.model_info(CLS[2])
    assert (r192.task, r192.dataset, r192.resolution, r192.paper["top1"]) == \
        ("cls", "imagenet", (192, 192), 77.7)
    assert (w12.paper["top1"], w12.paper["top5"], w12.paper["macs"]) == (79.7, 94.8, 584e6)
    seg = evit_jax.model_info(SEG)
    assert (seg.task, seg.dataset, seg.num_classes, seg.resolution, seg.eval_mode) == \
        ("seg", "cityscapes", 19, (1024, 2048), "fixed")
    assert seg.paper["miou"] == 78.7 and seg.paper["macs"] == seg.paper["macs_at"][(1024, 2048)]
    # The paper's widths, depths and heads (12 / 24 of dim 16 in stages 3 / 4).
    cfg = BACKBONES["base"]
    assert (cfg.width_list, cfg.depth_list[1:]) == ((16, 24, 48, 96, 192), (2, 3, 5, 2))
    assert cfg.attention_shape(3) == (12, 16) and cfg.attention_shape(4) == (24, 16)
    assert BACKBONES["base-w1.2"].width_list == (24, 32, 56, 112, 232)


@pytest.mark.parametrize("name", V1)
def test_params_and_macs_match_the_paper_and_the_readme(name):
    """Within 3 % of Tables 2-3 at the entry's resolution (the segmenter's parameters are the
    exception, `test_segmenter_parameters_are_out_of_reach`); the README row is this row."""
    r = row(name, xla=False)
    spec = evit_jax.model_info(name)
    assert abs(r["macs"] / spec.paper["macs"] - 1) < TOLERANCE, r
    if spec.task == "cls":
        assert abs(r["params"] / spec.paper["params"] - 1) < TOLERANCE, r
    line = format_row(r)
    cells = line.split("|")[1:6]  # model, resolution, params, GMACs, paper GMACs
    readme = [ln for ln in README.read_text().splitlines() if ln.startswith(f"| `{name}` |")]
    assert len(readme) == 1 and readme[0].split("|")[1:6] == cells, (line, readme)


def test_segmenter_macs_at_every_paper_resolution():
    # "r1408" / "r1536" / "r2048" are the longer side of a 1:2 Cityscapes input: at those
    # sizes the count lands within 1.4 % of 9.1 / 10.8 / 19.1 G (a square 1408x1408 input
    # would be 17.9 G, 1408 as the shorter side 35.9 G).
    model = evit_jax.create_model(SEG)
    for hw, paper in evit_jax.model_info(SEG).paper["macs_at"].items():
        assert abs(_macs(model, hw) / paper - 1) < TOLERANCE, hw


def test_segmenter_parameters_are_out_of_reach():
    """No head on P2 / P4 reaches the paper's 6.5 M within its 19.1 G (docs/v1.md): each
    parameter of a convolution on a stride-s map costs at least H * W / s**2 MACs, so at
    1024x2048 even a head whose every parameter sits at stride 32 (2048 MACs each) exceeds
    the budget by far. Our head is the light one the paper describes."""
    model = evit_jax.create_model(SEG)
    feats = lambda v, x: model.apply(v, x, method="features")  # noqa: E731
    variables = abstract_variables(model)
    x = jax.ShapeDtypeStruct((1, 1024, 2048, 3), jnp.float32)
    backbone_macs = count_program_macs(feats, variables, x)["total"]
    backbone_params = count_params({"params": variables["params"]["backbone"]})
    paper = evit_jax.model_info(SEG).paper
    head_params_needed = paper["params"] * (1 - TOLERANCE) - backbone_params
    least_macs = backbone_macs + head_params_needed * (1024 * 2048) / 32 ** 2
    assert least_macs > paper["macs"] * (1 + TOLERANCE) * 1.2
    assert count_params(variables) < 0.5 * paper["params"]


# --------------------------------------------------------------------------- forward passes
@pytest.fixture(scope="module")
def seg():
    """The segmenter (backbone + the new head), random variables with statistics far from
    identity, one compiled float32 apply."""
    model = evit_jax.create_model(SEG)
    variables = random_variables(model, seed=1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
    apply = jax.jit(model.apply)
    return model, variables, x, apply, apply(variables, x)


@pytest.mark.parametrize("name", V1)
def test_output_and_feature_shapes(name):
    model = evit_jax.create_model(name)
    x = jax.ShapeDtypeStruct((3, 64, 96, 3), jnp.float32)
    variables = abstract_variables(model)
    out = jax.eval_shape(model.apply, variables, x)
    spec = evit_jax.model_info(name)
    want = (3, 1000) if spec.task == "cls" else (3, 8, 12, 19)
    assert (out.shape, out.dtype) == (want, jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
    widths = BACKBONES[spec.backbone].width_list
    assert set(feats) == {"input", "stage_final"} | {f"stage{i}" for i in range(5)}
    for i, w in enumerate(widths):  # P2, P3, P4 = stage2..4 at strides 8, 16, 32
        assert feats[f"stage{i}"].shape == (3, 64 >> (i + 1), 96 >> (i + 1), w)
    assert feats["stage_final"].shape == feats["stage4"].shape


def test_forward_is_finite_and_float32(seg):
    _, _, _, _, y = seg
    assert y.shape == (2, 8, 8, 19) and y.dtype == jnp.float32
    assert bool(jnp.isfinite(y).all()) and float(jnp.std(y)) > 0


def test_fuse_bn_folds_batchnorm_and_keeps_layernorm(seg):
    model, variables, x, _, y = seg
    fused = evit_jax.fuse_bn(variables, SEG)
    assert "batch_stats" not in fused  # every BatchNorm folded (stem, stages 1-2, head)
    paths = _flat(fused["params"])
    # Stages 3-4 are LayerNorm: nothing to fold, the norms stay beside their convs.
    ln = [p for p in paths if re.match(r"backbone/stages_[23]/.*/norm/scale$", p)]
    assert ln and not any(re.match(r"backbone/stages_[01]/.*/norm/", p) for p in paths)
    folded = evit_jax.create_model(SEG, fused_bn=True)
    assert jax.tree.map(lambda t: t.shape, abstract_variables(folded)) == \
        jax.tree.map(lambda t: t.shape, fused)
    assert rel_l2(jax.jit(folded.apply)(fused, x), y) < 1e-5


def test_bfloat16_close_to_float32(seg):
    # Random variables of O(1) activations. Measured: 1.0e-2 here, 8.2e-3 for the r224
    # classifier; the released B1 gives 2.7e-2 on the same kind of variables (1e-2 on its
    # fixture's weights, tests/test_models.py).
    _, variables, x, _, y = seg
    y16 = jax.jit(evit_jax.create_model(SEG, dtype=jnp.bfloat16).apply)(variables, x)
    assert y16.dtype == jnp.float32
    assert rel_l2(y16, y) < 1.5e-2


def test_save_load_round_trip(seg, tmp_path):
    _, variables, x, apply, y = seg
    out = evit_jax.save_variables(variables, tmp_path / "base-seg", model=SEG)
    loaded = evit_jax.load_variables(out)
    assert _flat(loaded) == _flat(variables)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded),
                                                    jax.tree.leaves(variables)))
    np.testing.assert_array_equal(apply(loaded, x), y)


def test_parameter_paths_and_host_init():
    """Sensible names (the det engineer loads neck / head keys beside them) and the training
    options: `zero_init_last` zeroes the last norm of every branch with a shortcut."""
    model = evit_jax.create_model("efficientvit-base-r224", zero_init_last=True)
    variables = init_variables(model, 0)
    paths = _flat(variables["params"])
    for p, shape in {
        "backbone/input_stem/op_list_0/conv/kernel": (3, 3, 3, 16),
        "backbone/stages_0/op_list_0/main/depth_conv/conv/kernel": (5, 5, 1, 96),
        "backbone/stages_0/op_list_0/shortcut/conv/kernel": (1, 1, 16, 24),
        "backbone/stages_2/op_list_1/context_module/main/qkv/conv/kernel": (1, 1, 96, 576),
        "backbone/stages_2/op_list_1/context_module/main/proj/norm/scale": (96,),
        "backbone/stages_3/op_list_2/local_module/main/depth_conv/conv/kernel": (5, 5, 1, 768),
        "head/op_list_0/conv/kernel": (1, 1, 192, 1024),
    }.items():
        assert paths.get(p) == shape, p
    scales = flatten_dict(variables["params"])
    zeroed = sum(1 for k, v in scales.items() if k[-1] == "scale" and not v.any())
    # stem DSConv 1 + 4 downsampling blocks + 1 + 2 MBConvs + 2 x (5 + 2) ELA blocks
    assert zeroed == 1 + 4 + 3 + 14
    rates = V1Backbone(BACKBONES["base"], drop_path=0.1, drop_path_skip=1)._drop_rates()
    assert len(rates) == 3 + 14 and rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(rates[1:], rates[2:]))


# ------------------------------------------------------------------------------ ablations
def test_ablation_options_are_routed():
    name = "efficientvit-base-r224"
    plain = _flat(abstract_variables(evit_jax.create_model(name))["params"])
    assert _flat(abstract_variables(evit_jax.create_model(
        name, attention="linear", ffn="dwconv"))["params"]) == plain
    soft = evit_jax.create_model(name, attention="softmax")
    assert soft.backbone.attention == "softmax"
    p = _flat(abstract_variables(soft)["params"])
    att = "backbone/stages_{}/op_list_1/context_module/main/qkv/conv/kernel"
    # Fig. 5: key/value dim 8, heads sized to the linear attention's MACs at 224: 13 and 44.
    assert p[att.format(2)] == (1, 1, 96, 3 * 13 * 8)
    assert p[att.format(3)] == (1, 1, 192, 3 * 44 * 8)
    van = _flat(abstract_variables(evit_jax.create_model(name, ffn="vanilla"))["params"])
    ffn = "backbone/stages_2/op_list_1/local_module/main/"
    assert van[ffn + "inverted_conv/conv/kernel"] == (1, 1, 96, 432)  # 4 x 96 widened
    assert not any(k.startswith(ffn + "depth_conv") for k in van)
    # seed 000 Table 3 on the released models: the LiteMLA of B1's stage 3 (T = C = 128).
    mla = "backbone/stages_2/op_list_1/context_module/main/"
    for kw, qkv, proj, aggreg in [({}, 384, 256, True), ({"multi_scale": False}, 384, 128, False),
                                  ({"global_attention": False}, 128, 256, True),
                                  ({"multi_scale": False, "global_attention": False}, 128, 128,
                                   False)]:
        b1 = _flat(abstract_variables(evit_jax.create_model("efficientvit-b1", **kw))["params"])
        assert b1[mla + "qkv/conv/kernel"] == (1, 1, 128, qkv), kw
        assert b1[mla + "proj/conv/kernel"] == (1, 1, proj, 128), kw
        assert (mla + "aggreg_0_0/kernel" in b1) == aggreg, kw
    sam = evit_jax.create_model("efficientvit-sam-l0", multi_scale=False)
    assert sam.image_encoder.backbone.multi_scale is False


@pytest.mark.parametrize("name,options,applies_to", [
    ("efficientvit-sam-l0", {"attention": "softmax"}, "efficientvit-base"),
    ("efficientvit-b1", {"ffn": "vanilla"}, "efficientvit-base"),
    ("efficientvit-base-r224", {"multi_scale": False}, "multi-scale linear attention"),
    ("efficientvit-base-seg-cityscapes", {"global_attention": False}, "multi-scale"),
    ("efficientvit-sr-x2", {"multi_scale": False}, "multi-scale linear attention"),
])
def test_options_that_do_not_apply_are_refused(name, options, applies_to):
    with pytest.raises(UserError, match=f"unknown options.*{applies_to}") as e:
        evit_jax.create_model(name, **options)
    assert isinstance(e.value, TypeError)  # what an unexpected keyword raises
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,options,match", [
    ("efficientvit-base-r224", {"attention": "soft"}, "attention='soft' is not one of"),
    ("efficientvit-base-r224", {"ffn": "wide"}, "ffn='wide' is not one of"),
    ("efficientvit-b1", {"multi_scale": "no"}, "multi_scale must be True or False"),
])
def test_bad_option_values_are_user_errors(name, options, match):
    with pytest.raises(UserError, match=match):
        evit_jax.create_model(name, **options)


def test_ablations_keep_the_macs():
    """Fig. 5 compares the variants at similar MACs: the softmax heads and the vanilla FFN's
    width are sized for it (at 224)."""
    name = "efficientvit-base-r224"
    base = _macs(evit_jax.create_model(name), (224, 224))
    for kw in ({"attention": "softmax"}, {"ffn": "vanilla"},
               {"attention": "softmax", "ffn": "vanilla"}):
        assert abs(_macs(evit_jax.create_model(name, **kw), (224, 224)) / base - 1) < 0.01, kw


# ------------------------------------------------------------------------------- the ops
def test_softmax_attention_matches_numpy():
    rng = np.random.default_rng(0)
    heads, d, h, w = 3, 8, 4, 5
    qkv = rng.normal(size=(2, h, w, heads * 3 * d)).astype(np.float32)
    t = qkv.reshape(2, h * w, heads, 3, d).astype(np.float64)
    q, k, v = t[..., 0, :], t[..., 1, :], t[..., 2, :]
    logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(d)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    want = np.einsum("bhnm,bmhd->bnhd", a, v).reshape(2, h, w, heads * d)
    np.testing.assert_allclose(softmax_attention(jnp.asarray(qkv), d), want, rtol=2e-5,
                               atol=2e-6)


def test_without_global_attention_tokens_do_not_mix():
    """`global_attention=False` without multi-scale aggregation is per pixel (1x1 convs on
    each token's values); the attention makes every output depend on every pixel."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 32)), jnp.float32)
    x2 = x.at[0, 7, 7].add(1.0)
    for global_attention in (True, False):
        layer = LiteMLA(None, 16, (), global_attention=global_attention)
        v = random_variables(layer, seed=2, inputs=(x,))
        changed = np.abs(np.asarray(layer.apply(v, x2) - layer.apply(v, x)))[0].max(-1) > 1e-6
        assert changed[0, 0] == global_attention and changed[7, 7]


def test_avg_pool2_matches_ceil_mode_pooling():
    x = np.random.default_rng(2).normal(size=(1, 5, 6, 3)).astype(np.float32)
    got = np.asarray(avg_pool2(jnp.asarray(x)))
    assert got.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(got[0, 1, 2], x[0, 2:4, 4:6].mean((0, 1)), rtol=1e-6)
    np.testing.assert_allclose(got[0, 2, 0], x[0, 4, 0:2].mean(0), rtol=1e-6)  # odd row


def test_width_multiplier_rounds_to_multiples_of_eight():
    cfg = V1Config().scaled(1.2)
    assert all(w % 8 == 0 for w in cfg.width_list)
    assert cfg.attention_shape(3) == (14, 16) and cfg.attention_shape(4) == (29, 16)
