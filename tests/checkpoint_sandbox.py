"""Run the checkpoint reader on many files in one child process, bounded in memory and time.

The child caps its address space with `RLIMIT_AS` and imports only
`evit_jax.convert.readers` (the `evit_jax` package's `__init__` imports JAX, which reserves
gigabytes of address space), so a file that makes the reader allocate without bound ends in a
MemoryError instead of exhausting the shared machine, and a crash (SIGSEGV) names its file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

AS_LIMIT = 2 << 30  # bytes of address space for the child: numpy + the reader need ~120 MB

_CHILD = r"""
import json, os, resource, sys, time, types
root, limit, max_opcodes = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for name in ("evit_jax", "evit_jax.convert"):
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(root, *name.split("."))]
    sys.modules[name] = module
import numpy as np
import ml_dtypes, safetensors.numpy  # imported up front: not timed as part of a file
from evit_jax.convert import readers, torch_pickle
from evit_jax.convert.errors import CheckpointFormatError
if max_opcodes != "-":
    torch_pickle.MAX_OPCODES = int(max_opcodes)
def rss():  # VmHWM: ru_maxrss would carry over the parent's peak across exec
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({"base_rss": rss()}), flush=True)
for path in json.load(sys.stdin):
    print(json.dumps({"start": path}), flush=True)
    t0 = time.process_time()  # CPU time: the bound must not depend on the machine's load
    try:
        readers.load_checkpoint(path)
        kind, msg = "ok", ""
    except CheckpointFormatError as e:
        kind, msg = type(e).__name__, str(e)
    print(json.dumps({"path": path, "kind": kind, "msg": msg, "rss": rss(),
                      "seconds": time.process_time() - t0}), flush=True)
print(json.dumps({"done": True, "rss": rss(), "float64": np.dtype("f8").str,
                  "float32": np.dtype("f4").str}), flush=True)
"""


@dataclasses.dataclass
class Outcome:
    kind: str  # "ok" or the CheckpointFormatError subclass
    msg: str
    seconds: float  # CPU seconds the reader spent on the file
    rss: int  # the child's peak resident bytes so far


@dataclasses.dataclass
class Report:
    outcomes: dict[str, Outcome]
    base_rss: int  # after imports, before the first file
    peak_rss: int
    wall: float
    dtypes_intact: bool  # numpy's float64 / float32 dtypes unchanged after all files


def read_in_sandbox(paths: list[Path], *, timeout: float = 120,
                    max_opcodes: int | None = None) -> Report:
    """`load_checkpoint` on each file in one capped child; raises AssertionError naming the
    file if the child crashes or runs out of time."""
    import time

    package = importlib.util.find_spec("evit_jax").submodule_search_locations[0]
    root = os.path.dirname(os.path.abspath(package))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, os.path.join(root, ""), str(AS_LIMIT),
         "-" if max_opcodes is None else str(max_opcodes)],
        input=json.dumps([str(p) for p in paths]), capture_output=True, text=True,
        timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    if proc.returncode != 0 or not lines or not lines[-1].get("done"):
        raise AssertionError(f"the reader died (status {proc.returncode}) on "
                             f"{started[-1] if started else 'startup'}: {proc.stderr[-2000:]}")
    outcomes = {x["path"]: Outcome(x["kind"], x["msg"], x["seconds"], x["rss"])
                for x in lines if "path" in x}
    return Report(outcomes, lines[0]["base_rss"], lines[-1]["rss"], wall,
                  lines[-1]["float64"] == "<f8" and lines[-1]["float32"] == "<f4")
