"""Augmentation: shapes and range kept, seeded, off when disabled, never in the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
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


def test_the_batch_key_alone_decides_the_fused_augmentation():
    """The fused layers draw with stateless ops from the batch's key: the same key gives the
    same images whatever was augmented in between (as in the parallel tf.data map, where
    threads take batches in any order), another key or another seed gives other images."""
    cfg = build_config(overrides=["augment.background=0.5", "augment.blur=0.2", "augment.noise=5",
                                  "augment.erasing=0.25"]).augment
    x = tf.cast(_batch(), tf.uint8)
    k1, k2 = tf.constant([1, 2], tf.int64), tf.constant([3, 4], tf.int64)
    augment = make_augmenter(cfg, seed=1)
    first = augment(x, k1).numpy()
    other = augment(x, k2).numpy()
    augment(x)  # a stateful key in between changes nothing either
    np.testing.assert_array_equal(augment(x, k1).numpy(), first)
    np.testing.assert_array_equal(make_augmenter(cfg, seed=1)(x, k1).numpy(), first)
    assert np.abs(other - first).max() > 50
    assert np.abs(make_augmenter(cfg, seed=2)(x, k1).numpy() - first).max() > 50


def test_all_requested_layers_are_built():
    cfg = build_config(overrides=[
        "augment.brightness=0.2", "augment.vertical_flip=true", "augment.background=0.5",
        "augment.saturation=0.3", "augment.hue=0.1", "augment.blur=0.2", "augment.noise=5",
        "augment.erasing=0.25"]).augment
    names = [l.name for l in make_augment_layers(cfg, seed=0)]
    assert names == ["random_affine", "random_background", "random_contrast_brightness",
                     "random_saturation_hue", "random_blur", "random_noise", "random_erasing"]
    unfused = dataclasses.replace(cfg, fused=False)
    names = [l.name for l in make_augment_layers(unfused, seed=0)]
    assert names == ["random_flip", "random_rotation", "random_zoom", "random_translation",
                     "random_background", "random_contrast", "random_brightness",
                     "random_saturation", "random_hue", "random_blur", "random_noise",
                     "random_erasing"]
    for aug_cfg in (cfg, unfused):
        for batch in (_batch(), tf.cast(_batch(), tf.uint8)):  # float32 or the cached uint8
            y = make_augmenter(aug_cfg, seed=0)(batch)
            assert y.dtype == tf.float32 and y.shape == batch.shape
            assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255


def test_random_affine_identity_and_flips():
    from rps.augment import RandomAffine

    x = _batch()
    identity = RandomAffine().transforms(tf.constant([1, 2], tf.int64), 4, 32, 32).numpy()
    np.testing.assert_allclose(identity, np.tile([1, 0, 0, 0, 1, 0, 0, 0], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(RandomAffine()(x).numpy(), x.numpy(), atol=1e-3)
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (64, 8, 8, 3)), tf.float32)
    out = RandomAffine(horizontal_flip=True, seed=0)(images).numpy()
    flipped = np.array([np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, images.numpy())])
    kept = np.array([np.allclose(o, i, atol=1e-3) for o, i in zip(out, images.numpy())])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54  # each image once, about half


def test_random_affine_zoom_matches_keras_random_zoom():
    # A fixed zoom-out of 1.6 (range (0.6, 0.6)) must resample exactly as Keras's RandomZoom.
    import keras

    from rps.augment import RandomAffine

    x = _batch()
    ours = RandomAffine(zoom=(0.6, 0.6))(x).numpy()
    keras_zoom = keras.layers.RandomZoom((0.6, 0.6), fill_mode="nearest", seed=0)(x, training=True)
    np.testing.assert_allclose(ours, np.asarray(keras_zoom), atol=1e-2)


def test_random_affine_draws_stay_in_their_ranges():
    import math

    from rps.augment import RandomAffine

    size, n = 128.0, 2000
    centre = (size - 1) / 2

    def matrices(**kwargs):
        t = RandomAffine(seed=3, **kwargs).transforms(tf.constant([1, 2], tf.int64), n, int(size),
                                                      int(size)).numpy()
        return t[:, [0, 1, 3, 4]].reshape(n, 2, 2), t[:, [2, 5]]

    a, _ = matrices(rotation=0.1)  # +/- 36 degrees, pure rotation about the centre
    angles = np.arctan2(a[:, 1, 0], a[:, 0, 0])
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=1e-5)
    assert np.abs(angles).max() <= 0.1 * 2 * math.pi + 1e-5 and np.abs(angles).max() > 0.9 * 0.2 * math.pi
    a, b = matrices(zoom=(-0.2, 0.6))  # the zoom factor is uniform in [0.8, 1.6]
    zooms = a[:, 0, 0]
    assert zooms.min() >= 0.8 - 1e-6 and zooms.max() <= 1.6 + 1e-6 and zooms.std() > 0.15
    np.testing.assert_allclose(a[:, 0, 0], a[:, 1, 1])
    np.testing.assert_allclose(b, centre * (1 - a[:, [0, 1], [0, 1]]), atol=1e-3)  # about the centre
    a, b = matrices(translation=0.1)  # shifts up to 12.8 pixels
    np.testing.assert_allclose(a, np.tile(np.eye(2), (n, 1, 1)), atol=1e-6)
    assert np.abs(b).max() <= 0.1 * size + 1e-4 and np.abs(b).max() > 0.09 * size
    a, _ = matrices(zoom=(0.0, 0.0), width_zoom=(-0.3, 0.3))  # aspect-ratio changes only
    np.testing.assert_allclose(a[:, 1, 1], 1.0, atol=1e-6)
    assert a[:, 0, 0].min() < 0.75 and a[:, 0, 0].max() > 1.25


def test_random_saturation_hue_changes_only_what_it_should():
    from rps.augment import RandomSaturationHue

    x = _batch()
    hsv_in = tf.image.rgb_to_hsv(x / 255.0).numpy()
    desaturated = tf.image.rgb_to_hsv(RandomSaturationHue(saturation=0.3, seed=0)(x) / 255.0).numpy()
    # Exactly HSV saturation scaling: hue and value kept, saturation times one factor per image
    np.testing.assert_allclose(desaturated[..., 2], hsv_in[..., 2], atol=1e-4)
    coloured = desaturated[..., 1] > 0.02
    hue_moved = (desaturated[..., 0] - hsv_in[..., 0] + 0.5) % 1.0 - 0.5
    assert np.abs(hue_moved[coloured]).max() < 1e-3
    ratio = desaturated[..., 1] / np.maximum(hsv_in[..., 1], 1e-3)
    per_image = ratio.reshape(len(ratio), -1)
    np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape), atol=1e-3)
    assert per_image.max() <= 0.3 / 0.7 + 1e-3  # Keras's u / (1 - u), u <= 0.3: desaturates only
    mid = tf.constant(np.random.default_rng(2).uniform(64, 192, (4, 32, 32, 3)), tf.float32)
    luma = np.array([0.213, 0.715, 0.072])  # kept by the rotation (no clipping in mid-range)
    np.testing.assert_allclose(RandomSaturationHue(hue=0.1, seed=0)(mid).numpy() @ luma,
                               mid.numpy() @ luma, atol=0.1)
    rotated = RandomSaturationHue(hue=0.1, seed=0)(x).numpy()
    hsv_out = tf.image.rgb_to_hsv(rotated / 255.0).numpy()
    delta = (hsv_out[..., 0] - hsv_in[..., 0] + 0.5) % 1.0 - 0.5
    saturated = (hsv_in[..., 1] > 0.3) & (hsv_out[..., 1] > 0.3)
    assert np.abs(delta[saturated]).max() <= 0.05 * 1.5 and np.abs(delta[saturated]).max() > 1e-3
    grey = tf.fill([2, 8, 8, 3], 128.0)
    np.testing.assert_allclose(RandomSaturationHue(0.3, 0.1, seed=0)(grey).numpy(), 128.0, atol=1e-3)


def test_random_background_replaces_only_white_pixels():
    from rps.augment import RandomBackground

    # "White" is 240 (above the threshold 235), not 255: a background pixel clipped to 255 then
    # still counts as replaced, so the check holds for every draw, whatever the op-seed state.
    images = np.full((8, 16, 16, 3), 240.0, np.float32)
    images[:, 4:12, 4:12] = 120.0  # the "hand"
    out = RandomBackground(probability=1.0, seed=0)(tf.constant(images)).numpy()
    np.testing.assert_array_equal(out[:, 4:12, 4:12], 120.0)
    assert (out[:, :4] != 240.0).all()  # every background pixel replaced
    assert out[:, :4].reshape(8, -1).mean(axis=1).std() > 10.0  # a different background per image
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


def test_pixel_noise_level_stays_within_its_standard_deviation():
    from rps.augment import RandomPixelNoise

    x = tf.fill([64, 32, 32, 3], 128.0)
    noise = (RandomPixelNoise(6.0, seed=0)(x) - x).numpy().reshape(64, -1)
    per_image = noise.std(axis=1)
    assert per_image.max() <= 6.0 * 1.05 and per_image.max() > 5.0 and per_image.min() < 1.0
    assert abs(noise.mean()) < 0.05


@pytest.mark.parametrize("fused", [True, False])
def test_random_erasing_erases_the_configured_share_of_images_one_rectangle_each(fused):
    # The fused layer and Keras's RandomErasing draw from the same distributions.
    cfg = build_config(overrides=[
        "augment.horizontal_flip=false", "augment.rotation=0", "augment.zoom_in=0",
        "augment.zoom_out=0", "augment.translation=0", "augment.contrast=0",
        "augment.erasing=0.25", f"augment.fused={str(fused).lower()}"]).augment
    assert [l.name for l in make_augment_layers(cfg, seed=0)] == ["random_erasing"]
    x = tf.fill([800, 32, 32, 3], 128.0)
    out = make_augmenter(cfg, seed=0)(x).numpy()
    changed = (out != 128.0).any(axis=-1)  # [800, 32, 32]
    erased = changed.reshape(800, -1).any(axis=1)
    # 0.25 of the images (Keras would erase only 0.125 if given the single factor 0.25)
    assert 0.20 < erased.mean() < 0.30
    areas = []
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.mean() > 0.9  # one rectangle of noise (a few noise pixels may equal 128)
        areas.append(box.size / mask.size)
    # sides sqrt(U[0.02, 0.33]) of 32 pixels, rounded to whole pixels: mean area about 0.17
    assert 0.01 <= min(areas) and max(areas) <= 0.4 and 0.13 < np.mean(areas) < 0.21
    noise = out[changed]  # clip(N(0, 1) x 255, 0, 255): half the values 0
    assert 0.4 < (noise == 0).mean() < 0.6 and noise.max() == 255.0


def test_random_blur_blurs_about_half_factor_of_the_images_and_keeps_flat_ones():
    from rps.augment import RandomBlur

    x = tf.constant(np.random.default_rng(3).uniform(0, 255, (400, 8, 8, 3)), tf.float32)
    out = RandomBlur(0.4, seed=0)(x).numpy()
    changed = np.abs(out - x.numpy()).reshape(400, -1).max(axis=1) > 1e-3
    assert 0.12 < changed.mean() < 0.28  # P(u < U(0, 0.4)) = 0.2
    assert out[changed].std() < x.numpy()[changed].std()  # smoother
    np.testing.assert_allclose(out[~changed], x.numpy()[~changed], atol=1e-3)
    flat = tf.fill([16, 8, 8, 3], 77.0)
    np.testing.assert_allclose(RandomBlur(1.0, seed=0)(flat).numpy(), 77.0, atol=1e-3)


def test_random_contrast_brightness_follows_the_keras_layers():
    from rps.augment import RandomContrastBrightness

    mid = np.random.default_rng(4).uniform(100, 150, (64, 16, 16, 3)).astype(np.float32)
    mean = mid.mean(axis=(1, 2), keepdims=True)
    out = RandomContrastBrightness(contrast=0.2, seed=0)(tf.constant(mid)).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, atol=1e-2)  # mean kept
    factor = np.median(((out - mean) / (mid - mean)).reshape(64, -1), axis=1)
    # one factor per image, checked in pixels (the ratio itself is ill-conditioned where a
    # pixel is within rounding of its image's mean)
    np.testing.assert_allclose(out - mean, factor[:, None, None, None] * (mid - mean), atol=1e-2)
    assert 0.8 - 1e-3 <= factor.min() < 0.85 and 1.15 < factor.max() <= 1.2 + 1e-3
    shifted = RandomContrastBrightness(brightness=0.2, seed=0)(tf.constant(mid)).numpy() - mid
    offsets = shifted.reshape(64, -1)
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:, :1], offsets.shape), atol=1e-3)
    assert np.abs(offsets).max() <= 0.2 * 255 + 1e-3 and np.abs(offsets).max() > 0.15 * 255
    # Keras clips after each step: a large positive offset saturates at 255, a negative one at 0
    both = RandomContrastBrightness(0.2, 0.9, seed=1)(tf.constant(mid * 1.7)).numpy()
    assert both.min() >= 0 and both.max() <= 255 and (both == 255).any() and (both == 0).any()


def test_augmenter_copes_with_batches_where_no_image_is_chosen():
    # blur and background touch only some images; a batch where none is chosen must pass through
    from rps.augment import RandomBackground, RandomBlur

    x = _batch()
    np.testing.assert_array_equal(RandomBlur(1e-9, seed=0)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(RandomBackground(0.0, seed=0)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(RandomBlur(0.5, seed=0)(x[:0]).numpy(), x.numpy()[:0])


def test_mixup_blends_images_and_labels_with_the_same_weight():
    from rps.augment import make_mixup

    assert make_mixup(build_config().augment, seed=0) is None  # off by default
    cfg = build_config(overrides=["augment.mixup=0.4"]).augment
    assert make_mixup(dataclasses.replace(cfg, enabled=False), seed=0) is None
    # Class 0 images are black, class 1 images white: a mixed image's brightness is its
    # label's weight on class 1.
    classes = np.arange(256) % 2
    images = tf.constant(np.broadcast_to(255.0 * classes[:, None, None, None], (256, 4, 4, 3)),
                         tf.float32)
    labels = tf.one_hot(classes, 2)
    mixed_images, mixed_labels = make_mixup(cfg, seed=0)(images, labels)
    assert mixed_images.shape == images.shape and mixed_labels.shape == labels.shape
    x, y = mixed_images.numpy(), mixed_labels.numpy()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)) / 255.0, y[:, 1], atol=1e-4)
    assert x.min() >= 0.0 and x.max() <= 255.0
    # Beta(0.4, 0.4) puts most weights near 0 or 1, but half the pairs cross classes and get
    # soft labels.
    soft = (y.min(axis=1) > 0.01).mean()
    assert 0.1 < soft < 0.5
    again = make_mixup(cfg, seed=0)(images, labels)[1].numpy()
    np.testing.assert_allclose(again, y)  # the config's seed fixes the draws


def test_no_two_draws_of_the_augmentation_layers_are_the_same_stream():
    """Every random draw of every fused layer gets its own op seed. TensorFlow gives two ops
    with the same op seed the same numbers: with op seeds ``seed + k`` the rotation angle of
    RandomAffine (seed s, draw 4) and the choice of images for RandomBackground (seed s + 1,
    draw 3) were equal, so only images rotated one way got a background."""
    from rps.augment import DRAWS_PER_LAYER, TFOpsLayer

    cfg = build_config(overrides=[
        "augment.brightness=0.2", "augment.background=0.5", "augment.saturation=0.3",
        "augment.hue=0.1", "augment.blur=0.2", "augment.noise=5", "augment.erasing=0.25"]).augment
    ops_layers = [l for l in make_augment_layers(cfg, seed=42) if isinstance(l, TFOpsLayer)]
    assert len(ops_layers) == 7
    keys = [(i, k) for i in range(len(ops_layers)) for k in range(DRAWS_PER_LAYER)]
    seeds = [ops_layers[i].op_seed(k) for i, k in keys]
    assert len(set(seeds)) == len(seeds)

    key = tf.constant([42, 7], tf.int64)  # one batch's key, shared by all layers as in the pipeline
    values = tf.stack([ops_layers[i].draw(key, [512], 0.0, 1.0, k) for i, k in keys]).numpy()
    correlation = np.corrcoef(values)
    np.fill_diagonal(correlation, 0.0)
    worst = np.unravel_index(np.abs(correlation).argmax(), correlation.shape)
    # independent streams of 512 numbers: |r| ~ 0.044 standard deviation; 0.25 is 5.6 of them
    assert abs(correlation[worst]) < 0.25, (keys[worst[0]], keys[worst[1]], correlation[worst])


def test_draw_index_beyond_the_layer_budget_is_refused():
    from rps.augment import DRAWS_PER_LAYER, RandomBlur

    with pytest.raises(ValueError, match="draw index"):
        RandomBlur(0.2, seed=1).op_seed(DRAWS_PER_LAYER)


def _white_backed_batch(batch=8, size=48):
    """uint8 images like the renders: a dark square (the hand) on pure white."""
    rng = np.random.default_rng(5)
    images = np.full((batch, size, size, 3), 255, np.uint8)
    images[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = rng.integers(
        40, 200, (batch, size // 2, size // 2, 3))
    return tf.constant(images)


@pytest.mark.parametrize("fused", [True, False])
def test_xla_compiled_arithmetic_gives_the_images_of_the_uncompiled_ops(fused):
    """augment.jit_compile only changes how the arithmetic runs: with the same seed, the
    compiled and the uncompiled augmenter make the same draws, batch after batch, and their
    images differ by float rounding only (docs/experiments.md)."""
    cfg = build_config(overrides=[
        "augment.brightness=0.2", "augment.background=0.5", "augment.saturation=0.3",
        "augment.hue=0.1", "augment.blur=0.5", "augment.noise=5", "augment.erasing=0.25",
        f"augment.fused={str(fused).lower()}"]).augment
    x = _white_backed_batch()
    outputs = {}
    for jit in (True, False):
        # In a tf.function each augmenter's random ops keep their own state.
        augment = tf.function(make_augmenter(dataclasses.replace(cfg, jit_compile=jit), seed=7))
        outputs[jit] = [augment(x).numpy() for _ in range(3)]
    for compiled, plain in zip(outputs[True], outputs[False]):
        assert np.abs(compiled - plain).max() < 0.01
    assert not np.allclose(outputs[True][0], outputs[True][1])  # the draws move on


def test_resize_bilinear_matches_tf_image_resize():
    from rps.augment import resize_bilinear

    small = tf.random.stateless_uniform([3, 4, 4, 3], seed=[1, 2], minval=-80, maxval=80)
    for height, width in ((48, 48), (7, 3), (4, 4), (150, 96)):
        np.testing.assert_allclose(resize_bilinear(small, height, width).numpy(),
                                   tf.image.resize(small, [height, width]).numpy(), atol=1e-3)
