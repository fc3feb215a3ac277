"""`evit-sr` and `evit-sr-eval` end to end on weights the test writes (tiling itself:
test_sr_tiled.py)."""

import json

import numpy as np
import pytest
from PIL import Image

import evit_jax
from evit_jax.sr import cli, eval_cli
from evit_jax.sr.pairs import degrade


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    name = "efficientvit-sr-w0.75-x2"
    d = tmp_path_factory.mktemp("w") / "sr"
    evit_jax.save_variables(evit_jax.init_variables(evit_jax.create_model(name), 0), d,
                            model=name)
    return name, d


def test_evit_sr_and_eval_cli(weights, tmp_path, capsys):
    name, d = weights
    rng = np.random.default_rng(2)
    hr_dir = tmp_path / "HR"
    hr_dir.mkdir()
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(hr).save(hr_dir / "a.png")
    Image.fromarray(degrade(hr, 2)).save(tmp_path / "lr.png")
    out = tmp_path / "out.png"
    args = ["--model", name, "--weights", str(d), "--tile", "8"]
    assert cli.main(args + ["--image", str(tmp_path / "lr.png"), "--out", str(out),
                            "--bicubic", str(tmp_path / "bic.png")]) == 0
    assert np.asarray(Image.open(out)).shape == (24, 24, 3)
    # Tiles of 8 on a 12 x 12 image vs one call: the same PNG (float32 noise can flip a
    # rounding only exactly at a half grey level).
    assert cli.main(["--model", name, "--weights", str(d), "--tile", "0", "--image",
                     str(tmp_path / "lr.png"), "--out", str(tmp_path / "whole.png")]) == 0
    diff = np.abs(np.asarray(Image.open(out), int)
                  - np.asarray(Image.open(tmp_path / "whole.png"), int))
    assert diff.max() <= 1 and diff.mean() < 1e-3
    assert np.asarray(Image.open(tmp_path / "bic.png")).shape == (24, 24, 3)
    js = tmp_path / "res.json"
    assert eval_cli.main(args + ["--hr", str(hr_dir), "--json", str(js), "--panel",
                                 str(tmp_path / "panel.png"), "--panel-crop", "16"]) == 0
    res = json.load(open(js))
    assert res["images"] == 1 and res["crop_border"] == 2
    assert set(res) >= {"psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"}
    assert np.asarray(Image.open(tmp_path / "panel.png")).shape == (32, 3 * 32 + 8, 3)
    assert "mean (1)" in capsys.readouterr().out
    # User errors: one line, exit 1.
    assert eval_cli.main(args + ["--hr", str(hr_dir), "--scale", "3"]) == 1
    assert "x3" in capsys.readouterr().err
    assert cli.main(["--model", "efficientvit-b0", "--weights", str(d), "--image",
                     str(out), "--out", str(out)]) == 1
    assert "not an SR model" in capsys.readouterr().err
    assert cli.main(args[:4] + ["--tile", "7", "--image", str(out), "--out", str(out)]) == 1
    assert "--tile must be" in capsys.readouterr().err
