"""Augmentation ops (host) and the on-device mixing / losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evit_jax.train import augment, losses
from PIL import Image


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8))


def test_random_resized_crop_is_seeded(image):
    a = augment.random_resized_crop(image, 32, np.random.default_rng(3))
    b = augment.random_resized_crop(image, 32, np.random.default_rng(3))
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    # impossible scale forces the centre-crop fallback
    c = augment.random_resized_crop(image, 16, np.random.default_rng(0), scale=(5.0, 6.0),
                                    interpolation="bicubic")
    assert c.size == (16, 16)


@pytest.mark.parametrize("op", augment.RANDAUG_OPS)
def test_every_randaugment_op_runs(image, op):
    out = augment._OPS[op](image, 0.7, -1.0, (124, 116, 104))
    assert out.size == image.size and out.mode == "RGB"


def test_rand_augment_changes_pixels_deterministically(image):
    a = augment.rand_augment(image, np.random.default_rng(1), n=2, m=9, prob=1.0)
    b = augment.rand_augment(image, np.random.default_rng(1), n=2, m=9, prob=1.0)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_random_erase_zeroes_one_box():
    x = np.ones((32, 32, 3), np.float32)
    y = augment.random_erase(x, np.random.default_rng(0), p=1.0)
    zero = (y == 0).all(-1)
    assert 0.02 * 1024 * 0.5 <= zero.sum() <= 1024 / 3 * 1.5
    rows, cols = np.where(zero)
    assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), "a rectangle"
    assert augment.random_erase(x, np.random.default_rng(0), p=0.0) is x


def test_label_smoothing_matches_reference():
    t = losses.smooth_one_hot(jnp.array([2]), 5, 0.1)
    np.testing.assert_allclose(t, [[0.02, 0.02, 0.92, 0.02, 0.02]], rtol=1e-6)


def test_mixup_and_cutmix_keep_soft_targets_consistent():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (16, 32, 32, 3))
    t = losses.smooth_one_hot(jnp.arange(16) % 10, 10, 0.1)
    for mixup, cutmix in ((0.2, 0.0), (0.0, 0.2), (0.2, 0.2)):
        for i in range(4):
            xm, tm = losses.mix(jax.random.PRNGKey(i), x, t, mixup, cutmix)
            np.testing.assert_allclose(tm.sum(-1), 1.0, rtol=1e-5)
            assert xm.shape == x.shape
    # cutmix: each sample's target weight of the pasted image is the pasted area
    xm, tm = losses.mix(jax.random.PRNGKey(7), x, jnp.eye(16), 0.0, 1.0)
    for i in range(16):
        same = np.isclose(np.asarray(xm[i]), np.asarray(x[i])).all(-1)
        np.testing.assert_allclose(tm[i, i], same.mean(), atol=1e-6)


def test_segmentation_loss_ignores_255():
    logits = jnp.zeros((1, 2, 2, 3)).at[0, :, :, 1].set(5.0)
    labels = jnp.full((1, 16, 16), 255).at[0, :8].set(1)
    loss, acc = losses.seg_loss(logits, labels)
    assert float(acc) == 1.0
    np.testing.assert_allclose(loss, -jax.nn.log_softmax(jnp.array([0.0, 5.0, 0.0]))[1],
                               rtol=1e-5)
