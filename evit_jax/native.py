"""The optional C++ kernels (XLA FFI custom calls for the CPU backend).

Where the library comes from, first found wins:

1. `evit_jax/_native*.so`, compiled by `pip install` (setup.py) when a C++17 compiler is
   present, if it is not older than the sources (an editable checkout after a `git pull`);
2. a build cache, `$EVIT_CACHE_DIR` or `~/.cache/evit_jax`, one file per hash of the
   sources, flags and jaxlib version: on first use the kernels are compiled there (~1 min,
   once), so a fresh clone gets them without any step of its own.

Without a compiler or the XLA FFI headers every op falls back to its pure-JAX formulation
(one warning line says why), so nothing but speed depends on the library. `EVIT_NATIVE=0`
turns it off; `EVIT_NATIVE_BUILD=0` forbids building at first use.
`available()` says whether the kernels are loaded; `why_unavailable()` says why not;
`python -m evit_jax.build_native` builds (or rebuilds) them ahead of use.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import warnings
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
    """The library built inside the package at install, if any and not older than the
    sources (a stale one would register kernels with other signatures)."""
    newest = max((os.path.getmtime(p) for p in _sources()), default=0.0)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for hit in glob.glob(str(_PKG / f"_native{suffix}")):
            if os.path.getmtime(hit) >= newest:
                return Path(hit)
    return None


def _sources() -> list[Path]:
    return sorted((_PKG / "csrc").glob("*.cc")) + sorted((_PKG / "csrc").glob("*.h"))


def cache_path() -> Path:
    """Where the first-use build goes: one file per (sources, flags, jaxlib, Python ABI)."""
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = "?"
    h.update(" ".join([*CXXFLAGS, os.environ.get("EVIT_CXXFLAGS", ""), jaxlib,
                       sys.implementation.cache_tag]).encode())
    root = os.environ.get("EVIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evit_jax")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return Path(root) / f"_native-{h.hexdigest()[:16]}{suffix}"


def _find_or_build() -> Path:
    """The library to load, compiling it into the cache on first use. Raises with a reason."""
    path = library_path()
    if path is not None:
        return path
    cached = cache_path()
    if cached.exists():
        return cached
    if os.environ.get("EVIT_NATIVE_BUILD", "1") == "0":
        raise RuntimeError("not built and EVIT_NATIVE_BUILD=0 forbids building at first use")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set CXX)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"evit_jax: compiling the native depthwise kernels into {cached} (once)...",
          file=sys.stderr, flush=True)
    build(cached, cxx)
    print(f"evit_jax: native kernels built in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return cached


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
    try:
        path = _find_or_build()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        _state["error"] = f"native kernels unavailable ({_first_line(e)})"
        _warn(_state["error"])
        return False
    try:
        lib = ctypes.CDLL(str(path))
        for target, symbol in TARGETS:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except (OSError, AttributeError) as e:  # foreign or damaged build
        _state["error"] = (f"cannot load {path}: {_first_line(e)}; rebuild with "
                           "`python -m evit_jax.build_native`")
        _warn(_state["error"])
        return False
    _state["loaded"] = True
    return True


def _first_line(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        err = (e.stderr or "").strip().splitlines()
        return f"compiler failed: {err[0] if err else e}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _warn(message: str) -> None:
    # warn_explicit with a non-file location: one line, no source line echoed under it.
    warnings.warn_explicit(f"{message}; using the pure-JAX depthwise convolution (slower on "
                           "CPU)", RuntimeWarning, "evit_jax.native", 0)


def available() -> bool:
    """True when the C++ kernels are loaded and registered with XLA:CPU."""
    return _load()


def why_unavailable() -> str | None:
    """The reason `available()` is False (None when it is True)."""
    return None if _load() else _state["error"]


def build(out: str | os.PathLike | None = None, cxx: str | None = None) -> Path:
    """Compile the kernels into the build cache (or `out`) and return the path.

    Uses `$CXX` (default `g++`) with `$EVIT_CXXFLAGS` appended to the standard flags.
    """
    target = Path(out) if out else cache_path()
    tmp = f"{target}.{os.getpid()}.tmp"  # per process: parallel first uses do not collide
    cmd = [cxx or os.environ.get("CXX", "g++"), *CXXFLAGS,
           *os.environ.get("EVIT_CXXFLAGS", "").split(), "-shared", "-isystem", include_dir(),
           *SOURCES, "-o", tmp]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # atomic: a half-written library never loads
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
