"""keras-tuner search: the tune file's checks, the Hyperband budget, a tuned batch size larger
than the training split, a two-trial Hyperband search through `rps tune` (leaderboard, best.yaml,
JSON lines, --resume, --quiet), and a two-trial Bayesian search in process that never reads
test/."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import keras_tuner
import pytest
import yaml

from rps.config import ConfigError, load_config
from rps.data import ImageSplit, Splits
from rps.tune import RpsHyperModel, hyperband_budget, load_tune_config

from conftest import REPO

SMOKE_SPACE = {"model.width": [8, 16],
               "model.dropout_rate": {"min": 0.0, "max": 0.5, "step": 0.1},
               "train.learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
               "augment.rotation": {"min": 0.0, "max": 0.2, "step": 0.05}}


def write_tune(tmp_path, **settings):
    values = {"name": "smoke", "base": str(REPO / "configs" / "smoke.yaml"), "tuner": "hyperband",
              "max_epochs": 2, "factor": 2, "max_trials": 2, "search_space": SMOKE_SPACE,
              **settings}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_shipped_tune_file_loads(monkeypatch):
    monkeypatch.chdir(REPO)  # the tune file names its base relative to the repository
    tune_cfg = load_tune_config(REPO / "configs" / "tune.yaml")
    assert tune_cfg.tuner == "hyperband" and tune_cfg.objective == "val_accuracy"
    assert tune_cfg.base == load_config(REPO / "configs" / "default.yaml")
    assert tune_cfg.search_space["model.width"] == {"values": [16, 24, 32, 48]}
    assert str(tune_cfg.out_dir) == "saved_models/tune-default"


def test_hyperband_budget_matches_keras_tuner():
    assert hyperband_budget(6, 3) == (10, 36)
    assert hyperband_budget(2, 2) == (5, 7)
    assert hyperband_budget(1, 3, iterations=2) == (2, 2)


@pytest.mark.parametrize("settings, message", [
    ({"objective": "test_accuracy"}, "objective = 'test_accuracy': choose one of val_accuracy, "
                                     "val_loss (the validation split; test/ is never used"),
    ({"tuners": "bayesian"}, "unknown tune setting 'tuners'. Did you mean 'tuner'?"),
    ({"search_space": {"model.widht": [8]}}, "unknown config key 'model.widht'. Did you mean "
                                             "'model.width'?"),
    ({"search_space": {"train.epochs": [1, 2]}}, "search_space key 'train.epochs' cannot be tuned"),
    ({"search_space": {"model.dropout_rate": {"min": 0.0, "max": 1.5}}},
     "config key 'model.dropout_rate' = 1.5 is out of range"),
    ({"search_space": {"model.width": {"min": 8, "max": 16.5}}},
     "search_space 'model.width' is an int key"),
    ({"max_epochs": 0}, "max_epochs = 0: expected an integer >= 1."),
    ({"overrides": ["data.validation_fraction=0"]}, "trials are scored on the validation split, "
                                                    "and the base config has none"),
    ({"overrides": "data.validation_fraction=0.2"}, "overrides = 'data.validation_fraction=0.2': "
                                                    "expected a list of 'key=value' strings."),
])
def test_bad_tune_file_is_a_clear_error(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_tune_config(write_tune(tmp_path, **settings))
    assert message in str(err.value)


def test_overrides_reach_base_and_settings(tmp_path):
    tune_cfg = load_tune_config(write_tune(tmp_path), ["data.image_size=48", "tune.max_trials=3",
                                                       f"output_dir={tmp_path}"])
    assert tune_cfg.base.data.image_size == 48 and tune_cfg.max_trials == 3
    in_file = load_tune_config(write_tune(tmp_path, overrides=["data.image_size=40"]),
                               ["model.width=12"])
    assert (in_file.base.data.image_size, in_file.base.model.width) == (40, 12)
    assert tune_cfg.out_dir == tmp_path / "tune-smoke"


def rps(*args):
    return subprocess.run([sys.executable, "-m", "rps", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_tuned_batch_size_larger_than_the_training_split_is_a_clear_error(tmp_path):
    names = ("paper", "rock", "scissors")
    train = ImageSplit("train", tuple(f"img{i}.png" for i in range(6)), (0, 1, 2) * 2, names)
    splits = Splits(train, ImageSplit("val", (), (), names), None, None, names, "x")
    tune_cfg = load_tune_config(write_tune(tmp_path, search_space={
        "data.global_batch_size": {"values": [8]}}))
    hp = keras_tuner.HyperParameters()
    with pytest.raises(ValueError, match="6 images, fewer than data.global_batch_size=8"):
        RpsHyperModel(tune_cfg, splits).build(hp)


@pytest.mark.slow
def test_two_trial_hyperband_search_then_resume(real_root, tmp_path):
    tune_yaml = write_tune(tmp_path)
    overrides = [f"data.root={real_root}", f"output_dir={tmp_path / 'runs'}"]
    out = rps("tune", "--config", tune_yaml, *overrides, "--json-lines")
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines()]  # every line is JSON
    assert [e["event"] for e in events if e["event"] != "epoch"] == ["trial", "trial", "done"]
    tune_dir = tmp_path / "runs" / "tune-smoke"
    assert events[-1]["best_yaml"] == str(tune_dir / "best.yaml")

    with open(tune_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["rank"] == "1" and rows[0]["status"] == "COMPLETED"
    assert set(SMOKE_SPACE) <= set(rows[0])
    assert "| rank | trial | val_accuracy |" in (tune_dir / "leaderboard.md").read_text()
    best = load_config(tune_dir / "best.yaml")
    assert best.train.epochs == 2 and best.run_name == "smoke-best"
    assert best.model.width == int(rows[0]["model.width"])

    again = rps("tune", "--config", tune_yaml, *overrides, "--resume", "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == ""
    with open(tune_dir / "leaderboard.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2  # nothing re-run, nothing lost

    refused = rps("tune", "--config", tune_yaml, *overrides)
    assert refused.returncode == 2 and "already holds a search" in refused.stderr


@pytest.mark.slow
def test_bayesian_search_scores_on_validation_only(real_root, tmp_path, monkeypatch):
    import rps.train
    from rps.tune import run_search

    read = []
    for name in ("make_train_dataset", "make_eval_dataset"):
        original = getattr(rps.train, name)
        monkeypatch.setattr(rps.train, name, lambda split, *a, _f=original, **k:
                            (read.append(split.name), _f(split, *a, **k))[1])
    tune_cfg = load_tune_config(
        write_tune(tmp_path, tuner="bayesian", max_epochs=1),
        [f"data.root={real_root}", f"output_dir={tmp_path}", "log_format=quiet"])
    result = run_search(tune_cfg)
    assert len(result.rows) == 2 and result.best_yaml.is_file()
    assert set(read) == {"train", "val"}  # test/ never feeds a trial
