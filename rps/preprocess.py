"""The one image preprocessing function, shared by training, evaluation, prediction and TFLite checks.

Usage: ``image = load_image("hand.png", 150)`` -> ``uint8`` tensor ``[150, 150, 3]``.

Every path from file to model input goes through ``decode_and_resize``, so the Keras model, the
SavedModel and the ``.tflite`` file all see exactly the pixels they were trained on. The models
take raw RGB pixels in 0-255 (rescaling lives inside the model).
"""

from __future__ import annotations

import tensorflow as tf

# Bilinear with antialiasing: downscaling 300 -> 150 px averages neighbours instead of
# skipping them, which matches what camera pipelines (and MediaPipe's resize) produce better
# than nearest-neighbour. See https://www.tensorflow.org/api_docs/python/tf/image/resize.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


def decode_and_resize(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode encoded image bytes and resize them to the model input.

    Works eagerly and inside ``tf.data.Dataset.map`` (graph mode).

    Args:
        contents: scalar ``tf.string`` tensor with PNG, JPEG, GIF, BMP or WebP bytes (RGB,
            RGBA, grayscale with or without alpha, or palette with or without transparency;
            8 or 16 bits per channel: 16-bit values keep their high byte). Transparent pixels
            are composited onto white, the background of the training renders; only the first
            frame of an animation is used.
        image_size: side of the square output, in pixels.

    Returns:
        ``uint8`` tensor of shape ``[image_size, image_size, 3]``, RGB, values 0-255.

    Raises:
        tf.errors.InvalidArgumentError: the bytes are not a decodable image. (The data module
            checks every file beforehand so that users get an error naming the file instead.)
    """
    # channels=0 keeps the file's own channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; palettes
    # come out as RGB or RGBA), so that alpha can be composited instead of dropped.
    image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, None])
    return resize(composite_on_white(image), image_size)


def composite_on_white(image: tf.Tensor) -> tf.Tensor:
    """Turn a decoded ``uint8 [H, W, C]`` image with C in 1-4 into ``float32 [H, W, 3]`` RGB
    0-255 over a white background: ``rgb * alpha + 255 * (1 - alpha)``. Opaque pixels keep
    their exact values, so opaque images give the same pixels as a plain RGB decode."""
    pixels = tf.cast(image, tf.float32)
    channels = tf.shape(pixels)[-1]
    color = tf.cond(channels >= 3, lambda: pixels[..., :3],
                    lambda: tf.tile(pixels[..., :1], [1, 1, 3]))
    # An even channel count (2: gray + alpha, 4: RGBA) means the last channel is alpha.
    alpha = tf.cond(tf.equal(channels % 2, 0), lambda: pixels[..., -1:] / 255.0,
                    lambda: tf.ones_like(pixels[..., :1]))
    rgb = color * alpha + 255.0 * (1.0 - alpha)
    rgb.set_shape([None, None, 3])
    return rgb


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize a ``[H, W, 3]`` or ``[N, H, W, 3]`` image tensor (any dtype) to ``uint8``
    ``[..., image_size, image_size, 3]`` with the project's one resize method. Aspect ratio is
    not kept (the training images are square)."""
    resized = tf.image.resize(
        image, [image_size, image_size], method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def load_image(path: str, image_size: int) -> tf.Tensor:
    """Read one image file and preprocess it (see ``decode_and_resize``).

    Args:
        path: image file path (a Python string or scalar ``tf.string``).
        image_size: side of the square output, in pixels.

    Returns:
        ``uint8`` tensor ``[image_size, image_size, 3]``.
    """
    return decode_and_resize(tf.io.read_file(path), image_size)
