"""Build hook for the optional C++ kernels: `evit_jax/csrc/*.cc` -> `evit_jax/_native*.so`.

Also the package list: the wheel installs only `evit_jax`. The repository's top-level `train/`
and `configs/` go in as `evit_jax.train` and `evit_jax.configs` (an editable install maps
those names onto the folders), the one name they are imported by, so nothing generic lands in
site-packages; `convert/` holds only a script and is not installed. Everything else is in
pyproject.toml.

The kernels are XLA FFI custom calls for XLA:CPU; their headers come from the jaxlib wheel (a
build requirement). When they cannot be built (no C++17 compiler), installation still
succeeds with a warning and evit_jax uses its pure-JAX fallbacks; `python -m
evit_jax.build_native` builds them later.
"""

import glob
import importlib.util
import os

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# evit_jax.<name> -> the repository folder that holds it
MAPPED = {"evit_jax.train": "train", "evit_jax.configs": "configs"}


def _packages() -> list[str]:
    out = find_packages(include=["evit_jax", "evit_jax.*"])
    for name, folder in MAPPED.items():
        out += [name] + [f"{name}.{p}" for p in find_packages(folder)]
    return out


def _ffi_include() -> list[str]:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [os.path.join(list(spec.submodule_search_locations)[0], "include")]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the kernels only make things faster."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # compiler missing or too old, headers missing, ...
            self.warn(f"evit_jax: native kernels not built ({e}); the pure-JAX fallbacks will "
                      "be used (python -m evit_jax.build_native retries)")


setup(
    packages=_packages(),
    package_dir={name: folder for name, folder in MAPPED.items()},
    ext_modules=[Extension(
        "evit_jax._native",
        sources=sorted(glob.glob("evit_jax/csrc/*.cc")),
        include_dirs=_ffi_include(),
        extra_compile_args=["-O3", "-std=c++17", "-DNDEBUG", "-Wno-psabi"],
        extra_link_args=["-s"],  # no debug symbols: 10x smaller
        language="c++",
        optional=True,
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
