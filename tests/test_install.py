"""A clean install: the wheel puts only `evit_jax` (and its dist-info) in site-packages, with
the repository's train/ and configs/ as `evit_jax.train` / `evit_jax.configs`, and every
console script runs `--help` from a fresh venv outside the checkout.

The cheap checks (the package list and entry points) run by default; building and installing
the wheel takes about a minute and is marked slow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import setuptools

from tests.helpers import ROOT

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


@pytest.mark.slow  # ~1-2 min: builds the wheel (and the C++ kernels), installs it
def test_wheel_installs_only_evit_jax_and_every_script_runs(tmp_path):
    # Build from a copy, so that no build/ or egg-info is left in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "runs", "__pycache__", "*.so", ".*_cache"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path,
                   env=env, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("evit_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = _site_packages(venv)
    before = set(os.listdir(site))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", str(wheel)], check=True, env=env, timeout=600)
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
        r = subprocess.run([str(venv / "bin" / script), "--help"], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "--" in r.stdout, (script, r.stderr[-2000:])
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import evit_jax, evit_jax.train.trainer, evit_jax.configs.demo as d;"
                        "print(evit_jax.__file__); print(d.get_config().model)"],
                       cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(str(site)), r.stdout
