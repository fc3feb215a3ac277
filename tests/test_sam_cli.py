"""`evit-segment`: clicks, boxes and --auto end to end on a drawn image, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import evit_jax
from evit_jax.sam import amg_utils as U
from evit_jax.sam.cli import main
from tests.helpers import drawn_scene, needs_shared, synth_case

pytestmark = needs_shared  # every test runs the L0 fixture
NAME = "efficientvit-sam-l0"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    sd, _ = synth_case(NAME)
    evit_jax.save_variables(evit_jax.convert_state_dict(NAME, sd), d / "weights", model=NAME)
    Image.fromarray(drawn_scene(96, 128)).save(d / "scene.png")
    return d


def _run(files, *args) -> int:
    return main(["--model", NAME, "--weights", str(files / "weights"),
                 "--image", str(files / "scene.png"), *args])


def test_clicks_write_picture_and_masks(files, capsys):
    out, masks = files / "clicks.png", files / "clicks.npz"
    assert _run(files, "--point", "40,40", "--point", "100,70,0", "--out", str(out),
                "--masks-out", str(masks)) == 0
    text = capsys.readouterr().out
    assert "encode" in text and "decode" in text and "1 mask(s)" in text
    picture = np.asarray(Image.open(out))
    assert picture.shape == (96, 128, 3)
    with np.load(masks) as z:
        assert z["masks"].shape == (1, 96, 128) and z["masks"].dtype == bool
        assert z["scores"].shape == (1,)
        m = z["masks"][0]
    scene = drawn_scene(96, 128)
    # The masks are drawn: tinted pixels inside the mask (away from the click markers).
    changed = np.any(picture != scene, axis=-1)
    assert changed[m].mean() > 0.9 and (changed[~m].mean() < 0.2 if (~m).any() else True)


def test_boxes_in_one_batch_and_json_masks(files):
    out, masks = files / "boxes.png", files / "boxes.json"
    assert _run(files, "--box", "10,10,60,50", "--box", "60,40,120,90", "--out", str(out),
                "--masks-out", str(masks)) == 0
    data = json.loads(masks.read_text())
    assert len(data["masks"]) == 2
    m = U.coco_rle_to_mask(data["masks"][0]["segmentation"])
    assert m.shape == (96, 128) and data["masks"][0]["area"] == int(m.sum())


def test_auto_mode(files, capsys):
    out, masks = files / "auto.png", files / "auto.npz"
    assert _run(files, "--auto", "--points-per-side", "2", "--pred-iou-thresh", "0",
                "--stability-score-thresh", "0", "--out", str(out), "--masks-out",
                str(masks)) == 0
    assert "generate" in capsys.readouterr().out
    with np.load(masks) as z:
        assert z["masks"].shape[1:] == (96, 128) and len(z["masks"]) == len(z["bbox_xywh"])
    assert out.exists()


@pytest.mark.parametrize("args,message", [
    (["--out", "x.png"], "give prompts"),
    (["--point", "1,2,3,4", "--out", "x.png"], "expected 2 or 3"),
    (["--point", "10,10,5", "--out", "x.png"], "LABEL must be 1"),
    (["--point", "500,10", "--out", "x.png"], "outside the 128x96"),
    (["--box", "50,50,10,10", "--out", "x.png"], "x0 <= x1"),
    (["--point", "-5,10", "--out", "x.png"], "outside the 128x96"),  # parsed, then checked
    (["--box", "-50,10,-5,40", "--out", "x.png"], "--box -50,10,-5,40 lies outside the 128x96"),
    (["--box=-1e1,1,-5,40", "--out", "x.png"], "--box -10,1,-5,40 lies outside"),
    (["--auto", "--box", "1,1,5,5", "--out", "x.png"], "no --point / --box"),
    (["--point", "5,5", "--out", "x.jpg"], "write a .png"),
    (["--point", "5,5", "--out", "x.png", "--masks-out", "m.txt"], ".npz or .json"),
])
def test_bad_command_lines_fail_with_a_message(files, capsys, args, message):
    args = [a if not a.endswith((".png", ".jpg", ".txt")) else str(files / a) for a in args]
    assert _run(files, *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("evit-segment: error:") and message in err


def test_bad_model_weights_and_image(files, capsys):
    base = ["--point", "5,5", "--out", str(files / "x.png")]
    assert main(["--model", "efficientvit-b0", "--weights", str(files / "weights"),
                 "--image", str(files / "scene.png"), *base]) == 1
    assert "not a SAM model" in capsys.readouterr().err
    assert main(["--model", "efficientvit-sam-l1", "--weights", str(files / "weights"),
                 "--image", str(files / "scene.png"), *base]) == 1
    assert "holds weights of 'efficientvit-sam-l0'" in capsys.readouterr().err
    assert _run(files, "--point", "5,5", "--out", str(files / "x.png"),
                "--image", str(files / "missing.png")) == 1
    assert "no such image" in capsys.readouterr().err
    assert main(["--model", NAME]) == 2  # argparse: missing required options


def test_authors_checkpoint_file_via_evit_convert(files, tmp_path, capsys):
    """The user's path: the authors' `.pt` -> `evit-convert` -> `evit-segment --weights DIR`,
    and `--weights FILE.pt` converted on the fly, give the same masks."""
    torch = pytest.importorskip("torch")
    from evit_jax.convert.cli import main as convert_main

    sd, _ = synth_case(NAME)
    pt = tmp_path / "efficientvit_sam_l0.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, pt)
    assert convert_main(["--model", NAME, "--src", str(pt), "--dst", str(tmp_path / "ckpt")]) == 0
    outs = []
    for weights in (tmp_path / "ckpt", pt):
        masks = tmp_path / f"{weights.name}.npz"
        assert main(["--model", NAME, "--weights", str(weights), "--image",
                     str(files / "scene.png"), "--box", "10,10,60,50", "--out",
                     str(tmp_path / "x.png"), "--masks-out", str(masks)]) == 0
        with np.load(masks) as z:
            outs.append((z["masks"], z["scores"]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_one_pixel_high_strip_and_zero_prompts(files):
    """A 1x5000 image keeps one row through the resize (it used to round to 0 rows); no
    prompts at all give three empty arrays of the usual ranks."""
    from evit_jax.sam import SamPredictor

    p = SamPredictor(evit_jax.create_model(NAME),
                     evit_jax.load_variables(files / "weights", model=NAME))
    p.set_image(np.full((1, 5000, 3), 128, np.uint8))
    masks, scores, low = p.predict(box=np.array([0, 0, 2500, 0]), multimask_output=False)
    assert masks.shape == (1, 1, 5000) and scores.shape == (1,) and low.shape == (1, 256, 256)
    for multimask, c in ((True, 3), (False, 1)):
        masks, scores, low = p.predict_batch(boxes=np.zeros((0, 4)), multimask_output=multimask)
        assert masks.shape == (0, c, 1, 5000) and masks.dtype == bool
        assert scores.shape == (0, c) and low.shape == (0, c, 256, 256)


def test_negative_numbers_are_values_not_options(files, capsys):
    """`--box -5,10,100,100` (space, not `=`) is a box; one reaching past the image is clipped
    to it, said on stdout, and gives the clipped box's masks."""
    from evit_jax.sam.cli import build_parser

    base = ["--model", NAME, "--weights", "w", "--image", "i.png", "--out", "o.png"]
    args = build_parser().parse_args(base + ["--box", "-5,10,100,100", "--point", "-.5,-2e1",
                                             "--pred-iou-thresh", "-1e-3"])
    assert args.box == ["-5,10,100,100"] and args.point == ["-.5,-2e1"]
    assert args.pred_iou_thresh == -1e-3
    outs = []
    for box in ("-5,10,60,140", "0,10,60,96"):
        masks = files / f"box{len(outs)}.npz"
        assert _run(files, "--box", box, "--out", str(files / "b.png"), "--masks-out",
                    str(masks)) == 0
        with np.load(masks) as z:
            outs.append((z["masks"], z["scores"]))
    out = capsys.readouterr().out
    assert "note: --box -5,10,60,140 reaches past the 128x96 (WxH) image; clipped to " \
        "0,10,60,96" in out and out.count("note:") == 1
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
