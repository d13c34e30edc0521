"""docs/configuration.md is generated from rps/config.py: every key is documented, and the
committed file equals the generated text (run `make docs` after changing a config key)."""

from __future__ import annotations

import dataclasses

from rps.config import Config, DataConfig
from rps.config_docs import config_rows, describe_config, field_descriptions, undocumented_keys

from conftest import REPO


def test_every_config_key_has_a_meaning():
    assert undocumented_keys() == [], (
        "add these keys to the `Attributes:` section of their dataclass docstring in "
        "rps/config.py, then run `make docs`")


def test_rows_cover_every_key_with_its_default():
    rows = {key: default for key, _, default, _ in config_rows()}
    assert rows["train.epochs"] == str(Config().train.epochs)
    assert rows["data.tfds_data_dir"] == "null" and rows["augment.enabled"] == "true"
    expected = set()
    for field in dataclasses.fields(Config):
        value = getattr(Config(), field.name)
        expected |= ({f"{field.name}.{f.name}" for f in dataclasses.fields(value)}
                     if dataclasses.is_dataclass(value) else {field.name})
    assert set(rows) == expected


def test_field_descriptions_join_continuation_lines():
    descriptions = field_descriptions(DataConfig)
    assert descriptions["image_size"] == "side of the square model input, in pixels."
    assert "validation images show hands" in descriptions["split_by"]


def test_committed_reference_matches_the_config_code():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == describe_config(), (
        "docs/configuration.md is out of date with rps/config.py: run `make docs`")
