"""What ``notebooks/rps_colab.ipynb`` needs beyond the pipeline: Colab detection, the data,
pictures as PNG, and moving files between the notebook and the user.

Usage: ``from rps import notebook as nb; nb.show(nb.class_samples_png("data/rps"))``.

The training, export, evaluation and prediction the notebook shows are ``rps.pipeline.run`` and
``rps.predict.predict_files``; this module only adapts their inputs and outputs to a notebook.
On Colab files come and go through ``google.colab.files``; anywhere else (Jupyter, papermill in
CI) through paths on disk.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from rps.plots import plt  # matplotlib with the file-only Agg backend: pictures become PNG bytes


def in_colab() -> bool:
    """True inside a Google Colab runtime (its ``google.colab`` module is loaded at start-up)."""
    return "google.colab" in sys.modules


def ensure_data(root: str | Path) -> Path:
    """Return ``root`` when it holds ``train/``; otherwise download the official zips into it
    (about 230 MB, SHA-256 checked; ``rps.download.download_official``).

    Raises:
        FileExistsError: ``root`` exists, is not empty and has no ``train/`` folder.
        ConnectionError: the download failed.
    """
    root = Path(root)
    if (root / "train").is_dir():
        return root
    from rps.download import download_official

    return download_official(root)


def example_photos(root: str | Path, split: str = "test") -> list[Path]:
    """The first image (by file name) of each class of ``<root>/<split>``: stand-ins for your
    own photos when the notebook runs off Colab.

    Raises:
        FileNotFoundError, ValueError: as ``rps.data.list_split``.
    """
    from rps.data import list_split

    images = list_split(Path(root) / split, max_per_class=1)
    return [Path(p) for p in images.paths]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def class_samples_png(root: str | Path, per_class: int = 4, split: str = "train",
                      seed: int = 0) -> bytes:
    """A grid of randomly chosen images: one row per class of ``<root>/<split>``, as PNG bytes.

    Raises:
        FileNotFoundError, ValueError: as ``rps.data.list_split`` (no such folder, no classes).
    """
    from PIL import Image

    from rps.data import list_split

    images = list_split(Path(root) / split)
    rng = np.random.default_rng(seed)
    labels = np.asarray(images.labels)
    fig, axes = plt.subplots(len(images.class_names), per_class, squeeze=False,
                             figsize=(2 * per_class, 2.1 * len(images.class_names)))
    for row, name in enumerate(images.class_names):
        indices = np.flatnonzero(labels == row)
        picks = rng.choice(indices, min(per_class, len(indices)), replace=False)
        for ax, i in zip(axes[row], picks):
            with Image.open(images.paths[i]) as image:
                ax.imshow(image.convert("RGB"))
            ax.set_title(f"{name}\n{Path(images.paths[i]).name}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def predictions_png(results: list[dict], columns: int = 4) -> bytes:
    """The images of ``rps.predict.predict_files`` results, each titled with its predicted
    label and probability, as PNG bytes."""
    from PIL import Image

    columns = max(1, min(columns, len(results)))
    rows = max(1, -(-len(results) // columns))
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(2.8 * columns, 3.3 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, result in zip(axes.flat, results):
        with Image.open(result["path"]) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"{result['label']} ({result['probability']:.2f})\n"
                     f"{Path(result['path']).name}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def show(png: bytes | str | Path):
    """Display PNG bytes or a PNG file in the notebook (returns an ``IPython.display.Image``,
    which a cell shows when it is the last expression)."""
    from IPython.display import Image

    return Image(data=png) if isinstance(png, bytes) else Image(filename=str(png))


def download(path: str | Path) -> Path:
    """Hand a file to the user: a browser download on Colab, the printed path elsewhere.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nothing to download: {path} does not exist.")
    if in_colab():
        from google.colab import files  # only importable on Colab

        files.download(str(path))
    else:
        print(f"not on Colab: the file is {path.resolve()} ({path.stat().st_size:,} bytes)")
    return path


def photos_to_classify(default: list[str | Path], upload_dir: str | Path = "uploads") -> list[Path]:
    """On Colab, ask the user to upload photos (saved into ``upload_dir``) and return their
    paths; elsewhere return ``default`` (files or folders, as ``rps predict`` takes them).

    Raises:
        FileNotFoundError: a default path does not exist, or nothing was uploaded.
    """
    if not in_colab():
        missing = [str(p) for p in default if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"photo(s) to classify not found: {missing}; set "
                                    f"`photos` in the parameters cell to your image files.")
        return [Path(p) for p in default]
    from google.colab import files

    upload_dir = Path(upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, data in files.upload().items():
        target = upload_dir / Path(name).name
        target.write_bytes(data)
        saved.append(target)
    if not saved:
        raise FileNotFoundError("no photo was uploaded; run the cell again and pick a file.")
    return saved
