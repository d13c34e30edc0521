"""One config object for a whole run: defaults, then YAML, then command-line overrides.

Usage: ``cfg = load_config("configs/default.yaml", ["train.epochs=3"])``.

The config is a tree of frozen dataclasses (``Config`` with sections ``data``, ``augment``,
``model``, ``train``, ``export``). It is validated once, when built: unknown keys fail with a
close-match suggestion, each value is parsed by its field's type (never with ``eval``), ranges and
cross-field rules are checked. After that nothing changes it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they become batches.

    Attributes:
        source: ``"folder"`` reads ``<root>/<split>/<label>/*``; ``"tfds"`` reads the TFDS
            ``rock_paper_scissors`` data set through ``tfds.load``.
        root: data root for ``source: folder`` (a path, relative to the working directory).
        tfds_data_dir: TFDS data directory for ``source: tfds`` (``None``: TFDS's default).
        image_size: side of the square model input, in pixels.
        validation_fraction: share of ``train/`` carved out, per class, as the validation split.
            ``0``: no validation split; the model trains on all of ``train/`` (scikit-learn's
            ``refit`` once cross-validation has fixed the hyperparameters,
            https://scikit-learn.org/stable/modules/grid_search.html). Then ``train.checkpoint``
            must be ``last``, ``train.early_stopping_patience`` 0, there are no ``val_*`` curves
            or validation confusion matrix, and ``rps tune`` needs a fraction above 0.
        split_by: ``"file"`` draws single files; ``"group"`` draws whole groups of files (the
            part of the file name that ``group_pattern`` captures, e.g. one rendered hand model
            ``rock01`` of ``rock01-000.jpg``), so that validation images show hands that
            training never saw, as the test set does.
        group_pattern: regular expression on the file name without suffix; its first group is
            the group key (names that do not match form a group each).
        folds: ``0``: carve the validation split by ``validation_fraction``. ``k >= 2``:
            k-fold cross-validation instead: each class's groups (``split_by: group``) or
            files, in an order drawn from the seed, are dealt round-robin into ``k`` folds, and
            fold ``fold`` is the validation split (``validation_fraction`` is then unused).
            With 7 hands per class, ``folds: 7`` holds out one hand of each class per fold.
        fold: which fold is the validation split when ``folds >= 2``, from 0 to ``folds - 1``.
        split_seed: seed of the split alone (``validation_fraction`` or ``folds``); ``None``:
            the root ``seed``. Set it to keep one validation split or fold assignment while
            ``seed`` varies the training streams (initialisation, shuffling, augmentation), e.g.
            for replicate runs of a cross-validation.
        global_batch_size: images per training step, summed over all replicas.
        max_images_per_class: keep at most this many files per class and split (``0``: all);
            for smoke runs and tests.
        cache: keep decoded, resized images in memory after the first epoch.
        skip_bad_images: ``False`` stops on any unreadable image with a list of them;
            ``True`` skips them with a warning that lists them.
        max_image_pixels: images with more pixels than this are refused before decoding
            (a decompression-bomb guard; read from the file header).
        allow_duplicates: ``False`` stops when a held-out image (``test/``, ``validation/``)
            has the same content (SHA-256) as a ``train/`` image, listing the pairs;
            ``True`` only warns (the held-out accuracy is then optimistic).
    """

    source: str = "folder"
    root: str = "data/rps"
    tfds_data_dir: str | None = None
    image_size: int = 150
    validation_fraction: float = 0.15
    split_by: str = "file"
    group_pattern: str = r"^(.*)-\d+$"
    folds: int = 0
    fold: int = 0
    split_seed: int | None = None
    global_batch_size: int = 64
    max_images_per_class: int = 0
    cache: bool = True
    skip_bad_images: bool = False
    max_image_pixels: int = 50_000_000
    allow_duplicates: bool = False


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of the training split (``rps.augment``).

    Factors follow the Keras layers' conventions: ``rotation`` is a fraction of a full turn
    (0.1 = +/-36 degrees), ``zoom_in`` and ``zoom_out`` are the largest zoom in and out as
    fractions of the image side (zooming out shows the hand smaller and farther away, as a phone
    held at arm's length sees it), ``translation`` is a fraction of the image side,
    ``aspect`` is the extra zoom range of the width alone (aspect-ratio changes), ``contrast``,
    ``brightness``, ``saturation`` and ``hue`` are the layers' factors (note Keras's
    ``RandomSaturation`` with a single factor ``f`` only desaturates: it multiplies the
    saturation by ``u / (1 - u)``, ``u`` uniform in ``[0, f]``, so 0.3 gives 0 to 0.43), ``blur`` is the blur
    factor of ``RandomGaussianBlur``, ``noise`` the standard deviation of (uniform) pixel noise
    (pixels, 0-255 scale), ``background`` the share of images whose white background is
    replaced by a random texture (``rps.augment.RandomBackground``), ``erasing`` the share of
    images in which one random rectangle is replaced by noise (``rps.augment.RandomErasing``),
    ``mixup`` the ``alpha`` of mixup (``rps.augment.make_mixup``).
    ``0`` switches one off.

    Attributes:
        enabled: apply augmentation at all (``False``: training images as they are).
        horizontal_flip: random left-right flips.
        vertical_flip: random up-down flips.
        rotation: largest rotation, a fraction of a full turn (0.1 = +/-36 degrees).
        zoom_in: largest zoom in, a fraction of the image side.
        zoom_out: largest zoom out, a fraction of the image side.
        translation: largest shift, a fraction of the image side.
        contrast: ``RandomContrast`` factor.
        brightness: ``RandomBrightness`` factor.
        aspect: extra zoom range of the width alone (aspect-ratio changes).
        saturation: ``RandomSaturation`` factor.
        hue: ``RandomHue`` factor.
        blur: ``RandomGaussianBlur`` factor.
        noise: standard deviation of (uniform) pixel noise (pixels, 0-255 scale).
        background: share of images whose white background is replaced by a random texture.
        erasing: share of images in which one random rectangle (2-33% of the area) is replaced
            by noise: random erasing, Zhong et al. 2017, https://arxiv.org/abs/1708.04896.
        mixup: ``alpha`` of mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): each
            training image and its one-hot label are blended with another image of the batch
            and its label, with a weight drawn from Beta(alpha, alpha) (0.2 is the paper's
            ImageNet setting); ``keras.layers.MixUp``.
        fused: the fast augmentation layers of ``rps.augment``: flip, rotation, zoom and
            translation as one affine resampling, contrast and brightness in one pass,
            saturation and hue without an HSV round trip (the same distributions as the Keras
            layers, not the same random streams; about 3x faster input pipeline). ``False``:
            one Keras layer per transform.
        jit_compile: compile the arithmetic of the fused layers after the affine resampling
            (background, colour, blur, noise, erasing) with XLA into one function, which
            fuses their passes over the pixels; the random draws are made as without it, so the
            images differ only by float rounding (docs/experiments.md). ``False``: one
            TensorFlow op after another, on whole batches with masks: a fallback, about twice
            as slow.
    """

    enabled: bool = True
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotation: float = 0.1
    zoom_in: float = 0.2
    zoom_out: float = 0.2
    translation: float = 0.1
    contrast: float = 0.2
    brightness: float = 0.0
    aspect: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    background: float = 0.0
    erasing: float = 0.0
    mixup: float = 0.0
    fused: bool = True
    jit_compile: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which architecture to build (see ``rps.models.PRESETS``) and its width.

    Attributes:
        name: preset name.
        width: number of filters of the first block; later blocks scale from it.
        dropout_rate: dropout before the classifier head.
        members: ensemble members (``1``: a single model). With ``M > 1`` the model holds ``M``
            copies of the preset, each with its own initialisation and dropout, trained together
            on the same batches, each on its own cross-entropy; the prediction averages their
            probabilities (deep ensembles, Lakshminarayanan et al. 2017,
            https://arxiv.org/abs/1612.01474). Parameters, FLOPs and training time grow ``M``-fold.
    """

    name: str = "fast_cnn"
    width: int = 32
    dropout_rate: float = 0.2
    members: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: full passes over the training split.
        optimizer: ``adamw``, ``adam``, ``rmsprop`` or ``sgd``.
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay (AdamW), 0 to switch off.
        decay_norm_and_bias: also decay the 1-D weights (biases, BatchNorm scales and
            offsets). ``false`` decays only the kernels, as ConvNeXt and timm do.
        schedule: ``cosine`` (linear warmup, then cosine decay to 0) or ``constant``.
        warmup_epochs: length of the linear warmup, in epochs.
        label_smoothing: label smoothing of the cross-entropy loss.
        ema_momentum: keep an exponential moving average of the weights with this momentum
            and evaluate, checkpoint and export the averaged weights (``0``: off).
        checkpoint: which weights the run keeps and exports: ``last`` (those after the final
            epoch, where the cosine schedule has brought the learning rate down to 0) or
            ``best`` (the epoch with the lowest validation loss; ``checkpoints/best.weights.h5``
            is written either way when there is a validation split).
        early_stopping_patience: epochs without validation improvement before stopping
            (``0``: never stop early).
        cpu_replicas: on a machine without GPUs, split the CPU into this many logical devices,
            one replica each (for testing MirroredStrategy; ``1`` is fastest).
        collective_timeout: multi-worker training only: seconds a cross-worker collective
            (gradient all-reduce) may wait before it fails, so the surviving workers of a dead
            one exit and can be restarted (``0``: wait forever).
        mixed_precision: Keras dtype policy: ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
        jit_compile: compile the train step with XLA.
        deterministic: bit-identical reruns: TensorFlow op determinism and one inter-op thread
            (``rps.train.make_deterministic``; about 0.83x the training rate on 2 cores).
        steps_per_execution: train steps run per call into the graph.
        tensorboard_update_freq: also write loss, accuracy and learning rate to TensorBoard
            every this many training steps (``0``: once per epoch only).
        histogram_freq: write weight histograms to TensorBoard every this many epochs
            (``0``: never).
        confusion_matrix_freq: write the validation confusion matrix as a TensorBoard image
            every this many epochs (``0``: never; costs one extra pass over the validation split).
        profile_batches: profile these training steps (1-based, counted across epochs) into
            ``logs/train/plugins/profile``: ``"start,stop"``, a single step ``"12"``, or ``"0"``
            (off). View with TensorBoard's Profile tab (``tensorboard-plugin-profile``). In a
            multi-worker run only the chief profiles.
    """

    epochs: int = 25
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True
    schedule: str = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    ema_momentum: float = 0.0
    checkpoint: str = "last"
    early_stopping_patience: int = 0
    cpu_replicas: int = 1
    collective_timeout: float = 120.0
    mixed_precision: str = "float32"
    jit_compile: bool = False
    deterministic: bool = False
    steps_per_execution: int = 1
    tensorboard_update_freq: int = 10
    histogram_freq: int = 1
    confusion_matrix_freq: int = 1
    profile_batches: str = "10,12"


# TFLite variants, in this order (see rps.tflite): float32 weights, float16 weights, dynamic-range
# (int8 weights, float activations), full integer (uint8 pixels in, float32 probabilities out).
QUANTIZE_VARIANTS = ("float32", "float16", "dynamic", "int8")


def parse_quantize(text: str) -> tuple[str, ...]:
    """Read ``export.quantize``: comma-separated variant names, ``none`` (float32 only) or
    ``all``. ``float32`` (``model.tflite``) is always included, first.

    Returns:
        Variant names in ``QUANTIZE_VARIANTS`` order, e.g. ``("float32", "int8")``.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    names = {n.strip() for n in str(text).split(",") if n.strip()}
    if "all" in names:
        names |= set(QUANTIZE_VARIANTS)
    unknown = sorted(names - set(QUANTIZE_VARIANTS) - {"none", "all"})
    if unknown:
        close = difflib.get_close_matches(unknown[0], QUANTIZE_VARIANTS + ("none", "all"), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"config key 'export.quantize' = {text!r}: unknown variant {unknown[0]!r}.{hint} "
            f"Use 'none', 'all' or a comma-separated list of: {', '.join(QUANTIZE_VARIANTS)}."
        )
    return tuple(v for v in QUANTIZE_VARIANTS if v in names or v == "float32")


def parse_profile_batches(text: str) -> tuple[int, int] | None:
    """Read ``train.profile_batches``: ``"start,stop"``, ``"step"`` or ``"0"``.

    Returns:
        ``(start, stop)`` training steps (1-based, inclusive), ``(0, 0)`` for off, or ``None``
        when the text is not valid (``_check`` turns that into a ``ConfigError``).
    """
    try:
        steps = [int(part) for part in str(text).split(",")]
    except ValueError:
        return None
    if steps == [0]:
        return (0, 0)
    if len(steps) == 1:
        steps = steps * 2
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
        return None
    return (steps[0], steps[1])


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``export`` writes and how it checks it.

    Attributes:
        tflite: write the TFLite files (builtin ops only, with TFLite Metadata and labels).
        quantize: TFLite variants besides ``model.tflite`` (float32): a comma-separated list of
            ``float16``, ``dynamic``, ``int8``, or ``none`` / ``all``
            (files ``model_<variant>.tflite``; see ``parse_quantize``).
        calibration_images: training images (a seeded random sample) that calibrate the
            ``int8`` variant's value ranges.
        int8_per_channel: quantize the ``int8`` variant's weights with one scale per channel
            instead of one per tensor (larger file: 12 bytes more per channel; see
            ``rps.tflite.convert_variant``).
        check_images: number of validation images on which each export must agree with Keras.
        license: license string written into the TFLite metadata.
    """

    tflite: bool = True
    quantize: str = "float32,int8"
    calibration_images: int = 200
    int8_per_channel: bool = False
    check_images: int = 16
    license: str = ("Apache-2.0. Rock Paper Scissors training data: Laurence Moroney, CC BY 2.0, "
                    "http://laurencemoroney.com/rock-paper-scissors-dataset")


@dataclasses.dataclass(frozen=True)
class Config:
    """The root config. ``seed`` drives every random choice; ``run_name`` names the run folder
    ``<output_dir>/<run_name>``; ``log_format`` is what the console shows: ``text`` (Keras and
    tqdm progress bars, log lines), ``json`` (one JSON object per line on stdout: each epoch,
    each tuning trial, the final result) or ``quiet`` (errors only). ``log_format`` does not take
    part in config equality, so an interrupted run resumes under any format.

    Attributes:
        seed: drives every random choice (split, shuffling, augmentation, initialisation).
        run_name: name of the run folder ``<output_dir>/<run_name>`` (a second run of the same
            name gets ``<run_name>-2``).
        output_dir: folder that holds the run folders and the ``latest`` link.
        log_format: console output: ``text`` (progress bars, log lines), ``json`` (one JSON
            object per line on stdout) or ``quiet`` (errors only).
    """

    seed: int = 42
    run_name: str = "default"
    output_dir: str = "saved_models"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    log_format: str = dataclasses.field(default="text", compare=False)


CHOICES = {
    "data.source": ("folder", "tfds"),
    "data.split_by": ("file", "group"),
    "train.optimizer": ("adamw", "adam", "rmsprop", "sgd"),
    "train.checkpoint": ("last", "best"),
    "train.schedule": ("cosine", "constant"),
    "train.mixed_precision": ("float32", "mixed_bfloat16", "mixed_float16"),
    "log_format": ("text", "json", "quiet"),
}


# Pillow refuses to open images above 2 * PIL.Image.MAX_IMAGE_PIXELS (its decompression-bomb
# error), so data.max_image_pixels cannot usefully be larger.
PILLOW_MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key path and how to fix it."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(key: str, value: Any, type_: Any) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's type."""
    origin = typing.get_origin(type_)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        return _parse_value(key, value, args[0])
    if isinstance(value, str) and type_ is not str:
        value = yaml.safe_load(value)  # "3" -> 3, "true" -> True, "1e-3" -> 0.001
    if type_ is bool and isinstance(value, bool):
        return value
    if type_ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if type_ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_ is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if type_ is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(
        f"config key '{key}': expected {type_.__name__}, got {type(value).__name__} {value!r}. "
        f"Fix the value in the YAML file or the '{key}=...' override."
    )


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(known))}."
    )


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, "
            f"got {type(values).__name__} {values!r}."
        )
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in types_:
            raise _unknown_key(key, list(types_))
        type_ = types_[name]
        if dataclasses.is_dataclass(type_):
            kwargs[name] = _build(type_, value, key + ".")
        else:
            kwargs[name] = _parse_value(key, value, type_)
    return cls(**kwargs)


def _set_nested(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is a value, not a section.")
    node[leaf] = value


def has_validation(cfg: Config) -> bool:
    """Whether a run carves a validation split out of ``train/``: ``data.folds >= 2`` (one fold)
    or ``data.validation_fraction > 0``."""
    return bool(cfg.data.folds) or cfg.data.validation_fraction > 0


def _check(cfg: Config) -> None:
    """Range and cross-field checks; each failure names the key and what is expected."""
    rules = [
        ("seed", cfg.seed >= 0, "an integer >= 0"),
        ("run_name", bool(cfg.run_name) and "/" not in cfg.run_name and cfg.run_name != "latest",
         "a non-empty folder name without '/', other than 'latest'"),
        ("data.image_size", 32 <= cfg.data.image_size <= 1024, "between 32 and 1024 pixels"),
        ("data.validation_fraction", 0.0 <= cfg.data.validation_fraction < 1.0,
         "in [0, 1) (0: no validation split, train on all of train/)"),
        ("data.folds", cfg.data.folds == 0 or cfg.data.folds >= 2, "0 (off) or an integer >= 2"),
        ("data.fold", 0 <= cfg.data.fold < max(cfg.data.folds, 1),
         f"between 0 and data.folds - 1 = {max(cfg.data.folds, 1) - 1}"),
        ("data.split_seed", cfg.data.split_seed is None or cfg.data.split_seed >= 0,
         "null (the root seed) or an integer >= 0"),
        ("data.global_batch_size", cfg.data.global_batch_size >= 1, "an integer >= 1"),
        ("data.max_images_per_class", cfg.data.max_images_per_class >= 0, ">= 0 (0 means all)"),
        ("data.max_image_pixels", 1 <= cfg.data.max_image_pixels <= PILLOW_MAX_PIXELS,
         f"between 1 and {PILLOW_MAX_PIXELS} (Pillow's own decompression-bomb limit)"),
        ("augment.rotation", 0.0 <= cfg.augment.rotation <= 0.5, "between 0 and 0.5 turns"),
        ("augment.zoom_in", 0.0 <= cfg.augment.zoom_in < 1.0, "in [0, 1)"),
        ("augment.zoom_out", 0.0 <= cfg.augment.zoom_out <= 2.0, "in [0, 2]"),
        ("augment.translation", 0.0 <= cfg.augment.translation < 1.0, "in [0, 1)"),
        ("augment.contrast", 0.0 <= cfg.augment.contrast < 1.0, "in [0, 1)"),
        ("augment.brightness", 0.0 <= cfg.augment.brightness < 1.0, "in [0, 1)"),
        ("augment.aspect", 0.0 <= cfg.augment.aspect < 1.0, "in [0, 1)"),
        ("augment.saturation", 0.0 <= cfg.augment.saturation <= 1.0, "in [0, 1]"),
        ("augment.hue", 0.0 <= cfg.augment.hue <= 1.0, "in [0, 1]"),
        ("augment.blur", 0.0 <= cfg.augment.blur <= 1.0, "in [0, 1]"),
        ("augment.noise", 0.0 <= cfg.augment.noise <= 64.0, "between 0 and 64 pixels"),
        ("augment.background", 0.0 <= cfg.augment.background <= 1.0, "a probability in [0, 1]"),
        ("augment.erasing", 0.0 <= cfg.augment.erasing <= 1.0, "a probability in [0, 1]"),
        ("augment.mixup", 0.0 <= cfg.augment.mixup <= 10.0, "an alpha in [0, 10] (0 switches mixup off)"),
        ("model.width", cfg.model.width >= 1, "an integer >= 1"),
        ("model.dropout_rate", 0.0 <= cfg.model.dropout_rate < 1.0, "in [0, 1)"),
        ("model.members", 1 <= cfg.model.members <= 8, "an integer in [1, 8]"),
        ("train.epochs", cfg.train.epochs >= 1, "an integer >= 1"),
        ("train.learning_rate", cfg.train.learning_rate > 0.0, "> 0"),
        ("train.weight_decay", cfg.train.weight_decay >= 0.0, ">= 0"),
        ("train.warmup_epochs", 0 <= cfg.train.warmup_epochs < cfg.train.epochs,
         "in [0, train.epochs)"),
        ("train.label_smoothing", 0.0 <= cfg.train.label_smoothing < 1.0, "in [0, 1)"),
        ("train.ema_momentum", 0.0 <= cfg.train.ema_momentum < 1.0, "in [0, 1) (0 switches EMA off)"),
        ("train.early_stopping_patience", cfg.train.early_stopping_patience >= 0, ">= 0"),
        ("train.checkpoint", has_validation(cfg) or cfg.train.checkpoint == "last",
         "'last' when there is no validation split to pick the best epoch on "
         "(data.validation_fraction: 0)"),
        ("train.early_stopping_patience", has_validation(cfg) or not cfg.train.early_stopping_patience,
         "0 when there is no validation split to watch (data.validation_fraction: 0)"),
        ("train.cpu_replicas", cfg.train.cpu_replicas >= 1, "an integer >= 1"),
        ("train.collective_timeout", cfg.train.collective_timeout >= 0.0,
         ">= 0 seconds (0: wait forever)"),
        ("train.steps_per_execution", cfg.train.steps_per_execution >= 1, "an integer >= 1"),
        ("train.tensorboard_update_freq", cfg.train.tensorboard_update_freq >= 0,
         ">= 0 steps (0: per epoch only)"),
        ("train.histogram_freq", cfg.train.histogram_freq >= 0, ">= 0 epochs (0: off)"),
        ("train.confusion_matrix_freq", cfg.train.confusion_matrix_freq >= 0,
         ">= 0 epochs (0: off)"),
        ("train.profile_batches", parse_profile_batches(cfg.train.profile_batches) is not None,
         "'start,stop' with 1 <= start <= stop, a single step such as '12', or '0' (off)"),
        ("export.check_images", cfg.export.check_images >= 0, ">= 0"),
        ("export.calibration_images", cfg.export.calibration_images >= 1, "an integer >= 1"),
    ]
    for key, ok, expected in rules:
        if not ok:
            raise ConfigError(
                f"config key '{key}' = {get(cfg, key)!r} is out of range: expected {expected}."
            )
    for key, choices in CHOICES.items():
        value = get(cfg, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"config key '{key}' = {value!r} is not valid.{hint} "
                f"Choose one of: {', '.join(choices)}."
            )
    parse_quantize(cfg.export.quantize)  # raises ConfigError naming the bad variant
    if cfg.data.global_batch_size % cfg.train.cpu_replicas:
        raise ConfigError(
            f"config key 'data.global_batch_size' = {cfg.data.global_batch_size} does not divide "
            f"across train.cpu_replicas = {cfg.train.cpu_replicas} replicas: choose a multiple "
            f"of {cfg.train.cpu_replicas}."
        )


def get(cfg: Config, dotted: str) -> Any:
    """Return the value at a dotted key path such as ``"train.epochs"``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def build_config(values: dict[str, Any] | None = None, overrides: list[str] = ()) -> Config:
    """Build and validate a ``Config`` from a nested dict plus ``key=value`` overrides.

    Args:
        values: nested mapping as read from YAML (``None``: all defaults).
        overrides: strings such as ``"train.epochs=3"``; values are parsed as YAML scalars
            and then checked against the field's type.

    Returns:
        The frozen, validated ``Config``.

    Raises:
        ConfigError: unknown key (with a close match), wrong type or out-of-range value.
    """
    tree: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                            for k, v in (values or {}).items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3).")
        _set_nested(tree, key.strip(), raw.strip())
    cfg = _build(Config, tree)
    _check(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (optional), apply overrides, validate.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ConfigError: the file is not a YAML mapping, or a key or value is wrong.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}. See configs/ for examples.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {values!r}.")
    try:
        return build_config(values, overrides)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as a nested dict of plain values (for YAML and JSON)."""
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a ``Config`` from ``to_dict`` output (e.g. a run folder's ``config.yaml``)."""
    return build_config(values)
