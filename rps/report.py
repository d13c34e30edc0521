"""The run report: ``report.md``, a model card written from what the run folder holds (and
the Markdown/CSV leaderboard of ``rps tune``).

Usage: ``write_report(run_dir)`` (the pipeline calls it after evaluation, before ``COMPLETE``).

It reads ``config.yaml``, ``run_info.json``, ``metrics.json``, ``history.csv``, the plots and the
exported files, so it also works on an older run folder, and with or without TFLite variants.
Sections follow Mitchell et al., "Model Cards for Model Reporting" (2019),
https://arxiv.org/abs/1810.03993 : model details, intended use and limits, data, metrics,
exports, plots, how to reproduce, config and library versions.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from rps.runs import read_history, write_atomic

# Plots in the order the report shows them: (file pattern, caption).
_PLOTS = (
    ("training_curves.png", "Training curves: accuracy and loss per epoch"),
    ("confusion_matrix_test_keras.png", "Confusion matrix, Keras model on test/"),
    ("misclassified_*.png", "Misclassified held-out images, most confident mistakes first"),
    ("augmentation_preview.png", "Augmentation preview: originals and random training draws"),
)
_RPS_CLASSES = ["paper", "rock", "scissors"]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (a SavedModel)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _human(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def artifact_key(path: Path) -> str:
    """The ``metrics.json`` key of an exported file: ``model.keras`` -> ``keras``,
    ``saved_model`` -> ``saved_model``, ``model.tflite`` -> ``tflite``,
    ``model_<variant>.tflite`` -> ``tflite_<variant>`` (as ``rps.export.artifact_name``)."""
    if path.suffix == ".tflite":
        return "tflite" if path.stem == "model" else "tflite_" + path.stem.removeprefix("model_")
    return {"model.keras": "keras"}.get(path.name, path.name)


def list_exports(run_dir: Path) -> list[Path]:
    """The exported model files that exist in ``run_dir``: ``model.keras``, ``saved_model/``,
    then every ``model*.tflite``, sorted."""
    fixed = [run_dir / "model.keras", run_dir / "saved_model"]
    return [p for p in fixed if p.exists()] + sorted(run_dir.glob("model*.tflite"))


def _accuracy(metrics: dict, split: str, key: str) -> str:
    value = metrics.get(split, {}).get(key, {}).get("top1_accuracy")
    return "-" if value is None else f"{value:.4f}"


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines; floats are shown with 4 significant digits."""
    show = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(show(c) for c in row) + " |" for row in rows]


def write_leaderboard(rows: list[dict], out_dir: Path, title: str) -> Path:
    """Write a search's leaderboard as ``leaderboard.csv`` (every value as recorded) and
    ``leaderboard.md`` (a table under ``# title``); ``rows`` share their keys, best first.

    Returns:
        The path of ``leaderboard.md``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(Path(out_dir) / "leaderboard.csv", buffer.getvalue())
    table = markdown_table(list(rows[0]), [list(r.values()) for r in rows])
    return write_atomic(Path(out_dir) / "leaderboard.md",
                        f"# {title}\n\n" + "\n".join(table) + "\n")


def _summary(cfg: dict, info: dict, metrics: dict) -> list[str]:
    classes = info.get("class_names", [])
    size = cfg.get("data", {}).get("image_size", "?")
    test = metrics.get("test", {}).get("keras", {})
    params = metrics.get("num_parameters")
    lines = [f"# Model card: {cfg.get('run_name', '?')}", "",
             f"A `{cfg.get('model', {}).get('name', '?')}` image classifier "
             f"({f'{params:,}' if params else '?'} parameters) that labels a {size}x{size} RGB "
             f"image (raw pixels 0-255) as one of {len(classes)} classes: {', '.join(classes)}. "
             "It outputs one probability per class, in the order of `labels.txt`."]
    if test:
        lines += ["", f"Top-1 accuracy of the Keras model on the held-out test split: "
                  f"**{test['top1_accuracy']:.4f}** ({test['num_images']} images)."]
    return lines + [""]


def _intended_use(info: dict) -> list[str]:
    classes = info.get("class_names", [])
    lines = ["## Intended use and limits", "",
             f"- Intended use: classifying images like the training images into {', '.join(classes)}; "
             "demonstrations, teaching, games and on-device prototypes (see the TFLite exports).",
             "- Not intended for decisions about people, for identifying anyone, or for anything "
             "safety-relevant.",
             f"- It always answers one of the {len(classes)} classes: it has no \"none of these\" "
             "output, so an image without a hand still gets a label. Check the probability.",
             "- Accuracy is measured only on the held-out `test/` split of the same data set; "
             "cameras, backgrounds, lighting and hands unlike the training images may do worse."]
    if sorted(classes) == _RPS_CLASSES:
        lines.append("- The Rock Paper Scissors images (Laurence Moroney, CC BY 2.0, "
                     "http://laurencemoroney.com/rock-paper-scissors-dataset) are "
                     "computer-generated hands of varied skin tones on a white background; real "
                     "photos were not part of training or test.")
    return lines + [""]


def _data(cfg: dict, info: dict) -> list[str]:
    data = cfg.get("data", {})
    rows = [[split, count] for split, count in info.get("num_images", {}).items()]
    drawn = f"drawn per class (split by {data.get('split_by', 'file')}, seed {cfg.get('seed', '?')})"
    if data.get("folds"):
        val = f"The `val` split is fold {data.get('fold')} of {data['folds']} of `train/`, {drawn}."
    elif data.get("validation_fraction", 1) == 0:
        val = "There is no `val` split: the model trained on all of `train/`."
    else:
        val = f"The `val` split is {data.get('validation_fraction', '?')} of `train/`, {drawn}."
    return (["## Data", "",
             f"Source `{data.get('source', 'folder')}`, root `{data.get('root', '?')}`. {val} "
             "`test/` was read only for the final evaluation.", "",
             f"Data fingerprint (SHA-256 over every file's path and content): "
             f"`{info.get('data_fingerprint', '?')}`", ""]
            + markdown_table(["split", "images"], rows) + [""])


def _training(run_dir: Path, cfg: dict, info: dict, metrics: dict) -> list[str]:
    train = cfg.get("train", {})
    lines = ["## Training", "",
             f"{train.get('optimizer', '?')} at learning rate {train.get('learning_rate', '?')} "
             f"({train.get('schedule', '?')} schedule), global batch "
             f"{cfg.get('data', {}).get('global_batch_size', '?')} on "
             f"{info.get('num_replicas', '?')} replica(s); "
             f"{metrics.get('train_seconds', 0):.0f} s of training.", ""]
    history_csv = run_dir / "history.csv"
    history = read_history(history_csv) if history_csv.is_file() else {}
    if history.get("epoch"):
        keys = [k for k in ("accuracy", "loss", "val_accuracy", "val_loss") if k in history]
        lines += markdown_table(["epochs"] + keys, [[len(history["epoch"])]
                                             + [f"{history[k][-1]:.4f}" for k in keys]])
        exported = ("those of the epoch with the lowest validation loss"
                    if train.get("checkpoint") == "best" else "those after the last epoch")
        lines += ["", f"Values of the last epoch; the exported weights are {exported} "
                  f"(`train.checkpoint: {train.get('checkpoint', 'last')}`).", ""]
    return lines


def _metrics(metrics: dict) -> list[str]:
    rows = []
    for split in ("test", "validation_folder"):
        for artifact, m in metrics.get(split, {}).items():
            agreement = f"{m['agreement']:.4f}" if "agreement" in m else "-"
            rows.append([split, artifact, m.get("num_images", "?"),
                         f"{m['top1_accuracy']:.4f}", agreement])
    lines = ["## Metrics", ""] + markdown_table(
        ["split", "artifact", "images", "top-1 accuracy", "agreement with keras"], rows) + [""]
    per_class = metrics.get("test", {}).get("keras", {}).get("per_class", {})
    if per_class:
        lines += ["Per class, Keras model on test/:", ""] + markdown_table(
            ["class", "precision", "recall", "images"],
            [[c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", v["support"]]
             for c, v in per_class.items()]) + [""]
    return lines


def _exports(run_dir: Path, metrics: dict) -> list[str]:
    rows = [[f"`{p.name}{'/' if p.is_dir() else ''}`", _human(_size(p)),
             _accuracy(metrics, "test", artifact_key(p)),
             _accuracy(metrics, "validation_folder", artifact_key(p))]
            for p in list_exports(run_dir)]
    return ["## Exports", ""] + markdown_table(
        ["file", "size", "test top-1", "validation/ top-1"], rows) + [
        "", "`labels.txt` lists the classes in output order; every export takes raw RGB pixels "
        "0-255 and outputs probabilities.", ""]


def _plots(run_dir: Path) -> list[str]:
    lines = ["## Plots", ""]
    for pattern, caption in _PLOTS:
        for path in sorted(run_dir.glob(pattern)):
            lines += [f"{caption} (`{path.name}`):", "", f"![{caption}]({path.name})", ""]
    return lines


def _reproduce(run_dir: Path, cfg: dict, info: dict) -> list[str]:
    versions = info.get("versions", {})
    return (["## Reproduce", "", "```bash", f"rps train --config {run_dir / 'config.yaml'}",
             "```", "", "Command of this run: `" + " ".join(map(str, info.get("command", []))) + "`",
             "", "## Config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```",
             "", "## Library versions", ""]
            + markdown_table(["library", "version"], [[k, v] for k, v in versions.items()]) + [""])


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.md``, the run's model card.

    Args:
        run_dir: a run folder holding at least ``config.yaml``; missing ``run_info.json``,
            ``metrics.json``, history, plots or exports leave their sections short.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir/config.yaml`` does not exist.
    """
    run_dir = Path(run_dir)
    config_yaml = run_dir / "config.yaml"
    if not config_yaml.is_file():
        raise FileNotFoundError(
            f"no config.yaml in {run_dir}: not a run folder (rps train makes one).")
    cfg = yaml.safe_load(config_yaml.read_text()) or {}
    info, metrics = _read_json(run_dir / "run_info.json"), _read_json(run_dir / "metrics.json")
    lines = (_summary(cfg, info, metrics) + _intended_use(info) + _data(cfg, info)
             + _training(run_dir, cfg, info, metrics) + _metrics(metrics)
             + _exports(run_dir, metrics) + _plots(run_dir) + _reproduce(run_dir, cfg, info))
    return write_atomic(run_dir / "report.md", "\n".join(lines))
