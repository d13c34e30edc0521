"""End to end on a small slice of the real data: train the smoke config, export, evaluate;
the SavedModel and TFLite files load and agree with Keras; the run folder is complete;
an existing complete run is never overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rps.data import load_splits, make_eval_dataset
from rps.evaluate import collect
from rps.predict import load_predictor, predict_files
from rps.runs import is_complete

# One worker runs every test of the session fixture smoke_run (conftest.py), so that it trains once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke_run")]


def test_run_folder_is_complete(smoke_run):
    cfg, run_dir = smoke_run
    for name in ("config.yaml", "run_info.json", "history.csv", "model.keras", "model.tflite",
                 "saved_model/saved_model.pb", "labels.txt", "metrics.json",
                 "training_curves.png", "confusion_matrix_test_tflite.png", "COMPLETE"):
        assert (run_dir / name).exists(), name
    assert is_complete(run_dir)
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    assert (run_dir / "labels.txt").read_text().split() == ["paper", "rock", "scissors"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert len(info["data_fingerprint"]) == 64 and info["versions"]["tensorflow"].startswith("2.")
    assert info["num_images"] == {"train": 18, "val": 6, "test": 24, "validation_folder": 24}
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))


def test_exports_agree_with_keras(smoke_run):
    cfg, run_dir = smoke_run
    splits = load_splits(cfg.data, cfg.seed)
    images, _ = collect(make_eval_dataset(splits.test, cfg.data))
    keras_probs = load_predictor(run_dir / "model.keras").predict(images)
    for artifact in ("saved_model", "model.tflite"):
        probs = load_predictor(run_dir / artifact).predict(images)
        np.testing.assert_allclose(probs, keras_probs, atol=1e-4)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["tflite"]["agreement"] == 1.0
    assert metrics["test"]["keras"]["num_images"] == 24
    assert np.sum(metrics["test"]["keras"]["confusion_matrix"]) == 24


def test_predict_files_uses_labels_beside_the_model(smoke_run, real_root):
    _, run_dir = smoke_run
    results = predict_files(run_dir / "model.tflite", [real_root / "test" / "rock"])
    assert len(results) == 124
    assert {r["label"] for r in results} <= {"paper", "rock", "scissors"}
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-4


def test_complete_run_is_never_overwritten(smoke_run):
    cfg, run_dir = smoke_run
    before = (run_dir / "model.tflite").read_bytes()
    from rps.runs import open_run_dir

    second, resumed = open_run_dir(cfg)
    assert second.name == "smoke-2" and not resumed
    assert (run_dir / "model.tflite").read_bytes() == before


def test_exports_of_a_varied_model_agree(real_root, tmp_path):
    """The smoke model may come out nearly constant (two tiny epochs), which would make the
    agreement above trivial; an untrained seed_cnn gives clearly different outputs per image, so
    this check cannot pass by accident."""
    import keras

    from rps.config import build_config
    from rps.export import export_model
    from rps.models import add_softmax, build_model

    keras.utils.set_random_seed(0)
    cfg = build_config(overrides=["model.name=seed_cnn", "data.image_size=64",
                                  f"data.root={real_root}", "data.max_images_per_class=4"])
    # seed_cnn has no batch normalization (an untrained BN model normalises with unit moving
    # variance and is nearly constant); its head is scaled up so the outputs differ clearly.
    logits_model = build_model(cfg.model, 3, 64)
    head = logits_model.get_layer("logits")
    head.kernel.assign(head.kernel.numpy() * 100)
    model = add_softmax(logits_model)
    splits = load_splits(cfg.data, cfg.seed)
    images, _ = collect(make_eval_dataset(splits.test, cfg.data))
    paths = export_model(model, tmp_path, splits.class_names, images[:4])
    expected = model.predict(images, verbose=0)
    assert np.ptp(expected, axis=0).max() > 0.01  # outputs vary from image to image
    for name in ("keras", "saved_model", "tflite"):
        np.testing.assert_allclose(load_predictor(paths[name]).predict(images), expected, atol=1e-4)
