"""`fuse_bn`: BatchNorm folded into the convolutions keeps the outputs (<= 1e-5 relative)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
import evit_jax.native
from evit_jax.bench.programs import random_variables
from evit_jax.fuse import fuse_bn
from evit_jax.nn.conv import ConvLayer, with_folded_bn
from evit_jax.nn.depthwise import IMPLS, depthwise_impl
from evit_jax.zoo import MODELS, abstract_variables
from tests.helpers import rel_l2

# One model per kind of block the fold meets: B (DSConv, MBConv, hswish), L (ResBlock,
# FusedMBConv, GELU, fewer-norm MBConv) with the FusedMBConv segmentation head and its final
# expansion, SAM's neck. The whole zoo runs with -m slow (about 15 s a model).
FAST = ["efficientvit-b0", "efficientvit-seg-l1-ade20k"]
FAST += [n for n in ("efficientvit-sam-l0",) if n in MODELS]
SLOW = [pytest.param(n, marks=pytest.mark.slow) for n in evit_jax.list_models() if n not in FAST]


@pytest.mark.parametrize("name", FAST + SLOW)
def test_folded_model_matches(name):
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=1)  # statistics far from identity
    size = 64 if MODELS[evit_jax.model_info(name).name].task == "sam" else 32
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
    fused = fuse_bn(variables, name)
    folded = evit_jax.create_model(name, fused_bn=True)
    # The folded variables fit the fused_bn build by construction: same tree, same shapes.
    want = jax.tree.map(lambda t: (t.shape, t.dtype), abstract_variables(folded))
    assert jax.tree.map(lambda t: (t.shape, t.dtype), fused) == want
    got, want = jax.jit(folded.apply)(fused, x), jax.jit(model.apply)(variables, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # detectors: per level
        assert rel_l2(g, w) < 1e-5
    # What was folded is gone: no BatchNorm statistics, no norm next to a conv.
    assert "batch_stats" not in fused
    flat = jax.tree_util.tree_flatten_with_path(fused["params"])[0]
    paths = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in flat]
    assert not any(p.endswith("norm/mean") for p in paths)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("act", ["hswish", "gelu"])
def test_fold_matches_for_every_depthwise_impl(impl, act):
    if impl == "native" and not evit_jax.native.available():
        pytest.skip("native kernels not built")
    layer = ConvLayer(24, 3, stride=2, groups=24, act=act, norm_eps=1e-5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 24)), jnp.float32)
    variables = random_variables(layer, seed=3, inputs=(x,))
    fused = fuse_bn(variables, 1e-5)
    assert set(fused["params"]["conv"]) == {"kernel", "bias"} and "norm" not in fused["params"]
    with depthwise_impl(impl):
        got = with_folded_bn(layer).apply(fused, x)
        assert rel_l2(got, layer.apply(variables, x)) < 1e-5


def test_errors():
    model = evit_jax.create_model("efficientvit-b0")
    variables = random_variables(model)
    with pytest.raises(TypeError, match="eps"):
        fuse_bn(variables)
    fused = evit_jax.fuse_bn(variables, model)  # the module carries its eps too
    with pytest.raises(ValueError, match="no conv"):
        fuse_bn(fused, "efficientvit-b0")
    x = jnp.zeros((1, 32, 32, 3))
    folded = evit_jax.create_model("efficientvit-b0", fused_bn=True)
    with pytest.raises(ValueError, match="inference only"):
        folded.apply(fused, x, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="fused_bn=True"):  # folded variables, plain model
        model.apply(fused, x)
