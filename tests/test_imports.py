"""The import graph (docs/architecture.md): layers point one way, and nothing goes in a circle.

Read from the source with `ast` (every import, function-local ones included: a lazy import
is still an arrow), nothing is imported. `train/` and `configs/` are `evit_jax.train` and
`evit_jax.configs`, the names the wheel installs them under and the only ones they are
imported by.
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
# A training task (train/tasks/) builds on what lies below it, never on the loop above.
ABOVE_TASKS = ("evit_jax.train.trainer", "evit_jax.train.main", "evit_jax.train.evaluate",
               "evit_jax.train.config_loader")


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


def _imported_names() -> dict[str, set[str]]:
    """Every module -> the absolute names it imports (relative ones resolved)."""
    out = {}
    for mod, path in _modules().items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names.add(base)
        out[mod] = names
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


def _with_packages(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """`edges` plus what importing a module runs first: the `__init__` of every package above
    it (but the root's, the public facade, and the importer's own packages, already running)."""
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    out = {}
    for mod, targets in edges.items():
        more = set(targets)
        for t in targets:
            parts = t.split(".")
            for i in range(2, len(parts)):
                p = ".".join(parts[:i])
                if p in packages and not (mod == p or mod.startswith(p + ".")):
                    more.add(p)
        out[mod] = more
    return out


def _collapsed(edges: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph between the packages (and top modules) `depth` names deep."""
    name = lambda m: ".".join(m.split(".")[:depth])
    out: dict[str, set[str]] = {}
    for mod, targets in edges.items():
        out.setdefault(name(mod), set()).update(name(t) for t in targets
                                                if name(t) != name(mod))
    return out


def test_no_circles():
    """No circle between modules (counting the package `__init__`s an import runs), nor
    between the library's packages (`evit_jax.convert` <-> `evit_jax.io` is one even when no
    two modules form it), nor between the trainer's."""
    edges = _graph()
    found = _circles(_with_packages(edges)) + _circles(_collapsed(edges, 2))
    train = {m: {t for t in ts if t.startswith("evit_jax.train.")}
             for m, ts in edges.items() if m.startswith("evit_jax.train.")}
    found += _circles(_collapsed(train, 3))
    assert not found, f"import circles: {[sorted(c) for c in found]}"


def test_one_import_name_for_the_trainer_and_configs():
    """`evit_jax.train.*` / `evit_jax.configs.*` everywhere (tests included), never the
    checkout's top-level `train` / `configs`, and no ImportError fallback between the two."""
    wrong = {m: sorted(n for n in names if n.split(".")[0] in MAPPED)
             for m, names in _imported_names().items()}
    assert not {m: n for m, n in wrong.items() if n}
    for path in [*(ROOT / "tests").glob("*.py")]:
        tree = ast.parse(path.read_text())
        bad = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").split(".")[0] in MAPPED and not n.level]
        bad += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names if a.name.split(".")[0] in MAPPED]
        assert not bad, (path.name, bad)
    for top in MAPPED:
        for path in (ROOT / top).rglob("*.py"):
            assert "except ImportError" not in path.read_text() or path.name == "metrics.py", \
                path  # (metrics.py: TensorBoard files are optional)


def test_tasks_sit_below_the_loop():
    edges = _graph()
    wrong = [(m, t) for m, targets in edges.items() if m.startswith("evit_jax.train.tasks")
             for t in targets if t in ABOVE_TASKS]
    assert not wrong, wrong


def test_layers_point_down():
    edges = _graph()
    assert "evit_jax.zoo" in edges and "evit_jax.models.sam.model" in edges
    wrong = []
    for mod, targets in edges.items():
        for t in targets:
            if not mod.startswith(TOP) and t.startswith(TOP):
                wrong.append((mod, t))  # the library never imports the trainer or configs
            for layer, allowed in LAYERS.items():
                if (mod == layer or mod.startswith(layer + ".")) and not (
                        t == layer or t.startswith((layer + ".", *allowed))):
                    wrong.append((mod, t))
    assert not wrong, f"imports against the layers: {sorted(wrong)}"
