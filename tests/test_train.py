"""Training under MirroredStrategy with two replicas (the CPU split into two logical devices,
in a fresh process), and resuming an interrupted run with BackupAndRestore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_two_replicas_train_and_export(smoke_overrides, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rps", "train", "--config", "configs/smoke.yaml", *smoke_overrides,
         "train.cpu_replicas=2", "data.global_batch_size=4", "run_name=mirrored"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "replicas: 2, global batch size: 4, per-replica batch size: 2" in out.stderr
    run_dir = tmp_path / "runs" / "mirrored"
    assert json.loads((run_dir / "run_info.json").read_text())["num_replicas"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["tflite"]["agreement"] == 1.0


@pytest.mark.parametrize("checkpoint", ["last", "best"])
def test_train_checkpoint_chooses_the_returned_weights(tiny_root, tmp_path, checkpoint):
    # A callback zeroes the weights at the end of the last epoch, after the best checkpoint
    # was written: "last" must return those zeroed weights, "best" the best.weights.h5 ones.
    import keras
    import numpy as np

    from rps.config import load_config
    from rps.data import load_splits
    from rps.train import train

    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.root={tiny_root}", "data.image_size=32", "train.epochs=2",
        f"train.checkpoint={checkpoint}"])

    class ZeroAtTheEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == cfg.train.epochs:
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

    result = train(cfg, load_splits(cfg.data, cfg.seed), tmp_path / "run",
                   extra_callbacks=[ZeroAtTheEnd()])
    zeroed = all(not np.any(w) for w in result.model.get_weights())
    assert zeroed == (checkpoint == "last")
    if checkpoint == "best":
        best = keras.models.clone_model(result.model)
        best.load_weights(str(tmp_path / "run" / "checkpoints" / "best.weights.h5"))
        for got, expected in zip(result.model.get_weights(), best.get_weights()):
            np.testing.assert_array_equal(got, expected)


def test_cross_validation_scores_every_training_image_once(tiny_root, tmp_path):
    # scripts/cross_validation.py: 2 folds of the 24 train/ images of the tiny folder, so every
    # image is held out by exactly one fold; test/ goes to its own file.
    out = tmp_path / "cv"
    run = subprocess.run(
        [sys.executable, "scripts/cross_validation.py", "--config", "configs/smoke.yaml",
         "--folds", "2", "--out", str(out), f"data.root={tiny_root}", "data.image_size=32",
         "data.max_images_per_class=0", "train.epochs=1", "train.profile_batches=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cv = json.loads((out / "cv.json").read_text())
    assert cv["total"]["folds_done"] == [0, 1] and cv["total"]["held_out"]["images"] == 24
    hands = [h for fold in cv["folds"].values() for h in fold["held_out"]["per_hand"]]
    assert sorted(hands) == sorted(f"{c}{i:02d}" for c in ("paper", "rock", "scissors") for i in range(8))
    assert cv["total"]["held_out"]["errors"] == sum(
        r["errors"] for f in cv["folds"].values() for r in f["held_out"]["per_hand"].values())
    assert cv["folds"]["0"]["validation_folder"]["images"] == 6
    assert "test" not in cv["folds"]["0"]
    test = json.loads((out / "test.json").read_text())
    assert set(test) == {"0", "1"}
    # images.json: one record per held-out image, each image once, the errors those of cv.json.
    images = json.loads((out / "images.json").read_text())
    held_out = [r for fold in images.values() for r in fold["held_out"]]
    assert len({r["path"] for r in held_out}) == len(held_out) == 24
    assert all(r["path"].startswith("train/") for r in held_out)
    assert sum(r["probabilities"].index(max(r["probabilities"])) != r["label"] for r in held_out) == \
        cv["total"]["held_out"]["errors"]
    assert len(images["0"]["validation_folder"]) == 6
    assert len(test["0"]["test"]["per_image"]) == test["0"]["test"]["images"]
    # Rerunning into the same folder with another config is refused.
    again = subprocess.run(
        [sys.executable, "scripts/cross_validation.py", "--config", "configs/smoke.yaml",
         "--folds", "2", "--only", "0", "--out", str(out), f"data.root={tiny_root}",
         "data.image_size=48", "data.max_images_per_class=0", "train.epochs=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "another config" in again.stderr


def test_fit_datasets_fill_the_validation_cache_before_training(tiny_root):
    # Keras stops each validation pass after the known number of batches, so the first pass
    # alone would never complete the tf.data cache (TensorFlow discards a partial cache and
    # decodes again). make_fit_datasets fills it: once it returns, the validation images are
    # never read from disk again, even after a partial pass.
    from rps.config import load_config
    from rps.data import load_splits
    from rps.train import make_fit_datasets

    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"data.root={tiny_root}", "data.image_size=32"])
    splits = load_splits(cfg.data, cfg.seed)
    _, val_ds, _ = make_fit_datasets(cfg, splits)
    for path in splits.val.paths:
        Path(path).unlink()
    next(iter(val_ds))  # a partial pass
    assert sum(len(y) for _, y in val_ds) == len(splits.val)


def test_fit_datasets_mix_training_labels_only_under_mixup(tiny_root):
    import numpy as np

    from rps.config import load_config
    from rps.data import load_splits
    from rps.train import make_fit_datasets

    def soft_rows(ds):
        labels = np.concatenate([y.numpy() for _, y in ds])
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        return int((labels.max(axis=1) < 0.999).sum())

    base = ["data.image_size=32", f"data.root={tiny_root}", "data.global_batch_size=4"]
    for mixup, expect_soft in ((0.0, False), (1.0, True)):  # Beta(1, 1): uniform weights
        cfg = load_config(REPO / "configs" / "smoke.yaml", [*base, f"augment.mixup={mixup}"])
        train_ds, val_ds, _ = make_fit_datasets(cfg, load_splits(cfg.data, cfg.seed))
        assert (soft_rows(train_ds) > 0) == expect_soft
        assert soft_rows(val_ds) == 0  # validation labels stay one-hot


def test_training_without_validation_split_uses_all_of_train(tiny_root, tmp_path):
    # data.validation_fraction: 0 (the refit on all of train/): fit runs without validation
    # data, logs no val_* curves and keeps no best checkpoint (there is no best epoch).
    from rps.config import load_config
    from rps.data import load_splits
    from rps.runs import read_history
    from rps.train import make_fit_datasets, train

    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.root={tiny_root}", "data.image_size=32", "data.global_batch_size=8",
        "train.epochs=1", "train.warmup_epochs=0", "data.validation_fraction=0"])
    splits = load_splits(cfg.data, cfg.seed)
    train_ds, val_ds, steps = make_fit_datasets(cfg, splits)
    assert val_ds is None and steps == 24 // 8
    result = train(cfg, splits, tmp_path / "run")
    assert set(result.history) == {"accuracy", "loss"}, result.history
    assert not (tmp_path / "run" / "checkpoints" / "best.weights.h5").exists()
    # Keras's CSVLogger writes val_* columns of NA; read_history leaves them out.
    assert set(read_history(tmp_path / "run" / "history.csv")) == {"epoch", "accuracy", "loss"}


def test_ensemble_trains_and_exports_one_averaged_model(tiny_root, tmp_path):
    # model.members=2: the ensemble trains through the whole pipeline, and the SavedModel and
    # TFLite exports agree with the Keras model's mean member probability on every image.
    from rps.config import load_config
    from rps.pipeline import run
    from rps.runs import read_run_config

    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.root={tiny_root}", "data.image_size=32", "data.global_batch_size=8",
        "train.epochs=1", "train.warmup_epochs=0", "model.members=2",
        f"output_dir={tmp_path / 'runs'}", "run_name=ensemble"])
    run_dir = run(cfg, argv=["test"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["tflite"]["agreement"] == 1.0
    assert metrics["test"]["saved_model"]["agreement"] == 1.0
    assert read_run_config(run_dir).model.members == 2
