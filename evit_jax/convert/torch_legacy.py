"""Read pre-1.6 ("legacy", non-zip) `torch.save` files with the restricted unpickler.

Layout: five pickles in a row -- the magic number, the format version, a dict of host facts
(`little_endian`, type sizes), the object itself (tensors refer to storages by key), the
sorted list of storage keys -- then, per key, its element count as int64 and its raw bytes
(both little-endian, whatever the host).
A tensor's persistent id is `("storage", type, root key, location, root numel, view)`, where
`view` is None or `(view key, element offset, element count)`, a slice of the root storage
(written by torch < 1.0).
The object pickle is read twice: once to learn each storage's dtype, then, with the bytes
loaded, to build the arrays. Every count is checked against the bytes left in the file
before anything is allocated.
"""

from __future__ import annotations

import os
from typing import IO, Any

import numpy as np

from evit_jax.convert.errors import (
    CheckpointFormatError,
    TruncatedCheckpointError,
    short_repr,
)
from evit_jax.convert.torch_pickle import (
    Budget,
    Malformed,
    Storage,
    TorchDType,
    itemsize,
    parsing,
    unpickle,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-1.6 torch.save file
LEGACY_PROTOCOL = 1001


def _view(pid: tuple) -> tuple[str, int, int] | None:
    view = pid[5] if len(pid) > 5 else None
    if view is not None and not (type(view) is tuple and len(view) == 3
                                 and type(view[0]) is str and type(view[1]) is int
                                 and type(view[2]) is int and min(view[1], view[2]) >= 0):
        raise Malformed(f"a storage view {short_repr(view)} (expected (key, offset >= 0, "
                        "count >= 0))")
    return view


def read_torch_legacy(path: object, f: IO[bytes]) -> Any:
    """Objects of a pre-1.6 `torch.save` file, tensors as numpy arrays (see the module doc)."""
    size = os.fstat(f.fileno()).st_size
    budget = Budget(size)

    def next_pickle(load_storage=None) -> Any:
        return unpickle(f, size - f.tell(), path, load_storage)

    magic = next_pickle()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: a pickle file, but not a PyTorch checkpoint")
    version = next_pickle()
    if type(version) is not int or version != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy torch format "
                                    f"{short_repr(version)}")
    next_pickle()  # host facts; torch wrote the storages little-endian on any host
    start = f.tell()
    seen: dict[str, tuple[TorchDType, int]] = {}

    def skim(pid: tuple) -> Storage:  # first pass: only learn what storages exist
        _view(pid)
        if seen.setdefault(pid[2], (pid[1], pid[4])) != (pid[1], pid[4]):
            raise Malformed(f"storage {short_repr(pid[2])} with two different types or sizes")
        return Storage(pid[1], None)

    next_pickle(skim)
    keys = next_pickle()
    if type(keys) is not list or not all(type(k) is str for k in keys) \
            or len(set(keys)) != len(keys):
        raise CheckpointFormatError(f"{path}: a malformed legacy checkpoint: its storage key "
                                    f"list is {short_repr(keys)}, not distinct strings")
    storages: dict[str, Storage] = {}
    with parsing(path):
        for key in keys:
            if key not in seen:
                raise Malformed(f"storage {short_repr(key)}, which no tensor uses")
            dtype, numel = seen[key]
            head = f.read(8)
            count = int.from_bytes(head, "little") if len(head) == 8 else -1
            nbytes = count * itemsize(dtype)
            if count < numel or nbytes > size - f.tell():
                raise TruncatedCheckpointError(path, f"storage {short_repr(key)} is too short")
            data = np.empty(nbytes, np.uint8)  # within the bytes left: checked above
            if f.readinto(memoryview(data)) != nbytes:
                raise TruncatedCheckpointError(path, f"storage {short_repr(key)} is too short")
            storages[key] = Storage(dtype, data, budget)

    def load_storage(pid: tuple) -> Storage:
        root, view = pid[2], _view(pid)
        if root not in storages:
            raise Malformed(f"a tensor of a missing storage {short_repr(root)}")
        if view is None:
            return storages[root]
        base = storages[root]
        width, (_, off, n) = itemsize(base.dtype), view
        if (off + n) * width > base.data.size:
            raise Malformed(f"a view (offset {off}, {n} elements) past the end of storage "
                            f"{short_repr(root)}")
        return Storage(base.dtype, base.data[off * width: (off + n) * width], budget)

    f.seek(start)
    return next_pickle(load_storage)
