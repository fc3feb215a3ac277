"""What the benchmark runs: one jitted inference function per zoo model and part.

A `Program` is `fn(variables, *inputs)` plus example inputs. Classification and
segmentation models have one part, `model` (images -> logits). SAM models have three:
`encoder` (images -> embeddings, `encode_image`), `decoder` (a batch of point prompts
against one image's embeddings, `predict_masks`) and `e2e` (encoder + one prompt per image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.fuse import fuse_bn
from evit_jax.zoo import abstract_variables, create_model, model_info

PARTS = {"cls": ("model",), "seg": ("model",), "sam": ("encoder", "decoder", "e2e"),
         "sr": ("model",)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Program:
    """One benchmarked function.

    Attributes:
      model, part, batch, resolution, dtype: what it is (batch = images, or prompts for the
        SAM decoder).
      fn: `fn(variables, *inputs)`, traceable.
      variables: the model variables (random: speed does not depend on the values).
      inputs: example inputs (device arrays).
      items: images (or prompts) per call, for throughput.
    """

    model: str
    part: str
    batch: int
    resolution: tuple[int, int]
    dtype: str
    fn: Callable[..., Any]
    variables: Any
    inputs: tuple[Any, ...]
    items: int


def parts_of(name: str) -> tuple[str, ...]:
    """The parts a zoo model can be benchmarked in (`model`, or SAM's three)."""
    return PARTS[model_info(name).task]


def default_resolution(name: str) -> tuple[int, int]:
    """The zoo entry's evaluation resolution (SAM: its encoder size)."""
    return tuple(model_info(name).resolution)


def random_variables(model: Any, seed: int = 0, inputs: tuple | None = None) -> Any:
    """Variables of `model` filled with numpy random values of sane scale: speed does not
    depend on the values, and this skips compiling the model's `init` (a minute for some).

    Kernels ~ N(0, 1/fan_in), norm scales and variances ~ U(0.5, 1.5), biases and means
    small, so activations stay O(1) (no overflow, no denormals). `inputs`: example inputs
    for `model.init` when it is not a zoo model.
    """
    shapes = abstract_variables(model) if inputs is None else \
        jax.eval_shape(model.init, jax.random.key(0), *inputs)
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: Any) -> np.ndarray:
        key = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = leaf.shape, leaf.dtype
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.normal(0.0, fan_in ** -0.5, shape)
        elif key in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        return np.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _sam_prompts(n: int, size: int, rng: np.random.Generator) -> tuple[Any, Any]:
    """n prompts of one foreground click (plus SAM's padding point) in the prompt frame."""
    coords = np.zeros((n, 2, 2), np.float32)
    coords[:, 0] = rng.uniform(0, size, (n, 2))
    labels = np.tile(np.array([[1, -1]], np.int32), (n, 1))
    return jnp.asarray(coords), jnp.asarray(labels)


def make_program(name: str, batch: int = 1, resolution: tuple[int, int] | int | None = None,
                 dtype: str = "float32", part: str | None = None, fuse: bool = False,
                 variables: Any = None, seed: int = 0) -> Program:
    """Build the `Program` of one benchmark case.

    Args:
      name: zoo name.
      batch: images per call (SAM `decoder`: prompts per call, against one image).
      resolution: (H, W) or a side; default the zoo entry's. SAM encoders take only their
        encoder size.
      dtype: "float32" or "bfloat16" (compute dtype; parameters stay float32).
      part: `model` (cls/seg) or `encoder` / `decoder` / `e2e` (SAM); default the first.
      fuse: fold BatchNorm into the convolutions first (`evit_jax.fuse_bn`).
      variables: use these instead of random ones.
    """
    spec = model_info(name)
    parts = PARTS[spec.task]
    part = part or parts[0]
    if part not in parts:
        raise ValueError(f"{name} has parts {parts}, not {part!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if resolution is None:
        resolution = default_resolution(name)
    elif isinstance(resolution, int):
        resolution = (resolution, resolution)
    resolution = tuple(int(r) for r in resolution)
    model = create_model(name, dtype=DTYPES[dtype])
    if variables is None:
        variables = random_variables(model, seed)
    if fuse:
        variables = fuse_bn(variables, name)
    # On the device once: numpy leaves would be copied to it again on every call. (Shape
    # placeholders stay as they are: count_macs traces with them.)
    variables = jax.tree.map(
        lambda t: t if isinstance(t, jax.ShapeDtypeStruct) else jnp.asarray(t), variables)
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(batch, *resolution, 3)).astype(np.float32))
    if spec.task != "sam":
        return Program(name, part, batch, resolution, dtype, model.apply, variables,
                       (images,), batch)
    enc = spec.head.encoder_size
    if part != "decoder" and resolution != (enc, enc):
        raise ValueError(f"{name}'s encoder takes {enc}x{enc} images, not "
                         f"{resolution[0]}x{resolution[1]}")
    if part == "encoder":
        fn = lambda v, x: model.apply(v, x, method="encode_image")
        return Program(name, part, batch, resolution, dtype, fn, variables, (images,), batch)
    prompt = spec.head.prompt_size
    if part == "decoder":
        grid, width = spec.head.decoder.grid, spec.head.decoder.embed_dim
        emb = jnp.asarray(rng.normal(size=(1, grid, grid, width)).astype(np.float32))
        coords, labels = _sam_prompts(batch, prompt, rng)
        fn = lambda v, e, c, lab: model.apply(v, e, c, lab, method="predict_masks")
        return Program(name, part, batch, (grid, grid), dtype, fn, variables,
                       (emb, coords, labels), batch)

    def e2e(v, x, c, lab):
        emb = model.apply(v, x, method="encode_image")
        return model.apply(v, emb, c, lab, method="predict_masks")

    coords, labels = _sam_prompts(batch, prompt, rng)
    return Program(name, part, batch, resolution, dtype, e2e, variables,
                   (images, coords, labels), batch)
