"""Exact tiled SR inference (`evit_jax.sr.tiled`): tiled == untiled for the zoo models."""

import jax
import numpy as np
import pytest

import evit_jax
from evit_jax.bench.programs import random_variables
from evit_jax.nn.resize import resize
from evit_jax.sr.tiled import TiledSR, windows
from evit_jax.sr.upscale import make_sr


@pytest.mark.parametrize("n,tile,halo", [(1, 4, 3), (9, 4, 3), (10, 4, 3), (17, 4, 3),
                                         (23, 5, 2), (40, 8, 1), (7, 2, 0)])
def test_windows_cover_and_reach(n, tile, halo):
    length, tiles = windows(n, tile, halo)
    assert length == min(n, tile + 2 * halo)
    covered = np.zeros(n, int)
    for t0, t1, s in tiles:
        covered[t0:t1] += 1
        assert 0 <= s and s + length <= n and s <= t0 < t1 <= s + length
        # Each side of the window is `halo` past the tile, or the image border.
        assert t0 - s >= halo or s == 0
        assert s + length - t1 >= halo or s + length == n
    np.testing.assert_array_equal(covered, 1)


def realistic_variables(apply, model, lr: np.ndarray, bic: np.ndarray, seed: int = 1):
    """Weights under which every block matters and the output is in the image range.

    Kernels ~ N(0, 1/fan_in) (`random_variables`; the zoo's N(0, 0.02) init leaves the
    output within 0.01 of bicubic) drive large activations through the 16 blocks; the last
    conv is scaled so that the network adds a correction of mean size 0.1 to bicubic (more
    than a trained model adds). Errors are then in the units of [0, 1] images.
    """
    variables = random_variables(model, seed)
    corr = np.abs(np.asarray(apply(variables, lr)) - bic).mean()
    variables["params"]["to_rgb"] = jax.tree.map(lambda a: a * (0.1 / corr),
                                                 variables["params"]["to_rgb"])
    return variables


# Odd LR sizes (the model's edge padding), tile 8 LR px = 4 feature px: 4 x 5 tiles of a
# 27 x 33 image per stage; batch 2 for one of them (per-image attention sums).
@pytest.mark.parametrize("name,batch,crop", [("efficientvit-sr-x2", 1, True),
                                             ("efficientvit-sr-x3", 2, False),
                                             ("efficientvit-sr-w0.75-x4", 1, False)])
def test_tiled_equals_untiled(name, batch, crop):
    model = evit_jax.create_model(name)
    s = model.head_cfg.scale
    lr = np.random.default_rng(0).uniform(0, 1, (batch, 27, 33, 3)).astype(np.float32)
    bic = np.asarray(resize(lr, (27 * s, 33 * s), mode="bicubic"))
    apply = jax.jit(model.apply)
    variables = realistic_variables(apply, model, lr, bic)
    whole = np.asarray(apply(variables, lr))
    tiled = TiledSR(model, variables, tile=8)
    out = tiled(lr)
    assert out.shape == whole.shape == (batch, 27 * s, 33 * s, 3)
    assert np.abs(out - whole).max() <= 1e-5  # absolute, image units ([0, 1] input range)
    # The test has teeth: the network's part is large, and it is global (the output on a
    # crop of the input is not the crop of the output, far from the crop's edges too).
    assert np.abs(whole - bic).mean() > 0.05
    if crop:
        part = np.asarray(apply(variables, lr[:, :16, :16]))
        assert np.abs(part[:, 4 * s:12 * s, 4 * s:12 * s]
                      - whole[:, 4 * s:12 * s, 4 * s:12 * s]).max() > 1e-2
    # One compiled program per stage for the whole image, whatever the tile count.
    assert tiled._block._cache_size() == 1 and tiled._kv._cache_size() == 1


def test_make_sr_tiles_only_large_images():
    name = "efficientvit-sr-w0.75-x2"
    model = evit_jax.create_model(name)
    variables = random_variables(model, 2)
    lr = np.random.default_rng(3).uniform(0, 1, (11, 14, 3)).astype(np.float32)
    sr = make_sr(model, variables, tile=14)        # fits: one whole-image call
    whole = sr(lr)
    np.testing.assert_allclose(make_sr(model, variables, tile=None)(lr), whole, atol=0)
    np.testing.assert_allclose(make_sr(model, variables, tile=6)(lr), whole, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        TiledSR(model, variables, tile=7)


def test_memory_bytes_is_bounded_by_the_tile():
    """XLA's memory analysis of the stage programs: the device part depends on the tile, not
    the image; host = two body maps + padded input + output, float32."""
    from evit_jax.models.sr import EfficientViTSR, SRBodyConfig, SRHeadConfig
    from evit_jax.sr.tiled import _held_bytes
    model = EfficientViTSR(SRBodyConfig(width=32, depth=2, stem_width=8, dim=16),
                           SRHeadConfig(2))
    variables = evit_jax.init_variables(model, 0)
    tiled = TiledSR(model, variables, tile=16)
    small, big = tiled.memory_bytes((1, 64, 64, 3)), tiled.memory_bytes((1, 256, 256, 3))
    assert small["device"] == big["device"] > 0
    assert big["host"] == 4 * (2 * 128 * 128 * 32 + 256 * 256 * 3 * (1 + 4))
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), np.float32)
    whole = _held_bytes(jax.jit(model.apply).lower(variables, x).compile())
    assert big["host"] + big["device"] < whole / 2
