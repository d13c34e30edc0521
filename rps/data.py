"""Input pipeline: list and check image files, split them, and build ``tf.data`` datasets.

Usage: ``splits = load_splits(cfg.data, seed=cfg.seed)``; then
``make_train_dataset(splits.train, cfg)`` and ``make_eval_dataset(splits.val, cfg.data)``.

Folder layout: ``<root>/<split>/<label>/<image>``, as read by
``keras.utils.image_dataset_from_directory`` and ``tfds.folder_dataset.ImageFolder``. Labels
are the sorted folder names of ``train/`` (paper=0, rock=1, scissors=2 for this data set).
Splits: ``train`` and ``val`` are carved from ``train/`` (stratified, seeded); ``test`` is
``test/`` (held out: final evaluation only); ``validation_folder`` is the small ``validation/``
folder of the course notebooks, a second held-out check.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from rps.config import Config, DataConfig
from rps.preprocess import decode_and_resize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split's files. ``paths[i]`` has integer label ``labels[i]`` (index into
    ``class_names``); ``digests[i]`` is the SHA-256 of the file's bytes."""

    name: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    digests: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, name: str, indices: np.ndarray) -> "ImageSplit":
        """A new split holding the files at ``indices`` (in that order)."""
        pick = lambda seq: tuple(seq[i] for i in indices) if seq else ()  # noqa: E731
        return ImageSplit(name, pick(self.paths), pick(self.labels), self.class_names,
                          pick(self.digests))


@dataclasses.dataclass(frozen=True)
class Splits:
    """All splits of a data set, plus its fingerprint (SHA-256 over every file's relative path
    and content hash)."""

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit | None
    validation_folder: ImageSplit | None
    class_names: tuple[str, ...]
    fingerprint: str


def list_split(split_dir: str | Path, class_names: tuple[str, ...] | None = None,
               max_per_class: int = 0) -> ImageSplit:
    """List the image files of ``<split_dir>/<label>/*``.

    Hidden files (``.DS_Store``) are ignored; other files without an image extension are
    skipped with a warning that lists them.

    Args:
        split_dir: folder holding one sub-folder per class.
        class_names: expected classes (those of ``train/``); ``None`` takes the sorted sub-folder
            names.
        max_per_class: keep the first N files (sorted by name) per class; ``0`` keeps all.

    Returns:
        An ``ImageSplit`` with paths sorted by class, then file name.

    Raises:
        FileNotFoundError: ``split_dir`` does not exist or is not a folder.
        ValueError: no class folders, an empty class folder, or a class that ``train/`` lacks.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"data folder not found: {split_dir}. Expected <root>/<split>/<label>/<image> "
            f"(run `make data`, or set data.root to your image folder)."
        )
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ValueError(f"{split_dir} has no class sub-folders; expected {split_dir}/<label>/<image>.")
    if class_names is None:
        class_names = tuple(found)
    extra = sorted(set(found) - set(class_names))
    if extra:
        raise ValueError(
            f"{split_dir} has class folder(s) {extra} that train/ lacks (train/ has "
            f"{list(class_names)}). Remove them or add training images for them."
        )
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        files = sorted(class_dir.iterdir()) if class_dir.is_dir() else []
        images = []
        for f in files:
            if f.name.startswith("."):
                continue
            (images if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() else skipped).append(f)
        if not images:
            raise ValueError(
                f"class folder {class_dir} is empty or missing: every class needs at least one "
                f"image ({', '.join(IMAGE_EXTENSIONS)})."
            )
        if max_per_class:
            images = images[:max_per_class]
        paths += [str(f) for f in images]
        labels += [label] * len(images)
    if skipped:
        log.warning("skipped %d non-image file(s) in %s: %s", len(skipped), split_dir,
                    ", ".join(str(s) for s in skipped[:20]))
    return ImageSplit(split_dir.name, tuple(paths), tuple(labels), tuple(class_names))


def check_image_file(path: str, max_pixels: int) -> str:
    """Read one image file fully and check it decodes; return the SHA-256 of its bytes.

    Raises:
        ValueError: the file is empty, not an image, truncated, or larger than ``max_pixels``;
            the message names the file and the reason.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not data:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"{path}: {width}x{height} pixels exceeds data.max_image_pixels="
                                 f"{max_pixels} (decompression-bomb guard)")
            if img.mode == "CMYK":
                raise ValueError(f"{path}: CMYK JPEG; convert it to RGB")
            img.load()  # full decode: catches truncated files that a header check would miss
    except ValueError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ...) for bad files.
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    return hashlib.sha256(data).hexdigest()


def check_split(split: ImageSplit, data_cfg: DataConfig) -> ImageSplit:
    """Check every file of ``split`` (in parallel threads) and attach content digests.

    Returns:
        The split with ``digests`` filled in; bad files removed when ``data_cfg.skip_bad_images``.

    Raises:
        ValueError: some files are unreadable and ``skip_bad_images`` is false; the message lists
            each bad file with its reason.
    """
    check = lambda p: check_image_file(p, data_cfg.max_image_pixels)  # noqa: E731
    digests, bad = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(check, p) for p in split.paths]
        for future in futures:
            try:
                digests.append(future.result())
            except ValueError as err:
                digests.append(None)
                bad.append(str(err))
    if bad and not data_cfg.skip_bad_images:
        raise ValueError(
            f"{len(bad)} unreadable image(s) in split '{split.name}':\n  " + "\n  ".join(bad)
            + "\nFix or remove them, or set data.skip_bad_images=true to skip them."
        )
    if bad:
        log.warning("skipping %d unreadable image(s) in '%s':\n  %s", len(bad), split.name,
                    "\n  ".join(bad))
    keep = np.array([i for i, d in enumerate(digests) if d is not None], dtype=np.int64)
    kept = split.subset(split.name, keep)
    return dataclasses.replace(kept, digests=tuple(digests[i] for i in keep))


def stratified_split(labels: tuple[int, ...], fraction: float, seed: int,
                     groups: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class so that each class sends about ``fraction`` of its images to the
    second part (at least one image or group, and never all of them).

    Args:
        labels: class index of each item.
        fraction: target share of each class in the second part.
        seed: seeds the shuffle (``numpy.random.default_rng``).
        groups: optional group key of each item; groups are never split, and whole groups are
            added to the second part while that brings its size closer to the target.

    Returns:
        ``(train_indices, val_indices)``, each sorted, as ``int64`` arrays.

    Raises:
        ValueError: a class has fewer than 2 images (or groups), so it cannot be in both parts.
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    keys = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))])
    train_idx, val_idx = [], [np.zeros(0, np.int64)]
    for label in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == label)
        members = [idx[keys[idx] == k] for k in sorted(set(keys[idx]))]
        if len(members) < 2:
            kind = "image" if groups is None else "group"
            raise ValueError(f"class {label} has {len(members)} {kind}(s); a train/val split "
                             f"needs >= 2 (lower data.validation_fraction or use split_by=file).")
        order = rng.permutation(len(members))
        target, taken = fraction * len(idx), 0
        for n_groups, g in enumerate(order):
            size = len(members[g])
            if n_groups and (n_groups == len(members) - 1 or abs(taken + size - target) >= abs(taken - target)):
                train_idx += [members[h] for h in order[n_groups:]]
                break
            val_idx.append(members[g])
            taken += size
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def group_keys(paths: tuple[str, ...], pattern: str) -> tuple[str, ...]:
    """The group key of each file: ``pattern``'s first group on the file name without suffix,
    or the whole name when it does not match."""
    regex = re.compile(pattern)
    keys = []
    for p in paths:
        stem = Path(p).stem
        match = regex.match(stem)
        keys.append(match.group(1) if match and match.groups() else stem)
    return tuple(keys)


def fingerprint(root: Path, splits: list[ImageSplit]) -> str:
    """SHA-256 over ``relative_path:content_sha256`` lines of every file, sorted."""
    lines = sorted(f"{os.path.relpath(p, root)}:{d}" for s in splits for p, d in zip(s.paths, s.digests))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_splits(data_cfg: DataConfig, seed: int) -> Splits:
    """List, check and split the data set named by ``data_cfg``.

    For ``source: folder``: ``train/`` is required, ``test/`` and ``validation/`` are optional.
    For ``source: tfds``: the TFDS ``rock_paper_scissors`` data set is read with ``tfds.load``
    (from ``data.tfds_data_dir``, downloading if needed) and written once as an image folder at
    ``data.root`` (see ``rps.download.download_tfds``), then read like any folder, with the same
    checks.

    Raises:
        FileNotFoundError, ValueError: see ``list_split`` and ``check_split``.
    """
    root = Path(data_cfg.root)
    if data_cfg.source == "tfds" and not root.exists():
        from rps.download import download_tfds  # lazy: imports tensorflow_datasets

        download_tfds(root, data_dir=data_cfg.tfds_data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root not found: {root}. Run `make data` (links ../shared/data/rps or downloads "
            f"the official data), or set data.root=<your folder with train/<label>/ images>."
        )
    full_train = check_split(list_split(root / "train", None, data_cfg.max_images_per_class), data_cfg)
    class_names = full_train.class_names
    groups = (group_keys(full_train.paths, data_cfg.group_pattern)
              if data_cfg.split_by == "group" else None)
    train_idx, val_idx = stratified_split(full_train.labels, data_cfg.validation_fraction, seed,
                                          groups)
    optional = {}
    for name, folder in (("test", "test"), ("validation_folder", "validation")):
        optional[name] = None
        if (root / folder).is_dir():
            split = list_split(root / folder, class_names, data_cfg.max_images_per_class)
            optional[name] = dataclasses.replace(check_split(split, data_cfg), name=name)
    used = [full_train] + [s for s in optional.values() if s is not None]
    return Splits(
        train=full_train.subset("train", train_idx),
        val=full_train.subset("val", val_idx),
        test=optional["test"],
        validation_folder=optional["validation_folder"],
        class_names=class_names,
        fingerprint=fingerprint(root, used),
    )


def make_image_dataset(split: ImageSplit, image_size: int) -> tf.data.Dataset:
    """Unbatched, ordered dataset of ``(image uint8 [S, S, 3], label int32 [])`` from files."""
    ds = tf.data.Dataset.from_tensor_slices((list(split.paths), np.asarray(split.labels, np.int32)))
    # Decoding runs in parallel; deterministic order keeps evaluation reproducible.
    return ds.map(lambda p, y: (decode_and_resize(tf.io.read_file(p), image_size), y),
                  num_parallel_calls=AUTOTUNE, deterministic=True)


def make_train_dataset(split: ImageSplit, cfg: Config, augment_fn=None) -> tf.data.Dataset:
    """Training pipeline: decode once, cache, shuffle, batch, augment, prefetch.

    Args:
        split: training files.
        cfg: run config (``data.image_size``, ``data.global_batch_size``, ``data.cache``, ``seed``).
        augment_fn: function on a batch ``(float32 [B, S, S, 3] in 0-255) -> same``, or ``None``.

    Returns:
        Dataset of ``(float32 [B, S, S, 3] pixels 0-255, int32 [B] labels)`` with
        ``B = data.global_batch_size`` (the remainder batch is dropped so that every step splits
        evenly across replicas).
    """
    ds = make_image_dataset(split, cfg.data.image_size)
    if cfg.data.cache:
        ds = ds.cache()  # decode + resize happen once; later epochs read from memory
    # Shuffle the whole split with the config's seed, reshuffled every epoch.
    ds = ds.shuffle(len(split), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.data.global_batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if augment_fn is not None:
        # Augmenting whole batches is far cheaper than per image (one op launch per batch).
        ds = ds.map(lambda x, y: (augment_fn(x), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)  # overlap input work with the train step


def make_eval_dataset(split: ImageSplit, data_cfg: DataConfig, cache: bool | None = None) -> tf.data.Dataset:
    """Evaluation pipeline: ordered, deterministic, no augmentation, last partial batch kept.

    Returns:
        Dataset of ``(float32 [B, S, S, 3] pixels 0-255, int32 [B] labels)``, ``B <= global_batch_size``.
    """
    ds = make_image_dataset(split, data_cfg.image_size)
    if data_cfg.cache if cache is None else cache:
        ds = ds.cache()
    ds = ds.batch(data_cfg.global_batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(AUTOTUNE)
