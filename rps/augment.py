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


def make_augment_layers(aug_cfg: AugmentConfig, seed: int) -> list[layers.Layer]:
    """Build the configured augmentation layers, each seeded from ``seed``.

    Args:
        aug_cfg: which augmentations and how strong (see ``AugmentConfig``).
        seed: the run's seed; layer ``i`` gets ``seed + i``.

    Returns:
        The layers in application order (possibly empty).
    """
    if not aug_cfg.enabled:
        return []
    seeds = iter(range(seed, seed + 16))  # one distinct seed per layer
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((aug_cfg.horizontal_flip, aug_cfg.vertical_flip))
    out: list[layers.Layer] = []
    if flip:
        out.append(layers.RandomFlip(flip, seed=next(seeds), name="random_flip"))
    if aug_cfg.rotation:
        out.append(layers.RandomRotation(aug_cfg.rotation, fill_mode="reflect", seed=next(seeds),
                                         name="random_rotation"))
    if aug_cfg.zoom:
        out.append(layers.RandomZoom(aug_cfg.zoom, fill_mode="reflect", seed=next(seeds),
                                     name="random_zoom"))
    if aug_cfg.translation:
        out.append(layers.RandomTranslation(aug_cfg.translation, aug_cfg.translation,
                                            fill_mode="reflect", seed=next(seeds),
                                            name="random_translation"))
    if aug_cfg.contrast:
        out.append(layers.RandomContrast(aug_cfg.contrast, value_range=(0, 255), seed=next(seeds),
                                         name="random_contrast"))
    if aug_cfg.brightness:
        out.append(layers.RandomBrightness(aug_cfg.brightness, value_range=(0, 255),
                                           seed=next(seeds), name="random_brightness"))
    return out


def make_augmenter(aug_cfg: AugmentConfig, seed: int) -> Callable | None:
    """A function applying the augmentation layers to a batch, or ``None`` when there are none.

    The returned function maps ``float32 [B, H, W, 3]`` pixels in 0-255 to the same shape, dtype
    and range (values are clipped back to 0-255 after contrast and brightness changes).
    """
    aug_layers = make_augment_layers(aug_cfg, seed)
    if not aug_layers:
        return None

    def augment(images):
        for layer in aug_layers:
            images = layer(images, training=True)
        return images

    return augment
