"""Model presets: shapes, parameter counts, rescaling inside the model, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rps.config import build_config
from rps.models import PRESETS, add_softmax, build_model


def test_seed_cnn_matches_the_talk():
    model = build_model(build_config(overrides=["model.name=seed_cnn"]).model, 3, 150)
    assert model.count_params() == 3_473_475
    assert [l.filters for l in model.layers if hasattr(l, "filters")] == [64, 64, 128, 128]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_output_logits_then_probabilities(name):
    model = build_model(build_config(overrides=[f"model.name={name}", "model.width=8"]).model, 3, 64)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    probs = add_softmax(model).predict(x, verbose=0)
    assert logits.shape == probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert model.layers[1].name == "rescale"  # raw 0-255 pixels in


def test_fast_cnn_is_small():
    model = build_model(build_config().model, 3, 150)
    assert model.count_params() < 350_000


def test_unknown_preset_lists_valid_names():
    cfg = build_config(overrides=["model.name=resnet"]).model
    with pytest.raises(ValueError, match="unknown model preset 'resnet'.*fast_cnn, seed_cnn"):
        build_model(cfg, 3, 64)
