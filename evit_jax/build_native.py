"""`python -m evit_jax.build_native [--status]`: (re)build the C++ kernels in place, or
report whether they are loaded (see `evit_jax.native`)."""

from __future__ import annotations

import sys

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
    print(native.build())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
