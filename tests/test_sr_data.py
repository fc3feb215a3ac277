"""SR data: window degradation == whole-image degradation, pairing, the grain pipeline."""

import numpy as np
import pytest
from evit_jax.configs import sr_demo
from evit_jax.train.datasets.sr import degrade_window, dihedral, open_sr_source
from evit_jax.train.tasks import get_task
from PIL import Image

from evit_jax.sr.pairs import degrade, mod_crop, pair_lr_files


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_window_degradation_equals_whole_image(scale):
    rng = np.random.default_rng(scale)
    hr = mod_crop(rng.integers(0, 256, (50, 47, 3), dtype=np.uint8), scale)
    whole = degrade(hr, scale)
    p = 4 * scale
    for top, left in [(0, 0), (scale, 2 * scale), (hr.shape[0] - p, hr.shape[1] - p),
                      (2 * scale, hr.shape[1] - p)]:
        got = degrade_window(hr, top, left, p, scale)
        np.testing.assert_array_equal(got, whole[top // scale:(top + p) // scale,
                                                 left // scale:(left + p) // scale])


def test_dihedral_gives_eight_distinct_views():
    x = np.arange(12).reshape(3, 4, 1)
    views = {dihedral(x, k).tobytes() + bytes(dihedral(x, k).shape) for k in range(8)}
    assert len(views) == 8


def test_folder_with_lr_dir_and_pairing_errors(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR").mkdir()
    hr = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(hr).save(tmp_path / "HR" / "0001.png")
    Image.fromarray(degrade(hr, 2)).save(tmp_path / "LR" / "0001x2.png")
    data = sr_demo.get_config("runlocal").data
    data.name, data.lr_dir = f"images:{tmp_path / 'HR'}", str(tmp_path / "LR")
    src, decode = open_sr_source(data, "validation", 2)  # no split folder: the folder itself
    got_hr, got_lr = decode(src[0])
    np.testing.assert_array_equal(got_hr, hr)
    np.testing.assert_array_equal(got_lr, degrade(hr, 2))
    with pytest.raises(FileNotFoundError, match="0001x3"):
        pair_lr_files([str(tmp_path / "HR" / "0001.png")], tmp_path / "LR", 3)


def test_pipeline_is_deterministic_checkpointable_and_paired():
    c = sr_demo.get_config("tiny,runlocal")
    c.input.sr_augment = False
    data = get_task("sr").make_data(c)
    first = next(data.train)
    assert first["lr"].shape == (8, 16, 16, 3) and first["hr"].shape == (8, 32, 32, 3)
    assert first["lr"].dtype == np.float32 and 0 <= first["hr"].min() <= first["hr"].max() <= 1
    # Each LR patch is the degradation of its HR patch (interior pixels: the patch borders
    # of the whole-image degradation see the pixels around the patch).
    for lr, hr in zip(first["lr"], first["hr"], strict=True):
        own = degrade(np.round(hr * 255).astype(np.uint8), 2)
        np.testing.assert_array_equal(np.round(lr * 255)[3:-3, 3:-3], own[3:-3, 3:-3])
    state = data.train.get_state()
    nxt = next(data.train)
    again = get_task("sr").make_data(c)
    again.train.set_state(state)
    np.testing.assert_array_equal(next(again.train)["hr"], nxt["hr"])
    ev = list(data.eval_dataset)
    assert len(ev) == data.eval_length == 2
    assert ev[0]["lr"].dtype == np.uint8 and ev[0]["hr"].shape == (64, 64, 3)
    # Two hosts see disjoint halves of each global batch, in order.
    h0, h1 = get_task("sr").make_data(c, 0, 2), get_task("sr").make_data(c, 1, 2)
    both = np.concatenate([next(h0.train)["hr"], next(h1.train)["hr"]])
    np.testing.assert_array_equal(both, first["hr"])


def test_tfds_div2k_by_name_has_the_features_we_read(tmp_path):
    """`data.name = "div2k/bicubic_x2"` is tfds's catalogue entry (its metadata is in the
    package, no download): the reader takes its `hr` and `lr` image features."""
    tfds = pytest.importorskip("tensorflow_datasets")
    for scale in (2, 3, 4):
        features = tfds.builder(f"div2k/bicubic_x{scale}", data_dir=tmp_path).info.features
        assert {"hr", "lr"} <= set(features.keys())
        assert features["hr"].shape == (None, None, 3) == features["lr"].shape


def test_unprepared_tfds_dataset_is_a_clear_error_not_a_download(tmp_path):
    """An unprepared tfds name fails at once with the command that prepares it (tfds would
    otherwise try to download it: minutes of retries on a machine without internet)."""
    pytest.importorskip("tensorflow_datasets")
    from evit_jax.train.datasets.sources import tfds_source
    with pytest.raises(ValueError, match=r"not prepared .*tfds build div2k/bicubic_x2"):
        tfds_source("div2k/bicubic_x2", "train", str(tmp_path))
    with pytest.raises(ValueError, match="no dataset 'no_such_dataset'"):
        tfds_source("no_such_dataset", "train", str(tmp_path))
