"""JAX timing worker for `evit_jax.bench.compare` (`python -m evit_jax.bench.worker N`).

Pins itself to N CPUs *before* importing JAX (XLA sizes its thread pool from the CPUs it
may use), then serves `evit_jax.bench.protocol` requests with AOT-compiled programs.
Environment variables such as `XLA_FLAGS`, `EVIT_DEPTHWISE`, `EVIT_FUSE_BN=1` come from
the driver. `python -m evit_jax.bench.worker N ort` times evit-jax's ONNX export
(`evit_jax.deploy.onnx`) in ONNX Runtime instead, on the weights of the request's
`state_dict` (a checkpoint the reference side wrote), converted.
"""

from __future__ import annotations

import functools
import os
import sys

from evit_jax.bench.protocol import pin, serve
from evit_jax.bench.sam_inputs import PARTS


def main() -> None:
    threads = int(sys.argv[1])
    runtime = sys.argv[2] if len(sys.argv) > 2 else "xla"
    pin(threads)
    import jax

    from evit_jax.bench.measure import compile_program
    from evit_jax.bench.programs import make_program

    def setup(req: dict):
        if runtime == "ort":
            return ort_runner(req, threads)
        if req.get("part") in PARTS:
            return sam_pipeline_runner(req)
        if req.get("part") == "train":
            return train_step_runner(req)
        prog = make_program(req["model"], req["batch"], (req["height"], req["width"]),
                            req.get("dtype", "float32"), req.get("part"),
                            fuse=os.environ.get("EVIT_FUSE_BN") == "1")
        compiled, _ = compile_program(prog)
        args = (prog.variables, *prog.inputs)
        return lambda: jax.block_until_ready(compiled(*args))

    serve(setup, {"peak": lambda req: {"gflops": gemm_peak(int(req.get("n", 1024)))}})


def gemm_peak(n: int = 1024, calls: int = 10) -> float:
    """GFLOP/s of a jitted float32 n x n x n matmul on this worker's CPUs (median of
    `calls`): the machine's practical peak that the efficiency column divides by."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _reference_weights(req: dict):
    from evit_jax.io import load_variables
    if not req.get("state_dict"):
        raise ValueError("this side runs the reference side's weights (request field "
                         "state_dict): give the case with a reference side")
    return load_variables(req["state_dict"], model=req["model"])


def train_step_runner(req: dict):
    """One jitted training step of a classifier: forward in train mode (batch statistics),
    softmax cross-entropy, backward, AdamW update (lr 1e-3, weight decay 0.05), the state
    donated; the reference side does the same in eager PyTorch."""
    import jax
    import jax.numpy as jnp
    import optax

    from evit_jax.zoo import create_model, init_variables

    model = create_model(req["model"])
    variables = init_variables(model, jax.random.key(0))
    tx = optax.adamw(1e-3, weight_decay=0.05)
    state = (variables["params"], variables["batch_stats"],
             tx.init(variables["params"]))
    rng = jax.random.key(1)
    x = jax.random.normal(rng, (req["batch"], req["height"], req["width"], 3))
    y = jax.random.randint(rng, (req["batch"],), 0, 1000)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, y):
        params, stats, opt = state

        def loss_fn(p):
            logits, mut = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": rng})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, mut["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), loss

    box = [state]

    def run() -> None:
        box[0], loss = step(box[0], x, y)
        jnp.asarray(loss).block_until_ready()

    return run


def sam_pipeline_runner(req: dict):
    """Our `SamPredictor` / `SamAutomaticMaskGenerator` on the reference's weights and the
    shared picture (`evit_jax.bench.sam_inputs`); each call ends with results on the host."""
    from evit_jax.bench import sam_inputs
    from evit_jax.sam import SamAutomaticMaskGenerator, SamPredictor
    from evit_jax.zoo import create_model

    model = create_model(req["model"])
    variables = _reference_weights(req)
    image = sam_inputs.picture(req["height"], req["width"])
    part, n = req["part"], req["batch"]
    if part == "amg":
        gen = SamAutomaticMaskGenerator(model, variables, points_per_side=n)
        return lambda: gen.generate(image)
    pred = SamPredictor(model, variables)
    if part == "set_image":
        return lambda: pred.set_image(image) or pred.features.block_until_ready()
    pred.set_image(image)
    prompts = sam_inputs.boxes(req["height"], req["width"], n)
    return lambda: pred.predict_batch(boxes=prompts, multimask_output=False)


def ort_runner(req: dict, threads: int):
    """Our ONNX graph of the request's case, in an ONNX Runtime session like the reference's."""
    import numpy as np

    from evit_jax.deploy.onnx import export_onnx, ort_session
    from evit_jax.zoo import model_info

    spec = model_info(req["model"])
    name = spec.name
    variables = _reference_weights(req)
    part = req.get("part")
    kwargs = ({"part": part} if spec.task == "sam"
              else {"resolution": (req["height"], req["width"])})
    # With --ort-profile the driver reads the graph back (export_onnx writes atomically).
    keep = req.get("onnx_dir") and os.path.join(req["onnx_dir"], req["label"] + ".onnx")
    proto = export_onnx(name, variables, keep or None, batch=req["batch"], **kwargs)
    sess = ort_session(proto, threads=threads)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).normal(
        size=(req["batch"], 3, req["height"], req["width"])).astype(np.float32)
    feed = {inp.name: x}
    return lambda: sess.run(None, feed)


if __name__ == "__main__":
    main()
