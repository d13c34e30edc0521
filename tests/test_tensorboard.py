"""TensorBoard: the summary helpers, then a smoke run served by a real TensorBoard server on a
loopback port, checked through TensorBoard's HTTP API (scalars, images, graph, histograms,
HParams, profile)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rps.config import load_config
from rps.tensorboard import augment_draws, flatten_config, image_grid
from rps.train import make_callbacks

from conftest import REPO

# One worker runs every test of the session fixture smoke_run (conftest.py), so that it trains once.
pytestmark = pytest.mark.xdist_group("smoke_run")


def test_image_grid_tiles_rows_and_columns():
    rows = np.zeros((2, 3, 8, 10, 3), np.uint8)
    rows[1, 2] = 200
    grid = image_grid(rows, gap=2)
    assert grid.shape == (2 * 10, 3 * 12, 3) and grid.dtype == np.uint8
    assert (grid[10:18, 24:34] == 200).all() and (grid[8:10] == 255).all()


def test_augment_draws_without_augmentation_repeats_the_images():
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    draws = augment_draws(images, None, draws=3)
    assert draws.shape == (2, 3, 16, 16, 3)
    np.testing.assert_array_equal(draws[:, 2], images)


def test_flatten_config_gives_hparams_values():
    values = flatten_config(load_config(REPO / "configs" / "smoke.yaml"))
    assert values["train.learning_rate"] == 0.003 and values["model.width"] == 8
    assert values["data.tfds_data_dir"] == "none"  # None is not an HParams type
    assert "export.license" not in values and "log_format" not in values


def test_json_lines_mode_prints_one_object_per_epoch(tmp_path, capsys):
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["log_format=json"])
    printer = make_callbacks(cfg, tmp_path, tuning=True)[-1]
    printer.on_epoch_end(0, {"loss": 1.5, "val_accuracy": np.float32(0.5)})
    assert json.loads(capsys.readouterr().out) == {"event": "epoch", "epoch": 1, "loss": 1.5,
                                                    "val_accuracy": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None):
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"} if body else {}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        raw = r.read()
        if r.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
    return json.loads(raw)


def _wait_for(url: str, ready, timeout: float = 60.0, body: dict | None = None):
    """Poll a TensorBoard endpoint until ``ready(response)`` holds (TensorBoard loads event
    files in the background, so the first answers may be partial)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = _request(url, body)
            if ready(last):
                return last
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout} s; last answer: {str(last)[:2000]}")


@pytest.fixture(scope="module")
def smoke_run_dir(smoke_run) -> Path:
    """The shared smoke run of conftest.py (scalars every 2 steps, steps 3-4 profiled)."""
    return smoke_run[1]


@pytest.fixture(scope="module")
def tensorboard(smoke_run_dir, tmp_path_factory):
    """A TensorBoard server over the run's logs on a free loopback port; its data URL."""
    port, log = _free_port(), tmp_path_factory.mktemp("tensorboard") / "server.log"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would block the server
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(smoke_run_dir / "logs"),
             "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/data"
        try:
            _wait_for(f"{url}/plugins_listing", lambda r: "scalars" in r)
        except AssertionError as err:
            raise AssertionError(f"{err}\nserver log:\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()




@pytest.mark.slow
def test_run_folder_has_plots_and_report(smoke_run_dir):
    for name in ("misclassified_test.png", "augmentation_preview.png", "report.md"):
        assert (smoke_run_dir / name).stat().st_size > 0, name
    assert list((smoke_run_dir / "logs" / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))


@pytest.mark.slow
def test_scalars(tensorboard):
    wanted = {"train": {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss",
                        "batch_accuracy", "batch_learning_rate"},
              "validation": {"epoch_loss", "epoch_accuracy"},
              ".": {"final/test_keras_top1_accuracy", "final/val_accuracy"}}
    tags = _wait_for(f"{tensorboard}/plugin/scalars/tags",
                     lambda r: all(wanted[run] <= set(r.get(run, {})) for run in wanted))
    loss = _request(f"{tensorboard}/plugin/scalars/scalars?run=train&tag=epoch_loss")
    assert [step for _, step, _ in loss] == [0, 1, 2, 3]  # one point per epoch
    batch_lr = _request(f"{tensorboard}/plugin/scalars/scalars?run=train&tag=batch_learning_rate")
    assert [step for _, step, _ in batch_lr] == list(range(2, 25, 2))  # every 2 of 24 steps
    assert tags


@pytest.mark.slow
def test_images(tensorboard):
    tags = _wait_for(f"{tensorboard}/plugin/images/tags",
                     lambda r: "confusion_matrix" in r.get("validation", {})
                     and "augmented_training_samples" in r.get("train", {}))
    assert tags["train"]["augmented_training_samples"]["samples"] == 1
    matrices = _request(f"{tensorboard}/plugin/images/images?run=validation&tag=confusion_matrix")
    assert [m["step"] for m in matrices] == [0, 1, 2, 3]  # one per epoch
    with urllib.request.urlopen(f"{tensorboard}/plugin/images/individualImage?"
                                f"{matrices[-1]['query']}", timeout=10) as r:
        assert r.read()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_graph_histograms_profile(tensorboard):
    graphs = _wait_for(f"{tensorboard}/plugin/graphs/info", lambda r: "train" in r)
    kinds = graphs["train"]["tags"]
    assert kinds["keras"]["conceptual_graph"]  # the Keras model
    assert any(t["op_graph"] for t in kinds.values())  # the traced training step
    histograms = _wait_for(f"{tensorboard}/plugin/histograms/tags", lambda r: "train" in r)
    assert "logits/kernel/histogram" in histograms["train"]
    profiles = _wait_for(f"{tensorboard}/plugin/profile/runs", lambda r: bool(r))
    assert any(run.startswith("train/") for run in profiles)


@pytest.mark.slow
def test_hparams(tensorboard):
    experiment = _wait_for(f"{tensorboard}/plugin/hparams/experiment",
                           lambda r: bool(r.get("hparamInfos")), body={"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.width", "train.learning_rate", "augment.rotation"} <= names
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"final/test_keras_top1_accuracy", "final/val_accuracy"} <= metrics
