"""Run an exported model (``.keras``, SavedModel folder or ``.tflite``) on images.

Usage: ``predict_files("saved_models/latest/model.tflite", ["hand.jpg"])``.

An artifact carries what is needed to use it: the input size is read from the model, the labels
from ``labels.txt`` beside it. Images go through ``rps.preprocess`` exactly as in training.
TFLite files run with LiteRT (``ai_edge_litert``), https://ai.google.dev/edge/litert/inference,
or, with ``runtime="mediapipe"``, with MediaPipe Tasks ``ImageClassifier``, the runtime of the
Android and iOS apps (labels then come from the model's own metadata).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from rps.data import IMAGE_EXTENSIONS
from rps.imagecheck import check_image_file
from rps.preprocess import load_image

LABELS_FILE = "labels.txt"


def read_labels(model_path: str | Path) -> tuple[str, ...]:
    """Read ``labels.txt`` beside ``model_path`` (one label per line, in output order).

    Raises:
        FileNotFoundError: there is no ``labels.txt`` in the artifact's folder.
    """
    model_path = Path(model_path)
    labels = model_path.parent / LABELS_FILE
    if not labels.is_file():
        raise FileNotFoundError(f"no {LABELS_FILE} beside {model_path} (expected {labels}); "
                                f"export the model with `rps export` to write it.")
    return tuple(line.strip() for line in labels.read_text().splitlines() if line.strip())


class KerasPredictor:
    """A ``.keras`` file, loaded with ``safe_mode=True`` (no arbitrary code from the file)."""

    def __init__(self, path: Path):
        import keras

        self.model = keras.saving.load_model(path, safe_mode=True, compile=False)
        self.image_size = int(self.model.input_shape[1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, S, S, 3]`` pixels 0-255 -> ``float32 [N, C]`` probabilities."""
        return np.asarray(self.model.predict(images, verbose=0, batch_size=64), np.float32)


class SavedModelPredictor:
    """A SavedModel folder, called through its ``serving_default`` signature."""

    def __init__(self, path: Path):
        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures["serving_default"]
        spec = list(self.fn.structured_input_signature[1].values())[0]
        self.image_size = int(spec.shape[1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        outputs = [list(self.fn(tf.constant(images[i:i + 64])).values())[0].numpy()
                   for i in range(0, len(images), 64)]
        return np.concatenate(outputs).astype(np.float32)


class TFLitePredictor:
    """A ``.tflite`` file run by the LiteRT interpreter (XNNPACK delegate on the CPU). Handles
    float inputs and quantized (uint8/int8) inputs and outputs."""

    def __init__(self, path: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.interpreter.allocate_tensors()

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for image in images:  # batch 1, as on a phone
            x = image[None]
            if self.input["dtype"] != np.float32:
                scale, zero = self.input["quantization"]
                if scale:  # int8 input: quantize the 0-255 pixels with the input's parameters
                    x = np.round(x / scale + zero)
                info = np.iinfo(self.input["dtype"])
                x = np.clip(x, info.min, info.max)
            self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])[0].astype(np.float32)
            scale, zero = self.output["quantization"]
            if self.output["dtype"] != np.float32 and scale:
                y = (y - zero) * scale
            out.append(y)
        return np.stack(out)


class MediaPipePredictor:
    """A ``.tflite`` file with TFLite Metadata run by MediaPipe Tasks ``ImageClassifier`` with
    default options, as the apps run it.
    https://ai.google.dev/edge/mediapipe/solutions/vision/image_classifier/python

    Images should already be at the model size (``rps.preprocess``), so that MediaPipe's own
    resize is the identity and every runtime sees the same pixels.

    Attributes:
        image_size: side of the model input, in pixels.
        labels: label names read by MediaPipe from the model's metadata, in index order
            (set by ``predict``; ``()`` before).
    """

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.image_size = int(Interpreter(model_path=str(path)).get_input_details()[0]["shape"][1])
        self.labels: tuple[str, ...] = ()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``[N, S, S, 3]`` RGB pixels 0-255 (cast to uint8) -> ``float32 [N, C]`` probabilities
        by label index.

        Raises:
            ValueError: MediaPipe refuses the model (e.g. it has no metadata).
        """
        import mediapipe as mp
        from mediapipe.tasks.python import vision

        try:
            classifier = vision.ImageClassifier.create_from_model_path(str(self.path))
        except (OSError, ValueError, RuntimeError) as err:  # a missing metadata field: NotFound
            raise ValueError(f"MediaPipe ImageClassifier cannot load {self.path}: {err}") from err
        try:
            probs, names = [], {}
            for image in np.asarray(np.clip(np.round(images), 0, 255), np.uint8):
                result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                      data=np.ascontiguousarray(image)))
                row = np.zeros(len(result.classifications[0].categories), np.float32)
                for c in result.classifications[0].categories:
                    row[c.index], names[c.index] = c.score, c.category_name
                probs.append(row)
        finally:
            classifier.close()  # explicitly: left to garbage collection it fails at exit
        self.labels = tuple(names[i] for i in sorted(names))
        return np.stack(probs)


RUNTIMES = ("litert", "mediapipe")


def load_predictor(path: str | Path, runtime: str = "litert"):
    """Open an exported model by its kind: a folder is a SavedModel, ``.tflite`` runs in LiteRT
    (or MediaPipe Tasks with ``runtime="mediapipe"``), ``.keras`` in Keras.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not one of those kinds, or ``runtime="mediapipe"`` for a model
            that is not a ``.tflite`` file, or an unknown runtime.
    """
    path = Path(path)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}.")
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if runtime == "mediapipe":
        if path.suffix != ".tflite":
            raise ValueError(f"{path}: the mediapipe runtime runs .tflite files only.")
        return MediaPipePredictor(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{path} is a folder but not a SavedModel (no saved_model.pb).")
        return SavedModelPredictor(path)
    if path.suffix == ".tflite":
        return TFLitePredictor(path)
    if path.suffix == ".keras":
        return KerasPredictor(path)
    raise ValueError(f"{path}: unknown model kind; expected a .keras file, a .tflite file or a "
                     f"SavedModel folder.")


def list_image_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files.

    Raises:
        FileNotFoundError: an input does not exist, or no images were found.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                            and p.is_file() and not p.name.startswith("."))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"image file or folder not found: {item}")
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {inputs}")
    return files


def predict_files(model_path: str | Path, inputs: list[str | Path],
                  max_image_pixels: int = 50_000_000) -> list[dict]:
    """Classify image files with an exported model.

    Returns:
        One dict per image: ``{"path", "label", "probability", "probabilities": {label: p}}``.

    Raises:
        ValueError: an image cannot be read (the message names it); see also ``load_predictor``.
    """
    predictor = load_predictor(model_path)
    labels = read_labels(model_path)
    files = list_image_files(inputs)
    for f in files:
        check_image_file(str(f), max_image_pixels)
    images = np.stack([load_image(str(f), predictor.image_size).numpy() for f in files])
    probs = predictor.predict(images.astype(np.float32))
    return [{"path": str(f), "label": labels[int(np.argmax(p))], "probability": float(np.max(p)),
             "probabilities": {label: float(v) for label, v in zip(labels, p)}}
            for f, p in zip(files, probs)]
