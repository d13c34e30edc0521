"""TensorBoard summaries beyond Keras's own callback: loss, accuracy and learning rate every N
steps, an image grid of augmented training samples, the validation confusion matrix each epoch,
HParams and final metrics.

Usage: ``rps.train.make_callbacks`` builds these callbacks beside ``keras.callbacks.TensorBoard``;
``write_final_metrics(run_dir / "logs", metrics)`` runs after evaluation.

Layout of ``<run_dir>/logs`` (one TensorBoard run per folder): ``train/`` (Keras scalars
``epoch_*`` and ``batch_*``, ``batch_learning_rate``, the model graph, weight histograms, the
profiler trace under ``plugins/profile``, the image ``augmented_training_samples``),
``validation/`` (``epoch_*`` and the image ``confusion_matrix``), and the folder itself (the
HParams session and ``final/*`` scalars). Summaries API:
https://www.tensorflow.org/api_docs/python/tf/summary ; HParams:
https://www.tensorflow.org/tensorboard/hyperparameter_tuning_with_hparams .
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from rps.config import Config, to_dict
from rps.data import ImageSplit, make_image_dataset
from rps.models import probabilities

# Config keys left out of the HParams table: the long license text says nothing about a run.
_HPARAMS_SKIP = ("export.license",)


def sample_images(split: ImageSplit, image_size: int, per_class: int = 2) -> np.ndarray:
    """The first ``per_class`` images of each class of ``split`` (files in sorted order, so the
    same images every run): ``uint8 [N, S, S, 3]`` with ``N <= per_class * num_classes``."""
    labels = np.asarray(split.labels)
    picks = [i for c in range(len(split.class_names))
             for i in np.flatnonzero(labels == c)[:per_class]]
    if not picks:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    ds = make_image_dataset(split.subset(split.name, np.asarray(picks)), image_size)
    images, _ = next(iter(ds.batch(len(picks))))
    return images.numpy().astype(np.uint8)


def augment_draws(images: np.ndarray, augment_fn: Callable | None, draws: int = 4) -> np.ndarray:
    """Apply the training augmentation ``draws`` times to the same images.

    Args:
        images: ``uint8 [N, S, S, 3]``.
        augment_fn: ``rps.augment.make_augmenter`` output (``None``: no augmentation, the
            images are repeated unchanged).
        draws: random draws per image.

    Returns:
        ``uint8 [N, draws, S, S, 3]``.
    """
    batch = tf.convert_to_tensor(images, tf.float32)
    out = [augment_fn(batch) if augment_fn is not None else batch for _ in range(draws)]
    stacked = np.stack([np.asarray(o) for o in out], axis=1)
    return np.clip(np.round(stacked), 0, 255).astype(np.uint8)


def image_grid(rows: np.ndarray, gap: int = 2) -> np.ndarray:
    """Tile ``uint8 [R, C, H, W, 3]`` images into one ``uint8 [R*(H+gap), C*(W+gap), 3]`` image
    with white gaps (one picture, so TensorBoard shows the whole grid at once)."""
    r, c, h, w, _ = rows.shape
    grid = np.full((r * (h + gap), c * (w + gap), 3), 255, np.uint8)
    for i in range(r):
        for j in range(c):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = rows[i, j]
    return grid


def confusion_matrix_image(cm: np.ndarray, class_names: tuple[str, ...], title: str) -> np.ndarray:
    """Render a confusion matrix (rows true, columns predicted) with ``rps.plots`` and return
    it as ``uint8 [1, H, W, 4]`` (RGBA), ready for ``tf.summary.image``."""
    from rps.plots import plot_confusion_matrix  # matplotlib only: no later pipeline stage

    buffer = io.BytesIO()
    plot_confusion_matrix(cm.tolist(), list(class_names), buffer, title)
    return tf.image.decode_png(buffer.getvalue(), channels=4)[tf.newaxis].numpy()


class ImageSummaries(keras.callbacks.Callback):
    """Write the augmented-sample grid once (``train/augmented_training_samples``, step 0) and
    the validation confusion matrix every ``confusion_matrix_freq`` epochs
    (``validation/confusion_matrix``, step = epoch index, as Keras's ``epoch_*`` scalars).
    Pattern of the TensorBoard guide "Displaying image data",
    https://www.tensorflow.org/tensorboard/image_summaries .

    Args:
        log_dir: the run's ``logs`` folder.
        preview: ``uint8 [N, S, S, 3]`` training images to show augmented (see ``sample_images``).
        augment_fn: the training augmentation (``None``: none configured).
        val_dataset: ordered evaluation dataset of the validation split,
            ``(float32 [B, S, S, 3], int32 [B])`` batches (``rps.data.make_eval_dataset``);
            ``None`` when there is no validation split (then ``confusion_matrix_freq`` must be 0).
        val_labels: ``int [N]`` true labels of ``val_dataset``, in order.
        class_names: label of each output index.
        confusion_matrix_freq: epochs between confusion matrices (``0``: never).
    """

    def __init__(self, log_dir: Path, preview: np.ndarray, augment_fn: Callable | None,
                 val_dataset: tf.data.Dataset | None, val_labels: np.ndarray,
                 class_names: tuple[str, ...], confusion_matrix_freq: int = 1):
        super().__init__()
        self.log_dir, self.preview, self.augment_fn = Path(log_dir), preview, augment_fn
        self.val_dataset, self.val_labels = val_dataset, np.asarray(val_labels)
        self.class_names, self.freq = tuple(class_names), confusion_matrix_freq
        self.writers: dict[str, tf.summary.SummaryWriter] = {}

    def _write(self, run: str, tag: str, image: np.ndarray, step: int, description: str = ""):
        if run not in self.writers:
            self.writers[run] = tf.summary.create_file_writer(str(self.log_dir / run))
        # record_if(True): write even inside another callback's record_if(False) condition.
        with self.writers[run].as_default(), tf.summary.record_if(True):
            tf.summary.image(tag, image, step=step, description=description)
        self.writers[run].flush()

    def on_train_begin(self, logs=None):
        if not len(self.preview):
            return
        # Each row: the original image, then four random draws of the training augmentation.
        draws = augment_draws(self.preview, self.augment_fn)
        rows = np.concatenate([self.preview[:, None], draws], 1)
        self._write("train", "augmented_training_samples", image_grid(rows)[None], 0,
                    "Each row: the original, then 4 random draws of the training augmentation.")

    def on_epoch_end(self, epoch, logs=None):
        if not self.freq or epoch % self.freq:
            return
        # Eager calls, not model.predict: predict would trace one more tf.function per run.
        # NumPy in and out, so that it works on every Keras backend.
        predicted = np.concatenate([
            np.argmax(probabilities(self.model(np.asarray(x), training=False)), 1)
            for x, _ in self.val_dataset])
        cm = tf.math.confusion_matrix(self.val_labels, predicted,
                                      num_classes=len(self.class_names)).numpy()
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        image = confusion_matrix_image(cm, self.class_names,
                                       f"validation, epoch {epoch + 1} (top-1 {accuracy:.3f})")
        self._write("validation", "confusion_matrix", image, epoch,
                    "Validation confusion matrix: rows true class, columns predicted class.")

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


class BatchScalars(keras.callbacks.Callback):
    """Write ``batch_loss``, ``batch_accuracy`` (Keras's running means over the epoch so far)
    and ``batch_learning_rate`` to ``logs/train`` every ``every`` optimizer steps.

    Keras's own ``TensorBoard(update_freq=N)`` would do the first two, but it wraps the whole
    epoch in ``tf.summary.record_if(step % N == 0)``, which also drops the epoch scalars, graph
    and histograms whenever the steps per epoch are not a multiple of N
    (https://github.com/tensorflow/tensorboard/issues/4975); so the Keras callback stays at
    ``update_freq="epoch"`` and this one writes the step scalars. The step is
    ``optimizer.iterations``, so a resumed run continues its curves.
    """

    def __init__(self, log_dir: Path, every: int):
        super().__init__()
        self.log_dir, self.every, self.writer = Path(log_dir), every, None

    def on_train_begin(self, logs=None):
        self.writer = tf.summary.create_file_writer(str(self.log_dir / "train"))

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if step % self.every:
            return
        values = {f"batch_{k}": float(v) for k, v in (logs or {}).items()}
        values["batch_learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        with self.writer.as_default(), tf.summary.record_if(True):
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


def flatten_config(cfg: Config) -> dict[str, bool | int | float | str]:
    """The config as ``{"train.learning_rate": 0.003, ...}``: the HParams of a run (``None``
    becomes ``"none"``, as HParams takes only bool, int, float and str)."""
    def walk(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            elif f"{prefix}{key}" not in _HPARAMS_SKIP:
                yield f"{prefix}{key}", "none" if value is None else value

    values = to_dict(cfg)
    values.pop("log_format", None)  # how the console looks is not a hyperparameter
    return dict(walk(values, ""))


def write_hparams(log_dir: Path, cfg: Config) -> None:
    """Record the run as one HParams session in ``log_dir`` (the run's ``logs`` folder): every
    config value is a column; the metrics are the scalars of ``log_dir`` and its ``train`` and
    ``validation`` sub-runs (last value), so runs under one ``--logdir`` compare side by side."""
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(log_dir)).as_default(), tf.summary.record_if(True):
        hp.hparams(flatten_config(cfg), trial_id=cfg.run_name)


def write_final_metrics(log_dir: Path, metrics: dict, history: dict | None = None,
                        checkpoint: str = "last") -> None:
    """Write a run's results as scalars in ``log_dir``, its HParams session folder, so the
    HParams table shows them beside the config: ``final/<split>_<artifact>_top1_accuracy``,
    ``final/train_seconds``, and ``final/val_accuracy`` and ``final/val_loss`` of the epoch whose
    weights were exported (the last one, or with ``checkpoint="best"`` the one with the lowest
    validation loss).

    Args:
        log_dir: the run's ``logs`` folder.
        metrics: ``metrics.json`` content: ``{split: {artifact: {"top1_accuracy": ...}}}`` plus
            scalars such as ``train_seconds``.
        history: Keras ``History.history`` (``{"val_loss": [...], ...}``), or ``None``.
        checkpoint: ``train.checkpoint`` of the run (``"last"`` or ``"best"``).
    """
    val_loss = (history or {}).get("val_loss") or []
    if not len(val_loss):
        best = None
    else:
        best = int(np.argmin(val_loss)) if checkpoint == "best" else len(val_loss) - 1
    with tf.summary.create_file_writer(str(log_dir)).as_default(), tf.summary.record_if(True):
        for key in ("val_accuracy", "val_loss"):
            if best is not None and key in history:
                tf.summary.scalar(f"final/{key}", history[key][best], step=0)
        for split, by_artifact in metrics.items():
            if isinstance(by_artifact, dict):
                for artifact, values in by_artifact.items():
                    if isinstance(values, dict) and "top1_accuracy" in values:
                        tf.summary.scalar(f"final/{split}_{artifact}_top1_accuracy",
                                          values["top1_accuracy"], step=0)
        if "train_seconds" in metrics:
            tf.summary.scalar("final/train_seconds", metrics["train_seconds"], step=0)
