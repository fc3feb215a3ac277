"""Starting from pretrained weights: converted official checkpoints and training workdirs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from evit_jax.train.optim import path_str
from evit_jax.train.state import merge_pretrained

from evit_jax import create_model
from evit_jax.convert.keymap import convert_state_dict
from evit_jax.zoo import abstract_variables
from tests.helpers import needs_shared

pytestmark = needs_shared  # every test starts from converted fixture weights


@pytest.fixture(scope="module")
def converted(synth):
    sd = synth.synthesize(synth.load_schema("efficientvit-b0"), seed=1)
    return convert_state_dict("efficientvit-b0", sd)


def _init(model):
    """A fresh variable tree of the model's shapes (random values; no compilation needed)."""
    shapes = abstract_variables(model)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _flat(tree):
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_new_classifier_is_fresh_everything_else_loaded(converted):
    fresh = _init(create_model("efficientvit-b0", num_classes=10))
    merged, report = merge_pretrained(fresh, converted, exclude=("/head/op_list_3/",))
    f, m, c = _flat(fresh), _flat(merged), _flat(converted)
    assert any("left fresh" in r and "op_list_3" in r for r in report)
    for k in m:
        if "head/op_list_3" in k:
            np.testing.assert_array_equal(m[k], f[k])
        else:
            np.testing.assert_array_equal(m[k], c[k])


def test_mismatches_are_listed_not_silently_skipped(converted):
    fresh = _init(create_model("efficientvit-b0", num_classes=10))
    with pytest.raises(ValueError, match="op_list_3/linear/kernel") as e:
        merge_pretrained(fresh, converted)
    assert "op_list_3/linear/bias" in str(e.value)


def test_segmentation_takes_only_the_backbone(converted):
    from evit_jax.configs import seg_cityscapes
    include = seg_cityscapes.get_config().init_include
    fresh = _init(create_model("efficientvit-seg-b0-cityscapes"))
    merged, _ = merge_pretrained(fresh, converted, include=include)
    m, c, f = _flat(merged), _flat(converted), _flat(fresh)
    assert all(np.array_equal(m[k], c[k]) for k in m if "/backbone/" in k)
    assert all(np.array_equal(m[k], f[k]) for k in m if "/head/" in k)
