"""Measure a `Program`: AOT compile, steady-state latency, XLA's cost and memory analyses."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from evit_jax.bench.macs import count_params, count_program_macs
from evit_jax.bench.programs import Program


@dataclasses.dataclass
class Result:
    """One benchmark row (times in ms, sizes in bytes, counts per call).

    `xla_flops` is XLA's own count for the compiled program: it leaves out custom calls
    (the native depthwise kernels), so compare it with `2 * macs` only under the `lax`
    or `shift_add` implementation. `macs` is the analytic count (`evit_jax.bench.macs`).
    """

    model: str
    part: str
    batch: int
    resolution: tuple[int, int]
    dtype: str
    backend: str
    depthwise: str
    fused_bn: bool
    compile_s: float
    median_ms: float
    p90_ms: float
    min_ms: float
    iters: int
    items_per_s: float
    macs: int
    params: int
    xla_flops: float | None
    peak_bytes: int | None
    times_ms: list[float] = dataclasses.field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compile_program(prog: Program) -> tuple[Any, float]:
    """Ahead-of-time `jit(...).lower(...).compile()`; returns (executable, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(prog.fn).lower(prog.variables, *prog.inputs).compile()
    return compiled, time.perf_counter() - t0


def time_calls(compiled: Any, args: tuple[Any, ...], iters: int, warmup: int = 2,
               max_seconds: float | None = None) -> list[float]:
    """Latencies in ms of `iters` calls (each waited for with `block_until_ready`), after
    `warmup` untimed calls; stops early after `max_seconds` (at least 3 calls)."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(1e3 * (time.perf_counter() - t0))
        if max_seconds is not None and len(times) >= 3 \
                and time.perf_counter() - start > max_seconds:
            break
    return times


def _xla_flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _peak_bytes(compiled: Any) -> int | None:
    try:
        mem = compiled.memory_analysis()
    except Exception:
        return None
    if mem is None:
        return None
    # Everything the executable holds at once: its arguments (variables and inputs), its
    # outputs and XLA's temporary buffers (the activations), less donated aliases.
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def measure(prog: Program, iters: int = 20, warmup: int = 2, max_seconds: float | None = None,
            depthwise: str = "", fused_bn: bool = False) -> Result:
    """Compile `prog`, time it, and read its analyses (see `Result`)."""
    compiled, compile_s = compile_program(prog)
    args = (prog.variables, *prog.inputs)
    times = time_calls(compiled, args, iters, warmup, max_seconds)
    median = float(np.median(times))
    macs = count_program_macs(prog.fn, prog.variables, *prog.inputs)["total"]
    return Result(
        model=prog.model, part=prog.part, batch=prog.batch, resolution=prog.resolution,
        dtype=prog.dtype, backend=jax.default_backend(), depthwise=depthwise,
        fused_bn=fused_bn, compile_s=compile_s, median_ms=median,
        p90_ms=float(np.percentile(times, 90)), min_ms=float(np.min(times)), iters=len(times),
        items_per_s=1e3 * prog.items / median, macs=macs, params=count_params(prog.variables),
        xla_flops=_xla_flops(compiled), peak_bytes=_peak_bytes(compiled), times_ms=times)
