"""A zoo model's inference "parts": what `evit-bench` times and `evit-export` lowers.

Classification and segmentation models have one part, `model` (images -> logits);
detectors too (images -> the boxes and scores of every prediction point, decoded: NMS runs
outside, `evit_jax.det.batched_nms`). SAM
models have three: `encoder` (images -> embeddings, `encode_image`), `decoder` (a batch of
prompts against one image's embeddings, `predict_masks`) and `e2e` (encoder, then one
prompt per image). Each `Part` gives its function and the shapes of its inputs, so both
tools run the same computation on the same kind of inputs. `DTYPES` names the compute
dtypes both accept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.zoo import model_info

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PARTS: dict[str, tuple[str, ...]] = {"cls": ("model",), "seg": ("model",),
                                     "sam": ("encoder", "decoder", "e2e"), "sr": ("model",),
                                     "det": ("model",)}
_F32, _I32 = jnp.float32, jnp.int32
# One foreground click plus SAM's padding point per prompt.
POINTS_PER_PROMPT = 2


@dataclasses.dataclass(frozen=True)
class Part:
    """One inference function of a zoo model.

    Attributes:
      name: `model`, or SAM's `encoder` / `decoder` / `e2e`.
      inputs: the inputs' names, in call order: `images` `[N, H, W, 3]`, `embeddings`
        `[1, g, g, C]`, `point_coords` `[N, P, 2]` (prompt frame), `point_labels` `[N, P]`.
      run: `run(model, variables, *inputs)`, traceable.
      shapes: `shapes(batch, resolution)` -> the inputs' `jax.ShapeDtypeStruct`s; batch
        may be symbolic (`jax.export.symbolic_shape`).
      resolution: the input (H, W) this part is measured at, from the one asked for.
    """

    name: str
    inputs: tuple[str, ...]
    run: Callable[..., Any]
    shapes: Callable[[Any, tuple[int, int]], tuple[jax.ShapeDtypeStruct, ...]]
    resolution: Callable[[tuple[int, int] | None], tuple[int, int]]


def parts_of(name: str) -> tuple[str, ...]:
    """The part names of a zoo model (`model`, or SAM's three)."""
    return PARTS[model_info(name).task]


def _images(batch: Any, hw: tuple[int, int]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, *hw, 3), _F32)


def _prompts(batch: Any) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    return (jax.ShapeDtypeStruct((batch, POINTS_PER_PROMPT, 2), _F32),
            jax.ShapeDtypeStruct((batch, POINTS_PER_PROMPT), _I32))


def _detect(model: nn.Module, variables: Any, images: Any) -> tuple[Any, Any]:
    """A detector's inference part: boxes `[N, A, 4]` xyxy and scores `[N, A, C]`."""
    from evit_jax.det.boxes import decode
    return decode(model.apply(variables, images), model.strides)


def inference_parts(name: str) -> dict[str, Part]:
    """Every inference part of zoo model `name`, by part name (see the module docstring)."""
    spec = model_info(name)
    if spec.task != "sam":
        def res(r):
            return tuple(spec.resolution) if r is None else tuple(r)
        run = _detect if spec.task == "det" else lambda m, v, x: m.apply(v, x)
        return {"model": Part("model", ("images",), run, lambda n, hw: (_images(n, hw),), res)}
    s, dec = spec.head.encoder_size, spec.head.decoder

    def encoder_res(r):
        if r is not None and tuple(r) != (s, s):
            raise UserError(f"{name}'s encoder takes {s}x{s} images, not {r[0]}x{r[1]}")
        return (s, s)

    def encode(m: nn.Module, v: Any, x: Any) -> Any:
        return m.apply(v, x, method="encode_image")

    def decode(m: nn.Module, v: Any, emb: Any, coords: Any, labels: Any) -> Any:
        return m.apply(v, emb, coords, labels, method="predict_masks")

    def e2e(m: nn.Module, v: Any, x: Any, coords: Any, labels: Any) -> Any:
        return decode(m, v, encode(m, v, x), coords, labels)

    emb = jax.ShapeDtypeStruct((1, dec.grid, dec.grid, dec.embed_dim), _F32)
    prompts = ("point_coords", "point_labels")
    return {
        "encoder": Part("encoder", ("images",), encode, lambda n, hw: (_images(n, hw),),
                        encoder_res),
        "decoder": Part("decoder", ("embeddings", *prompts), decode,
                        lambda n, hw: (emb, *_prompts(n)), lambda r: (dec.grid, dec.grid)),
        "e2e": Part("e2e", ("images", *prompts), e2e,
                    lambda n, hw: (_images(n, hw), *_prompts(n)), encoder_res),
    }


def inference_part(name: str, part: str | None = None) -> Part:
    """One part of `name` (default: its first, `model` or `encoder`); a clear error else."""
    parts = inference_parts(name)
    part = part or next(iter(parts))
    if part not in parts:
        raise UserError(f"{name} has parts {tuple(parts)}, not {part!r}")
    return parts[part]


def compute_dtype(dtype: str) -> Any:
    """The jnp dtype of a `DTYPES` name; a clear error for any other."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]
