"""The torch-free checkpoint reader against torch itself: content, safety, broken files."""

from __future__ import annotations

import argparse
import builtins
import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from evit_jax.convert import (
    CheckpointFormatError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_state_dict,
)

torch = pytest.importorskip("torch")


def _np(t) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype in (torch.bfloat16, torch.float8_e4m3fn) else t.numpy()


def _tensor_zoo() -> collections.OrderedDict:
    """Tensors of every common dtype and layout (views, offsets, strides, shared storage)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=g)
    return collections.OrderedDict(
        f32=torch.randn(2, 3, generator=g), f16=torch.randn(4, generator=g).half(),
        bf16=torch.randn(3, 2, generator=g).bfloat16(), f64=torch.randn(2, generator=g).double(),
        f8=torch.randn(3, generator=g).to(torch.float8_e4m3fn),
        i64=torch.arange(-3, 3), i32=torch.arange(4, dtype=torch.int32),
        i8=torch.tensor([-5, 7], dtype=torch.int8), u8=torch.tensor([0, 255], dtype=torch.uint8),
        u16=torch.arange(3).to(torch.uint16), boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(7), empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(3, generator=g)),
        row=base[2], cols=base[1:, ::2], transposed=base.t(),
        expanded=torch.randn(1, 3).expand(4, 3),
        shared_a=base[:2], shared_b=base[3:],  # two views of one storage
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_matches_torch(tmp_path, legacy):
    sd = _tensor_zoo()
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ckpt = {"state_dict": sd, "epoch": 7, "best": 81.5, "name": "run", "tags": ["a", 1],
            "size": torch.Size([2, 3]), "dtype": torch.float16, "device": torch.device("cpu"),
            "module": module.state_dict(), "nested": {"deep": {"x": torch.ones(2)}},
            "np_scalar": np.float64(2.5), "np_array": np.arange(3, dtype=np.int16),
            "set": {1, 2}, "bytes": b"\x00\xff"}
    path = tmp_path / "x.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    got = load_checkpoint(path)
    for k, t in sd.items():
        want = _np(t)
        assert got["state_dict"][k].dtype == want.dtype, k
        assert got["state_dict"][k].shape == want.shape, k
        np.testing.assert_array_equal(got["state_dict"][k], want, err_msg=k)
        assert got["state_dict"][k].flags.writeable, k
    assert isinstance(got["state_dict"], collections.OrderedDict)
    for k, t in module.state_dict().items():
        np.testing.assert_array_equal(got["module"][k], _np(t))
    np.testing.assert_array_equal(got["nested"]["deep"]["x"], np.ones(2, np.float32))
    assert (got["epoch"], got["best"], got["name"], got["tags"]) == (7, 81.5, "run", ["a", 1])
    assert got["size"] == (2, 3) and got["dtype"] == "torch.float16" and got["device"] == "cpu"
    assert got["np_scalar"] == 2.5 and got["np_array"].tolist() == [0, 1, 2]
    assert got["set"] == {1, 2} and got["bytes"] == b"\x00\xff"
    assert set(load_state_dict(path)) == set(sd)  # the "state_dict" wrapper is taken off


def test_big_endian_byteorder(tmp_path):
    """A zip checkpoint whose byteorder file says "big" (written on a big-endian host)."""
    path, big = tmp_path / "le.pt", tmp_path / "be.pt"
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                "h": torch.tensor([1.5, -2.0]).bfloat16()}, path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                width = 4 if len(data) == 24 else 2
                data = np.frombuffer(data, f"<u{width}").astype(f">u{width}").tobytes()
            dst.writestr(info, data)
    got = load_checkpoint(big)
    np.testing.assert_array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(got["h"], [1.5, -2.0])


def test_training_checkpoint_selection(tmp_path):
    w, e = {"a.weight": torch.ones(2)}, {"a.weight": torch.zeros(2)}
    path = tmp_path / "train.pt"
    torch.save({"state_dict": w, "ema": {0.9998: e}, "epoch": 3,
                "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}},
                              "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999)}]}}, path)
    np.testing.assert_array_equal(load_state_dict(path)["a.weight"], np.ones(2, np.float32))
    np.testing.assert_array_equal(load_state_dict(path, key="ema")["a.weight"], np.zeros(2))
    with pytest.raises(CheckpointFormatError, match=r"no entry 'nope'.*'state_dict', 'ema'"):
        load_state_dict(path, key="nope")
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "none.pt")
    with pytest.raises(CheckpointFormatError, match="no tensors.*'epoch', 'args'.*--key"):
        load_state_dict(tmp_path / "none.pt")


class _Evil:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "class", "raw-pickle",
                                  "legacy"])
def test_malicious_pickle_is_not_executed(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    make = f"open({str(sentinel)!r}, 'w').close()"
    payload = {"os.system": _Evil(os.system, f"touch {sentinel}"),
               "eval": _Evil(builtins.eval, make), "exec": _Evil(builtins.exec, make),
               "class": argparse.Namespace(lr=0.1)}.get(kind, _Evil(os.system, f"touch {sentinel}"))
    path = tmp_path / "evil.pt"
    ckpt = {"state_dict": {"w": torch.ones(2)}, "extra": payload}
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=kind != "legacy")
    message = "refusing to load.*arbitrary code.*nothing in the file was executed"
    with pytest.raises(UnsafeCheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert {"os.system": "system", "eval": "builtins.eval", "exec": "builtins.exec",
            "class": "argparse.Namespace"}.get(kind, "system") in str(info.value)
    assert not sentinel.exists()
    if kind != "class":  # the file really is malicious: an unrestricted load runs it
        torch.load(path, weights_only=False) if kind != "raw-pickle" \
            else pickle.loads(path.read_bytes())
        assert sentinel.exists()


def test_pickle_cannot_modify_allowed_functions(tmp_path):
    """BUILD on an allowed global would change it for the whole process: refused."""
    from evit_jax.convert import torch_pickle

    path = tmp_path / "build.pt"  # PROTO 2; GLOBAL f; {'evil': 1}; BUILD; STOP
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(dVevil\nI1\nsb.")
    with pytest.raises(CheckpointFormatError, match="state for an object of type function"):
        load_checkpoint(path)
    assert not hasattr(torch_pickle._rebuild_tensor_v2, "evil")


def test_truncated_and_corrupt_files(tmp_path):
    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    for name, legacy in (("zip.pt", False), ("legacy.pt", True)):
        full = tmp_path / f"full-{name}"
        torch.save(sd, full, _use_new_zipfile_serialization=not legacy)
        data = full.read_bytes()
        for cut in (len(data) // 2, len(data) - 10, 40):
            part = tmp_path / name
            part.write_bytes(data[:cut])
            with pytest.raises(TruncatedCheckpointError, match=f"{part}.*truncated or corrupt"):
                load_checkpoint(part)
    # a flipped byte inside a tensor's storage fails the zip's CRC-32
    data = bytearray((tmp_path / "full-zip.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "full-zip.pt") as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("/data/0")))
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:
                                                          info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    data[start + 5] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(data))
    with pytest.raises(TruncatedCheckpointError, match="CRC"):
        load_checkpoint(tmp_path / "flip.pt")
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(TruncatedCheckpointError, match="cut.safetensors.*truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TruncatedCheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_unknown_formats(tmp_path):
    cases = {"random.pt": np.random.default_rng(0).bytes(4096),
             "lfs.bin": b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
             "page.pt": b"<!DOCTYPE html><html><body>Not found</body></html>"}
    hints = {"random.pt": "Supported: PyTorch", "lfs.bin": "Git LFS pointer",
             "page.pt": "web page"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointFormatError, match=hints[name]):
            load_checkpoint(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointFormatError, match="without data.pkl"):
        load_checkpoint(tmp_path / "other.zip")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointFormatError, match="TorchScript archive"):
        load_checkpoint(tmp_path / "scripted.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_safetensors_and_timm_bin(tmp_path):
    from safetensors.torch import save_file

    sd = {"stem.in_conv.conv.weight": torch.randn(8, 3, 3, 3),
          "head.classifier.4.bias": torch.randn(10).bfloat16(),
          "stem.in_conv.norm.num_batches_tracked": torch.tensor(5)}
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    for name in ("model.safetensors", "pytorch_model.bin"):
        got = load_state_dict(tmp_path / name)
        assert set(got) == set(sd)
        for k, t in sd.items():
            assert got[k].dtype == _np(t).dtype
            np.testing.assert_array_equal(got[k], _np(t))


def test_errors_are_user_errors():
    """The CLIs print UserError as one line; existing `except ValueError` keeps working."""
    from evit_jax.cli import UserError
    from evit_jax.convert import CheckpointMismatchError

    for cls in (CheckpointFormatError, TruncatedCheckpointError, UnsafeCheckpointError,
                CheckpointMismatchError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


def test_legacy_storage_view(tmp_path):
    """torch < 1.0 wrote views as (view key, element offset, count) of a root storage."""
    import struct

    from evit_jax.convert.torch_legacy import LEGACY_MAGIC, LEGACY_PROTOCOL

    buf = __import__("io").BytesIO()
    for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    body = (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00"
            b"\x00storagectorch\nFloatStorage\nX\x04\x00\x00\x00rootX\x03\x00\x00\x00cpuK\x06"
            b"(X\x01\x00\x00\x00vK\x02K\x03ttQK\x00(K\x03t(K\x01t\x89NtRs.")
    buf.write(body)
    pickle.dump(["root"], buf, protocol=2)
    buf.write(struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes())
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "old.pt")["w"], [2.0, 3.0, 4.0])


def test_dtype_pickle_cannot_change_numpy(tmp_path):
    """numpy.dtype('f8') is a process-wide singleton: a BUILD must not reach it."""
    path = tmp_path / "dtype.pt"  # dtype('f8') then BUILD with byte order '>'
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl",
                    b"\x80\x02cnumpy\ndtype\n(X\x02\x00\x00\x00f8\x89\x88tR(K\x03X\x01\x00"
                    b"\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    got = load_checkpoint(path)
    assert got == np.dtype(">f8") and np.dtype("f8").str == "<f8"


def test_safetensors_malformed_header_is_not_truncation(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    bad = data.replace(b'"F32"', b'"Q32"')
    (tmp_path / "bad.safetensors").write_bytes(bad)
    with pytest.raises(CheckpointFormatError, match="bad.safetensors.*malformed header") as e:
        load_checkpoint(tmp_path / "bad.safetensors")
    assert not isinstance(e.value, TruncatedCheckpointError)
