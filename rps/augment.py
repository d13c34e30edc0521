"""Random augmentation of training batches with Keras preprocessing layers.

Usage: ``augment = make_augmenter(cfg.augment, seed=cfg.seed)``; then
``dataset.map(lambda x, y: (augment(x), y))``.

Augmentation runs only in the training input pipeline, never inside the model, so the exported
SavedModel and TFLite graphs contain no random ops. Layers are called one by one (not wrapped in
a ``keras.Sequential``), which also works inside ``tf.data`` on the JAX and torch backends.
Layers: https://keras.io/api/layers/preprocessing_layers/image_augmentation/
"""

from __future__ import annotations

from typing import Callable

from keras import layers

from rps.config import AugmentConfig


# "nearest" repeats the border pixels: white background, or the arm continuing off the frame.
# "reflect" (the Keras default) would mirror the hand itself into the frame when zooming out.
FILL_MODE = "nearest"
# Augmentation runs in the input pipeline on float32 pixels whatever the Keras dtype policy:
# under ``train.mixed_precision`` only the model computes in 16-bit floats.
DTYPE = "float32"


class TFOpsLayer(layers.Layer):
    """Base of the augmentation layers written in TensorFlow ops (they run in the ``tf.data``
    pipeline, whatever the Keras backend). ``make_augmenter`` calls their ``call`` directly:
    under ``KERAS_BACKEND=jax`` or ``torch``, ``Layer.__call__`` would convert the pipeline's
    graph tensors into the backend's arrays and fail ("Cannot convert a symbolic tf.Tensor").
    Keras's own preprocessing layers switch to TensorFlow by themselves inside ``tf.data``."""


class RandomBackground(TFOpsLayer):
    """Replace the plain white background of studio renders with a random texture.

    The Rock-Paper-Scissors images are computer renders on pure white; phone photos are not. For
    a share ``probability`` of the images in a batch, pixels whose three channels are all above
    ``threshold`` become a random background: a random base colour plus a smooth random field
    (bilinearly upscaled 4x4 noise) plus fine pixel noise. In the spirit of the "cut, paste and
    learn" compositing of Dwibedi et al. 2017 (https://arxiv.org/abs/1708.01642).

    Input and output: ``float32 [B, H, W, 3]`` pixels 0-255. Uses TensorFlow ops (it runs inside
    the ``tf.data`` pipeline, whatever the Keras backend).
    """

    def __init__(self, probability: float = 0.5, threshold: float = 235.0, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.probability, self.threshold, self.seed = probability, threshold, seed

    def call(self, images, training=True):
        import tensorflow as tf

        if not training:
            return images
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        uniform = lambda s, lo, hi, k: tf.random.uniform(s, lo, hi, seed=None if self.seed is None else self.seed + k)  # noqa: E731
        base = uniform([batch, 1, 1, 3], 0.0, 255.0, 0)
        field = tf.image.resize(uniform([batch, 4, 4, 3], -80.0, 80.0, 1), [height, width])
        grain = uniform(shape, -12.0, 12.0, 2)
        background = tf.clip_by_value(base + field + grain, 0.0, 255.0)
        is_background = tf.reduce_all(images > self.threshold, axis=-1, keepdims=True)
        apply = uniform([batch, 1, 1, 1], 0.0, 1.0, 3) < self.probability
        return tf.where(is_background & apply, background, images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability,
                "threshold": self.threshold, "seed": self.seed}


class RandomPixelNoise(TFOpsLayer):
    """Add Gaussian noise with a random standard deviation in ``[0, stddev]`` pixels per image
    (sensor noise). ``float32 [B, H, W, 3]`` 0-255 in and out. (Keras's ``GaussianNoise`` caps
    ``stddev`` at 1, i.e. works on 0-1 images, and uses one fixed level.)"""

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed

    def call(self, images, training=True):
        import tensorflow as tf

        if not training:
            return images
        level = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], 0.0, self.stddev, seed=self.seed)
        return images + level * tf.random.normal(tf.shape(images), seed=None if self.seed is None else self.seed + 1)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


def make_augment_layers(aug_cfg: AugmentConfig, seed: int) -> list[layers.Layer]:
    """Build the configured augmentation layers, each seeded from ``seed``.

    Order: background first (it finds the white background before other changes move or tint
    it), then geometry, then colour, blur and noise.

    Args:
        aug_cfg: which augmentations and how strong (see ``AugmentConfig``).
        seed: the run's seed; layer ``i`` gets ``seed + i``.

    Returns:
        The layers in application order (possibly empty).
    """
    if not aug_cfg.enabled:
        return []
    seeds = iter(range(seed, seed + 32))  # one distinct seed per layer
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((aug_cfg.horizontal_flip, aug_cfg.vertical_flip))
    value_range = (0, 255)
    candidates = [
        (aug_cfg.background, lambda s: RandomBackground(aug_cfg.background, seed=s, dtype=DTYPE,
                                                        name="random_background")),
        (flip, lambda s: layers.RandomFlip(flip, seed=s, dtype=DTYPE, name="random_flip")),
        (aug_cfg.rotation, lambda s: layers.RandomRotation(
            aug_cfg.rotation, fill_mode=FILL_MODE, seed=s, dtype=DTYPE, name="random_rotation")),
        (aug_cfg.zoom_in or aug_cfg.zoom_out or aug_cfg.aspect, lambda s: layers.RandomZoom(
            (-aug_cfg.zoom_in, aug_cfg.zoom_out),
            (-aug_cfg.zoom_in - aug_cfg.aspect, aug_cfg.zoom_out + aug_cfg.aspect)
            if aug_cfg.aspect else None, fill_mode=FILL_MODE, seed=s, dtype=DTYPE, name="random_zoom")),
        (aug_cfg.translation, lambda s: layers.RandomTranslation(
            aug_cfg.translation, aug_cfg.translation, fill_mode=FILL_MODE, seed=s, dtype=DTYPE,
            name="random_translation")),
        (aug_cfg.contrast, lambda s: layers.RandomContrast(
            aug_cfg.contrast, value_range=value_range, seed=s, dtype=DTYPE, name="random_contrast")),
        (aug_cfg.brightness, lambda s: layers.RandomBrightness(
            aug_cfg.brightness, value_range=value_range, seed=s, dtype=DTYPE, name="random_brightness")),
        (aug_cfg.saturation, lambda s: layers.RandomSaturation(
            aug_cfg.saturation, value_range=value_range, seed=s, dtype=DTYPE, name="random_saturation")),
        (aug_cfg.hue, lambda s: layers.RandomHue(
            aug_cfg.hue, value_range=value_range, seed=s, dtype=DTYPE, name="random_hue")),
        (aug_cfg.blur, lambda s: layers.RandomGaussianBlur(
            aug_cfg.blur, sigma=(0.1, 2.0), value_range=value_range, seed=s, dtype=DTYPE, name="random_blur")),
        (aug_cfg.noise, lambda s: RandomPixelNoise(aug_cfg.noise, seed=s, dtype=DTYPE, name="random_noise")),
    ]
    return [make(next(seeds)) for wanted, make in candidates if wanted]


def make_augmenter(aug_cfg: AugmentConfig, seed: int) -> Callable | None:
    """A function applying the augmentation layers to a batch, or ``None`` when there are none.

    The returned function maps ``float32 [B, H, W, 3]`` pixels in 0-255 to the same shape, dtype
    and range (values are clipped back to 0-255 at the end).
    """
    import tensorflow as tf

    aug_layers = make_augment_layers(aug_cfg, seed)
    if not aug_layers:
        return None

    def augment(images):
        for layer in aug_layers:
            if isinstance(layer, TFOpsLayer):
                images = layer.call(images, training=True)
            else:
                images = layer(images, training=True)
        return tf.clip_by_value(images, 0.0, 255.0)

    return augment
