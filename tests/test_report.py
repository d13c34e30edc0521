"""report.md, the model card: written from a run folder's files, with or without TFLite
variants; the export table lists each file's size and test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rps.config import load_config, to_dict
from rps.report import artifact_key, list_exports, write_report

from conftest import REPO


def make_run_folder(run_dir: Path, variants: bool) -> Path:
    """A fake complete run folder: config, run info, metrics, history, plots, exports."""
    run_dir.mkdir()
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "run_info.json").write_text(json.dumps({
        "command": ["rps", "train"], "data_fingerprint": "ab" * 32,
        "class_names": ["paper", "rock", "scissors"], "num_replicas": 1,
        "num_images": {"train": 18, "val": 6, "test": 24},
        "versions": {"python": "3.11.9", "tensorflow": "2.21.0", "keras": "3.15.1"}}))
    per_class = {c: {"precision": 0.9, "recall": 0.8, "support": 8}
                 for c in ("paper", "rock", "scissors")}
    test = {"keras": {"num_images": 24, "top1_accuracy": 0.875, "per_class": per_class},
            "saved_model": {"num_images": 24, "top1_accuracy": 0.875, "agreement": 1.0},
            "tflite": {"num_images": 24, "top1_accuracy": 0.875, "agreement": 1.0}}
    files = {"model.keras": 2048, "model.tflite": 4096, "saved_model/saved_model.pb": 3000}
    if variants:
        test["tflite_int8"] = {"num_images": 24, "top1_accuracy": 0.8333, "agreement": 0.9583}
        files["model_int8.tflite"] = 1500
    (run_dir / "metrics.json").write_text(json.dumps(
        {"train_seconds": 9.5, "num_parameters": 11691, "test": test}))
    (run_dir / "history.csv").write_text("epoch,accuracy,loss,val_accuracy,val_loss\n"
                                         "0,0.5,1.2,0.33,1.1\n1,0.75,0.8,0.5,1.0\n")
    for name, size in files.items():
        (run_dir / name).parent.mkdir(exist_ok=True)
        (run_dir / name).write_bytes(b"\0" * size)
    for name in ("training_curves.png", "misclassified_test.png", "augmentation_preview.png"):
        (run_dir / name).write_bytes(b"\x89PNG")
    return run_dir


def test_artifact_keys_follow_export_names():
    assert artifact_key(Path("model.keras")) == "keras"
    assert artifact_key(Path("saved_model")) == "saved_model"
    assert artifact_key(Path("model.tflite")) == "tflite"
    assert artifact_key(Path("model_int8.tflite")) == "tflite_int8"


@pytest.mark.parametrize("variants", [False, True])
def test_report_is_a_model_card(tmp_path, variants):
    run_dir = make_run_folder(tmp_path / "smoke", variants)
    text = write_report(run_dir).read_text()
    for heading in ("# Model card: smoke", "## Intended use and limits", "## Data", "## Training",
                    "## Metrics", "## Exports", "## Plots", "## Reproduce", "## Config",
                    "## Library versions"):
        assert heading in text, heading
    assert "(11,691 parameters)" in text and "**0.8750** (24 images)" in text
    assert "ab" * 32 in text  # the data fingerprint
    assert "| `model.keras` | 2.0 KiB | 0.8750 | - |" in text
    assert "| `saved_model/` | 2.9 KiB | 0.8750 | - |" in text
    assert "| `model.tflite` | 4.0 KiB | 0.8750 | - |" in text
    assert ("| `model_int8.tflite` | 1.5 KiB | 0.8333 | - |" in text) == variants
    assert "| 2 | 0.7500 | 0.8000 | 0.5000 | 1.0000 |" in text  # last epoch of history.csv
    assert "![Misclassified held-out images, most confident mistakes first](misclassified_test.png)" in text
    assert f"rps train --config {run_dir / 'config.yaml'}" in text
    assert "| tensorflow | 2.21.0 |" in text
    assert [p.name for p in list_exports(run_dir)][:2] == ["model.keras", "saved_model"]


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml in"):
        write_report(tmp_path)
