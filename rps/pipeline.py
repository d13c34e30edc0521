"""The main job, top to bottom: data -> train -> export -> evaluate -> plots -> complete.

Usage: ``run_dir = run(load_config("configs/default.yaml"))`` (what ``rps train`` and
``make train`` call).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np

from rps.config import Config
from rps.data import ImageSplit, Splits, load_splits, make_eval_dataset
from rps.evaluate import collect, evaluate
from rps.export import export_model
from rps.models import add_softmax, build_model
from rps.plots import plot_confusion_matrix, plot_history
from rps.runs import (library_versions, mark_complete, open_run_dir, read_run_config,
                      require_complete, write_json)
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
                 "tflite": run_dir / "model.tflite"}
    results: dict = {}
    held_out: list[ImageSplit] = [s for s in (splits.test, splits.validation_folder) if s]
    for split in held_out:
        dataset = make_eval_dataset(split, cfg.data, cache=True)
        results[split.name] = {}
        reference = None
        for name, path in artifacts.items():
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


def run(cfg: Config, argv: list[str] | None = None) -> Path:
    """Train, export and evaluate one run; resume it if an incomplete run of the same config
    exists.

    Returns:
        The complete run folder.
    """
    run_dir, resumed = open_run_dir(cfg)
    log.info("%s run folder %s", "resuming" if resumed else "new", run_dir)
    strategy = make_strategy(cfg.train)  # first: it may split the CPU into logical devices
    splits = load_splits(cfg.data, cfg.seed)
    info = {"command": argv if argv is not None else sys.argv, "resumed": resumed,
            "versions": library_versions(), "data_fingerprint": splits.fingerprint,
            "class_names": list(splits.class_names),
            "num_images": {s.name: len(s) for s in (splits.train, splits.val, splits.test,
                                                    splits.validation_folder) if s},
            "num_replicas": strategy.num_replicas_in_sync}
    write_json(run_dir / "run_info.json", info)

    result = train(cfg, splits, run_dir, strategy)
    model = inference_model(result.model, cfg, len(splits.class_names))
    check, _ = collect(make_eval_dataset(splits.val, cfg.data, cache=False).take(1))
    export_model(model, run_dir, splits.class_names, check[:cfg.export.check_images],
                 tflite=cfg.export.tflite)
    started = time.perf_counter()
    metrics = {"train_seconds": result.train_seconds, "num_parameters": model.count_params(),
               **evaluate_run(run_dir, cfg, splits)}
    metrics["evaluate_seconds"] = time.perf_counter() - started
    write_json(run_dir / "metrics.json", metrics)
    plot_history(run_dir / "history.csv", run_dir / "training_curves.png")
    mark_complete(run_dir)
    return run_dir


def reexport(run_dir: Path) -> Path:
    """Export a complete run's ``model.keras`` again (SavedModel, TFLite, labels), checking
    each against Keras on the validation split.

    Raises:
        FileNotFoundError, ValueError: the run folder is missing or incomplete.
    """
    run_dir = require_complete(run_dir)
    cfg = read_run_config(run_dir)
    from rps.predict import read_labels

    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)
    splits = load_splits(cfg.data, cfg.seed)
    check, _ = collect(make_eval_dataset(splits.val, cfg.data, cache=False).take(1))
    export_model(model, run_dir, read_labels(run_dir / "model.keras"),
                 np.asarray(check[:cfg.export.check_images]), tflite=cfg.export.tflite)
    return run_dir
