"""Where an ONNX graph's time goes in ONNX Runtime: kernel time per ONNX op type.

`python -m evit_jax.bench.compare ... --ort --ort-profile DIR` keeps every ONNX Runtime
side's graph in DIR and calls `profile_dir` on it, so that our export and the authors' are
profiled alike (same runtime, same threads, same random input); or, on any file:

  python -m evit_jax.bench.ort_profile model.onnx [--threads 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import tempfile

import numpy as np

from evit_jax.bench.tables import render


def op_profile(path: str, threads: int = 2, runs: int = 10) -> dict[str, dict]:
    """`{op_type: {"ms": kernel ms per run, "nodes": nodes of that type}}` of the graph at
    `path` after ONNX Runtime's optimisations (ORT_ENABLE_ALL), on a random input, from its
    profiler's per-node kernel events (2 warm-up runs left out)."""
    from evit_jax.deploy.onnx import ort_session
    with tempfile.TemporaryDirectory(prefix="evit-ortprof-") as tmp:
        sess = ort_session(path, threads=threads, profile=os.path.join(tmp, "p"))
        rng = np.random.default_rng(0)
        feed = {i.name: rng.normal(size=[d if isinstance(d, int) else 1 for d in i.shape])
                .astype(np.float32) for i in sess.get_inputs()}
        for _ in range(runs + 2):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per_run: dict[str, list[float]] = collections.defaultdict(list)
    nodes: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_run[op].append(e["dur"] / 1e3)
            nodes[op].add(e["name"])
    out = {}
    for op, durs in per_run.items():
        n = len(nodes[op])
        out[op] = {"ms": float(np.sum(durs[2 * n:])) / runs, "nodes": n}
    return out


def profile_dir(directory: str, threads: int = 2) -> dict[str, dict[str, dict]]:
    """`op_profile` of every `LABEL.onnx` in `directory`, keyed by LABEL."""
    return {os.path.basename(p)[:-5]: op_profile(p, threads)
            for p in sorted(glob.glob(os.path.join(directory, "*.onnx")))}


def format_profile(prof: dict[str, dict[str, dict]], markdown: bool) -> str:
    """`{side: {op_type: {"ms", "nodes"}}}` -> one row per op type, slowest first."""
    sides = sorted(prof)
    ops = sorted({op for p in prof.values() for op in p},
                 key=lambda op: -max(p.get(op, {"ms": 0})["ms"] for p in prof.values()))
    head = ["op type", *(f"{s} ms (nodes)" for s in sides)]
    cell = lambda p, op: f"{p[op]['ms']:.2f} ({p[op]['nodes']})" if op in p else "-"
    body = [[op, *(cell(prof[s], op) for s in sides)] for op in ops]
    body.append(["total", *(f"{sum(v['ms'] for v in prof[s].values()):.2f}" for s in sides)])
    return render(head, body, markdown)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    prof = {os.path.basename(p): op_profile(p, args.threads, args.runs) for p in args.onnx}
    print(format_profile(prof, markdown=False))


if __name__ == "__main__":
    main()
