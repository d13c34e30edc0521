"""Run folders: one per training run, never overwritten, resumable, marked complete at the end.

Usage: ``run_dir = open_run_dir(cfg)``; ... ``mark_complete(run_dir)``.

A run killed at any moment (SIGKILL, power loss) resumes when the same command runs again:
``open_run_dir`` finds the incomplete folder and removes half-written temporary files,
``prepare_resume`` checks the Keras ``BackupAndRestore`` state (falling back to the previous
epoch's copy if the latest one was being written) and cuts ``history.csv`` back to the epochs
that state holds, and ``FinishedTraining`` lets a run killed after training skip straight to
export. See docs/reliability.md for the measured recovery rate.

Layout of ``<output_dir>/<run_name>/``: ``config.yaml`` (the resolved config, loadable with
``rps train --config``), ``run_info.json`` (library versions, data fingerprint, command, times),
``logs/`` (TensorBoard), ``checkpoints/``, ``history.csv``, the exports, ``metrics.json``, plots,
and ``COMPLETE``, written last. ``<output_dir>/latest`` is a symlink to the newest complete run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from rps.config import Config, from_dict, to_dict

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
# Training state inside a run folder (see rps.train.make_callbacks and rps.train.train).
BACKUP_DIR = "checkpoints/backup"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
FINAL_WEIGHTS = "checkpoints/final.weights.h5"
TRAINED_FILE = "checkpoints/trained.json"
HISTORY_FILE = "history.csv"
# Prefixes of half-written files (write_atomic, rps.export) that a killed run can leave behind.
TEMPORARY_PREFIXES = (".tmp-", ".old-")


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
    exist is created; the first incomplete one with the same config is resumed (its leftover
    temporary files removed). A complete run is never touched.

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
        if not saved.is_file() and not any(run_dir.iterdir()):
            # Killed between mkdir and writing config.yaml: nothing else can have started.
            write_atomic(saved, yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return run_dir, False
        if saved.is_file() and read_run_config(run_dir) == cfg:
            remove_temporary_files(run_dir)
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


def remove_temporary_files(run_dir: str | Path) -> list[Path]:
    """Delete the half-written files and folders (``.tmp-*``, ``.old-*``) that a killed run left
    in ``run_dir`` and ``run_dir/checkpoints``.

    Returns:
        The paths removed.
    """
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in sorted(folder.glob(".*")) if folder.is_dir() else []:
            if path.name.startswith(TEMPORARY_PREFIXES):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of the interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def peak_rss_bytes(children: bool = False) -> int:
    """Peak resident set size of this process (or of its finished, waited-for child processes),
    in bytes, from ``resource.getrusage``.

    Args:
        children: ``True`` reports the largest peak among the children (``RUSAGE_CHILDREN``).

    Returns:
        Bytes (Linux reports kibibytes, macOS bytes; both are converted).
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """Where training restarts: ``epoch`` is the first epoch to train (0-based; 0 means from
    scratch) and ``best_val_loss`` the lowest validation loss that ``best.weights.h5`` holds
    (``None``: no best checkpoint yet), so that the resumed ``ModelCheckpoint`` keeps it unless
    a later epoch beats it."""

    epoch: int = 0
    best_val_loss: float | None = None


def _h5_readable(path: Path) -> bool:
    """True when an HDF5 file opens and every dataset in it reads (a file cut short by a kill
    fails one or the other)."""
    import h5py

    def read(_name, obj):
        if isinstance(obj, h5py.Dataset):
            obj[()]  # noqa: B018 - reading is the check
        return None  # visititems stops at the first non-None return

    try:
        with h5py.File(path, "r") as f:
            f.visititems(read)
    except Exception:  # h5py raises OSError, KeyError, ValueError, RuntimeError for bad files
        return False
    return True


def _backup_epoch(weights: Path, metadata: Path) -> int | None:
    """The epoch a ``BackupAndRestore`` pair holds, or ``None`` when it is missing, damaged or
    inconsistent. Keras writes the weights, then the metadata, so weights newer than their
    metadata mean a kill between the two writes."""
    try:
        epoch = json.loads(metadata.read_text())["epoch"]
        consistent = metadata.stat().st_mtime_ns >= weights.stat().st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(epoch, int) or epoch < 0 or not consistent or not _h5_readable(weights):
        return None
    return epoch


def _restore_backup(backup: Path) -> int:
    """Make ``backup``'s current pair loadable; return its epoch (0 after discarding it)."""
    weights, metadata = backup / "latest.weights.h5", backup / "training_metadata.json"
    epoch = _backup_epoch(weights, metadata)
    if epoch is not None:
        return epoch
    previous = (Path(f"{weights}.bkp"), Path(f"{metadata}.bkp"))
    epoch = _backup_epoch(*previous)
    if epoch is not None:
        log.warning("the latest training backup in %s is damaged (the run was killed while "
                    "writing it); resuming from the previous one", backup)
        shutil.copyfile(previous[0], weights)
        shutil.copyfile(previous[1], metadata)  # written last, as Keras does
        return epoch
    if backup.exists():
        log.warning("no usable training backup in %s; training restarts at epoch 1", backup)
        shutil.rmtree(backup)
    return 0


def _roll_back_backup(backup: Path, epoch: int, local: int) -> int:
    """Make ``backup`` hold ``epoch`` instead of its newer ``local`` one: the previous pair that
    ``BackupAndRestore(double_checkpoint=True)`` keeps, or nothing when ``epoch`` is 0.

    Raises:
        ValueError: no copy of ``epoch`` is left (the message says how to start afresh).
    """
    weights, metadata = backup / "latest.weights.h5", backup / "training_metadata.json"
    if epoch == 0:
        shutil.rmtree(backup, ignore_errors=True)
        return 0
    previous = (Path(f"{weights}.bkp"), Path(f"{metadata}.bkp"))
    if _backup_epoch(*previous) != epoch:
        raise ValueError(f"the workers' training backups disagree: {backup} holds epoch {local}, "
                         f"another worker's only epoch {epoch}, and no copy of epoch {epoch} is "
                         f"left here. Delete every worker's run folder to start afresh.")
    log.warning("another worker's backup is one epoch behind; %s rolls back to it", backup)
    shutil.copyfile(previous[0], weights)
    shutil.copyfile(previous[1], metadata)
    return epoch


def read_history(path: str | Path, before_epoch: int | None = None) -> dict[str, list[float]]:
    """Read a Keras ``CSVLogger`` file.

    Args:
        path: the CSV file (a missing file reads as empty).
        before_epoch: keep only rows of epochs ``< before_epoch`` (0-based); ``None`` keeps all.
            Rows cut short by a kill, and repeated epochs, are dropped.

    Returns:
        ``{"epoch": [...], "loss": [...], ...}``, one value per kept epoch, in epoch order; a
        column that is ``NA`` in a kept row (Keras's ``val_*`` without validation data) is left
        out.
    """
    path = Path(path)
    rows: dict[int, dict[str, float]] = {}
    text = path.read_text() if path.is_file() else ""
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        try:
            values = {k: None if v == "NA" else float(v) for k, v in row.items() if k is not None}
            epoch = int(values["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        if len(values) == len(reader.fieldnames or ()) and (before_epoch is None or epoch < before_epoch):
            rows.setdefault(epoch, values)
    # CSVLogger writes val_* columns as NA when there is no validation data: leave them out.
    keys = [k for k in reader.fieldnames or () if all(rows[e][k] is not None for e in rows)]
    return {k: [rows[e][k] for e in sorted(rows)] for k in keys}


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    keys = list(history)
    lines = [",".join(keys)] + [",".join(repr(history[k][i]) if k != "epoch" else
                                         str(int(history[k][i])) for k in keys)
                                for i in range(len(history.get("epoch", [])))]
    write_atomic(path, "\n".join(lines) + "\n")


def prepare_resume(run_dir: str | Path, agree: Callable[[int], int] | None = None) -> ResumeState:
    """Make an interrupted run's training state consistent before ``fit`` restores it.

    1. The ``BackupAndRestore`` state (``checkpoints/backup``): the latest pair if it is
       whole, else Keras's copy of the previous epoch (``*.bkp``), else none (start again).
       With ``agree`` (multi-worker training), every worker then resumes at the earliest epoch
       any worker holds, rolling back to its previous pair if needed: a worker killed while
       writing its backup is one epoch behind the others.
    2. ``history.csv`` keeps exactly the epochs before the restored one, so that no epoch
       appears twice and the resumed rows follow on.
    3. ``best.weights.h5`` is deleted if it was cut short; otherwise its validation loss (the
       lowest in the kept history) is returned for ``ModelCheckpoint(initial_value_threshold)``.

    A fresh run folder is left as it is (``ResumeState(0, None)``).

    Args:
        run_dir: the run folder.
        agree: given this worker's epoch, returns the epoch all workers resume at (a collective
            minimum, ``rps.cluster.agree_on_epoch``); ``None``: one worker.

    Returns:
        The ``ResumeState``.

    Raises:
        ValueError: the workers' backups are more than one epoch apart.
    """
    run_dir = Path(run_dir)
    epoch = _restore_backup(run_dir / BACKUP_DIR)
    if agree is not None:
        agreed = agree(epoch)
        if agreed < epoch:
            epoch = _roll_back_backup(run_dir / BACKUP_DIR, agreed, epoch)
    history_path = run_dir / HISTORY_FILE
    history = read_history(history_path, before_epoch=epoch)
    kept = [int(e) for e in history.get("epoch", [])]
    if history_path.exists():
        if epoch == 0:
            history_path.unlink()
        else:
            _write_history(history_path, history)
    if kept != list(range(epoch)):
        log.warning("history.csv of %s lacks epoch(s) %s of the restored state", run_dir,
                    sorted(set(range(epoch)) - set(kept)))
    best = run_dir / BEST_WEIGHTS
    if best.exists() and not _h5_readable(best):
        log.warning("%s was cut short by the interruption; deleted", best)
        best.unlink()
    losses = history.get("val_loss", [])
    best_val_loss = min(losses) if best.exists() and epoch and losses else None
    if epoch:
        log.info("resuming training at epoch %d (best val_loss so far: %s)", epoch + 1,
                 best_val_loss)
    return ResumeState(epoch, best_val_loss)


@dataclasses.dataclass(frozen=True)
class FinishedTraining:
    """What a run folder keeps once ``fit`` has finished (``checkpoints/trained.json`` beside
    ``checkpoints/final.weights.h5``), so that a run killed later, during export or evaluation,
    resumes without training again."""

    history: dict[str, list[float]]
    train_seconds: float

    def save(self, run_dir: str | Path, model) -> None:
        """Write the model's weights, then ``trained.json`` (both atomically: the marker is
        only there when the weights are whole), then drop the ``BackupAndRestore`` state.

        Args:
            run_dir: the run folder.
            model: the trained Keras model, holding the weights to export.
        """
        run_dir = Path(run_dir)
        final = run_dir / FINAL_WEIGHTS
        # Keras picks the format from the name, so the temporary name ends in .weights.h5 too.
        tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
        model.save_weights(str(tmp))
        os.replace(tmp, final)
        write_json(run_dir / TRAINED_FILE, dataclasses.asdict(self))
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)

    @staticmethod
    def load(run_dir: str | Path) -> "FinishedTraining | None":
        """The finished training of ``run_dir``, or ``None`` when training has not finished
        (or its files are damaged). A ``BackupAndRestore`` state left behind by a kill between
        ``trained.json`` and its removal in ``save`` is removed here: it is stale."""
        run_dir = Path(run_dir)
        try:
            values = json.loads((run_dir / TRAINED_FILE).read_text())
            finished = FinishedTraining(values["history"], float(values["train_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _h5_readable(run_dir / FINAL_WEIGHTS):
            return None
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
        return finished
