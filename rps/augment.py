"""Random augmentation of training batches: Keras preprocessing layers and faster equivalents.

Usage: ``augment = make_augmenter(cfg.augment, seed=cfg.seed)``; then
``dataset.map(lambda x, y, key: (augment(x, key), y))`` with a random key per batch
(``rps.data.make_train_dataset`` does this).

Augmentation runs only in the training input pipeline, never inside the model, so the exported
SavedModel and TFLite graphs contain no random ops. Layers are called one by one (not wrapped in
a ``keras.Sequential``), which also works inside ``tf.data`` on the JAX and torch backends.
Layers: https://keras.io/api/layers/preprocessing_layers/image_augmentation/

By default (``augment.fused``) the geometric transforms, contrast with brightness, saturation
with hue, blur and random erasing are this module's ``RandomAffine``,
``RandomContrastBrightness``, ``RandomSaturationHue``, ``RandomBlur`` and ``RandomErasing``:
they draw their random parameters as the Keras layers do but touch each pixel fewer times, which
cuts the cost of augmenting a batch to about a third (docs/experiments.md).
``augment.fused: false`` uses the Keras layers.

Each of this module's layers splits into its random draws (``draw_params``) and its pixel
arithmetic (``apply``, no random ops). The draws are stateless, a function of the layer's seed
and of a key that comes with each batch, so the parallel ``tf.data`` map augments a batch the
same way whichever thread runs it. ``make_augmenter`` makes the draws as TensorFlow ops and,
under ``augment.jit_compile`` (the default), runs the arithmetic of consecutive layers as one
function compiled by XLA, which fuses their passes over the pixels.
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
# make_augment_layers seeds its layers seed, seed + 1, ..., at most this many; make_mixup takes
# the next seed, so that adding mixup leaves the other layers' draws unchanged.
NUM_LAYER_SEEDS = 32
# A TFOpsLayer with seed s gives its draw k (k < DRAWS_PER_LAYER) the op seed
# s * DRAWS_PER_LAYER + k, so that no two draws of the layers seeded s, s + 1, ... share one.
# The draw's stateless seed is the batch's key with the op seed folded in (TFOpsLayer.draw_seed),
# so a shared op seed would make two draws of the same shape equal, batch after batch. (When
# the draws were stateful ops with op seed s + k, the rotation angle decided which images got a
# background, the hue direction and the blur.)
DRAWS_PER_LAYER = 8


class TFOpsLayer(layers.Layer):
    """Base of the augmentation layers written in TensorFlow ops (they run in the ``tf.data``
    pipeline, whatever the Keras backend). ``make_augmenter`` calls their ``call`` directly:
    under ``KERAS_BACKEND=jax`` or ``torch``, ``Layer.__call__`` would convert the pipeline's
    graph tensors into the backend's arrays and fail ("Cannot convert a symbolic tf.Tensor").
    Keras's own preprocessing layers switch to TensorFlow by themselves inside ``tf.data``."""

    seed: int | None = None
    # apply() is arithmetic that XLA can compile (make_augmenter fuses such layers' arithmetic).
    jit_compatible = True

    def op_seed(self, k: int) -> int | None:
        """The op seed of the layer's draw ``k``: ``seed * DRAWS_PER_LAYER + k`` (None when the
        layer is unseeded). Distinct for every layer seed and every ``k < DRAWS_PER_LAYER``.

        Raises:
            ValueError: ``k`` outside ``[0, DRAWS_PER_LAYER)``.
        """
        if not 0 <= k < DRAWS_PER_LAYER:
            raise ValueError(f"{self.name}: draw index {k} outside [0, {DRAWS_PER_LAYER})")
        return None if self.seed is None else self.seed * DRAWS_PER_LAYER + k

    def draw_seed(self, key, k: int):
        """The stateless seed (``int64 [2]``) of the layer's draw ``k`` for the batch whose key
        is ``key`` (``int64 [2]``): ``key`` with ``op_seed(k)`` (``k`` when unseeded) folded in
        (``tf.random.experimental.stateless_fold_in``), so that no two draws share numbers."""
        import tensorflow as tf

        op_seed = self.op_seed(k)
        return tf.random.experimental.stateless_fold_in(
            tf.cast(key, tf.int64), k if op_seed is None else op_seed)

    def draw(self, key, shape, low, high, k: int = 0):
        """``float32`` uniform numbers in ``[low, high)`` of ``shape``: the layer's ``k``-th draw
        for the batch whose key is ``key`` (``tf.random.stateless_uniform``, seed
        ``draw_seed(key, k)``). The same key gives the same numbers, in any thread order."""
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, self.draw_seed(key, k), low, high)

    def draw_params(self, shape, key) -> dict:
        """The layer's random draws for one batch: a dict of tensors whose first axis is the
        batch (``B``), so that ``apply`` is pure arithmetic that XLA can compile. Stateless:
        a function of ``key`` and the layer's seed only.

        Args:
            shape: ``int32 [4]``, the batch's ``[B, H, W, C]``.
            key: ``int64 [2]``, the batch's random key (``make_augmenter``).
        """
        raise NotImplementedError

    def apply(self, images, params: dict):
        """The layer's pixel arithmetic given ``draw_params``' tensors: no random ops.
        ``float32 [B, H, W, 3]`` in and out."""
        raise NotImplementedError

    def call(self, images, training=True, key=None):
        """``draw_params`` for the batch key ``key`` (``int64 [2]``; ``None``: a fresh key from
        ``stateful_key``), then ``apply``; ``images`` unchanged when not ``training``."""
        import tensorflow as tf

        if not training:
            return images
        key = stateful_key(self.op_seed(0)) if key is None else key
        return self.apply(images, self.draw_params(tf.shape(images), key))


def stateful_key(op_seed: int | None = None):
    """A fresh batch key, ``int64 [2]``, from a stateful random op with op seed ``op_seed``:
    for augmenting outside the training pipeline (previews, a layer called on its own), where
    no key comes with the batch. Each call gives a new key; which one depends on call order."""
    import tensorflow as tf

    return tf.random.uniform([2], 0, 2 ** 62, tf.int64, seed=op_seed)


def scatter_rows(chosen, rows, batch):
    """``rows`` (one per chosen image, ``[N, ...]``) placed at the chosen images' positions of a
    ``[B, ...]`` tensor of zeros: draws made for some images of a batch, laid out for whole-batch
    arithmetic.

    Args:
        chosen: ``bool [B]``, ``N`` of them true.
        rows: ``float32 [N, ...]``.
        batch: ``B`` (int32 scalar).
    """
    import tensorflow as tf

    shape = tf.concat([[batch], tf.shape(rows)[1:]], axis=0)
    scattered = tf.scatter_nd(tf.cast(tf.where(chosen), tf.int32), rows, shape)
    return tf.ensure_shape(scattered, tf.TensorShape([None]).concatenate(rows.shape[1:]))


def bilinear_weights(size_in: int, size_out):
    """``float32 [size_out, size_in]``: row ``i`` holds the weights of the input samples in
    output sample ``i`` of a bilinear resize with half-pixel centres, as ``tf.image.resize``
    computes it (the sample at ``(i + 0.5) * size_in / size_out - 0.5``, clamped to the edges).
    ``size_in`` is a Python int; ``size_out`` an int or an int32 scalar tensor."""
    import tensorflow as tf

    scale = size_in / tf.cast(size_out, tf.float32)
    source = tf.clip_by_value((tf.range(size_out, dtype=tf.float32) + 0.5) * scale - 0.5,
                              0.0, size_in - 1.0)
    low = tf.floor(source)
    frac = (source - low)[:, None]
    grid = tf.range(size_in, dtype=tf.float32)[None, :]
    high = tf.minimum(low + 1.0, size_in - 1.0)
    return ((1.0 - frac) * tf.cast(grid == low[:, None], tf.float32)
            + frac * tf.cast(grid == high[:, None], tf.float32))


def resize_bilinear(small, height, width):
    """Bilinear upscaling of a small ``float32 [B, h, w, C]`` grid (``h``, ``w`` static) to
    ``[B, height, width, C]``, equal to ``tf.image.resize`` up to float rounding. It is written
    as ``h + w`` broadcast multiply-adds (the resize is separable) so that XLA fuses it with
    the arithmetic around it: XLA's own resize of the 4x4 background field cost about 30 ms a
    batch of 64 at 128x128 pixels, more than the rest of the augmentation's arithmetic."""
    import tensorflow as tf

    h, w = small.shape[1], small.shape[2]
    rows = bilinear_weights(h, height)  # [height, h]
    columns = bilinear_weights(w, width)  # [width, w]
    tall = sum(small[:, p:p + 1] * rows[None, :, p:p + 1, None] for p in range(h))  # [B, height, w, C]
    return sum(tall[:, :, q:q + 1] * columns[None, None, :, q:q + 1] for q in range(w))


def per_image(values):
    """``[B]`` values reshaped to ``[B, 1, 1, 1]``, to scale or select ``[B, H, W, C]`` images."""
    import tensorflow as tf

    return tf.reshape(values, [-1, 1, 1, 1])


class RandomBackground(TFOpsLayer):
    """Replace the plain white background of studio renders with a random texture.

    The Rock-Paper-Scissors images are computer renders on pure white; phone photos are not. For
    a share ``probability`` of the images in a batch, pixels whose three channels are all above
    ``threshold`` become a random background: a random base colour plus a smooth random field
    (bilinearly upscaled 4x4 noise) plus fine grey grain. In the spirit of the "cut, paste and
    learn" compositing of Dwibedi et al. 2017 (https://arxiv.org/abs/1708.01642).

    Input and output: ``float32 [B, H, W, 3]`` pixels 0-255. Uses TensorFlow ops (it runs inside
    the ``tf.data`` pipeline, whatever the Keras backend).
    """

    def __init__(self, probability: float = 0.5, threshold: float = 235.0, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.probability, self.threshold, self.seed = probability, threshold, seed

    def draw_params(self, shape, key) -> dict:
        """``chosen`` (``bool [B]``), and for the chosen images (zeros for the others) the base
        colour ``base`` (``[B, 1, 1, 3]``), the coarse field ``field`` (``[B, 4, 4, 3]``) and
        the grain ``grain`` (``[B, H, W, 1]``), all ``float32`` pixel levels."""
        import tensorflow as tf

        batch, height, width = shape[0], shape[1], shape[2]
        chosen = self.draw(key, [batch], 0.0, 1.0, 3) < self.probability
        count = tf.reduce_sum(tf.cast(chosen, tf.int32))
        return {"chosen": chosen,
                "base": scatter_rows(chosen, self.draw(key, [count, 1, 1, 3], 0.0, 255.0, 0), batch),
                "field": scatter_rows(chosen, self.draw(key, [count, 4, 4, 3], -80.0, 80.0, 1),
                                      batch),
                # grey grain: a third of the draws
                "grain": scatter_rows(chosen, self.draw(key, [count, height, width, 1], -12.0, 12.0,
                                                        2), batch)}

    def apply(self, images, params: dict):
        import tensorflow as tf

        shape = tf.shape(images)
        field = resize_bilinear(params["field"], shape[1], shape[2])
        background = tf.clip_by_value(params["base"] + field + params["grain"], 0.0, 255.0)
        is_background = tf.reduce_all(images > self.threshold, axis=-1, keepdims=True)
        return tf.where(is_background & per_image(params["chosen"]), background, images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability,
                "threshold": self.threshold, "seed": self.seed}


class RandomBlur(TFOpsLayer):
    """Gaussian blur (3x3 kernel, reflected edges) of some images of a batch, with the draws of
    Keras's ``RandomGaussianBlur(factor, sigma)``: each image is blurred when a uniform number
    falls below a probability drawn uniformly in ``[0, factor]`` (so about ``factor / 2`` of
    the images), with a standard deviation drawn uniformly in ``sigma`` (pixels; here one per
    image, Keras draws one per batch). The separable kernel is two 3-tap passes of elementwise
    arithmetic, which XLA fuses with the layers around it (``make_augmenter``), far cheaper
    than blurring the whole batch with a convolution as the Keras layer does.

    Input and output: ``float32 [B, H, W, 3]`` pixels.
    """

    def __init__(self, factor: float, sigma: tuple[float, float] = (0.1, 2.0),
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.sigma, self.seed = factor, tuple(sigma), seed

    def draw_params(self, shape, key) -> dict:
        """``chosen`` (``bool [B]``) and the standard deviation ``sigma`` (``float32 [B]``,
        pixels)."""
        batch = shape[0]
        return {"chosen": (self.draw(key, [batch], 0.0, 1.0, 0)
                           < self.draw(key, [batch], 0.0, self.factor, 1)),
                "sigma": self.draw(key, [batch], self.sigma[0], self.sigma[1], 2)}

    def apply(self, images, params: dict):
        import tensorflow as tf

        side = per_image(tf.exp(-0.5 / tf.square(params["sigma"])))  # weight of each neighbour
        # Reflected edges by concatenation.
        x = tf.concat([images[:, :, 1:2], images, images[:, :, -2:-1]], axis=2)
        x = (x[:, :, 1:-1] + side * (x[:, :, :-2] + x[:, :, 2:])) / (1.0 + 2.0 * side)
        x = tf.concat([x[:, 1:2], x, x[:, -2:-1]], axis=1)
        x = (x[:, 1:-1] + side * (x[:, :-2] + x[:, 2:])) / (1.0 + 2.0 * side)
        return tf.where(per_image(params["chosen"]), x, images)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "sigma": self.sigma, "seed": self.seed}


class RandomPixelNoise(TFOpsLayer):
    """Add pixel noise (sensor noise) with a random standard deviation in ``[0, stddev]`` pixels
    per image. The noise is uniform, scaled to that standard deviation: drawing uniform numbers
    costs half as much as Gaussian ones, and at these levels (a few pixels) the two look alike.
    It is luminance noise (the same in the three channels): what phone photos keep after the
    camera's chroma denoising, and a third of the random draws.
    ``float32 [B, H, W, 3]`` 0-255 in and out. (Keras's ``GaussianNoise`` caps ``stddev`` at 1,
    i.e. works on 0-1 images, and uses one fixed level.)"""

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed

    def draw_params(self, shape, key) -> dict:
        """The standard deviation ``level`` (``float32 [B, 1, 1, 1]``, pixels) and the unit
        noise ``unit`` (``float32 [B, H, W, 1]``, standard deviation 1)."""
        import tensorflow as tf

        level = self.draw(key, [shape[0], 1, 1, 1], 0.0, self.stddev, 0)
        # uniform in [-sqrt(3), sqrt(3)] has standard deviation 1
        unit = self.draw(key, tf.concat([shape[:-1], [1]], 0), -3.0 ** 0.5, 3.0 ** 0.5, 1)
        return {"level": level, "unit": unit}

    def apply(self, images, params: dict):
        return images + params["level"] * params["unit"]

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class RandomErasing(TFOpsLayer):
    """Random erasing (Zhong et al. 2017, https://arxiv.org/abs/1708.04896) with the draws of
    Keras's ``RandomErasing(factor=(probability, probability), scale)``: each image is chosen
    with ``probability``; in a chosen image, one rectangle whose width and height are
    ``sqrt(u)`` of the image's (``u`` uniform in ``scale``, drawn for each side), at a uniform
    position, becomes clipped Gaussian noise (``N(0, 1) x 255``, clipped to 0-255: about half
    the pixels 0, the rest spread over 0-255). Only the chosen images draw noise: the Keras
    layer draws noise for every pixel of the batch and costs about as much as all the other
    augmentations together.

    Input and output: ``float32 [B, H, W, 3]`` pixels 0-255.
    """

    def __init__(self, probability: float, scale: tuple[float, float] = (0.02, 0.33),
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.probability, self.scale, self.seed = probability, tuple(scale), seed

    def draw_params(self, shape, key) -> dict:
        """``chosen`` (``bool [B]``), and for the chosen images (zeros for the others) the
        rectangle's ``side`` and ``where`` (``float32 [B, 2]``, fractions; x then y) and the
        clipped noise ``noise`` (``float32 [B, H, W, 3]``, pixel levels)."""
        import tensorflow as tf

        batch = shape[0]
        chosen = self.draw(key, [batch], 0.0, 1.0, 0) < self.probability
        count = tf.reduce_sum(tf.cast(chosen, tf.int32))
        noise = tf.clip_by_value(
            tf.random.stateless_normal(tf.concat([[count], shape[1:]], 0),
                                       self.draw_seed(key, 3)) * 255.0,
            0.0, 255.0)
        return {"chosen": chosen,
                "side": scatter_rows(chosen, tf.sqrt(self.draw(key, [count, 2], self.scale[0],
                                                               self.scale[1], 1)), batch),
                "where": scatter_rows(chosen, self.draw(key, [count, 2], 0.0, 1.0, 2), batch),
                "noise": scatter_rows(chosen, noise, batch)}

    def apply(self, images, params: dict):
        import tensorflow as tf

        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        sizes = tf.cast(tf.stack([width, height]), tf.float32)  # x, y
        length = params["side"] * sizes
        start = params["where"] * (sizes - length)

        def inside(axis_size, k):  # bool [B, axis_size]: pixel index in [start, start + length)
            grid = tf.range(axis_size, dtype=tf.float32)[None, :]
            return (grid >= start[:, k:k + 1]) & (grid < start[:, k:k + 1] + length[:, k:k + 1])

        mask = inside(height, 1)[:, :, None, None] & inside(width, 0)[:, None, :, None]
        return tf.where(mask & per_image(params["chosen"]), params["noise"], images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "scale": self.scale,
                "seed": self.seed}


class RandomAffine(TFOpsLayer):
    """Flip, rotation, zoom and translation as one affine resampling per image.

    The parameters are drawn per image with the distributions of Keras's ``RandomFlip``,
    ``RandomRotation``, ``RandomZoom`` and ``RandomTranslation`` (applied in that order), and the
    four transforms are composed into one matrix, so each image is interpolated once (bilinear)
    instead of four times: about 2.5x faster than the four Keras layers, and one blur instead of
    four. Resampling: ``tf.raw_ops.ImageProjectiveTransformV3``, the op behind the Keras layers
    (https://www.tensorflow.org/api_docs/python/tf/raw_ops/ImageProjectiveTransformV3).

    Args:
        horizontal_flip, vertical_flip: flip left-right / up-down with probability 1/2.
        rotation: largest rotation, a fraction of a full turn (0.1 = +/-36 degrees).
        zoom: ``(low, high)`` range of the zoom factor minus one, as Keras's ``RandomZoom``
            ``height_factor``: negative zooms in, positive zooms out (0.6: the hand at 1/1.6 of
            its size).
        width_zoom: separate range for the width (aspect-ratio changes); ``None``: the width
            zooms as the height.
        translation: largest shift, a fraction of the image side (pixels = fraction x side).
        fill_mode: ``"nearest"``, ``"constant"``, ``"reflect"`` or ``"wrap"`` for pixels from
            outside the image.
        seed: the layer's seed (draw ``k`` has op seed ``seed * DRAWS_PER_LAYER + k``).

    Input and output: ``uint8`` or ``float32 [B, H, W, 3]`` pixels (the output has the input's
    dtype; ``uint8`` is about 20% faster).
    """

    def __init__(self, horizontal_flip: bool = False, vertical_flip: bool = False,
                 rotation: float = 0.0, zoom: tuple[float, float] = (0.0, 0.0),
                 width_zoom: tuple[float, float] | None = None, translation: float = 0.0,
                 fill_mode: str = FILL_MODE, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.horizontal_flip, self.vertical_flip = horizontal_flip, vertical_flip
        self.rotation, self.translation, self.fill_mode, self.seed = rotation, translation, fill_mode, seed
        self.zoom = tuple(zoom)
        self.width_zoom = None if width_zoom is None else tuple(width_zoom)

    def transforms(self, key, batch, height, width):
        """The ``[batch, 8]`` float32 projective transforms (output pixel -> input pixel) of
        the draws for the batch key ``key`` (``int64 [2]``), in the layout of
        ``ImageProjectiveTransformV3``."""
        import math

        import tensorflow as tf

        def uniform(k, low, high):
            return self.draw(key, [batch], low, high, k)

        w, h = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        tx = uniform(0, -self.translation, self.translation) * w
        ty = uniform(1, -self.translation, self.translation) * h
        zy = uniform(2, 1.0 + self.zoom[0], 1.0 + self.zoom[1])
        zx = zy if self.width_zoom is None else uniform(3, 1.0 + self.width_zoom[0],
                                                       1.0 + self.width_zoom[1])
        angle = uniform(4, -self.rotation, self.rotation) * 2.0 * math.pi
        ones = tf.ones([batch])
        sx = tf.where(uniform(5, 0.0, 1.0) < 0.5, -ones, ones) if self.horizontal_flip else ones
        sy = tf.where(uniform(6, 0.0, 1.0) < 0.5, -ones, ones) if self.vertical_flip else ones
        cos, sin = tf.cos(angle), tf.sin(angle)
        # input = A (output - centre - shift) + centre, with A = flip . rotation . zoom
        a00, a01 = sx * cos * zx, -sx * sin * zy
        a10, a11 = sy * sin * zx, sy * cos * zy
        b0 = cx - (a00 * (cx + tx) + a01 * (cy + ty))
        b1 = cy - (a10 * (cx + tx) + a11 * (cy + ty))
        zeros = tf.zeros([batch])
        return tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)

    # ImageProjectiveTransformV3 has no XLA kernel: make_augmenter runs it outside the
    # compiled arithmetic (on the uint8 pixels, when it comes first).
    jit_compatible = False

    def draw_params(self, shape, key) -> dict:
        """``transforms``: ``float32 [B, 8]``, see ``transforms``."""
        return {"transforms": self.transforms(key, shape[0], shape[1], shape[2])}

    def apply(self, images, params: dict):
        """Resample ``images`` (``uint8`` or ``float32 [B, H, W, C]``; the output has their
        dtype) by ``params["transforms"]``."""
        import tensorflow as tf

        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=params["transforms"], output_shape=tf.shape(images)[1:3],
            fill_value=0.0, interpolation="BILINEAR", fill_mode=self.fill_mode.upper())

    def get_config(self):
        return {**super().get_config(), "horizontal_flip": self.horizontal_flip,
                "vertical_flip": self.vertical_flip, "rotation": self.rotation, "zoom": self.zoom,
                "width_zoom": self.width_zoom, "translation": self.translation,
                "fill_mode": self.fill_mode, "seed": self.seed}


class RandomContrastBrightness(TFOpsLayer):
    """Keras's ``RandomContrast(contrast)`` then ``RandomBrightness(brightness)`` (value range
    0-255) in one pass over the pixels, with the same distributions: per image, the contrast factor is
    uniform in ``[1 - contrast, 1 + contrast]`` around the per-channel mean, then the offset
    uniform in ``[-brightness, brightness] x 255``, each step clipped to 0-255 as the Keras layers
    clip (the two clips merge into one with per-image bounds).

    Input and output: ``float32 [B, H, W, 3]`` pixels 0-255.
    """

    def __init__(self, contrast: float = 0.0, brightness: float = 0.0, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.contrast, self.brightness, self.seed = contrast, brightness, seed

    def draw_params(self, shape, key) -> dict:
        """The contrast ``factor`` and the brightness ``offset`` (pixel levels), both
        ``float32 [B, 1, 1, 1]``."""
        batch = shape[0]
        return {"factor": self.draw(key, [batch, 1, 1, 1], 1.0 - self.contrast, 1.0 + self.contrast, 0),
                "offset": self.draw(key, [batch, 1, 1, 1], -self.brightness, self.brightness, 1) * 255.0}

    def apply(self, images, params: dict):
        import tensorflow as tf

        factor, offset = params["factor"], params["offset"]
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        # clip(clip((x - m) c + m, 0, 255) + b, 0, 255) == clip((x - m) c + m + b, lo, hi)
        return tf.clip_by_value(images * factor + (mean * (1.0 - factor) + offset),
                                tf.maximum(offset, 0.0), tf.minimum(255.0 + offset, 255.0))

    def get_config(self):
        return {**super().get_config(), "contrast": self.contrast, "brightness": self.brightness,
                "seed": self.seed}


class RandomSaturationHue(TFOpsLayer):
    """Keras's ``RandomSaturation(saturation)`` draws, then a small random hue rotation, both
    without a round trip through HSV (``rgb_to_hsv`` alone costs more than the rest).

    Saturation: multiplied by ``u / (1 - u)``, ``u`` uniform in ``[0, saturation]``, as Keras
    draws it. Scaling HSV saturation by ``f`` while keeping hue and value is exactly
    ``rgb -> max + f (rgb - max)`` (``max`` over the channels), which is what is computed.
    Hue: rotated by ``+/- v / 2`` of the colour circle, ``v`` uniform in ``[0, hue]`` (Keras's
    ``RandomHue`` draw), with the luminance-preserving hue-rotation matrix of the W3C Filter
    Effects spec (``feColorMatrix type="hueRotate"``,
    https://www.w3.org/TR/filter-effects-1/#feColorMatrixElement), which approximates an HSV hue
    shift for small angles.

    Input: ``float32 [B, H, W, 3]`` pixels 0-255; output: the same, not clipped (a hue rotation
    can leave the range by a few levels).
    """

    def __init__(self, saturation: float = 0.0, hue: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.saturation, self.hue, self.seed = saturation, hue, seed

    def draw_params(self, shape, key) -> dict:
        """The saturation ``factor`` (``float32 [B, 1, 1, 1]``, when ``saturation``) and the
        hue ``rotation`` matrices (``float32 [B, 3, 3]``, output channel by input channel, when
        ``hue``)."""
        import math

        import tensorflow as tf

        batch = shape[0]
        params = {}
        if self.saturation:
            u = self.draw(key, [batch], 0.0, self.saturation, 0)
            params["factor"] = per_image(u / (1.0 - u + 1e-7))
        if self.hue:
            sign = tf.where(self.draw(key, [batch], 0.0, 1.0, 1) > 0.5, -1.0, 1.0)
            angle = sign * self.draw(key, [batch], 0.0, self.hue, 2) * 0.5 * 2.0 * math.pi
            luma = tf.constant([[0.213, 0.715, 0.072]] * 3)
            cos_part = tf.constant([[0.787, -0.715, -0.072], [-0.213, 0.285, -0.072],
                                    [-0.213, -0.715, 0.928]])
            sin_part = tf.constant([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283],
                                    [-0.787, 0.715, 0.072]])
            params["rotation"] = (luma + tf.cos(angle)[:, None, None] * cos_part
                                  + tf.sin(angle)[:, None, None] * sin_part)
        return params

    def apply(self, images, params: dict):
        import tensorflow as tf

        if "factor" in params:
            factor = params["factor"]
            # the channel maximum by slices: cheaper than reduce_max over a last axis of 3
            brightest = tf.maximum(tf.maximum(images[..., 0:1], images[..., 1:2]), images[..., 2:3])
            images = images * factor + brightest * (1.0 - factor)
        if "rotation" in params:
            # Each output channel a weighted sum of the three input channels, written out
            # (not an einsum) so that XLA fuses it with the passes around it.
            weights = params["rotation"][:, None, None, :, :]  # [B, 1, 1, 3, 3]
            images = tf.concat([sum(images[..., k:k + 1] * weights[..., c, k:k + 1] for k in range(3))
                                for c in range(3)], axis=-1)
        return images  # may leave 0-255 slightly; the augmenter clips at the end

    def get_config(self):
        return {**super().get_config(), "saturation": self.saturation, "hue": self.hue,
                "seed": self.seed}


def make_augment_layers(aug_cfg: AugmentConfig, seed: int) -> list[layers.Layer]:
    """Build the configured augmentation layers, each seeded from ``seed``.

    Order: geometry first (with ``fused``, on the cached ``uint8`` pixels, before the cast to
    float32), then the background (it finds the white background, which the "nearest" fill has
    extended to the new borders, before colour changes tint it), then colour, blur, noise and
    random erasing.
    With ``aug_cfg.fused`` (the default), flip, rotation, zoom and translation are one
    ``RandomAffine``, contrast and brightness one ``RandomContrastBrightness``, saturation and
    hue one ``RandomSaturationHue``, blur ``RandomBlur`` and random erasing ``RandomErasing``
    (same distributions, fewer passes over the pixels); otherwise each is its Keras layer.

    Args:
        aug_cfg: which augmentations and how strong (see ``AugmentConfig``).
        seed: the run's seed; layer ``i`` gets ``seed + i``.

    Returns:
        The layers in application order (possibly empty).
    """
    if not aug_cfg.enabled:
        return []
    seeds = iter(range(seed, seed + NUM_LAYER_SEEDS))  # one distinct seed per layer
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((aug_cfg.horizontal_flip, aug_cfg.vertical_flip))
    value_range = (0, 255)
    zoom = (-aug_cfg.zoom_in, aug_cfg.zoom_out)
    width_zoom = ((-aug_cfg.zoom_in - aug_cfg.aspect, aug_cfg.zoom_out + aug_cfg.aspect)
                  if aug_cfg.aspect else None)
    if aug_cfg.fused:
        geometry = [
            (flip or aug_cfg.rotation or aug_cfg.zoom_in or aug_cfg.zoom_out or aug_cfg.aspect
             or aug_cfg.translation, lambda s: RandomAffine(
                 aug_cfg.horizontal_flip, aug_cfg.vertical_flip, aug_cfg.rotation, zoom, width_zoom,
                 aug_cfg.translation, seed=s, dtype=DTYPE, name="random_affine"))]
        colour = [
            (aug_cfg.contrast or aug_cfg.brightness, lambda s: RandomContrastBrightness(
                aug_cfg.contrast, aug_cfg.brightness, seed=s, dtype=DTYPE,
                name="random_contrast_brightness")),
            (aug_cfg.saturation or aug_cfg.hue, lambda s: RandomSaturationHue(
                aug_cfg.saturation, aug_cfg.hue, seed=s, dtype=DTYPE, name="random_saturation_hue"))]
        blur = lambda s: RandomBlur(aug_cfg.blur, seed=s, dtype=DTYPE, name="random_blur")  # noqa: E731
        erasing = lambda s: RandomErasing(  # noqa: E731
            aug_cfg.erasing, seed=s, dtype=DTYPE, name="random_erasing")
    else:
        geometry = [
            (flip, lambda s: layers.RandomFlip(flip, seed=s, dtype=DTYPE, name="random_flip")),
            (aug_cfg.rotation, lambda s: layers.RandomRotation(
                aug_cfg.rotation, fill_mode=FILL_MODE, seed=s, dtype=DTYPE, name="random_rotation")),
            (aug_cfg.zoom_in or aug_cfg.zoom_out or aug_cfg.aspect, lambda s: layers.RandomZoom(
                zoom, width_zoom, fill_mode=FILL_MODE, seed=s, dtype=DTYPE, name="random_zoom")),
            (aug_cfg.translation, lambda s: layers.RandomTranslation(
                aug_cfg.translation, aug_cfg.translation, fill_mode=FILL_MODE, seed=s, dtype=DTYPE,
                name="random_translation"))]
        colour = [
            (aug_cfg.contrast, lambda s: layers.RandomContrast(
                aug_cfg.contrast, value_range=value_range, seed=s, dtype=DTYPE, name="random_contrast")),
            (aug_cfg.brightness, lambda s: layers.RandomBrightness(
                aug_cfg.brightness, value_range=value_range, seed=s, dtype=DTYPE, name="random_brightness")),
            (aug_cfg.saturation, lambda s: layers.RandomSaturation(
                aug_cfg.saturation, value_range=value_range, seed=s, dtype=DTYPE,
                name="random_saturation")),
            (aug_cfg.hue, lambda s: layers.RandomHue(
                aug_cfg.hue, value_range=value_range, seed=s, dtype=DTYPE, name="random_hue"))]
        blur = lambda s: layers.RandomGaussianBlur(  # noqa: E731
            aug_cfg.blur, sigma=(0.1, 2.0), value_range=value_range, seed=s, dtype=DTYPE,
            name="random_blur")
        # factor=(p, p): Keras draws each image's probability uniformly from the factor's
        # range, so a single number p would erase only p / 2 of the images.
        erasing = lambda s: layers.RandomErasing(  # noqa: E731
            (aug_cfg.erasing, aug_cfg.erasing), value_range=value_range, seed=s, dtype=DTYPE,
            name="random_erasing")
    candidates = [
        *geometry,
        (aug_cfg.background, lambda s: RandomBackground(aug_cfg.background, seed=s, dtype=DTYPE,
                                                        name="random_background")),
        *colour,
        (aug_cfg.blur, blur),
        (aug_cfg.noise, lambda s: RandomPixelNoise(aug_cfg.noise, seed=s, dtype=DTYPE, name="random_noise")),
        # Last, so that the other layers keep their seeds.
        (aug_cfg.erasing, erasing),
    ]
    return [make(next(seeds)) for wanted, make in candidates if wanted]


def compilable(layer: layers.Layer, aug_cfg: AugmentConfig) -> bool:
    """Whether ``make_augmenter`` runs ``layer``'s arithmetic compiled by XLA: a ``TFOpsLayer``
    whose ``apply`` XLA can compile, under ``augment.jit_compile``."""
    return aug_cfg.jit_compile and isinstance(layer, TFOpsLayer) and layer.jit_compatible


def make_stage(group: list, compiled: bool, clip: bool = False) -> Callable:
    """A function ``stage(images, key)`` that applies ``group`` to a batch, with training-time
    randomness.

    ``key`` (``int64 [2]``) is the batch's random key: a ``TFOpsLayer``'s draws are a function
    of it and of the layer's seed (``TFOpsLayer.draw_params``). Keras layers
    (``augment.fused: false``) ignore it and draw from their own stateful seed generators:
    Keras 3 random ops take no tensor seeds.

    Compiled: ``group`` is consecutive ``TFOpsLayer``s (``compilable``); their random draws
    (``draw_params``) are made as TensorFlow ops, then the cast to float32, their ``apply`` in
    order and, with ``clip``, the clip to 0-255 run as one ``tf.function(jit_compile=True)``.
    Otherwise ``group`` is one layer (``clip`` is not applied).

    The function maps ``[B, H, W, C]`` pixels to ``[B, H, W, C]`` pixels (``float32`` when
    compiled).
    """
    import tensorflow as tf

    if compiled:
        def arithmetic(images, params):
            images = tf.cast(images, tf.float32)
            for layer, layer_params in zip(group, params):
                images = layer.apply(images, layer_params)
            return tf.clip_by_value(images, 0.0, 255.0) if clip else images

        arithmetic = tf.function(arithmetic, jit_compile=True)

        def stage(images, key):
            shape = tf.shape(images)
            return arithmetic(images, [layer.draw_params(shape, key) for layer in group])

        return stage
    (layer,) = group
    if isinstance(layer, TFOpsLayer):
        return lambda images, key: layer.call(images, training=True, key=key)
    return lambda images, key: layer(images, training=True)


def make_augmenter(aug_cfg: AugmentConfig, seed: int) -> Callable | None:
    """A function ``augment(images, key=None)`` applying the augmentation layers to a batch, or
    ``None`` when there are none.

    The returned function maps ``uint8`` or ``float32 [B, H, W, 3]`` pixels in 0-255 to
    ``float32`` of the same shape and range (values are clipped back to 0-255 at the end). Given
    ``uint8`` (the training pipeline's cached pixels), a leading ``RandomAffine`` resamples them
    before the cast to float32, which is cheaper.

    ``key`` (``int64 [2]``) is the batch's random key. The fused layers' random draws are a
    function of the key and of ``seed`` only (stateless ops, ``TFOpsLayer.draw``), so a batch
    gets the same augmentation whichever thread of the parallel ``tf.data`` map runs it:
    ``rps.data.make_train_dataset`` zips a key stream drawn from the config's seed with the
    batches. ``None`` draws a fresh key from a stateful op, for augmenting outside the training
    pipeline (previews). The Keras layers of ``augment.fused: false`` ignore the key
    (``make_stage``).

    With ``aug_cfg.jit_compile`` (the default), each run of consecutive ``TFOpsLayer``s whose
    arithmetic XLA can compile (all but ``RandomAffine``) makes its random draws
    (``draw_params``), then applies its arithmetic, the cast to float32 and, when it comes
    last, the final clip, as one function compiled by XLA (``tf.function(jit_compile=True)``,
    https://www.tensorflow.org/xla/tutorials/jit_compile). XLA fuses the elementwise passes
    over the batch into few loops, so the pixels cross memory fewer times; the numbers differ
    from the uncompiled arithmetic only by float rounding (docs/experiments.md).
    """
    import tensorflow as tf

    aug_layers = make_augment_layers(aug_cfg, seed)
    if not aug_layers:
        return None
    # Stages: (compiled, layers). Consecutive XLA-compatible layers share one compiled stage.
    stages: list[tuple[bool, list]] = []
    for layer in aug_layers:
        compiled = compilable(layer, aug_cfg)
        if compiled and stages and stages[-1][0]:
            stages[-1][1].append(layer)
        else:
            stages.append((compiled, [layer]))
    runs = [make_stage(group, compiled, clip=compiled and i == len(stages) - 1)
            for i, (compiled, group) in enumerate(stages)]
    # After the layers' op seeds (seed * DRAWS_PER_LAYER ... (seed + NUM_LAYER_SEEDS) * DRAWS_PER_LAYER - 1).
    key_op_seed = (seed + NUM_LAYER_SEEDS + 1) * DRAWS_PER_LAYER

    def augment(images, key=None):
        key = stateful_key(key_op_seed) if key is None else key
        for i, ((compiled, group), run) in enumerate(zip(stages, runs)):
            # A compiled stage casts by itself; a leading RandomAffine resamples the uint8 pixels.
            if not (compiled or (i == 0 and isinstance(group[0], RandomAffine))):
                images = tf.cast(images, tf.float32)  # a no-op once float32
            images = run(images, key)
        if stages[-1][0]:
            return images  # cast and clipped in the compiled stage
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)

    return augment


def make_mixup(aug_cfg: AugmentConfig, seed: int) -> Callable | None:
    """Mixup of training batches, or ``None`` when ``augment.mixup`` is 0 (or augmentation off).

    Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412) blends each image of a batch
    with another image of the same batch (a random permutation), and their one-hot labels with
    the same weight, drawn per image from Beta(alpha, alpha): a training target between two
    classes, so that the model's output moves linearly between them. The layer is Keras's own
    ``keras.layers.MixUp`` (https://keras.io/api/layers/preprocessing_layers/image_augmentation/mix_up/),
    which runs in ``tf.data`` on any backend. It comes after the one-hot encoding and after the
    other augmentation layers, so it mixes augmented images.

    The returned function maps ``(float32 [B, H, W, 3]`` pixels in 0-255, ``float32 [B, C]``
    one-hot labels) to the same shapes and dtypes: mixed pixels, still in 0-255, and soft labels
    whose rows sum to 1.

    Args:
        aug_cfg: ``mixup`` is alpha (0 switches it off); ``enabled: false`` switches it off too.
        seed: the run's seed; the layer gets ``seed + NUM_LAYER_SEEDS`` (32), the first seed
            that ``make_augment_layers`` does not use.
    """
    if not (aug_cfg.enabled and aug_cfg.mixup):
        return None
    layer = layers.MixUp(alpha=aug_cfg.mixup, seed=seed + NUM_LAYER_SEEDS, dtype=DTYPE, name="mixup")

    def mixup(images, labels):
        import tensorflow as tf

        mixed = layer({"images": images, "labels": labels}, training=True)
        # w * 255 + (1 - w) * 255 can round to 255.00002
        return tf.clip_by_value(mixed["images"], 0.0, 255.0), mixed["labels"]

    return mixup
