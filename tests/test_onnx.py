"""ONNX export (jax2onnx) checked in ONNX Runtime against the JAX models on the same inputs.

Default run (~26 s): b0 at 64 px through the CLI, seg-b0 at 64x96, the SAM-L0 prompt
decoder and encoder. `-m slow`: every zoo model (small inputs for cls / seg).
"""

import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="ONNX export needs jax2onnx: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="validation needs onnxruntime: pip install -e '.[onnx]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import evit_jax  # noqa: E402
from evit_jax.bench.programs import random_variables  # noqa: E402
from evit_jax.deploy.onnx import (  # noqa: E402
    export_onnx,
    onnx_program,
    ort_session,
    rel_l2,
    run_onnx,
    to_onnx,
)
from evit_jax.export import main  # noqa: E402
from evit_jax.io import save_variables  # noqa: E402

TOL = 1e-5  # relative L2, float32


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_cls_cli_dynamic_batch_matches_jax(tmp_path, capsys):
    name = "efficientvit-b0"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=1)
    save_variables(variables, tmp_path / "vars", model=name)
    out = tmp_path / "b0.onnx"
    assert main(["--format", "onnx", "--model", name, "--weights", str(tmp_path / "vars"),
                 "--out", str(out), "--resolution", "64"]) == 0
    assert "input [Nx3x64x64] -> logits [Nx1000]" in capsys.readouterr().out
    sess = ort_session(out)
    x = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
    ref = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))  # unfused, NHWC
    for batch in (1, 3):  # one graph, any batch
        (got,) = run_onnx(sess, [x[:batch].transpose(0, 3, 1, 2)])
        assert got.shape == (batch, 1000)
        assert rel_l2(got, ref[:batch]) < TOL


def test_seg_nchw_logits_match_jax():
    name = "efficientvit-seg-b0-cityscapes"
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=2)
    proto = export_onnx(name, variables, resolution=(64, 96))
    assert _dims(proto.graph.input[0]) == ["N", 3, 64, 96]
    assert [n.op_type for n in proto.graph.node].count("Conv") > 0
    assert not [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]  # portable
    x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
    ref = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    (got,) = run_onnx(ort_session(proto), [x.transpose(0, 3, 1, 2)])
    assert got.shape == (2, 19, 8, 12)
    assert rel_l2(got, ref.transpose(0, 3, 1, 2)) < TOL


@pytest.fixture(scope="module")
def sam_l0():
    name = "efficientvit-sam-l0"
    model = evit_jax.create_model(name)
    return name, model, random_variables(model, seed=3)


def _as_predictor_pads(coords: np.ndarray, labels: np.ndarray) -> tuple:
    """The tokens the exported decoder runs for ONNX inputs: `prompts.append_padding_point`
    in numpy terms (the padding point on rows with clicks, no box, no -1 of their own)."""
    lab = labels.astype(np.int32)
    pad = (np.isin(lab, (0, 1)).any(-1) & ~np.isin(lab, (2, 3)).any(-1)
           & ~(lab == -1).any(-1))
    extra = np.where(pad, -1, -2)[:, None]
    return (np.concatenate([coords, np.zeros_like(coords[:, :1])], 1),
            np.concatenate([lab, extra], 1))


def test_sam_decoder_matches_jax_and_predictor_postprocessing(sam_l0):
    from evit_jax.sam.predictor import postprocess
    from evit_jax.sam.transforms import postprocess_matrices, preprocess_shape
    name, model, variables = sam_l0
    image_size = (30, 45)
    program = onnx_program(name, variables, part="decoder", image_size=image_size, points=4)
    proto = to_onnx(program)
    assert [i.name for i in proto.graph.input] == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    assert [o.name for o in proto.graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    assert _dims(proto.graph.input[1]) == ["B", 4, 2]
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(1, 256, 64, 64)).astype(np.float32)
    # A click, a box (two corners) + click, a click with a mask prompt; padded with -2.
    coords = (rng.random((3, 4, 2)) * 1000).astype(np.float32)
    labels = np.array([[1, -2, -2, -2], [2, 3, 0, -2], [1, 0, -1, -2]], np.float32)
    mask_in = rng.normal(size=(3, 1, 256, 256)).astype(np.float32)
    has_mask = np.array([0, 0, 1], np.float32)
    masks, iou, low = run_onnx(ort_session(proto), [emb, coords, labels, mask_in, has_mask])
    ref_low, ref_iou = jax.jit(lambda *a: model.apply(variables, *a, method="predict_masks"))(
        jnp.asarray(emb.transpose(0, 2, 3, 1)), *_as_predictor_pads(coords, labels),
        mask_in[:, 0], has_mask > 0)
    assert low.shape == (3, 4, 256, 256) and iou.shape == (3, 4)
    assert rel_l2(low, ref_low) < TOL and rel_l2(iou, ref_iou) < TOL
    mh, mw = postprocess_matrices(256, 1024, preprocess_shape(*image_size, 1024), image_size)
    ref_masks = np.asarray(postprocess(ref_low, mh, mw, return_logits=True))
    assert masks.shape == (3, 4, *image_size)
    assert rel_l2(masks, ref_masks) < TOL
    away = np.abs(ref_masks) > 1e-3 * np.abs(ref_masks).max()  # away from the threshold
    assert np.array_equal((masks > 0)[away], (ref_masks > 0)[away])


def test_sam_decoder_dynamic_points_and_padding_are_exact(sam_l0):
    """One export with a dynamic P (the default) serves prompts of any length, each as JAX
    decodes it; a prompt padded with label -2 decodes as the unpadded one does."""
    name, model, variables = sam_l0
    proto = export_onnx(name, variables, part="decoder")
    assert _dims(proto.graph.input[1]) == ["B", "P", 2]
    sess = ort_session(proto)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(1, 256, 64, 64)).astype(np.float32)
    decode = jax.jit(lambda *a: model.apply(variables, *a, method="predict_masks"))
    feed = lambda c, lab: [emb, c, lab, np.zeros((1, 1, 256, 256), np.float32),
                           np.zeros(1, np.float32)]
    coords = np.array([[[300.0, 400.0], [0.0, 0.0]]], np.float32)
    short = run_onnx(sess, feed(coords, np.array([[1, -1]], np.float32)))
    padded = np.concatenate([coords, np.zeros((1, 3, 2), np.float32)], axis=1)
    long = run_onnx(sess, feed(padded, np.array([[1, -1, -2, -2, -2]], np.float32)))
    for a, b in zip(short, long):
        assert rel_l2(b, a) < TOL
    for p in (1, 7):  # lengths the export never saw, against JAX
        c = (rng.random((2, p, 2)) * 1000).astype(np.float32)
        lab = rng.integers(0, 4, (2, p)).astype(np.float32)
        iou, low = run_onnx(sess, feed(c, lab)[:3] + [np.zeros((2, 1, 256, 256), np.float32),
                                                      np.zeros(2, np.float32)])
        ref_low, ref_iou = decode(jnp.asarray(emb.transpose(0, 2, 3, 1)),
                                  *_as_predictor_pads(c, lab),
                                  np.zeros((2, 256, 256), np.float32), np.zeros(2, bool))
        assert low.shape == (2, 4, 256, 256)
        assert rel_l2(low, ref_low) < TOL and rel_l2(iou, ref_iou) < TOL


def test_sam_decoder_equals_predictor_for_every_prompt_kind(sam_l0):
    """The contract a caller relies on (docs/deploy.md, the worked example): prompts fed as
    plain tokens in the 1024 frame, clicks with no padding point, give `SamPredictor`'s
    masks, IoUs and low-res logits, for clicks, a box, a box with clicks, clicks with a mask
    prompt, and clicks padded as segment-anything's ONNX example pads them. (Without the
    padding the decoder appends, a click-only prompt was off by 0.11 in IoU.)"""
    from evit_jax.sam import SamPredictor

    name, model, variables = sam_l0
    h, w = 120, 160
    image = np.random.default_rng(6).integers(0, 256, (h, w, 3), dtype=np.uint8)
    p = SamPredictor(model, variables)
    p.set_image(image)
    emb = np.asarray(p.get_image_embedding()).transpose(0, 3, 1, 2)  # NCHW, as the encoder's
    sess = ort_session(export_onnx(name, variables, part="decoder", image_size=(h, w)))
    clicks, fg_bg, box = np.array([[50.0, 60.0], [100.0, 30.0]]), np.array([1, 0]), \
        np.array([30.0, 20.0, 120.0, 100.0])
    low_prev = p.predict(clicks[:1], fg_bg[:1], multimask_output=False)[2]

    def frame(xy):  # original pixels -> the 1024 prompt frame (ResizeLongestSide)
        return p.transform.apply_coords(np.asarray(xy, np.float64), (h, w)).astype(np.float32)

    cases = {  # name: (ONNX tokens, labels, mask_input, SamPredictor.predict arguments)
        "one click": ([clicks[0]], [1], None, dict(point_coords=clicks[:1],
                                                    point_labels=fg_bg[:1])),
        "two clicks": (clicks, fg_bg, None, dict(point_coords=clicks, point_labels=fg_bg)),
        "box": (box.reshape(2, 2), [2, 3], None, dict(box=box)),
        "box + clicks": (np.concatenate([clicks, box.reshape(2, 2)]), [1, 0, 2, 3], None,
                         dict(point_coords=clicks, point_labels=fg_bg, box=box)),
        "click + mask": ([clicks[0]], [1], low_prev, dict(point_coords=clicks[:1],
                                                         point_labels=fg_bg[:1],
                                                         mask_input=low_prev)),
        "segment-anything padding": (np.concatenate([clicks, [[0.0, 0.0]]]), [1, 0, -1],
                                     None, dict(point_coords=clicks, point_labels=fg_bg)),
    }
    for kind, (xy, lab, mask, kwargs) in cases.items():
        coords = frame(xy)[None]
        if kind == "segment-anything padding":
            coords[0, -1] = 0.0  # the padding point stays (0, 0), unscaled
        feed = [emb, coords, np.asarray(lab, np.float32)[None],
                np.zeros((1, 1, 256, 256), np.float32) if mask is None else mask[None],
                np.array([0.0 if mask is None else 1.0], np.float32)]
        masks, iou, low = run_onnx(sess, feed)
        for multimask, sl in ((True, slice(1, 4)), (False, slice(0, 1))):
            ref_m, ref_iou, ref_low = p.predict(**kwargs, multimask_output=multimask,
                                                return_logits=True)
            assert np.abs(iou[0, sl] - ref_iou).max() < 1e-4, (kind, multimask)
            assert rel_l2(low[0, sl], ref_low) < TOL, (kind, multimask)
            assert rel_l2(masks[0, sl], ref_m) < TOL, (kind, multimask)


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    name = "efficientvit-b0"
    save_variables(random_variables(evit_jax.create_model(name), seed=0), tmp_path / "v",
                   model=name)
    base = ["--format", "onnx", "--model", name, "--weights", str(tmp_path / "v"),
            "--out", str(tmp_path / "x.onnx")]
    assert main(base + ["--part", "decoder"]) != 0
    assert "has no parts" in capsys.readouterr().err
    assert main(base + ["--dtype", "bfloat16"]) != 0
    assert "float32" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_sam_encoder_matches_jax(sam_l0):
    name, model, variables = sam_l0
    proto = export_onnx(name, variables, part="encoder")
    assert _dims(proto.graph.input[0]) == ["N", 3, 512, 512]
    x = np.random.default_rng(6).normal(size=(1, 512, 512, 3)).astype(np.float32)
    ref = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))(variables, x)
    (got,) = run_onnx(ort_session(proto), [x.transpose(0, 3, 1, 2)])
    assert got.shape == (1, 256, 64, 64)
    assert rel_l2(got, np.asarray(ref).transpose(0, 3, 1, 2)) < TOL


ZOO = sorted({evit_jax.model_info(n).name for n in evit_jax.list_models()})


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model(name):
    """Every model in ONNX Runtime (cls / seg at a small input; SAM encoder and decoder)."""
    info = evit_jax.model_info(name)
    model = evit_jax.create_model(name)
    variables = random_variables(model, seed=7)
    parts = ["encoder", "decoder"] if info.task == "sam" else [None]
    for part in parts:
        kw = {"part": part} if part else {"resolution": (128, 128)}
        program = onnx_program(name, variables, **kw)
        inputs = program.example_inputs({"N": 1, "B": 2, "P": 6})
        if part == "decoder":
            inputs[1] = np.abs(inputs[1]) * 300
            inputs[2] = np.tile(np.array([[1, 0, 2, 3, -1, -2]], np.float32), (2, 1))
        ref = jax.jit(program.fn)(*inputs)
        got = run_onnx(ort_session(to_onnx(program)), inputs)
        for g, r in zip(got, ref):
            assert rel_l2(g, r) < TOL, (name, part)
