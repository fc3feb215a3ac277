"""Checkpoint conversion: PyTorch (authors' `.pt`, timm) -> Flax variables, without torch.

The library part: the restricted readers and the strict key mapping, which the one loader
(`evit_jax.load_variables`) uses too. The command, `evit-convert`, and its
`convert_checkpoint` (file -> variables directory) are `evit_jax.convert.cli`, above the
loader; this package does not import it (it would close the circle loader -> converter ->
command -> loader).
"""

from evit_jax.convert.errors import (
    CheckpointFormatError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from evit_jax.convert.keymap import CheckpointMismatchError, convert_state_dict
from evit_jax.convert.readers import load_checkpoint, load_state_dict

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "TruncatedCheckpointError",
           "UnsafeCheckpointError", "convert_state_dict", "load_checkpoint", "load_state_dict"]
