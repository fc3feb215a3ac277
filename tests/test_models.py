"""Model zoo behaviour: names, parameter counts, shapes, dtypes, errors, training mode."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import evit_jax
from evit_jax.zoo import abstract_variables, init_variables
from tests.helpers import fixture_dirs, has_fixture, load_synth, needs_shared, rel_l2, synth_case

# Those with reference code to count against (the v1 models have none: tests/test_v1.py).
CLS_SEG = [n for n in evit_jax.list_models() if evit_jax.model_info(n).task in ("cls", "seg")
           and evit_jax.model_info(n).family != "v1"]

REQUIRED = (
    [f"efficientvit-b{i}" for i in range(4)] + [f"efficientvit-l{i}" for i in (1, 2, 3)]
    + ["efficientvit-b1-r288", "efficientvit-l2-r384", "efficientvit-b0-r224",
       "efficientvit-l3-r320"]
    + [f"efficientvit-seg-{v}-cityscapes" for v in ("b0", "b1", "b2", "b3", "l1", "l2")]
    + [f"efficientvit-seg-{v}-ade20k" for v in ("b1", "b2", "b3", "l1", "l2")]
    + [f"efficientvit_{v}" for v in ("b0", "b1", "b2", "b3", "l1", "l2", "l3")]
)


def test_zoo_has_the_authors_and_timms_names():
    missing = sorted(set(REQUIRED) - set(evit_jax.list_models()))
    assert not missing
    assert evit_jax.list_models("*seg*l2*") == ["efficientvit-seg-l2-ade20k",
                                                "efficientvit-seg-l2-cityscapes"]


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean.*efficientvit-b1"):
        evit_jax.create_model("efficientvit-b1-r244")


def test_timm_tags_are_accepted():
    assert evit_jax.model_info("efficientvit_b1.r288_in1k").name == "efficientvit_b1"


def test_model_info_says_how_to_evaluate():
    """Configs and evit-eval read these instead of parsing names."""
    city, ade = (evit_jax.model_info(f"efficientvit-seg-b1-{d}") for d in ("cityscapes", "ade20k"))
    assert (city.dataset, city.eval_mode, city.eval_size, city.family) == \
        ("cityscapes", "fixed", 1024, "b")
    assert (ade.dataset, ade.eval_mode, ade.eval_size) == ("ade20k", "shorter", 512)
    b1, b2 = evit_jax.model_info("efficientvit-b1-r288"), evit_jax.model_info("efficientvit-b2")
    assert (b1.dataset, b1.eval_size, b1.crop_pct, b2.crop_pct) == ("imagenet", 288, 0.95, 1.0)
    assert evit_jax.model_info("efficientvit_b2").crop_pct == 0.95  # timm's configs
    assert evit_jax.model_info("efficientvit-sam-xl0").family == "l"


def _schema_param_count(name: str) -> int:
    """Trainable parameters of the reference: every tensor but BN buffers."""
    base = name if has_fixture(name) else None
    if base is None:  # resolution variants share their base model's architecture
        base = name.rsplit("-r", 1)[0]
    synth = load_synth()
    schema = synth.load_schema(base, fixture_dirs(base)[0])
    return sum(math.prod(s) for k, s, _ in schema
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@needs_shared
@pytest.mark.parametrize("name", CLS_SEG)
def test_parameter_count_matches_reference(name):
    model = evit_jax.create_model(name)
    abstract = evit_jax.zoo.abstract_variables(model)
    n = sum(math.prod(v.shape) for v in flatten_dict(abstract["params"]).values())
    assert n == _schema_param_count(name)


@pytest.mark.parametrize("name,stride", [("efficientvit-b0", 32), ("efficientvit-l1", 32),
                                         ("efficientvit-seg-b0-cityscapes", 8)])
def test_any_batch_and_non_square_size(name, stride):
    model = evit_jax.create_model(name)
    variables = init_variables(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 64, 96, 3))
    out = jax.jit(model.apply)(variables, x)
    spec = evit_jax.model_info(name)
    if spec.task == "cls":
        assert out.shape == (3, 1000)
    else:
        assert out.shape == (3, 64 // stride, 96 // stride, spec.num_classes)
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    feats = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, x[:1])
    widths = evit_jax.zoo.BACKBONES[spec.backbone].width_list
    for i, w in enumerate(widths):
        assert feats[f"stage{i}"].shape == (1, 64 >> (i + 1), 96 >> (i + 1), w)
    np.testing.assert_array_equal(feats["stage_final"], feats[f"stage{len(widths) - 1}"])


def test_bad_input_shapes_raise_clear_errors():
    model = evit_jax.create_model("efficientvit-b0")
    variables = init_variables(model, jax.random.key(0))
    apply = jax.jit(model.apply)  # shape checks run at trace time
    with pytest.raises(ValueError, match="NCHW"):
        apply(variables, jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match="multiple of 32"):
        apply(variables, jnp.zeros((1, 70, 64, 3)))


def test_create_model_options():
    model = evit_jax.create_model("efficientvit-b0", num_classes=10)
    variables = init_variables(model, jax.random.key(0))
    assert jax.jit(model.apply)(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
    with pytest.raises(TypeError, match="unknown options.*colour"):
        evit_jax.create_model("efficientvit-b0", colour="red")
    # An option goes to every part that declares it: the backbone's drop path, every norm's eps.
    seg = evit_jax.create_model("efficientvit-seg-b1-ade20k", drop_path=0.1, norm_eps=1e-3)
    assert seg.backbone.drop_path == 0.1 and seg.backbone.norm_eps == seg.head.norm_eps == 1e-3
    sam = evit_jax.create_model("efficientvit-sam-l0", dtype=jnp.bfloat16)
    assert sam.image_encoder.neck.dtype == sam.mask_decoder.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="unknown options.*num_classes"):
        evit_jax.create_model("efficientvit-sam-l0", num_classes=3)


def test_model_from_spec_builds_a_changed_entry():
    """A SAM entry at a reduced encoder size and embedding grid (how training shrinks it)."""
    spec = evit_jax.model_info("efficientvit-sam-l0")
    head = dataclasses.replace(spec.head, encoder_size=256,
                               decoder=dataclasses.replace(spec.head.decoder, grid=16))
    model = evit_jax.zoo.model_from_spec(dataclasses.replace(spec, head=head))
    assert (model.encoder_size, model.low_res_size, model.prompt_size) == (256, 64, 1024)
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    emb = jax.eval_shape(lambda v, x: model.apply(v, x, method="encode_image"),
                         abstract_variables(model), x)
    assert emb.shape == (1, 16, 16, 256)


# bf16 compute (float32 params) against float32, on the fixtures' weights and inputs. The
# synthetic weights let activations grow far more than trained ones (B3 stage 4: mean |x| ~ 46),
# and bf16's 8-bit mantissa already costs ~0.4 % at stage 0 (rounding of the input image).
BF16_CASES = ["efficientvit-b0", "efficientvit-b1", "efficientvit-b2", "efficientvit-l1",
              "efficientvit-seg-b1-cityscapes"]


@needs_shared
@pytest.mark.parametrize("name", BF16_CASES)
def test_bfloat16_logits_close_to_float32(name):
    from evit_jax.convert import convert_state_dict

    sd, golden = synth_case(name)
    variables = convert_state_dict(name, sd)
    x = jnp.asarray(golden["input"].astype(np.float32).transpose(0, 2, 3, 1))
    y32 = jax.jit(evit_jax.create_model(name).apply)(variables, x)
    y16 = jax.jit(evit_jax.create_model(name, dtype=jnp.bfloat16).apply)(variables, x)
    err = rel_l2(y16, y32)
    print(f"{name}: bf16 vs f32 rel-L2 {err:.2e}")
    assert err <= 1e-2


def _identity_residual_branches(cfg) -> int:
    """Residual branches with a shortcut (each EfficientViT block has two)."""
    if cfg.family == "b":
        return cfg.depth_list[0] + sum(d - 1 for d in cfg.depth_list[1:3]) \
            + 2 * sum(cfg.depth_list[3:])
    return sum(2 * d if kind.startswith("att") else d
               for kind, d in zip(cfg.block_list, cfg.depth_list))


@pytest.mark.parametrize("name", ["efficientvit-b1", "efficientvit-l2"])
def test_host_init_is_deterministic_and_follows_the_recipe(name):
    model = evit_jax.create_model(name, zero_init_last=True)
    a = flatten_dict(init_variables(model, 0))
    b = flatten_dict(init_variables(model, jax.random.key(0)))
    c = flatten_dict(init_variables(model, 1))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    kernels = [k for k in a if k[-1] == "kernel"]
    assert not np.array_equal(a[kernels[0]], c[kernels[0]])
    w = np.concatenate([a[k].ravel() for k in kernels])
    assert abs(w.std() - 0.02 * 0.88) < 1e-3 and np.abs(w).max() <= 0.04  # trunc at 2 std
    assert all(not a[k].any() for k in a if k[-1] == "bias")
    # "last gamma = 0" exactly on the branches that have a shortcut to carry the signal.
    zeroed = sum(1 for k in a if k[-1] == "scale" and not a[k].any())
    cfg = evit_jax.zoo.BACKBONES[evit_jax.model_info(name).backbone]
    assert zeroed == _identity_residual_branches(cfg)
