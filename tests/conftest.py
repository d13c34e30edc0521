"""Shared fixtures: a tiny synthetic image folder, the real data set, the smoke config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("paper", "rock", "scissors")


def real_data_root() -> Path | None:
    """The real data set: ../shared/data/rps beside the repo, or data/rps inside it."""
    for candidate in (REPO.parent / "shared" / "data" / "rps", REPO / "data" / "rps"):
        if (candidate / "train").is_dir():
            return candidate.resolve()
    return None


def make_image(path: Path, label: int, seed: int, size: int = 48, mode: str = "RGB") -> Path:
    """A synthetic image whose class shows as a bright bar in one of three positions."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    third = size // 3
    pixels[:, label * third:(label + 1) * third] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """``<tmp>/data/{train,test,validation}/{paper,rock,scissors}/*.png``: 8 train, 3 test and
    2 validation images per class."""
    root = tmp_path / "data"
    for split, n in (("train", 8), ("test", 3), ("validation", 2)):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                make_image(root / split / name / f"{name}{i:02d}.png", label, seed=hash((split, i, label)) % 2**32)
    return root


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real data set; CI sets RPS_REQUIRE_REAL_DATA=1 so that a missing copy fails."""
    root = real_data_root()
    if root is None:
        if os.environ.get("RPS_REQUIRE_REAL_DATA") == "1":
            pytest.fail("real data not found at ../shared/data/rps or data/rps")
        pytest.skip("real data not found (run `make data`)")
    return root


@pytest.fixture
def smoke_overrides(real_root, tmp_path) -> list[str]:
    """Overrides that point configs/smoke.yaml at the real data and a temporary output folder."""
    return [f"data.root={real_root}", f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def smoke_run(real_root, tmp_path_factory):
    """One complete smoke run (configs/smoke.yaml on the real data), shared by the pipeline,
    TensorBoard and TFLite tests: ``(config, run folder)``. It writes TensorBoard scalars every 2
    steps and profiles steps 3-4, so the TensorBoard tests find every plugin's data. Tests must
    not change its files: copy the folder first (as the TFLite tests do)."""
    from rps.config import load_config
    from rps.pipeline import run

    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      [f"data.root={real_root}", f"output_dir={tmp_path_factory.mktemp('runs')}",
                       "train.tensorboard_update_freq=2", "train.profile_batches=3,4"])
    return cfg, run(cfg, argv=["test"])
