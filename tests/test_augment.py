"""Augmentation: shapes and range kept, seeded, off when disabled, never in the model."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rps.augment import make_augment_layers, make_augmenter
from rps.config import build_config


def _batch():
    return tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)), tf.float32)


def test_augmenter_changes_pixels_but_not_shape_or_range():
    augment = make_augmenter(build_config().augment, seed=1)
    x = _batch()
    y = augment(x)
    assert y.shape == x.shape and y.dtype == tf.float32
    assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255
    assert not np.allclose(x.numpy(), y.numpy())


def test_all_requested_layers_are_built():
    cfg = build_config(overrides=[
        "augment.brightness=0.2", "augment.vertical_flip=true", "augment.background=0.5",
        "augment.saturation=0.3", "augment.hue=0.1", "augment.blur=0.2", "augment.noise=5"]).augment
    names = [l.name for l in make_augment_layers(cfg, seed=0)]
    assert names == ["random_background", "random_flip", "random_rotation", "random_zoom",
                     "random_translation", "random_contrast", "random_brightness",
                     "random_saturation", "random_hue", "random_blur", "random_noise"]
    augment = make_augmenter(cfg, seed=0)
    y = augment(_batch())
    assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255


def test_random_background_replaces_only_white_pixels():
    from rps.augment import RandomBackground

    images = np.full((8, 16, 16, 3), 255.0, np.float32)
    images[:, 4:12, 4:12] = 120.0  # the "hand"
    out = RandomBackground(probability=1.0, seed=0)(tf.constant(images)).numpy()
    np.testing.assert_array_equal(out[:, 4:12, 4:12], 120.0)
    assert (out[:, :4] != 255.0).mean() > 0.9  # background replaced
    kept = RandomBackground(probability=0.0, seed=0)(tf.constant(images)).numpy()
    np.testing.assert_array_equal(kept, images)


def test_disabled_gives_none():
    assert make_augmenter(build_config(overrides=["augment.enabled=false"]).augment, 0) is None


def test_works_inside_tf_data_map():
    augment = make_augmenter(build_config().augment, seed=3)
    ds = tf.data.Dataset.from_tensors(_batch()).map(augment)
    assert next(iter(ds)).shape == (4, 32, 32, 3)


def test_augmenter_stays_float32_under_a_mixed_precision_policy():
    # The input pipeline feeds float32 pixels whatever train.mixed_precision says; a layer that
    # followed the global policy computed in bfloat16 and RandomBackground then failed to mix
    # its float32 background in.
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        augment = make_augmenter(build_config().augment, seed=1)
        y = augment(_batch())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == tf.float32
