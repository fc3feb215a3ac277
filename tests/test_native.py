"""Where the native kernels come from: the first-use build into the cache, and the clean
fallback to pure JAX (one warning) when they cannot be built."""

import ctypes
import shutil
import warnings

import jax.numpy as jnp
import pytest

from evit_jax import native
from evit_jax.nn.depthwise import default_impl, depthwise_conv2d, depthwise_impl


@pytest.fixture
def unloaded(monkeypatch, tmp_path):
    """A process state in which no library has been found yet, no in-package build exists
    and the build cache is an empty directory."""
    monkeypatch.setattr(native, "_state", {"loaded": None, "error": None})
    monkeypatch.setattr(native, "library_path", lambda: None)
    monkeypatch.setenv("EVIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("EVIT_NATIVE", raising=False)
    return tmp_path


def test_no_compiler_falls_back_with_one_warning(unloaded, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        assert not native.available()
    assert len(caught) == 1 and "pure-JAX" in str(caught[0].message)
    assert "set CXX" in native.why_unavailable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once: no second warning
        assert not native.available()
        with depthwise_impl(None):
            assert default_impl() == "shift_add"
            y = depthwise_conv2d(jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 1, 4)))
    assert float(y[0, 2, 2, 0]) == 9.0 and not list(unloaded.iterdir())


def test_build_at_first_use_can_be_forbidden(unloaded, monkeypatch):
    monkeypatch.setenv("EVIT_NATIVE_BUILD", "0")
    with pytest.warns(RuntimeWarning, match="EVIT_NATIVE_BUILD=0"):
        assert not native.available()


def test_cache_key_follows_the_sources(monkeypatch):
    a = native.cache_path()
    monkeypatch.setenv("EVIT_CXXFLAGS", "-march=native")
    assert native.cache_path() != a and native.cache_path().parent == a.parent


@pytest.mark.slow  # a real compile: 35-50 s of CPU
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_first_use_build_fills_the_cache(unloaded):
    path = native._find_or_build()
    assert path == native.cache_path() and path.parent == unloaded
    lib = ctypes.CDLL(str(path))
    for _, symbol in native.TARGETS:
        assert getattr(lib, symbol)
    assert [p.name for p in unloaded.iterdir()] == [path.name]  # no temporary left
