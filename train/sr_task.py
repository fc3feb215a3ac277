"""The super-resolution task of the trainer: loss, train step, evaluation (PSNR/SSIM on Y).

Selected by `config.task = "sr"`; the scale is the model's (`efficientvit-sr-x4` -> 4).
Evaluation follows BasicSR: the output is clipped and rounded to uint8, then PSNR and SSIM
are measured on BT.601 Y with `crop_border = scale`; MATLAB-bicubic upscaling of the same LR
images is scored alongside, so every result says what the network adds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from evit_jax.sr.pairs import score, to_uint8
from evit_jax.zoo import model_info

from .evaluate import local_copy

Array = jax.Array
LOSSES = ("l1", "charbonnier")
CHARBONNIER_EPS = 1e-3  # in [0, 1] pixel units, as BasicSR's CharbonnierLoss default


def scale_of(config: Any) -> int:
    """The SR scale of the config's model."""
    spec = model_info(config.model)
    if spec.task != "sr":
        raise ValueError(f"config.task='sr' needs an SR model (efficientvit-sr-x2 ...), got "
                         f"{config.model!r}")
    return int(spec.head.scale)


def sr_loss(pred: Array, target: Array, kind: str = "l1") -> Array:
    """Mean pixel loss over `[B, H, W, 3]`: L1, or Charbonnier `sqrt(d^2 + eps^2)`."""
    d = pred.astype(jnp.float32) - target.astype(jnp.float32)
    if kind == "l1":
        return jnp.abs(d).mean()
    if kind == "charbonnier":
        return jnp.sqrt(d * d + CHARBONNIER_EPS ** 2).mean()
    raise ValueError(f"config.loss={kind!r} for SR; use one of {LOSSES}")


def make_train_step(config: Any, model: Any, tx: Any, schedule: Any):
    """(state, {"lr", "hr"}) -> (state, metrics), the SR counterpart of the trainer's step."""
    if config.loss not in LOSSES:
        raise ValueError(f"config.loss={config.loss!r} for SR; use one of {LOSSES}")

    def step_fn(state: Any, batch: dict) -> tuple[Any, dict]:
        def loss_fn(params):
            pred = model.apply({"params": params}, batch["lr"], train=True)
            return sr_loss(pred, batch["hr"], config.loss), pred

        (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        step = state.step + 1
        ema = state.ema
        if ema is not None:
            d = config.ema_decay * (1 - jnp.exp(-step / config.ema_warmup_steps))
            ema = jax.tree.map(lambda e, v: e - (1 - d) * (e - v), ema,
                               {"params": params, "batch_stats": state.batch_stats})
        mse = jnp.mean(jnp.square(jnp.clip(pred, 0, 1) - batch["hr"]))
        out = {"loss": loss, "psnr_rgb": -10 * jnp.log10(jnp.maximum(mse, 1e-12)),
               "lr": schedule(state.step),
               "grad_norm": jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))}
        return state.replace(step=step, params=params, opt_state=opt_state, ema=ema), out

    return step_fn


class SREvaluator:
    """Mean PSNR-Y / SSIM-Y of a model's outputs and of bicubic over a dataset of
    `{"lr", "hr"}` uint8 images (this host's share; the means are over all hosts)."""

    def __init__(self, model: Any, scale: int):
        self.model, self.scale = model, scale
        self._apply = jax.jit(model.apply)

    def upscale(self, variables: Any, lr: np.ndarray) -> np.ndarray:
        """uint8 `[h, w, 3]` -> uint8 `[s*h, s*w, 3]` (clipped, rounded)."""
        y = self._apply(variables, jnp.asarray(lr[None], jnp.float32) / 255.0)
        return to_uint8(np.asarray(y[0], np.float64) * 255.0)

    def run(self, variables: Any, dataset: Any) -> dict[str, float]:
        variables = jax.tree.map(jnp.asarray, local_copy(variables))
        sums = np.zeros(5, np.float64)  # psnr, ssim, bicubic psnr, bicubic ssim, count
        for ex in dataset:
            hr, lr = np.asarray(ex["hr"]), np.asarray(ex["lr"])
            s = score(self.upscale(variables, lr), hr, lr, self.scale)
            sums += [s["psnr_y"], s["ssim_y"], s["bicubic_psnr_y"], s["bicubic_ssim_y"], 1]
        if jax.process_count() > 1:
            from .sync import barrier
            barrier("eval_done")
            sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
        n = max(sums[4], 1)
        return {"psnr_y": sums[0] / n, "ssim_y": sums[1] / n, "bicubic_psnr_y": sums[2] / n,
                "bicubic_ssim_y": sums[3] / n, "examples": int(sums[4])}
