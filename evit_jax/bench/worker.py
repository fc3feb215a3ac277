"""JAX timing worker for `evit_jax.bench.compare` (`python -m evit_jax.bench.worker N`).

Pins itself to N CPUs *before* importing JAX (XLA sizes its thread pool from the CPUs it
may use), then serves `evit_jax.bench.protocol` requests with AOT-compiled programs.
Environment variables such as `XLA_FLAGS`, `EVIT_DEPTHWISE`, `EVIT_FUSE_BN=1` come from
the driver.
"""

from __future__ import annotations

import os
import sys

from evit_jax.bench.protocol import pin, serve


def main() -> None:
    pin(int(sys.argv[1]))
    import jax

    from evit_jax.bench.measure import compile_program
    from evit_jax.bench.programs import make_program

    def setup(req: dict):
        prog = make_program(req["model"], req["batch"], (req["height"], req["width"]),
                            req.get("dtype", "float32"), req.get("part"),
                            fuse=os.environ.get("EVIT_FUSE_BN") == "1")
        compiled, _ = compile_program(prog)
        args = (prog.variables, *prog.inputs)
        return lambda: jax.block_until_ready(compiled(*args))

    serve(setup)


if __name__ == "__main__":
    main()
