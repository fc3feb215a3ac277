"""Read pre-1.6 ("legacy", non-zip) `torch.save` files with the restricted unpickler.

Layout: five pickles in a row -- the magic number, the format version, a dict of host facts
(`little_endian`, type sizes), the object itself (tensors refer to storages by key), the
sorted list of storage keys -- then, per key, its element count as int64 and its raw bytes
(both little-endian, whatever the host).
The object pickle is read twice: once to learn each storage's dtype, then, with the bytes
loaded, to build the arrays.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np

from evit_jax.convert.errors import CheckpointFormatError, TruncatedCheckpointError
from evit_jax.convert.torch_pickle import _Bad, _DType, _itemsize, _Storage, _unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-1.6 torch.save file
LEGACY_PROTOCOL = 1001


def read_torch_legacy(path: object, f: IO[bytes]) -> Any:
    """Objects of a pre-1.6 `torch.save` file, tensors as numpy arrays (see the module doc)."""
    if _unpickle(f, path) != LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: a pickle file, but not a PyTorch checkpoint")
    version = _unpickle(f, path)
    if version != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy torch format {version}")
    _unpickle(f, path)  # host facts; torch wrote the storages little-endian on any host
    start = f.tell()
    seen: dict[str, tuple[_DType, int, Any]] = {}

    def skim(pid: tuple) -> _Storage:  # first pass: only learn what storages exist
        seen[pid[2]] = (pid[1], int(pid[4]), pid[5] if len(pid) > 5 else None)
        return _Storage(pid[1], None)

    _unpickle(f, path, skim)
    storages: dict[str, _Storage] = {}
    for key in _unpickle(f, path):
        if key not in seen:
            raise CheckpointFormatError(f"{path}: storage {key!r} is not used by any tensor")
        dtype, numel = seen[key][:2]
        head = f.read(8)
        count = int.from_bytes(head, "little") if len(head) == 8 else -1
        data = np.frombuffer(f.read(max(count, 0) * _itemsize(dtype)), np.uint8).copy()
        if count < numel or data.size != count * _itemsize(dtype):
            raise TruncatedCheckpointError(path, f"storage {key} is too short")
        storages[key] = _Storage(dtype, data)

    def load_storage(pid: tuple) -> _Storage:
        key, view = pid[2], pid[5] if len(pid) > 5 else None
        if view is not None:  # (root key, element offset, element count): a storage view
            root, off, n = view[0], int(view[1]), int(view[2])
            if root not in storages:
                raise _Bad(f"a view of a missing storage {root!r}")
            size = _itemsize(storages[root].dtype)
            return _Storage(pid[1], storages[root].data[off * size: (off + n) * size])
        return storages[key]

    f.seek(start)
    return _unpickle(f, path, load_storage)
