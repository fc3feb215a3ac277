"""ONNX export of zoo models through `jax2onnx`, validated in ONNX Runtime.

  evit-export --format onnx --model efficientvit-b1-r224 --weights DIR --out b1.onnx
  evit-export --format onnx --model efficientvit-sam-l0 --weights DIR --part encoder --out enc.onnx
  evit-export --format onnx --model efficientvit-sam-l0 --weights DIR --part decoder --out dec.onnx

Contracts (NCHW at the boundary, like the authors' and segment-anything's exporters; the
JAX graph inside is NHWC and ONNX Runtime's layout optimiser removes the transposes):

- classification: `input` `[N, 3, H, W]` (normalised) -> `logits` `[N, classes]`.
- segmentation: `input` `[N, 3, H, W]` -> `logits` `[N, classes, H/8, W/8]`.
- detection: `input` `[N, 3, H, W]` (`evit_jax.det.preprocess`, normalised) -> `boxes`
  `[N, A, 4]` xyxy input pixels, `scores` `[N, A, classes]` for all A prediction points;
  NMS runs outside the graph (`evit_jax.det.batched_nms`, docs/det.md).
- SAM encoder: `input_image` `[N, 3, S, S]` (`evit_jax.sam.transforms.preprocess`, then
  NCHW) -> `image_embeddings` `[N, 256, 64, 64]`.
- SAM decoder: `image_embeddings` `[1, 256, 64, 64]`, `point_coords` `[B, P, 2]` (XY in the
  1024 prompt frame; boxes as their two corners), `point_labels` `[B, P]` float (1 fg, 0 bg,
  2 / 3 box corners, -1 not-a-point, -2 padding masked out), `mask_input`
  `[B, 1, 256, 256]`, `has_mask_input` `[B]` (1 uses `mask_input`) -> `iou_predictions`
  `[B, 4]`, `low_res_masks` `[B, 4, 256, 256]` (token 0 the single-mask output, 1..3 the
  multimask ones); exported with an original image size (H, W) also `masks` `[B, 4, H, W]`,
  the logits upscaled as `SamPredictor` does (static shapes: the size is part of the graph).
  Rows with clicks but no box get segment-anything's padding point inside the graph
  (`evit_jax.sam.prompts.append_padding_point`), so every prompt kind decodes as
  `SamPredictor.predict` decodes it, with or without the caller's own padding point.

N, B and P are dynamic unless fixed (`batch`, `points`). LayerNorm and the linear-attention
division run in float32 whatever the compute dtype, so a `float16` export stays fp16-safe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.cli import UserError, write_atomic
from evit_jax.fuse import fuse_bn
from evit_jax.nn.depthwise import depthwise_impl
from evit_jax.nn.forms import export_forms
from evit_jax.zoo import create_model, model_info

DTYPES = {"float32": jnp.float32, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class OnnxProgram:
    """A JAX function with the ONNX boundary's layouts, and what to call its inputs/outputs.

    Attributes:
      fn: inputs (numpy/JAX, NCHW) -> tuple of outputs; the function that is exported and
        the reference the runtime is validated against.
      inputs: one shape per input, dims are ints or symbolic names ("N").
      dtypes: one dtype per input.
      input_names, output_names: the graph's names.
    """

    fn: Callable[..., tuple[jax.Array, ...]]
    inputs: tuple[tuple[int | str, ...], ...]
    dtypes: tuple[Any, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def example_inputs(self, sizes: dict[str, int], seed: int = 0) -> list[np.ndarray]:
        """Random inputs with symbolic dims bound by `sizes` (e.g. {"N": 2})."""
        rng = np.random.default_rng(seed)
        out = []
        for shape, dtype in zip(self.inputs, self.dtypes):
            dims = tuple(sizes[d] if isinstance(d, str) else d for d in shape)
            out.append(rng.normal(size=dims).astype(dtype))
        return out


def _nhwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1))


def _nchw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2))


def onnx_program(name: str, variables: Any, resolution: tuple[int, int] | None = None,
                 part: str | None = None, batch: int | None = None,
                 image_size: tuple[int, int] | None = None, points: int | None = None,
                 dtype: str = "float32", fuse: bool = True) -> OnnxProgram:
    """The function `export_onnx` converts, with its input contract (module docstring).

    Args:
      name: zoo name.
      variables: its variables (`evit_jax.load_variables`).
      resolution: input (H, W) of classification / segmentation; default the zoo entry's.
      part: SAM only: "encoder" (default) or "decoder".
      batch: fixed N (or B for the decoder); default dynamic.
      image_size: SAM decoder only: original image (H, W) for the `masks` output.
      points: SAM decoder only: a fixed number of prompt tokens per row, P; default
        dynamic (rows of one call share P: pad shorter ones with label -2).
      dtype: compute dtype, "float32" or "float16" (inputs and outputs stay float32).
      fuse: fold BatchNorm into the convolutions first.
    """
    spec = model_info(name)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    fuse = fuse and bool(variables.get("batch_stats"))  # models without BatchNorm (SR)
    model = create_model(name, dtype=DTYPES[dtype], fused_bn=fuse)  # fits fuse_bn's output
    if fuse:
        variables = fuse_bn(variables, name)
    variables = jax.tree.map(jnp.asarray, variables)
    n: int | str = "N" if batch is None else int(batch)
    f32 = np.float32
    if spec.task != "sam":
        if part not in (None, "model"):
            raise UserError(f"{name} has no parts; leave out --part")
        if image_size is not None:
            raise UserError("an original image size is for the SAM decoder only")
        h, w = resolution or spec.resolution
        if spec.task == "det":  # decoded, every point; NMS outside (evit_jax.det)
            from evit_jax.parts import inference_part
            run = inference_part(name).run
            return OnnxProgram(lambda x: run(model, variables, _nhwc(x)), ((n, 3, h, w),),
                               (f32,), ("input",), ("boxes", "scores"))

        def fn(x):
            y = model.apply(variables, _nhwc(x)).astype(jnp.float32)
            return (_nchw(y) if y.ndim == 4 else y,)

        return OnnxProgram(fn, ((n, 3, h, w),), (f32,), ("input",), ("logits",))
    part = part or "encoder"
    if part == "encoder":
        s = spec.head.encoder_size
        if resolution not in (None, (s, s)):
            raise UserError(f"{name}'s encoder takes {s}x{s} images; leave out --resolution")
        if image_size is not None:
            raise UserError("an original image size is for the SAM decoder only")

        def enc(x):
            return (_nchw(model.apply(variables, _nhwc(x), method="encode_image")),)

        return OnnxProgram(enc, ((n, 3, s, s),), (f32,), ("input_image",),
                           ("image_embeddings",))
    if part != "decoder":
        raise UserError(f"SAM parts are 'encoder' and 'decoder', not {part!r}")
    if resolution is not None:
        raise UserError("the SAM decoder has no input resolution; the original image size "
                        "for its `masks` output is --image-size HxW")
    from evit_jax.sam.prompts import append_padding_point
    cfg = spec.head.decoder
    decoder = model.prompt_decoder()
    dvars = model.decoder_variables(variables)
    mats = None
    if image_size is not None:
        from evit_jax.sam.transforms import postprocess_matrices, preprocess_shape
        mats = postprocess_matrices(cfg.low_res_size, cfg.prompt_size,
                                    preprocess_shape(*image_size, cfg.prompt_size), image_size)

    def dec(emb, coords, labels, mask_input, has_mask):
        # Labels are float at the boundary (as segment-anything's); exact small integers.
        lab = jnp.round(labels).astype(jnp.int32)
        # Clicks without a box get segment-anything's padding point here, as SamPredictor
        # gives them: the caller need not append it (evit_jax.sam.prompts, docs/deploy.md).
        coords, lab = append_padding_point(coords, lab)
        low, iou = decoder.apply(dvars, _nhwc(emb), coords, lab, mask_input[:, 0],
                                 has_mask > 0.5)
        low, iou = low.astype(jnp.float32), iou.astype(jnp.float32)
        if mats is None:
            return iou, low
        from evit_jax.sam.predictor import upscale
        return upscale(low, jnp.asarray(mats[0]), jnp.asarray(mats[1])), iou, low

    g, c, lr = cfg.grid, cfg.embed_dim, cfg.low_res_size
    b: int | str = "B" if batch is None else int(batch)
    if points is not None and points < 1:
        raise UserError(f"--points must be at least 1, got {points}")
    p: int | str = "P" if points is None else int(points)
    inputs = ((1, c, g, g), (b, p, 2), (b, p), (b, 1, lr, lr), (b,))
    names_in = ("image_embeddings", "point_coords", "point_labels", "mask_input",
                "has_mask_input")
    names_out = ("iou_predictions", "low_res_masks")
    if mats is not None:
        names_out = ("masks",) + names_out
    return OnnxProgram(dec, inputs, (f32,) * 5, names_in, names_out)


def to_onnx(program: OnnxProgram, opset: int = 17, model_name: str = "evit") -> Any:
    """Convert an `OnnxProgram` with jax2onnx -> `onnx.ModelProto`.

    Every convolution is traced as one Conv node (the depthwise ones grouped, `lax`) and
    the attention as channel-major MatMuls (`export_forms`), never the native kernels
    (process-local custom calls).
    """
    # jax2onnx imports its example plugins eagerly and logs a traceback for each one whose
    # optional dependency (equinox, dm_pix) is absent; none of them is used here.
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.CRITICAL)
    try:
        from jax2onnx import to_onnx as j2o
    except ImportError as e:
        from evit_jax.deploy import ONNX_INSTALL  # the command that works (--no-deps)
        raise UserError(f"ONNX export needs jax2onnx: {ONNX_INSTALL}") from e
    from jax2onnx.plugins.jax.numpy.einsum import JnpEinsumPlugin
    specs = [tuple(s) for s in program.inputs]
    # jax2onnx's IR serialiser logs one warning per untyped shape constant; not actionable.
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
    # jax2onnx maps jnp.einsum to one ONNX Einsum node and broadcasts a Dense kernel
    # against the batch dims of its input (a 512 MiB Expand per SAM decoder projection);
    # unpatched, jnp.einsum lowers to dot_general, which jax2onnx emits as MatMul.
    specs_orig, einsum_orig = JnpEinsumPlugin.binding_specs, jnp.einsum
    JnpEinsumPlugin.binding_specs = classmethod(lambda cls: [])
    jnp.einsum = _einsum_as_matmul
    try:
        with depthwise_impl("lax"), export_forms():
            proto = j2o(lambda *a: program.fn(*a), specs, model_name=model_name,
                        opset=opset, input_names=list(program.input_names),
                        output_names=list(program.output_names))
    finally:
        JnpEinsumPlugin.binding_specs, jnp.einsum = specs_orig, einsum_orig
    _check_names(proto, program)
    return proto


_EINSUM = jnp.einsum


def _einsum_as_matmul(equation: str, *operands: Any, **kwargs: Any) -> jax.Array:
    """`jnp.einsum` for tracing: a Dense / 1x1 conv (`...i,io->...o`, `bhwi,io->bhwo`) on a
    rank > 2 input becomes a rank-2 matmul, which jax2onnx emits as ONNX MatMul (fused with
    the bias by ORT); rank > 2 contractions it emits as Einsum, slow in ONNX Runtime."""
    eq = equation.replace(" ", "")
    if len(operands) == 2 and "->" in eq and eq.count(",") == 1:
        (lhs, rhs), out = eq.split("->")[0].split(","), eq.split("->")[1]
        x, k = operands
        if (len(rhs) == 2 and k.ndim == 2 and x.ndim > 2 and lhs[-1:] == rhs[0]
                and out == lhs[:-1] + rhs[1] and rhs[0] not in lhs[:-1] + rhs[1]):
            y = _EINSUM("ni,io->no", x.reshape(-1, x.shape[-1]), k, **kwargs)
            return y.reshape(*x.shape[:-1], k.shape[-1])
    return _EINSUM(equation, *operands, **kwargs)


def _check_names(proto: Any, program: OnnxProgram) -> None:
    got_in = tuple(i.name for i in proto.graph.input)
    got_out = tuple(o.name for o in proto.graph.output)
    if got_in != program.input_names or got_out != program.output_names:
        raise RuntimeError(f"jax2onnx named the graph's inputs {got_in} and outputs {got_out}, "
                           f"expected {program.input_names} / {program.output_names}")


def export_onnx(name: str, variables: Any, path: str | os.PathLike | None = None,
                opset: int = 17, **kwargs: Any) -> Any:
    """`onnx_program` + `to_onnx` (+ an atomic write to `path`): returns the ModelProto."""
    program = onnx_program(name, variables, **kwargs)
    proto = to_onnx(program, opset=opset, model_name=model_info(name).name)
    if path is not None:
        write_atomic(path, proto.SerializeToString())
    return proto


def ort_session(model: Any, threads: int | None = None, profile: str | None = None) -> Any:
    """An ONNX Runtime CPU session (ORT_ENABLE_ALL) of a ModelProto, bytes or a path."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, (str, Path)):
        model = str(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a session on positional inputs (in the graph's input order)."""
    feed = {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def validate(program: OnnxProgram, proto: Any, inputs: Sequence[np.ndarray]
             ) -> dict[str, float]:
    """Relative L2 of each ONNX Runtime output against the JAX function on `inputs`."""
    ref = jax.jit(program.fn)(*inputs)
    got = run_onnx(ort_session(proto), inputs)
    return {n: rel_l2(g, r) for n, g, r in zip(program.output_names, got, ref)}
