"""Model presets. Each takes raw RGB pixels (``float32 [B, S, S, 3]``, 0-255) and returns logits.
With ``model.members: M > 1`` the model is an ensemble of ``M`` presets whose logits come out
stacked, ``[B, M, num_classes]``; ``add_softmax`` averages their probabilities.

Usage: ``model = build_model(cfg.model, num_classes=3, image_size=150)``.

Rescaling lives inside the model, so exported models take camera pixels as they are. Training
uses logits (``from_logits=True``); ``add_softmax`` makes the inference model that outputs
probabilities, as the SavedModel and TFLite exports do.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
from keras import layers

from rps.config import ModelConfig


def build_seed_cnn(model_cfg: ModelConfig, num_classes: int, image_size: int) -> keras.Model:
    """The seed talk's architecture (Laurence Moroney, "Rock, Paper, Scissors" course notebook):
    Conv2D 64, 64, 128, 128 (3x3, ReLU), each followed by 2x2 max-pooling, Flatten, Dropout 0.5,
    Dense 512 ReLU, Dense ``num_classes``. 3.47M parameters at 150x150. ``model.width`` and
    ``model.dropout_rate`` are ignored; the original values are fixed.
    https://github.com/https-deeplearning-ai/tensorflow-1-public (C2_W4_Lab_1_multi_class_classifier)
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((64, 64, 128, 128)):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    x = layers.Dense(512, activation="relu", name="dense")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="seed_cnn")


def _conv_bn(x, filters: int, name: str, strides: int = 1, separable: bool = False):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # Momentum 0.9 (Keras default 0.99): with ~35 steps an epoch, the moving statistics used at
    # inference must catch up within an epoch or two, or validation sees un-normalised features.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_fast_cnn(model_cfg: ModelConfig, num_classes: int, image_size: int) -> keras.Model:
    """The fast default: a strided, pooled stem, four conv-BN-ReLU stages with max-pooling,
    global average pooling, dropout and a dense head.

    Batch normalization (Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167) lets it train
    with high learning rates in few epochs; global average pooling (Lin et al. 2013,
    https://arxiv.org/abs/1312.4400) replaces the seed model's 3.2M-parameter Flatten+Dense head;
    depthwise-separable convolutions (Chollet 2017, https://arxiv.org/abs/1610.02357) in the
    wider stages keep it at 151k parameters at ``width=32`` and 233k at the default ``width=40``.
    """
    width = model_cfg.width
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = _conv_bn(x, width, "stem", strides=2)
    # Pool right after the stem: the 4x smaller maps make every later stage 4x cheaper (about
    # 2x faster training end to end on a 2-core CPU), at no measured cost in accuracy.
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    for stage, (mult, separable) in enumerate(((1, False), (2, True), (4, True), (8, True))):
        x = _conv_bn(x, width * mult, f"stage{stage + 1}a", separable=separable)
        x = _conv_bn(x, width * mult, f"stage{stage + 1}b", separable=True)
        x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(model_cfg.dropout_rate, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="fast_cnn")


# Presets by name. A plain dict: `build_model` lists the valid names on a typo.
PRESETS: dict[str, Callable[[ModelConfig, int, int], keras.Model]] = {
    "seed_cnn": build_seed_cnn,
    "fast_cnn": build_fast_cnn,
}


def build_model(model_cfg: ModelConfig, num_classes: int, image_size: int) -> keras.Model:
    """Build the preset named ``model_cfg.name``, or an ensemble of ``model_cfg.members`` of them.

    Args:
        model_cfg: preset name, width, dropout rate, ensemble members.
        num_classes: number of output classes.
        image_size: input side in pixels.

    Returns:
        A functional ``keras.Model`` mapping ``float32 [B, image_size, image_size, 3]`` pixels
        (0-255) to ``[B, num_classes]`` logits, or with ``members: M > 1`` to ``[B, M,
        num_classes]`` logits, one row per member (see ``build_ensemble``).

    Raises:
        ValueError: unknown preset name (the message lists the valid ones).
    """
    if model_cfg.name not in PRESETS:
        raise ValueError(f"unknown model preset '{model_cfg.name}' (config key model.name); "
                         f"valid presets: {', '.join(sorted(PRESETS))}.")
    build = PRESETS[model_cfg.name]
    if model_cfg.members == 1:
        return build(model_cfg, num_classes, image_size)
    return build_ensemble([build(model_cfg, num_classes, image_size)
                           for _ in range(model_cfg.members)])


def build_ensemble(members: list[keras.Model]) -> keras.Model:
    """Stack the logits of independently initialised models that share one input.

    Each member keeps its own weights (the initialisers draw from the global Keras seed one
    member after the other, so ``keras.utils.set_random_seed`` fixes them all). Trained with
    ``rps.train.MemberCrossentropy``, every member learns from its own loss on the same batches,
    as in deep ensembles (Lakshminarayanan et al. 2017, https://arxiv.org/abs/1612.01474), where
    most of the diversity comes from the random initialisation (Fort et al. 2019,
    https://arxiv.org/abs/1912.02757).

    Args:
        members: two or more models mapping the same ``[B, S, S, 3]`` input to ``[B, C]`` logits.

    Returns:
        A ``keras.Model`` named ``<member name>_x<M>`` from ``float32 [B, S, S, 3]`` to
        ``[B, M, C]`` logits (output layer ``logits``).
    """
    inputs = keras.Input(members[0].input_shape[1:], name="image")
    num_classes = members[0].output_shape[-1]
    rows = []
    for i, member in enumerate(members):
        member = keras.Model(member.input, member.output, name=f"member{i}")
        rows.append(layers.Reshape((1, num_classes), name=f"member{i}_row")(member(inputs)))
    logits = layers.Concatenate(axis=1, name="logits")(rows)
    return keras.Model(inputs, logits, name=f"{members[0].name}_x{len(members)}")


def probabilities(outputs) -> np.ndarray:
    """Class probabilities from a model's raw outputs.

    Args:
        outputs: ``[B, C]`` logits, or an ensemble's ``[B, M, C]`` member logits (NumPy or a
            tensor of the Keras backend).

    Returns:
        ``float32 [B, C]``: the softmax over the classes, averaged over the members of an
        ensemble.
    """
    # keras.ops.convert_to_numpy, not np.asarray: it detaches a torch tensor that requires grad.
    return keras.ops.convert_to_numpy(mean_member_softmax(outputs))


def mean_member_softmax(logits):
    """The softmax over the classes (last axis) in float32, averaged over the members (axis 1)
    of an ensemble's ``[B, M, C]`` logits; ``[B, C]`` logits get the plain softmax. A backend
    tensor (or NumPy array) in, a ``float32 [B, C]`` backend tensor out; usable inside a compiled
    train step."""
    probs = keras.ops.softmax(keras.ops.cast(logits, "float32"), axis=-1)
    return keras.ops.mean(probs, axis=1) if len(probs.shape) == 3 else probs


def add_softmax(model: keras.Model) -> keras.Model:
    """Wrap a logits model into the inference model: same input, output ``float32
    [B, num_classes]`` probabilities (softmax over the logits, computed in float32 even under a
    mixed-precision policy; for an ensemble's ``[B, M, num_classes]`` logits, the mean of the
    members' softmax)."""
    if len(model.output.shape) == 3:
        member_probs = layers.Softmax(name="member_probabilities", dtype="float32")(model.output)
        probs = layers.GlobalAveragePooling1D(name="probabilities", dtype="float32")(member_probs)
    else:
        probs = layers.Softmax(name="probabilities", dtype="float32")(model.output)
    return keras.Model(model.input, probs, name=f"{model.name}_inference")
