"""Mobile-ready TFLite variants: quantization, TFLite Metadata, op listing, latency, MediaPipe.

Usage: ``buf = add_metadata(convert_variant(saved_model_dir, "int8", train_images), labels,
ModelInfo())``; ``list_ops(buf)``; ``measure_latency(path)``; ``bench(run_dir)``. MediaPipe Tasks
runs a file through ``rps.predict.load_predictor(path, runtime="mediapipe")``.

Variants (all converted with ``tf.lite.TFLiteConverter.from_saved_model``, builtin ops only):
``float32`` (``model.tflite``), ``float16`` (float16 weights), ``dynamic`` (int8 weights,
float activations) and ``int8`` (full integer, calibrated on training images; ``uint8`` input
so an app passes camera pixels as they are; ``float32`` probabilities out, the same output
contract as every other variant). https://ai.google.dev/edge/litert/models/post_training_quantization

Metadata: the TFLite Metadata schema (``metadata_schema.fbs``) that MediaPipe Tasks and the LiteRT
support libraries read, written with the maintained generated schemas (``mediapipe.tasks.metadata``
and ``tensorflow.lite.python.schema_py_generated``) and ``flatbuffers``. It reproduces the minimum
of the official ``MetadataPopulator``: the metadata flatbuffer (identifier ``M001``) goes into a
model buffer named ``TFLITE_METADATA``, and the associated files are a zip archive appended to the
model. https://github.com/google-ai-edge/mediapipe/blob/master/mediapipe/tasks/python/metadata/metadata.py
"""

from __future__ import annotations

import dataclasses
import io
import os
import platform
import time
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as tfl

from rps.config import QUANTIZE_VARIANTS

# model.tflite, model_float16.tflite, model_dynamic.tflite, model_int8.tflite
VARIANT_FILES = {v: "model.tflite" if v == "float32" else f"model_{v}.tflite"
                 for v in QUANTIZE_VARIANTS}
METADATA_BUFFER_NAME = "TFLITE_METADATA"
TFLITE_IDENTIFIER, METADATA_IDENTIFIER = b"TFL3", b"M001"
# Every field written here exists since metadata schema 1.0.0 (see the History in
# metadata_schema.fbs); the official writer computes the same value for them.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"


def _metadata_schema():
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    return schema


# ----------------------------------------------------------------------------- conversion
def anchored_calibration(images: np.ndarray):
    """Representative dataset for full-integer calibration from ``float32 [N, S, S, 3]``
    training images (pixels 0-255): a generator function yielding ``[float32 [1, S, S, 3]]``.

    The first image gets one black and one white pixel so that the calibrated input range is
    exactly 0-255: the ``uint8`` input then has scale 1 and zero point 0, i.e. it *is* the pixel
    value, which is what MediaPipe and camera code feed it.

    Raises:
        ValueError: ``images`` is empty.
    """
    if len(images) == 0:
        raise ValueError("int8 quantization needs calibration images from the training split.")
    images = np.array(images, np.float32)
    images[0, 0, 0], images[0, 0, min(1, images.shape[2] - 1)] = 0.0, 255.0

    def generator():
        for image in images:
            yield [image[None]]
    return generator


def calibration_images(split, data_cfg, count: int, seed: int) -> np.ndarray:
    """A seeded random sample of at most ``count`` images of ``split`` (an
    ``rps.data.ImageSplit``, the training split), read through the one preprocessing path
    (``rps.data.make_eval_dataset``): ``float32 [n, S, S, 3]`` pixels 0-255."""
    from rps.data import make_eval_dataset
    from rps.evaluate import collect

    pick = np.sort(np.random.default_rng(seed).permutation(len(split))[:count])
    return collect(make_eval_dataset(split.subset("calibration", pick), data_cfg, cache=False))[0]


def convert_variant(saved_model_dir: str | Path, variant: str,
                    calibration_images: np.ndarray | None = None,
                    int8_per_channel: bool = False) -> bytes:
    """Convert a SavedModel (``float32 [1, S, S, 3]`` pixels 0-255 -> probabilities) to TFLite.

    Args:
        saved_model_dir: SavedModel folder with a ``serving_default`` signature.
        variant: one of ``QUANTIZE_VARIANTS``.
        calibration_images: ``float32 [N, S, S, 3]`` training images; required for ``int8``.
        int8_per_channel: ``int8`` weight scales per output channel (the converter's default)
            instead of one per tensor. Each channel costs 12 bytes (a float32 scale and an int64
            zero point): on ``fast_cnn`` at width 32 (151k parameters) that was ~40 KB on a
            ~165 KB file, so per-tensor is what keeps the int8 file under 1/3.5 of float32.

    Returns:
        The flatbuffer (no metadata yet). Builtin ops only: no Flex (SELECT_TF_OPS) ops.

    Raises:
        ValueError: unknown variant, or ``int8`` without calibration images.
        RuntimeError: the ``int8`` input is not plain pixels (scale 1, zero point 0).
    """
    if variant not in VARIANT_FILES:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {QUANTIZE_VARIANTS}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        converter.representative_dataset = anchored_calibration(
            np.zeros((0,)) if calibration_images is None else calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        if not hasattr(converter, "_experimental_disable_per_channel"):  # private TF switch
            raise RuntimeError("this TensorFlow's converter has no per-tensor int8 switch; "
                               "set export.int8_per_channel=true.")
        converter._experimental_disable_per_channel = not int8_per_channel
    model = converter.convert()
    if variant == "int8":
        _check_pixel_input(model)
    return model


def _check_pixel_input(model: bytes) -> None:
    subgraph = tfl.Model.GetRootAs(model, 0).Subgraphs(0)
    q = subgraph.Tensors(subgraph.Inputs(0)).Quantization()
    scale, zero = q.Scale(0), q.ZeroPoint(0)
    if abs(scale - 1.0) > 1e-6 or zero != 0:
        raise RuntimeError(f"int8 model input quantization is scale {scale}, zero point {zero}; "
                           f"expected 1 and 0 (raw uint8 pixels).")


# ----------------------------------------------------------------------------- metadata
@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """General model facts written into the metadata (``ModelMetadata`` table)."""

    name: str = "rps image classifier"
    description: str = ""
    version: str = "1"
    author: str = "rps"
    license: str = "Apache-2.0"


def _tensor_metadata(md, name: str, description: str, properties, max_value: float):
    """A ``TensorMetadataT`` with content properties and value range ``[0, max_value]``."""
    tensor = md.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = md.ContentT()
    tensor.content.contentPropertiesType = (md.ContentProperties.ImageProperties
                                            if isinstance(properties, md.ImagePropertiesT)
                                            else md.ContentProperties.FeatureProperties)
    tensor.content.contentProperties = properties
    tensor.stats = md.StatsT()
    tensor.stats.min, tensor.stats.max = [0.0], [max_value]
    return tensor


def build_metadata(model: bytes, class_names: tuple[str, ...], info: ModelInfo) -> bytes:
    """The ``ModelMetadata`` flatbuffer (bytes, identifier ``M001``) of an image classifier,
    laid out as MediaPipe's ``image_classifier.MetadataWriter`` does: one RGB image input with
    ``NormalizationOptions`` mean 0, std 1 (the model takes pixel values 0-255), one output of
    probabilities (``FeatureProperties``, range 0-1) with ``labels.txt`` as its
    ``TENSOR_AXIS_LABELS`` associated file; ``info`` gives name, description, version, author
    and license. ``model`` has one input ``[1, S, S, 3]`` and one output ``[1, C]``,
    ``C = len(class_names)``.

    Raises:
        ValueError: the model's output size differs from ``len(class_names)``.
    """
    md = _metadata_schema()
    subgraph = tfl.Model.GetRootAs(model, 0).Subgraphs(0)
    image, probs = (subgraph.Tensors(subgraph.Inputs(0)), subgraph.Tensors(subgraph.Outputs(0)))
    if int(probs.ShapeAsNumpy()[-1]) != len(class_names):
        raise ValueError(f"model has {probs.ShapeAsNumpy()[-1]} outputs, "
                         f"{len(class_names)} class names given.")
    size, dtype = int(image.ShapeAsNumpy()[1]), ("uint8" if image.Type() == tfl.TensorType.UINT8
                                                 else "float32")
    inp = _tensor_metadata(md, "image", f"RGB image, {size}x{size} pixels, values 0-255 ({dtype}).",
                           md.ImagePropertiesT(), 255.0)
    inp.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    norm = md.ProcessUnitT()
    norm.optionsType = md.ProcessUnitOptions.NormalizationOptions
    norm.options = md.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [0.0], [1.0]  # (pixel - 0) / 1: pixel values in
    inp.processUnits = [norm]
    out = _tensor_metadata(md, "probability", "Probability of each label in labels.txt.",
                           md.FeaturePropertiesT(), 1.0)
    labels = md.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, md.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "Labels for categories that the model can recognize."
    out.associatedFiles = [labels]
    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata, graph.outputTensorMetadata = [inp], [out]
    meta = md.ModelMetadataT()
    meta.name, meta.description, meta.version = info.name, info.description, info.version
    meta.author, meta.license = info.author, info.license
    meta.subgraphMetadata, meta.minParserVersion = [graph], MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def embed_metadata(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """Store ``metadata`` (a ``ModelMetadata`` flatbuffer) in the model's ``TFLITE_METADATA``
    buffer, replacing one already there, and append ``files`` (name -> content) as a zip
    archive, as ``MetadataPopulator.populate`` does.

    Returns:
        The new model bytes: flatbuffer, then the zip archive.
    """
    obj = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(model, 0))
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    obj.metadata = obj.metadata or []
    existing = [m for m in obj.metadata if m.name.decode() == METADATA_BUFFER_NAME]
    if existing:
        obj.buffers[existing[0].buffer] = buffer
    else:
        obj.buffers.append(buffer)
        entry = tfl.MetadataT()
        entry.name, entry.buffer = METADATA_BUFFER_NAME, len(obj.buffers) - 1
        obj.metadata.append(entry)
    builder = flatbuffers.Builder(0)
    builder.Finish(obj.Pack(builder), TFLITE_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:  # appended after the flatbuffer, offsets absolute
        for name, content in files.items():  # fixed timestamp: same model, same bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def add_metadata(model: bytes, class_names: tuple[str, ...], info: ModelInfo) -> bytes:
    """``build_metadata`` + ``embed_metadata`` with ``labels.txt`` (one label per line).

    Returns:
        Model bytes that MediaPipe Tasks ``ImageClassifier`` loads with default options.
    """
    labels = ("\n".join(class_names) + "\n").encode()
    return embed_metadata(model, build_metadata(model, class_names, info), {LABELS_FILE: labels})


def read_metadata(model: bytes):
    """Read the metadata back with MediaPipe's schema reader.

    Returns:
        ``(ModelMetadataT, {associated file name: bytes})``; ``(None, {})`` without metadata.
    """
    md = _metadata_schema()
    root = tfl.Model.GetRootAs(model, 0)
    meta = None
    for i in range(root.MetadataLength()):
        if root.Metadata(i).Name().decode() == METADATA_BUFFER_NAME:
            data = root.Buffers(root.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(data, 0))
    files = {}
    if zipfile.is_zipfile(io.BytesIO(model)):
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    return meta, files


# ----------------------------------------------------------------------------- ops, latency
def list_ops(model: bytes | str | Path) -> list[str]:
    """Sorted, unique names of the operators of a model (flatbuffer bytes or ``.tflite`` path),
    e.g. ``["CONV_2D", "SOFTMAX"]``: builtin ops by ``BuiltinOperator`` name, custom ops by
    custom code. Flex (SELECT_TF_OPS) ops are custom ops whose code starts with ``Flex``.
    https://github.com/tensorflow/tensorflow/blob/master/tensorflow/compiler/mlir/lite/schema/schema.fbs
    """
    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    root, ops = tfl.Model.GetRootAs(model, 0), set()
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            code = root.OperatorCodes(graph.Operators(i).OpcodeIndex())
            # Codes >= 127 live in builtin_code; older ones in deprecated_builtin_code.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            ops.add(code.CustomCode().decode() if builtin == tfl.BuiltinOperator.CUSTOM
                    else names[builtin])
    return sorted(ops)


def measure_latency(path: str | Path, num_threads: int = 1, runs: int = 50, warmup: int = 5,
                    image: np.ndarray | None = None) -> dict[str, float]:
    """Latency of one image through the LiteRT interpreter (XNNPACK) on the CPU: wall-clock
    time of ``invoke`` on ``image`` (``[S, S, 3]`` pixels 0-255; random when ``None``) over
    ``runs`` calls after ``warmup`` untimed ones, with ``num_threads`` threads.
    https://ai.google.dev/edge/litert/inference

    Returns:
        ``{"median_ms", "p90_ms"}`` in milliseconds.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, inp["shape"][1:])
    interpreter.set_tensor(inp["index"], np.asarray(image)[None].astype(inp["dtype"]))
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


# ----------------------------------------------------------------------------- evaluation, table
def variant_files(run_dir: str | Path) -> dict[str, Path]:
    """The TFLite variants present in a run folder: ``{variant: path}`` in variant order."""
    return {v: Path(run_dir) / f for v, f in VARIANT_FILES.items() if (Path(run_dir) / f).is_file()}


def evaluate_variants(run_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                      class_names: tuple[str, ...], reference: np.ndarray,
                      runtime: str = "litert") -> dict[str, dict]:
    """Metrics of every TFLite variant of a run, run by LiteRT or by MediaPipe Tasks.

    Args:
        run_dir: run folder.
        images, labels: ``float32 [N, S, S, 3]`` pixels 0-255 (``rps.data.make_eval_dataset``)
            and ``int32 [N]`` true labels.
        class_names: label of each output index.
        reference: ``float32 [N, C]`` Keras probabilities, for ``agreement`` (top-1).
        runtime: ``litert`` or ``mediapipe`` (``rps.predict.load_predictor``).

    Returns:
        ``{variant: metrics}`` (``rps.evaluate.compute_metrics`` plus ``agreement``).

    Raises:
        ValueError: unknown runtime, or MediaPipe reads label names other than ``class_names``.
    """
    from rps.evaluate import compute_metrics
    from rps.predict import load_predictor

    results = {}
    for variant, path in variant_files(run_dir).items():
        predictor = load_predictor(path, runtime)
        probs = predictor.predict(images)
        if runtime == "mediapipe" and tuple(predictor.labels) != tuple(class_names):
            raise ValueError(f"{path}: MediaPipe reads labels {predictor.labels}, "
                             f"expected {class_names}.")
        metrics = compute_metrics(labels, probs, class_names)
        metrics["agreement"] = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        results[variant] = metrics
    return results


def variants_table(run_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                   class_names: tuple[str, ...], reference: np.ndarray,
                   threads: tuple[int, ...] = (1, 2), runs: int = 50) -> list[dict]:
    """One row per variant (arguments as ``evaluate_variants``; ``threads``: LiteRT thread
    counts; ``runs``: timed runs per latency figure).

    Returns:
        ``[{"variant", "file", "size_bytes", "test_accuracy", "agreement_with_keras",
        "mediapipe_accuracy", "latency_ms": {"1": {"median_ms", "p90_ms"}, ...}, "ops"}]``.
    """
    litert = evaluate_variants(run_dir, images, labels, class_names, reference, "litert")
    app = evaluate_variants(run_dir, images, labels, class_names, reference, "mediapipe")
    return [{"variant": variant, "file": path.name, "size_bytes": path.stat().st_size,
             "test_accuracy": litert[variant]["top1_accuracy"],
             "agreement_with_keras": litert[variant]["agreement"],
             "mediapipe_accuracy": app[variant]["top1_accuracy"],
             "latency_ms": {str(t): measure_latency(path, t, runs, image=images[0])
                            for t in threads},
             "ops": list_ops(path)} for variant, path in variant_files(run_dir).items()]


def check_targets(rows: list[dict], keras_accuracy: float) -> list[str]:
    """The issue's targets, as failure messages (empty: all met). int8 size at most 1/3.5 of
    float32; int8 accuracy at most 0.5 point below float32; MediaPipe accuracy within 0.5 point
    of Keras; no Flex op in any variant."""
    by = {r["variant"]: r for r in rows}
    fails = [f"{r['variant']}: Flex ops {[o for o in r['ops'] if o.startswith('Flex')]}"
             for r in rows if any(o.startswith("Flex") for o in r["ops"])]
    fails += [f"{r['variant']}: MediaPipe accuracy {r['mediapipe_accuracy']:.4f} is more than "
              f"0.5 point from Keras {keras_accuracy:.4f}" for r in rows
              if abs(r["mediapipe_accuracy"] - keras_accuracy) > 0.005 + 1e-9]
    if "int8" in by and "float32" in by:
        f32, i8 = by["float32"], by["int8"]
        if i8["size_bytes"] * 3.5 > f32["size_bytes"]:
            fails.append(f"int8: {i8['size_bytes']} bytes > float32 {f32['size_bytes']} / 3.5")
        if i8["test_accuracy"] < f32["test_accuracy"] - 0.005 - 1e-9:
            fails.append(f"int8: accuracy {i8['test_accuracy']:.4f} is more than 0.5 point "
                         f"below float32 {f32['test_accuracy']:.4f}")
    return fails


def format_table(rows: list[dict], keras_accuracy: float, split: str) -> str:
    """The variants table as Markdown (accuracies in percent, sizes in bytes, latency in ms)."""
    threads = list(rows[0]["latency_ms"]) if rows else []
    head = (["variant", "file", "size (bytes)", f"{split} accuracy (LiteRT)", "MediaPipe accuracy",
             "agreement with Keras"]
            + [f"{t} thread{'s' * (t != '1')}: median / p90 (ms)" for t in threads])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], f"`{r['file']}`", f"{r['size_bytes']:,}",
                 f"{100 * r['test_accuracy']:.2f}%", f"{100 * r['mediapipe_accuracy']:.2f}%",
                 f"{100 * r['agreement_with_keras']:.2f}%"]
        cells += [f"{r['latency_ms'][t]['median_ms']:.3f} / {r['latency_ms'][t]['p90_ms']:.3f}"
                  for t in threads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nKeras model on {split}: {100 * keras_accuracy:.2f}%.\n"


def bench(run_dir: str | Path, docs_file: str | Path | None = "docs/tflite_variants.md",
          runs: int = 50) -> dict:
    """Build the variants table of a complete run on its ``test/`` split and write it to
    ``<run_dir>/tflite_variants.json`` and ``.md`` (and to ``docs_file`` unless ``None``).

    Returns:
        ``{"split", "num_images", "keras_accuracy", "variants": rows, "targets_failed": [...],
        "machine"}`` (see ``variants_table``, ``check_targets``).

    Raises:
        FileNotFoundError, ValueError: the run folder is missing, incomplete or has no variants.
    """
    from rps.data import load_splits, make_eval_dataset
    from rps.evaluate import collect
    from rps.predict import load_predictor
    from rps.runs import read_run_config, require_complete, write_atomic, write_json

    run_dir = require_complete(run_dir)
    if not variant_files(run_dir):
        raise ValueError(f"no TFLite files in {run_dir}: run `rps export {run_dir}` first.")
    cfg = read_run_config(run_dir)
    splits = load_splits(cfg.data, cfg.seed)
    split = splits.report_split
    images, labels = collect(make_eval_dataset(split, cfg.data, cache=False))
    reference = load_predictor(run_dir / "model.keras").predict(images)
    keras_accuracy = float(np.mean(reference.argmax(1) == labels))
    rows = variants_table(run_dir, images, labels, splits.class_names, reference, runs=runs)
    result = {"split": split.name, "num_images": int(len(labels)),
              "keras_accuracy": keras_accuracy, "variants": rows,
              "targets_failed": check_targets(rows, keras_accuracy),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, LiteRT XNNPACK"}
    write_json(run_dir / "tflite_variants.json", result)
    text = (f"# TFLite variants of run `{run_dir.name}`\n\nWritten by `rps bench --export`. "
            f"Latency: one image, LiteRT on the CPU ({result['machine']}), {runs} runs after "
            f"warm-up.\n\n" + format_table(rows, keras_accuracy, split.name)
            + "".join(f"\nTarget not met: {f}" for f in result["targets_failed"]))
    write_atomic(run_dir / "tflite_variants.md", text)
    if docs_file is not None:
        write_atomic(docs_file, text)
    return result

