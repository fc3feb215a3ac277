"""JAX timing worker for `evit_jax.bench.compare` (`python -m evit_jax.bench.worker N`).

Pins itself to N CPUs *before* importing JAX (XLA sizes its thread pool from the CPUs it
may use), then serves `evit_jax.bench.protocol` requests with AOT-compiled programs.
Environment variables such as `XLA_FLAGS`, `EVIT_DEPTHWISE`, `EVIT_FUSE_BN=1` come from
the driver. `python -m evit_jax.bench.worker N ort` times evit-jax's ONNX export
(`evit_jax.deploy.onnx`) in ONNX Runtime instead, on the weights of the request's
`state_dict` (a checkpoint the reference side wrote), converted.
"""

from __future__ import annotations

import os
import sys

from evit_jax.bench.protocol import pin, serve


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
        prog = make_program(req["model"], req["batch"], (req["height"], req["width"]),
                            req.get("dtype", "float32"), req.get("part"),
                            fuse=os.environ.get("EVIT_FUSE_BN") == "1")
        compiled, _ = compile_program(prog)
        args = (prog.variables, *prog.inputs)
        return lambda: jax.block_until_ready(compiled(*args))

    serve(setup)


def ort_runner(req: dict, threads: int):
    """Our ONNX graph of the request's case, in an ONNX Runtime session like the reference's."""
    import numpy as np

    from evit_jax.deploy.onnx import export_onnx, ort_session
    from evit_jax.io import load_variables
    from evit_jax.zoo import model_info

    spec = model_info(req["model"])
    name = spec.name
    if not req.get("state_dict"):
        raise ValueError("the ONNX Runtime side needs the reference side's weights "
                         "(request field state_dict)")
    variables = load_variables(req["state_dict"], model=name)
    part = req.get("part")
    kwargs = ({"part": part} if spec.task == "sam"
              else {"resolution": (req["height"], req["width"])})
    proto = export_onnx(name, variables, batch=req["batch"], **kwargs)
    sess = ort_session(proto, threads=threads)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).normal(
        size=(req["batch"], 3, req["height"], req["width"])).astype(np.float32)
    feed = {inp.name: x}
    return lambda: sess.run(None, feed)


if __name__ == "__main__":
    main()
