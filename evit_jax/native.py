"""The optional C++ kernels (XLA FFI custom calls for the CPU backend).

`pip install .` / `pip install -e .` compiles `evit_jax/csrc/*.cc` into
`evit_jax/_native*.so` when a C++17 compiler is present (`make native` or
`python -m evit_jax.build_native` does it later, in place). Without the library every op
falls back to its pure-JAX formulation, so nothing but speed depends on it.

`available()` says whether the kernels are loaded; `why_unavailable()` says why not.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import importlib.util
import os
import subprocess
from pathlib import Path

import jax

_PKG = Path(__file__).resolve().parent
SOURCES = sorted(str(p) for p in (_PKG / "csrc").glob("*.cc"))
# (target name, exported handler symbol)
TARGETS = (("evit_dw_fwd", "EvitDwFwd"), ("evit_dw_bwd_input", "EvitDwBwdInput"),
           ("evit_dw_bwd_kernel", "EvitDwBwdKernel"))
CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-DNDEBUG", "-Wno-psabi"]

_state: dict = {"loaded": None, "error": None}


def library_path() -> Path | None:
    """The built library inside the package, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        hits = glob.glob(str(_PKG / f"_native{suffix}"))
        if hits:
            return Path(hits[0])
    return None


def include_dir() -> str:
    """The XLA FFI headers shipped in the jaxlib wheel (found without importing jax)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("jaxlib is not installed: it ships the XLA FFI headers")
    return os.path.join(list(spec.submodule_search_locations)[0], "include")


def _load() -> bool:
    if _state["loaded"] is not None:
        return _state["loaded"]
    _state["loaded"] = False
    if os.environ.get("EVIT_NATIVE", "1") == "0":
        _state["error"] = "disabled by EVIT_NATIVE=0"
        return False
    path = library_path()
    if path is None:
        _state["error"] = ("evit_jax/_native*.so is not built (no compiler at install time?); "
                           "run `python -m evit_jax.build_native` or `make native`")
        return False
    try:
        lib = ctypes.CDLL(str(path))
        for target, symbol in TARGETS:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except (OSError, AttributeError) as e:  # stale or foreign build
        _state["error"] = f"cannot load {path}: {e}; rebuild with `python -m evit_jax.build_native`"
        return False
    _state["loaded"] = True
    return True


def available() -> bool:
    """True when the C++ kernels are loaded and registered with XLA:CPU."""
    return _load()


def why_unavailable() -> str | None:
    """The reason `available()` is False (None when it is True)."""
    return None if _load() else _state["error"]


def build(out: str | os.PathLike | None = None, cxx: str | None = None) -> Path:
    """Compile the kernels into the package directory (or `out`) and return the path.

    Uses `$CXX` (default `g++`) with `$EVIT_CXXFLAGS` appended to the standard flags.
    """
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    target = Path(out) if out else _PKG / f"_native{suffix}"
    cmd = [cxx or os.environ.get("CXX", "g++"), *CXXFLAGS,
           *os.environ.get("EVIT_CXXFLAGS", "").split(), "-shared", "-isystem", include_dir(),
           *SOURCES, "-o", str(target) + ".tmp"]
    subprocess.run(cmd, check=True)
    os.replace(str(target) + ".tmp", target)  # atomic: a half-written library never loads
    return target
