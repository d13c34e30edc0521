"""Config: defaults, YAML, overrides, and the exact messages for bad keys and values."""

from __future__ import annotations

import pytest

from rps.config import Config, ConfigError, build_config, from_dict, load_config, to_dict

from conftest import REPO


def test_defaults_are_valid():
    assert build_config() == Config()


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert from_dict(to_dict(cfg)) == cfg


def test_overrides_parse_by_field_type():
    cfg = build_config({"train": {"epochs": 5}},
                       ["train.epochs=3", "train.learning_rate=1e-3", "data.cache=false",
                        "data.tfds_data_dir=none", "run_name=7"])
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 0.001
    assert cfg.data.cache is False and cfg.data.tfds_data_dir is None and cfg.run_name == "7"


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"epoch": 3}})
    assert str(err.value).startswith("unknown config key 'train.epoch'. Did you mean 'train.epochs'?")


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'. Did you mean 'train'\?"):
        build_config(overrides=["trian.epochs=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        build_config(overrides=["train.epochs=many"])
    assert str(err.value) == ("config key 'train.epochs': expected int, got str 'many'. "
                              "Fix the value in the YAML file or the 'train.epochs=...' override.")


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="expected int, got bool"):
        build_config({"train": {"epochs": True}})


def test_out_of_range_value():
    with pytest.raises(ConfigError) as err:
        build_config(overrides=["train.epochs=-1"])
    assert str(err.value) == "config key 'train.epochs' = -1 is out of range: expected an integer >= 1."
    with pytest.raises(ConfigError, match=r"'augment.mixup' = -0.2 is out of range: expected an alpha"):
        build_config(overrides=["augment.mixup=-0.2"])
    with pytest.raises(ConfigError, match=r"'model.members' = 0 is out of range: expected an integer in"):
        build_config(overrides=["model.members=0"])


def test_fold_must_be_one_of_the_folds():
    with pytest.raises(ConfigError, match=r"'data.fold' = 7 is out of range: expected between 0 "
                                          r"and data.folds - 1 = 6"):
        build_config(overrides=["data.folds=7", "data.fold=7"])
    with pytest.raises(ConfigError, match=r"'data.folds' = 1 is out of range"):
        build_config(overrides=["data.folds=1"])
    assert build_config(overrides=["data.folds=7", "data.fold=6"]).data.fold == 6
    assert build_config(overrides=["data.split_seed=3"]).data.split_seed == 3
    assert build_config(overrides=["data.split_seed=null"]).data.split_seed is None
    with pytest.raises(ConfigError, match=r"'data.split_seed' = -1 is out of range: expected null"):
        build_config(overrides=["data.split_seed=-1"])


def test_no_validation_split_needs_last_checkpoint_and_no_early_stopping():
    assert build_config(overrides=["data.validation_fraction=0"]).data.validation_fraction == 0
    with pytest.raises(ConfigError, match=r"'data.validation_fraction' = 1.0 is out of range: "
                                          r"expected in \[0, 1\)"):
        build_config(overrides=["data.validation_fraction=1.0"])
    with pytest.raises(ConfigError, match=r"'train.checkpoint' = 'best' is out of range: expected "
                                          r"'last' when there is no validation split"):
        build_config(overrides=["data.validation_fraction=0", "train.checkpoint=best"])
    with pytest.raises(ConfigError, match=r"'train.early_stopping_patience' = 3 is out of range: "
                                          r"expected 0 when there is no validation split"):
        build_config(overrides=["data.validation_fraction=0", "train.early_stopping_patience=3"])
    # k-fold cross-validation has a validation split (the fold) whatever the fraction says.
    assert build_config(overrides=["data.validation_fraction=0", "data.folds=7",
                                   "train.checkpoint=best"]).train.checkpoint == "best"


def test_invalid_choice_lists_options():
    with pytest.raises(ConfigError) as err:
        build_config(overrides=["train.optimizer=adamv"])
    assert str(err.value) == ("config key 'train.optimizer' = 'adamv' is not valid. Did you mean "
                              "'adam'? Choose one of: adamw, adam, rmsprop, sgd.")


def test_global_batch_must_divide_across_replicas():
    with pytest.raises(ConfigError, match="does not divide across train.cpu_replicas = 2"):
        build_config(overrides=["data.global_batch_size=63", "train.cpu_replicas=2"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        build_config(overrides=["train.epochs"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  image_sise: 64\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'data.image_sise'"):
        load_config(typo)
