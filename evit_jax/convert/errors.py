"""Errors raised while reading checkpoint files (wrong model: keymap.CheckpointMismatchError).

All derive from `evit_jax.errors.UserError` (a `ValueError`): the CLIs print them as one line.
"""

from __future__ import annotations

import reprlib

from evit_jax.errors import UserError

SUPPORTED_FORMATS = (
    "PyTorch checkpoints written by torch.save (.pt, .pth, timm's pytorch_model.bin; the zip "
    "format of torch >= 1.6 and the older pickle format), and safetensors (.safetensors)")

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def short_repr(obj: object, limit: int = 80) -> str:
    """A repr of `obj` built in bounded time and memory (a pickle can make objects whose full
    repr is gigabytes, e.g. a list holding the same list ten times, thirty levels deep)."""
    try:
        text = _REPR.repr(obj)
    except Exception:  # a repr that fails is no reason to hide the real error
        text = f"<{type(obj).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CheckpointFormatError(UserError):
    """A file that cannot be read as a checkpoint: unknown format, truncated, corrupt."""


class TruncatedCheckpointError(CheckpointFormatError):
    """A checkpoint file that ends early or fails its checksums (usually a broken download)."""

    def __init__(self, path: object, detail: str):
        super().__init__(f"{path}: the file is truncated or corrupt ({detail}); download it "
                         "again (compare its size / sha256 with the published one)")


class UnsafeCheckpointError(CheckpointFormatError):
    """A pickle that refers to something other than tensors and plain containers.

    Unpickling such a reference can run arbitrary code, so the reader stops before doing it.
    """

    def __init__(self, path: object, what: str):
        self.what = what
        super().__init__(
            f"{path}: refusing to load: the checkpoint refers to {what}, which is not a tensor "
            "or a plain container. Unpickling such a reference can run arbitrary code, so "
            "nothing in the file was executed. If you trust the file, keep only its weights "
            "with PyTorch: sd = torch.load(f, weights_only=False); "
            "torch.save(sd['state_dict'], 'weights.pt') (or sd itself if it is the state dict), "
            "then convert 'weights.pt'.")
