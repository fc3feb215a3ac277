"""`jax.export` round trip: the artifact reloads and reproduces the in-memory model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
from evit_jax.bench.programs import random_variables
from evit_jax.export import export_model, load_exported, main, save_exported
from evit_jax.io import save_variables
from evit_jax.zoo import MODELS
from tests.helpers import rel_l2


@pytest.fixture(scope="module")
def seg_b0():
    name = "efficientvit-seg-b0-cityscapes"
    model = evit_jax.create_model(name)
    return name, model, random_variables(model, seed=4)


def test_round_trip_with_symbolic_batch(seg_b0, tmp_path):
    name, model, variables = seg_b0
    exp = export_model(name, variables, resolution=(64, 96))
    path = save_exported(exp, tmp_path / "seg.jaxexport")
    loaded = load_exported(path)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    x = np.random.default_rng(0).normal(size=(3, 64, 96, 3)).astype(np.float32)
    ref = jax.jit(model.apply)(variables, jnp.asarray(x))  # per-image: batch-independent
    for batch in (1, 3):  # one artifact, any batch
        out = loaded.call(x[:batch])
        assert out.shape == (batch, 8, 12, 19)
        assert rel_l2(out, ref[:batch]) < 1e-5


def test_cli_from_a_variables_directory(tmp_path, capsys):
    name = "efficientvit-b0"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=5)
    save_variables(variables, tmp_path / "vars", model=name)
    out = tmp_path / "b0.jaxexport"
    assert main(["--model", name, "--weights", str(tmp_path / "vars"), "--out", str(out),
                 "--resolution", "32"]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert rel_l2(load_exported(out).call(x), jax.jit(model.apply)(variables, x)) < 1e-5
    # A directory of another model is refused, with a message.
    assert main(["--model", "efficientvit-b1", "--weights", str(tmp_path / "vars"),
                 "--out", str(tmp_path / "x")]) == 1
    assert "holds weights of 'efficientvit-b0'" in capsys.readouterr().err


@pytest.mark.slow  # 30 s: the 512x512 encoder; the export path is the same as above
@pytest.mark.skipif("efficientvit-sam-l0" not in MODELS, reason="no SAM in the zoo yet")
def test_sam_encoder_round_trip(tmp_path):
    name = "efficientvit-sam-l0"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=6)
    loaded = load_exported(save_exported(export_model(name, variables, part="encoder"),
                                         tmp_path / "enc.jaxexport"))
    x = np.random.default_rng(0).normal(size=(1, 512, 512, 3)).astype(np.float32)
    ref = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))(variables, x)
    assert rel_l2(loaded.call(x), ref) < 1e-5


def test_onnx_without_jax2onnx_names_the_command_that_works(tmp_path, capsys, monkeypatch):
    """jax2onnx cannot come with the [onnx] extra (it declares an orbax older than ours), so
    the hint must be the two-step install the Makefile runs, with the version installed."""
    import importlib.metadata
    import re
    import sys

    from evit_jax.deploy.cli import JAX2ONNX, ONNX_INSTALL
    from tests.helpers import ROOT

    assert ONNX_INSTALL == f"pip install 'evit-jax[onnx]' && pip install --no-deps {JAX2ONNX}"
    # The Makefile installs the same pin, and it is the version that passes test_onnx.py here.
    assert re.findall(r"--no-deps '?(jax2onnx==[\d.]+)", (ROOT / "Makefile").read_text()) \
        == [JAX2ONNX]
    try:
        assert importlib.metadata.version("jax2onnx") == JAX2ONNX.split("==")[1]
    except importlib.metadata.PackageNotFoundError:
        pass
    # The extra brings everything else the export imports.
    extra = [r for r in importlib.metadata.requires("evit-jax") if 'extra == "onnx"' in r]
    assert {re.split(r"[<>=!~ ;\[]", r)[0].replace("-", "_") for r in extra} >= {
        "onnx", "onnx_ir", "onnxruntime"}
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` fails
    args = ["--model", "efficientvit-b0", "--weights", str(tmp_path / "none"), "--out",
            str(tmp_path / "b0.onnx"), "--format", "onnx"]
    assert main(args) == 1  # before the (missing) weights are read
    err = capsys.readouterr().err
    assert err == f"evit-export: error: --format onnx needs jax2onnx, not installed here: " \
        f"{ONNX_INSTALL}\n"
    from evit_jax.cli import UserError
    from evit_jax.deploy.onnx import onnx_program, to_onnx

    model = evit_jax.create_model("efficientvit-b0")
    program = onnx_program("efficientvit-b0", random_variables(model, seed=0), (32, 32))
    with pytest.raises(UserError, match=re.escape(ONNX_INSTALL)):  # the library says it too
        to_onnx(program)
