"""Benchmarks: time to reach a test accuracy, against the seed recipe; input pipeline rate.

Usage: ``rps bench`` (``make bench``). Results go to ``<run folder>/bench.json`` and ``bench.md``.

The benchmark is the only code that reads ``test/`` during training, and only to time the race
to a target accuracy: a callback evaluates the current weights on ``test/`` after each epoch,
with its own time excluded from the training clock. Nothing it measures feeds back into
training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from rps.models import probabilities


class TestAccuracyRace(keras.callbacks.Callback):
    """After each epoch, record the training time so far (seconds, this callback's own
    evaluation time excluded) and the top-1 accuracy of the current weights on held-out images.

    Args:
        images: ``float32 [N, S, S, 3]`` pixels 0-255.
        labels: ``int [N]`` class indices.
    """

    __test__ = False  # a Keras callback, not a pytest test class

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        super().__init__()
        self.images, self.labels = images, np.asarray(labels)
        self.records: list[dict] = []
        self._start = 0.0
        self._excluded = 0.0

    def on_train_begin(self, logs=None):
        self._start, self._excluded = time.perf_counter(), 0.0

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        scores = probabilities(self.model.predict(self.images, batch_size=128, verbose=0))
        accuracy = float(np.mean(np.argmax(scores, 1) == self.labels))
        self.records.append({"epoch": epoch + 1, "train_seconds": now - self._start - self._excluded,
                             "test_accuracy": accuracy})
        self._excluded += time.perf_counter() - now

    def time_to(self, target: float) -> float | None:
        """Training seconds until the test accuracy first reached ``target`` (None: never)."""
        return next((r["train_seconds"] for r in self.records if r["test_accuracy"] >= target), None)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or ``platform.processor()``)."""
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
    """Measured dense ``n x n`` matmul throughput of this machine in GFLOP/s (``2 n^3`` FLOPs
    per product), the roofline that training throughput is compared with."""
    import tensorflow as tf

    a = tf.random.uniform([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()  # warm-up and tracing
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass of one image, counted by TensorFlow's graph profiler
    (multiply and add counted separately). https://www.tensorflow.org/api_docs/python/tf/compat/v1/profiler/profile"""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def images_per_second(batches, num_batches: int) -> float:
    """Images per second delivered by an iterable of ``(images, labels)`` batches, timed over
    ``num_batches`` batches after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(num_batches):
        images, _ = next(iterator)
        count += len(images)
    return count / (time.perf_counter() - start)


def seed_recipe_generator(augment: bool):
    """The seed talk's ``ImageDataGenerator`` (Keras legacy API, needs scipy). ``rescale`` is
    left out because ``seed_cnn`` rescales inside the model: the arithmetic is the same."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    if not augment:
        return ImageDataGenerator()
    return ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                              shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
                              fill_mode="nearest")


def seed_recipe_race(root, epochs: int, batch_size: int = 126, image_size: int = 150,
                     seed: int = 42) -> dict:
    """Train the seed recipe as its course notebook does and time its race on ``test/``.

    The recipe: ``ImageDataGenerator`` (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal
    flip, nearest fill) over all of ``train/`` at 150x150, batch 126; the ``seed_cnn`` model
    (3.47M parameters); RMSprop (learning rate 0.001); categorical cross-entropy. Test images
    are read by the same generator class, without augmentation, as the notebook does.

    Returns:
        ``{"records": [...], "train_seconds", "time_to_98", "final_test_accuracy",
        "num_parameters"}``.
    """
    from rps.config import ModelConfig
    from rps.models import build_seed_cnn

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy("float32")
    root = Path(root)
    flow = seed_recipe_generator(True).flow_from_directory(
        str(root / "train"), target_size=(image_size, image_size), batch_size=batch_size,
        class_mode="categorical", seed=seed)
    test_flow = seed_recipe_generator(False).flow_from_directory(
        str(root / "test"), target_size=(image_size, image_size), batch_size=batch_size,
        class_mode="sparse", shuffle=False)
    test_x = np.concatenate([test_flow[i][0] for i in range(len(test_flow))])
    test_y = np.concatenate([test_flow[i][1] for i in range(len(test_flow))]).astype(int)
    model = build_seed_cnn(ModelConfig(name="seed_cnn"), 3, image_size)
    model.compile(optimizer=keras.optimizers.RMSprop(0.001),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    race = TestAccuracyRace(test_x, test_y)
    start = time.perf_counter()
    model.fit(flow, epochs=epochs, callbacks=[race], verbose=2)
    return {"records": race.records,
            "train_seconds": time.perf_counter() - start - race._excluded,
            "time_to_98": race.time_to(0.98),
            "final_test_accuracy": race.records[-1]["test_accuracy"],
            "num_parameters": model.count_params()}


def race(cfg, run_dir, splits=None) -> dict:
    """Train ``cfg`` once (the normal training path, ``rps.train.train``) while timing the race
    on ``test/``; evaluate the selected checkpoint on ``test/`` and ``validation/``.

    A race times one training from its first epoch: a ``run_dir`` left by a stopped race is
    deleted first, since its ``BackupAndRestore`` state would resume the training and cut the
    timed epochs short."""
    import shutil

    from rps.data import load_splits, make_eval_dataset
    from rps.evaluate import collect
    from rps.train import count_steps_per_epoch, train

    if Path(run_dir).exists():
        shutil.rmtree(run_dir)
    splits = splits or load_splits(cfg.data, cfg.seed)
    test_x, test_y = collect(make_eval_dataset(splits.test, cfg.data))
    timer = TestAccuracyRace(test_x, test_y)
    result = train(cfg, splits, run_dir, extra_callbacks=[timer])

    def accuracy(split):
        if split is None:
            return None
        x, y = collect(make_eval_dataset(split, cfg.data))
        scores = probabilities(result.model.predict(x, verbose=0, batch_size=128))
        return float(np.mean(np.argmax(scores, 1) == y))

    epoch_seconds = np.diff([0.0] + [r["train_seconds"] for r in timer.records])
    steady = float(np.median(epoch_seconds[1:])) if len(epoch_seconds) > 1 else float(epoch_seconds[0])
    return {"seed": cfg.seed, "records": timer.records, "time_to_98": timer.time_to(0.98),
            "train_seconds": timer.records[-1]["train_seconds"],
            "test_accuracy": accuracy(splits.test),
            "validation_folder_accuracy": accuracy(splits.validation_folder),
            "train_images_per_second": count_steps_per_epoch(cfg, splits)
            * cfg.data.global_batch_size / steady,
            "num_parameters": result.model.count_params(),
            "forward_flops": forward_flops(result.model)}


def input_pipeline_rates(cfg, splits, num_batches: int = 100) -> dict:
    """Images per second of the training input pipeline (decoded images cached, augmentation
    on) and of the seed recipe's ``ImageDataGenerator`` with its own settings (150x150 pixels,
    batch 126, as ``seed_recipe_race`` trains it)."""
    from rps.augment import make_augmenter
    from rps.data import make_train_dataset

    dataset = make_train_dataset(splits.train, cfg, make_augmenter(cfg.augment, cfg.seed))
    for _ in dataset:  # first pass fills the cache of decoded images
        pass
    ours = images_per_second(dataset.repeat(), num_batches)
    flow = seed_recipe_generator(True).flow_from_directory(
        str(Path(cfg.data.root) / "train"), target_size=(150, 150), batch_size=126,
        class_mode="sparse", seed=cfg.seed)
    reference = images_per_second((flow[i % len(flow)] for i in range(num_batches + 1)), num_batches)
    return {"tf_data_images_per_second": ours, "image_data_generator_images_per_second": reference}


def summarize(ours: list[dict], reference: dict | None) -> dict:
    """Means and spreads over seeds, the speed-up against the seed recipe, and the achieved
    training FLOP rate (3x forward FLOPs per image: forward, input gradient, weight gradient)."""
    tests = np.array([r["test_accuracy"] for r in ours])
    times = [r["time_to_98"] for r in ours]
    reached = [t for t in times if t is not None]
    valid = [r["validation_folder_accuracy"] for r in ours]  # None: no validation/ folder
    summary = {"test_accuracy_mean": float(tests.mean()), "test_accuracy_min": float(tests.min()),
               "test_accuracy_std": float(tests.std()),
               "validation_folder_accuracy_min": None if None in valid else min(valid),
               "time_to_98_mean": float(np.mean(reached)) if len(reached) == len(times) else None,
               "train_images_per_second": float(np.mean([r["train_images_per_second"] for r in ours])),
               "forward_flops": ours[0]["forward_flops"], "num_parameters": ours[0]["num_parameters"]}
    summary["training_gflops_per_second"] = 3 * summary["forward_flops"] * summary["train_images_per_second"] / 1e9
    if reference and reference.get("time_to_98") and summary["time_to_98_mean"]:
        summary["speedup_to_98"] = reference["time_to_98"] / summary["time_to_98_mean"]
    return summary


# Issue 4's targets for the default config (docs/benchmarks.md), by key of the bench summary
# (plus ``pipeline_headroom``, tf.data images/s over training images/s): the goal's name, ">="
# or "<=", the target, and the format of target and measured value.
GOALS = {
    "test_accuracy_mean": ("1. test/ top-1, mean over seeds", ">=", 0.995, "{:.4f}"),
    "test_accuracy_min": ("1. test/ top-1, every seed", ">=", 0.99, "{:.4f}"),
    "validation_folder_accuracy_min": ("1. validation/ top-1, every seed", ">=", 1.0, "{:.4f}"),
    "speedup_to_98": ("2. speed-up to 98% test top-1", ">=", 5.0, "{:.1f}x"),
    "pipeline_headroom": ("3. tf.data images/s over training images/s", ">=", 5.0, "{:.1f}x"),
    "num_parameters": ("4. parameters", "<=", 350_000, "{:,}"),
}


def pipeline_headroom(result: dict) -> float:
    """Goal 3's figure: the tf.data pipeline's images/s over the images/s that training
    consumed (mean over seeds), from a ``run_bench`` result. Dimensionless; above 1 means the
    input pipeline outruns training."""
    return result["pipeline"]["tf_data_images_per_second"] / result["summary"]["train_images_per_second"]


def goal_checks(result: dict) -> list[dict]:
    """Each of issue 4's goals (``GOALS``) against a ``run_bench`` result: what it asks, what
    was measured, and whether it is met (``None`` where the run did not measure it, e.g. without
    the seed recipe's race or without a ``validation/`` folder).

    Returns:
        One dict per goal: ``goal`` (str), ``target`` (str), ``measured`` (str), ``met``
        (bool or None).
    """
    values = {**result["summary"], "pipeline_headroom": pipeline_headroom(result)}
    checks = []
    for key, (goal, op, target, pattern) in GOALS.items():
        value = values.get(key)
        met = None if value is None else bool(value >= target if op == ">=" else value <= target)
        checks.append({"goal": goal, "target": f"{op} {pattern.format(target)}",
                       "measured": "not measured" if value is None else pattern.format(value),
                       "met": met})
    return checks


def _fmt(value, pattern="{:.4f}"):
    return "never" if value is None else pattern.format(value)


def environment() -> dict:
    """Where and when a benchmark ran: UTC date, CPU model and core count, library versions,
    and this CPU's dense 2048x2048 matmul rate in GFLOP/s (float32 and bfloat16)."""
    import datetime
    import os

    from rps.runs import library_versions

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "versions": library_versions(),
            "matmul_gflops_float32": matmul_gflops("float32"),
            "matmul_gflops_bfloat16": matmul_gflops("bfloat16")}


def environment_line(env: dict) -> str:
    """One markdown line naming the date, CPU, versions and matmul rates of ``environment()``."""
    return (f"Date: {env['date']}; CPU: {env['cpu']} ({env['cpu_count']} cores); "
            f"TensorFlow {env['versions']['tensorflow']}, Keras {env['versions']['keras']}; "
            f"dense 2048x2048 matmul: {env['matmul_gflops_float32']:.0f} GFLOP/s float32, "
            f"{env['matmul_gflops_bfloat16']:.0f} GFLOP/s bfloat16.")


def markdown_table(result: dict) -> str:
    """The benchmark as a markdown section: environment, one row per run, the summary."""
    env, s = result["environment"], result["summary"]
    lines = [environment_line(env), "",
             f"Config: `{result['config_path']}` {' '.join(result['overrides'])}", "",
             "| run | test top-1 | validation/ top-1 | time to 98% test (s) | training time (s) | "
             "parameters | FLOPs/image (forward) | training images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["ours"]:
        lines.append(f"| rps seed {r['seed']} | {r['test_accuracy']:.4f} | "
                     f"{_fmt(r['validation_folder_accuracy'])} | {_fmt(r['time_to_98'], '{:.0f}')} | "
                     f"{r['train_seconds']:.0f} | {r['num_parameters']:,} | {r['forward_flops'] / 1e6:.0f}M | "
                     f"{r['train_images_per_second']:.0f} |")
    ref = result.get("reference")
    if ref:
        lines.append(f"| seed recipe (reference) | {ref['final_test_accuracy']:.4f} | - | "
                     f"{_fmt(ref['time_to_98'], '{:.0f}')} | {ref['train_seconds']:.0f} | "
                     f"{ref['num_parameters']:,} | - | - |")
    p = result["pipeline"]
    lines += ["", f"- Test top-1 over {len(result['ours'])} seeds: mean {s['test_accuracy_mean']:.4f}, "
              f"min {s['test_accuracy_min']:.4f}, std {s['test_accuracy_std']:.4f}.",
              f"- Speed-up to 98% test accuracy against the seed recipe: "
              f"{_fmt(s.get('speedup_to_98'), '{:.1f}x')}.",
              f"- Input pipeline: tf.data {p['tf_data_images_per_second']:.0f} images/s vs training "
              f"{s['train_images_per_second']:.0f} images/s "
              f"({pipeline_headroom(result):.1f}x); the seed recipe's "
              f"ImageDataGenerator {p['image_data_generator_images_per_second']:.0f} images/s.",
              f"- Training compute: {s['training_gflops_per_second']:.1f} GFLOP/s "
              f"(3 x forward FLOPs x images/s), {100 * s['training_gflops_per_second'] / env['matmul_gflops_float32']:.1f}% "
              f"of the float32 matmul rate."]
    verdict = {True: "met", False: "not met", None: "not measured"}
    lines += ["", "| goal (issue 4) | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {verdict[g['met']]} |"
              for g in goal_checks(result)]
    return "\n".join(lines) + "\n"


def run_bench(cfg, out_dir: Path, seeds: list[int], reference_epochs: int,
              config_path: str = "", overrides: list[str] = ()) -> dict:
    """The whole benchmark: environment, input pipeline rates, one race per seed with the
    config, and the seed recipe's race; writes ``bench.json`` and ``bench.md`` into ``out_dir``.

    Args:
        cfg: the config to benchmark (``seed`` is replaced by each of ``seeds``).
        out_dir: folder for the results and the per-seed training folders.
        seeds: seeds to train with.
        reference_epochs: epochs of the seed recipe (25 as published; 0 skips it).

    Returns:
        The result dict written to ``bench.json``.
    """
    import dataclasses

    from rps.data import load_splits
    from rps.runs import write_atomic, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    pipeline = input_pipeline_rates(cfg, load_splits(cfg.data, cfg.seed))
    ours = []
    for seed in seeds:
        seed_cfg = dataclasses.replace(cfg, seed=seed)
        ours.append(race(seed_cfg, out_dir / f"seed-{seed}"))
    reference = (seed_recipe_race(cfg.data.root, reference_epochs, seed=cfg.seed)
                 if reference_epochs else None)
    result = {"environment": env, "config_path": config_path, "overrides": list(overrides),
              "pipeline": pipeline, "ours": ours, "reference": reference,
              "summary": summarize(ours, reference)}
    write_json(out_dir / "bench.json", result)
    write_atomic(out_dir / "bench.md", markdown_table(result))
    return result


# What each choice of the default buys. Accuracy ablations train the full schedule once each
# (one seed); speed ablations time two epochs of the training step each.
ACCURACY_ABLATIONS = {
    "default": [],
    "no robustness augmentation (geometry + contrast only)": [
        "augment.background=0", "augment.saturation=0", "augment.hue=0", "augment.blur=0",
        "augment.noise=0", "augment.brightness=0"],
    "no random background": ["augment.background=0"],
    "no colour jitter (brightness, saturation, hue)": [
        "augment.saturation=0", "augment.hue=0", "augment.brightness=0"],
    "no blur or noise": ["augment.blur=0", "augment.noise=0"],
    "zoom out 0.2 instead of 0.6": ["augment.zoom_out=0.2"],
    "no augmentation at all": ["augment.enabled=false"],
    "validation split by file instead of by hand": ["data.split_by=file"],
    "no validation split: trained on all of train/": ["data.validation_fraction=0"],
    "RMSprop, constant learning rate 0.001": [
        "train.optimizer=rmsprop", "train.schedule=constant", "train.learning_rate=0.001",
        "train.warmup_epochs=0", "train.label_smoothing=0"],
}
SPEED_ABLATIONS = {
    "default": [],
    "no cache (decode every epoch)": ["data.cache=false"],
    "no augmentation": ["augment.enabled=false"],
    "augmentation inside the train step": ["@augment_in_model"],
    "augmentation as one Keras layer per transform (not fused)": ["augment.fused=false"],
    "augmentation arithmetic not compiled by XLA": ["augment.jit_compile=false"],
    "150x150 input": ["data.image_size=150"],
    "seed_cnn architecture": ["model.name=seed_cnn"],
    "mixed_bfloat16": ["train.mixed_precision=mixed_bfloat16"],
    "XLA (jit_compile)": ["train.jit_compile=true"],
}


def train_throughput(cfg, splits, augment_in_model: bool = False, epochs: int = 3) -> float:
    """Training images per second: the median over the epochs after the first of ``epochs``
    (the first traces the graphs and fills the cache), no validation, no callbacks but the
    timer; the cost of the train step plus the input pipeline. A median of two or more epochs,
    not one, so that a few seconds of other work on the machine do not decide a row.

    Args:
        augment_in_model: apply the augmentation layers inside the model (in the train step)
            instead of in the ``tf.data`` pipeline.
    """
    from rps.augment import make_augment_layers, make_augmenter
    from rps.models import build_model
    from rps.train import compile_model, count_steps_per_epoch, make_train_batches

    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    num_classes = len(splits.class_names)
    augment = None if augment_in_model else make_augmenter(cfg.augment, cfg.seed)
    dataset = make_train_batches(cfg, splits, augment, 0, epochs)
    model = build_model(cfg.model, num_classes, cfg.data.image_size)
    if augment_in_model:
        inputs = keras.Input(model.input_shape[1:])
        x = inputs
        for layer in make_augment_layers(cfg.augment, cfg.seed):
            x = layer(x)
        model = keras.Model(inputs, model(x))
    steps = count_steps_per_epoch(cfg, splits)
    compile_model(model, cfg, steps)
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: times.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter() - times.pop()))
    # All epochs in one dataset + steps_per_epoch: one iterator for the whole fit, as
    # rps.train.train does.
    model.fit(dataset, steps_per_epoch=steps, epochs=epochs, callbacks=[timer], verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return steps * cfg.data.global_batch_size / float(np.median(times[1:] or times))


def augmentation_costs(cfg, splits, repeats: int = 5) -> dict:
    """Milliseconds to augment one training batch (``data.global_batch_size`` cached images),
    per layer and in all, with the fused layers and with one Keras layer per transform: the
    augmenter alone in a ``tf.function``, fastest of ``repeats`` calls. A fused layer is timed
    as the pipeline runs it: its random draws, then (under ``augment.jit_compile``) its
    arithmetic compiled by XLA; the pipeline also fuses consecutive layers, which only "all"
    shows.

    Returns:
        ``{"fused": {layer name: ms, ..., "all": ms}, "keras": {...}}``.
    """
    import dataclasses

    import tensorflow as tf

    from rps.augment import (compilable, make_augment_layers, make_augmenter, make_stage,
                             stateful_key)
    from rps.data import make_train_dataset

    images, _ = next(iter(make_train_dataset(splits.train, cfg)))  # float32, not augmented
    pixels = tf.cast(images, tf.uint8)  # what the augmenter gets in training

    def fastest(fn, x):
        fn(x)  # trace
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x).numpy()
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    costs = {}
    for label, fused in (("fused", True), ("keras", False)):
        aug_cfg = dataclasses.replace(cfg.augment, fused=fused)
        costs[label] = {}
        for layer in make_augment_layers(aug_cfg, cfg.seed):
            stage = make_stage([layer], compilable(layer, aug_cfg))
            # a fresh key per call, as each batch brings one in the pipeline
            costs[label][layer.name] = fastest(tf.function(lambda x, stage=stage: stage(
                x, stateful_key())), images)
        augmenter = make_augmenter(aug_cfg, cfg.seed)
        costs[label]["all"] = fastest(tf.function(augmenter), pixels) if augmenter else 0.0
    return costs


def _resume_ablations(path: Path, base: dict, env: dict) -> dict:
    """The rows of an earlier ``ablations.json`` at ``path`` that a resumed run may keep.

    Raises:
        ValueError: naming ``path`` when it was written with another config (the differing
            keys are listed) or on another CPU or library versions, whose rows would not compare.
    """
    prior = json.loads(path.read_text())
    here = json.loads(json.dumps(base))  # tuples -> lists, as the file stores them

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(prior.get("config", {})), flat(here)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if changed:
        raise ValueError(f"{path}: cannot resume, it was written with another config "
                         f"(differs in {', '.join(changed)}); drop --resume or pick another --out")
    old = prior.get("environment", {})
    for key in ("cpu", "cpu_count", "versions"):
        if old.get(key) != env[key]:
            raise ValueError(f"{path}: cannot resume, it was written with {key} {old.get(key)!r}, "
                             f"this run has {env[key]!r}; its rows would not compare")
    return prior


def run_ablations(cfg, out_dir: Path, accuracy: bool = True, speed: bool = True,
                  resume: bool = False) -> dict:
    """Run the ablation tables (see ``ACCURACY_ABLATIONS`` and ``SPEED_ABLATIONS``) and write
    ``ablations.json`` and the markdown of what ran (``ablations-speed.md``,
    ``ablations-accuracy.md``) into ``out_dir``.

    ``ablations.json`` is rewritten after every accuracy row. With ``resume``, the rows an
    earlier, stopped run left in it (same config, CPU and library versions, same overrides) are
    kept and only the missing rows run; the result names the kept rows and when they ran.

    Returns:
        ``{"accuracy": {name: race result}, "speed": {name: images per second}}``, plus
        ``"resumed": {"from": date, "accuracy": [names], "speed": [names]}`` when rows were
        kept.

    Raises:
        ValueError: ``resume`` and the earlier ``ablations.json`` does not match this run.
    """
    from rps.config import build_config, to_dict
    from rps.data import load_splits
    from rps.runs import write_atomic, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = to_dict(cfg)
    result: dict = {"environment": environment(), "config": base, "accuracy": {}, "speed": {}}
    json_path = out_dir / "ablations.json"
    if resume and json_path.exists():
        prior = _resume_ablations(json_path, base, result["environment"])
        tables = (("accuracy", ACCURACY_ABLATIONS), ("speed", SPEED_ABLATIONS))
        for kind, table in tables:
            for name, overrides in table.items():
                row = prior.get(kind, {}).get(name)
                if row is not None and (kind == "speed" or row.get("overrides") == overrides):
                    result[kind][name] = row
        if prior.get("augmentation_ms"):
            result["augmentation_ms"] = prior["augmentation_ms"]
        if result["accuracy"] or result["speed"]:
            result["resumed"] = {"from": prior["environment"]["date"],
                                 "accuracy": list(result["accuracy"]), "speed": list(result["speed"])}
    if speed and cfg.augment.enabled and "augmentation_ms" not in result:
        result["augmentation_ms"] = augmentation_costs(cfg, load_splits(cfg.data, cfg.seed))
    for name, overrides in SPEED_ABLATIONS.items() if speed else []:
        if name in result["speed"]:
            continue
        variant = build_config(base, [o for o in overrides if not o.startswith("@")])
        splits = load_splits(variant.data, variant.seed)
        result["speed"][name] = train_throughput(variant, splits, "@augment_in_model" in overrides)
    for i, (name, overrides) in enumerate(ACCURACY_ABLATIONS.items() if accuracy else []):
        if name in result["accuracy"]:
            continue
        variant = build_config(base, overrides)
        record = race(variant, out_dir / f"ablation-{i}")
        result["accuracy"][name] = {k: record[k] for k in (
            "test_accuracy", "validation_folder_accuracy", "time_to_98", "train_seconds")}
        result["accuracy"][name]["overrides"] = overrides
        write_json(json_path, result)  # partial results survive a stop
    # Table order, whatever order resumed and new rows arrived in.
    for kind, table in (("accuracy", ACCURACY_ABLATIONS), ("speed", SPEED_ABLATIONS)):
        result[kind] = {name: result[kind][name] for name in table if name in result[kind]}
    write_json(json_path, result)
    if speed:
        write_atomic(out_dir / "ablations-speed.md", ablation_markdown({**result, "accuracy": {}}))
    if accuracy:
        write_atomic(out_dir / "ablations-accuracy.md", ablation_markdown(
            {**result, "speed": {}, "augmentation_ms": None}))
    return result


BACKENDS = ("tensorflow", "jax", "torch")  # Keras backend names, which are their module names


def backend_epoch_times(cfg, out_dir: Path, backends: list[str], epochs: int = 2) -> dict:
    """Training speed of ``cfg`` on each Keras backend: one child process per backend
    (``KERAS_BACKEND`` is fixed per process) runs ``train_throughput`` (the same ``tf.data``
    pipeline, model and optimizer; no validation) and reports the last of ``epochs`` epochs.
    Writes ``backends.json`` and ``backends.md`` into ``out_dir``.

    Returns:
        ``{backend: {"images_per_second", "epoch_seconds"}}``, or ``{"error": message}`` for a
        backend that is not installed or failed.
    """
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    import yaml

    from rps.config import to_dict
    from rps.runs import write_atomic, write_json

    out_dir = Path(out_dir)
    cfg_file = out_dir / "backends-config.yaml"
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown Keras backend(s) {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join(BACKENDS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(cfg_file, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    result: dict = {}
    for backend in backends:
        if importlib.util.find_spec(backend) is None:
            result[backend] = {"error": f"{backend} is not installed (make install-backends)"}
        else:
            child = subprocess.run(
                [sys.executable, "-m", "rps.bench", str(cfg_file), str(epochs)],
                env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
                capture_output=True, text=True)
            lines = child.stdout.strip().splitlines()
            if child.returncode or not lines:
                result[backend] = {"error": (child.stderr.strip().splitlines()
                                             or ["no output"])[-1][:300]}
            else:
                result[backend] = json.loads(lines[-1])
        # Every backend gets its row in the JSON, a missing one included (it said "not
        # installed" only in the markdown before).
        write_json(out_dir / "backends.json", result)
    rows = ["| Keras backend | training images/s | seconds per epoch |", "|---|---|---|"]
    for backend, r in result.items():
        rows.append(f"| {backend} | {r['images_per_second']:.0f} | {r['epoch_seconds']:.1f} |"
                    if "error" not in r else f"| {backend} | not measured: {r['error']} | |")
    write_atomic(out_dir / "backends.md", "\n".join(rows) + "\n")
    return result


def ablation_markdown(result: dict) -> str:
    """The ablation tables as markdown, after the line of their ``environment`` (when given).

    ``result`` is ``run_ablations``'s return value or its ``ablations.json``; a partial one (a
    stopped run) gets a line naming the accuracy ablations it lacks.
    """
    lines = [environment_line(result["environment"]), ""] if result.get("environment") else []
    if result["speed"]:
        base = result["speed"].get("default")
        lines += ["| speed ablation | training images/s | vs default |", "|---|---|---|"]
        lines += [f"| {name} | {ips:.0f} | {ips / base:.2f}x |" for name, ips in result["speed"].items()]
        lines.append("")
    costs = result.get("augmentation_ms")
    if costs:
        lines += ["| augmentation of one batch, layer by layer (ms) | fused (default) | "
                  "one Keras layer per transform |", "|---|---|---|"]
        for key in ("fused", "keras"):
            for name, ms in costs[key].items():
                cells = f"{ms:.1f} | " if key == "fused" else f" | {ms:.1f}"
                if name != "all":
                    lines.append(f"| `{name}` | {cells} |")
        lines += [f"| all, as the pipeline calls it (uint8 in) | {costs['fused']['all']:.1f} | "
                  f"{costs['keras']['all']:.1f} |", ""]
    if result["accuracy"]:
        lines += ["| accuracy ablation (1 seed) | test top-1 | validation/ top-1 | "
                  "time to 98% test (s) | training time (s) |", "|---|---|---|---|---|"]
        for name, r in result["accuracy"].items():
            lines.append(f"| {name} | {r['test_accuracy']:.4f} | {_fmt(r['validation_folder_accuracy'])} | "
                         f"{_fmt(r['time_to_98'], '{:.0f}')} | {r['train_seconds']:.0f} |")
        missing = [name for name in ACCURACY_ABLATIONS if name not in result["accuracy"]]
        if missing:  # a stopped run: say which rows its ablations.json lacks
            lines += ["", "Not run (the run stopped before them): " + "; ".join(missing) + "."]
    resumed = result.get("resumed") or {}
    shown = [kind for kind in ("speed", "accuracy") if result[kind]]
    kept = [name + (f" ({kind})" if len(shown) > 1 else "") for kind in shown
            for name in resumed.get(kind, [])]
    if kept:
        lines += ["", f"Resumed run: these rows come from the stopped run of {resumed['from']} "
                      f"(same config, CPU and versions): " + "; ".join(kept) + "."]
    return "\n".join(lines) + "\n"


_DOC_SECTIONS = (  # (heading, file in the bench folder, lead paragraph)
    ("Race to 98% test accuracy, and accuracy over seeds", "bench.md", ""),
    ("Ablations: speed", "ablations-speed.md",
     "`rps bench --ablations speed`: training images per second, the mean of the second and "
     "third of three epochs (no validation), each row the default config with one change; then "
     "milliseconds to augment one batch of cached images, the augmenter alone in a "
     "`tf.function` (no training beside it)."),
    ("Ablations: accuracy", "ablations-accuracy.md",
     "`rps bench --ablations accuracy`: one full training each at the config's seed, without op "
     "determinism, so a row is one draw: the same config moves by several points of test top-1 "
     "from run to run (compare the default row here with the seeds of the race table), and "
     "`validation/` has 33 images (one image is 3 points). Read a gap of a few points as "
     "noise. docs/experiments.md says which default each table was run with."),
    ("Epoch time per Keras backend", "backends.md",
     "`rps bench --backends tensorflow,jax,torch` (`make bench-backends`): the default config's "
     "training step and `tf.data` pipeline, second of two epochs, no validation, one process "
     "per backend."),
)


def _markdown_sections(text: str) -> dict[str, str]:
    """Split markdown into ``{"## heading": body}`` at its second-level headings."""
    sections: dict[str, str] = {}
    heading = None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading is not None:
            sections[heading] += line
    return sections


def write_benchmarks_doc(out_dir: Path, docs_file: str | Path) -> Path:
    """Write ``docs_file`` (``docs/benchmarks.md``) from ``bench.md``, ``ablations-speed.md``,
    ``ablations-accuracy.md`` and ``backends.md`` of ``out_dir``, atomically.

    A section whose file is not in ``out_dir`` is kept as it stands in the existing
    ``docs_file``, so ``make ablations`` does not erase what ``make bench`` wrote, and back.
    """
    from rps.runs import write_atomic

    out_dir, docs_file = Path(out_dir), Path(docs_file)
    old = _markdown_sections(docs_file.read_text()) if docs_file.is_file() else {}
    parts = ["# Benchmarks", "",
             "Written by `make bench` (`rps bench`, the race against the seed recipe), "
             "`make ablations` (`rps bench --ablations all`) and `make bench-backends`. Every "
             "number comes from the JSON files of a bench folder; nothing here is typed in by "
             "hand.", ""]
    for heading, name, lead in _DOC_SECTIONS:
        if (out_dir / name).is_file():
            body = ([lead, ""] if lead else []) + [(out_dir / name).read_text().rstrip("\n"), ""]
            parts += [f"## {heading}", ""] + body
        elif heading in old:
            parts += [f"## {heading}", "", old[heading].strip("\n"), ""]
    return write_atomic(docs_file, "\n".join(parts))


if __name__ == "__main__":  # the child of backend_epoch_times: python -m rps.bench CONFIG EPOCHS
    import json
    import sys

    from rps.config import load_config
    from rps.data import load_splits

    config = load_config(sys.argv[1])
    data = load_splits(config.data, config.seed)
    rate = train_throughput(config, data, epochs=int(sys.argv[2]))
    steps = len(data.train) // config.data.global_batch_size
    print(json.dumps({"images_per_second": rate,
                      "epoch_seconds": steps * config.data.global_batch_size / rate}))
