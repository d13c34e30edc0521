"""Training: strategy, datasets, model, optimizer, callbacks and ``fit``, in one screen.

Usage: ``result = train(cfg, run_dir)``; the full pipeline (train, export, evaluate) is
``rps.pipeline.run``.

Training runs under ``tf.distribute.MirroredStrategy``: one replica per GPU, or on a CPU-only
machine one replica per logical CPU device (``train.cpu_replicas``). The global batch size is
split evenly across replicas. https://www.tensorflow.org/guide/distributed_training
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import keras
import tensorflow as tf

from rps.augment import make_augmenter
from rps.config import Config, TrainConfig
from rps.data import Splits, make_eval_dataset, make_train_dataset
from rps.models import build_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the trained logits model (best weights on the validation split),
    the per-epoch history, wall time in seconds, and whether it resumed from a backup."""

    model: keras.Model
    history: dict[str, list[float]]
    train_seconds: float
    num_replicas: int


def make_strategy(train_cfg: TrainConfig) -> tf.distribute.Strategy:
    """Create the distribution strategy, once per process.

    On a machine without GPUs and ``cpu_replicas > 1``, the CPU is first split into that many
    logical devices (this must happen before TensorFlow initialises its devices).

    Raises:
        RuntimeError: ``cpu_replicas > 1`` was asked for after TensorFlow had already set up its
            devices in this process (start a fresh process).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and train_cfg.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        wanted = [tf.config.LogicalDeviceConfiguration()] * train_cfg.cpu_replicas
        if tf.config.get_logical_device_configuration(cpu) != wanted:
            try:
                tf.config.set_logical_device_configuration(cpu, wanted)
            except RuntimeError as err:
                raise RuntimeError(
                    f"train.cpu_replicas={train_cfg.cpu_replicas} needs a fresh process: "
                    f"TensorFlow's devices were already initialised ({err})."
                ) from err
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()


def make_optimizer(train_cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Optimizer with the configured schedule. ``cosine``: linear warmup over
    ``warmup_epochs``, then cosine decay to 0 (Loshchilov & Hutter, SGDR,
    https://arxiv.org/abs/1608.03983; Goyal et al. warmup, https://arxiv.org/abs/1706.02677).
    AdamW: https://arxiv.org/abs/1711.05101."""
    lr = train_cfg.learning_rate
    if train_cfg.schedule == "cosine":
        warmup = train_cfg.warmup_epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr, warmup_target=lr if warmup else None,
            warmup_steps=warmup, decay_steps=train_cfg.epochs * steps_per_epoch - warmup)
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if train_cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


def make_callbacks(cfg: Config, run_dir: Path) -> list[keras.callbacks.Callback]:
    """Built-in Keras callbacks only: BackupAndRestore (resume an interrupted run), best
    checkpoint on validation loss, CSV history, TensorBoard, optional early stopping."""
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        # Saves the full training state each epoch; the same command resumes from it.
        keras.callbacks.BackupAndRestore(str(checkpoints / "backup")),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "best.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=True),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.train.early_stopping_patience))
    return callbacks


def _one_hot(num_classes: int):
    # Categorical (not sparse) cross-entropy, because only it supports label smoothing.
    return lambda x, y: (x, tf.one_hot(y, num_classes))


def train(cfg: Config, splits: Splits, run_dir: Path,
          strategy: tf.distribute.Strategy | None = None,
          extra_callbacks: list[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train the configured model on ``splits.train``, validating on ``splits.val``.

    ``splits.test`` is never read here.

    Args:
        cfg: the run config.
        splits: the data (see ``rps.data.load_splits``).
        run_dir: the run folder; logs, checkpoints and ``history.csv`` go there.
        strategy: a distribution strategy (default: ``make_strategy(cfg.train)``).
        extra_callbacks: more Keras callbacks (the benchmark's timer, the tuner's).

    Returns:
        A ``TrainResult`` whose model holds the best weights by validation loss.
    """
    strategy = strategy or make_strategy(cfg.train)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    num_classes = len(splits.class_names)
    replicas = strategy.num_replicas_in_sync
    log.info("replicas: %d, global batch size: %d, per-replica batch size: %d", replicas,
             cfg.data.global_batch_size, cfg.data.global_batch_size // replicas)

    augment = make_augmenter(cfg.augment, cfg.seed)
    train_ds = make_train_dataset(splits.train, cfg, augment).map(_one_hot(num_classes))
    val_ds = make_eval_dataset(splits.val, cfg.data).map(_one_hot(num_classes))
    steps_per_epoch = len(splits.train) // cfg.data.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the training split has {len(splits.train)} images, fewer than "
                         f"data.global_batch_size={cfg.data.global_batch_size}: lower the batch size.")

    with strategy.scope():
        model = build_model(cfg.model, num_classes, cfg.data.image_size)
        model.compile(
            optimizer=make_optimizer(cfg.train, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=cfg.train.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=cfg.train.jit_compile,
            steps_per_execution=cfg.train.steps_per_execution,
        )
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                        callbacks=make_callbacks(cfg, run_dir) + list(extra_callbacks),
                        verbose=2)
    seconds = time.perf_counter() - start
    best = run_dir / "checkpoints" / "best.weights.h5"
    if best.is_file():
        model.load_weights(str(best))
    return TrainResult(model, dict(history.history), seconds, replicas)
