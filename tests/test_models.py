"""Model presets: shapes, parameter counts, rescaling inside the model, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rps.config import build_config
from rps.models import PRESETS, add_softmax, build_model, probabilities


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


def test_ensemble_stacks_member_logits_and_averages_member_probabilities():
    import keras

    keras.utils.set_random_seed(0)
    single = build_model(build_config(overrides=["model.width=8"]).model, 3, 64)
    model = build_model(build_config(overrides=["model.width=8", "model.members=2"]).model, 3, 64)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    assert logits.shape == (4, 2, 3)
    assert model.count_params() == 2 * single.count_params()
    assert not np.allclose(logits[:, 0], logits[:, 1])  # each member has its own initialisation
    probs = add_softmax(model).predict(x, verbose=0)
    member_probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, member_probs.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities(logits), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities(logits[:, 0]), member_probs[:, 0], rtol=1e-5, atol=1e-6)


def test_member_crossentropy_trains_each_member_on_its_own_loss():
    import keras

    from rps.train import MemberCrossentropy, ensemble_accuracy

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 2, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 5)]
    single = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    expected = np.mean([float(single(labels, logits[:, m])) for m in range(2)])
    got = float(MemberCrossentropy(from_logits=True, label_smoothing=0.1)(labels, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Accuracy follows the members' mean probability, not either member alone.
    logits = np.array([[[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], "float32")  # member 0 sure of 0
    assert float(ensemble_accuracy(np.eye(3, dtype="float32")[[0]], logits)[0]) == 1.0
    assert float(ensemble_accuracy(np.eye(3, dtype="float32")[[1]], logits)[0]) == 0.0


def test_fast_cnn_is_small():
    model = build_model(build_config().model, 3, 150)
    assert model.count_params() < 350_000


def test_unknown_preset_lists_valid_names():
    cfg = build_config(overrides=["model.name=resnet"]).model
    with pytest.raises(ValueError, match="unknown model preset 'resnet'.*fast_cnn, seed_cnn"):
        build_model(cfg, 3, 64)


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_adamw_decays_norm_and_bias_only_when_asked(decay_norm_and_bias):
    # With zero gradients the Adam step is 0, so whatever moves is weight decay: the kernels
    # shrink either way; the 1-D weights (biases, BatchNorm gamma and beta) only when asked.
    import dataclasses

    import keras
    import numpy as np

    from rps.config import TrainConfig
    from rps.train import make_optimizer

    model = build_model(dataclasses.replace(build_config().model, width=8), 3, 32)
    for v in model.trainable_variables:
        v.assign(np.ones(v.shape, "float32"))
    cfg = dataclasses.replace(TrainConfig(), schedule="constant", learning_rate=0.1,
                              weight_decay=0.5, decay_norm_and_bias=decay_norm_and_bias)
    optimizer = make_optimizer(cfg, steps_per_epoch=1, model=model)
    optimizer.apply([keras.ops.zeros(v.shape) for v in model.trainable_variables],
                    model.trainable_variables)
    moved = {v.path: not np.allclose(v.numpy(), 1.0) for v in model.trainable_variables}
    one_d = {v.path for v in model.trainable_variables if len(v.shape) <= 1}
    assert one_d and len(one_d) < len(moved)
    assert all(moved[p] for p in moved if p not in one_d)
    assert all(moved[p] == decay_norm_and_bias for p in one_d)


def test_excluding_norm_and_bias_needs_the_model():
    import dataclasses

    from rps.config import TrainConfig
    from rps.train import make_optimizer

    with pytest.raises(ValueError, match="decay_norm_and_bias"):
        make_optimizer(dataclasses.replace(TrainConfig(), decay_norm_and_bias=False), 1)
