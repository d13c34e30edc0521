"""The ``rps`` command line: a thin layer of argument parsing over the library.

Usage: ``rps train --config configs/default.yaml train.epochs=3``; ``rps --help`` lists the verbs.

Each verb loads the config, applies ``key=value`` overrides, validates, and makes one library
call. Only this module reads ``sys.argv`` and configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/default.yaml"
DEFAULT_TUNE = "configs/tune.yaml"


def _format_overrides(args) -> list[str]:
    """``--quiet`` / ``--json-lines`` as a ``log_format`` override (none: the config decides)."""
    mode = getattr(args, "log_format", None)
    return [f"log_format={mode}"] if mode else []


def _config(args):
    from rps.config import load_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    cfg = load_config(path, list(args.overrides) + _format_overrides(args))
    _follow_config(args, cfg.log_format)
    return cfg


def _follow_config(args, mode: str) -> None:
    """A ``log_format`` set in the YAML file (no flag given) takes effect once it is read."""
    if mode != (getattr(args, "log_format", None) or "text"):
        args.log_format = mode
        setup_output(mode, args.verbose)


def _emit(args, text: str, **result) -> None:
    """Print the command's closing lines: ``text`` in text mode, one ``{"event": "done", ...}``
    JSON line in JSON-lines mode, nothing when quiet."""
    mode = getattr(args, "log_format", None) or "text"
    if mode == "json":
        print(json.dumps({"event": "done", "verb": args.verb, **result}, default=str), flush=True)
    elif mode == "text":
        print(text)


def setup_output(mode: str, verbose: bool = False) -> None:
    """Configure logging and library output for a ``log_format``: ``text`` (INFO log lines on
    stderr, progress bars), ``json`` (stdout holds only JSON lines; WARNING and worse on stderr)
    or ``quiet`` (errors only: Python warnings, TensorFlow's C++ and Keras's messages off)."""
    level = {"text": logging.INFO, "json": logging.WARNING, "quiet": logging.ERROR}[mode]
    level = logging.DEBUG if verbose else level
    logging.basicConfig(level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The handler filters too: some libraries set their own logger's level (TensorFlow: INFO).
    logging.getLogger().handlers[0].setLevel(level)
    logging.captureWarnings(mode != "text")  # warnings become log records, filtered by level
    if mode != "text":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3" if mode == "quiet" else "2"
        with _stderr_silenced() if mode == "quiet" else contextlib.nullcontext():
            import keras  # imports TensorFlow

        # Keras then sends its messages (e.g. "Saved artifact at ...") to logging, not stdout.
        keras.config.disable_interactive_logging()


@contextlib.contextmanager
def _stderr_silenced():
    """Point file descriptor 2 at /dev/null for a while: TensorFlow's C++ start-up lines are
    printed before its logging is set up, where no environment variable reaches them."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cmd_train(args) -> int:
    from rps import cluster

    if args.cluster:
        os.environ["TF_CONFIG"] = cluster.cluster_tf_config(args.cluster.split(","),
                                                            args.task_index)
    worker = cluster.worker_info()  # a malformed TF_CONFIG stops here, before any work
    from rps.pipeline import run

    cfg = _config(args)
    try:
        run_dir = run(cfg, argv=sys.argv)
    except Exception as err:
        import tensorflow as tf

        lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
        if worker.multi_worker and isinstance(err, lost):
            raise ValueError(
                f"{worker.name}: lost contact with another worker of the cluster "
                f"({type(err).__name__}: {str(err).strip().splitlines()[0][:300]}). Restart "
                f"every worker with the same command: training resumes at the last epoch that "
                f"all of them completed.") from err
        raise
    if not worker.is_chief:
        _emit(args, f"{worker.name} finished training (scratch folder {run_dir}); the chief "
                    f"writes the run folder", run_dir=run_dir, worker=worker.name)
        return 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines, top1 = [], {}
    for split in ("test", "validation_folder"):
        for artifact, m in metrics.get(split, {}).items():
            lines.append(f"{split:>17} {artifact:>11}: top-1 accuracy {m['top1_accuracy']:.4f}")
            top1.setdefault(split, {})[artifact] = m["top1_accuracy"]
    lines.append(f"run folder: {run_dir}\nreport: {run_dir / 'report.md'}\n"
                 f"next: rps predict {run_dir / 'model.tflite'} <image or folder>")
    _emit(args, "\n".join(lines), run_dir=run_dir, report=run_dir / "report.md",
          top1_accuracy=top1)
    return 0


def cmd_tune(args) -> int:
    from rps.tune import load_tune_config, run_search

    tune_cfg = load_tune_config(args.config or DEFAULT_TUNE,
                                list(args.overrides) + _format_overrides(args))
    _follow_config(args, tune_cfg.base.log_format)
    result = run_search(tune_cfg, resume=args.resume)
    objective = tune_cfg.objective
    text = ((result.out_dir / "leaderboard.md").read_text()
            + f"\nresults: {result.out_dir / 'leaderboard.csv'}, {result.out_dir / 'leaderboard.md'}"
            + f"\nnext: rps train --config {result.best_yaml}")
    _emit(args, text, out_dir=result.out_dir, best_yaml=result.best_yaml,
          leaderboard=result.out_dir / "leaderboard.csv", trials=len(result.rows),
          **{f"best_{objective}": result.rows[0][objective]})
    return 0


def cmd_export(args) -> int:
    from rps.pipeline import reexport

    run_dir = reexport(Path(args.run_dir), quantize=args.quantize)
    print(f"exports written to {run_dir}\nnext: rps evaluate {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from rps.data import load_splits
    from rps.pipeline import evaluate_run
    from rps.runs import read_run_config, require_complete, write_json

    run_dir = require_complete(Path(args.run_dir))
    cfg = read_run_config(run_dir)
    if args.overrides:
        from rps.config import build_config, to_dict

        cfg = build_config(to_dict(cfg), args.overrides)
    splits = load_splits(cfg.data, cfg.seed)
    if args.runtime == "mediapipe":
        from rps.pipeline import evaluate_run_mediapipe

        results = evaluate_run_mediapipe(run_dir, cfg, splits)
        out = write_json(run_dir / "evaluation_mediapipe.json", results)
    else:
        results = evaluate_run(run_dir, cfg, splits)
        out = write_json(run_dir / "evaluation.json", results)
    for split, by_artifact in results.items():
        for artifact, m in by_artifact.items():
            print(f"{split:>17} {artifact:>11}: top-1 accuracy {m['top1_accuracy']:.4f}"
                  + (f", agreement with keras {m['agreement']:.4f}" if "agreement" in m else ""))
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args) -> int:
    from rps.predict import predict_files

    results = predict_files(args.model, args.inputs)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            probs = " ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['path']}: {r['label']} ({r['probability']:.3f})  [{probs}]")
    return 0


def cmd_bench_export(args) -> int:
    from rps.tflite import bench, format_table

    docs = args.docs or "docs/tflite_variants.md"
    result = bench(Path(args.export), docs_file=docs)
    print(format_table(result["variants"], result["keras_accuracy"], result["split"]))
    for failure in result["targets_failed"]:
        print(f"target not met: {failure}")
    print(f"table written to {Path(args.export) / 'tflite_variants.md'} and {docs}")
    return 0


def cmd_bench(args) -> int:
    if args.export:
        return cmd_bench_export(args)
    from rps.bench import (ablation_markdown, backend_epoch_times, run_ablations, run_bench,
                           write_benchmarks_doc)

    cfg = _config(args)
    out_dir = Path(args.out or Path(cfg.output_dir) / f"bench-{cfg.run_name}")
    if args.backends:
        backend_epoch_times(cfg, out_dir, args.backends.split(","))
        print((out_dir / "backends.md").read_text())
    elif args.ablations:
        result = run_ablations(cfg, out_dir, accuracy=args.ablations in ("accuracy", "all"),
                               speed=args.ablations in ("speed", "all"), resume=args.resume)
        print(ablation_markdown(result))
    else:
        seeds = [cfg.seed + i for i in range(args.seeds)]
        run_bench(cfg, out_dir, seeds, args.reference_epochs,
                  config_path=args.config or DEFAULT_CONFIG, overrides=args.overrides)
        print((out_dir / "bench.md").read_text())
    if args.docs:
        write_benchmarks_doc(out_dir, args.docs)
    print(f"results in {out_dir}" + (f"; table in {args.docs}" if args.docs else ""))
    return 0


def cmd_download(args) -> int:
    from rps.download import main as download_main

    return download_main(["--to", args.to, "--source", args.source])


def format_data_report(report: dict) -> str:
    """``rps check-data``'s text: one line per split, then the warnings and errors, then the
    verdict and the command to run next."""
    lines = [f"data folder: {report['root']} (classes: {', '.join(report['class_names']) or '-'})"]
    for split, summary in report["splits"].items():
        per_class = ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())
        lines.append(f"  {split:>10}: {summary['images']} usable image(s) ({per_class}), "
                     f"{summary['bad']} bad")
    for kind in ("warnings", "errors"):
        if report[kind]:
            lines.append(f"{kind} ({len(report[kind])}):")
            lines += [f"  - {item}".replace("\n", "\n    ") for item in report[kind]]
    lines.append(f"usable: yes\nnext: rps train data.root={report['root']}" if report["usable"]
                 else "usable: no; fix the errors above (or see the data.* keys they name)")
    return "\n".join(lines)


def cmd_check_data(args) -> int:
    from rps.data import check_folder

    cfg = _config(args)
    report = check_folder(args.folder, cfg.data)
    print(json.dumps(report, indent=2) if args.json else format_data_report(report))
    return 0 if report["usable"] else 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per verb."""
    parser = argparse.ArgumentParser(prog="rps", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def with_config(p):
        p.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. train.epochs=3 data.root=/my/images")
        return p

    output = argparse.ArgumentParser(add_help=False)
    modes = output.add_mutually_exclusive_group()
    modes.add_argument("--quiet", dest="log_format", action="store_const", const="quiet",
                       help="print errors only (log_format=quiet)")
    modes.add_argument("--json-lines", dest="log_format", action="store_const", const="json",
                       help="stdout: one JSON object per epoch / trial, then a final one "
                            "(log_format=json)")

    p = with_config(verbs.add_parser("train", help="train, export and evaluate one run",
                                     parents=[output]))
    p.add_argument("--cluster", metavar="HOST:PORT,HOST:PORT,...",
                   help="train on several workers (MultiWorkerMirroredStrategy): every worker's "
                        "address, the same list on each; sets TF_CONFIG (worker 0 is the chief)")
    p.add_argument("--task-index", type=int, default=0,
                   help="this worker's position in --cluster (default 0)")
    p.set_defaults(func=cmd_train)
    p = verbs.add_parser("tune", parents=[output],
                         help="keras-tuner search (Hyperband or Bayesian) on the validation split")
    p.add_argument("--config", help=f"tune file (default: {DEFAULT_TUNE})")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search of the same tune file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="base config overrides (e.g. data.root=/my/images), or search settings "
                        "as tune.<setting>=value (e.g. tune.max_trials=4)")
    p.set_defaults(func=cmd_tune)
    p = verbs.add_parser("export", help="re-export a complete run's model.keras")
    p.add_argument("run_dir", help="run folder, e.g. saved_models/latest")
    p.add_argument("--quantize", metavar="none|float16|dynamic|int8|all",
                   help="TFLite variants besides float32 model.tflite, comma-separated "
                        "(default: the run's export.quantize)")
    p.set_defaults(func=cmd_export)
    p = verbs.add_parser("evaluate", help="evaluate every export of a run on test/ and validation/")
    p.add_argument("run_dir", help="run folder, e.g. saved_models/latest")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data overrides, e.g. data.root=/other/images")
    p.add_argument("--runtime", choices=("litert", "mediapipe"), default="litert",
                   help="mediapipe: every .tflite variant through MediaPipe Tasks ImageClassifier")
    p.set_defaults(func=cmd_evaluate, config=None)
    p = verbs.add_parser("predict", help="classify image files or folders")
    p.add_argument("model", help=".keras, .tflite or SavedModel folder (labels.txt beside it)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_predict)
    p = with_config(verbs.add_parser("bench", help="time training against the seed recipe"))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds to train (default 3)")
    p.add_argument("--reference-epochs", type=int, default=25,
                   help="epochs of the seed recipe reference (default 25 as published; 0 skips)")
    p.add_argument("--out", help="results folder (default <output_dir>/bench-<run_name>)")
    p.add_argument("--docs", help="also write the markdown table to this file")
    p.add_argument("--ablations", choices=("accuracy", "speed", "all"),
                   help="run the ablation tables instead of the seed race")
    p.add_argument("--resume", action="store_true",
                   help="with --ablations: keep the rows a stopped run left in the results "
                        "folder's ablations.json (same config, CPU and versions), run the rest")
    p.add_argument("--backends", metavar="tensorflow,jax,torch",
                   help="instead of the race: seconds per training epoch on each Keras backend")
    p.add_argument("--export", metavar="RUN_DIR",
                   help="instead of the training race: size, accuracy (LiteRT and MediaPipe) and "
                        "latency table of a run's TFLite variants (--docs default: "
                        "docs/tflite_variants.md)")
    p.set_defaults(func=cmd_bench)
    p = verbs.add_parser("download", help="download the official data set")
    p.add_argument("--to", default="data/rps", help="destination folder (default: data/rps)")
    p.add_argument("--source", choices=("zips", "tfds"), default="zips")
    p.set_defaults(func=cmd_download)
    p = with_config(verbs.add_parser(
        "check-data", help="check an image folder (layout, every file, train/test duplicates); "
                           "exit status 0 when rps train would accept it, 2 otherwise"))
    p.add_argument("folder", help="data root holding train/<label>/ (and test/, validation/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rps`` console script. User errors (bad config, missing or bad files)
    print one clear message and exit with status 2; no traceback."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    # parse_known_args, then the key=value leftovers: argparse stops filling a nargs="*"
    # positional at the first flag, so `rps train a=1 --quiet b=2` would leave b=2 unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any("=" not in e or e.startswith("-")
                                                        for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info lines
    mode = getattr(args, "log_format", None) or "text"
    setup_output(mode, args.verbose)
    # Text mode: log lines are written above any tqdm progress bar instead of through it.
    redirect = logging_redirect_tqdm() if mode == "text" else contextlib.nullcontext()
    try:
        with redirect:
            return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"rps {args.verb}: error: {err}", file=sys.stderr)
        if getattr(args, "log_format", None) == "json":
            print(json.dumps({"event": "error", "verb": args.verb, "message": str(err)}), flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
