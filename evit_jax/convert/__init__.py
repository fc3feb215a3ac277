"""Checkpoint conversion: PyTorch (authors' `.pt`, timm) -> Flax variables."""

from evit_jax.convert.keymap import CheckpointMismatchError, convert_state_dict

__all__ = ["CheckpointMismatchError", "convert_state_dict"]
