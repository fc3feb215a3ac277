"""`python -m evit_jax.build_native [--status]`: (re)build the C++ kernels ahead of first
use, or report whether they load (see `evit_jax.native`). The build replaces the library in
the package when there is one there (built by `pip install`), else fills the build cache."""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

from evit_jax import native


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--status"]:
        print("native kernels:", "loaded" if native.available()
              else f"unavailable ({native.why_unavailable()})")
        return 0
    if argv:
        print("usage: python -m evit_jax.build_native [--status]", file=sys.stderr)
        return 2
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    in_pkg = Path(native.__file__).parent / f"_native{suffix}"
    print(native.build(in_pkg if in_pkg.exists() else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
