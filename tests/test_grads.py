"""Training mode of every model family (B, L, segmentation, SAM): one loss, its gradient.

Every parameter leaf must get a finite, non-zero gradient (a leaf with none is a part the
loss never reaches: a wiring bug, or a stop_gradient where none belongs) and BatchNorm must
update its statistics. Each family runs a few-layer model of its code paths (the same block
kinds, one or two blocks a stage, small widths), built from the parts `create_model`
assembles: differentiating even the smallest zoo entries takes minutes of compilation on a
CPU, and the parameter leaves are of the same kinds.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from evit_jax.models.backbone import EfficientViTBackbone
from evit_jax.models.cls import EfficientViTCls
from evit_jax.models.heads import ClsHead, ClsHeadConfig, SegHeadConfig, seg_head
from evit_jax.models.sam import EfficientViTSam, SamConfig, SamDecoderConfig
from evit_jax.models.sam.mask_decoder import MaskDecoder
from evit_jax.models.sam.neck import SamImageEncoder, sam_neck
from evit_jax.models.sam.prompt_encoder import PromptEncoder
from evit_jax.models.seg import EfficientViTSeg
from evit_jax.zoo import BACKBONES, init_variables

# A stop_gradient by design: the reference keeps this matrix as a fixed buffer.
FROZEN = ("positional_encoding_gaussian_matrix",)
WIDTHS = (8, 16, 16, 32, 32)
# B: stem DSConv, MBConv stages (one with an identity block), EfficientViT blocks.
TINY_B = dataclasses.replace(BACKBONES["b0"], width_list=WIDTHS, depth_list=(1, 2, 1, 1, 1),
                             dim=8)
# L: the res, fmb, fmb, mb, att stages at one block each.
TINY_L = dataclasses.replace(BACKBONES["l1"], width_list=WIDTHS, depth_list=(1, 1, 1, 1, 1),
                             dim=8)


def _tiny_cls(cfg) -> nn.Module:
    return EfficientViTCls(EfficientViTBackbone(cfg, drop_path=0.1),
                           ClsHead(ClsHeadConfig((32, 48), num_classes=4), act=cfg.act))


def _tiny_seg() -> nn.Module:
    head = SegHeadConfig(WIDTHS[4:1:-1], head_width=16, head_depth=1, expand_ratio=4,
                         middle_op="mbconv", final_expand=4, num_classes=19)
    return EfficientViTSeg(EfficientViTBackbone(TINY_B, drop_path=0.1), seg_head(head))


def _tiny_sam() -> EfficientViTSam:
    dec = SamDecoderConfig(embed_dim=32, grid=8, prompt_size=64, iou_head_hidden_dim=32,
                           transformer_mlp_dim=64)
    cfg = SamConfig(64, ("stage4", "stage3", "stage2"), neck_depth=1, neck_expand=1,
                    neck_width=16, decoder=dec)
    encoder = SamImageEncoder(EfficientViTBackbone(TINY_L, norm_eps=1e-6),
                              dataclasses.replace(sam_neck(cfg, TINY_L.act), norm_eps=1e-6))
    prompts = PromptEncoder(dec.embed_dim, dec.grid, dec.prompt_size, dec.mask_in_chans)
    return EfficientViTSam(encoder, prompts, MaskDecoder(dec), cfg.encoder_size)


def _sam_forward(m: EfficientViTSam, images, coords, labels, masks, has_mask):
    """Encoder in train mode, then every kind of prompt token, with and without a mask."""
    return m.predict_masks(m.image_encoder(images, True), coords, labels, masks, has_mask)


def _check_grads(model: nn.Module, loss_of, x_shape) -> None:
    variables = init_variables(model, 0)
    x = jax.random.normal(jax.random.key(1), x_shape)

    def loss(params):
        out, state = loss_of(model, {"params": params, "batch_stats": variables["batch_stats"]},
                             x)
        return out, state

    (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(float(value))
    flat = flatten_dict(grads, sep="/")
    bad = [k for k, g in flat.items() if not np.isfinite(np.asarray(g)).all()]
    zero = [k for k, g in flat.items() if not np.abs(np.asarray(g)).sum() > 0
            and not k.endswith(FROZEN)]
    assert not bad and not zero, f"non-finite: {bad[:5]}, zero: {zero[:5]}"
    old, new = (flatten_dict(v) for v in (variables["batch_stats"], state["batch_stats"]))
    assert old.keys() == new.keys()
    stale = [k for k in old if k[-1] == "mean" and np.array_equal(old[k], new[k])]
    assert not stale, f"BatchNorm statistics not updated: {stale[:5]}"


def _cls_loss(model, variables, x):
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(2)})
    target = jax.nn.one_hot(jnp.arange(x.shape[0]) % logits.shape[-1], logits.shape[-1])
    return -(jax.nn.log_softmax(logits) * target).sum(-1).mean(), state


def _seg_loss(model, variables, x):
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(2)})
    labels = jnp.arange(logits.shape[1] * logits.shape[2]).reshape(logits.shape[1:3]) % 19
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[None, ..., None],
                                -1).mean(), state


def _sam_loss(model, variables, x):
    b = x.shape[0]
    labels = jnp.tile(jnp.array([[1, 0, 2, 3, -1]], jnp.int32), (b, 1))
    coords = jax.random.uniform(jax.random.key(3), (b, 5, 2)) * model.prompt_size
    masks = jax.random.normal(jax.random.key(4), (b, model.low_res_size, model.low_res_size))
    has_mask = jnp.arange(b) % 2 == 0  # one prompt with a mask, one without
    (logits, iou), state = model.apply(variables, x, coords, labels, masks, has_mask,
                                       method=_sam_forward, mutable=["batch_stats"])
    target = jax.random.normal(jax.random.key(5), logits.shape)
    return jnp.mean((logits - target) ** 2) + jnp.mean((iou - 0.5) ** 2), state


@pytest.mark.parametrize("family", ["b", "l", "seg", "sam"])
def test_every_parameter_gets_a_gradient(family):
    if family in ("b", "l"):
        _check_grads(_tiny_cls(TINY_B if family == "b" else TINY_L), _cls_loss, (4, 32, 32, 3))
    elif family == "seg":
        _check_grads(_tiny_seg(), _seg_loss, (2, 64, 64, 3))
    else:
        _check_grads(_tiny_sam(), _sam_loss, (2, 64, 64, 3))
