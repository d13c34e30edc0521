"""Hyperparameter search with keras-tuner, over the same data, model and compile functions as
``rps train``.

Usage: ``rps tune --config configs/tune.yaml`` (``make tune``); in Python
``run_search(load_tune_config("configs/tune.yaml"))``.

A tune file holds a ``base`` config (a path such as ``configs/default.yaml``, or an inline
mapping) with optional ``overrides`` (``key=value`` strings), a ``search_space`` of dotted
config keys, and the search settings (``tuner``:
``hyperband`` (Li et al. 2018, https://arxiv.org/abs/1603.06560) or ``bayesian`` (Gaussian-process
Bayesian optimisation), ``objective``, ``max_epochs``, ``max_trials``, ``factor``,
``hyperband_iterations``). Every trial's config is built with ``rps.config.build_config``, so it
gets the same validation as ``rps train``; its model is built and compiled under the run's
distribution strategy with ``rps.models.build_model`` and ``rps.train.compile_model``, and it is
scored on the validation split (carved from ``train/``) only: no dataset is ever made from
``test/`` (``load_splits`` only checks its files).
keras-tuner: https://keras.io/keras_tuner/ .

Outputs in ``<output_dir>/tune-<name>/``: ``keras_tuner/`` (keras-tuner's project: trials,
checkpoints, oracle state), ``logs/`` (TensorBoard, one folder per trial, with HParams),
``tune_config.yaml`` (the resolved search), ``leaderboard.csv``, ``leaderboard.md`` and
``best.yaml`` (a config that ``rps train --config`` accepts).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import yaml
from tqdm import tqdm

from rps.config import (Config, ConfigError, build_config, get, has_validation, load_config,
                        to_dict)
from rps.data import Splits, load_splits
from rps.models import build_model
from rps.report import write_leaderboard
from rps.runs import write_atomic
from rps.train import (compile_model, count_steps_per_epoch, make_callbacks, make_fit_datasets,
                       make_strategy)

log = logging.getLogger(__name__)

TUNERS = ("hyperband", "bayesian")
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}  # validation split only, never test/
SAMPLINGS = ("linear", "log", "reverse_log")
# Keys a search may not vary: they decide what is scored, or where results go.
FIXED_KEYS = ("seed", "run_name", "output_dir", "log_format", "train.epochs", "data.source",
              "data.root", "data.tfds_data_dir", "data.validation_fraction", "data.split_by",
              "data.group_pattern", "data.max_images_per_class")
_SETTINGS = ("name", "tuner", "objective", "max_epochs", "max_trials", "factor",
             "hyperband_iterations")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A resolved search. ``max_trials`` ``None``: no cap for Hyperband (its schedule decides,
    see ``hyperband_budget``), 10 for Bayesian optimisation. ``search_space`` maps each dotted
    config key to ``{"values": [...]}`` or ``{"min", "max", "step", "sampling", "type"}``."""

    base: Config
    search_space: dict[str, dict[str, Any]]
    name: str = "tune"
    tuner: str = "hyperband"
    objective: str = "val_accuracy"
    max_epochs: int = 6
    max_trials: int | None = None
    factor: int = 3
    hyperband_iterations: int = 1

    @property
    def out_dir(self) -> Path:
        """``<base.output_dir>/tune-<name>``."""
        return Path(self.base.output_dir) / f"tune-{self.name}"


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _parse_range(key: str, spec: Any, kind: type, where: str) -> dict[str, Any]:
    """``{min, max, step, sampling}`` of a numeric key, checked."""
    if not isinstance(spec, dict) or set(spec) - {"min", "max", "step", "sampling"} \
            or not {"min", "max"} <= set(spec) or kind not in (int, float):
        raise _error(where, f"search_space '{key}' = {spec!r}: expected a list of values, "
                            "{values: [...]}, or for a number {min, max, step, sampling}.")
    low, high, step = spec["min"], spec["max"], spec.get("step")
    if not all(isinstance(v, kind if kind is int else (int, float)) and not isinstance(v, bool)
               for v in (low, high, step) if v is not None):
        raise _error(where, f"search_space '{key}' is an {kind.__name__} key: min, max and step "
                            f"must be {kind.__name__}s, got {spec!r}.")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS or not low < high or (sampling != "linear" and low <= 0):
        raise _error(where, f"search_space '{key}' = {spec!r}: expected min < max, sampling one "
                            f"of {', '.join(SAMPLINGS)}, and min > 0 for log sampling.")
    return {"type": kind.__name__, "min": low, "max": high, "step": step, "sampling": sampling}


def _parse_space(space: Any, base: Config, where: str) -> dict[str, dict[str, Any]]:
    """Normalise and check the search space; each boundary value is validated by building a
    config with it (same messages as ``rps train``)."""
    if not isinstance(space, dict) or not space:
        raise _error(where, "'search_space' must be a non-empty mapping of config keys, e.g. "
                            "{model.width: [16, 32], train.learning_rate: {min: 1e-4, max: 1e-2}}.")
    parsed = {}
    for key, spec in space.items():
        if key in FIXED_KEYS:
            raise _error(where, f"search_space key '{key}' cannot be tuned (it decides what is "
                                "scored or where results go); set it in the base config.")
        try:
            kind = type(get(base, key))
        except AttributeError:
            build_config(to_dict(base), [f"{key}=0"])  # raises "unknown config key", with a hint
            raise
        if isinstance(spec, dict) and "values" in spec:
            spec = spec["values"]
        if isinstance(spec, list):
            if not spec:
                raise _error(where, f"search_space '{key}': the list of values is empty.")
            parsed[key] = {"values": list(spec)}
        else:
            parsed[key] = _parse_range(key, spec, kind, where)
        for value in parsed[key].get("values", [parsed[key].get("min"), parsed[key].get("max")]):
            trial_config_values(base, {key: value})
    return parsed


def trial_config_values(base: Config, values: dict[str, Any], epochs: int | None = None) -> Config:
    """The base config with ``values`` (dotted keys) set, validated by ``build_config``."""
    tree = copy.deepcopy(to_dict(base))
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if epochs is not None:
        tree["train"]["epochs"] = epochs
    return build_config(tree)


def trial_config(tune_cfg: TuneConfig, values: dict[str, Any]) -> Config:
    """A trial's config: the base with the trial's values, ``train.epochs = max_epochs`` (so the
    learning-rate schedule spans the whole budget) and ``run_name = <name>-best``."""
    picked = {k: v for k, v in values.items() if k in tune_cfg.search_space}
    cfg = trial_config_values(tune_cfg.base, picked, tune_cfg.max_epochs)
    return dataclasses.replace(cfg, run_name=f"{tune_cfg.name}-best")


def load_tune_config(path: str | Path, overrides: list[str] = ()) -> TuneConfig:
    """Read a tune file. Its ``overrides`` (a list of ``key=value``), then the ``key=value``
    arguments, change the base config; ``tune.<setting>=value`` changes a search setting (e.g.
    ``tune.max_trials=2``).

    Raises:
        FileNotFoundError: the tune file or its base config does not exist.
        ConfigError: an unknown or invalid setting, search-space key or value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tune file not found: {path}. See configs/tune.yaml.")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise _error(str(path), f"expected a mapping of settings, got {raw!r}.")
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("tune."):
            raw[key.removeprefix("tune.")] = yaml.safe_load(value)
    unknown = sorted(set(raw) - set(_SETTINGS) - {"base", "overrides", "search_space"})
    if unknown:
        close = difflib.get_close_matches(
            unknown[0], _SETTINGS + ("base", "overrides", "search_space"), n=1)
        raise _error(str(path), f"unknown tune setting '{unknown[0]}'."
                     + (f" Did you mean '{close[0]}'?" if close else "")
                     + f" Valid: base, overrides, search_space, {', '.join(_SETTINGS)}.")
    in_file = raw.get("overrides") or []
    if not isinstance(in_file, list) or not all(isinstance(o, str) and "=" in o for o in in_file):
        raise _error(str(path), f"overrides = {in_file!r}: expected a list of 'key=value' strings.")
    base_overrides = in_file + [o for o in overrides if not o.startswith("tune.")]
    base = raw.get("base", {})
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_file() else path.parent / base
        cfg = load_config(base_path if base_path.is_file() else base, base_overrides)
    else:
        cfg = build_config(base, base_overrides)
    fields = {k: raw[k] for k in _SETTINGS if k in raw}
    fields.setdefault("name", cfg.run_name)
    space = _parse_space(raw.get("search_space"), cfg, str(path))
    tune_cfg = TuneConfig(base=cfg, search_space=space, **fields)
    _check_settings(tune_cfg, str(path))
    return tune_cfg


def _check_settings(t: TuneConfig, where: str) -> None:
    if t.tuner not in TUNERS:
        raise _error(where, f"tuner = {t.tuner!r}: choose one of {', '.join(TUNERS)}.")
    if t.objective not in OBJECTIVES:
        raise _error(where, f"objective = {t.objective!r}: choose one of {', '.join(OBJECTIVES)} "
                            "(the validation split; test/ is never used for tuning).")
    minimum = {"max_epochs": 1, "max_trials": 1, "factor": 2, "hyperband_iterations": 1}
    for key, low in minimum.items():
        value = getattr(t, key)
        if not (key == "max_trials" and value is None) and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise _error(where, f"{key} = {value!r}: expected an integer >= {low}"
                                + (", or null." if key == "max_trials" else "."))
    if not isinstance(t.name, str) or not t.name or "/" in t.name:
        raise _error(where, f"name = {t.name!r}: expected a folder name without '/'.")
    trial_config_values(t.base, {}, t.max_epochs)  # e.g. train.warmup_epochs < max_epochs
    if not has_validation(t.base):
        raise _error(where, "trials are scored on the validation split, and the base config has "
                            "none (data.validation_fraction: 0): add "
                            "'data.validation_fraction=0.15' to the tune file's overrides.")


def hyperband_budget(max_epochs: int, factor: int, iterations: int = 1) -> tuple[int, int]:
    """Trials and epochs of a full Hyperband search, scheduled as keras-tuner 1.4's
    ``HyperbandOracle`` does (brackets of successive halving; a trial promoted to the next round
    continues from its checkpoint, so only the extra epochs count).

    Returns:
        ``(trials, epochs)``, e.g. ``(10, 36)`` for ``max_epochs=6, factor=3``.
    """
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    trials = total_epochs = 0
    for bracket in range(brackets):
        for round_num in range(bracket + 1):
            size = math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_num))
            until = math.ceil(max_epochs / factor ** (bracket - round_num))
            since = math.ceil(max_epochs / factor ** (bracket - round_num + 1)) if round_num else 0
            trials, total_epochs = trials + size, total_epochs + size * (until - since)
    return trials * iterations, total_epochs * iterations


class RpsHyperModel(keras_tuner.HyperModel):
    """Builds and trains one trial with the pipeline's own functions (no copied loop)."""

    def __init__(self, tune_cfg: TuneConfig, splits: Splits):
        super().__init__(name="rps")
        self.tune_cfg, self.splits = tune_cfg, splits

    def _declare(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        values = {}
        for key, spec in self.tune_cfg.search_space.items():
            if "values" in spec:
                values[key] = hp.Choice(key, spec["values"])
            else:
                make = hp.Int if spec["type"] == "int" else hp.Float
                values[key] = make(key, spec["min"], spec["max"], step=spec["step"],
                                   sampling=spec["sampling"])
        return values

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """A compiled logits model for the trial's config (keras-tuner calls this inside the
        distribution strategy's scope)."""
        cfg = trial_config(self.tune_cfg, self._declare(hp))
        keras.utils.set_random_seed(cfg.seed)
        keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
        # The same count fit's datasets use; a tuned batch size larger than the training split
        # raises its ValueError here, before a model is built.
        steps_per_epoch = count_steps_per_epoch(cfg, self.splits)
        model = build_model(cfg.model, len(self.splits.class_names), cfg.data.image_size)
        return compile_model(model, cfg, steps_per_epoch)

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args, **kwargs):
        """Train on the trial's datasets (augmentation and batch size may be tuned); validate
        on the validation split. ``kwargs``: keras-tuner's ``epochs``, ``initial_epoch`` and
        ``callbacks``."""
        cfg = trial_config(self.tune_cfg, hp.values)
        # The epochs keras-tuner asks for (Hyperband continues a trial from initial_epoch),
        # all in one dataset: one iterator for the whole fit (see rps.train.train).
        train_ds, val_ds, steps_per_epoch = make_fit_datasets(
            cfg, self.splits, kwargs.get("initial_epoch", 0), kwargs["epochs"])
        kwargs.pop("verbose", None)  # search(verbose=0) is for keras-tuner's own display
        # No Keras bars: the tuning bar shows each epoch (text mode), or JSON lines do.
        return model.fit(train_ds, steps_per_epoch=steps_per_epoch,
                         validation_data=val_ds, verbose=0, **kwargs)


def _tuner_class(kind: str) -> type:
    base = {"hyperband": keras_tuner.Hyperband, "bayesian": keras_tuner.BayesianOptimization}[kind]

    class ReportingTuner(base):
        """The chosen keras-tuner tuner, calling ``on_trial_done(trial)`` after each trial."""

        def __init__(self, *args, on_trial_done, **kwargs):
            self.on_trial_done = on_trial_done
            super().__init__(*args, **kwargs)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.on_trial_done(trial)

    return ReportingTuner


def make_tuner(tune_cfg: TuneConfig, hypermodel: RpsHyperModel, strategy, resume: bool,
               on_trial_done) -> keras_tuner.Tuner:
    """The keras-tuner tuner over ``hypermodel``; ``resume`` reloads the project
    (``overwrite=False``)."""
    t = tune_cfg
    common = dict(objective=keras_tuner.Objective(t.objective, OBJECTIVES[t.objective]),
                  seed=t.base.seed, directory=str(t.out_dir), project_name="keras_tuner",
                  overwrite=not resume, distribution_strategy=strategy, on_trial_done=on_trial_done)
    quiet = tune_cfg.base.log_format != "text"
    # keras-tuner prints "Reloading Tuner from ..." to stdout: keep stdout clean for JSON lines.
    with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stdout):
        if tune_cfg.tuner == "bayesian":
            return _tuner_class("bayesian")(hypermodel, max_trials=t.max_trials or 10, **common)
        tuner = _tuner_class("hyperband")(hypermodel, max_epochs=t.max_epochs, factor=t.factor,
                                          hyperband_iterations=t.hyperband_iterations, **common)
    # Hyperband takes no max_trials argument, but its Oracle stops at `oracle.max_trials`.
    tuner.oracle.max_trials = tune_cfg.max_trials
    return tuner


def planned_trials(tune_cfg: TuneConfig) -> int:
    """How many trials the whole search runs."""
    if tune_cfg.tuner == "bayesian":
        return tune_cfg.max_trials or 10
    trials, _ = hyperband_budget(tune_cfg.max_epochs, tune_cfg.factor,
                                 tune_cfg.hyperband_iterations)
    return min(trials, tune_cfg.max_trials or trials)


def leaderboard(tuner: keras_tuner.Tuner, tune_cfg: TuneConfig) -> list[dict[str, Any]]:
    """One row per trial, best first: ``rank`` (empty for failed trials), ``trial``, the
    objective, ``epochs`` trained, ``best_epoch``, each search-space key, ``status``."""
    sign = -1 if OBJECTIVES[tune_cfg.objective] == "max" else 1
    trials = sorted(tuner.oracle.trials.values(),
                    key=lambda t: (t.score is None, sign * (t.score or 0.0), t.trial_id))
    rows = []
    for rank, t in enumerate(trials, 1):
        values = t.hyperparameters.values
        rows.append({"rank": rank if t.score is not None else "", "trial": t.trial_id,
                     tune_cfg.objective: "" if t.score is None else round(float(t.score), 4),
                     "epochs": values.get("tuner/epochs", tune_cfg.max_epochs),
                     "best_epoch": t.best_step + 1 if t.score is not None else "",
                     **{k: values.get(k, "") for k in tune_cfg.search_space},
                     "status": t.status})
    return rows


def write_outputs(rows: list[dict[str, Any]], tune_cfg: TuneConfig, best: Config) -> Path:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``best.yaml``; return ``best.yaml``."""
    out = tune_cfg.out_dir
    write_leaderboard(rows, out, f"Leaderboard: tune-{tune_cfg.name} ({tune_cfg.tuner}, "
                                 f"{tune_cfg.objective} on the validation split)")
    top = rows[0]
    values = to_dict(best)
    values.pop("log_format", None)
    comment = (f"# rps train --config {out / 'best.yaml'}\n"
               f"# Best of {len(rows)} trials of `rps tune` ({tune_cfg.tuner}): {tune_cfg.objective} "
               f"{top[tune_cfg.objective]} on the validation split after {top['epochs']} epochs.\n"
               f"# train.epochs is the search's max_epochs; raise it for the final run "
               f"(e.g. train.epochs=25). Test accuracy: see the run's metrics.json.\n")
    return write_atomic(out / "best.yaml", comment + yaml.safe_dump(values, sort_keys=False))


def _resolved(tune_cfg: TuneConfig) -> dict[str, Any]:
    values = {k: getattr(tune_cfg, k) for k in _SETTINGS}
    base = to_dict(tune_cfg.base)
    base.pop("log_format", None)
    return {**values, "search_space": tune_cfg.search_space, "base": base}


def _prepare_folder(tune_cfg: TuneConfig, resume: bool) -> None:
    """Refuse to overwrite a finished or started search; on resume, refuse a changed one."""
    saved = tune_cfg.out_dir / "tune_config.yaml"
    if saved.is_file() and not resume:
        raise FileExistsError(
            f"{tune_cfg.out_dir} already holds a search. Continue it with `rps tune --resume`, or "
            f"start another with a new name (tune.name=<new>) or after deleting the folder.")
    if saved.is_file() and yaml.safe_load(saved.read_text()) != _resolved(tune_cfg):
        raise ValueError(f"{saved} was written by a different search (settings, space or base "
                         "config changed): resume it with the same tune file and overrides, or "
                         "pass tune.name=<new> to start another.")
    write_atomic(saved, yaml.safe_dump(_resolved(tune_cfg), sort_keys=False))


def _reporter(tune_cfg: TuneConfig, total: int):
    """A tqdm bar over trials (``text`` mode), a function reporting a finished trial (a line
    under the bar, or a JSON line), and a callback showing each epoch in the bar's postfix."""
    mode = tune_cfg.base.log_format
    bar = tqdm(total=total, desc="tuning trials", unit="trial", disable=mode != "text")

    def show_epoch(epoch: int, logs: dict | None) -> None:
        bar.set_postfix_str(f"epoch {epoch + 1}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in (logs or {}).items() if k.startswith("val_")))

    def report(trial) -> None:
        score = None if trial.score is None else float(trial.score)
        values = {k: trial.hyperparameters.values.get(k) for k in tune_cfg.search_space}
        epochs = trial.hyperparameters.values.get("tuner/epochs", tune_cfg.max_epochs)
        bar.update(1)
        if mode == "json":
            print(json.dumps({"event": "trial", "trial": trial.trial_id, "status": trial.status,
                              tune_cfg.objective: score, "epochs": epochs, "values": values}),
                  flush=True)
        elif mode == "text":
            result = "failed" if score is None else f"{score:.4f}"
            bar.write(f"trial {trial.trial_id}: {tune_cfg.objective} {result} after {epochs} "
                      f"epochs {values}")

    return bar, report, keras.callbacks.LambdaCallback(on_epoch_end=show_epoch)


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """``run_search``'s result: output folder, leaderboard rows (best first), best config."""

    out_dir: Path
    rows: list[dict[str, Any]]
    best_yaml: Path
    best: Config


def run_search(tune_cfg: TuneConfig, resume: bool = False) -> TuneResult:
    """Run (or continue) the search and write the leaderboard and ``best.yaml``.

    Args:
        tune_cfg: see ``load_tune_config``.
        resume: continue the search in ``tune_cfg.out_dir`` (keras-tuner ``overwrite=False``):
            finished trials are kept, an interrupted trial runs again.

    Returns:
        A ``TuneResult``.

    Raises:
        FileExistsError: the folder holds a search and ``resume`` is false.
        ValueError: resuming a search whose settings changed, or no trial completed.
    """
    strategy = make_strategy(tune_cfg.base.train)  # first: it may split the CPU into devices
    _prepare_folder(tune_cfg, resume)
    splits = load_splits(tune_cfg.base.data, tune_cfg.base.seed)
    hypermodel = RpsHyperModel(tune_cfg, splits)
    bar, report, show_epoch = _reporter(tune_cfg, planned_trials(tune_cfg))
    tuner = make_tuner(tune_cfg, hypermodel, strategy, resume, report)
    bar.update(sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()))  # resumed
    log.info("search %s: %s, %d trials planned, objective %s on the validation split",
             tune_cfg.out_dir, tune_cfg.tuner, planned_trials(tune_cfg), tune_cfg.objective)
    callbacks = make_callbacks(tune_cfg.base, tune_cfg.out_dir, tuning=True) + [show_epoch]
    with bar:
        tuner.search(epochs=tune_cfg.max_epochs, verbose=0, callbacks=callbacks)
    rows = leaderboard(tuner, tune_cfg)
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials:
        messages = [t.message for t in tuner.oracle.trials.values() if t.message]
        raise ValueError(f"no trial of {tune_cfg.out_dir} completed; last error:\n"
                         + (messages[-1][-2000:] if messages else "(none recorded)"))
    best = trial_config(tune_cfg, best_trials[0].hyperparameters.values)
    return TuneResult(tune_cfg.out_dir, rows, write_outputs(rows, tune_cfg, best), best)
