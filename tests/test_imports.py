"""The import graph (docs/architecture.md): layers point one way, and nothing goes in a circle.

Read from the source with `ast` (every import, function-local ones included: a lazy import
is still an arrow), nothing is imported. `train/` and `configs/` count as `evit_jax.train`
and `evit_jax.configs`, the names the wheel installs them under.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

MAPPED = {"train": "evit_jax.train", "configs": "evit_jax.configs"}
TOP = ("evit_jax.train", "evit_jax.configs")  # the trainer and its recipes: the top layer
# What a layer may import besides itself (prefixes); the rest of the library sits above zoo.
# `evit_jax.errors` (stdlib only: UserError and its kinds) sits below every layer.
LAYERS = {
    "evit_jax.nn": ("evit_jax.native", "evit_jax.errors"),
    "evit_jax.models": ("evit_jax.nn", "evit_jax.errors"),
    "evit_jax.zoo": ("evit_jax.models", "evit_jax.nn", "evit_jax.errors"),
}
# Known exceptions, each with what would remove it (docs/architecture.md, "What remains").
# evit-sam-eval reads the embedded dataset through the trainer's tfds builder; the fix is to
# move train/datasets/{builder,shapes}.py into the library.
UPWARD_OK = {("evit_jax.sam.eval.data", "evit_jax.train.datasets.builder")}
# Lazy imports inside train/ (input_pipeline <-> datasets.sr / sam grain helpers, sr_task and
# sam_task -> evaluate.local_copy, state -> sam_task -> ...) close circles there; the fix is
# to move those helpers down into modules of their own. A circle that reaches the library is
# an error.
CIRCLES_OK_WITHIN = "evit_jax.train."

def _modules() -> dict[str, Path]:
    out = {}
    for top in ("evit_jax", *MAPPED):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            out[MAPPED.get(parts[0], parts[0]) + name[len(parts[0]):]] = path
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        top = name.split(".")[0]
        name = MAPPED.get(top, top) + name[len(top):]
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:  # `from pkg import module` names a module
                    full = resolve(f"{base}.{a.name}")
                    targets.add(full if full == f"{base}.{a.name}" else resolve(base))
        edges[mod] = {t for t in targets if t and t != mod}
    return edges


def _circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_circles():
    circles = [c for c in _circles(_graph())
               if not all(m.startswith(CIRCLES_OK_WITHIN) for m in c)]
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def test_layers_point_down():
    edges = _graph()
    assert "evit_jax.zoo" in edges and "evit_jax.models.sam.model" in edges
    wrong = []
    for mod, targets in edges.items():
        for t in targets:
            if not mod.startswith(TOP) and t.startswith(TOP) and (mod, t) not in UPWARD_OK:
                wrong.append((mod, t))  # the library never imports the trainer or configs
            for layer, allowed in LAYERS.items():
                if (mod == layer or mod.startswith(layer + ".")) and not (
                        t == layer or t.startswith((layer + ".", *allowed))):
                    wrong.append((mod, t))
    assert not wrong, f"imports against the layers: {sorted(wrong)}"
