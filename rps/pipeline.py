"""The main job, top to bottom: data -> train -> export -> evaluate -> plots -> report ->
complete.

Usage: ``run_dir = run(load_config("configs/default.yaml"))`` (what ``rps train`` and
``make train`` call).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from rps import cluster
from rps.augment import make_augmenter
from rps.config import Config, parse_quantize
from rps.data import ImageSplit, Splits, load_splits, make_eval_dataset
from rps.evaluate import collect, evaluate
from rps.export import artifact_name, export_model
from rps.models import add_softmax, build_model
from rps.plots import (plot_augmentation_preview, plot_confusion_matrix, plot_history,
                       plot_misclassified)
from rps.report import write_report
from rps.runs import (FINAL_WEIGHTS, FinishedTraining, library_versions, mark_complete,
                      open_run_dir, read_run_config, require_complete, write_json)
from rps.tensorboard import augment_draws, sample_images, write_final_metrics
from rps.tflite import ModelInfo, calibration_images, evaluate_variants, variant_files
from rps.train import make_strategy, train

log = logging.getLogger(__name__)


def inference_model(trained: keras.Model, cfg: Config, num_classes: int) -> keras.Model:
    """Rebuild the architecture in float32, outside any distribution strategy, copy the trained
    weights, and add the softmax: the graph that every export is made from."""
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(cfg.model, num_classes, cfg.data.image_size)
    model.set_weights(trained.get_weights())
    return add_softmax(model)


def evaluate_run(run_dir: Path, cfg: Config, splits: Splits) -> dict:
    """Evaluate every exported artifact of ``run_dir`` on the held-out splits (``test`` and
    ``validation_folder``), plot confusion matrices, and write ``metrics.json``.

    Returns:
        ``{split: {artifact: metrics}}``; artifacts other than Keras also carry ``agreement``
        with the Keras model's top-1 predictions.
    """
    artifacts = {"keras": run_dir / "model.keras", "saved_model": run_dir / "saved_model",
                 **{artifact_name(v): p for v, p in variant_files(run_dir).items()}}
    results: dict = {}
    held_out: list[ImageSplit] = [s for s in (splits.test, splits.validation_folder) if s]
    for split in held_out:
        dataset = make_eval_dataset(split, cfg.data, cache=True)
        results[split.name] = {}
        reference = None
        for name, path in tqdm(artifacts.items(), desc=f"evaluate on {split.name}", unit="model",
                               disable=cfg.log_format != "text", leave=False):
            if not path.exists():
                continue
            metrics, probs = evaluate(path, dataset, splits.class_names, reference)
            reference = probs if reference is None else reference
            results[split.name][name] = metrics
            log.info("%s on %s: top-1 accuracy %.4f%s", name, split.name, metrics["top1_accuracy"],
                     f", agreement with keras {metrics['agreement']:.4f}" if "agreement" in metrics else "")
            plot_confusion_matrix(metrics["confusion_matrix"], list(splits.class_names),
                                  run_dir / f"confusion_matrix_{split.name}_{name}.png",
                                  f"{name} on {split.name} (top-1 {metrics['top1_accuracy']:.3f})")
    return results


def plot_samples(run_dir: Path, cfg: Config, splits: Splits, model: keras.Model) -> None:
    """Example-image plots: ``misclassified_<split>.png`` (the inference model's mistakes on
    ``splits.report_split``: the test split if there is one) and
    ``augmentation_preview.png`` (training images with random draws of the augmentation)."""
    split = splits.report_split
    images, labels = collect(make_eval_dataset(split, cfg.data, cache=False))
    # Eager calls in batches of 64, not model.predict: predict would trace one more tf.function.
    probabilities = np.concatenate([np.asarray(model(images[i:i + 64], training=False))
                                    for i in range(0, len(images), 64)])
    plot_misclassified(images.astype(np.uint8), labels, probabilities, list(splits.class_names),
                       run_dir / f"misclassified_{split.name}.png", f"keras on {split.name}")
    preview = sample_images(splits.train, cfg.data.image_size)
    draws = augment_draws(preview, make_augmenter(cfg.augment, cfg.seed))
    plot_augmentation_preview(preview, draws, run_dir / "augmentation_preview.png")


def evaluate_run_mediapipe(run_dir: Path, cfg: Config, splits: Splits) -> dict:
    """Evaluate every TFLite variant of ``run_dir`` through MediaPipe Tasks ``ImageClassifier``
    (the app runtime) on the held-out splits.

    Returns:
        ``{split: {"keras": metrics, "mediapipe_<variant>": metrics}}``; the MediaPipe metrics
        carry ``agreement`` with the Keras model's top-1 predictions.

    Raises:
        ValueError: MediaPipe refuses a file, or reads label names other than the run's.
    """
    from rps.evaluate import compute_metrics

    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)
    results: dict = {}
    for split in (s for s in (splits.test, splits.validation_folder) if s):
        images, labels = collect(make_eval_dataset(split, cfg.data, cache=False))
        reference = np.asarray(model.predict(images, verbose=0, batch_size=64))
        by_variant = evaluate_variants(run_dir, images, labels, splits.class_names, reference,
                                       runtime="mediapipe")
        results[split.name] = {"keras": compute_metrics(labels, reference, splits.class_names),
                               **{f"mediapipe_{v}": m for v, m in by_variant.items()}}
        for name, m in results[split.name].items():
            log.info("%s on %s: top-1 accuracy %.4f", name, split.name, m["top1_accuracy"])
    return results


def _tflite_inputs(cfg: Config, splits: Splits, run_dir: Path) -> dict:
    """The TFLite keyword arguments of ``export_model``: variants, int8 calibration images
    (training split), metadata."""
    quantize = parse_quantize(cfg.export.quantize)
    calibration = (calibration_images(splits.train, cfg.data, cfg.export.calibration_images,
                                      cfg.seed) if "int8" in quantize else None)
    info = ModelInfo(name=f"rps {cfg.model.name}", version=f"{run_dir.name}, data "
                     f"{splits.fingerprint[:12]}", license=cfg.export.license)
    return {"tflite": cfg.export.tflite, "quantize": quantize, "calibration_images": calibration,
            "model_info": info, "int8_per_channel": cfg.export.int8_per_channel}


def run(cfg: Config, argv: list[str] | None = None) -> Path:
    """Train, export and evaluate one run; resume it if an incomplete run of the same config
    exists.

    In a multi-worker cluster (``TF_CONFIG``) every worker calls this with the same config and
    trains; only the chief exports, evaluates and marks its run folder complete. Other workers
    keep their checkpoints and logs in ``rps.cluster.worker_output_dir`` and return after
    training.

    Returns:
        The complete run folder (on a non-chief worker: its incomplete scratch run folder).
    """
    strategy = make_strategy(cfg.train)  # first: it may split the CPU into logical devices
    worker = cluster.worker_info()
    if not worker.is_chief:
        cfg = dataclasses.replace(cfg, output_dir=cluster.worker_output_dir(cfg.output_dir, worker))
    # The data is checked before the run folder exists, so a missing or bad data folder leaves
    # no half-made run behind.
    splits = load_splits(cfg.data, cfg.seed)
    run_dir, resumed = open_run_dir(cfg)
    log.info("%s run folder %s", "resuming" if resumed else "new", run_dir)
    info = {"command": argv if argv is not None else sys.argv, "resumed": resumed,
            "versions": library_versions(), "data_fingerprint": splits.fingerprint,
            "class_names": list(splits.class_names),
            "num_images": {s.name: len(s) for s in (splits.train, splits.val, splits.test,
                                                    splits.validation_folder) if s is not None},
            "num_replicas": strategy.num_replicas_in_sync,
            "worker": {"task": worker.name, "num_workers": worker.num_workers}}
    write_json(run_dir / "run_info.json", info)

    result = train(cfg, splits, run_dir, strategy, reuse_finished=True)
    if not worker.is_chief:
        log.info("%s finished training; the chief writes the exports", worker.name)
        return run_dir
    if keras.backend.backend() != "tensorflow":
        return finish_in_tensorflow(run_dir, cfg, splits, result.model)
    return finish(run_dir, cfg, splits, result.model, result.history, result.train_seconds)


def finish(run_dir: Path, cfg: Config, splits: Splits, trained: keras.Model,
           history: dict[str, list[float]], train_seconds: float) -> Path:
    """The stages after training: export (SavedModel, TFLite variants, labels), evaluate every
    artifact on the held-out splits (``metrics.json``), plots, TensorBoard final metrics,
    ``report.md``, and the ``COMPLETE`` marker. Needs the TensorFlow backend.

    Args:
        run_dir: the run folder, whose training has finished.
        cfg: its config.
        splits: its data.
        trained: the trained logits model (any dtype policy).
        history: per-epoch training history.
        train_seconds: training wall time, in seconds.

    Returns:
        ``run_dir``, now complete.
    """
    model = inference_model(trained, cfg, len(splits.class_names))
    check, _ = collect(make_eval_dataset(splits.agreement_split, cfg.data, cache=False).take(1))
    export_model(model, run_dir, splits.class_names, check[:cfg.export.check_images],
                 **_tflite_inputs(cfg, splits, run_dir))
    started = time.perf_counter()
    metrics = {"train_seconds": train_seconds, "num_parameters": model.count_params(),
               **evaluate_run(run_dir, cfg, splits)}
    metrics["evaluate_seconds"] = time.perf_counter() - started
    write_json(run_dir / "metrics.json", metrics)
    plot_history(run_dir / "history.csv", run_dir / "training_curves.png")
    plot_samples(run_dir, cfg, splits, model)
    write_final_metrics(run_dir / "logs", metrics, history, cfg.train.checkpoint)
    write_report(run_dir)
    mark_complete(run_dir)
    return run_dir


def finish_trained_run(run_dir: Path) -> Path:
    """``finish`` a run folder whose training has finished (``rps.runs.FinishedTraining``),
    from its files alone: config, data, ``checkpoints/final.weights.h5``. Keras weight files
    do not depend on the backend, so weights trained on JAX or PyTorch load here.

    Raises:
        ValueError: the run's training has not finished.
    """
    cfg = read_run_config(run_dir)
    finished = FinishedTraining.load(run_dir)
    if finished is None:
        raise ValueError(f"{run_dir}: training has not finished (no whole {FINAL_WEIGHTS}); "
                         f"run `rps train --config {run_dir / 'config.yaml'}` to resume it.")
    splits = load_splits(cfg.data, cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    model = build_model(cfg.model, len(splits.class_names), cfg.data.image_size)
    model.load_weights(str(run_dir / FINAL_WEIGHTS))
    if (run_dir / BACKEND_CHECK).is_file():
        check_backend_outputs(run_dir, inference_model(model, cfg, len(splits.class_names)))
    return finish(run_dir, cfg, splits, model, finished.history, finished.train_seconds)


BACKEND_CHECK = "checkpoints/backend_check.npz"
BACKEND_TOLERANCE = 1e-4  # largest difference in any output probability
BACKEND_CHECK_IMAGES = 64  # the first images of splits.agreement_split


def check_backend_outputs(run_dir: Path, model: keras.Model) -> float:
    """Compare ``model`` (the TensorFlow inference model) with the probabilities the training
    backend's model gave on the same images (``checkpoints/backend_check.npz``).

    Returns:
        The largest absolute difference of any probability.

    Raises:
        ValueError: it exceeds ``BACKEND_TOLERANCE`` (the weights did not carry over).
    """
    with np.load(run_dir / BACKEND_CHECK) as saved:
        images, expected, backend = saved["images"], saved["probabilities"], str(saved["backend"])
    got = np.asarray(model(images, training=False))
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= BACKEND_TOLERANCE:
        raise ValueError(f"{run_dir}: the TensorFlow model's probabilities differ from the "
                         f"{backend}-trained model's by up to {diff:.2g} on {len(images)} "
                         f"validation images (tolerance {BACKEND_TOLERANCE}).")
    log.info("the TensorFlow model matches the %s-trained model on %d validation images (largest "
             "probability difference %.2g)", backend, len(images), diff)
    return diff


def finish_in_tensorflow(run_dir: Path, cfg: Config, splits: Splits, trained: keras.Model) -> Path:
    """After training on the JAX or PyTorch backend: run ``finish_trained_run`` in a child
    process on the TensorFlow backend (the Keras backend is fixed per process). SavedModel and
    TFLite are TensorFlow formats, and exporting the TensorFlow graph of the same weights gives
    builtin-op TFLite files, where Keras's JAX export (jax2tf) would carry the JAX graph and its
    random-generator state into the file. The training backend's probabilities on the first
    ``BACKEND_CHECK_IMAGES`` images of ``splits.agreement_split`` go along (``BACKEND_CHECK``),
    and the child checks that its model agrees.

    Raises:
        ValueError: the child failed (its log lines are above; rerunning the same ``rps train``
            command retries the export without training again).
    """
    model = inference_model(trained, cfg, len(splits.class_names))
    batches = -(-BACKEND_CHECK_IMAGES // cfg.data.global_batch_size)  # decode only these
    images, _ = collect(
        make_eval_dataset(splits.agreement_split, cfg.data, cache=False).take(batches))
    images = images[:BACKEND_CHECK_IMAGES]
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    check = run_dir / BACKEND_CHECK
    tmp = check.with_name(f".tmp-{os.getpid()}-{check.name}")
    np.savez(tmp, images=images, probabilities=probabilities, backend=keras.backend.backend())
    os.replace(tmp, check)
    log.info("training on %s finished; exporting on the TensorFlow backend",
             keras.backend.backend())
    child = subprocess.run([sys.executable, "-m", "rps.pipeline", str(run_dir)],
                           env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    if child.returncode:
        raise ValueError(f"exporting {run_dir} on the TensorFlow backend failed (exit code "
                         f"{child.returncode}, log above); rerun the same command to retry the "
                         f"export without training again.")
    return run_dir


def reexport(run_dir: Path, quantize: str | None = None) -> Path:
    """Export a complete run's ``model.keras`` again (SavedModel, TFLite, labels), checking
    each against Keras on ``splits.agreement_split`` (the validation split, if any).

    ``quantize`` (``export.quantize`` syntax: ``none``, ``all``, ``int8``, ``float16,dynamic``)
    replaces the run's TFLite variants setting; ``None`` keeps it.

    Raises:
        FileNotFoundError, ValueError: the run folder is missing or incomplete.
        rps.config.ConfigError: ``quantize`` names an unknown variant.
    """
    run_dir = require_complete(run_dir)
    cfg = read_run_config(run_dir)
    if quantize is not None:
        from rps.config import build_config, to_dict

        cfg = build_config(to_dict(cfg), [f"export.quantize={quantize}"])
    from rps.predict import read_labels

    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)
    splits = load_splits(cfg.data, cfg.seed)
    check, _ = collect(make_eval_dataset(splits.agreement_split, cfg.data, cache=False).take(1))
    export_model(model, run_dir, read_labels(run_dir / "model.keras"),
                 np.asarray(check[:cfg.export.check_images]),
                 **_tflite_inputs(cfg, splits, run_dir))
    return run_dir


if __name__ == "__main__":  # the child of finish_in_tensorflow
    from rps.cli import setup_output

    run_folder = Path(sys.argv[1])
    setup_output(read_run_config(run_folder).log_format)
    try:
        finish_trained_run(run_folder)
    except (ValueError, FileNotFoundError) as err:
        print(f"rps export: error: {err}", file=sys.stderr)
        sys.exit(2)
