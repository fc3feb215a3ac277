"""Tiled upscaling, `evit-sr` and `evit-sr-eval` end to end on weights the test writes."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import evit_jax
from evit_jax.nn.resize import resize
from evit_jax.sr import cli, eval_cli
from evit_jax.sr.pairs import degrade
from evit_jax.sr.upscale import make_upscaler, tiled_upscale


def _local_sr(x: np.ndarray) -> np.ndarray:
    """A local x2 'model': bicubic (4 taps) then a 3x3 box blur; reach ~3 LR pixels."""
    y = resize(jnp.asarray(x, jnp.float32), factor=2, mode="bicubic")
    p = jnp.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = y.shape[1:3]
    return np.asarray(sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9)


def test_tiled_equals_untiled_for_a_local_model():
    lr = np.random.default_rng(0).uniform(0, 1, (45, 38, 3)).astype(np.float32)
    whole = tiled_upscale(_local_sr, lr, 2, tile=None)
    assert whole.shape == (90, 76, 3)
    for tile, overlap in [(16, 12), (20, 16), (32, 16)]:
        tiled = tiled_upscale(_local_sr, lr, 2, tile=tile, overlap=overlap)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, err_msg=f"tile {tile}")
    with pytest.raises(ValueError, match="overlap"):
        tiled_upscale(_local_sr, lr, 2, tile=16, overlap=16)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    name = "efficientvit-sr-w0.75-x2"
    d = tmp_path_factory.mktemp("w") / "sr"
    evit_jax.save_variables(evit_jax.init_variables(evit_jax.create_model(name), 0), d,
                            model=name)
    return name, d


def test_model_tile_covering_the_image_is_exact(weights):
    name, d = weights
    model = evit_jax.create_model(name)
    fn = make_upscaler(model, evit_jax.load_variables(d))
    lr = np.random.default_rng(1).uniform(0, 1, (12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(tiled_upscale(fn, lr, 2, tile=12), fn(lr[None])[0], atol=1e-5)


def test_evit_sr_and_eval_cli(weights, tmp_path, capsys):
    name, d = weights
    rng = np.random.default_rng(2)
    hr_dir = tmp_path / "HR"
    hr_dir.mkdir()
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(hr).save(hr_dir / "a.png")
    Image.fromarray(degrade(hr, 2)).save(tmp_path / "lr.png")
    out = tmp_path / "out.png"
    args = ["--model", name, "--weights", str(d), "--tile", "8", "--overlap", "4"]
    assert cli.main(args + ["--image", str(tmp_path / "lr.png"), "--out", str(out),
                            "--bicubic", str(tmp_path / "bic.png")]) == 0
    assert np.asarray(Image.open(out)).shape == (24, 24, 3)
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
