"""Read checkpoint files into numpy, without torch: PyTorch `.pt`/`.pth`/`.bin`, safetensors.

The format is recognised from the file's first bytes, not its name:

  zip (`PK\\x03\\x04`)          torch.save since torch 1.6 (`.pt`, `.pth`, `pytorch_model.bin`)
  pickle (`\\x80`)              torch.save before 1.6 (the "legacy" format)
  u64 length + `{`            safetensors

PyTorch pickles are read by a restricted unpickler (`torch_pickle`) that refuses anything
but tensors and plain containers, so a file from the internet cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evit_jax.convert.errors import (
    SUPPORTED_FORMATS,
    CheckpointFormatError,
    TruncatedCheckpointError,
    short_repr,
)
from evit_jax.convert.torch_legacy import read_torch_legacy
from evit_jax.convert.torch_pickle import PARSE_ERRORS, parsing, read_torch_zip
from evit_jax.errors import UserFileNotFoundError, user_path

SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers

# Wrappers a training script puts around the weights, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


def detect_format(path: str | os.PathLike) -> str:
    """"torch-zip", "torch-legacy" or "safetensors", from the file's first bytes.

    Raises:
      UserFileNotFoundError (a FileNotFoundError): no such file; UserPathError: unreadable.
      CheckpointFormatError: an empty, unknown or non-checkpoint file (names what it looks like).
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no such checkpoint file")
    with user_path(path):  # no permission, an I/O error: one line naming the file
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    if size == 0:
        raise TruncatedCheckpointError(path, "the file is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    if len(head) > 8 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if n > SAFETENSORS_MAX_HEADER:
            raise CheckpointFormatError(f"{path}: a safetensors file with a malformed header "
                                        f"(its length field says {n} bytes)")
        if n > size - 8:
            raise TruncatedCheckpointError(path, "the safetensors header runs past the end")
        return "safetensors"
    low = head.lstrip().lower()
    if low.startswith(b"version https://git-lfs"):
        hint = "a Git LFS pointer, not the weights: fetch the real file (git lfs pull)"
    elif low.startswith((b"<!doctype html", b"<html", b"<?xml")):
        hint = "a web page, not a checkpoint: the download failed (check the URL / login)"
    elif head[257:262] == b"ustar":
        hint = ("a tar-format torch checkpoint (torch < 0.4): re-save it with a newer torch, "
                "torch.save(torch.load(f), 'new.pt')")
    else:
        hint = f"not a checkpoint format this reader knows (it starts with {head[:8]!r})"
    raise CheckpointFormatError(f"{path}: {hint}. Supported: {SUPPORTED_FORMATS}.")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Everything stored in a checkpoint file, tensors as numpy arrays.

    Returns the pickled object tree for PyTorch files (dicts, lists, numbers, strings; e.g.
    `{"state_dict": {...}, "epoch": 300, "optimizer": {...}}`) and a flat dict for safetensors.
    bfloat16 and float8 tensors are widened to float32; other dtypes are kept.

    Raises:
      FileNotFoundError; CheckpointFormatError (unknown format, or unsupported content);
      TruncatedCheckpointError (file ends early / bad checksum); UnsafeCheckpointError (the
      pickle refers to code: nothing was executed).
    """
    path = Path(path)
    fmt = detect_format(path)
    with user_path(path):  # the file fails to read midway (I/O error): one line naming it
        if fmt == "safetensors":
            return _load_safetensors(path)
        if fmt == "torch-legacy":
            with open(path, "rb") as f:
                return read_torch_legacy(path, f)
        try:
            with parsing(path):  # a hostile central directory fails in many ways
                zf = zipfile.ZipFile(path)
        except TruncatedCheckpointError:  # a zip that ends early loses its central directory
            raise TruncatedCheckpointError(path, "broken zip archive") from None
        with zf:
            return read_torch_zip(path, zf, path.stat().st_size)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401  (registers bfloat16 / float8 with numpy for safetensors)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, *PARSE_ERRORS) as e:
        raise _safetensors_error(path, e) from None
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, np.ndarray) or v.dtype.hasobject:
            raise CheckpointFormatError(f"{path}: tensor {short_repr(k)} is not numeric")
        out[k] = v.astype(np.float32) if v.dtype.type.__module__.startswith("ml_dtypes") else v
    return out


def _safetensors_error(path: Path, e: BaseException) -> CheckpointFormatError:
    """"Truncated" only if the header is readable and its tensors end past the file's end;
    anything else the library refuses is a malformed file, which downloading again won't fix."""
    size = path.stat().st_size
    text = " ".join(str(e).split())[:200]
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        if type(end) is int and 8 + n + end > size:
            return TruncatedCheckpointError(path, f"its tensors end at byte {8 + n + end}, "
                                                  f"the file has {size}")
    except (*PARSE_ERRORS, json.JSONDecodeError):
        pass
    return CheckpointFormatError(f"{path}: a safetensors file with a malformed header or "
                                 f"tensor table ({type(e).__name__}: {text})")


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [short_repr(k) for k in list(obj)[:20]]
        return "keys " + ", ".join(keys) + (" ..." if len(obj) > 20 else "")
    return type(obj).__name__


def select_state_dict(obj: Any, key: str | None = None, source: object = "checkpoint"
                      ) -> dict[str, np.ndarray]:
    """The flat `name -> array` weights inside a loaded checkpoint.

    Args:
      obj: what `load_checkpoint` returned.
      key: where the weights are, dotted (`"ema"`, `"model.ema"`); by default the first of
        `STATE_DICT_KEYS` present, else `obj` itself. An entry holding exactly one mapping
        (e.g. the authors' EMA `{decay: weights}`) is entered.
      source: the file, for messages.
    Raises:
      CheckpointFormatError: no such key, or no tensors there (lists what there is).
    """
    if key:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                raise CheckpointFormatError(f"{source}: no entry {part!r} for key {key!r}; "
                                            f"the checkpoint has {_describe(obj)}")
            obj = obj[part]
    else:
        while isinstance(obj, Mapping):
            wrapper = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
            if wrapper is None:
                break
            obj = obj[wrapper]
    while isinstance(obj, Mapping) and len(obj) == 1 \
            and isinstance(next(iter(obj.values())), Mapping):
        obj = next(iter(obj.values()))
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)} \
        if isinstance(obj, Mapping) else {}
    if not tensors:
        raise CheckpointFormatError(
            f"{source}: found no tensors where the weights should be; it has {_describe(obj)}. "
            "Name the entry that holds the weights (key=... / --key).")
    return tensors


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """The weights of a checkpoint file as `{torch key: numpy array}`, without torch.

    Reads `.pt`/`.pth`/`.bin` files of `torch.save` (a bare state dict, `{"state_dict": ...}`,
    or a full training checkpoint) and `.safetensors`; see `load_checkpoint` for the rules and
    errors and `select_state_dict` for `key`. Arrays keep PyTorch layouts (conv `[O, I, kh, kw]`).
    """
    return select_state_dict(load_checkpoint(path), key, source=Path(path))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (recorded with converted weights, to trace their source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
