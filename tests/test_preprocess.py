"""The shared preprocessing function: eager and tf.data agree; any input becomes uint8 RGB."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rps.preprocess import load_image

from conftest import make_image


@pytest.mark.parametrize("mode, suffix", [("RGB", "png"), ("RGBA", "png"), ("L", "png"),
                                          ("RGB", "jpg"), ("P", "png"), ("RGB", "bmp")])
def test_any_mode_becomes_uint8_rgb(tmp_path, mode, suffix):
    path = make_image(tmp_path / f"x.{suffix}", 1, seed=0, size=40, mode=mode)
    image = load_image(str(path), 24)
    assert image.shape == (24, 24, 3) and image.dtype == tf.uint8


def test_eager_and_dataset_map_agree(tmp_path):
    paths = [str(make_image(tmp_path / f"{i}.jpg", i % 3, seed=i, size=60)) for i in range(4)]
    eager = np.stack([load_image(p, 32).numpy() for p in paths])
    mapped = np.stack(list(tf.data.Dataset.from_tensor_slices(paths)
                           .map(lambda p: load_image(p, 32)).as_numpy_iterator()))
    np.testing.assert_array_equal(eager, mapped)


def test_resize_is_antialiased_average(tmp_path):
    from PIL import Image

    checker = np.indices((64, 64)).sum(0) % 2 * 255  # 1-pixel checkerboard
    path = tmp_path / "c.png"
    Image.fromarray(np.stack([checker] * 3, -1).astype(np.uint8)).save(path)
    small = load_image(str(path), 16).numpy()
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 3  # averaged, not aliased
