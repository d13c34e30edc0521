"""Data: listing, checks with clear errors, the stratified split, the tf.data pipelines."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rps.config import build_config
from rps.data import (check_split, fingerprint, list_split, load_splits, make_eval_dataset,
                      kfold_split, make_train_dataset, stratified_split)

from conftest import CLASSES, make_image


def _cfg(root, *overrides):
    return build_config(overrides=[f"data.root={root}", "data.image_size=32",
                                   "data.global_batch_size=4", *overrides])


def test_list_split_sorted_labels(tiny_root):
    split = list_split(tiny_root / "train")
    assert split.class_names == CLASSES
    assert len(split) == 24 and split.labels == tuple(sorted(split.labels))
    assert all(p.endswith(".png") for p in split.paths)


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data folder not found: {tmp_path / 'nope'}"):
        list_split(tmp_path / "nope")


def test_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data root not found: {tmp_path / 'nope'}"):
        load_splits(_cfg(tmp_path / "nope").data, seed=0)


def test_empty_class_folder(tiny_root):
    shutil.rmtree(tiny_root / "train" / "rock")
    (tiny_root / "train" / "rock").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/rock is empty"):
        list_split(tiny_root / "train")


def test_class_missing_from_train(tiny_root):
    make_image(tiny_root / "test" / "lizard" / "a.png", 0, 0)
    with pytest.raises(ValueError, match=r"class folder\(s\) \['lizard'\] that train/ lacks"):
        load_splits(_cfg(tiny_root).data, seed=0)


def test_stray_files_are_ignored(tiny_root, caplog):
    (tiny_root / "train" / "rock" / ".DS_Store").write_bytes(b"\0\1")
    (tiny_root / "train" / "rock" / "notes.txt").write_text("hello")
    split = list_split(tiny_root / "train")
    assert len(split) == 24
    assert "notes.txt" in caplog.text and ".DS_Store" not in caplog.text


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is not an image", "not a readable image"),
])
def test_bad_image_error_names_file(tiny_root, content, reason):
    bad = tiny_root / "train" / "paper" / "bad.jpg"
    bad.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_splits(_cfg(tiny_root).data, seed=0)
    assert f"{bad}: {reason}" in str(err.value)
    assert "data.skip_bad_images=true" in str(err.value)


def test_truncated_png_is_caught(tiny_root):
    good = tiny_root / "train" / "rock" / "rock00.png"
    good.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"{good}: not a readable image"):
        load_splits(_cfg(tiny_root).data, seed=0)


def test_skip_bad_images_drops_and_warns(tiny_root, caplog):
    bad = tiny_root / "train" / "paper" / "zz.png"
    bad.write_bytes(b"garbage")
    splits = load_splits(_cfg(tiny_root, "data.skip_bad_images=true").data, seed=0)
    assert len(splits.train) + len(splits.val) == 24
    assert str(bad) in caplog.text


def test_pixel_limit(tiny_root):
    with pytest.raises(ValueError, match="exceeds data.max_image_pixels=100"):
        load_splits(_cfg(tiny_root, "data.max_image_pixels=100").data, seed=0)


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = tuple([0] * 40 + [1] * 40 + [2] * 40)
    train, val = stratified_split(labels, 0.25, seed=1)
    again_train, again_val = stratified_split(labels, 0.25, seed=1)
    _, other_val = stratified_split(labels, 0.25, seed=2)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, other_val)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 120
    assert np.bincount(np.asarray(labels)[val]).tolist() == [10, 10, 10]


def test_load_splits_keeps_test_apart(tiny_root):
    splits = load_splits(_cfg(tiny_root, "data.validation_fraction=0.25").data, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test), len(splits.validation_folder)) == (18, 6, 9, 6)
    assert set(splits.train.paths).isdisjoint(splits.val.paths)
    assert all("/train/" in p for p in splits.train.paths + splits.val.paths)
    assert all("/test/" in p for p in splits.test.paths)


def test_validation_fraction_zero_trains_on_all_of_train(tiny_root):
    splits = load_splits(_cfg(tiny_root, "data.validation_fraction=0").data, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 0, 9)
    assert splits.agreement_split is splits.train  # exports are checked on training images
    assert splits.report_split is splits.test
    with_val = load_splits(_cfg(tiny_root, "data.validation_fraction=0.25").data, seed=0)
    assert with_val.agreement_split is with_val.val


def test_fingerprint_tracks_content(tiny_root):
    split = check_split(list_split(tiny_root / "train"), _cfg(tiny_root).data)
    before = fingerprint(tiny_root, [split])
    make_image(tiny_root / "train" / "rock" / "rock00.png", 2, seed=999)
    after = fingerprint(tiny_root, [check_split(list_split(tiny_root / "train"), _cfg(tiny_root).data)])
    assert before != after and len(before) == 64


def test_pipelines_shapes_and_dtypes(tiny_root):
    cfg = _cfg(tiny_root)
    splits = load_splits(cfg.data, seed=0)
    x, y = next(iter(make_train_dataset(splits.train, cfg)))
    assert x.shape == (4, 32, 32, 3) and x.dtype.name == "float32" and y.dtype.name == "int32"
    batches = list(make_eval_dataset(splits.test, cfg.data))
    assert sum(len(b[1]) for b in batches) == 9  # the partial last batch is kept
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert labels.tolist() == list(splits.test.labels)  # ordered


def test_train_pipeline_drops_remainder_and_shuffles_by_seed(tiny_root):
    cfg = _cfg(tiny_root, "data.validation_fraction=0.25", "data.global_batch_size=5")
    splits = load_splits(cfg.data, seed=0)
    first = [b[1].numpy().tolist() for b in make_train_dataset(splits.train, cfg)]
    again = [b[1].numpy().tolist() for b in make_train_dataset(splits.train, cfg)]
    assert [len(b) for b in first] == [5, 5, 5]  # 18 images: the remainder 3 is dropped
    assert first == again


def test_augmented_train_pipeline_repeats_itself_for_a_seed(tiny_root):
    """The parallel map augments batches in any thread order; the batches still depend on the
    seed only: two pipelines give the same two epochs, the epochs differ, and another seed
    gives other batches."""
    from rps.augment import make_augmenter

    def two_epochs(seed):
        cfg = _cfg(tiny_root, "data.validation_fraction=0.25", "data.global_batch_size=2",
                   f"seed={seed}", "augment.background=0.5", "augment.noise=5")
        splits = load_splits(cfg.data, seed=0)
        dataset = make_train_dataset(splits.train, cfg, make_augmenter(cfg.augment, cfg.seed),
                                     start_epoch=0, end_epoch=2)
        return [np.concatenate([x.numpy().ravel(), y.numpy()]) for x, y in dataset]

    first, again = two_epochs(0), two_epochs(0)
    assert len(first) == 18  # 18 images in batches of 2, twice
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    epoch = len(first) // 2
    assert all(not np.array_equal(a, b) for a, b in zip(first[:epoch], first[epoch:]))
    assert all(not np.array_equal(a, b) for a, b in zip(first, two_epochs(1)))


def test_train_epochs_depend_on_the_epoch_number_not_on_earlier_iterators(tiny_root):
    """A run resumed at epoch k reads what an uninterrupted run reads from epoch k on, batch
    for batch (the same shuffle and augmentation keys); and iterating a dataset again gives
    the same batches (Keras's fit opens a throwaway iterator before the real one)."""
    from rps.augment import make_augmenter

    cfg = _cfg(tiny_root, "data.validation_fraction=0.25", "data.global_batch_size=2",
               "augment.background=0.5", "augment.noise=5")
    splits = load_splits(cfg.data, seed=0)
    augment = make_augmenter(cfg.augment, cfg.seed)

    def batches(dataset):
        return [np.concatenate([x.numpy().ravel(), y.numpy()]) for x, y in dataset]

    steps = len(splits.train) // 2
    whole = make_train_dataset(splits.train, cfg, augment, start_epoch=0, end_epoch=4)
    uninterrupted = batches(whole)
    assert len(uninterrupted) == 4 * steps
    resumed = batches(make_train_dataset(splits.train, cfg, augment, start_epoch=2, end_epoch=4))
    for a, b in zip(resumed, uninterrupted[2 * steps:], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(batches(whole), uninterrupted, strict=True):  # a second iterator
        np.testing.assert_array_equal(a, b)
    # Epoch 2 is not epoch 0 again: a dataset that ignored start_epoch would fail above.
    assert not np.array_equal(uninterrupted[0], uninterrupted[2 * steps])
    for start, end in ((-1, 2), (2, 2)):
        with pytest.raises(ValueError, match="start_epoch"):
            make_train_dataset(splits.train, cfg, augment, start_epoch=start, end_epoch=end)


@pytest.mark.parametrize("split", [["data.validation_fraction=0.25"], ["data.folds=4", "data.fold=1"]])
def test_split_seed_keeps_the_split_while_the_seed_varies(tiny_root, split):
    def val_paths(seed, *overrides):
        return load_splits(_cfg(tiny_root, *split, *overrides).data, seed=seed).val.paths

    assert val_paths(0) != val_paths(1)  # the root seed draws the split by default
    assert val_paths(1, "data.split_seed=0") == val_paths(0)  # split_seed overrides it
    assert val_paths(0, "data.split_seed=1") == val_paths(1)


def test_group_split_never_splits_a_group():
    from rps.data import group_keys

    paths = tuple(f"/d/{c}/{c}{h:02d}-{i:03d}.jpg" for c in "abc" for h in range(4) for i in range(10))
    labels = tuple(k // 40 for k in range(120))
    groups = group_keys(paths, r"^(.*)-\d+$")
    assert groups[:2] == ("a00", "a00") and len(set(groups)) == 12
    train, val = stratified_split(labels, 0.3, seed=0, groups=groups)
    train_groups, val_groups = {groups[i] for i in train}, {groups[i] for i in val}
    assert train_groups.isdisjoint(val_groups)
    assert np.bincount(np.asarray(labels)[val]).tolist() == [10, 10, 10]  # one group per class


def test_group_kfold_holds_out_every_group_exactly_once():
    from rps.data import group_keys

    paths = tuple(f"/d/{c}/{c}{h:02d}-{i:03d}.jpg" for c in "abc" for h in range(4) for i in range(10))
    labels = tuple(k // 40 for k in range(120))
    groups = group_keys(paths, r"^(.*)-\d+$")
    held_out = []
    for fold in range(4):
        train, val = kfold_split(labels, 4, fold, seed=0, groups=groups)
        assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(120))
        assert np.bincount(np.asarray(labels)[val]).tolist() == [10, 10, 10]  # one hand per class
        held_out += val.tolist()
    assert sorted(held_out) == list(range(120))
    # The seed draws which hands share a fold; the same seed draws the same folds.
    np.testing.assert_array_equal(kfold_split(labels, 4, 1, 0, groups)[1],
                                  kfold_split(labels, 4, 1, 0, groups)[1])
    assert any(not np.array_equal(kfold_split(labels, 4, f, 0, groups)[1],
                                  kfold_split(labels, 4, f, 1, groups)[1]) for f in range(4))


def test_kfold_errors_name_the_problem():
    groups = ("g", "g", "h", "i")
    with pytest.raises(ValueError, match="class 0 has 1 group.*data.folds=2"):
        kfold_split((0, 0, 1, 1), 2, 0, seed=0, groups=groups)
    with pytest.raises(ValueError, match="data.fold=2 is outside 0..1"):
        kfold_split((0, 0, 1, 1), 2, 2, seed=0)


def test_group_split_needs_two_groups_per_class():
    with pytest.raises(ValueError, match="class 0 has 1 group"):
        stratified_split((0, 0, 1, 1), 0.5, seed=0, groups=("g", "g", "h", "i"))
