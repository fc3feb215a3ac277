"""Read `torch.save` files with numpy only, without running any pickled code.

A PyTorch checkpoint is a pickle whose tensors point at raw storages: since torch 1.6 a zip
archive (`<root>/data.pkl` + one `<root>/data/<key>` entry per storage + `<root>/byteorder`),
before that one stream of pickles followed by the storages' bytes. A pickle names the Python
callables that rebuild its objects, and calling them is how a malicious file runs code. Here
`find_class` resolves only a fixed table of names (tensor rebuild functions, storage and dtype
names, `OrderedDict` and a few harmless builtins, numpy scalars) to local numpy-building
functions; any other name raises `UnsafeCheckpointError` before anything is called.

Tensors come back as numpy arrays with their dtype, shape, strides and storage offset
honoured (bfloat16 and float8 widened to float32: numpy has no such types). A C-contiguous
tensor is a view of its storage's buffer (tensors sharing a storage share memory, as in
torch); any other layout is copied to a C-contiguous array. This module reads the zip format;
`torch_legacy` the older one with the same unpickler.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import dataclasses
import pickle
import zipfile
from typing import IO, Any

import numpy as np

from evit_jax.convert.errors import (
    SUPPORTED_FORMATS,
    CheckpointFormatError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)

# torch dtype name -> numpy dtype of the raw elements (bfloat16 read as uint16, float8 as uint8)
_DTYPES = {
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2",
    "half": "f2", "bfloat16": "u2", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4",
    "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4",
    "uint64": "u8", "bool": "u1", "complex64": "c8", "cfloat": "c8", "complex128": "c16",
    "cdouble": "c16", "float8_e4m3fn": "u1", "float8_e5m2": "u1", "float8_e4m3fnuz": "u1",
    "float8_e5m2fnuz": "u1",
}
_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
             "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
             "ComplexDoubleStorage": "complex128"}
# Torch-internal tensor kinds: not dangerous, just not plain dense tensors.
_UNSUPPORTED_KINDS = {"_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
                      "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
                      "_rebuild_device_tensor_from_numpy",
                      "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_sparse_csr_tensor"}


class _Bad(Exception):
    """Internal: a reason the file cannot be read; the reader adds the file name."""


class _DType(str):
    """A torch dtype (or typed-storage class) named in the pickle, as the string
    "torch.<dtype>" (how it appears among a checkpoint's values); "untyped" = raw bytes."""

    @property
    def name(self) -> str:
        return self[len("torch."):]


@dataclasses.dataclass
class _Storage:
    dtype: _DType
    data: np.ndarray | None  # uint8 bytes; None while only skimming a legacy file
    big_endian: bool = False


class _TensorClass:
    """Stands for `torch.Tensor` / `torch.nn.Parameter` when a pickle names the class."""


_NDARRAY = object()  # stands for numpy.ndarray as the first argument of `_reconstruct`


def _itemsize(dtype: _DType) -> int:
    return 1 if dtype.name == "untyped" else np.dtype(_DTYPES[dtype.name]).itemsize


def _make_array(storage: _Storage, offset: int, size: tuple, stride: tuple,
                dtype: _DType | None = None) -> np.ndarray | None:
    dtype = dtype or storage.dtype
    if dtype.name not in _DTYPES:
        raise _Bad(f"a tensor of dtype torch.{dtype.name}, which is not supported")
    if storage.data is None:  # skimming pass of a legacy file
        return None
    raw = np.dtype(_DTYPES[dtype.name]).newbyteorder(">" if storage.big_endian else "<")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise _Bad(f"a tensor with an invalid layout (size {size}, stride {stride})")
    flat = storage.data[: storage.data.size // raw.itemsize * raw.itemsize].view(raw)
    if 0 in size:
        arr = np.zeros(size, raw)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:  # never read outside the storage
            raise _Bad(f"a tensor (size {size}, stride {stride}, offset {offset}) that "
                       f"reaches past the end of its storage ({flat.size} elements)")
        contiguous = tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
        if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous)):
            arr = flat[offset: offset + int(np.prod(size))].reshape(size)
        else:
            arr = np.lib.stride_tricks.as_strided(  # copied: C order, no aliasing
                flat[offset:], size, tuple(s * raw.itemsize for s in stride),
                writeable=False).copy()
    return _widen(arr, dtype.name)


def _widen(arr: np.ndarray, name: str) -> np.ndarray:
    """Native byte order; bfloat16 / float8 -> float32; bool bytes -> bool."""
    if name == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if name.startswith("float8"):
        import ml_dtypes  # ships with jax

        return arr.view(getattr(ml_dtypes, name)).astype(np.float32)
    if name == "bool":
        return arr != 0
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


# -------------------------------------------------------------- what the pickle may call
def _rebuild_tensor(storage, offset, size, stride):
    return _make_array(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
    return _make_array(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, _DType):
        raise _Bad("a tensor whose dtype is not a torch dtype")
    return _make_array(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _TensorClass or func not in _REBUILDERS_SET:
        raise _Bad("a tensor subclass, which is not supported")
    return func(*args)


def _encode(text: str, encoding: str = "utf-8") -> bytes:  # how protocol 2 pickles bytes
    if encoding.lower() not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Bad(f"bytes in an unexpected encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _np_dtype(spec, align=False, copy=False) -> np.dtype:
    dt = np.dtype(spec)
    if dt.hasobject:
        raise _Bad("a numpy array of Python objects")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise _Bad("a malformed numpy scalar")
    return np.frombuffer(data, dtype)[0]


def _np_reconstruct(cls, shape, code):
    if cls is not _NDARRAY:
        raise _Bad("a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)  # filled by its BUILD state


_REBUILDERS = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
               "_rebuild_tensor_v3": _rebuild_tensor_v3,
               "_rebuild_parameter": _rebuild_parameter,
               "_rebuild_parameter_with_state": _rebuild_parameter}
_REBUILDERS_SET = set(_REBUILDERS.values())
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _encode,
    ("torch", "Size"): tuple, ("torch", "device"): lambda *a: ":".join(map(str, a)),
    ("torch", "Tensor"): _TensorClass, ("torch._tensor", "Tensor"): _TensorClass,
    ("torch.nn.parameter", "Parameter"): _TensorClass,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "UntypedStorage"): _DType("torch.untyped"),
    ("numpy", "dtype"): _np_dtype, ("numpy", "ndarray"): _NDARRAY,
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _np_reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{("torch._utils", k): f for k, f in _REBUILDERS.items()},
    **{("torch", k): _DType(f"torch.{v}") for k, v in _STORAGES.items()},
    **{("torch", k): _DType(f"torch.{k}") for k in _DTYPES},
}


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be replaced
    """Resolves globals only from `_ALLOWED`; storages come from `load_storage(pid)`.

    BUILD (set an object's state) is limited to numpy arrays and dtypes, and to the attribute
    dict torch pickles with a state dict's OrderedDict (dropped): otherwise a pickle could
    reach into the allowed functions and classes and change them for the whole process.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], path: object, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._path, self._load_storage = path, load_storage

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (`__builtin__`); map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch._utils" and name in _UNSUPPORTED_KINDS:
            raise CheckpointFormatError(
                f"{self._path}: holds a tensor kind this reader does not support "
                f"(torch._utils.{name}: quantized, sparse, nested, meta or device tensors); "
                "save plain dense CPU tensors instead (t.dequantize() / t.to_dense() / t.cpu())")
        raise UnsafeCheckpointError(self._path, f"the Python global '{module}.{name}'")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (np.ndarray, np.dtype)):
            inst.__setstate__(state)
        elif not (type(inst) is collections.OrderedDict and isinstance(state, dict)):
            raise _Bad(f"state for an object of type {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid: Any) -> _Storage:
        if self._load_storage is None or not (isinstance(pid, tuple) and len(pid) >= 5
                                              and pid[0] == "storage"
                                              and isinstance(pid[1], _DType)):
            raise _Bad(f"an unexpected persistent reference {pid!r:.80}")
        return self._load_storage(pid)


def _unpickle(file: IO[bytes], path: object, load_storage=None) -> Any:
    try:
        return _Unpickler(file, path, load_storage).load()
    except _Bad as e:
        raise CheckpointFormatError(f"{path}: the checkpoint holds {e}") from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise TruncatedCheckpointError(path, f"{type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- zip format
def read_torch_zip(path: object, zf: zipfile.ZipFile) -> Any:
    """Objects of a zip-format `torch.save` file (torch >= 1.6), tensors as numpy arrays."""
    names = zf.namelist()
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise CheckpointFormatError(f"{path}: a TorchScript archive (torch.jit.save), which "
                                    "holds code; save model.state_dict() with torch.save")
    pkls = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
    if not pkls:
        raise CheckpointFormatError(f"{path}: a zip archive without data.pkl, not a "
                                    f"torch.save checkpoint. Supported: {SUPPORTED_FORMATS}.")
    root = pkls[0][: -len("data.pkl")]
    big = root + "byteorder" in names and zf.read(root + "byteorder").strip() == b"big"
    cache: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
        _, dtype, key, _location, numel = pid[:5]
        if key not in cache:
            name = f"{root}data/{key}"
            if name not in names:
                raise TruncatedCheckpointError(path, f"storage {name} is missing")
            want = int(numel) * _itemsize(dtype)
            if zf.getinfo(name).file_size < want:
                raise TruncatedCheckpointError(path, f"storage {name} is too short")
            buf = np.empty(zf.getinfo(name).file_size, np.uint8)
            with zf.open(name) as f:  # reading to the end checks the CRC-32
                if f.readinto(memoryview(buf)) != buf.size or f.read(1):
                    raise TruncatedCheckpointError(path, f"storage {name} is too short")
            cache[key] = _Storage(dtype, buf, big)
        return cache[key]

    with zf.open(pkls[0]) as f:
        return _unpickle(f, path, load_storage)
