"""Convert an EfficientViT PyTorch checkpoint into an evit-jax variables directory.

  python convert/convert_torch_ckpt.py --model NAME --src FILE --dst DIR [--verify]

The same as the `evit-convert` console script (see docs/convert.md); run from a checkout
without installing: the checkout's own `evit_jax` is used.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's evit_jax

from evit_jax.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
