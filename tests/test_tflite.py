"""TFLite variants on the smoke model: builtin ops only, uint8 int8 input, metadata that reads
back, MediaPipe Tasks ImageClassifier loads every variant with default options and agrees with
LiteRT, one preprocessing path, the variants table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rps.config import QUANTIZE_VARIANTS, ConfigError, load_config, parse_quantize
from rps.data import load_splits, make_eval_dataset
from rps.evaluate import collect
from rps.export import artifact_name, write_tflite_variants
from rps.predict import load_predictor, predict_files, read_labels
from rps.preprocess import load_image
from rps.tflite import (VARIANT_FILES, bench, calibration_images, convert_variant,
                        evaluate_variants, list_ops, read_metadata)

# One worker runs every test of the session fixture smoke_run (conftest.py), so that it trains once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke_run")]
pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def smoke(smoke_run, tmp_path_factory):
    """A copy of the shared smoke run with all four TFLite variants, and its test images."""
    cfg, shared = smoke_run
    run_dir = tmp_path_factory.mktemp("tflite") / shared.name
    shutil.copytree(shared, run_dir)
    splits = load_splits(cfg.data, cfg.seed)
    calibration = calibration_images(splits.train, cfg.data, cfg.export.calibration_images,
                                      cfg.seed)
    paths = write_tflite_variants(run_dir / "saved_model", run_dir, splits.class_names,
                                  QUANTIZE_VARIANTS, calibration)
    images, labels = collect(make_eval_dataset(splits.test, cfg.data))
    keras_probs = load_predictor(run_dir / "model.keras").predict(images)
    return {"cfg": cfg, "run_dir": run_dir, "splits": splits, "paths": paths, "images": images,
            "labels": labels, "keras": keras_probs}


def test_quantize_setting_parses_and_refuses_typos():
    assert parse_quantize("none") == ("float32",)
    assert parse_quantize("all") == QUANTIZE_VARIANTS
    assert parse_quantize("int8, float16") == ("float32", "float16", "int8")
    with pytest.raises(ConfigError, match="Did you mean 'int8'"):
        load_config(None, ["export.quantize=float32,int9"])


def test_every_variant_is_written_with_builtin_ops_only(smoke):
    from tensorflow.lite.python.schema_py_generated import BuiltinOperator

    assert sorted(p.name for p in smoke["paths"].values()) == sorted(VARIANT_FILES.values())
    for path in smoke["paths"].values():
        ops = list_ops(path)
        assert "CONV_2D" in ops and "SOFTMAX" in ops, ops
        assert not [op for op in ops if op.startswith("Flex")], (path, ops)  # no SELECT_TF_OPS
        assert set(ops) <= set(vars(BuiltinOperator)) - {"CUSTOM"}, (path, ops)


def test_int8_takes_uint8_pixels_and_returns_float_probabilities(smoke):
    from ai_edge_litert.interpreter import Interpreter

    for variant, path in ((v, smoke["run_dir"] / f) for v, f in VARIANT_FILES.items()):
        interpreter = Interpreter(model_path=str(path))
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        assert out["dtype"] == np.float32
        if variant == "int8":
            assert inp["dtype"] == np.uint8
            assert inp["quantization"] == (1.0, 0)  # the uint8 value is the pixel value
        else:
            assert inp["dtype"] == np.float32
    size = {v: (smoke["run_dir"] / f).stat().st_size for v, f in VARIANT_FILES.items()}
    assert max(size["int8"], size["dynamic"]) < size["float16"] < size["float32"]


def test_metadata_reads_back(smoke):
    labels = (smoke["run_dir"] / "labels.txt").read_bytes()
    for variant, path in smoke["paths"].items():
        meta, files = read_metadata(path.read_bytes())
        assert files == {"labels.txt": labels}
        assert meta.name.decode().startswith("rps image classifier")
        assert meta.license and meta.version and meta.description
        assert meta.minParserVersion == b"1.0.0"
        (graph,) = meta.subgraphMetadata
        (image,), (probs,) = graph.inputTensorMetadata, graph.outputTensorMetadata
        assert image.content.contentProperties.colorSpace == 1  # RGB
        (norm,) = image.processUnits
        assert (list(norm.options.mean), list(norm.options.std)) == ([0.0], [1.0])
        assert list(image.stats.max) == [255.0] and list(probs.stats.max) == [1.0]
        (label_file,) = probs.associatedFiles
        assert (label_file.name, label_file.type) == (b"labels.txt", 2)  # TENSOR_AXIS_LABELS


def test_mediapipe_runs_every_variant_like_litert(smoke):
    class_names = smoke["splits"].class_names
    args = (smoke["run_dir"], smoke["images"], smoke["labels"], class_names, smoke["keras"])
    litert = evaluate_variants(*args, runtime="litert")
    app = evaluate_variants(*args, runtime="mediapipe")  # also checks the label names
    assert set(app) == set(QUANTIZE_VARIANTS)
    keras_accuracy = float(np.mean(smoke["keras"].argmax(1) == smoke["labels"]))
    assert app["float32"]["top1_accuracy"] == pytest.approx(keras_accuracy, abs=0.005)
    for variant in QUANTIZE_VARIANTS:
        mp_probs = load_predictor(smoke["paths"][artifact_name(variant)], "mediapipe").predict(
            smoke["images"])
        lite_probs = load_predictor(smoke["paths"][artifact_name(variant)]).predict(smoke["images"])
        assert np.mean(mp_probs.argmax(1) == lite_probs.argmax(1)) >= 0.9, variant
        np.testing.assert_allclose(mp_probs, lite_probs, atol=1e-5)
        assert app[variant]["top1_accuracy"] == pytest.approx(litert[variant]["top1_accuracy"],
                                                              abs=0.1)


def test_mediapipe_refuses_a_float_model_without_metadata(smoke, tmp_path):
    bare = tmp_path / "model.tflite"
    bare.write_bytes(convert_variant(smoke["run_dir"] / "saved_model", "float32"))
    with pytest.raises(ValueError, match="NormalizationOptions"):
        load_predictor(bare, "mediapipe").predict(smoke["images"][:1])


def test_one_preprocessing_path_for_training_predict_and_tflite(smoke, real_root):
    """Files -> pixels: the evaluation dataset (training's decode + resize), ``rps predict``'s
    ``load_image`` and what goes into each ``.tflite`` are the same uint8 values."""
    split, size = smoke["splits"].test, smoke["cfg"].data.image_size
    files = list(split.paths[:6])
    from_dataset = smoke["images"][:6]
    from_predict = np.stack([load_image(f, size).numpy() for f in files])
    assert from_predict.dtype == np.uint8
    np.testing.assert_array_equal(from_dataset, from_predict.astype(np.float32))
    for variant in ("float32", "int8"):
        path = smoke["run_dir"] / VARIANT_FILES[variant]
        results = predict_files(path, files)
        expected = load_predictor(path).predict(from_dataset)
        got = np.array([[r["probabilities"][c] for c in read_labels(path)] for r in results])
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bench_writes_the_variants_table(smoke, tmp_path):
    result = bench(smoke["run_dir"], docs_file=tmp_path / "docs" / "tflite_variants.md", runs=3)
    assert [r["variant"] for r in result["variants"]] == list(QUANTIZE_VARIANTS)
    for row in result["variants"]:
        assert row["size_bytes"] == (smoke["run_dir"] / row["file"]).stat().st_size
        assert set(row["latency_ms"]) == {"1", "2"}
        assert 0 < row["latency_ms"]["1"]["median_ms"] <= row["latency_ms"]["1"]["p90_ms"]
        assert 0.0 <= row["agreement_with_keras"] <= 1.0
    saved = json.loads((smoke["run_dir"] / "tflite_variants.json").read_text())
    assert saved["num_images"] == len(smoke["labels"])
    table = (tmp_path / "docs" / "tflite_variants.md").read_text()
    assert "| int8 | `model_int8.tflite` |" in table
    assert table == (smoke["run_dir"] / "tflite_variants.md").read_text()

