"""Training: strategy, datasets, model, optimizer, callbacks and ``fit``, in one screen.

Usage: ``result = train(cfg, run_dir)``; the full pipeline (train, export, evaluate) is
``rps.pipeline.run``.

Training runs under ``tf.distribute.MirroredStrategy``: one replica per GPU, or on a CPU-only
machine one replica per logical CPU device (``train.cpu_replicas``). When ``TF_CONFIG`` names a
cluster of several workers it runs under ``tf.distribute.MultiWorkerMirroredStrategy`` instead
(``rps.cluster``). The global batch size is split evenly across all replicas.
https://www.tensorflow.org/guide/distributed_training
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rps import cluster
from rps import tensorboard as tb
from rps.augment import make_augmenter, make_mixup
from rps.config import Config, TrainConfig, has_validation, parse_profile_batches
from rps.data import Splits, make_eval_dataset, make_train_dataset
from rps.models import build_model, mean_member_softmax
from rps.runs import (BACKUP_DIR, FINAL_WEIGHTS, HISTORY_FILE, FinishedTraining, prepare_resume,
                      read_history, write_json)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the trained logits model (the weights ``train.checkpoint`` chose),
    the per-epoch history, wall time in seconds, and whether it resumed from a backup."""

    model: keras.Model
    history: dict[str, list[float]]
    train_seconds: float
    num_replicas: int


def make_deterministic() -> None:
    """Make this process's training steps repeat bit for bit (``train.deterministic``): op
    determinism (``tf.config.experimental.enable_op_determinism``,
    https://www.tensorflow.org/api_docs/python/tf/config/experimental/enable_op_determinism)
    and one inter-op thread, so that the ops of a step run one at a time.

    Op determinism alone was not enough on this CPU: two trainings of the default model on the
    same batches drifted apart in the stem convolution's kernel within 2 to 6 steps, in one
    process and across processes, with oneDNN on or off and with one intra-op thread. With one
    inter-op thread, 20 steps were identical (docs/reliability.md). Some ops of a step that run
    concurrently race, as in https://github.com/tensorflow/tensorflow/issues/28215. It costs
    about a sixth of the training rate on 2 cores (0.83x).

    Raises:
        RuntimeError: TensorFlow had already started its thread pools in this process with more
            than one inter-op thread (start a fresh process).
    """
    tf.config.experimental.enable_op_determinism()
    if tf.config.threading.get_inter_op_parallelism_threads() != 1:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError as err:
            raise RuntimeError(f"train.deterministic needs a fresh process: TensorFlow's thread "
                               f"pools were already started ({err}).") from err


def make_strategy(train_cfg: TrainConfig) -> tf.distribute.Strategy:
    """Create the distribution strategy, once per process, before any other TensorFlow work.
    Under ``train.deterministic`` this first calls ``make_deterministic``.

    With ``TF_CONFIG`` naming several workers: ``MultiWorkerMirroredStrategy`` (every local GPU
    of every worker is a replica; a CPU-only worker is one replica), with collectives that give
    up after ``train.collective_timeout`` seconds so that the survivors of a dead worker exit
    instead of waiting forever. Otherwise ``MirroredStrategy``: on a machine without GPUs and
    ``cpu_replicas > 1``, the CPU is first split into that many logical devices (this must
    happen before TensorFlow initialises its devices).

    Raises:
        RuntimeError: ``cpu_replicas > 1`` or ``deterministic`` was asked for after TensorFlow
            had already set up its devices in this process (start a fresh process).
        ValueError: ``TF_CONFIG`` is malformed; several workers are asked for together with
            ``cpu_replicas > 1``; or several workers or ``cpu_replicas > 1`` are asked for on a
            Keras backend other than TensorFlow.
    """
    if train_cfg.deterministic:
        make_deterministic()
    if keras.backend.backend() != "tensorflow":
        # JAX and PyTorch train on one device here: tf.distribute does not reach them.
        if cluster.worker_info().multi_worker or train_cfg.cpu_replicas > 1:
            raise ValueError(f"multi-worker training and train.cpu_replicas > 1 need "
                             f"KERAS_BACKEND=tensorflow (this process runs "
                             f"{keras.backend.backend()}).")
        return tf.distribute.get_strategy()  # the default strategy: one replica, no-op scope
    if cluster.worker_info().multi_worker:
        if train_cfg.cpu_replicas > 1:
            raise ValueError("train.cpu_replicas > 1 cannot be combined with a multi-worker "
                             "TF_CONFIG: each CPU-only worker is one replica.")
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=train_cfg.collective_timeout or None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
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


def make_optimizer(train_cfg: TrainConfig, steps_per_epoch: int,
                   model: keras.Model | None = None) -> keras.optimizers.Optimizer:
    """Optimizer with the configured schedule. ``cosine``: linear warmup over
    ``warmup_epochs``, then cosine decay to 0 (Loshchilov & Hutter, SGDR,
    https://arxiv.org/abs/1608.03983; Goyal et al. warmup, https://arxiv.org/abs/1706.02677).
    AdamW: https://arxiv.org/abs/1711.05101. With ``ema_momentum``, the optimizer also keeps an
    exponential moving average of the weights (Polyak & Juditsky 1992; Keras ``use_ema``).

    With ``decay_norm_and_bias: false`` and a ``model``, AdamW leaves the model's 1-D trainable
    variables (biases, BatchNorm gamma and beta) out of weight decay, as ConvNeXt
    (https://arxiv.org/abs/2201.03545) and timm's ``param_groups_weight_decay`` do.

    Raises:
        ValueError: ``decay_norm_and_bias`` is false for AdamW but no ``model`` was given.
    """
    lr = train_cfg.learning_rate
    ema = {"use_ema": train_cfg.ema_momentum > 0, "ema_momentum": train_cfg.ema_momentum or 0.99}
    if train_cfg.schedule == "cosine":
        warmup = train_cfg.warmup_epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr, warmup_target=lr if warmup else None,
            warmup_steps=warmup, decay_steps=train_cfg.epochs * steps_per_epoch - warmup)
    if train_cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay, **ema)
        if not train_cfg.decay_norm_and_bias:
            if model is None:
                raise ValueError("train.decay_norm_and_bias=false needs the model to find its "
                                 "1-D weights.")
            optimizer.exclude_from_weight_decay(
                var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
        return optimizer
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if train_cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, **ema)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **ema)


def fit_verbose(cfg: Config) -> int:
    """``verbose`` for ``fit``: in ``text`` mode Keras progress bars on a terminal and one line
    per epoch otherwise (a bar redrawn into a log file is unreadable); nothing in ``json`` and
    ``quiet`` mode."""
    if cfg.log_format != "text":
        return 0
    return 1 if sys.stdout.isatty() else 2


def _print_epoch_json(epoch: int, logs: dict | None) -> None:
    print(json.dumps({"event": "epoch", "epoch": epoch + 1,
                      **{k: float(v) for k, v in (logs or {}).items()}}), flush=True)


class SeedStateBackup(keras.callbacks.Callback):
    """Back up and restore the model's Keras seed-generator states (``Dropout``'s random masks)
    beside the ``BackupAndRestore`` state, which does not hold them: Keras's ``save_weights``
    skips ``keras.random.SeedGenerator`` states, so a resumed run would draw the masks of
    epoch 0 again.

    The states are ``int64 [2]`` variables (``model.variables`` whose path ends in
    ``seed_generator_state``). After each epoch they are written, keyed by the next epoch to
    train, to ``<backup_dir>/seed_states.json`` (atomically, the last three epochs kept, so the
    previous epoch that ``rps.runs.prepare_resume`` may fall back to is there too). Put this
    callback before ``BackupAndRestore``: a kill between the two leaves an entry ahead of the
    backup, never one behind it.

    Args:
        backup_dir: the ``BackupAndRestore`` folder.
        start_epoch: the epoch the run resumes at (``ResumeState.epoch``; 0: fresh run). At the
            start of training the states saved for it are restored; if none were saved (a
            backup from an older version), training goes on with fresh states and a warning.
    """

    FILE = "seed_states.json"
    KEEP = 3

    def __init__(self, backup_dir: Path, start_epoch: int = 0):
        super().__init__()
        self.path = Path(backup_dir) / self.FILE
        self.start_epoch = start_epoch

    def _states(self) -> list:
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def _saved(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def on_train_begin(self, logs=None):
        if not self.start_epoch:
            return
        variables, saved = self._states(), self._saved().get(str(self.start_epoch))
        if saved is None or len(saved) != len(variables):
            log.warning("%s has no seed-generator states for epoch %d: the resumed epochs draw "
                        "other dropout masks than an uninterrupted run", self.path,
                        self.start_epoch + 1)
            return
        for variable, value in zip(variables, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_end(self, epoch, logs=None):
        saved = self._saved()
        saved[str(epoch + 1)] = [keras.ops.convert_to_numpy(v).tolist() for v in self._states()]
        keep = sorted(saved, key=int)[-self.KEEP:]
        write_json(self.path, {k: saved[k] for k in keep})


def make_callbacks(cfg: Config, run_dir: Path, splits: Splits | None = None,
                   tuning: bool = False,
                   best_val_loss: float | None = None,
                   start_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """All callbacks of a run, Keras built-ins where possible.

    BackupAndRestore (resume an interrupted run), best checkpoint on validation loss (when
    there is a validation split), CSV
    history, Keras TensorBoard (epoch scalars with the learning rate, graph, weight histograms,
    profiler trace; https://keras.io/api/callbacks/tensorboard/), and from ``rps.tensorboard``:
    loss, accuracy and learning rate every ``train.tensorboard_update_freq`` steps, HParams,
    augmented-sample and confusion-matrix images. Then one JSON line per epoch when
    ``log_format`` is ``json``, and optional early stopping.

    Args:
        cfg: the run config.
        run_dir: the run folder (``logs/``, ``checkpoints/``, ``history.csv`` go there).
        splits: the data; needed for the augmented-sample and confusion-matrix images
            (``None``: no image summaries).
        tuning: only what a keras-tuner trial can use (epoch scalars, JSON lines): keras-tuner
            checkpoints trials itself and gives each trial its own TensorBoard folder and HParams.
        best_val_loss: validation loss of the existing ``best.weights.h5`` of a resumed run
            (``rps.runs.prepare_resume``): only a better epoch replaces it. ``None``: fresh run.
        start_epoch: the epoch a resumed run starts at (0: fresh run), for ``SeedStateBackup``.

    Returns:
        The callbacks, in the order Keras should call them.
    """
    logs, train_cfg = run_dir / "logs", cfg.train
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.log_format == "json":
        # One JSON object per epoch on stdout, for scripts and CI logs.
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=_print_epoch_json))
    if tuning:
        return [keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False)] + callbacks
    checkpoints = run_dir / "checkpoints"
    callbacks += [
        # The history row and best checkpoint of an epoch are written before its backup, so a
        # kill between them leaves rows that rps.runs.prepare_resume trims, never a gap.
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if has_validation(cfg):  # without a validation split there is no best epoch to keep
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(checkpoints / "best.weights.h5"), monitor="val_loss", save_best_only=True,
            save_weights_only=True, initial_value_threshold=best_val_loss))
    callbacks += [
        # Before BackupAndRestore: see SeedStateBackup.
        SeedStateBackup(run_dir / BACKUP_DIR, start_epoch),
        # Saves the full training state each epoch; the same command resumes from it. The
        # previous epoch's copy is kept in case a kill cuts the latest one short; train()
        # deletes the state once training has finished and its result is saved.
        keras.callbacks.BackupAndRestore(str(run_dir / BACKUP_DIR), double_checkpoint=True,
                                         delete_checkpoint=False),
        # update_freq stays "epoch": see rps.tensorboard.BatchScalars for the step scalars.
        keras.callbacks.TensorBoard(
            log_dir=str(logs), write_graph=True, histogram_freq=train_cfg.histogram_freq,
            update_freq="epoch",
            # The profiler traces TensorFlow (Keras's JAX profiling needs Python >= 3.12). In a
            # multi-worker run only the chief profiles: the other workers' logs are scratch, and
            # a worker has died of a native crash in the profile window (docs/distributed.md).
            profile_batch=(parse_profile_batches(train_cfg.profile_batches)
                           if keras.backend.backend() == "tensorflow"
                           and cluster.worker_info().is_chief else 0)),
        keras.callbacks.LambdaCallback(on_train_begin=lambda _: tb.write_hparams(logs, cfg)),
    ]
    if train_cfg.tensorboard_update_freq:
        callbacks.append(tb.BatchScalars(logs, train_cfg.tensorboard_update_freq))
    if splits is not None:
        callbacks.append(tb.ImageSummaries(
            logs, tb.sample_images(splits.train, cfg.data.image_size),
            make_augmenter(cfg.augment, cfg.seed),
            make_eval_dataset(splits.val, cfg.data) if splits.val else None,
            np.asarray(splits.val.labels), splits.class_names,
            train_cfg.confusion_matrix_freq if splits.val else 0))
    if train_cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=train_cfg.early_stopping_patience))
    return callbacks


def _one_hot(num_classes: int):
    # Categorical (not sparse) cross-entropy, because only it supports label smoothing.
    return lambda x, y: (x, tf.one_hot(y, num_classes))


def make_train_batches(cfg: Config, splits: Splits, augment, start_epoch: int = 0,
                       end_epoch: int | None = None) -> tf.data.Dataset:
    """The training batches ``fit`` reads: ``make_train_dataset`` (cached, shuffled, batched,
    augmented by ``augment``), labels one-hot ``float32 [B, num_classes]``, then mixed under
    ``augment.mixup`` (soft labels). Shared by ``make_fit_datasets`` and the benchmark's
    throughput runs, so both measure the same input pipeline.

    Args:
        augment: ``rps.augment.make_augmenter``'s function, or ``None`` (no augmentation in the
            pipeline, e.g. when the benchmark puts it inside the model).
        start_epoch, end_epoch: the epochs ``start_epoch`` to ``end_epoch - 1`` (default: one
            epoch), see ``rps.data.make_train_dataset``.
    """
    train_ds = make_train_dataset(splits.train, cfg, augment, start_epoch, end_epoch)
    train_ds = train_ds.map(_one_hot(len(splits.class_names)))
    mixup = make_mixup(cfg.augment, cfg.seed)
    if mixup is not None:
        train_ds = train_ds.map(mixup, num_parallel_calls=tf.data.AUTOTUNE)
    return train_ds


def count_steps_per_epoch(cfg: Config, splits: Splits) -> int:
    """Training steps per epoch: ``len(splits.train) // data.global_batch_size`` (the last
    partial batch is dropped).

    Raises:
        ValueError: the training split is smaller than one global batch.
    """
    steps_per_epoch = len(splits.train) // cfg.data.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the training split has {len(splits.train)} images, fewer than "
                         f"data.global_batch_size={cfg.data.global_batch_size}: lower the batch size.")
    return steps_per_epoch


def make_fit_datasets(cfg: Config, splits: Splits, start_epoch: int = 0,
                      end_epoch: int | None = None
                      ) -> tuple[tf.data.Dataset, tf.data.Dataset | None, int]:
    """The datasets ``fit`` reads: augmented training batches and validation batches, labels
    one-hot ``float32 [B, num_classes]`` (soft labels for the training batches under
    ``augment.mixup``). ``splits.test`` is never read.

    Args:
        cfg: the run config.
        splits: the data.
        start_epoch, end_epoch: the training dataset holds the epochs ``start_epoch`` to
            ``end_epoch - 1`` (default: to ``train.epochs``) back to back, for one
            ``fit(steps_per_epoch=..., epochs=end_epoch)`` that starts (or resumes) at
            ``start_epoch`` (``rps.data.make_train_dataset``).

    Returns:
        ``(train_ds, val_ds, steps_per_epoch)``; ``val_ds`` is ``None`` when there is no
        validation split (``data.validation_fraction: 0``).

    Raises:
        ValueError: the training split is smaller than one global batch.
    """
    num_classes = len(splits.class_names)
    steps_per_epoch = count_steps_per_epoch(cfg, splits)
    train_ds = make_train_batches(cfg, splits, make_augmenter(cfg.augment, cfg.seed), start_epoch,
                                  cfg.train.epochs if end_epoch is None else end_epoch)
    val_ds = None
    if splits.val:
        val_ds = make_eval_dataset(splits.val, cfg.data).map(_one_hot(num_classes))
    if cfg.data.cache and val_ds is not None:
        # Fill the in-memory cache of the validation images now. Keras stops reading a dataset
        # of known cardinality after that many batches, before the end-of-data signal that
        # completes a ``tf.data`` cache; at full size the first validation pass left the cache
        # partial, and TensorFlow warned ("the partially cached contents of the dataset will be
        # discarded") and decoded the images again.
        for _ in val_ds:
            pass
    # Under MultiWorkerMirroredStrategy each worker keeps every N-th element. Said explicitly,
    # because the default (AUTO) first tries to shard by file, fails on an in-memory file list
    # and warns at every epoch; other strategies ignore the option.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = train_ds.with_options(options)
    val_ds = val_ds.with_options(options) if val_ds is not None else None
    return train_ds, val_ds, steps_per_epoch


class MemberCrossentropy(keras.losses.CategoricalCrossentropy):
    """Categorical cross-entropy of each ensemble member against the same labels, averaged over
    the members and the batch: each member learns as if trained alone (deep ensembles,
    Lakshminarayanan et al. 2017, https://arxiv.org/abs/1612.01474).

    ``y_true``: ``[B, C]`` one-hot (or smoothed, or mixup) labels; ``y_pred``: ``[B, M, C]``
    member logits (``rps.models.build_ensemble``). Same arguments as
    ``keras.losses.CategoricalCrossentropy``.
    """

    def call(self, y_true, y_pred):
        y_true = keras.ops.broadcast_to(keras.ops.expand_dims(y_true, 1), keras.ops.shape(y_pred))
        return super().call(y_true, y_pred)


def ensemble_accuracy(y_true, y_pred):
    """Top-1 accuracy of an ensemble: ``y_true`` ``[B, C]`` labels, ``y_pred`` ``[B, M, C]``
    member logits; the prediction is the argmax of the members' mean probability. Returns
    ``float32 [B]``, 1 where right."""
    return keras.ops.cast(keras.ops.equal(keras.ops.argmax(y_true, -1),
                                          keras.ops.argmax(mean_member_softmax(y_pred), -1)), "float32")


def compile_model(model: keras.Model, cfg: Config, steps_per_epoch: int) -> keras.Model:
    """Compile a logits model for training: the configured optimizer and schedule, categorical
    cross-entropy on logits with label smoothing, accuracy (for an ensemble,
    ``MemberCrossentropy`` and ``ensemble_accuracy``). Call it inside ``strategy.scope()``
    (``train`` and the tuner's hypermodel both do).

    Returns:
        ``model``, compiled.
    """
    ensemble = cfg.model.members > 1
    model.compile(
        optimizer=make_optimizer(cfg.train, steps_per_epoch, model),
        loss=(MemberCrossentropy if ensemble else keras.losses.CategoricalCrossentropy)(
            from_logits=True, label_smoothing=cfg.train.label_smoothing),
        metrics=[keras.metrics.MeanMetricWrapper(ensemble_accuracy, name="accuracy") if ensemble
                 else keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.train.jit_compile,
        steps_per_execution=cfg.train.steps_per_execution,
    )
    return model


def train(cfg: Config, splits: Splits, run_dir: Path,
          strategy: tf.distribute.Strategy | None = None,
          extra_callbacks: list[keras.callbacks.Callback] = (),
          reuse_finished: bool = False) -> TrainResult:
    """Train the configured model on ``splits.train``, validating on ``splits.val`` (if it has
    images: with ``data.validation_fraction: 0`` there is no validation and no best checkpoint).

    ``splits.test`` is never read here.

    Args:
        cfg: the run config.
        splits: the data (see ``rps.data.load_splits``).
        run_dir: the run folder; logs, checkpoints and ``history.csv`` go there.
        strategy: a distribution strategy (default: ``make_strategy(cfg.train)``).
        extra_callbacks: more Keras callbacks (the benchmark's timer, the tuner's).
        reuse_finished: when an earlier call trained this run folder to the end (and the
            process was then killed, e.g. during export), load its result instead of training
            again (``rps.runs.FinishedTraining``; what the pipeline asks for).

    An interrupted run resumes at the epoch after its last backup (``rps.runs.prepare_resume``)
    and reads the batches an uninterrupted run would have read from that epoch on (the same
    shuffle and augmentation keys, ``rps.data.make_train_dataset``), and its dropout masks
    (``SeedStateBackup``). With ``train.deterministic`` the resumed run's weights are
    bit-identical to an uninterrupted run's. Not restored: ``augment.mixup`` and the Keras
    layers of ``augment.fused: false`` draw from Keras's stateful seed generators outside the
    model, which restart from the seed.

    Returns:
        A ``TrainResult`` whose model holds the final weights (``train.checkpoint: last``) or
        those of the epoch with the lowest validation loss (``best``), and whose
        history covers every epoch of the run, resumed ones included.
    """
    strategy = strategy or make_strategy(cfg.train)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.train.deterministic:
        make_deterministic()
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    num_classes = len(splits.class_names)
    replicas = strategy.num_replicas_in_sync
    if cfg.data.global_batch_size % replicas:
        raise ValueError(f"data.global_batch_size={cfg.data.global_batch_size} does not divide "
                         f"across {replicas} replicas: choose a multiple of {replicas}.")
    log.info("replicas: %d, global batch size: %d, per-replica batch size: %d", replicas,
             cfg.data.global_batch_size, cfg.data.global_batch_size // replicas)

    steps_per_epoch = count_steps_per_epoch(cfg, splits)
    with strategy.scope():
        model = compile_model(build_model(cfg.model, num_classes, cfg.data.image_size), cfg,
                              steps_per_epoch)
    if cluster.worker_info().multi_worker:
        cluster.enable_multi_worker_fit(model)
    finished = FinishedTraining.load(run_dir) if reuse_finished else None
    if finished is not None:
        log.info("training of %s had finished; reusing its weights", run_dir)
        model.load_weights(str(run_dir / FINAL_WEIGHTS))
        return TrainResult(model, finished.history, finished.train_seconds, replicas)
    agree = ((lambda epoch: cluster.agree_on_epoch(strategy, epoch))
             if cluster.worker_info().multi_worker else None)
    resume = prepare_resume(run_dir, agree)
    # The training dataset starts at the resumed epoch's batches; Keras's BackupAndRestore
    # restores the weights, optimizer and epoch counter.
    train_ds, val_ds, _ = make_fit_datasets(cfg, splits, start_epoch=resume.epoch)
    start = time.perf_counter()
    # One iterator for the whole fit (all epochs in one dataset + steps_per_epoch), not a new
    # one each epoch: destroying a tf.data iterator waits for its autotuning thread, whose
    # sleep doubles up to a minute, and on 2 cores that left both idle for up to ~20 s at the
    # start of each epoch (measured 2026-12-07; docs/experiments.md). Keras keeps the iterator
    # across epochs when steps_per_epoch is given.
    history = model.fit(train_ds, steps_per_epoch=steps_per_epoch,
                        validation_data=val_ds, epochs=cfg.train.epochs,
                        callbacks=make_callbacks(cfg, run_dir, splits,
                                                 best_val_loss=resume.best_val_loss,
                                                 start_epoch=resume.epoch)
                        + list(extra_callbacks),
                        verbose=fit_verbose(cfg))
    seconds = time.perf_counter() - start
    best = run_dir / "checkpoints" / "best.weights.h5"
    if cfg.train.checkpoint == "best" and best.is_file():
        model.load_weights(str(best))
    logged = dict(history.history)
    if resume.epoch:  # fit only saw the resumed epochs; history.csv has them all
        logged = {k: v for k, v in read_history(run_dir / HISTORY_FILE).items() if k != "epoch"}
    FinishedTraining(logged, seconds).save(run_dir, model)
    return TrainResult(model, logged, seconds, replicas)
