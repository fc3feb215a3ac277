"""ReLU multi-scale linear attention (LiteMLA) and the EfficientViT block."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn.blocks import MBConv, ResidualBlock
from evit_jax.nn.conv import Conv2d, ConvLayer
from evit_jax.nn.forms import exporting

Array = jax.Array


def relu_linear_attention(qkv: Array, dim: int, eps: float) -> Array:
    """Linear attention over the tokens of a multi-head q/k/v map, in float32.

    Args:
      qkv: `[B, H, W, n * 3 * dim]`; the channels are n consecutive blocks of 3*dim, each
        block `[q | k | v]` of one head (the reference's layout).
      dim: per-head dimension d.
      eps: added to the normaliser (1e-15 in the reference, 1e-5 in timm).
    Returns:
      `[B, H, W, n * dim]`: for token i, `sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + eps)`
      with q, k after ReLU. Channel = head * dim + i.
    """
    b, h, w, c = qkv.shape
    heads = c // (3 * dim)
    if exporting():
        return _channel_major_attention(qkv, dim, eps)
    t = qkv.astype(jnp.float32).reshape(b, h * w, heads, 3, dim)
    q = jax.nn.relu(t[:, :, :, 0])
    k = jax.nn.relu(t[:, :, :, 1])
    v = t[:, :, :, 2]
    hi = jax.lax.Precision.HIGHEST
    kv = jnp.einsum("bnhd,bnhe->bhde", k, v, precision=hi)         # [B, heads, d, d]
    num = jnp.einsum("bnhd,bhde->bnhe", q, kv, precision=hi)       # [B, N, heads, d]
    den = jnp.einsum("bnhd,bhd->bnh", q, k.sum(1), precision=hi)   # [B, N, heads]
    out = num / (den[..., None] + eps)
    return out.reshape(b, h, w, heads * dim)


def softmax_attention(qkv: Array, dim: int) -> Array:
    """Multi-head softmax attention over the tokens of a q/k/v map, in float32.

    Args:
      qkv: `[B, H, W, n * 3 * dim]` in `relu_linear_attention`'s layout (n blocks of
        `[q | k | v]`, one per head).
      dim: per-head dimension d (logits scaled by 1 / sqrt(d)).
    Returns:
      `[B, H, W, n * dim]`: for token i, `sum_j softmax_j(q_i . k_j / sqrt(d)) v_j`.
      Quadratic in the tokens: an `[n, N, N]` map per image (the v1 paper's ablation).
    """
    b, h, w, c = qkv.shape
    heads = c // (3 * dim)
    t = qkv.astype(jnp.float32).reshape(b, h * w, heads, 3, dim)
    q, k, v = t[:, :, :, 0], t[:, :, :, 1], t[:, :, :, 2]
    hi = jax.lax.Precision.HIGHEST
    logits = jnp.einsum("bnhd,bmhd->bhnm", q * dim ** -0.5, k, precision=hi)
    out = jnp.einsum("bhnm,bmhd->bnhd", jax.nn.softmax(logits, axis=-1), v, precision=hi)
    return out.reshape(b, h, w, heads * dim)


def _channel_major_attention(qkv: Array, dim: int, eps: float) -> Array:
    """`relu_linear_attention` on `[B, heads, 3d, N]`, the form exporters get (`export_forms`).

    Exporters emit its contractions as batched MatMul nodes (the token-major einsums above
    become ONNX Einsum nodes, which ONNX Runtime runs 2-3x slower), and in the exported
    NCHW graph its transpose to channel-major cancels against the layout transpose the
    runtime inserts. XLA runs the einsum form at least as fast, hence two forms.
    """
    b, h, w, c = qkv.shape
    heads = c // (3 * dim)
    t = jnp.transpose(qkv.astype(jnp.float32), (0, 3, 1, 2)).reshape(b, heads, 3 * dim, h * w)
    q, k, v = jnp.split(t, 3, axis=2)                     # one Split node, [B, heads, d, N]
    q, k = jax.nn.relu(q), jax.nn.relu(k)
    # A row of ones under v makes the normaliser the last row of the same two matmuls
    # (sum_j k_j . q_i): two MatMul nodes per block instead of three plus a ReduceSum, the
    # authors' graph shape (docs/speed.md has the side-by-side of both forms).
    v1 = jnp.pad(v, ((0, 0), (0, 0), (0, 1), (0, 0)), constant_values=1.0)  # [B, heads, d+1, N]
    hi = jax.lax.Precision.HIGHEST
    vk = jnp.matmul(v1, jnp.swapaxes(k, -1, -2), precision=hi)               # [B, heads, d+1, d]
    num_den = jnp.matmul(vk, q, precision=hi)                                 # [B, heads, d+1, N]
    num, den = jnp.split(num_den, [dim], axis=2)          # one Split node, not two Slices
    out = (num / (den + eps)).reshape(b, heads * dim, h, w)
    return jnp.transpose(out, (0, 2, 3, 1))


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention: `[B, H, W, C]` -> `[B, H, W, features]`.

    `qkv` (1x1 conv to 3T, T = heads * dim) -> for each scale: depthwise k x k conv then a
    1x1 conv grouped per (head, q/k/v) (`aggreg_{i}_0`, `aggreg_{i}_1`) -> concat
    [qkv, aggregated] (the extra scales just add heads) -> ReLU linear attention in float32
    -> `proj` (1x1 conv + BN).

    Attributes:
      features: output channels.
      dim: per-head dimension d (heads = C // d).
      scales: aggregation kernel sizes ((5,) for B/L, (3,) for XL); `()`: no multi-scale
        aggregation (seed 000 Table 3's ablation).
      eps: attention eps (1e-15 official, 1e-5 timm).
      global_attention: False replaces the attention by each token's own values (`qkv`
        then makes only v: T channels), keeping the local multi-scale path: seed 000 Table
        3's "no global attention" ablation.
    """

    features: int | None  # None: as many as the input
    dim: int = 32
    scales: tuple[int, ...] = (5,)
    eps: float = 1e-15
    norm: str = "bn2d"
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32
    global_attention: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        heads = x.shape[-1] // self.dim
        total = heads * self.dim
        parts = 3 if self.global_attention else 1  # q, k, v per head, or v alone
        qkv = ConvLayer(parts * total, 1, use_bias=False, norm=None, act=None, dtype=self.dtype,
                        name="qkv")(x, train)
        branches = [qkv]
        for i, k in enumerate(self.scales):
            c = parts * total
            a = Conv2d(c, k, groups=c, dtype=self.dtype, name=f"aggreg_{i}_0")(qkv)
            a = Conv2d(c, 1, groups=parts * heads, dtype=self.dtype, name=f"aggreg_{i}_1")(a)
            branches.append(a)
        mixed = jnp.concatenate(branches, -1) if len(branches) > 1 else qkv
        if self.global_attention:
            out = relu_linear_attention(mixed, self.dim, self.eps)
        else:
            out = mixed
        return ConvLayer(self.features or x.shape[-1], 1, norm=self.norm, act=None,
                         norm_eps=self.norm_eps,
                         zero_init_norm=self.zero_init_last, dtype=self.dtype,
                         name="proj")(out.astype(self.dtype), train)


class EfficientViTBlock(nn.Module):
    """`x + LiteMLA(x)` (`context_module`) then `x + MBConv(x)` (`local_module`).

    Shape-preserving on `[B, H, W, C]`. The MBConv expands by `expand_ratio`, with biases and
    no norm on its first two convs (the reference's choice for this block).
    """

    dim: int = 32
    expand_ratio: float = 4
    scales: tuple[int, ...] = (5,)
    attn_eps: float = 1e-15
    act: str = "hswish"
    norm: str = "bn2d"
    norm_eps: float = 1e-5
    drop_path: tuple[float, float] = (0.0, 0.0)
    zero_init_last: bool = False
    dtype: Any = jnp.float32
    global_attention: bool = True

    def setup(self):
        # Built in setup (not compact) so that the branches are adopted by the residual
        # wrappers and land under `context_module/main`, `local_module/main`.
        self.context_module = ResidualBlock(
            LiteMLA(None, self.dim, self.scales, self.attn_eps, self.norm, self.norm_eps,
                    self.zero_init_last, self.dtype, self.global_attention), True,
            self.drop_path[0])
        self.local_module = ResidualBlock(
            MBConv(None, 3, 1, self.expand_ratio, use_bias=(True, True, False),
                   norm=(None, None, self.norm), act=(self.act, self.act, None),
                   norm_eps=self.norm_eps, zero_init_last=self.zero_init_last,
                   dtype=self.dtype), True, self.drop_path[1])

    def __call__(self, x: Array, train: bool = False) -> Array:
        return self.local_module(self.context_module(x, train), train)
