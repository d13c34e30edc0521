"""Run folders: one per training run, never overwritten, resumable, marked complete at the end.

Usage: ``run_dir = open_run_dir(cfg)``; ... ``mark_complete(run_dir)``.

Layout of ``<output_dir>/<run_name>/``: ``config.yaml`` (the resolved config, loadable with
``rps train --config``), ``run_info.json`` (library versions, data fingerprint, command, times),
``logs/`` (TensorBoard), ``checkpoints/``, ``history.csv``, the exports, ``metrics.json``, plots,
and ``COMPLETE``, written last. ``<output_dir>/latest`` is a symlink to the newest complete run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rps.config import Config, from_dict, to_dict

COMPLETE = "COMPLETE"


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename, so a
    reader never sees a half-written file (``os.replace`` is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def is_complete(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run (its ``COMPLETE`` marker exists)."""
    return (Path(run_dir) / COMPLETE).is_file()


def require_complete(run_dir: str | Path) -> Path:
    """Return ``run_dir`` as a resolved path if it is a complete run.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the run is incomplete (interrupted, or still training).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not is_complete(run_dir):
        raise ValueError(
            f"run folder {run_dir} is incomplete (no {COMPLETE} marker): it was interrupted or is "
            f"still running. Run the same `rps train` command again to resume it."
        )
    return run_dir.resolve()


def read_run_config(run_dir: str | Path) -> Config:
    """Load the resolved config saved in a run folder."""
    return from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide a run's numbers."""
    import keras
    import numpy
    import tensorflow as tf

    versions = {"python": sys.version.split()[0], "platform": platform.platform(),
                "tensorflow": tf.__version__, "keras": keras.__version__,
                "numpy": numpy.__version__, "keras_backend": keras.backend.backend()}
    try:
        from importlib.metadata import version

        versions["rps"] = version("rps")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        versions["rps"] = "source"
    return versions


def open_run_dir(cfg: Config) -> tuple[Path, bool]:
    """Find or create the run folder for ``cfg``.

    Tries ``<output_dir>/<run_name>``, then ``<run_name>-2``, ``-3``, ...: the first that does not
    exist is created; the first incomplete one with the same config is resumed. A complete run is
    never touched.

    Returns:
        ``(run_dir, resumed)``.

    Raises:
        ValueError: an incomplete run of that name exists with a different config (the message
            says how to resume or start afresh).
    """
    out = Path(cfg.output_dir)
    for i in range(1, 10_000):
        run_dir = out / (cfg.run_name if i == 1 else f"{cfg.run_name}-{i}")
        if not run_dir.exists():
            run_dir.mkdir(parents=True)
            write_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return run_dir, False
        if is_complete(run_dir):
            continue
        saved = run_dir / "config.yaml"
        if saved.is_file() and read_run_config(run_dir) == cfg:
            return run_dir, True
        raise ValueError(
            f"run folder {run_dir} holds an incomplete run with a different config. To resume it, "
            f"run `rps train --config {saved}`; to start afresh, delete it or pass run_name=<new>."
        )
    raise RuntimeError(f"too many runs named {cfg.run_name!r} in {out}")


def mark_complete(run_dir: str | Path) -> None:
    """Write the ``COMPLETE`` marker, then point ``<output_dir>/latest`` at this run (the link is
    replaced atomically, so it only ever names a complete run)."""
    run_dir = Path(run_dir)
    write_atomic(run_dir / COMPLETE, "")
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
