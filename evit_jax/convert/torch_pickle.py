"""Read `torch.save` files with numpy only, without running any pickled code.

A PyTorch checkpoint is a pickle whose tensors point at raw storages: since torch 1.6 a zip
archive (`<root>/data.pkl` + one `<root>/data/<key>` entry per storage + `<root>/byteorder`),
before that one stream of pickles followed by the storages' bytes. A pickle names the Python
callables that rebuild its objects, and calling them is how a malicious file runs code. Here
`find_class` resolves only a fixed table of names (tensor rebuild functions, storage and dtype
names, `OrderedDict` and a few harmless builtins, numpy scalars) to local functions that check
their arguments; any other name raises `UnsafeCheckpointError` before anything is called.

Hostile input (docs/convert.md, "Hostile input"): a pickle may run at most `MAX_OPCODES`
opcodes and nest containers `MAX_DEPTH` deep; dict keys and set members are scalars (so hashing
is cheap and cannot recurse); length-prefixed data is bounded by the bytes really present; and
beyond buffers for bytes the file holds, the reader allocates at most the file's size plus
`ALLOC_SLACK` (copies of strided / expanded tensors, inflated zip entries). Any failure while
interpreting the file becomes a one-line `CheckpointFormatError` naming the file (`parsing`).

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
import contextlib
import dataclasses
import errno
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from evit_jax.convert.errors import (
    SUPPORTED_FORMATS,
    CheckpointFormatError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    short_repr,
)

# Per pickle: a state dict of 1000 tensors needs about 50 000; a Python list of a million
# floats about a million. Each opcode can make one Python object (<= ~70 bytes), so this also
# bounds the memory of what a pickle builds (~370 MB) and its time (~6 s on a busy 2-core VM).
MAX_OPCODES = 5_000_000
MAX_DEPTH = 100  # container nesting of the loaded object; checkpoints use fewer than 10
MAX_NDIM = 64  # numpy's limit
ALLOC_SLACK = 64 << 20  # bytes allocated beyond the file's size (see the module doc)
MAX_INFLATE_RATIO = 20  # a compressed entry may inflate to max(ALLOC_SLACK, ratio x its size)

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

# Failures of Python / numpy / zipfile code while it interprets the file's bytes.
PARSE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, MemoryError, KeyError,
                IndexError, AttributeError, struct.error, zlib.error, NotImplementedError)


class Malformed(Exception):
    """A reason the file cannot be read; `parsing` adds the file name."""


class TorchDType(str):
    """A torch dtype (or typed-storage class) named in the pickle, as the string
    "torch.<dtype>" (how it appears among a checkpoint's values); "untyped" = raw bytes."""

    @property
    def name(self) -> str:
        return self[len("torch."):]


class Budget:
    """Bytes the reader may still allocate beyond the bytes the file holds."""

    def __init__(self, file_size: int):
        self.left = int(file_size) + ALLOC_SLACK

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise Malformed(f"{what} that would need {nbytes} bytes, more than the file "
                            "could hold (an expanded or overlapping layout, or a zip bomb)")
        self.left -= nbytes


@dataclasses.dataclass
class Storage:
    dtype: TorchDType
    data: np.ndarray | None  # uint8 bytes; None while only skimming a legacy file
    budget: Budget | None = None
    big_endian: bool = False


class _TensorClass:
    """Stands for `torch.Tensor` / `torch.nn.Parameter` when a pickle names the class."""


_NDARRAY = object()  # stands for numpy.ndarray as the first argument of `_reconstruct`


@contextlib.contextmanager
def parsing(path: object) -> Iterator[None]:
    """Turn any failure while interpreting the file into a one-line `CheckpointFormatError`
    naming `path` (the parsing boundary: code outside keeps its own exceptions)."""
    try:
        yield
    except CheckpointFormatError:
        raise
    except Malformed as e:
        raise CheckpointFormatError(f"{path}: the checkpoint holds {e}") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise TruncatedCheckpointError(path, f"{type(e).__name__}: {_clip(e)}") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise TruncatedCheckpointError(path, f"UnpicklingError: {_clip(e)}") from None
        raise CheckpointFormatError(f"{path}: a malformed pickle ({_clip(e)})") from None
    except MemoryError:
        raise CheckpointFormatError(f"{path}: a malformed checkpoint: reading it ran out of "
                                    "memory") from None
    except OSError as e:
        if e.errno != errno.EINVAL:  # a real I/O error, not a bad offset in the file
            raise
        raise CheckpointFormatError(f"{path}: a malformed checkpoint (an offset outside the "
                                    f"file: {_clip(e)})") from None
    except PARSE_ERRORS as e:
        raise CheckpointFormatError(f"{path}: a malformed checkpoint ({type(e).__name__}: "
                                    f"{_clip(e)})") from None


def _clip(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def itemsize(dtype: TorchDType) -> int:
    return 1 if dtype.name == "untyped" else np.dtype(_DTYPES[dtype.name]).itemsize


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) > MAX_NDIM \
            or not all(type(v) is int and v >= 0 for v in values):
        raise Malformed(f"a tensor {what} that is not a list of at most {MAX_NDIM} "
                        f"non-negative ints: {short_repr(values)}")
    return tuple(values)


def make_array(storage: Storage, offset: int, size: Any, stride: Any,
               dtype: TorchDType | None = None) -> np.ndarray | None:
    """The tensor `storage[offset + sum(i_k * stride_k)]`, shape `size`, as a numpy array."""
    if not isinstance(storage, Storage):
        raise Malformed(f"a tensor whose storage is {short_repr(storage)}")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, TorchDType) or dtype.name not in _DTYPES:
        raise Malformed(f"a tensor of dtype {short_repr(dtype)}, which is not supported")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    offset = _ints((offset,), "storage offset")[0]
    if len(size) != len(stride):
        raise Malformed(f"a tensor with {len(size)} sizes but {len(stride)} strides")
    if storage.data is None:  # skimming pass of a legacy file
        return None
    raw = np.dtype(_DTYPES[dtype.name]).newbyteorder(">" if storage.big_endian else "<")
    n_stored = storage.data.size // raw.itemsize
    flat = storage.data[: n_stored * raw.itemsize].view(raw)
    numel = math.prod(size)
    stride = tuple(0 if n == 1 else s for n, s in zip(size, stride))  # unused strides
    if numel == 0:
        arr = np.zeros(size, raw)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= n_stored:  # never read outside the storage
            raise Malformed(f"a tensor (size {size}, stride {stride}, offset {offset}) that "
                            f"reaches past the end of its storage ({n_stored} elements)")
        contiguous = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
        if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous)):
            arr = flat[offset: offset + numel].reshape(size)
        else:  # copied: C order, no aliasing; an expanded layout can be far larger
            storage.budget.charge(numel * raw.itemsize, f"a tensor of size {size}")
            arr = np.lib.stride_tricks.as_strided(
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
# Each checks its arguments: the pickle chooses them, and a wrong type must not reach code
# that would recurse into it, hash it, or allocate by it.
def _rebuild_tensor(storage, offset, size, stride):
    return make_array(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
    return make_array(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, TorchDType):
        raise Malformed("a tensor whose dtype is not a torch dtype")
    return make_array(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    if data is not None and not isinstance(data, np.ndarray):
        raise Malformed(f"a parameter holding {short_repr(data)}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _TensorClass or not any(func is f for f in _REBUILDERS.values()) \
            or type(args) is not tuple:
        raise Malformed("a tensor subclass, which is not supported")
    return func(*args)


def _encode(text: str, encoding: str = "utf-8") -> bytes:  # how protocol 2 pickles bytes
    if type(text) is not str or type(encoding) is not str \
            or encoding.lower() not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise Malformed(f"bytes in an unexpected form {short_repr((text, encoding))}")
    return codecs.encode(text, encoding)


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if type(data) is str:  # bytearray(text, "latin-1"): protocols 0-2
        return bytearray(_encode(data, encoding))
    if type(data) is not bytes or encoding is not None:  # no bytearray(N): N bytes from nothing
        raise Malformed(f"bytearray({short_repr(data)}), not made of bytes")
    return bytearray(data)


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise Malformed(f"complex({short_repr(real)}, {short_repr(imag)})")
    return complex(real, imag)


def _set(items: Any = ()) -> set:
    return set(_members(items, "a set"))


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_members(items, "a frozenset"))


def _ordered_dict(items: Any = ()) -> collections.OrderedDict:
    pairs = list(items) if isinstance(items, (list, tuple)) else None
    if pairs is None or not all(type(p) in (tuple, list) and len(p) == 2 for p in pairs):
        raise Malformed(f"OrderedDict({short_repr(items)})")
    return collections.OrderedDict((check_key(k, "an OrderedDict"), v) for k, v in pairs)


def _size(items: Any = ()) -> tuple:
    return _ints(items, "torch.Size")


def _device(kind: Any, index: Any = None) -> str:
    if type(kind) is not str or len(kind) > 64 or not (index is None or type(index) is int):
        raise Malformed(f"torch.device{short_repr((kind, index))}")
    return kind if index is None else f"{kind}:{index}"


def _np_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if type(spec) is not str or len(spec) > 16:
        raise Malformed(f"numpy.dtype({short_repr(spec)}): only simple dtypes are supported")
    dt = np.dtype(spec, False, True)  # always a private copy: BUILD must not edit np.float64
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise Malformed(f"a numpy dtype {short_repr(spec)} of Python objects or fields")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise Malformed("a malformed numpy scalar")
    return np.frombuffer(data, dtype)[0]


def _np_reconstruct(cls, shape, code):
    if cls is not _NDARRAY:
        raise Malformed("a numpy array subclass")
    return np.ndarray((0,), np.uint8)  # filled by its BUILD state


_REBUILDERS = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
               "_rebuild_tensor_v3": _rebuild_tensor_v3,
               "_rebuild_parameter": _rebuild_parameter,
               "_rebuild_parameter_with_state": _rebuild_parameter}
# The plain types a pickle may also create with NEWOBJ (cls.__new__(cls, *args)).
_PLAIN_TYPES = (_set, _frozenset, _complex, _bytearray, _ordered_dict, _size)
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _set, ("builtins", "frozenset"): _frozenset,
    ("builtins", "complex"): _complex, ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): _encode,
    ("torch", "Size"): _size, ("torch", "device"): _device,
    ("torch", "Tensor"): _TensorClass, ("torch._tensor", "Tensor"): _TensorClass,
    ("torch.nn.parameter", "Parameter"): _TensorClass,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "UntypedStorage"): TorchDType("torch.untyped"),
    ("numpy", "dtype"): _np_dtype, ("numpy", "ndarray"): _NDARRAY,
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _np_reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{("torch._utils", k): f for k, f in _REBUILDERS.items()},
    **{("torch", k): TorchDType(f"torch.{v}") for k, v in _STORAGES.items()},
    **{("torch", k): TorchDType(f"torch.{k}") for k in _DTYPES},
}

# Dict keys and set members: the scalars state dicts and training checkpoints use. Their
# hashes are cheap and flat (a tuple key can nest 10^6 deep and crash CPython's hash) and
# cannot be made to collide in bulk (ints beyond 64 bits, complex and tuples could).
_KEY_TYPES = (str, bytes, int, float, bool, type(None), np.integer, np.floating, np.bool_)


def check_key(key: Any, where: str) -> Any:
    """`key` if it may be a key of a dict (or member of a set) in a checkpoint."""
    if not isinstance(key, _KEY_TYPES) or (type(key) is int and not -2**63 <= key < 2**64):
        raise Malformed(f"{where} keyed by {short_repr(key)}: keys must be strings or "
                        "numbers")
    return key


def _members(items: Any, where: str) -> list:
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise Malformed(f"{where} made from {short_repr(items)}")
    return [check_key(k, where) for k in items]


def _check_dtype_state(dt: np.dtype, state: Any) -> None:
    """Allow the BUILD numpy writes after `dtype(spec, False, True)`: a byte order, nothing
    else (other flags can turn raw bytes into Python object pointers)."""
    if not (type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
            and state[5] in (-1, dt.itemsize) and state[6] in (-1, dt.alignment)
            and type(state[7]) is int and state[7] == dt.flags
            and (len(state) == 8 or state[8] is None or state[8] == {})):
        raise Malformed(f"a change of numpy dtype {dt.str} to state {short_repr(state)}")


def _check_array_state(state: Any) -> None:
    if not (type(state) is tuple and len(state) == 5 and type(state[0]) is int
            and isinstance(state[2], np.dtype) and type(state[3]) is bool
            and type(state[4]) in (bytes, bytearray)):
        raise Malformed(f"a numpy array with state {short_repr(state)}")
    shape, dt = _ints(state[1], "numpy shape"), state[2]
    if dt.hasobject or math.prod(shape) * dt.itemsize != len(state[4]):
        raise Malformed(f"a numpy array of shape {shape} and dtype {dt.str} that does not "
                        f"match its {len(state[4])} bytes")


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be replaced
    """Resolves globals only from `_ALLOWED`; storages come from `load_storage(pid)`.

    BUILD (set an object's state) is limited to numpy arrays and dtypes, and to the attribute
    dict torch pickles with a state dict's OrderedDict (dropped): otherwise a pickle could
    reach into the allowed functions and classes and change them for the whole process.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], size: int, path: object, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._path, self._load_storage, self._limit, self._ops = path, load_storage, size, 0
        self._unbuilt: dict[int, np.ndarray] = {}

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
        what = short_repr(f"{module}.{name}", 120)[1:-1]
        raise UnsafeCheckpointError(self._path, f"the Python global '{what}'")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._unbuilt.pop(id(inst), None) is inst:  # an array from `_reconstruct`
            _check_array_state(state)
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):  # a private copy (`_np_dtype`)
            _check_dtype_state(inst, state)
            size = inst.itemsize
            inst.__setstate__(state)
            if inst.hasobject or inst.itemsize != size:
                raise Malformed(f"a change of numpy dtype {inst.str}")
        elif not (type(inst) is collections.OrderedDict and type(state) is dict):
            raise Malformed(f"state for an object of type {type(inst).__name__}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:  # f(*"a 100 MB string") would build 10^8 arguments
            raise Malformed(f"a call with arguments {short_repr(args)}")
        func = self.stack[-1]
        self.stack[-1] = obj = func(*args)
        if func is _np_reconstruct:  # kept until its BUILD, so its id is not reused
            self._unbuilt[id(obj)] = obj

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not any(cls is t for t in _PLAIN_TYPES) or type(args) is not tuple:
            raise Malformed(f"NEWOBJ on {short_repr(cls)}, which is not a plain type")
        self.append(cls(*args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if kwargs != {}:  # compares a dict only: nothing the pickle made is called
            raise Malformed("NEWOBJ_EX with keyword arguments")
        self.load_newobj()

    def _ext(self) -> None:
        raise Malformed("an EXT opcode (the copyreg extension registry), which torch.save "
                        "never writes")

    # Opcodes with a length prefix: the length is checked against the bytes this pickle can
    # hold before anything is read or allocated (a file object's read(n) allocates n first).
    def _length(self, fmt: str) -> int:
        (n,) = struct.unpack(fmt, self.read(struct.calcsize(fmt)))
        if n < 0:
            raise Malformed(f"a negative length {n}")
        if n > self._limit:
            raise EOFError(f"a length of {n} bytes in a pickle of {self._limit}: truncated")
        return n

    def _exact(self, fmt: str) -> bytes:
        n = self._length(fmt)
        data = self.read(n)
        if len(data) != n:
            raise EOFError("pickle data was truncated")
        return data

    def load_binstring(self) -> None:
        self.append(self._decode_string(self._exact("<i")))

    def load_binunicode(self) -> None:
        self.append(str(self._exact("<I"), "utf-8", "surrogatepass"))

    def load_binunicode8(self) -> None:
        self.append(str(self._exact("<Q"), "utf-8", "surrogatepass"))

    def load_binbytes(self) -> None:
        self.append(self._exact("<I"))

    def load_binbytes8(self) -> None:
        self.append(self._exact("<Q"))

    def load_long4(self) -> None:
        self.append(pickle.decode_long(self._exact("<i")))

    def load_bytearray8(self) -> None:
        self.append(bytearray(self._exact("<Q")))

    def load_frame(self) -> None:
        self._unframer.load_frame(self._length("<Q"))

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise Malformed(f"{what} on an object of type {type(target).__name__}")
        return target

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._target((dict, collections.OrderedDict), "SETITEM")[check_key(key, "a dict")] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "SETITEMS")
        if len(items) % 2:
            raise Malformed("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[check_key(items[i], "a dict")] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise Malformed("DICT with an odd number of items")
        self.append({check_key(items[i], "a dict"): items[i + 1]
                     for i in range(0, len(items), 2)})

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(_members(items, "a set"))

    def load_frozenset(self) -> None:
        self.append(frozenset(_members(self.pop_mark(), "a frozenset")))

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def persistent_load(self, pid: Any) -> Storage:
        if self._load_storage is None or not (
                type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], TorchDType) and type(pid[2]) is str
                and type(pid[4]) is int and pid[4] >= 0):
            raise Malformed(f"an unexpected persistent reference {short_repr(pid)}")
        return self._load_storage(pid)


def _counted(op):  # a bound on the work of one pickle
    def run(self: _Unpickler) -> None:
        self._ops += 1
        if self._ops > MAX_OPCODES:
            raise Malformed(f"a pickle of more than {MAX_OPCODES} opcodes (this reader's bound "
                            "on work and memory); save only the weights (the state dict)")
        op(self)
    return run


for _code, _name in ((pickle.BUILD, "load_build"), (pickle.REDUCE, "load_reduce"),
                     (pickle.NEWOBJ, "load_newobj"), (pickle.NEWOBJ_EX, "load_newobj_ex"),
                     (pickle.EXT1, "_ext"), (pickle.EXT2, "_ext"), (pickle.EXT4, "_ext"),
                     (pickle.BYTEARRAY8, "load_bytearray8"), (pickle.BINSTRING, "load_binstring"),
                     (pickle.BINUNICODE, "load_binunicode"), (pickle.BINBYTES, "load_binbytes"),
                     (pickle.BINUNICODE8, "load_binunicode8"), (pickle.LONG4, "load_long4"),
                     (pickle.BINBYTES8, "load_binbytes8"), (pickle.FRAME, "load_frame"),
                     (pickle.SETITEM, "load_setitem"),
                     (pickle.SETITEMS, "load_setitems"), (pickle.DICT, "load_dict"),
                     (pickle.ADDITEMS, "load_additems"), (pickle.FROZENSET, "load_frozenset"),
                     (pickle.APPEND, "load_append"), (pickle.APPENDS, "load_appends")):
    _Unpickler.dispatch[_code[0]] = getattr(_Unpickler, _name)


class _Dispatch(dict):
    def __missing__(self, code: int):
        raise Malformed(f"an invalid pickle opcode 0x{code:02x}")


_Unpickler.dispatch = _Dispatch({k: _counted(v) for k, v in _Unpickler.dispatch.items()})


_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic)


def _check_tree(obj: Any) -> None:
    """Refuse what the loaded object must not be: containers nested more than `MAX_DEPTH`
    deep (along any path, shared parts included) or in a cycle, arrays of Python objects,
    and anything but plain data (e.g. a bare function). Iterative: no recursion to exhaust."""
    height: dict[int, int] = {}  # id -> nesting height of a finished container
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        item, leaving = stack.pop()
        if not _is_container(item):
            continue
        children = list(item.values() if isinstance(item, dict) else item)
        if leaving:
            h = 1 + max((height[id(c)] for c in children if _is_container(c)), default=0)
            if h > MAX_DEPTH:
                raise Malformed(f"containers nested more than {MAX_DEPTH} deep")
            on_path.discard(id(item))
            height[id(item)] = h
        elif id(item) in on_path:
            raise Malformed("a container that contains itself (a cycle)")
        elif id(item) not in height:
            on_path.add(id(item))
            stack.append((item, True))
            stack.extend((c, False) for c in children)


def _is_container(item: Any) -> bool:
    """True for the containers a checkpoint may hold; checks and passes plain leaves."""
    if type(item) in (list, tuple, dict, collections.OrderedDict, set, frozenset):
        return True
    if isinstance(item, (np.ndarray, np.generic, np.dtype)):
        if (item if isinstance(item, np.dtype) else item.dtype).hasobject:
            raise Malformed("a numpy array of Python objects")
    elif not isinstance(item, _LEAVES):
        raise Malformed(f"an object of type {type(item).__name__} as a value")
    return False


def unpickle(f: IO[bytes], size: int, path: object, load_storage=None) -> Any:
    """One pickle from `f`, read by the restricted unpickler; `size`: the bytes left in `f`
    (no length in the pickle may exceed it)."""
    with parsing(path):
        obj = _Unpickler(f, size, path, load_storage).load()
        _check_tree(obj)
        return obj


# ----------------------------------------------------------------------------- zip format
def _entry(path: object, zf: zipfile.ZipFile, name: str, archive_size: int,
           budget: Budget) -> zipfile.ZipInfo:
    """The entry `name`, checked to be readable within the allocation bounds."""
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise CheckpointFormatError(f"{path}: entry {short_repr(name)} is encrypted; torch "
                                    "checkpoints never are")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointFormatError(
            f"{path}: entry {short_repr(name)} uses zip compression method "
            f"{info.compress_type}; torch writes entries uncompressed (re-save the file with "
            "torch.save, or re-zip it with 'zip -0')")
    if info.compress_size > archive_size:
        raise TruncatedCheckpointError(path, f"entry {short_repr(name)} is larger than the "
                                             "file")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise CheckpointFormatError(f"{path}: entry {short_repr(name)} is stored with "
                                        "two different sizes")
    elif info.file_size > max(ALLOC_SLACK, MAX_INFLATE_RATIO * info.compress_size):
        raise CheckpointFormatError(
            f"{path}: entry {short_repr(name)} would inflate from {info.compress_size} to "
            f"{info.file_size} bytes, more than this reader allows (a zip bomb?)")
    else:
        budget.charge(info.file_size - info.compress_size, f"entry {short_repr(name)}")
    return info


def read_torch_zip(path: object, zf: zipfile.ZipFile, archive_size: int) -> Any:
    """Objects of a zip-format `torch.save` file (torch >= 1.6), tensors as numpy arrays."""
    names = zf.namelist()
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointFormatError(f"{path}: the zip archive holds entry {short_repr(dup)} "
                                    "more than once; readers disagree on which one counts, so "
                                    "it is refused")
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise CheckpointFormatError(f"{path}: a TorchScript archive (torch.jit.save), which "
                                    "holds code; save model.state_dict() with torch.save")
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkls:
        raise CheckpointFormatError(f"{path}: a zip archive without data.pkl, not a "
                                    f"torch.save checkpoint. Supported: {SUPPORTED_FORMATS}.")
    if len(pkls) > 1:
        raise CheckpointFormatError(f"{path}: the zip archive holds {len(pkls)} data.pkl "
                                    f"entries ({short_repr(pkls)}); a torch checkpoint has one")
    root, budget = pkls[0][: -len("data.pkl")], Budget(archive_size)
    big = False
    with parsing(path):
        if root + "byteorder" in names:
            _entry(path, zf, root + "byteorder", archive_size, budget)
            order = zf.read(root + "byteorder").strip()
            if order not in (b"little", b"big"):
                raise Malformed(f"a byteorder entry {short_repr(order)}")
            big = order == b"big"
        info = _entry(path, zf, pkls[0], archive_size, budget)
        cache: dict[str, Storage] = {}

        def load_storage(pid: tuple) -> Storage:
            _, dtype, key, _location, numel = pid[:5]
            if key not in cache:
                name = f"{root}data/{key}"
                if name not in names:
                    raise TruncatedCheckpointError(path, f"storage {short_repr(name)} is "
                                                         "missing")
                entry = _entry(path, zf, name, archive_size, budget)
                if entry.file_size < numel * itemsize(dtype):
                    raise TruncatedCheckpointError(path, f"storage {short_repr(name)} is "
                                                         "too short")
                buf = np.empty(entry.file_size, np.uint8)
                with zf.open(entry) as f:  # reading to the end checks the CRC-32
                    if f.readinto(memoryview(buf)) != buf.size or f.read(1):
                        raise TruncatedCheckpointError(path, f"storage {short_repr(name)} "
                                                             "is too short")
                cache[key] = Storage(dtype, buf, budget, big)
            return cache[key]

        with zf.open(info) as f:
            return unpickle(f, info.file_size, path, load_storage)
