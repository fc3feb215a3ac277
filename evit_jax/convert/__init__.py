"""Checkpoint conversion: PyTorch (authors' `.pt`, timm) -> Flax variables, without torch."""

from evit_jax.convert.cli import convert_checkpoint, main
from evit_jax.convert.errors import (
    CheckpointFormatError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)
from evit_jax.convert.keymap import CheckpointMismatchError, convert_state_dict
from evit_jax.convert.readers import load_checkpoint, load_state_dict

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "TruncatedCheckpointError",
           "UnsafeCheckpointError", "convert_checkpoint", "convert_state_dict",
           "load_checkpoint", "load_state_dict", "main"]
