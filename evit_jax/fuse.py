"""Fold inference BatchNorm into the preceding convolution (`fuse_bn`).

In eval mode a `ConvLayer`'s BatchNorm is a per-channel affine map, so
`BN(conv(x, K) + c) = conv(x, K * a) + (c - mean) * a + beta` with
`a = gamma / sqrt(var + eps)`. `fuse_bn` rewrites the variables that way: every
`conv`/`norm` pair loses its `norm` parameters and statistics and its conv gains the folded
`kernel` and a `bias`. The folded tree fits the model built with the option of the same
name, `create_model(name, fused_bn=True)` (`evit_jax.nn.conv.with_folded_bn`), whose `bn2d`
ConvLayers are convs with a bias and no norm; that model is for inference only
(`train=True` raises), and the plain model refuses folded variables with a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from evit_jax.errors import UserError
from evit_jax.zoo import model_info


def _eps_of(model: str | nn.Module | float | None) -> float:
    if model is None:
        raise TypeError("fuse_bn needs the BatchNorm eps: pass the zoo name, the module, or "
                        "eps, e.g. fuse_bn(variables, 'efficientvit-b1')")
    if isinstance(model, str):
        return model_info(model).norm_eps
    if isinstance(model, (int, float)):
        return float(model)
    eps = getattr(model, "norm_eps", None)
    if eps is None:
        raise TypeError(f"{type(model).__name__} has no `norm_eps`; pass the zoo name or eps")
    return float(eps)


def _fold(params: Mapping[str, Any], stats: Mapping[str, Any] | None, eps: float,
          count: list[int]) -> tuple[dict, dict]:
    """Returns the folded (params, batch_stats) of one subtree."""
    stats = stats or {}
    out_p, out_s = {}, {}
    conv, norm, bn = params.get("conv"), params.get("norm"), stats.get("norm")
    foldable = (isinstance(conv, Mapping) and "kernel" in conv and isinstance(norm, Mapping)
                and isinstance(bn, Mapping) and {"mean", "var"} <= set(bn))
    for key, value in params.items():
        if foldable and key in ("conv", "norm"):
            continue
        if isinstance(value, Mapping):
            p, s = _fold(value, stats.get(key), eps, count)
            out_p[key] = p
            if s:
                out_s[key] = s
        else:
            out_p[key] = value
    for key, value in stats.items():  # statistics of subtrees without params (none today)
        if key not in params and not (foldable and key == "norm"):
            out_s[key] = value
    if foldable:
        f64 = lambda t: np.asarray(t, np.float64)
        a = f64(norm["scale"]) / np.sqrt(f64(bn["var"]) + eps)
        c = f64(conv["bias"]) if "bias" in conv else 0.0
        kernel = f64(conv["kernel"]) * a  # HWIO: the last axis is the output channel
        bias = (c - f64(bn["mean"])) * a + f64(norm["bias"])
        out_p["conv"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
        count[0] += 1
    return out_p, out_s


def fuse_bn(variables: Mapping[str, Any], model: str | nn.Module | float | None = None,
            ) -> dict[str, Any]:
    """Variables with every inference BatchNorm folded into its convolution.

    Args:
      variables: `{"params": ..., "batch_stats": ...}` of a zoo model.
      model: its zoo name, the module, or the BatchNorm eps (the fold needs the eps:
        1e-5 for B, 1e-7 for L, 1e-6 for SAM).
    Returns:
      New variables (numpy leaves) for the same module, inference only: no `norm` entries
      under folded convs, and no `batch_stats` left if every BatchNorm was folded.
    """
    eps = _eps_of(model)
    if "params" not in variables:
        raise UserError("fuse_bn expects model variables {'params': ..., 'batch_stats': ...}")
    count = [0]
    params, stats = _fold(variables["params"], variables.get("batch_stats"), eps, count)
    out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = params
    if stats:
        out["batch_stats"] = stats
    if count[0] == 0:
        raise UserError("fuse_bn found no conv + BatchNorm pair to fold (already folded?)")
    return out
