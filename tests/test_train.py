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
