"""rps.evaluate's metrics on hand-computed cases: confusion matrix, precision and recall, NLL."""

import math

import numpy as np
import pytest

from rps.evaluate import compute_metrics, nll_and_accuracy

PROBS = np.array([[0.7, 0.2, 0.1],   # true 0, predicted 0
                  [0.1, 0.8, 0.1],   # true 1, predicted 1
                  [0.6, 0.3, 0.1],   # true 2, predicted 0
                  [0.0, 0.5, 0.5]],  # true 0, predicted 1 (argmax takes the first of a tie)
                 np.float32)
LABELS = np.array([0, 1, 2, 0], np.int32)


def test_compute_metrics_counts_rows_as_true_classes():
    m = compute_metrics(LABELS, PROBS, ("paper", "rock", "scissors"))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["top1_accuracy"] == 0.5 and m["num_images"] == 4
    assert m["per_class"]["paper"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert m["per_class"]["rock"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert m["per_class"]["scissors"] == {"precision": 0.0, "recall": 0.0, "support": 1}


def test_nll_is_the_mean_negative_log_of_the_true_class():
    scores = nll_and_accuracy(PROBS, LABELS)
    # The last image gives the true class 0: clipped to 1e-7 rather than an infinite loss.
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.1) + math.log(1e-7)) / 4
    assert scores["nll"] == pytest.approx(expected, rel=1e-5)
    assert scores["top1"] == 0.5 and scores["errors"] == 2
