"""save_variables / load_variables: round trip, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import evit_jax
from evit_jax import io as evio
from evit_jax.cli import UserError
from evit_jax.convert.keymap import CheckpointMismatchError
from tests.helpers import load_synth, needs_shared


def _variables():
    rng = np.random.default_rng(0)
    return {"params": {"backbone": {"stages_0": {"op_list_0": {
                "kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32),
                "bias": jnp.arange(16, dtype=jnp.float32)}}},
            "head": {"scale": rng.standard_normal(4).astype(ml_dtypes.bfloat16)}},
            "batch_stats": {"bn": {"mean": np.zeros(16, np.float32),
                                   "var": np.ones(16, np.float32)}},
            "counters": {"step": np.array(12, np.int64)}}


def _assert_same(a, b):
    assert isinstance(b, dict) and set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_same(a[k], b[k])
        else:
            ref = np.asarray(a[k])
            assert b[k].dtype == ref.dtype and b[k].shape == ref.shape, k
            np.testing.assert_array_equal(b[k], ref)


def test_round_trip(tmp_path):
    v = _variables()
    out = evit_jax.save_variables(v, tmp_path / "a" / "b", model="efficientvit-b0",
                                  metadata={"source_sha256": "ab" * 32})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "variables.safetensors"]
    (tmp_path / "plain").mkdir()  # permissions as for any new directory (not mkdtemp's 0700)
    mode = (tmp_path / "plain").stat().st_mode
    assert out.stat().st_mode == mode
    assert all(p.stat().st_mode & 0o777 == mode & 0o666 for p in out.iterdir())
    _assert_same(v, evit_jax.load_variables(out))
    cfg = evio.read_config(out)
    assert cfg["model"] == "efficientvit-b0" and cfg["format_version"] == evio.FORMAT_VERSION
    assert cfg["evit_jax_version"] == evit_jax.__version__
    assert cfg["metadata"] == {"source_sha256": "ab" * 32}
    assert cfg["num_tensors"] == 6 and cfg["num_params"] == 3 * 3 * 8 * 16 + 16 + 4
    from safetensors import safe_open

    with safe_open(str(out / "variables.safetensors"), "np") as f:
        assert "params/backbone/stages_0/op_list_0/kernel" in f.keys()


def test_existing_destination(tmp_path):
    v = _variables()
    (tmp_path / "empty").mkdir()
    evit_jax.save_variables(v, tmp_path / "empty")  # an empty directory is fine
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        evit_jax.save_variables(v, tmp_path / "empty")
    v2 = {"params": {"w": np.full(3, 5.0, np.float32)}}
    evit_jax.save_variables(v2, tmp_path / "empty", overwrite=True)
    _assert_same(v2, evit_jax.load_variables(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        evit_jax.save_variables(v, tmp_path / "file", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]  # no temp litter


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, overwrite):
    dst = tmp_path / "out"
    if overwrite:
        evit_jax.save_variables({"params": {"w": np.ones(2, np.float32)}}, dst)
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(self, *a, **k):  # config.json is written after the weights
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        evit_jax.save_variables(_variables(), dst, overwrite=overwrite)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if overwrite:  # the old directory is untouched
        np.testing.assert_array_equal(evit_jax.load_variables(dst)["params"]["w"], np.ones(2))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory.*evit-convert"):
        evit_jax.load_variables(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="not an evit-jax variables directory"):
        evit_jax.load_variables(tmp_path / "plain")
    d = evit_jax.save_variables(_variables(), tmp_path / "v")
    weights = d / "variables.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(ValueError, match="variables.safetensors: corrupt"):
        evit_jax.load_variables(d)
    weights.unlink()
    with pytest.raises(ValueError, match="incomplete"):
        evit_jax.load_variables(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format version 99.*upgrade"):
        evit_jax.load_variables(d)


def _b0_checkpoint(tmp_path) -> Path:
    """A synthetic checkpoint of efficientvit-b0 in the authors' key names (.safetensors)."""
    from safetensors.numpy import save_file

    synth = load_synth()
    sd = synth.synthesize(synth.load_schema("efficientvit-b0"), seed=1)
    path = tmp_path / "b0.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


@needs_shared
def test_one_loader_for_files_directories_and_their_model(tmp_path):
    ckpt = _b0_checkpoint(tmp_path)
    with pytest.raises(UserError, match="is a checkpoint file: name its model"):
        evit_jax.load_variables(ckpt)
    v = evit_jax.load_variables(ckpt, model="efficientvit-b0")  # converted in memory
    assert v["params"]["backbone"] and v["batch_stats"]
    with pytest.raises(CheckpointMismatchError):  # a file records nothing: the keys decide
        evit_jax.load_variables(ckpt, model="efficientvit-b1")
    d = evit_jax.save_variables(v, tmp_path / "conv", model="efficientvit-b0")
    _assert_same(v, evit_jax.load_variables(d, model="efficientvit-b0-r224"))  # same net
    _assert_same(v, evit_jax.load_variables(d / "variables.safetensors"))  # means the dir
    with pytest.raises(UserError, match="holds weights of 'efficientvit-b0', not "
                                        "'efficientvit-b1'.*--model efficientvit-b0"):
        evit_jax.load_variables(d, model="efficientvit-b1")
    with pytest.raises(UserError, match="holds weights of 'efficientvit-b0', not "
                                        "'efficientvit_b0'"):  # timm: other eps
        evit_jax.load_variables(d, model="efficientvit_b0")
    with pytest.raises(ValueError, match="unknown model 'efficientvit-b9'"):
        evit_jax.load_variables(d, model="efficientvit-b9")
    with pytest.raises(NotADirectoryError, match="is a file, not a variables directory"):
        evio.read_config(ckpt)


def test_training_workdir_records_its_model(tmp_path):
    wd = tmp_path / "run"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "run_config.json").write_text(json.dumps({"model": "efficientvit-b0"}))
    assert evio.recorded_model(wd) == "efficientvit-b0"
    with pytest.raises(UserError, match="run holds weights of 'efficientvit-b0', not "
                                        "'efficientvit-seg-b0-cityscapes'"):
        evit_jax.load_variables(wd, model="efficientvit-seg-b0-cityscapes")
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        evit_jax.load_variables(wd, model="efficientvit-b0")
    (wd / "run_config.json").write_text(json.dumps({"model": "efficientvit-b99"}))
    with pytest.raises(UserError, match="a model this evit-jax does not know"):
        evit_jax.load_variables(wd, model="efficientvit-b0")
