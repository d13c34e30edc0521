"""Keras 3 backends: the smoke config trains with KERAS_BACKEND=jax and =torch (tf.data feeding
them), and the run exports SavedModel and TFLite files that match the trained model.

JAX and PyTorch are extras (``pip install -e .[jax,torch]``; ``make install-backends``). Where
they are missing these tests skip, unless RPS_REQUIRE_BACKENDS=1 (CI sets it) makes that a
failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from rps.runs import is_complete
from rps.tflite import list_ops

pytestmark = pytest.mark.slow


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("RPS_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{module} is not installed (make install-backends)")
        pytest.skip(f"{module} is not installed (make install-backends)")


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
def test_train_on_backend_and_export(backend, module, smoke_overrides, tmp_path):
    require(module)
    out = subprocess.run(
        [sys.executable, "-m", "rps", "train", "--config", "configs/smoke.yaml", *smoke_overrides,
         "train.epochs=2", "export.quantize=none", f"run_name={backend}",
         # every augmentation layer of the default config, the TensorFlow-op ones included
         "augment.background=0.5", "augment.noise=6.0", "augment.blur=0.2", "augment.hue=0.05",
         "augment.saturation=0.3", "augment.brightness=0.2"],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = tmp_path / "runs" / backend
    assert is_complete(run_dir)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["versions"]["keras_backend"] == backend  # trained there, not on TensorFlow
    # The exported TensorFlow graph reproduces the backend's own outputs ...
    assert f"matches the {backend}-trained model" in out.stderr
    # ... and SavedModel and TFLite agree with it on test/, with builtin ops only.
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test["saved_model"]["agreement"] == 1.0 and test["tflite"]["agreement"] >= 0.99
    assert not [op for op in list_ops(run_dir / "model.tflite") if op.startswith("Flex")]


def test_non_tensorflow_backend_refuses_distribution(smoke_overrides):
    require("jax")
    out = subprocess.run(
        [sys.executable, "-m", "rps", "train", "--config", "configs/smoke.yaml", *smoke_overrides,
         "train.cpu_replicas=2", "data.global_batch_size=4"],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "need KERAS_BACKEND=tensorflow" in out.stderr, out.stderr[-2000:]
