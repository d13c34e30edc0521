"""Matplotlib figures written as PNG into the run folder: training curves, confusion matrices,
misclassified test images, the augmentation preview.

Usage: ``plot_history(run_dir / "history.csv", run_dir / "training_curves.png")``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rps.runs import read_history  # noqa: E402


def plot_history(history_csv: str | Path, out_png: str | Path) -> Path:
    """Training curves: accuracy and loss per epoch, training vs validation."""
    history = read_history(history_csv)
    epochs = np.asarray(history.get("epoch", [])) + 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + metric in history:
                ax.plot(epochs, history[prefix + metric], marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str],
                          out_png, title: str = "Confusion matrix"):
    """Confusion matrix (rows: true class, columns: predicted class) with counts in the cells.

    ``out_png`` is a path, or a binary file object (e.g. ``io.BytesIO``, as the TensorBoard
    image summary uses); the path or file object is returned."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100, format="png")
    plt.close(fig)
    return Path(out_png) if isinstance(out_png, (str, Path)) else out_png


def plot_misclassified(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                       class_names: list[str], out_png: str | Path, title: str = "",
                       max_images: int = 25, columns: int = 5) -> Path:
    """Grid of misclassified images, the most confident mistakes first, each titled with its
    true label, predicted label and confidence (the predicted class's probability).

    Args:
        images: ``uint8 [N, S, S, 3]`` (or float pixels 0-255).
        labels: ``int [N]`` true labels.
        probabilities: ``float [N, C]`` model outputs for the same images.
        class_names: label of each class index.
        out_png: output file.
        title: figure title (e.g. the split and the model).
        max_images: at most this many images are shown.
        columns: images per row.

    Returns:
        ``out_png``. With no mistakes the figure says so instead of showing images.
    """
    predicted, confidence = np.argmax(probabilities, 1), np.max(probabilities, 1)
    wrong = np.flatnonzero(predicted != np.asarray(labels))
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_images]
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8))
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} "
                     f"({confidence[i]:.2f})", fontsize=8)
    if not len(wrong):
        axes[0, 0].text(0, 0.5, "no misclassified images", fontsize=11)
    n = len(np.flatnonzero(predicted != np.asarray(labels)))
    fig.suptitle(f"{title}: {n} of {len(labels)} misclassified"
                 + (f", {len(wrong)} most confident shown" if n > len(wrong) else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_augmentation_preview(images: np.ndarray, augmented: np.ndarray,
                              out_png: str | Path) -> Path:
    """Augmentation preview: one row per image, the original first, then random draws of the
    training augmentation (see ``rps.tensorboard.augment_draws``).

    Args:
        images: ``uint8 [N, S, S, 3]`` originals.
        augmented: ``uint8 [N, D, S, S, 3]``, ``D`` augmented draws of each.
        out_png: output file.

    Returns:
        ``out_png``.
    """
    n, draws = augmented.shape[:2]
    fig, axes = plt.subplots(max(n, 1), draws + 1, figsize=(1.8 * (draws + 1), 1.8 * max(n, 1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        axes[i, 0].imshow(images[i])
        for j in range(draws):
            axes[i, j + 1].imshow(augmented[i, j])
    axes[0, 0].set_title("original", fontsize=9)
    for j in range(draws):
        axes[0, j + 1].set_title(f"augmented {j + 1}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
