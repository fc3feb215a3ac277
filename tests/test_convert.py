"""`evit-convert` end to end: real checkpoint files -> variables directory -> golden outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
from evit_jax.convert.cli import main
from tests.helpers import PARITY, ROOT, needs_shared, rel_l2


@pytest.fixture(scope="module")
def official_b0(tmp_path_factory, synth) -> tuple[Path, dict]:
    """The authors' layout: a torch.save'd `{"state_dict": ...}` of efficientvit-b0."""
    torch = pytest.importorskip("torch")
    golden = synth.load_golden("efficientvit-b0")
    sd = synth.synthesize(synth.load_schema("efficientvit-b0"), int(golden["seed"]))
    path = tmp_path_factory.mktemp("ckpt") / "efficientvit_b0_r224.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    return path, golden


@pytest.fixture(scope="module")
def timm_b0(tmp_path_factory, synth) -> tuple[Path, dict]:
    """timm's layout: a bare state dict in timm naming, as model.safetensors."""
    from safetensors.numpy import save_file

    golden = synth.load_golden("efficientvit_b0", PARITY / "golden_timm")
    schema = synth.load_schema("efficientvit_b0", PARITY / "schemas_timm")
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file(synth.synthesize(schema, int(golden["seed"])), str(path))
    return path, golden


def _check_golden(name: str, dst: Path, golden: dict) -> None:
    variables = evit_jax.load_variables(dst)
    x = jnp.asarray(golden["input"].astype(np.float32).transpose(0, 2, 3, 1))
    logits = jax.jit(evit_jax.create_model(name).apply)(variables, x)
    assert rel_l2(logits, golden["logits"]) <= 1e-5


@needs_shared
def test_official_checkpoint_with_verify(official_b0, tmp_path, capsys):
    src, golden = official_b0
    dst = tmp_path / "b0"
    assert main(["--model", "efficientvit-b0", "--src", str(src), "--dst", str(dst),
                 "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify (file):  every tensor vs torch's own reading: max relative error 0.0e+00" \
        in out
    assert "verify (model): " in out  # a rel-L2, or "skipped: <why>" without the reference
    assert "efficientvit-b0: 197 tensors" in out and "3.410 M parameters" in out
    assert f"wrote {dst}" in out
    cfg = evit_jax.io.read_config(dst)
    assert cfg["model"] == "efficientvit-b0"
    assert cfg["metadata"]["source_sha256"] == __import__("hashlib").sha256(
        src.read_bytes()).hexdigest()
    _check_golden("efficientvit-b0", dst, golden)


@needs_shared
def test_timm_safetensors(timm_b0, tmp_path):
    src, golden = timm_b0
    assert main(["--model", "efficientvit_b0", "--src", str(src), "--dst",
                 str(tmp_path / "t")]) == 0
    _check_golden("efficientvit_b0", tmp_path / "t", golden)


@needs_shared
def test_wrong_checkpoint_lists_keys(official_b0, tmp_path, capsys):
    src, _ = official_b0
    assert main(["--model", "efficientvit-b1", "--src", str(src), "--dst",
                 str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evit-convert: error: ")
    assert "does not match model 'efficientvit-b1'" in err
    assert "66 missing keys (" in err and "170 shape mismatches (" in err
    assert "backbone.input_stem.op_list.0.conv.weight: checkpoint (8, 3, 3, 3), model " \
        "(16, 3, 3, 3);" in err  # both in the checkpoint's layout
    assert "Traceback" not in err and not (tmp_path / "x").exists()


@needs_shared
def test_mismatch_report_is_one_readable_line_and_a_file(tmp_path, capsys):
    """A b1 checkpoint converted as b0 (as a new user did): one line of a few hundred
    characters (counts, the first keys of each kind, a hint), the full list in a file."""
    from safetensors.numpy import save_file

    from evit_jax.convert import CheckpointMismatchError
    from tests.helpers import synth_case

    sd, _ = synth_case("efficientvit-b1")
    src = tmp_path / "efficientvit_b1_r224.safetensors"
    save_file(sd, str(src))
    assert main(["--model", "efficientvit-b0", "--src", str(src), "--dst",
                 str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 1000, err  # was ~10,000 characters
    assert err.startswith("evit-convert: error: the checkpoint does not match model "
                          "'efficientvit-b0': 66 unexpected keys (backbone.stages.1.op_list.2.")
    assert "; ... 63 more), 170 shape mismatches (" in err and "; ... 167 more)" in err
    assert "Is this the checkpoint of another model?" in err
    report = Path(err.rsplit("The full list: ", 1)[1].strip())
    with pytest.raises(CheckpointMismatchError) as info:  # the same error from the library
        evit_jax.load_variables(src, model="efficientvit-b0")
    e = info.value
    assert e.report_path == report and report.read_text() == e.report()
    lines = report.read_text().splitlines()
    assert lines[1] == "66 unexpected keys (checkpoint keys the model has no place for):"
    assert len(lines) == 1 + 1 + 66 + 1 + 170 and "missing keys" not in report.read_text()
    assert {x.strip() for x in lines[2:68]} == set(e.unexpected) and len(e.mismatched) == 170
    assert "  backbone.input_stem.op_list.0.conv.weight: checkpoint (16, 3, 3, 3), model " \
        "(8, 3, 3, 3) (at params/backbone/input_stem/op_list_0/conv/kernel (3, 3, 3, 8))" \
        in lines
    # A small mismatch is whole on its line: no file.
    small = dict(sd)
    small.pop("backbone.input_stem.op_list.0.conv.weight")
    with pytest.raises(CheckpointMismatchError) as info:
        evit_jax.convert_state_dict("efficientvit-b1", small)
    assert info.value.report_path is None and str(info.value) == (
        "the checkpoint does not match model 'efficientvit-b1': 1 missing key "
        "(params/backbone/input_stem/op_list_0/conv/kernel)")


@needs_shared
def test_user_errors(official_b0, tmp_path, capsys):
    src, _ = official_b0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(src.read_bytes()[:5000])
    cases = [(["--src", str(tmp_path / "nope.pt")], "nope.pt: no such checkpoint file"),
             (["--dst", str(tmp_path / "full")], "already exists and is not empty"),
             (["--src", str(broken)], "broken.pt: the file is truncated or corrupt")]
    for extra, message in cases:
        argv = dict(zip(["--model", "--src", "--dst"],
                        ["efficientvit-b0", str(src), str(tmp_path / "new")]))
        argv.update(dict(zip(extra[::2], extra[1::2])))
        assert main([s for kv in argv.items() for s in kv]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name, key, fix", [
    ("efficientvit-b0", "stem.in_conv.conv.weight", "efficientvit_b0"),
    ("efficientvit_b0", "backbone.input_stem.op_list.0.conv.weight", "efficientvit-b0"),
    ("efficientvit-seg-b0-cityscapes", "stages.0.blocks.0.main.conv.weight", "no zoo entry"),
])
def test_key_style_must_match_the_entry(name, key, fix):
    """timm's keys under an official name would convert and compute with the wrong LiteMLA
    eps (and the other way round): refused, naming the entry to use."""
    with pytest.raises(evit_jax.convert.CheckpointMismatchError, match=f"key names.*{fix}"):
        evit_jax.convert_state_dict(name, {key: np.zeros((8, 3, 3, 3), np.float32)})


def test_script_unknown_model(tmp_path):
    """The repository script, as a user runs it: a bad name exits 1 with close names."""
    r = subprocess.run([sys.executable, "convert/convert_torch_ckpt.py", "--model",
                        "efficientvit-b9", "--src", "x.pt", "--dst", str(tmp_path / "d")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "unknown model 'efficientvit-b9'; did you mean efficientvit-b" in r.stderr
    assert "Traceback" not in r.stderr


@needs_shared
def test_works_without_torch(official_b0, tmp_path):
    """evit_jax imports and converts a .pt file where torch cannot be imported."""
    src, _ = official_b0
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import evit_jax
from evit_jax.convert.cli import main
args = ["--model", "efficientvit-b0", "--src", {str(src)!r}, "--dst"]
assert main(args + [{str(tmp_path / "a")!r}]) == 0
v = evit_jax.load_variables({str(tmp_path / "a")!r})
assert v["params"]["head"]["op_list_3"]["linear"]["kernel"].shape == (1280, 1000)
assert main(args + [{str(tmp_path / "b")!r}, "--verify"]) == 1
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--verify needs PyTorch" in r.stderr and "pip install 'evit-jax[torch]'" in r.stderr
    assert (tmp_path / "a" / "config.json").is_file() and not (tmp_path / "b").exists()


def _reference_importable(name: str) -> bool:
    try:
        import evstub_boot  # noqa: F401  (the project's CPU set-up of the authors' code)
    except ImportError:
        pass
    try:
        if name == "timm":
            import timm  # noqa: F401
        else:
            import efficientvit.cls_model_zoo  # noqa: F401
    except ImportError:
        return False
    return True


@needs_shared
@pytest.mark.parametrize("which", ["official", "timm"])
def test_verify_model_against_reference(which, official_b0, timm_b0):
    """Tier (b) of --verify: PyTorch reference vs converted Flax model (needs the reference:
    PYTHONPATH=/tmp/evit-ref/stubs:/tmp/evit-ref/src plus timm)."""
    if not _reference_importable("timm" if which == "timm" else "efficientvit"):
        pytest.skip("reference PyTorch implementation not importable")
    from evit_jax.convert.readers import load_state_dict
    from evit_jax.convert.verify import verify_model

    name, (src, _) = ("efficientvit_b0", timm_b0) if which == "timm" \
        else ("efficientvit-b0", official_b0)
    sd = load_state_dict(src)
    err, note = verify_model(name, sd, evit_jax.convert_state_dict(name, sd))
    assert err is not None and err <= 1e-5, note
