"""Crash safety: a run killed with SIGKILL resumes from its last completed epoch when the same
command runs again, and ends complete and valid; damaged backups fall back to the previous
epoch; ``latest`` only ever names a complete run; ``deterministic: true`` gives bit-identical
weights. (``scripts/stress_resume.py`` does the same with random kill moments.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from rps.runs import (BACKUP_DIR, ResumeState, is_complete, mark_complete, prepare_resume,
                      read_history, remove_temporary_files)

from conftest import REPO


def smoke_command(root: Path, out: Path, *extra: str) -> list[str]:
    """`rps train` on the smoke config with 4 epochs (about 2 s each), no int8 variant."""
    return [sys.executable, "-m", "rps", "train", "--config", "configs/smoke.yaml",
            f"data.root={root}", f"output_dir={out}", "train.epochs=4", "export.quantize=none",
            *extra]


def run_to_end(command: list[str], log: Path) -> str:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def kill_when(command: list[str], log: Path, ready, timeout: float = 300) -> None:
    """Start ``command``, SIGKILL it as soon as ``ready()`` is true."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                assert proc.poll() is None, f"finished before the kill:\n{log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the kill moment"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def backup_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / BACKUP_DIR / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def assert_complete_and_valid(run_dir: Path, epochs: int = 4) -> None:
    """COMPLETE, `latest` -> it, every epoch logged once, no training state or temporary files
    left, the exports load and predict."""
    from rps.predict import load_predictor

    assert is_complete(run_dir)
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    assert read_history(run_dir / "history.csv")["epoch"] == list(range(epochs))
    assert not (run_dir / BACKUP_DIR).exists()
    assert not [p for p in run_dir.rglob(".tmp-*")] + [p for p in run_dir.rglob(".old-*")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["tflite"]["agreement"] == 1.0
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    for artifact in ("model.keras", "model.tflite"):
        probabilities = load_predictor(run_dir / artifact).predict(images)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_kill_during_training_resumes(real_root, tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "smoke"
    command = smoke_command(real_root, out)
    # Kill inside the third epoch: two epochs are backed up, the third is lost.
    kill_when(command, tmp_path / "first.log", lambda: backup_epoch(run_dir) >= 2)
    assert not is_complete(run_dir) and not (out / "latest").exists()
    killed_at = backup_epoch(run_dir)
    text = run_to_end(command, tmp_path / "second.log")
    assert f"resuming training at epoch {killed_at + 1}" in text
    assert f"Epoch {killed_at + 1}/4" in text and "Epoch 1/4" not in text  # no epoch trained twice
    assert json.loads((run_dir / "run_info.json").read_text())["resumed"] is True
    assert sorted(p.name for p in out.iterdir()) == ["latest", "smoke"]  # the same folder
    assert_complete_and_valid(run_dir)


@pytest.mark.slow
def test_kill_after_training_skips_to_export(real_root, tmp_path):
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "smoke"
    command = smoke_command(real_root, out)
    kill_when(command, tmp_path / "first.log", lambda: (run_dir / "checkpoints/trained.json").exists())
    text = run_to_end(command, tmp_path / "second.log")
    assert "had finished; reusing its weights" in text and "Epoch 1/4" not in text
    assert_complete_and_valid(run_dir)


@pytest.mark.slow
def test_deterministic_resumed_run_is_bit_identical_to_an_uninterrupted_one(real_root, tmp_path):
    """Killed inside epoch 3 and resumed, a ``train.deterministic`` run ends with the weights of
    the same run left alone: the resumed epochs read the same shuffled, augmented batches
    (``make_fit_datasets(start_epoch=...)``), and BackupAndRestore restores the rest. This also
    covers two uninterrupted runs of one config (both runs here train epochs 1-2 from the same
    start): any difference between same-seed runs fails it too."""
    import keras

    extra = ("train.deterministic=true", "export.tflite=false", "train.epochs=4")
    run_to_end(smoke_command(real_root, tmp_path / "runs", "run_name=whole", *extra),
               tmp_path / "whole.log")
    command = smoke_command(real_root, tmp_path / "runs", "run_name=resumed", *extra)
    run_dir = tmp_path / "runs" / "resumed"
    kill_when(command, tmp_path / "first.log", lambda: backup_epoch(run_dir) >= 2)
    killed_at = backup_epoch(run_dir)
    assert 2 <= killed_at < 4
    text = run_to_end(command, tmp_path / "second.log")
    assert f"resuming training at epoch {killed_at + 1}" in text
    weights = [keras.saving.load_model(tmp_path / "runs" / name / "model.keras", safe_mode=True,
                                       compile=False).get_weights()
               for name in ("whole", "resumed")]
    assert len(weights[0]) == len(weights[1]) > 0
    same = [a.tobytes() == b.tobytes() for a, b in zip(*weights)]
    assert all(same), f"{sum(same)} of {len(same)} weight arrays identical"


STEPS_TWICE = """
import sys
import numpy as np, keras
from rps.config import load_config
from rps.models import build_model
from rps.train import compile_model, make_strategy
cfg = load_config("configs/default.yaml", ["train.deterministic=true"])
strategy = make_strategy(cfg.train)  # as every entry point: first, before other TensorFlow work
x = np.random.default_rng(0).uniform(0, 255, (64, 128, 128, 3)).astype("float32")
y = np.eye(3, dtype="float32")[np.random.default_rng(1).integers(0, 3, 64)]
runs = []
for _ in range(2):
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = compile_model(build_model(cfg.model, 3, 128), cfg, 30)
    for step in range(12):
        model.train_on_batch(x, y)
    runs.append(model.get_weights())
same = [a.tobytes() == b.tobytes() for a, b in zip(*runs)]
print(f"{sum(same)} of {len(same)} weight arrays identical")
sys.exit(0 if all(same) else 1)
"""


@pytest.mark.slow
def test_deterministic_training_steps_repeat_at_the_default_model_size():
    """The default model (width 40, 128 px, batch 64) for 12 steps, twice in one process set up
    by ``make_strategy`` under ``train.deterministic``. With op determinism alone the stem
    convolution's kernel drifted apart within 2 to 6 steps (concurrent ops race; the smoke
    config above is too small to show it)."""
    done = subprocess.run([sys.executable, "-c", STEPS_TWICE], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# Unit tests of the repair step: no training, fake BackupAndRestore files.

def _h5(path: Path, value: float) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.full(1000, value))


def _backup(run_dir: Path, epoch: int, suffix: str = "") -> None:
    backup = run_dir / BACKUP_DIR
    backup.mkdir(parents=True, exist_ok=True)
    _h5(backup / f"latest.weights.h5{suffix}", epoch)
    time.sleep(0.01)  # metadata is written after the weights, as Keras does
    (backup / f"training_metadata.json{suffix}").write_text(json.dumps({"epoch": epoch, "batch": 0}))


def _history(run_dir: Path, epochs: int) -> None:
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    rows += [f"{e},0.5,{1 - e / 10},0.5,{1 - e / 20}" for e in range(epochs)]
    (run_dir / "history.csv").write_text("\n".join(rows) + "\n")


def test_finished_training_drops_a_backup_left_by_a_kill(tmp_path):
    # A kill between trained.json and the removal of the BackupAndRestore state leaves both;
    # the rerun reuses the finished training and must not keep the stale backup.
    import keras

    from rps.runs import FinishedTraining

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    (tmp_path / "checkpoints").mkdir()
    FinishedTraining({"loss": [1.0]}, 2.5).save(tmp_path, model)
    assert not (tmp_path / BACKUP_DIR).exists()
    (tmp_path / BACKUP_DIR).mkdir(parents=True)
    (tmp_path / BACKUP_DIR / "training_metadata.json").write_text("{}")
    assert FinishedTraining.load(tmp_path) == FinishedTraining({"loss": [1.0]}, 2.5)
    assert not (tmp_path / BACKUP_DIR).exists()


def test_prepare_resume_trims_history_to_the_backup(tmp_path):
    _backup(tmp_path, 3)
    _history(tmp_path, 4)  # the 4th row was written before the kill hit the 4th backup
    _h5(tmp_path / "checkpoints" / "best.weights.h5", 0)
    assert prepare_resume(tmp_path) == ResumeState(3, 1 - 2 / 20)
    assert read_history(tmp_path / "history.csv")["epoch"] == [0, 1, 2]


def test_prepare_resume_falls_back_to_the_previous_backup(tmp_path):
    _backup(tmp_path, 2, ".bkp")
    _backup(tmp_path, 3)
    weights = tmp_path / BACKUP_DIR / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:3000])  # killed while writing epoch 3's backup
    _history(tmp_path, 3)
    assert prepare_resume(tmp_path).epoch == 2
    with h5py.File(weights) as f:
        assert f["w"][0] == 2  # the .bkp copy is in place for Keras to load
    assert read_history(tmp_path / "history.csv")["epoch"] == [0, 1]


def test_prepare_resume_detects_weights_newer_than_metadata(tmp_path):
    _backup(tmp_path, 2, ".bkp")
    _backup(tmp_path, 2)
    time.sleep(0.01)
    _h5(tmp_path / BACKUP_DIR / "latest.weights.h5", 3)  # killed before the metadata write
    assert prepare_resume(tmp_path).epoch == 2
    with h5py.File(tmp_path / BACKUP_DIR / "latest.weights.h5") as f:
        assert f["w"][0] == 2


def test_workers_agree_on_the_earliest_epoch(tmp_path):
    # Multi-worker: this worker holds epoch 3, another only epoch 2 (killed while writing 3).
    _backup(tmp_path, 2, ".bkp")
    _backup(tmp_path, 3)
    _history(tmp_path, 3)
    seen = []
    assert prepare_resume(tmp_path, agree=lambda e: seen.append(e) or 2).epoch == 2
    assert seen == [3]
    with h5py.File(tmp_path / BACKUP_DIR / "latest.weights.h5") as f:
        assert f["w"][0] == 2
    assert read_history(tmp_path / "history.csv")["epoch"] == [0, 1]
    # Two epochs apart: no copy is left, so it stops with a message instead of diverging.
    _backup(tmp_path, 4)
    with pytest.raises(ValueError, match="backups disagree"):
        prepare_resume(tmp_path, agree=lambda e: 1)
    assert prepare_resume(tmp_path, agree=lambda e: 0).epoch == 0  # another worker has none
    assert not (tmp_path / BACKUP_DIR).exists()


def test_prepare_resume_without_usable_backup_starts_afresh(tmp_path):
    _backup(tmp_path, 3)
    (tmp_path / BACKUP_DIR / "training_metadata.json").write_text('{"epo')  # cut short
    _history(tmp_path, 3)
    best = tmp_path / "checkpoints" / "best.weights.h5"
    best.write_bytes(b"\x89HDF\r\n")  # cut short
    assert prepare_resume(tmp_path) == ResumeState(0, None)
    assert not (tmp_path / BACKUP_DIR).exists() and not (tmp_path / "history.csv").exists()
    assert not best.exists()


def test_prepare_resume_drops_a_half_written_history_row(tmp_path):
    _backup(tmp_path, 2)
    _history(tmp_path, 2)
    with open(tmp_path / "history.csv", "a") as f:
        f.write("2,0.5,0.")
    assert prepare_resume(tmp_path).epoch == 2
    assert read_history(tmp_path / "history.csv")["epoch"] == [0, 1]


def test_seed_state_backup_restores_the_dropout_state_of_the_resumed_epoch(tmp_path, caplog):
    import keras

    from rps.train import SeedStateBackup

    def model_and_state():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5, seed=7)])
        (state,) = [v for v in model.variables if v.path.endswith("seed_generator_state")]
        return model, state

    model, state = model_and_state()
    backup = SeedStateBackup(tmp_path)
    backup.set_model(model)
    for epoch in range(4):  # the train step advances the state; epoch e ends at [7, 10 (e + 1)]
        state.assign(np.array([7, 10 * (epoch + 1)]))
        backup.on_epoch_end(epoch)
    saved = json.loads((tmp_path / SeedStateBackup.FILE).read_text())
    assert saved == {"2": [[7, 20]], "3": [[7, 30]], "4": [[7, 40]]}  # the last three epochs

    resumed, resumed_state = model_and_state()
    restore = SeedStateBackup(tmp_path, start_epoch=3)
    restore.set_model(resumed)
    restore.on_train_begin()
    assert resumed_state.numpy().tolist() == [7, 30]
    too_old = SeedStateBackup(tmp_path, start_epoch=1)  # not kept: warn, keep the fresh state
    too_old.set_model(model_and_state()[0])
    too_old.on_train_begin()
    assert "no seed-generator states for epoch 2" in caplog.text  # 1-based, as in the logs


def test_fresh_run_folder_is_left_alone(tmp_path):
    assert prepare_resume(tmp_path) == ResumeState(0, None)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in (".tmp-123-model.keras", ".old-saved_model-9", "checkpoints/.tmp-1-final.weights.h5"):
        (tmp_path / name).mkdir() if "saved_model" in name else (tmp_path / name).write_text("x")
    (tmp_path / "model.keras").write_text("keep")
    assert len(remove_temporary_files(tmp_path)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["model.keras"]


def test_latest_only_points_to_complete_runs(tmp_path):
    from rps.config import build_config
    from rps.runs import open_run_dir, require_complete

    cfg = build_config(overrides=[f"output_dir={tmp_path}", "run_name=r"])
    first, _ = open_run_dir(cfg)
    assert not (tmp_path / "latest").exists()  # nothing complete yet
    mark_complete(first)
    second, resumed = open_run_dir(cfg)  # a new run of the same name: r-2, incomplete
    assert second.name == "r-2" and not resumed
    assert (tmp_path / "latest").resolve() == first.resolve()
    with pytest.raises(ValueError, match="is incomplete"):
        require_complete(second)
    again, resumed = open_run_dir(cfg)  # the same command resumes r-2, never touches r
    assert again == second and resumed
    mark_complete(second)
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_killed_before_config_was_written_is_adopted(tmp_path):
    from rps.config import build_config
    from rps.runs import open_run_dir

    cfg = build_config(overrides=[f"output_dir={tmp_path}", "run_name=r"])
    (tmp_path / "r").mkdir()  # killed between mkdir and config.yaml
    run_dir, _ = open_run_dir(cfg)
    assert run_dir == tmp_path / "r" and (run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_export_and_evaluate_refuse_an_incomplete_run(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.keras").write_text("not finished")
    for verb in ("export", "evaluate"):
        out = subprocess.run([sys.executable, "-m", "rps", verb, str(tmp_path / "half")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"run folder {tmp_path / 'half'} is incomplete (no COMPLETE marker)" in out.stderr
        assert "Run the same `rps train` command again to resume it." in out.stderr


def test_peak_rss_is_reported_in_bytes():
    from rps.runs import peak_rss_bytes

    assert 10 * 2**20 < peak_rss_bytes() < 64 * 2**30
    assert peak_rss_bytes(children=True) >= 0
