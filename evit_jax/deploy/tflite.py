"""TFLite export of zoo models (jax2tf + TensorFlow's TFLite converter), run in LiteRT.

  evit-export --format tflite --model efficientvit-b1-r224 --weights DIR --out b1.tflite
  evit-export --format tflite --model efficientvit-seg-b1-cityscapes --weights DIR \
      --resolution 512x1024 --float16 --out seg.tflite

Contract (NHWC, as TFLite users and its delegates expect; one signature, `serving_default`):

- classification: `input` float32 `[N, H, W, 3]` (normalised) -> `logits` `[N, classes]`.
- segmentation: `input` `[N, H, W, 3]` -> `logits` `[N, H/8, W/8, classes]`.
- super-resolution: `input` `[N, h, w, 3]` in [0, 1] -> `output` `[N, s*h, s*w, 3]`.

N is fixed at export (`--batch`, default 1): TF 2.21's converter rejects the
`dynamic_gather` that a symbolic batch makes of the attention's q/k/v indexing. Only
TFLite builtin ops are allowed (no SELECT_TF_OPS / Flex delegate), so the file runs in the
plain LiteRT runtime on Android, iOS and desktop. BatchNorm is folded first, and the
depthwise convolution is traced as XLA's grouped convolution (`lax`), which the converter
maps to `DEPTHWISE_CONV_2D`; the native kernels (process-local custom calls) never are.
`float16=True` stores the weights as float16 (inputs, outputs and CPU math stay float32;
GPU delegates compute in float16 from them). The converter stores *every* float constant
in float16, scalars included, so the linear attention's eps (1e-15 in the official models)
would become 0 and a token whose ReLU'd query is all zero would give 0 / 0 = NaN; the
float16 file is traced with eps raised to 2**-24, float16's smallest (subnormal) number
(`FLOAT16_EPS`), which moves outputs by about eps / normaliser (1e-5 relative for b0 at 64
px with random weights, where the normaliser is smallest), far below the float16 weight
rounding. (2**-14, the smallest normal number, moved that case by 9e-3.) Validation always
compares with the unmodified model (`reference`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.cli import UserError, write_atomic, write_report
from evit_jax.fuse import fuse_bn
from evit_jax.nn.depthwise import depthwise_impl
from evit_jax.zoo import create_model, model_info

TASKS = ("cls", "seg", "sr")
OUTPUT_NAMES = {"cls": "logits", "seg": "logits", "sr": "output"}
INSTALL = "pip install 'evit-jax[tflite]'"
FLOAT16_EPS = 2.0**-24  # float16's smallest (subnormal) number, exact once dequantised


@dataclasses.dataclass(frozen=True)
class TfliteProgram:
    """A JAX function with the TFLite boundary's layout, and its static input shape.

    Attributes:
      apply: (params, images `[N, H, W, 3]` float32) -> the output (float32): what is
        converted, the params passed as TF variables (frozen into the file by the
        converter; closed-over weights would be copied several times as constants of the
        serialized module: 4.7 GB peak for b2's 97 MB).
      params: the variables `apply` takes (BatchNorm folded).
      reference: the zoo model itself, images -> output, which LiteRT is validated against
        (`fn` but for the float16 file's attention eps, module docstring).
      input_shape: (N, H, W, 3), all static.
      output_name: the signature's output name (`logits` or `output`).
      float16: store the weights as float16.
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    reference: Callable[[jax.Array], jax.Array]
    input_shape: tuple[int, int, int, int]
    output_name: str
    float16: bool = False

    def fn(self, x: jax.Array) -> jax.Array:
        """images -> output with `params`: the converted computation, in JAX."""
        return self.apply(self.params, x)

    def example_input(self, seed: int = 0) -> np.ndarray:
        """Random float32 images of `input_shape` (uniform [0, 1), valid for every task)."""
        return np.random.default_rng(seed).random(self.input_shape, dtype=np.float32)


def check_model(name: str) -> Any:
    """The zoo spec of `name` if TFLite export covers its task; a one-line error else."""
    spec = model_info(name)
    if spec.task not in TASKS:
        what, part = {"sam": ("a SAM model", " (--part encoder / decoder)"),
                      "det": ("a detector", "")}.get(spec.task, (spec.task, ""))
        raise UserError(f"{name} is {what}; --format tflite covers classification, "
                        f"segmentation and SR models. Export it with --format onnx{part} "
                        "or --format stablehlo")
    return spec


def tflite_program(name: str, variables: Any, resolution: tuple[int, int] | None = None,
                   batch: int | None = None, float16: bool = False, fuse: bool = True
                   ) -> TfliteProgram:
    """The function `to_tflite` converts, with its contract (module docstring).

    Args:
      name: zoo name of a classification, segmentation or SR model.
      variables: its variables (`evit_jax.load_variables`).
      resolution: input (H, W); default the zoo entry's.
      batch: the fixed N (default 1).
      float16: float16 weights (and the attention eps at least `FLOAT16_EPS`).
      fuse: fold BatchNorm into the convolutions first.
    """
    spec = check_model(name)
    n = 1 if batch is None else int(batch)
    if n < 1:
        raise UserError(f"--batch must be at least 1, got {n}")
    zoo_model, zoo_vars = create_model(name), jax.tree.map(jnp.asarray, variables)
    fuse = fuse and bool(variables.get("batch_stats"))  # models without BatchNorm (SR)
    eps = max(spec.attn_eps, FLOAT16_EPS) if float16 else spec.attn_eps
    model = create_model(name, fused_bn=fuse, attn_eps=eps)  # fits fuse_bn's output
    if fuse:
        variables = fuse_bn(variables, name)
    h, w = resolution or spec.resolution

    def apply(params: Any, x: jax.Array) -> jax.Array:
        return model.apply(params, x).astype(jnp.float32)

    def reference(x: jax.Array) -> jax.Array:
        return zoo_model.apply(zoo_vars, x).astype(jnp.float32)

    params = jax.tree.map(np.asarray, variables)
    return TfliteProgram(apply, params, reference, (n, int(h), int(w), 3),
                         OUTPUT_NAMES[spec.task], float16)


def _tensorflow() -> Any:
    # TF logs oneDNN / CUDA notices on import; TF_CPP_MIN_LOG_LEVEL quiets what goes through
    # its own logging (a user's setting wins), `quiet_stderr` the rest (absl's, before
    # absl::InitializeLog, which no variable reaches).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise UserError(f"TFLite export needs TensorFlow: {INSTALL}") from e
    return tf


@contextlib.contextmanager
def quiet_stderr() -> Iterator[list[str]]:
    """Hold what the process writes to stderr (file descriptor 2: TensorFlow's C++ logging,
    the converter's MLIR diagnostics, Python warnings) in a temporary file while the block
    runs; the text is appended to the yielded list when the block ends, for an error message
    to point to. A process without a file descriptor 2 runs the block as it is."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield []
        return
    held: list[str] = []
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield held
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            held.append(log.read().decode("utf-8", "replace"))


def _converter_failure(error: BaseException, program: TfliteProgram, log: str) -> UserError:
    """The converter's error as one line: its first `error:` diagnostic (the op and where
    in evit_jax it was traced), with the full message and log kept in a file."""
    text = str(error)
    found = re.search(r"error: (.*)", text)
    what = " ".join((found.group(1) if found else text.strip().splitlines()[-1]).split())
    at = re.findall(r"(evit_jax/\S+\.py):(\d+):\d+: error:", text)
    n, h, w, _ = program.input_shape
    saved = write_report("tflite-converter.log", f"{text}\n\n--- stderr ---\n{log}")
    return UserError(
        f"TensorFlow's TFLite converter failed on the {h}x{w} (batch {n}) model: {what}"
        + (f" (traced at {at[0][0]}:{at[0][1]})" if at else "")
        + "; another --resolution may convert (every zoo model does at 128x128), or "
        "export with --format onnx" + (f". Converter log: {saved}" if saved else ""))


def to_tflite(program: TfliteProgram) -> bytes:
    """Convert a `TfliteProgram` -> the .tflite flatbuffer (builtin ops only).

    TensorFlow's logging is held back (`quiet_stderr`): on success nothing is shown; a
    converter failure (it refuses, e.g., any op outside TFLITE_BUILTINS) is one `UserError`
    line naming the failing op, with the converter's full output in a file.
    """
    with quiet_stderr() as log:
        try:
            return _convert(program)
        except Exception as e:  # noqa: BLE001 (sorted below, once stderr is back)
            error = e
    if type(error).__name__ == "ConverterError":  # tensorflow.lite.python.convert_phase
        raise _converter_failure(error, program, "".join(log)) from None
    raise error


def _convert(program: TfliteProgram) -> bytes:
    tf = _tensorflow()
    from jax.experimental import jax2tf

    with depthwise_impl("lax"):  # one grouped conv -> DEPTHWISE_CONV_2D
        body = jax2tf.convert(program.apply, with_gradient=False)
        module = tf.Module()  # the converter reads the signature's names from a trackable
        module.params = tf.nest.map_structure(
            lambda a: tf.Variable(a, trainable=False), program.params)
        module.f = tf.function(
            lambda x: {program.output_name: body(module.params, x)}, autograph=False,
            input_signature=[tf.TensorSpec(program.input_shape, tf.float32, name="input")])
        concrete = module.f.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if program.float16:  # float16 weights, dequantised at load on CPU (float32 math)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def export_tflite(name: str, variables: Any, path: str | os.PathLike | None = None,
                  **kwargs: Any) -> bytes:
    """`tflite_program(name, variables, **kwargs)` + `to_tflite` (+ an atomic write to
    `path`): returns the bytes."""
    data = to_tflite(tflite_program(name, variables, **kwargs))
    if path is not None:
        write_atomic(path, data)
    return data


def interpreter(model: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    """A LiteRT (`ai_edge_litert`) interpreter of a .tflite file or its bytes, allocated;
    its default XNNPACK delegate runs the float ops on CPU."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise UserError(f"running TFLite needs ai-edge-litert: {INSTALL}") from e
    kw = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {
        "model_path": str(Path(model))}
    with quiet_stderr():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
        interp = Interpreter(**kw, num_threads=threads)
        interp.allocate_tensors()
    return interp


def run_tflite(interp: Any, x: np.ndarray) -> np.ndarray:
    """Run the `serving_default` signature on images `[N, H, W, 3]`: its only output."""
    (out,) = interp.get_signature_runner()(input=np.asarray(x, np.float32)).values()
    return out


def op_counts(interp: Any) -> Counter:
    """How often each op occurs in the model (builtin names; `FlexX` / `CUSTOM` would be the
    non-builtin ones). Uses the interpreter's op listing, which includes `DELEGATE` nodes."""
    return Counter(d["op_name"] for d in interp._get_ops_details())


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def validate(program: TfliteProgram, model: bytes | str | os.PathLike,
             x: np.ndarray | None = None) -> float:
    """Relative L2 of LiteRT's output against the zoo model on `x` (default random)."""
    x = program.example_input() if x is None else x
    ref = np.asarray(jax.jit(program.reference)(x))
    return rel_l2(run_tflite(interpreter(model), x), ref)


def compare_latency(name: str, variables: Any, resolution: tuple[int, int] | None = None,
                    threads: int = 2, rounds: int = 15) -> dict[str, float]:
    """Median latency (ms, batch 1) of our TFLite file (float32 and float16 weights) in
    LiteRT and of our ONNX graph (`evit_jax.deploy.onnx`) in ONNX Runtime, `threads`
    threads each, on the same input. The runtimes alternate within each round so a change
    in the machine's load hits all of them; the first two rounds are warm-up.

      python -m evit_jax.deploy.tflite efficientvit-b1-r224 [HxW]
    """
    import time

    from evit_jax.deploy import onnx

    runners: dict[str, Callable[[], Any]] = {}
    x = tflite_program(name, variables, resolution).example_input()
    for f16 in (False, True):
        program = tflite_program(name, variables, resolution, float16=f16)
        runner = interpreter(to_tflite(program), threads=threads).get_signature_runner()
        runners["litert float16 weights" if f16 else "litert float32"] = (
            lambda r=runner: r(input=x))
    session = onnx.ort_session(onnx.export_onnx(name, variables, resolution=resolution,
                                                batch=1), threads=threads)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    runners["onnxruntime float32"] = lambda: onnx.run_onnx(session, [x_nchw])
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v[2:])) for k, v in times.items()}


def _bench_main(argv: list[str]) -> None:
    """`python -m evit_jax.deploy.tflite NAME [HxW]`: `compare_latency` with random
    weights (speed does not depend on their values), printed with the load average."""
    from evit_jax.cli import parse_resolution
    from evit_jax.zoo import random_variables
    name = argv[0]
    res = parse_resolution(argv[1]) if len(argv) > 1 else None
    variables = random_variables(create_model(name), seed=0)
    before = os.getloadavg()[0]
    result = compare_latency(name, variables, res)
    print(f"{name} {res or model_info(name).resolution} batch 1, 2 threads, load average "
          f"{before:.1f} -> {os.getloadavg()[0]:.1f}: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in result.items()))


if __name__ == "__main__":
    import sys
    _bench_main(sys.argv[1:])
