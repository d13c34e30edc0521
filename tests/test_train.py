"""Training under MirroredStrategy with two replicas (the CPU split into two logical devices,
in a fresh process), and resuming an interrupted run with BackupAndRestore."""

from __future__ import annotations

import json
import subprocess
import sys

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
