"""Export: ``.keras`` model, SavedModel with a serving signature, TFLite, ``labels.txt``.

Usage: ``paths = export_model(inference_model, run_dir, class_names, check_images)``.

Every artifact is written to a temporary path in the run folder and renamed into place, so an
interrupted export never leaves a half-written file. Each export is then checked: it loads, and
its probabilities match the Keras model's on a few validation images.
Keras 3 export: https://keras.io/api/models/model_saving_apis/export/ ;
TFLite conversion: https://ai.google.dev/edge/litert/models/convert_tf
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rps.runs import write_atomic

log = logging.getLogger(__name__)

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
# Largest allowed difference between a converted model's probabilities and Keras's.
MAX_PROBABILITY_DIFF = 1e-3


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older one is removed only after the new one is
    complete."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def save_keras(model: keras.Model, path: Path) -> Path:
    """Save the native Keras format atomically (Keras picks the format from the ``.keras``
    suffix, so the temporary name keeps it)."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def save_saved_model(model: keras.Model, path: Path) -> Path:
    """Export a TensorFlow SavedModel whose ``serving_default`` signature maps ``float32
    [batch, S, S, 3]`` pixels (0-255) to ``float32 [batch, num_classes]`` probabilities."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def convert_tflite(saved_model_dir: Path) -> bytes:
    """Convert a SavedModel to a float32 TFLite flatbuffer with TFLite builtin ops only (no Flex
    ops, so mobile runtimes need no TensorFlow)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def export_model(model: keras.Model, run_dir: Path, class_names: tuple[str, ...],
                 check_images: np.ndarray | None = None, tflite: bool = True) -> dict[str, Path]:
    """Write all exports of an inference model (probabilities output) into ``run_dir``.

    Args:
        model: Keras model, ``float32 [B, S, S, 3]`` pixels 0-255 -> ``[B, C]`` probabilities.
        run_dir: the run folder.
        class_names: label of each output index, written one per line to ``labels.txt``.
        check_images: ``float32 [N, S, S, 3]`` images (validation split) on which each export
            must match Keras; ``None`` or empty skips the comparison.
        tflite: also write ``model.tflite``.

    Returns:
        Mapping of artifact name (``keras``, ``saved_model``, ``tflite``, ``labels``) to path.

    Raises:
        RuntimeError: an export is empty, fails to load, or disagrees with Keras by more than
            ``MAX_PROBABILITY_DIFF`` on the check images.
    """
    from rps.predict import load_predictor  # runs exported files with the one predict path

    run_dir = Path(run_dir)
    paths = {"labels": write_atomic(run_dir / LABELS_FILE, "\n".join(class_names) + "\n"),
             "keras": save_keras(model, run_dir / KERAS_FILE),
             "saved_model": save_saved_model(model, run_dir / SAVED_MODEL_DIR)}
    if tflite:
        paths["tflite"] = write_atomic(run_dir / TFLITE_FILE, convert_tflite(paths["saved_model"]))
    for name, path in paths.items():
        if name == "labels":
            continue
        if path.is_file() and path.stat().st_size == 0:
            raise RuntimeError(f"export {path} is empty")
        if check_images is not None and len(check_images):
            expected = model.predict(check_images, verbose=0)
            got = load_predictor(path).predict(check_images)
            diff = float(np.max(np.abs(got - expected)))
            if diff > MAX_PROBABILITY_DIFF:
                raise RuntimeError(f"export {path} disagrees with the Keras model: max probability "
                                   f"difference {diff:.2e} > {MAX_PROBABILITY_DIFF:.0e}")
            log.info("checked %s: max probability difference vs Keras %.2e", path, diff)
    return paths
