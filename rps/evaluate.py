"""Evaluation: top-1 accuracy, per-class precision and recall, confusion matrix; negative
log-likelihood per image set for comparing configs (``nll_and_accuracy``).

Usage: ``metrics = evaluate(model_or_path, eval_dataset, class_names)``.

``evaluate`` takes a model (a Keras model, or the path of a ``.keras`` file, SavedModel folder or
``.tflite`` file) and a dataset, never a training object; ``rps evaluate`` and the evaluation
after training share it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def collect(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Materialise an evaluation dataset: ``float32 [N, S, S, 3]`` images, ``int32 [N]`` labels."""
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def predict_probabilities(model_or_path, images: np.ndarray) -> np.ndarray:
    """Probabilities ``float32 [N, C]`` of a Keras inference model or an exported artifact."""
    if isinstance(model_or_path, keras.Model):
        return np.asarray(model_or_path.predict(images, verbose=0, batch_size=64), np.float32)
    from rps.predict import load_predictor

    return load_predictor(Path(model_or_path)).predict(images)


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: tuple[str, ...]) -> dict:
    """Classification metrics from true labels ``int [N]`` and probabilities ``float [N, C]``.

    Returns:
        ``{"num_images", "top1_accuracy", "per_class": {name: {"precision", "recall",
        "support"}}, "confusion_matrix": [[...]] (rows: true class, columns: predicted),
        "class_names"}``. Precision of a class never predicted is reported as 0.
    """
    predicted = np.argmax(probabilities, axis=1)
    cm = tf.math.confusion_matrix(labels, predicted, num_classes=len(class_names)).numpy()
    per_class = {}
    for i, name in enumerate(class_names):
        tp, predicted_i, actual_i = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        per_class[name] = {"precision": float(tp / predicted_i) if predicted_i else 0.0,
                           "recall": float(tp / actual_i) if actual_i else 0.0,
                           "support": int(actual_i)}
    return {"num_images": int(len(labels)),
            "top1_accuracy": float(np.mean(predicted == labels)) if len(labels) else 0.0,
            "per_class": per_class, "confusion_matrix": cm.tolist(),
            "class_names": list(class_names)}


def nll_and_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Mean negative log-likelihood and top-1 of ``float [N, C]`` probabilities against
    ``int [N]`` labels, for comparing configs (``scripts/cross_validation.py``).

    Returns:
        ``{"nll": mean -ln p(true class), nats (probabilities clipped to >= 1e-7; the
        targets are one-hot, whatever label smoothing training used), "top1": float,
        "errors": int}``.
    """
    p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predicted = np.argmax(probabilities, 1)
    return {"nll": float(-np.mean(np.log(p))),
            "top1": float(np.mean(predicted == labels)),
            "errors": int(np.sum(predicted != labels))}


def evaluate(model_or_path, dataset: tf.data.Dataset, class_names: tuple[str, ...],
             reference: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Evaluate a model on an evaluation dataset (see ``rps.data.make_eval_dataset``).

    Args:
        model_or_path: Keras inference model, or path to ``.keras``, SavedModel or ``.tflite``.
        dataset: batches of ``(float32 [B, S, S, 3] pixels 0-255, int32 [B] labels)``.
        class_names: label of each output index.
        reference: probabilities ``[N, C]`` of another model on the same data; when given, the
            result also holds ``agreement``, the fraction of images with the same top-1 class.

    Returns:
        ``(metrics, probabilities)``; see ``compute_metrics``.
    """
    images, labels = collect(dataset)
    probabilities = predict_probabilities(model_or_path, images)
    metrics = compute_metrics(labels, probabilities, class_names)
    if reference is not None:
        metrics["agreement"] = float(np.mean(np.argmax(reference, 1) == np.argmax(probabilities, 1)))
    return metrics, probabilities
