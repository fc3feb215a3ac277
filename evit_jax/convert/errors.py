"""Errors raised while reading checkpoint files (wrong model: keymap.CheckpointMismatchError)."""

from __future__ import annotations

SUPPORTED_FORMATS = (
    "PyTorch checkpoints written by torch.save (.pt, .pth, timm's pytorch_model.bin; the zip "
    "format of torch >= 1.6 and the older pickle format), and safetensors (.safetensors)")


class CheckpointFormatError(ValueError):
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
