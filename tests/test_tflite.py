"""TFLite export (jax2tf + TFLite converter) checked in LiteRT against the JAX models.

Default run: b0 at 64 px through the CLI (float32) and with float16 weights, seg-b0 at
64x96 with a batch of 2, and the one-line errors. `-m slow`: every classification, segmentation
and SR architecture of the zoo at a small input, float32 and float16 weights.
"""

import jax
import numpy as np
import pytest

import evit_jax
from evit_jax.bench.programs import random_variables
from evit_jax.export import main
from evit_jax.io import save_variables

TOL = 1e-4  # relative L2, float32
TOL_F16 = 1e-2  # relative L2, float16 weights (float32 math); measured max 5.4e-3 (SR-x3)


def _needs_tflite():
    pytest.importorskip("tensorflow", reason="TFLite export needs TensorFlow: "
                        "pip install -e '.[tflite]'")
    pytest.importorskip("ai_edge_litert", reason="validation needs ai-edge-litert: "
                        "pip install -e '.[tflite]'")


def _jax(model, variables, x):
    return np.asarray(jax.jit(model.apply)(variables, x))  # the unfused model, NHWC


def _builtin_only(interp):
    from evit_jax.deploy.tflite import op_counts
    ops = op_counts(interp)
    assert not [o for o in ops if o.startswith("Flex") or o == "CUSTOM"], ops
    return ops


@pytest.fixture(scope="module")
def b0():
    name = "efficientvit-b0"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=1)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    return name, variables, x, _jax(model, variables, x)


def test_cls_cli_matches_jax(b0, tmp_path, capsys):
    _needs_tflite()
    from evit_jax.deploy.tflite import interpreter, rel_l2, run_tflite
    name, variables, x, ref = b0
    save_variables(variables, tmp_path / "vars", model=name)
    out = tmp_path / "b0.tflite"
    assert main(["--format", "tflite", "--model", name, "--weights", str(tmp_path / "vars"),
                 "--out", str(out), "--resolution", "64"]) == 0
    assert "float32): input [1x64x64x3] -> logits [1x1000]" in capsys.readouterr().out
    interp = interpreter(out, threads=2)
    assert interp.get_signature_list() == {
        "serving_default": {"inputs": ["input"], "outputs": ["logits"]}}
    assert _builtin_only(interp)["DEPTHWISE_CONV_2D"] > 0  # the lax depthwise, as a builtin
    assert rel_l2(run_tflite(interp, x), ref) < TOL


def test_cls_float16_weights(b0):
    """Half the bytes, float32 in and out, within TOL_F16; and no NaN from the attention
    eps (1e-15 would be stored as 0: 0 / 0 wherever a query is all zero)."""
    _needs_tflite()
    from evit_jax.deploy.tflite import export_tflite, interpreter, rel_l2, run_tflite
    name, variables, x, ref = b0
    data = export_tflite(name, variables, resolution=(64, 64), float16=True)
    interp = interpreter(data)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert _builtin_only(interp)["DEQUANTIZE"] > 0  # float16 constants, float32 math
    params = sum(a.size for a in jax.tree.leaves(variables["params"]))
    assert len(data) < 2.4 * params  # float32 would be 4 bytes per parameter
    got = run_tflite(interp, x)
    assert np.isfinite(got).all()
    assert rel_l2(got, ref) < TOL_F16


def test_seg_nhwc_fixed_batch_matches_jax():
    _needs_tflite()
    from evit_jax.deploy.tflite import export_tflite, interpreter, rel_l2, run_tflite
    name = "efficientvit-seg-b0-cityscapes"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=2)
    data = export_tflite(name, variables, resolution=(64, 96), batch=2)
    interp = interpreter(data)
    assert list(interp.get_input_details()[0]["shape"]) == [2, 64, 96, 3]
    _builtin_only(interp)
    x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
    got = run_tflite(interp, x)
    assert got.shape == (2, 8, 12, 19)
    assert rel_l2(got, _jax(model, variables, x)) < TOL


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    """Rejected before the weights are read (the directory does not even exist)."""
    base = ["--format", "tflite", "--weights", str(tmp_path / "none"),
            "--out", str(tmp_path / "x.tflite")]
    cases = [
        (["--model", "efficientvit-sam-l0"], "--format onnx"),
        (["--model", "efficientvit-b0", "--dtype", "bfloat16"], "--float16"),
        (["--model", "efficientvit-b0", "--part", "encoder"], "has no parts"),
        (["--model", "efficientvit-b0", "--image-size", "30x40"], "SAM decoder"),
        (["--model", "efficientvit-b0", "--platform", "cpu"], "stablehlo"),
        (["--model", "efficientvit-b0", "--batch", "0"], "at least 1"),
    ]
    for args, words in cases:
        assert main(base + args) != 0
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (args, err)
    onnx = ["--format", "onnx", "--model", "efficientvit-b0", "--weights",
            str(tmp_path / "none"), "--out", str(tmp_path / "x.onnx"), "--float16"]
    assert main(onnx) != 0
    assert "--float16 is for --format tflite" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _architectures() -> list[str]:
    """One zoo name per cls / seg / SR architecture (entries that differ only in their
    checkpoint's resolution convert to the same graph at a given input)."""
    first: dict[tuple, str] = {}
    for n in evit_jax.list_models():
        s = evit_jax.model_info(n)
        if s.task not in ("sam", "det"):  # TFLite export covers cls / seg / SR
            first.setdefault((s.task, s.backbone, repr(s.head), s.norm_eps, s.attn_eps), s.name)
    return sorted(first.values())


ZOO = _architectures()


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model(name):
    """Every cls / seg / SR architecture in LiteRT at a small input, float32 and float16
    weights."""
    _needs_tflite()
    from evit_jax.deploy.tflite import interpreter, rel_l2, run_tflite, tflite_program, to_tflite
    task = evit_jax.model_info(name).task
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=7)
    res = (32, 48) if task == "sr" else (128, 128)
    x = np.random.default_rng(3).random((1, *res, 3), dtype=np.float32)
    ref = _jax(model, variables, x)
    for float16, tol in ((False, TOL), (True, TOL_F16)):
        program = tflite_program(name, variables, resolution=res, float16=float16)
        interp = interpreter(to_tflite(program))
        _builtin_only(interp)
        err = rel_l2(run_tflite(interp, x), ref)
        print(f"{name} float16={float16} rel_l2={err:.2e}")
        assert err < tol, (name, float16, err)


def test_converter_failure_is_the_only_line_on_stderr(tmp_path):
    """What a user sees when the converter fails: TensorFlow's import notices, absl's
    warnings and the converter's MLIR diagnostics (screens of them) held back; one line
    naming the failing op and where it was traced, the full log in a file. (b0 at 64x32:
    TF 2.21's converter rejects the 1-pixel-wide last stage's batch_matmul.)"""
    _needs_tflite()
    import subprocess
    import sys

    from tests.helpers import ROOT
    name = "efficientvit-b0"
    save_variables(random_variables(evit_jax.create_model(name), seed=1), tmp_path / "vars",
                   model=name)
    r = subprocess.run([sys.executable, "-m", "evit_jax.export", "--format", "tflite",
                        "--model", name, "--weights", str(tmp_path / "vars"), "--resolution",
                        "64x32", "--out", str(tmp_path / "b0.tflite")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr[-3000:])
    assert r.stderr.startswith("evit-export: error: TensorFlow's TFLite converter failed on "
                               "the 64x32 (batch 1) model: 'tfl.batch_matmul' op ")
    assert r.stderr.count("\n") == 1 and "(traced at evit_jax/" in r.stderr, r.stderr
    log = r.stderr.rsplit("Converter log: ", 1)[1].strip()
    assert "batch_matmul" in open(log).read() and not (tmp_path / "b0.tflite").exists()


def test_converter_failure_in_the_library(capfd):
    """The same from `to_tflite`, in-process: nothing reaches file descriptor 2."""
    _needs_tflite()
    from evit_jax.cli import UserError
    from evit_jax.deploy.tflite import TfliteProgram, to_tflite

    def svd(params, x):  # no TFLite builtin computes an SVD
        return jax.numpy.linalg.svd(x[0, :, :, 0])[1][None]

    program = TfliteProgram(svd, {}, lambda x: svd({}, x), (1, 4, 4, 3), "output")
    capfd.readouterr()
    with pytest.raises(UserError, match=r"converter failed on the 4x4 \(batch 1\) model: "
                       r"'tf.XlaCallModule' op is neither a custom op nor a flex op"):
        to_tflite(program)
    assert capfd.readouterr().err == ""
