"""The benchmark: programs for every zoo model, a measured row, the CLI, MAC counts against
the papers, and the pure parts of the side-by-side runner (the runner itself needs the
reference PyTorch and is left out of the default suite)."""

import json

import jax
import numpy as np
import pytest

import evit_jax
from evit_jax.bench import count_macs, make_program, measure
from evit_jax.bench.cli import (
    build_parser,
    cases,
    expand_models,
    format_table,
    main,
)
from evit_jax.bench.compare import TARGETS, Case, format_rows, parse_case, parse_env, summarise
from evit_jax.bench.macs import count_program_macs
from evit_jax.bench.programs import default_resolution, parts_of
from evit_jax.cli import UserError, parse_resolution
from evit_jax.parts import inference_parts
from evit_jax.zoo import abstract_variables


def _family(spec) -> tuple:
    """(task, backbone family `b` / `l` / `xl`)."""
    return spec.task, str(spec.backbone).rstrip("0123456789")


def _traced() -> list:
    """One zoo name per family in the default run (sizes of a family run the same code with
    other widths and depths); every other distinct architecture with -m slow."""
    seen_fam, seen_arch, out = set(), set(), []
    for name in evit_jax.list_models():
        spec = evit_jax.model_info(name)
        arch, fam = (spec.task, spec.backbone, spec.head), _family(spec)
        if arch in seen_arch:
            continue
        seen_arch.add(arch)
        out.append(name if fam not in seen_fam else pytest.param(name, marks=pytest.mark.slow))
        seen_fam.add(fam)
    return out


def test_every_zoo_name_has_bench_cases():
    # Untraced, all names: `evit-bench --model all` expands to a case per name and part at
    # the entry's resolution, and every part builds a program (shapes only, cheap).
    args = build_parser().parse_args(["--model", "all", "--batch", "1", "2",
                                      "--resolution", "64"])
    todo = cases(args)
    names = evit_jax.list_models()
    assert {c[0] for c in todo} == set(names)
    for name in names:
        parts = parts_of(name)
        assert parts == (("encoder", "decoder", "e2e") if evit_jax.model_info(name).task ==
                         "sam" else ("model",))
        mine = [c for c in todo if c[0] == name]
        assert len(mine) == 2 * len(parts)
        sam = len(parts) > 1  # SAM encoders take one size: --resolution does not apply
        assert {c[3] for c in mine} == ({None} if sam else {(64, 64)})
        assert min(default_resolution(name)) >= 64


@pytest.mark.parametrize("name", ["efficientvit-b0", "efficientvit-sam-l0"])
def test_bench_inputs_are_the_parts_shapes(name):
    # One table (evit_jax.parts) defines what evit-bench times and evit-export lowers.
    for part in inference_parts(name).values():
        prog = make_program(name, 3, None, part=part.name, variables={})
        want = part.shapes(3, prog.resolution)
        assert [(x.shape, x.dtype) for x in prog.inputs] == [(w.shape, w.dtype) for w in want]
    with pytest.raises(ValueError, match="has parts"):
        make_program(name, part="nope", variables={})
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_program(name, dtype="float16", variables={})


@pytest.mark.parametrize("name", _traced())
def test_every_zoo_model_has_a_program(name):
    # A trace only (no compile): every part builds, types, and does some work.
    model = evit_jax.create_model(name)
    shapes = abstract_variables(model)
    for part in parts_of(name):
        prog = make_program(name, 2, 64 if part == "model" else None, part=part,
                            variables=shapes)
        assert count_program_macs(prog.fn, prog.variables, *prog.inputs)["total"] > 0


# MACs against the papers' numbers: tests/test_macs.py.


def test_measure_row():
    prog = make_program("efficientvit-b0", batch=2, resolution=32)
    r = measure(prog, iters=3, warmup=1)
    assert r.iters == 3 and len(r.times_ms) == 3
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
    assert r.items_per_s == pytest.approx(2e3 / r.median_ms)
    assert r.macs == count_macs("efficientvit-b0", 32, batch=2)
    assert r.params == sum(x.size for x in jax.tree.leaves(prog.variables["params"]))
    assert r.xla_flops is None or r.xla_flops > 0
    assert r.peak_bytes is None or r.peak_bytes > 4 * r.params
    assert "efficientvit-b0" in format_table([r])


def test_xla_profile(tmp_path, capsys):
    """Per-op kernel time of a compiled program, joined with its HLO: the kinds add up to
    the total, the 1x1 convolutions are matmuls, and the layers are the model's blocks."""
    from evit_jax.bench import xla_profile
    out = tmp_path / "prof.json"
    assert xla_profile.main(["--model", "efficientvit-b0", "--resolution", "64", "--calls",
                             "2", "--json", str(out)]) == 0
    assert xla_profile.main(["--model", "no-such-model"]) == 1  # one line, no traceback
    prof = json.loads(out.read_text())
    kinds = prof["by_kind"]
    assert prof["total_ms"] > 0
    assert sum(k["ms"] for k in kinds.values()) == pytest.approx(prof["total_ms"])
    assert kinds["matmul (1x1 conv, attention, linear)"]["ops"] > 10
    assert any(layer.startswith("EfficientViTCls/backbone/stages_") for layer in prof["by_layer"])
    text = capsys.readouterr().out
    assert "kind of op" in text and "total (kernel time)" in text
    ops = xla_profile.hlo_ops("ENTRY %main {\n  %dot.1 = f32[2,3]{1,0} dot(%a, %b), "
                              'metadata={op_name="jit(f)/M/backbone/stages_1/op_list_2/x"}\n}')
    assert ops["dot.1"].kind.startswith("matmul") and ops["dot.1"].layer.endswith(
        "stages_1/op_list_2")


def test_cli_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["--model", "efficientvit-b0", "--batch", "1", "--resolution", "32",
                 "--iters", "2", "--fuse-bn", "--no-progress", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["fused_bn"] and rows[0]["resolution"] == [32, 32]
    assert "median ms" in capsys.readouterr().out


def test_cli_parsing():
    assert parse_resolution("224") == (224, 224)
    assert parse_resolution("512x1024") == (512, 1024)
    with pytest.raises(Exception, match="resolution"):
        parse_resolution("big")
    assert expand_models(["efficientvit-b1", "*seg-b1*"]) == [
        "efficientvit-b1", "efficientvit-seg-b1-ade20k", "efficientvit-seg-b1-cityscapes"]
    assert len(expand_models(["all"])) == len(evit_jax.list_models())
    with pytest.raises(UserError, match="no zoo model"):
        expand_models(["nothing*"])


def test_compare_pure_parts():
    assert parse_case("efficientvit-b1:224:8") == Case("efficientvit-b1", "model", 8, 224, 224)
    assert parse_case("efficientvit-seg-b1-cityscapes:512x1024:1").width == 1024
    assert parse_case("efficientvit-sam-l0:512:1").part == "encoder"
    with pytest.raises(Exception, match="NAME:RES:BATCH"):
        parse_case("efficientvit-b1")
    assert len(TARGETS) == 5
    assert parse_env("flags:XLA_FLAGS=--a=1;EVIT_FUSE_BN=1") == (
        "flags", {"XLA_FLAGS": "--a=1", "EVIT_FUSE_BN": "1"})
    # Two rounds of two calls: the reference takes 3x as long as evit-jax.
    times = {"evit-jax": [[10.0, 12.0], [11.0, 11.0]], "pytorch": [[30.0, 36.0], [33.0, 33.0]]}
    s = summarise(times, "pytorch")["sides"]
    assert s["evit-jax"]["speedup"] == pytest.approx(3.0)
    assert s["evit-jax"]["speedup_min"] == pytest.approx(3.0)
    assert s["pytorch"]["speedup"] == pytest.approx(1.0)
    row = {"case": "x", "sides": s}
    assert "3.00x" in format_rows([row], "pytorch")
    assert format_rows([row], "pytorch", markdown=True).startswith("| case |")


def test_compare_ort_sides_setup(tmp_path):
    """The parts of `--ort` that need no reference: the stand-ins without onnx, the
    baseline check, and evit-jax's ONNX Runtime side on a checkpoint file of the kind the
    reference side writes (here the b0 parity fixture's weights, saved by torch)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    torch = pytest.importorskip("torch")
    from evit_jax.bench.compare import _stubs_without_onnx
    from evit_jax.bench.compare import main as compare_main
    from evit_jax.bench.worker import ort_runner
    from tests.helpers import has_fixture, synth_case

    stubs = tmp_path / "stubs"
    for name in ("onnx", "onnxruntime", "onnxsim", "torchvision"):
        (stubs / name).mkdir(parents=True)
    (stubs / "evstub_boot.py").write_text("")
    kept = sorted(p.name for p in _stubs_without_onnx(stubs).iterdir())
    assert kept == ["evstub_boot.py", "onnxsim", "torchvision"]

    assert compare_main(["--no-ref", "--ort", "--case", "efficientvit-b0:64:1"]) == 1
    if not has_fixture("efficientvit-b0"):
        pytest.skip("no b0 parity fixture in ../shared")
    sd, _ = synth_case("efficientvit-b0")
    path = tmp_path / "ref.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    run = ort_runner(dict(model="efficientvit-b0", part="model", batch=2, height=64, width=64,
                          state_dict=str(path)), threads=1)
    (logits,) = run()
    assert logits.shape == (2, 1000) and logits.dtype.name == "float32"


def test_compare_sam_pipeline_side(tmp_path):
    """Our side of the SAM pipeline cases on a checkpoint file of the kind the reference side
    writes (the SAM-L0 parity fixture's weights, saved by torch): each part runs, on the
    shared picture and boxes."""
    torch = pytest.importorskip("torch")
    from evit_jax.bench import sam_inputs
    from evit_jax.bench.compare import SAM_PIPELINE
    from evit_jax.bench.compare import main as compare_main
    from evit_jax.bench.worker import sam_pipeline_runner
    from tests.helpers import has_fixture, synth_case

    assert [c.part for c in SAM_PIPELINE] == list(sam_inputs.PARTS)
    assert compare_main(["--no-ref", "--sam-pipeline"]) == 1  # needs the reference side
    # Meaningless combinations stop before any worker starts, with the flag to change.
    assert compare_main(["--ref", str(tmp_path), "--train-step", "--ort"]) == 1
    assert compare_main(["--no-ref", "--case", "efficientvit-b0:64:1",
                         "--ort-profile", str(tmp_path)]) == 1
    img, b = sam_inputs.picture(48, 64), sam_inputs.boxes(48, 64, 5)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and len(np.unique(img)) > 50
    assert b.shape == (5, 4) and (b[:, 2:] > b[:, :2]).all() and (b >= 0).all()
    assert (b[:, 0::2] <= 64).all() and (b[:, 1::2] <= 48).all()
    if not has_fixture("efficientvit-sam-l0"):
        pytest.skip("no SAM-L0 parity fixture in ../shared")
    sd, _ = synth_case("efficientvit-sam-l0")
    path = tmp_path / "ref.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    req = dict(model="efficientvit-sam-l0", height=48, width=64, state_dict=str(path))
    masks, iou, _ = sam_pipeline_runner({**req, "part": "boxes", "batch": 5})()
    assert masks.shape == (5, 1, 48, 64) and iou.shape == (5, 1)
    records = sam_pipeline_runner({**req, "part": "amg", "batch": 2})()
    assert isinstance(records, list)
