"""Where a compiled XLA program's time goes: kernel time per kind of op and per layer.

XLA:CPU's thunk executor records one profiler event per HLO instruction it runs (the
event's `hlo_op`). This traces a few calls of a compiled program with `jax.profiler`,
sums those events per instruction and joins them with the compiled HLO: the kind of work
(matmul, convolution, native depthwise kernel, copy/transpose, reduction, elementwise) and
the layer it came from (the `op_name` metadata). The ONNX Runtime counterpart is
`evit_jax.bench.ort_profile`.

Caveat: a thunk XLA runs asynchronously on its thread pool (its own dense convolutions
with more than one CPU) is recorded for its dispatch only; run under `taskset -c 0` to
see those at their full cost.

  python -m evit_jax.bench.xla_profile --model efficientvit-b1 --batch 8 [--part decoder]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from evit_jax.bench.tables import render

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]+)"')


@dataclasses.dataclass
class Op:
    """One instruction of the entry computation: its kind of work and its layer."""

    kind: str
    layer: str


def _kind(opcode: str, body: set[str], text: str) -> str:
    if "convolution" in body or opcode == "convolution":  # dense k x k (YNN's or XLA's)
        return "convolution (dense k x k)"
    if "__ynn_fusion" in text or "__xnn_fusion" in text or "dot" in body or opcode == "dot":
        return "matmul (1x1 conv, attention, linear)"
    if opcode == "custom-call":
        target = _TARGET.search(text)
        return f"custom call {target.group(1) if target else '?'}"
    ops = body | {opcode}
    if ops & {"reduce", "reduce-window"}:
        return "reduction (norm, pool, loss)"
    if ops & {"transpose", "copy"}:
        return "copy / transpose"
    if ops & {"concatenate", "slice", "dynamic-slice", "pad", "gather", "scatter",
              "dynamic-update-slice"}:
        return "concat / slice / pad / gather"
    return "elementwise"


def hlo_ops(hlo_text: str) -> dict[str, Op]:
    """Instruction name -> `Op`, for every instruction of a compiled module's text."""
    bodies: dict[str, set[str]] = collections.defaultdict(set)
    targets: dict[str, str] = {}  # computation -> the custom_call_target="..." in it
    lines: list[tuple[str, str, str]] = []
    comp = ""
    for line in hlo_text.splitlines():
        m = _COMP.match(line)
        if m:
            comp = m.group(1)
            continue
        m = _INSTR.match(line)
        if m:
            bodies[comp].add(m.group(2))
            lines.append((m.group(1), m.group(2), line))
            target = _TARGET.search(line)
            if target:
                targets.setdefault(comp, target.group(0))
    ops = {}
    for name, opcode, line in lines:
        called = _CALLS.search(line)
        body = bodies.get(called.group(1), set()) if called else set()
        if called and "custom-call" in body and "dot" not in body:
            # a fusion wrapping a custom call (e.g. the FFI kernels) is that call
            opcode = "custom-call"
            line = f"{line} {targets.get(called.group(1), '')}"
        op_name = _OP_NAME.search(line)
        layer = op_name.group(1) if op_name else ""
        ops[name] = Op(_kind(opcode, body, line), _layer(layer))
    return ops


def _layer(op_name: str) -> str:
    """`jit(f)/Model/Model.features/backbone/stages_2/op_list_1/.../dot_general` ->
    `Model/backbone/stages_2/op_list_1` (the block: up to four parts ending one below the
    first stage/list index), or the path's first three parts."""
    # drop the jit wrappers and Flax's method scopes (`Model.features`)
    parts = [p for p in op_name.split("/") if p and not p.startswith(("jit(", "pjit("))
             and "." not in p.split("(")[0][1:]]
    for key in ("stages_", "op_list_", "blocks_", "layers_"):
        idx = [i for i, p in enumerate(parts) if p.startswith(key)]
        if idx:
            return "/".join(parts[:idx[0] + 2][-4:])
    return "/".join(parts[:3])


def trace_events(run: Callable[[], Any], calls: int) -> list[dict]:
    """Profiler events of `calls` calls of `run` (each must wait for its result)."""
    import jax
    with tempfile.TemporaryDirectory(prefix="evit-xlaprof-") as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        try:
            for _ in range(calls):
                run()
        finally:
            jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(tmp, "**", "*.json.gz"), recursive=True))[-1]
        with gzip.open(path) as f:
            data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def profile(run: Callable[[], Any], hlo_texts: dict[str, str], calls: int = 3,
            warmup: int = 2) -> dict[str, Any]:
    """Kernel ms per call of `run`, by kind and by layer, over the compiled modules in
    `hlo_texts` (`{module name as the profiler reports it: compiled.as_text()}`); `ops`:
    every instruction's `("module:name [kind] layer", ms)`, slowest first."""
    for _ in range(warmup):
        run()
    tables = {mod: hlo_ops(text) for mod, text in hlo_texts.items()}
    by_kind: dict[str, float] = collections.defaultdict(float)
    by_layer: dict[str, float] = collections.defaultdict(float)
    count: dict[str, set] = collections.defaultdict(set)
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in trace_events(run, calls):
        args = e.get("args") or {}
        name = args.get("hlo_op")
        if e.get("ph") != "X" or not name:
            continue
        mod = args.get("hlo_module", "")
        if mod not in tables:  # another program `run` called (e.g. a small helper jit)
            continue
        op = tables[mod].get(name, Op("other", ""))
        ms = e["dur"] / 1e3 / calls
        by_kind[op.kind] += ms
        by_layer[op.layer or "(no layer)"] += ms
        count[op.kind].add((mod, name))
        per_op[f"{mod}:{name} [{op.kind}] {op.layer}"] += ms
    ops = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {"by_kind": {k: {"ms": v, "ops": len(count[k])} for k, v in by_kind.items()},
            "by_layer": dict(by_layer), "ops": ops, "total_ms": sum(by_kind.values())}


def profile_compiled(compiled: Any, args: Sequence[Any], calls: int = 3) -> dict[str, Any]:
    """`profile` of one AOT-compiled executable called on `args`."""
    import jax
    text = compiled.as_text()
    module = re.search(r"^HloModule ([\w.\-]+)", text, re.M)
    return profile(lambda: jax.block_until_ready(compiled(*args)),
                   {module.group(1) if module else "": text}, calls)


def format_table(prof: dict[str, Any], markdown: bool = False, layers: int = 0) -> str:
    total = prof["total_ms"] or 1.0
    rows = [(k, f"{v['ms']:.2f}", f"{100 * v['ms'] / total:.0f}%", str(v["ops"]))
            for k, v in sorted(prof["by_kind"].items(), key=lambda kv: -kv[1]["ms"])]
    rows.append(("total (kernel time)", f"{prof['total_ms']:.2f}", "100%", ""))
    head = ("kind of op", "ms per call", "share", "ops")
    out = [render(head, rows, markdown)]
    if layers:
        lrows = [(k, f"{v:.2f}", f"{100 * v / total:.0f}%")
                 for k, v in sorted(prof["by_layer"].items(), key=lambda kv: -kv[1])[:layers]]
        out.append(render(("layer", "ms per call", "share"), lrows, markdown))
    return "\n\n".join(out)



PROG = "python -m evit_jax.bench.xla_profile"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--part", default=None, help="SAM: encoder / decoder / e2e")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--resolution", type=int, nargs="+", default=None, help="side or H W")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--layers", type=int, default=10, help="slowest layers to list")
    ap.add_argument("--fuse-bn", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", default=None, help="write the profile here")
    from evit_jax.cli import run
    return run(PROG, ap, _main, argv)


def _main(args: argparse.Namespace) -> None:
    from evit_jax.bench.measure import compile_program
    from evit_jax.bench.programs import make_program
    res = None if args.resolution is None else tuple(args.resolution) * (
        2 if len(args.resolution) == 1 else 1)
    prog = make_program(args.model, args.batch, res, part=args.part, fuse=args.fuse_bn)
    compiled, _ = compile_program(prog)
    prof = profile_compiled(compiled, (prog.variables, *prog.inputs), args.calls)
    print(format_table(prof, args.markdown, args.layers))
    if args.json:
        from evit_jax.cli import write_atomic
        write_atomic(args.json, json.dumps(prof, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
