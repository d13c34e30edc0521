"""Export: ``.keras`` model, SavedModel with a serving signature, TFLite variants, ``labels.txt``.

Usage: ``paths = export_model(inference_model, run_dir, class_names, check_images,
quantize=("float32", "int8"), calibration_images=train_images)``.

Every artifact is written to a temporary path in the run folder and renamed into place, so an
interrupted export never leaves a half-written file. Each export is then checked: it loads, and
its probabilities match the Keras model's on a few validation images.
Keras 3 export: https://keras.io/api/models/model_saving_apis/export/ ;
TFLite conversion: https://ai.google.dev/edge/litert/models/convert_tf
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from rps.runs import write_atomic

log = logging.getLogger(__name__)

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
# Largest allowed difference between a converted model's probabilities and Keras's.
MAX_PROBABILITY_DIFF = 1e-3
# The same for the quantized TFLite variants (their rounding is the point of them); a broken
# conversion (wrong input scale, wrong labels order) is far outside these.
MAX_PROBABILITY_DIFF_QUANTIZED = {"float16": 1e-2, "dynamic": 0.1, "int8": 0.2}


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
    ops, so mobile runtimes need no TensorFlow), without metadata."""
    from rps.tflite import convert_variant

    return convert_variant(saved_model_dir, "float32")


def artifact_name(variant: str) -> str:
    """Artifact key of a TFLite variant: ``tflite`` (float32), ``tflite_<variant>`` otherwise."""
    return "tflite" if variant == "float32" else f"tflite_{variant}"


def write_tflite_variants(saved_model_dir: Path, run_dir: Path, class_names: tuple[str, ...],
                          quantize: tuple[str, ...] = ("float32",),
                          calibration_images: np.ndarray | None = None,
                          model_info=None, int8_per_channel: bool = False) -> dict[str, Path]:
    """Convert each TFLite variant, embed TFLite Metadata (labels included), write it atomically.

    Args:
        saved_model_dir: the SavedModel to convert.
        run_dir: the run folder; files are named as in ``rps.tflite.VARIANT_FILES``.
        class_names: label of each output index.
        quantize: variant names (``rps.config.QUANTIZE_VARIANTS``).
        calibration_images: ``float32 [N, S, S, 3]`` training images, needed for ``int8``.
        model_info: ``rps.tflite.ModelInfo`` for the metadata (default: generic, from labels).
        int8_per_channel: see ``rps.tflite.convert_variant``.

    Returns:
        ``{artifact_name(variant): path}``.

    Raises:
        RuntimeError: a variant contains Flex (SELECT_TF_OPS) ops.
        ValueError: ``int8`` requested without calibration images.
    """
    from rps.tflite import VARIANT_FILES, ModelInfo, add_metadata, convert_variant, list_ops

    info = model_info or ModelInfo()
    if not info.description:
        info = dataclasses.replace(info, description=(
            f"Image classifier ({', '.join(class_names)}). Input: one RGB image, pixel values "
            f"0-255. Output: the probability of each label in labels.txt."))
    paths = {}
    for variant in quantize:
        model = convert_variant(saved_model_dir, variant, calibration_images, int8_per_channel)
        flex = [op for op in list_ops(model) if op.startswith("Flex")]
        if flex:
            raise RuntimeError(f"TFLite {variant} variant needs Flex ops {flex}; builtin only.")
        variant_info = dataclasses.replace(info, name=f"{info.name} ({variant})")
        paths[artifact_name(variant)] = write_atomic(
            run_dir / VARIANT_FILES[variant], add_metadata(model, class_names, variant_info))
    return paths


def export_model(model: keras.Model, run_dir: Path, class_names: tuple[str, ...],
                 check_images: np.ndarray | None = None, tflite: bool = True,
                 quantize: tuple[str, ...] = ("float32",),
                 calibration_images: np.ndarray | None = None,
                 model_info=None, int8_per_channel: bool = False) -> dict[str, Path]:
    """Write all exports of an inference model (probabilities output) into ``run_dir``.

    Args:
        model: Keras model, ``float32 [B, S, S, 3]`` pixels 0-255 -> ``[B, C]`` probabilities.
        run_dir: the run folder.
        class_names: label of each output index, written one per line to ``labels.txt``.
        check_images: ``float32 [N, S, S, 3]`` images on which each export must match Keras
            (``Splits.agreement_split``: the validation split, if any); ``None`` or empty skips
            the comparison.
        tflite: also write the TFLite variants (``model.tflite`` is float32).
        quantize: TFLite variants to write (``rps.config.parse_quantize``).
        calibration_images: ``float32 [N, S, S, 3]`` training images for the ``int8`` variant.
        model_info: ``rps.tflite.ModelInfo`` written into each TFLite file's metadata.
        int8_per_channel: int8 weight scales per channel instead of per tensor.

    Returns:
        Mapping of artifact name (``keras``, ``saved_model``, ``tflite``,
        ``tflite_<variant>``, ``labels``) to path.

    Raises:
        RuntimeError: an export is empty, fails to load, or disagrees with Keras by more than
            ``MAX_PROBABILITY_DIFF`` (float) or ``MAX_PROBABILITY_DIFF_QUANTIZED`` on the check
            images.
    """
    from rps.predict import load_predictor  # runs exported files with the one predict path

    run_dir = Path(run_dir)
    paths = {"labels": write_atomic(run_dir / LABELS_FILE, "\n".join(class_names) + "\n"),
             "keras": save_keras(model, run_dir / KERAS_FILE),
             "saved_model": save_saved_model(model, run_dir / SAVED_MODEL_DIR)}
    if tflite:
        paths.update(write_tflite_variants(paths["saved_model"], run_dir, class_names,
                                           tuple(quantize), calibration_images, model_info,
                                           int8_per_channel))
    expected = (model.predict(check_images, verbose=0)
                if check_images is not None and len(check_images) else None)
    for name, path in paths.items():
        if name == "labels":
            continue
        if path.is_file() and path.stat().st_size == 0:
            raise RuntimeError(f"export {path} is empty")
        if expected is not None:
            limit = MAX_PROBABILITY_DIFF_QUANTIZED.get(name.removeprefix("tflite_"),
                                                       MAX_PROBABILITY_DIFF)
            got = load_predictor(path).predict(check_images)
            diff = float(np.max(np.abs(got - expected)))
            if diff > limit:
                raise RuntimeError(f"export {path} disagrees with the Keras model: max probability "
                                   f"difference {diff:.2e} > {limit:.0e}")
            log.info("checked %s: max probability difference vs Keras %.2e", path, diff)
    return paths
