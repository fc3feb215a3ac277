"""Fuzzing the checkpoint reader: byte flips, truncations and splices of small valid files
(zip and legacy torch.save, the zip's data.pkl re-zipped with a valid CRC, safetensors),
fixed seeds. Each file must load or fail with a one-line CheckpointFormatError naming it,
within a time and memory bound, in a child capped by RLIMIT_AS (tests/checkpoint_sandbox.py).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_sandbox import read_in_sandbox

CASE_SECONDS = 5.0
PEAK_RSS = 600 << 20
ERRORS = ("CheckpointFormatError", "TruncatedCheckpointError", "UnsafeCheckpointError")


def _bases(d: Path) -> dict[str, bytes]:
    """Small valid checkpoints: torch.save (zip, legacy) and safetensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "norm.running_var": rng.random(4).astype(np.float64),
              "steps": np.arange(3, dtype=np.int64)}
    save_file(arrays, d / "base.safetensors")
    out = {"safetensors": (d / "base.safetensors").read_bytes()}
    torch = pytest.importorskip("torch")
    base = torch.randn(4, 6)
    ckpt = {"state_dict": {**{k: torch.from_numpy(v) for k, v in arrays.items()},
                           "t": base.t(), "view": base[1:, ::2], "h": torch.ones(3).half(),
                           "bf": torch.ones(2).bfloat16()},
            "epoch": 3, "lr": [0.1, 0.01], "name": "run", "ema": {0.999: {"w": torch.ones(2)}}}
    for name, new in (("zip", True), ("legacy", False)):
        buf = io.BytesIO()
        torch.save(ckpt, buf, _use_new_zipfile_serialization=new)
        out[name] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip 1-8 bytes
        for pos in rng.integers(0, len(out), rng.integers(1, 9)):
            out[pos] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del out[int(rng.integers(0, len(out))):]
    elif kind == 2:  # splice: a chunk of the file copied over another place
        n = int(rng.integers(1, 64))
        src, dst = rng.integers(0, max(len(out) - n, 1), 2)
        out[dst: dst + n] = data[src: src + n]
    else:  # insert or delete a few bytes
        pos, n = int(rng.integers(0, len(out))), int(rng.integers(1, 16))
        if rng.integers(2):
            out[pos:pos] = rng.bytes(n)
        else:
            del out[pos: pos + n]
    return bytes(out)


def _rezip_pickle(data: bytes, rng: np.random.Generator) -> bytes:
    """The zip with its data.pkl mutated and the archive rebuilt (valid CRCs), so the
    mutation reaches the unpickler instead of failing the checksum."""
    src, buf = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(info, _mutate(body, rng) if info.filename.endswith("data.pkl")
                         else body)
    return buf.getvalue()


def _cases(d: Path, per_kind: int, seed: int) -> list[Path]:
    bases, paths = _bases(d), []
    for k, kind in enumerate(("zip", "zip-pickle", "legacy", "safetensors")):
        rng = np.random.default_rng([seed, k])
        base = bases[kind.split("-")[0]]
        for n in range(per_kind):
            data = _rezip_pickle(base, rng) if kind == "zip-pickle" else _mutate(base, rng)
            path = d / f"{kind}-{seed}-{n}.bin"
            path.write_bytes(data)
            paths.append(path)
    return paths


def _check(paths: list[Path], timeout: float) -> None:
    report = read_in_sandbox(paths, timeout=timeout)
    bad = [f"{p.name}: {o.kind}: {o.msg[:200]}" for p in paths
           for o in [report.outcomes[str(p)]]
           if not (o.kind == "ok" or (o.kind in ERRORS and o.msg.startswith(str(p))
                                      and "\n" not in o.msg and len(o.msg) < 1500))
           or o.seconds > CASE_SECONDS]
    assert not bad, "\n".join(bad)
    assert report.peak_rss < PEAK_RSS, f"peak RSS {report.peak_rss >> 20} MiB"
    kinds = [o.kind for o in report.outcomes.values()]
    print(f"\n{len(paths)} fuzzed files: {kinds.count('ok')} loaded, "
          f"{len(kinds) - kinds.count('ok')} refused; wall {report.wall:.1f} s, peak RSS "
          f"{report.peak_rss / 2**20:.0f} MiB, slowest "
          f"{max(o.seconds for o in report.outcomes.values()):.3f} s")


def test_fuzz_ci(tmp_path):
    _check(_cases(tmp_path, per_kind=65, seed=0), timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fuzz_slow(tmp_path, seed):
    _check(_cases(tmp_path, per_kind=500, seed=seed), timeout=600)
