"""Matplotlib figures written as PNG into the run folder.

Usage: ``plot_history(run_dir / "history.csv", run_dir / "training_curves.png")``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_history(history_csv: str | Path) -> dict[str, list[float]]:
    """Read Keras ``CSVLogger`` output into ``{column: values}``. A resumed run appends to the
    same file; a repeated epoch keeps its last row."""
    rows: dict[int, dict[str, str]] = {}
    with open(history_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch", "epoch") != "epoch":  # a header repeated by an append
                rows[int(row["epoch"])] = row
    columns = list(next(iter(rows.values())).keys()) if rows else []
    return {c: [float(rows[e][c]) for e in sorted(rows)] for c in columns}


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
                          out_png: str | Path, title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows: true class, columns: predicted class) with counts in the cells."""
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
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
