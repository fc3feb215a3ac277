"""The line protocol between `evit_jax.bench.compare` and its timing workers.

The driver writes one JSON object per line to a worker's stdin; the worker answers each
with one line `@@evit <json>` on stdout (other output of the libraries it loads is
ignored). Requests: `{"cmd": "setup", "model", "part", "batch", "height", "width",
"warmup"}` -> `{"ok": true, "setup_s": ...}`; `{"cmd": "time", "n": N}` ->
`{"ok": true, "times_ms": [...], "cpu_ms": [...]}` (wall-clock and process CPU time per
call); `{"cmd": "peak"}` (JAX worker) -> `{"ok": true, "gflops": ...}`, the float32 GEMM
rate on the worker's CPUs; `{"cmd": "quit"}`. Failures answer
`{"ok": false, "error": "..."}`. This file is imported by both workers, so it uses only
the standard library.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable

MARK = "@@evit "


def pin(threads: int) -> None:
    """Run on the first `threads` CPUs this process may use (both sides alike)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise ValueError(f"{threads} threads asked, {len(cpus)} CPUs available")
    os.sched_setaffinity(0, cpus[:threads])


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def serve(setup: Callable[[dict], Callable[[], None]],
          extra: dict[str, Callable[[dict], dict]] | None = None) -> None:
    """Answer requests until `quit` or EOF. `setup(request)` builds the case and returns a
    function that runs one call to completion; `extra` maps more commands to handlers
    returning the reply's fields (the JAX worker's `peak`)."""
    extra = extra or {}
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not reach the protocol stream
    run: Callable[[], None] | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["cmd"] == "quit":
                break
            if req["cmd"] == "setup":
                t0 = time.perf_counter()
                run = setup(req)
                for _ in range(int(req.get("warmup", 2))):
                    run()
                reply = {"ok": True, "setup_s": time.perf_counter() - t0}
            elif req["cmd"] == "time":
                if run is None:
                    raise RuntimeError("time before setup")
                times, cpu = [], []
                for _ in range(int(req["n"])):
                    c0, t0 = _cpu_seconds(), time.perf_counter()
                    run()
                    times.append(1e3 * (time.perf_counter() - t0))
                    cpu.append(1e3 * (_cpu_seconds() - c0))
                reply = {"ok": True, "times_ms": times, "cpu_ms": cpu}
            elif req["cmd"] in extra:
                reply = {"ok": True, **extra[req["cmd"]](req)}
            else:
                raise ValueError(f"unknown command {req['cmd']!r}")
        except Exception as e:  # reported to the driver, which stops with the message
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}",
                     "trace": traceback.format_exc()}
        out.write(MARK + json.dumps(reply) + "\n")
        out.flush()
