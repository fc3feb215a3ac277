"""The EfficientViT SR models: zoo entries, shapes at any size, the global skip, I/O, export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
from evit_jax.models.sr import (
    EfficientViTSR,
    SRBodyConfig,
    SRHeadConfig,
    pixel_shuffle,
    space_to_depth,
)
from evit_jax.nn.resize import resize
from evit_jax.zoo import abstract_variables

NAMES = ["efficientvit-sr-x2", "efficientvit-sr-x3", "efficientvit-sr-x4",
         "efficientvit-sr-w0.75-x2", "efficientvit-sr-w0.75-x3", "efficientvit-sr-w0.75-x4"]
TINY = SRBodyConfig(width=32, depth=1, stem_width=8, dim=16)


def test_zoo_entries():
    assert evit_jax.list_models("efficientvit-sr*") == sorted(NAMES)
    for name in NAMES:
        info = evit_jax.model_info(name)
        assert info.task == "sr" and info.head.scale == int(name[-1])
    base = evit_jax.create_model("efficientvit-sr-x2").backbone_cfg
    w075 = evit_jax.create_model("efficientvit-sr-w0.75-x2").backbone_cfg
    assert (w075.width, w075.stem_width, w075.depth) == (72, 36, base.depth)
    assert w075.width // w075.dim == base.width // base.dim  # same heads, narrower


@pytest.mark.parametrize("name", ["efficientvit-sr-x2", "efficientvit-sr-w0.75-x3"])
def test_zoo_model_any_size(name):
    model = evit_jax.create_model(name)
    s = model.head_cfg.scale
    variables = abstract_variables(model)
    y = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 7, 9, 3), jnp.float32))
    assert y.shape == (2, 7 * s, 9 * s, 3) and y.dtype == jnp.float32


@pytest.mark.parametrize("scale", [3, 4])
def test_global_skip_and_shapes(scale):
    model = EfficientViTSR(TINY, SRHeadConfig(scale))
    variables = evit_jax.init_variables(model, 1)
    x = jnp.asarray(np.random.default_rng(scale).uniform(0, 1, (2, 5, 6, 3)), jnp.float32)
    y = model.apply(variables, x)
    assert y.shape == (2, 5 * scale, 6 * scale, 3) and bool(jnp.isfinite(y).all())
    # With the last conv zeroed the network adds nothing: the output is bicubic(lr).
    variables["params"]["to_rgb"]["conv"]["kernel"] *= 0
    variables["params"]["to_rgb"]["conv"]["bias"] *= 0
    np.testing.assert_allclose(model.apply(variables, x),
                               resize(x, (5 * scale, 6 * scale), mode="bicubic"), atol=1e-6)
    with pytest.raises(ValueError, match="NHWC"):
        model.apply(variables, x[..., :2])


def test_pixel_shuffle_inverts_space_to_depth():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    np.testing.assert_array_equal(pixel_shuffle(space_to_depth(x, 2), 2), x)
    # PyTorch order: output pixel (i, j) of channel c comes from channel c * r^2 + i * r + j.
    y = pixel_shuffle(jnp.arange(8.0).reshape(1, 1, 1, 8), 2)
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(y[0, :, :, 1], [[4, 5], [6, 7]])


def test_save_load_and_export(tmp_path):
    name = "efficientvit-sr-w0.75-x2"
    variables = evit_jax.init_variables(evit_jax.create_model(name), 0)
    evit_jax.save_variables(variables, tmp_path / "w", model=name)
    loaded = evit_jax.load_variables(tmp_path / "w")
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not variables.get("batch_stats")  # no BatchNorm: export has nothing to fold
    from evit_jax.export import export_model
    exp = export_model(name, variables, resolution=(8, 8))
    assert exp.out_avals[0].shape[1:] == (16, 16, 3)
