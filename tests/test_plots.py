"""Plots: misclassified grid and augmentation preview (PNG files), and the confusion matrix
written to a file object (as the TensorBoard image summary uses)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rps.plots import plot_augmentation_preview, plot_confusion_matrix, plot_misclassified

CLASSES = ["paper", "rock", "scissors"]


def test_misclassified_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[[0, 2, 2, 1, 1, 0]] * 0.7 + 0.1  # three mistakes
    out = plot_misclassified(images, labels, probabilities, CLASSES, tmp_path / "m.png", "test")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 200


def test_misclassified_grid_without_mistakes(tmp_path):
    images = np.zeros((2, 16, 16, 3), np.uint8)
    out = plot_misclassified(images, np.array([0, 1]), np.eye(3)[[0, 1]], CLASSES,
                             tmp_path / "none.png")
    assert out.stat().st_size > 0


def test_augmentation_preview(tmp_path):
    images = np.zeros((3, 16, 16, 3), np.uint8)
    augmented = np.full((3, 4, 16, 16, 3), 128, np.uint8)
    out = plot_augmentation_preview(images, augmented, tmp_path / "aug.png")
    with Image.open(out) as img:
        assert img.size[0] > img.size[1]  # 5 columns, 3 rows


def test_confusion_matrix_to_a_file_object():
    buffer = io.BytesIO()
    assert plot_confusion_matrix([[2, 1, 0], [0, 3, 0], [1, 0, 2]], CLASSES, buffer) is buffer
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
