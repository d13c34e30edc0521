"""Safe loading: ``.keras`` files load with ``safe_mode=True``, so a model file cannot run
Python code (a ``Lambda`` layer's pickled bytecode is refused); nothing in ``rps`` unpickles.
(The downloader's checksum and zip-slip checks are tested in test_download.py.)"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from rps.predict import load_predictor

from conftest import REPO


def test_lambda_layer_in_a_model_file_is_refused(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0, name="code")(inputs)  # pickled bytecode
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="safe_mode"):
        load_predictor(tmp_path / "model.keras").predict(np.zeros((1, 4, 4, 3), np.float32))


def test_every_load_model_call_is_safe_and_nothing_unpickles():
    sources = {p: p.read_text() for p in (REPO / "rps").glob("*.py")}
    calls = [(p.name, m.group(0)) for p, text in sources.items()
             for m in re.finditer(r"load_model\([^)]*\)", text)]
    assert calls, "expected keras.saving.load_model calls in rps/"
    assert all("safe_mode=True" in call for _, call in calls), calls
    for path, text in sources.items():
        assert not re.search(r"\bimport (c?pickle|dill|joblib)\b|allow_pickle=True|yaml\.load\(",
                             text), path
