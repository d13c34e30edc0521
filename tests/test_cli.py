"""The `rps` command in a subprocess: train the smoke config, predict, evaluate, export, and the
clear errors (exit status 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def rps(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "rps", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_train_predict_evaluate_export(smoke_overrides, real_root, tmp_path):
    # Without a validation split (data.validation_fraction=0, the refit on all of train/), so
    # that path is run end to end; the shared smoke run of test_pipeline.py has one.
    out = rps("train", "--config", "configs/smoke.yaml", *smoke_overrides, "run_name=cli",
              "data.validation_fraction=0")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cli"
    assert f"run folder: {run_dir}" in out.stdout and "next: rps predict" in out.stdout
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["num_images"]["train"], info["num_images"]["val"]) == (24, 0)
    assert "There is no `val` split: the model trained on all of `train/`." in (
        run_dir / "report.md").read_text()
    assert not (run_dir / "checkpoints" / "best.weights.h5").exists()

    image = real_root / "test" / "paper" / "testpaper01-00.png"
    pred = rps("predict", run_dir / "model.tflite", image, "--json")
    assert pred.returncode == 0, pred.stderr[-2000:]
    row = json.loads(pred.stdout.strip().splitlines()[-1])
    assert row["path"] == str(image) and row["label"] in row["probabilities"]

    ev = rps("evaluate", run_dir)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "test      tflite: top-1 accuracy" in ev.stdout
    assert json.loads((run_dir / "evaluation.json").read_text())["test"]["tflite"]["agreement"] == 1.0

    # Re-export with --quantize none: the float32 files only (train above wrote the int8 variant).
    before = (run_dir / "model.tflite").stat().st_mtime_ns
    ex = rps("export", run_dir, "--quantize", "none")
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert f"exports written to {run_dir}" in ex.stdout
    assert (run_dir / "model.tflite").stat().st_mtime_ns > before


def test_unknown_config_key_is_a_clear_error():
    out = rps("train", "--config", "configs/smoke.yaml", "train.epoch=3")
    assert out.returncode == 2
    assert "unknown config key 'train.epoch'. Did you mean 'train.epochs'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    out = rps("train", "--config", "configs/smoke.yaml", f"data.root={tmp_path / 'nowhere'}",
              f"output_dir={tmp_path}")
    assert out.returncode == 2
    assert f"data root not found: {tmp_path / 'nowhere'}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "smoke").exists()  # refused before a run folder is made


def test_corrupt_image_is_a_clear_error(tiny_root, tmp_path):
    bad = tiny_root / "train" / "rock" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = rps("train", "--config", "configs/smoke.yaml", f"data.root={tiny_root}",
              f"output_dir={tmp_path / 'runs'}")
    assert out.returncode == 2
    assert f"{bad}: not a readable image" in out.stderr and "Traceback" not in out.stderr


def test_incomplete_run_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    out = rps("evaluate", tmp_path / "half")
    assert out.returncode == 2 and "is incomplete (no COMPLETE marker)" in out.stderr


def test_predict_missing_model(tmp_path):
    out = rps("predict", tmp_path / "none.tflite", tmp_path)
    assert out.returncode == 2 and f"model not found: {tmp_path / 'none.tflite'}" in out.stderr
