"""Input pipeline: list and check image files, split them, and build ``tf.data`` datasets.

Usage: ``splits = load_splits(cfg.data, seed=cfg.seed)``; then
``make_train_dataset(splits.train, cfg)`` and ``make_eval_dataset(splits.val, cfg.data)``.

Folder layout: ``<root>/<split>/<label>/<image>``, as read by
``keras.utils.image_dataset_from_directory`` and ``tfds.folder_dataset.ImageFolder``. Labels
are the sorted folder names of ``train/`` (paper=0, rock=1, scissors=2 for this data set).
Splits: ``train`` and ``val`` are carved from ``train/`` (stratified, seeded; ``val`` is empty
with ``data.validation_fraction: 0``, and ``train`` is then all of ``train/``); ``test`` is
``test/`` (held out: final evaluation only); ``validation_folder`` is the small ``validation/``
folder of the course notebooks, a second held-out check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from rps.config import Config, DataConfig
from rps.imagecheck import display_path, inspect_files, is_utf8
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

    @property
    def agreement_split(self) -> ImageSplit:
        """Images to check exports on (their probabilities against Keras's; labels unused): the
        validation split, or ``train`` when there is none (``data.validation_fraction: 0``)."""
        return self.val or self.train

    @property
    def report_split(self) -> ImageSplit:
        """The split example plots and TFLite variant tables score: ``test`` if present, else
        the validation split, else ``validation_folder``, else ``train``."""
        return next(s for s in (self.test, self.val, self.validation_folder, self.train) if s)


def _iterdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise ValueError(f"cannot list folder {display_path(folder)}: {err.strerror or err}. "
                         f"Check that it exists and is readable.") from err


def list_split(split_dir: str | Path, class_names: tuple[str, ...] | None = None,
               max_per_class: int = 0) -> ImageSplit:
    """List the image files of ``<split_dir>/<label>/*``.

    Hidden files (``.DS_Store``) are ignored; other files without an image extension
    (sub-folders included: the listing is one level deep, so symlinked folder loops are never
    followed) are skipped with a warning that lists them. Entries with an image extension that
    are not regular files (broken or looping symlinks) are kept, so that ``check_split``
    reports them by name.

    Args:
        split_dir: folder holding one sub-folder per class.
        class_names: expected classes (those of ``train/``); ``None`` takes the sorted sub-folder
            names.
        max_per_class: keep the first N files (sorted by name) per class; ``0`` keeps all.

    Returns:
        An ``ImageSplit`` with paths sorted by class, then file name.

    Raises:
        FileNotFoundError: ``split_dir`` does not exist or is not a folder.
        ValueError: no class folders, an empty class folder, a class folder name that is not
            valid UTF-8, an unreadable folder, or a class that ``train/`` lacks.
    """
    split, skipped = _list_split(split_dir, class_names, max_per_class)
    if skipped:
        log.warning("skipped %d non-image file(s) in %s: %s", len(skipped),
                    display_path(split_dir), ", ".join(skipped[:20]))
    return split


def _list_split(split_dir: str | Path, class_names: tuple[str, ...] | None,
                max_per_class: int) -> tuple[ImageSplit, list[str]]:
    """``list_split`` without the warning: returns the split and the skipped non-image paths."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"data folder not found: {split_dir}. Expected <root>/<split>/<label>/<image> "
            f"(run `make data`, or set data.root to your image folder)."
        )
    found = sorted(p.name for p in _iterdir(split_dir) if p.is_dir() and not p.name.startswith("."))
    bad_names = [display_path(name) for name in found if not is_utf8(name)]
    if bad_names:
        raise ValueError(f"{display_path(split_dir)} has class folder name(s) that are not valid "
                         f"UTF-8: {bad_names}. Rename them (labels must be text).")
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
        files = _iterdir(class_dir) if class_dir.is_dir() else []
        images = []
        for f in files:
            if f.name.startswith("."):
                continue
            # is_dir() is False for a broken or looping symlink: it stays, and fails its check.
            (images if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir() else skipped).append(f)
        if not images:
            raise ValueError(
                f"class folder {class_dir} is empty or missing: every class needs at least one "
                f"image ({', '.join(IMAGE_EXTENSIONS)})."
            )
        if max_per_class:
            images = images[:max_per_class]
        paths += [str(f) for f in images]
        labels += [label] * len(images)
    return (ImageSplit(split_dir.name, tuple(paths), tuple(labels), tuple(class_names)),
            [display_path(f) for f in skipped])


def check_split(split: ImageSplit, data_cfg: DataConfig) -> ImageSplit:
    """Check every file of ``split`` (in parallel threads) and attach content digests.

    Returns:
        The split with ``digests`` filled in; bad files removed when ``data_cfg.skip_bad_images``.
        Files accepted with a caveat (animated GIFs) are listed in one warning.

    Raises:
        ValueError: some files are unreadable and ``skip_bad_images`` is false; the message lists
            each bad file with its reason.
    """
    digests, bad, notes = inspect_files(split.paths, data_cfg.max_image_pixels)
    if bad and not data_cfg.skip_bad_images:
        raise ValueError(
            f"{len(bad)} unreadable image(s) in split '{split.name}':\n  " + "\n  ".join(bad)
            + "\nFix or remove them, or set data.skip_bad_images=true to skip them."
        )
    if bad:
        log.warning("skipping %d unreadable image(s) in '%s':\n  %s", len(bad), split.name,
                    "\n  ".join(bad))
    if notes:
        log.warning("%d image(s) in '%s' used with a caveat:\n  %s", len(notes), split.name,
                    "\n  ".join(notes))
    keep = np.array([i for i, d in enumerate(digests) if d is not None], dtype=np.int64)
    kept = split.subset(split.name, keep)
    return dataclasses.replace(kept, digests=tuple(digests[i] for i in keep))


def find_duplicates(first: ImageSplit, second: ImageSplit | None = None) -> list[tuple[str, str]]:
    """Files with identical content (same SHA-256 digest, so both splits must have been through
    ``check_split``).

    Args:
        first: a checked split.
        second: another checked split; ``None`` looks for duplicates inside ``first``.

    Returns:
        ``(path_in_first, path_in_other)`` pairs, sorted; empty when there are none.
    """
    seen: dict[str, str] = {}
    pairs = []
    for path, digest in zip(first.paths, first.digests):
        if second is None and digest in seen:
            pairs.append((seen[digest], path))
        seen.setdefault(digest, path)
    for path, digest in zip(second.paths if second else (), second.digests if second else ()):
        if digest in seen:
            pairs.append((seen[digest], path))
    return sorted(pairs)


def leak_message(train: ImageSplit, held_out: ImageSplit, pairs: list[tuple[str, str]]) -> str:
    """The text that reports train/held-out duplicates (at most 20 pairs listed)."""
    shown = "\n  ".join(f"{display_path(a)} == {display_path(b)}" for a, b in pairs[:20])
    more = f"\n  ... and {len(pairs) - 20} more" if len(pairs) > 20 else ""
    return (f"{len(pairs)} image(s) in '{held_out.name}' are byte-identical to '{train.name}' "
            f"images (the held-out accuracy would be optimistic):\n  {shown}{more}\n"
            f"Remove one file of each pair, or set data.allow_duplicates=true to only warn.")


def check_leaks(train: ImageSplit, held_out: list[ImageSplit | None], data_cfg: DataConfig) -> None:
    """Stop (or warn, with ``data.allow_duplicates``) when a held-out image is a copy of a
    training image, compared by content hash.

    Raises:
        ValueError: duplicates found and ``data_cfg.allow_duplicates`` is false; the message
            lists the pairs and how to fix them.
    """
    for split in held_out:
        pairs = find_duplicates(train, split) if split is not None else []
        if pairs and not data_cfg.allow_duplicates:
            raise ValueError(leak_message(train, split, pairs))
        if pairs:
            log.warning("%s", leak_message(train, split, pairs))


def _members_per_class(labels: tuple[int, ...], groups: tuple[str, ...] | None, at_least: int,
                       why: str) -> list[list[np.ndarray]]:
    """Per class (ascending label), the index arrays of its groups sorted by group key (single
    items when ``groups`` is None); the shared start of ``stratified_split`` and ``kfold_split``.

    Raises:
        ValueError: a class has fewer than ``at_least`` groups (or items); ``why`` ends the message.
    """
    labels_arr = np.asarray(labels)
    keys = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))])
    per_class = []
    for label in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == label)
        members = [idx[keys[idx] == k] for k in sorted(set(keys[idx]))]
        if len(members) < at_least:
            kind = "image" if groups is None else "group"
            raise ValueError(f"class {label} has {len(members)} {kind}(s); {why}.")
        per_class.append(members)
    return per_class


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
    train_idx, val_idx = [], [np.zeros(0, np.int64)]
    for members in _members_per_class(
            labels, groups, 2, "a train/val split needs >= 2 (lower data.validation_fraction "
                               "or use split_by=file)"):
        order = rng.permutation(len(members))
        target, taken = fraction * sum(len(m) for m in members), 0
        for n_groups, g in enumerate(order):
            size = len(members[g])
            if n_groups and (n_groups == len(members) - 1 or abs(taken + size - target) >= abs(taken - target)):
                train_idx += [members[h] for h in order[n_groups:]]
                break
            val_idx.append(members[g])
            taken += size
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def kfold_split(labels: tuple[int, ...], folds: int, fold: int, seed: int,
                groups: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (group) k-fold split: per class, the groups (or single items) in an order
    drawn from ``seed`` are dealt round-robin into ``folds`` folds; fold ``fold`` is the second
    part. Over ``fold = 0 .. folds - 1`` every item is in the second part exactly once (scikit-
    learn's ``StratifiedGroupKFold`` idea, https://scikit-learn.org/stable/modules/cross_validation.html).

    Args:
        labels: class index of each item.
        folds: number of folds, ``>= 2``.
        fold: the held-out fold, ``0 <= fold < folds``.
        seed: seeds the order of the groups (``numpy.random.default_rng``).
        groups: optional group key of each item; groups are never split.

    Returns:
        ``(train_indices, val_indices)``, each sorted, as ``int64`` arrays.

    Raises:
        ValueError: ``fold`` is out of range, or a class has fewer groups (or images) than
            ``folds``, so some fold would hold none of it.
    """
    if not 0 <= fold < folds:
        raise ValueError(f"data.fold={fold} is outside 0..{folds - 1} (data.folds={folds}).")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for members in _members_per_class(labels, groups, folds,
                                      f"fewer than data.folds={folds}: lower data.folds"):
        for position, g in enumerate(rng.permutation(len(members))):
            (val_idx if position % folds == fold else train_idx).append(members[g])
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

    Args:
        data_cfg: the ``data`` section of the config.
        seed: the root seed; it draws the validation split or the folds unless
            ``data_cfg.split_seed`` is set, which then draws them instead.

    Raises:
        FileNotFoundError, ValueError: see ``list_split``, ``check_split``, ``stratified_split``
            and ``kfold_split``.
    """
    seed = seed if data_cfg.split_seed is None else data_cfg.split_seed
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
    if data_cfg.folds:
        train_idx, val_idx = kfold_split(full_train.labels, data_cfg.folds, data_cfg.fold, seed,
                                         groups)
    elif data_cfg.validation_fraction:
        train_idx, val_idx = stratified_split(full_train.labels, data_cfg.validation_fraction,
                                              seed, groups)
    else:  # no validation split: train on all of train/
        train_idx, val_idx = np.arange(len(full_train)), np.zeros(0, np.int64)
    optional = {}
    for name, folder in (("test", "test"), ("validation_folder", "validation")):
        optional[name] = None
        if (root / folder).is_dir():
            split = list_split(root / folder, class_names, data_cfg.max_images_per_class)
            optional[name] = dataclasses.replace(check_split(split, data_cfg), name=name)
    check_leaks(full_train, list(optional.values()), data_cfg)
    used = [full_train] + [s for s in optional.values() if s is not None]
    return Splits(
        train=full_train.subset("train", train_idx),
        val=full_train.subset("val", val_idx),
        test=optional["test"],
        validation_folder=optional["validation_folder"],
        class_names=class_names,
        fingerprint=fingerprint(root, used),
    )


def check_folder(root: str | Path, data_cfg: DataConfig) -> dict:
    """Run every data check on an image folder and collect the findings instead of stopping at
    the first one (what ``rps check-data`` prints).

    Checks: the layout (``train/`` required; ``test/`` and ``validation/`` optional; class
    folders, empty or extra classes), every file (``inspect_image``: empty, truncated, not an
    image, unsupported format, CMYK, pixel limit, unreadable or non-UTF-8 name, symlink loops;
    animated GIFs are noted), stray non-image files, and duplicates by content hash: a held-out
    image equal to a training image is an error unless ``data.allow_duplicates``; duplicates
    inside one split are warnings.

    Args:
        root: the data root, ``<root>/<split>/<label>/<image>``.
        data_cfg: the data settings; ``max_image_pixels``, ``skip_bad_images`` (bad files are
            then warnings, not errors), ``allow_duplicates`` and ``max_images_per_class`` apply.

    Returns:
        ``{"root": str, "usable": bool, "class_names": [str], "splits": {split: {"images": int,
        "per_class": {label: int}, "bad": int}}, "warnings": [str], "errors": [str]}``;
        ``usable`` is true when ``errors`` is empty, i.e. ``rps train`` would accept the folder.
    """
    root = Path(root)
    report: dict = {"root": display_path(root), "usable": False, "class_names": [],
                    "splits": {}, "warnings": [], "errors": []}
    if not (root / "train").is_dir():
        report["errors"].append(f"{display_path(root / 'train')}: folder not found; expected "
                                f"<root>/train/<label>/<image>")
        return report
    checked: dict[str, ImageSplit] = {}
    class_names = None
    for folder in ("train", "test", "validation"):
        if folder != "train" and not (root / folder).is_dir():
            continue
        try:
            split, skipped = _list_split(root / folder, class_names, data_cfg.max_images_per_class)
        except (ValueError, FileNotFoundError) as err:
            report["errors"].append(str(err))
            continue
        class_names = class_names or split.class_names
        if skipped:
            report["warnings"].append(f"{folder}: {len(skipped)} non-image file(s) skipped: "
                                      + ", ".join(skipped))
        digests, bad, notes = inspect_files(split.paths, data_cfg.max_image_pixels)
        (report["warnings"] if data_cfg.skip_bad_images else report["errors"]).extend(bad)
        report["warnings"].extend(notes)
        keep = np.array([i for i, d in enumerate(digests) if d is not None], dtype=np.int64)
        split = dataclasses.replace(split.subset(folder, keep),
                                    digests=tuple(digests[i] for i in keep))
        checked[folder] = split
        counts = np.bincount(np.asarray(split.labels, np.int64), minlength=len(split.class_names))
        report["splits"][folder] = {"images": len(split), "bad": len(bad), "per_class": {
            name: int(n) for name, n in zip(split.class_names, counts)}}
        pairs = find_duplicates(split)
        if pairs:
            report["warnings"].append(f"{folder}: {len(pairs)} duplicate image(s) inside the "
                                      f"split: " + ", ".join(f"{display_path(a)} == "
                                                             f"{display_path(b)}" for a, b in pairs[:20]))
    for folder in ("test", "validation"):
        if "train" in checked and folder in checked:
            pairs = find_duplicates(checked["train"], checked[folder])
            if pairs:
                target = report["warnings"] if data_cfg.allow_duplicates else report["errors"]
                target.append(leak_message(checked["train"], checked[folder], pairs))
    report["class_names"] = list(class_names or ())
    report["usable"] = not report["errors"]
    return report


def make_image_dataset(split: ImageSplit, image_size: int) -> tf.data.Dataset:
    """Unbatched, ordered dataset of ``(image uint8 [S, S, 3], label int32 [])`` from files."""
    ds = tf.data.Dataset.from_tensor_slices((list(split.paths), np.asarray(split.labels, np.int32)))
    # Decoding runs in parallel; deterministic order keeps evaluation reproducible.
    return ds.map(lambda p, y: (decode_and_resize(tf.io.read_file(p), image_size), y),
                  num_parallel_calls=AUTOTUNE, deterministic=True)


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """The shuffle seed and the augmentation-key seed of one training epoch: two ``uint32``
    drawn from ``numpy.random.SeedSequence([seed, epoch])``, a function of the run's seed and
    the epoch number only."""
    shuffle_seed, key_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    return int(shuffle_seed), int(key_seed)


def make_train_dataset(split: ImageSplit, cfg: Config, augment_fn=None, start_epoch: int = 0,
                       end_epoch: int | None = None) -> tf.data.Dataset:
    """Training pipeline: decode once, cache, shuffle, batch, augment, prefetch, for the epochs
    ``start_epoch`` to ``end_epoch - 1`` back to back.

    Each epoch is shuffled, and its batches' augmentation keys drawn, from seeds that depend on
    the config's seed and the epoch number only (``epoch_seeds``), not on how many iterators
    came before. So the dataset gives the same batches every time it is iterated (Keras's
    ``fit`` under a distribution strategy opens a throwaway iterator to build the model first),
    and a run resumed at epoch ``k`` reads, with ``start_epoch=k``, what an uninterrupted run
    reads from epoch ``k`` on.

    Args:
        split: training files.
        cfg: run config (``data.image_size``, ``data.global_batch_size``, ``data.cache``, ``seed``).
        augment_fn: ``augment_fn(images, key)`` on a batch, ``uint8 [B, S, S, 3] -> float32
            [B, S, S, 3]`` in 0-255, with ``key`` the batch's random key (``int64 [2]``)
            (``rps.augment.make_augmenter``), or ``None``.
        start_epoch: the first epoch (0-based).
        end_epoch: one past the last epoch (default ``start_epoch + 1``: one epoch).

    Returns:
        Dataset of ``(float32 [B, S, S, 3] pixels 0-255, int32 [B] labels)`` with
        ``B = data.global_batch_size`` (the remainder batch is dropped so that every step splits
        evenly across replicas): ``len(split) // B`` batches per epoch.

    Raises:
        ValueError: ``start_epoch`` is negative or ``end_epoch`` is not after it.
    """
    end_epoch = start_epoch + 1 if end_epoch is None else end_epoch
    if start_epoch < 0 or end_epoch <= start_epoch:
        raise ValueError(f"need 0 <= start_epoch < end_epoch, got start_epoch={start_epoch}, "
                         f"end_epoch={end_epoch}")
    images = make_image_dataset(split, cfg.data.image_size)
    if cfg.data.cache:
        # Decode + resize happen once: every epoch below reads this same dataset object, whose
        # in-memory cache the first epoch fills (checked: one decode per image over 4 epochs).
        images = images.cache()

    def one_epoch(seeds: tf.Tensor) -> tf.data.Dataset:
        batches = (images.shuffle(len(split), seed=seeds[0], reshuffle_each_iteration=False)
                   .batch(cfg.data.global_batch_size, drop_remainder=True))
        # Each batch comes with its own random key: the augmentation's draws are a function
        # of the key, so the parallel map gives the same batches whichever thread augments
        # which batch.
        keys = tf.data.Dataset.random(seed=seeds[1]).batch(2)
        return tf.data.Dataset.zip(batches, keys)

    # One row of seeds per epoch, flat_map'ed: flat in the number of epochs (a chain of
    # concatenated epochs took 214 s to iterate 2,000 tiny epochs, this 5 s).
    seeds = np.array([epoch_seeds(cfg.seed, e) for e in range(start_epoch, end_epoch)], np.int64)
    ds = tf.data.Dataset.from_tensor_slices(seeds).flat_map(one_epoch)
    if augment_fn is None:
        ds = ds.map(lambda batch, key: (tf.cast(batch[0], tf.float32), batch[1]),
                    num_parallel_calls=AUTOTUNE)
    else:
        # Augmenting whole batches is far cheaper than per image (one op launch per batch); the
        # augmenter takes the uint8 pixels and returns float32.
        ds = ds.map(lambda batch, key: (augment_fn(batch[0], key), batch[1]),
                    num_parallel_calls=AUTOTUNE)
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
