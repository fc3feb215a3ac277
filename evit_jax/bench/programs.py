"""What the benchmark runs: one jitted inference function per zoo model and part.

A `Program` is `fn(variables, *inputs)` plus example inputs, for one of the model's
inference parts (`evit_jax.parts`: `model`, or SAM's `encoder` / `decoder` / `e2e`), the
same definition `evit-export` lowers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.fuse import fuse_bn
from evit_jax.nn.conv import with_folded_bn
from evit_jax.parts import DTYPES, compute_dtype, inference_part, parts_of
from evit_jax.zoo import create_model, model_info, random_variables

__all__ = ["DTYPES", "Program", "default_resolution", "make_program", "parts_of",
           "random_variables"]


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


def default_resolution(name: str) -> tuple[int, int]:
    """The zoo entry's evaluation resolution (SAM: its encoder size)."""
    return tuple(model_info(name).resolution)


def _example(role: str, shape: jax.ShapeDtypeStruct, prompt_size: int,
             rng: np.random.Generator) -> Any:
    """Values for one input of a part: N(0, 1) images and embeddings, clicks uniform in the
    prompt frame, labels one foreground click plus SAM's padding point (-1)."""
    if role == "point_coords":
        coords = np.zeros(shape.shape, np.float32)
        coords[:, 0] = rng.uniform(0, prompt_size, (shape.shape[0], 2))
        return jnp.asarray(coords)
    if role == "point_labels":
        labels = np.full(shape.shape, -1, np.int32)
        labels[:, 0] = 1
        return jnp.asarray(labels)
    return jnp.asarray(rng.normal(size=shape.shape).astype(np.float32))


def make_program(name: str, batch: int = 1, resolution: tuple[int, int] | int | None = None,
                 dtype: str = "float32", part: str | None = None, fuse: bool = False,
                 variables: Any = None, seed: int = 0) -> Program:
    """Build the `Program` of one benchmark case (a part of `evit_jax.parts`).

    Args:
      name: zoo name.
      batch: images per call (SAM `decoder`: prompts per call, against one image).
      resolution: (H, W) or a side; default the zoo entry's. SAM encoders take only their
        encoder size.
      dtype: "float32" or "bfloat16" (compute dtype; parameters stay float32).
      part: `model` (cls/seg) or `encoder` / `decoder` / `e2e` (SAM); default the first.
      fuse: build with BatchNorm folded (`create_model(..., fused_bn=True)`) and fold the
        variables (`evit_jax.fuse_bn`).
      variables: use these (unfolded) instead of random ones.
    """
    spec = model_info(name)
    the_part = inference_part(name, part)
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    resolution = the_part.resolution(None if resolution is None else
                                     tuple(int(r) for r in resolution))
    model = create_model(name, dtype=compute_dtype(dtype))
    if variables is None:
        variables = random_variables(model, seed)
    if fuse:
        model = with_folded_bn(model)
        variables = fuse_bn(variables, name)
    # On the device once: numpy leaves would be copied to it again on every call. (Shape
    # placeholders stay as they are: count_macs traces with them.)
    variables = jax.tree.map(
        lambda t: t if isinstance(t, jax.ShapeDtypeStruct) else jnp.asarray(t), variables)
    rng = np.random.default_rng(seed)
    prompt_size = spec.head.prompt_size if spec.task == "sam" else 0
    inputs = tuple(_example(role, shape, prompt_size, rng) for role, shape in
                   zip(the_part.inputs, the_part.shapes(batch, resolution)))
    fn = functools.partial(the_part.run, model)
    return Program(name, the_part.name, batch, resolution, dtype, fn, variables, inputs,
                   batch)
