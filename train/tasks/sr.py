"""Super-resolution (`task = "sr"`): random LR/HR patch pairs, L1 or Charbonnier loss, and
PSNR / SSIM on Y as BasicSR evaluates. The scale is the model's (`efficientvit-sr-x4` -> 4).

Evaluation follows BasicSR: the output is clipped and rounded to uint8, then PSNR and SSIM
are measured on BT.601 Y with `crop_border = scale`; MATLAB-bicubic upscaling of the same LR
images is scored alongside, so every result says what the network adds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.cli import UserError
from evit_jax.sr.pairs import score, to_uint8
from evit_jax.zoo import create_model, model_info

from ..datasets.sr import eval_transform, open_sr_source, train_transform
from ..input_pipeline import Data, eval_split, train_stream
from ..sync import local_copy, sum_over_hosts
from . import Task

Array = jax.Array
LOSSES = ("l1", "charbonnier")
CHARBONNIER_EPS = 1e-3  # in [0, 1] pixel units, as BasicSR's CharbonnierLoss default


def scale_of(config: Any) -> int:
    """The SR scale of the config's model."""
    spec = model_info(config.model)
    if spec.task != "sr":
        raise UserError(f"config.task='sr' needs an SR model (efficientvit-sr-x2 ...), got "
                        f"{config.model!r}")
    return int(spec.head.scale)


def sr_loss(pred: Array, target: Array, kind: str = "l1") -> Array:
    """Mean pixel loss over `[B, H, W, 3]`: L1, or Charbonnier `sqrt(d^2 + eps^2)`."""
    d = pred.astype(jnp.float32) - target.astype(jnp.float32)
    if kind == "l1":
        return jnp.abs(d).mean()
    if kind == "charbonnier":
        return jnp.sqrt(d * d + CHARBONNIER_EPS ** 2).mean()
    raise UserError(f"config.loss={kind!r} for SR; use one of {LOSSES}")


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
        sums = sum_over_hosts(sums, "eval_done")
        n = max(sums[4], 1)
        return {"psnr_y": sums[0] / n, "ssim_y": sums[1] / n, "bicubic_psnr_y": sums[2] / n,
                "bicubic_ssim_y": sums[3] / n, "examples": int(sums[4])}


class SRTask(Task):
    def check_config(self, config: Any) -> None:
        scale = scale_of(config)
        if config.loss not in LOSSES:
            raise UserError(f"config.loss={config.loss!r} for SR; use one of {LOSSES}")
        if config.input.patch_size % scale:
            raise UserError(f"input.patch_size={config.input.patch_size} must be a multiple "
                            f"of the scale {scale}")

    def make_data(self, config: Any, process_index: int = 0, process_count: int = 1) -> Data:
        scale = scale_of(config)
        src, decode = open_sr_source(config.data, config.data.train_split, scale)
        train = train_stream(config, src, train_transform(config, decode, scale),
                             process_index, process_count)
        esrc, edecode = open_sr_source(config.data, config.data.eval_split, scale)
        ev, n = eval_split(config, esrc, eval_transform(edecode, scale), process_index,
                           process_count)
        return Data(train, len(src), ev, n, None)

    def build_model(self, config: Any, num_classes: int = 0, train: bool = True) -> Any:
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
        return create_model(config.model, dtype=dtype)  # no classes, no stochastic depth

    def loss_fn(self, config, model, state, batch, key, num_classes):
        def fn(params):
            pred = model.apply({"params": params}, batch["lr"], train=True)
            mse = jnp.mean(jnp.square(jnp.clip(pred, 0, 1) - batch["hr"]))
            psnr = -10 * jnp.log10(jnp.maximum(mse, 1e-12))
            return sr_loss(pred, batch["hr"], config.loss), ({"psnr_rgb": psnr}, None)

        return fn

    def evaluator(self, config: Any, model: Any, num_classes: int) -> SREvaluator:
        return SREvaluator(model, scale_of(config))

    def summary(self, results: dict[str, Any]) -> str:
        """dB and SSIM, next to bicubic's."""
        return (f"PSNR-Y {results['psnr_y']:.2f} dB, SSIM-Y {results['ssim_y']:.4f} (bicubic "
                f"{results['bicubic_psnr_y']:.2f} dB, {results['bicubic_ssim_y']:.4f})")


TASK = SRTask()
