"""A clean install: the wheel puts only `evit_jax` (and its dist-info) in site-packages, with
the repository's train/ and configs/ as `evit_jax.train` / `evit_jax.configs`, and every
console script runs `--help` from a fresh venv outside the checkout. Dependencies by role:
`pip install evit-jax` (the core) runs inference, conversion and export; the trainer's
packages are the `[train]` extra, and without them `evit-train` says so in one line.

The cheap checks (the package list, entry points, the extras table, the core commands with
the training-only packages made unimportable) run by default; building and installing the
wheel takes a minute or two and is marked slow."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from evit_jax.errors import EXTRAS
from tests.helpers import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

SCRIPTS = dict(re.findall(r'^(evit-[\w-]+) = "([\w.:]+)"$',
                          (ROOT / "pyproject.toml").read_text(), re.M))


def _setup_packages() -> tuple[list[str], dict[str, str]]:
    """The `packages` and `package_dir` setup.py hands to setuptools (setup() not run)."""
    seen = {}
    real, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kw: seen.update(kw)
    try:
        os.chdir(ROOT)
        exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "x"})
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    return seen["packages"], seen["package_dir"]


def test_only_evit_jax_is_packaged():
    packages, package_dir = _setup_packages()
    assert all(p == "evit_jax" or p.startswith("evit_jax.") for p in packages), packages
    assert package_dir == {"evit_jax.train": "train", "evit_jax.configs": "configs"}
    for folder, name in (("evit_jax", "evit_jax"), ("train", "evit_jax.train"),
                         ("configs", "evit_jax.configs")):  # every package folder is shipped
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((name, *rel)) in packages, init
    for script, target in SCRIPTS.items():
        assert target.startswith("evit_jax."), (script, target)


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout, built from a copy (no build/ or egg-info left behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "runs", "__pycache__", "*.so", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp,
                   env=_env(), timeout=900)
    (path,) = (tmp / "dist").glob("evit_jax-*.whl")
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _venv_with(wheel: Path, venv: Path) -> Path:
    """A fresh venv holding only the wheel (no dependencies yet); returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = _site_packages(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", str(wheel)], check=True, env=_env(),
                   timeout=600)
    return site


@pytest.mark.slow  # ~1-2 min: builds the wheel (and the C++ kernels), installs it
def test_wheel_installs_only_evit_jax_and_every_script_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = _site_packages(venv)
    before = set(os.listdir(site))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", str(wheel)], check=True, env=_env(),
                   timeout=600)
    added = set(os.listdir(site)) - before
    assert added == {"evit_jax", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                     + ".dist-info"}, added
    # The dependencies come from this interpreter's site-packages (a path file, so that no
    # editable install of the checkout there is activated), and nothing from the checkout.
    deps = sysconfig.get_path("purelib")
    (site / "zz_deps.pth").write_text(deps + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for script in SCRIPTS:
        r = subprocess.run([str(venv / "bin" / script), "--help"], cwd=outside, env=_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "--" in r.stdout, (script, r.stderr[-2000:])
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import evit_jax, evit_jax.train.trainer, evit_jax.configs.demo as d;"
                        "print(evit_jax.__file__); print(d.get_config().model)"],
                       cwd=outside, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(str(site)), r.stdout


# ------------------------------------------------------------------ dependencies by role
def _requirements(extra: str | None = None) -> list[Requirement]:
    """The core dependencies of pyproject.toml, or those of one extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if extra is None else \
        project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _closure(reqs: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """Every distribution that installing `reqs` pulls in (no extras), as this interpreter
    has them installed: what `pip install` of those requirements would put in a venv."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(reqs)
    while todo:
        r = todo.pop()
        if (r.marker and not r.marker.evaluate({"extra": ""})) \
                or canonicalize_name(r.name) in seen:
            continue
        dist = importlib.metadata.distribution(r.name)
        seen[canonicalize_name(r.name)] = dist
        todo += [Requirement(q) for q in dist.requires or []]
    return seen


def _train_only_modules() -> list[str]:
    """Top-level modules that only the [train] extra brings (its packages and what only
    they pull in): absent from a core install (orbax and absl are not: flax and optax, core
    dependencies, pull them in)."""
    core = set(_closure(_requirements()))
    only = set(_closure(_requirements("train"))) - core
    return sorted(m for m, dists in importlib.metadata.packages_distributions().items()
                  if dists and all(canonicalize_name(d) in only for d in dists))


def test_extras_table_matches_pyproject():
    """`evit_jax.errors.EXTRAS` (what the one-line error names) lists exactly the [train]
    extra's packages, and no training package is a core dependency."""
    train = {canonicalize_name(r.name) for r in _requirements("train")}
    assert {canonicalize_name(p) for p in EXTRAS["train"].values()} == train
    core = {canonicalize_name(r.name) for r in _requirements()}
    assert not core & train, core & train
    for name in ("tensorflow-datasets", "grain", "orbax-checkpoint", "tensorboardx",
                 "matplotlib", "ml-collections"):
        assert name in train
    assert {"tensorflow_datasets", "grain", "tensorboardX", "matplotlib",
            "ml_collections"} <= set(_train_only_modules())


# Run console scripts in one process where the training-only modules cannot be imported (as
# in a core install): argv[1] the blocked modules, argv[2] [[script, "module:func", args]].
CORE_DRIVER = r'''
import contextlib, importlib, importlib.abc, io, json, sys, traceback

BLOCKED = set(json.loads(sys.argv[1]))


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
results = []
for script, target, args in json.loads(sys.argv[2]):
    module, func = target.split(":")
    sys.argv = [script, *args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = getattr(importlib.import_module(module), func)()  # as the script does
        except SystemExit as e:
            code = e.code
        except BaseException:
            code = "raised:\n" + traceback.format_exc()
    results.append([script, code, err.getvalue()])
print(json.dumps(results))
'''

TRAIN_SCRIPTS = ("evit-train", "evit-eval")


def test_core_commands_run_without_the_training_packages(tmp_path):
    """`import evit_jax` and every core command work with tfds, grain, tensorboardX,
    matplotlib, ml_collections (and what only they pull in) unimportable: `--help` of each,
    a real upscaling by evit-sr (random weights: weights written, read, the model run, a PNG
    written), evit-segment up to its checks (its imports), and evit-sam-eval on the embedded
    dataset / evit-train each refuse in one line naming `pip install 'evit-jax[train]'`.
    (tests/test_install.py's slow test does it in a fresh venv, evit-segment included.)"""
    from PIL import Image

    import evit_jax
    from evit_jax.zoo import random_variables
    sr = "efficientvit-sr-x2"
    evit_jax.save_variables(random_variables(evit_jax.create_model(sr)), tmp_path / "sr",
                            model=sr)
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(tmp_path / "lr.png")
    fix = "pip install 'evit-jax[train]'"
    cases = [(s, ["--help"], 0, None) for s in SCRIPTS if s not in TRAIN_SCRIPTS] + [
        ("evit-sr", ["--model", sr, "--weights", str(tmp_path / "sr"), "--image",
                     str(tmp_path / "lr.png"), "--out", str(tmp_path / "sr.png")], 0, None),
        ("evit-segment", ["--model", "efficientvit-sam-l0", "--weights", "w", "--image", "i",
                          "--point", "1,1", "--out", str(tmp_path / "o.jpg")], 1,
         "write a .png file"),
        ("evit-sam-eval", ["--model", "efficientvit-sam-l0", "--weights", str(tmp_path / "sr"),
                           "--dataset", "evit_shapes", "--prompt", "box"], 1, fix),
        ("evit-train", ["--config", "configs/demo.py", "--workdir", str(tmp_path / "w")],
         (1, 2), fix),
    ]
    commands = [[s, SCRIPTS[s], args] for s, args, _, _ in cases]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", CORE_DRIVER, json.dumps(_train_only_modules()),
                        json.dumps(commands)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for (script, _, want, needle), (_, code, err) in zip(cases, json.loads(r.stdout)):
        assert code == want or (isinstance(want, tuple) and code in want), (script, code, err)
        if needle:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), (script, err)
            assert needle in lines[0], (script, err)
    with Image.open(tmp_path / "sr.png") as im:
        assert im.size == (32, 24)
    assert not (tmp_path / "w").exists()


def _core_site(folder: Path) -> Path:
    """A site-packages folder that holds exactly the distributions `pip install evit-jax`
    installs (the closure of the core dependencies, as installed here), as links into this
    interpreter's site-packages: the training-only packages are not in it."""
    folder.mkdir()
    here = Path(sysconfig.get_path("purelib"))
    for dist in _closure(_requirements()).values():
        for f in dist.files or ():
            top = Path(f).parts[0]
            if top != ".." and top != "__pycache__" and (here / top).exists() \
                    and not (folder / top).exists():
                (folder / top).symlink_to(here / top)
    return folder


@pytest.mark.slow  # ~2-3 min: the wheel, then evit-segment compiles SAM-L0 (random weights)
def test_fresh_core_venv_segments_without_the_training_packages(wheel, tmp_path):
    """`pip install evit-jax` (the wheel, plus only its core dependencies) in a fresh venv:
    the training-only packages are not importable there, `evit-segment` segments an image
    with random-weight SAM-L0, `evit-convert` answers, and `evit-train` says in one line to
    `pip install 'evit-jax[train]'`."""
    site = _venv_with(wheel, tmp_path / "venv")
    core = _core_site(tmp_path / "core")
    (site / "zz_core.pth").write_text(f"{core}\n")
    bin_ = tmp_path / "venv" / "bin"
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], cwd=outside, env=_env(),
                              capture_output=True, text=True, timeout=600)

    absent = ["tensorflow_datasets", "grain", "tensorboardX", "matplotlib", "ml_collections"]
    r = run(bin_ / "python", "-c",
            "import importlib.util as u, sys, evit_jax\n"
            "from PIL import Image\n"
            "from evit_jax.zoo import random_variables\n"
            f"assert not [m for m in {absent!r} if u.find_spec(m)], 'training package found'\n"
            "m = 'efficientvit-sam-l0'\n"
            "evit_jax.save_variables(random_variables(evit_jax.create_model(m)), 'sam', "
            "model=m)\n"
            "Image.new('RGB', (40, 30), (120, 80, 40)).save('in.png')\n"
            "print(evit_jax.__file__)\n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(str(site)), r.stdout
    r = run(bin_ / "evit-segment", "--model", "efficientvit-sam-l0", "--weights", "sam",
            "--image", "in.png", "--point", "20,15", "--out", "out.png")
    assert r.returncode == 0 and "1 mask(s)" in r.stdout, r.stderr[-3000:]
    assert (outside / "out.png").stat().st_size > 0
    r = run(bin_ / "evit-convert", "--help")
    assert r.returncode == 0 and "--model" in r.stdout, r.stderr[-3000:]
    r = run(bin_ / "evit-train", "--config", "configs/demo.py", "--workdir", "w")
    lines = r.stderr.strip().splitlines()
    assert r.returncode in (1, 2) and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("evit-train: error: ") and \
        "pip install 'evit-jax[train]'" in lines[0], r.stderr
