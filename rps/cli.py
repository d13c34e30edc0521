"""The ``rps`` command line: a thin layer of argument parsing over the library.

Usage: ``rps train --config configs/default.yaml train.epochs=3``; ``rps --help`` lists the verbs.

Each verb loads the config, applies ``key=value`` overrides, validates, and makes one library
call. Only this module reads ``sys.argv`` and configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/default.yaml"


def _config(args):
    from rps.config import load_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path, args.overrides)


def cmd_train(args) -> int:
    from rps.pipeline import run

    cfg = _config(args)
    run_dir = run(cfg, argv=sys.argv)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("test", "validation_folder"):
        for artifact, m in metrics.get(split, {}).items():
            print(f"{split:>17} {artifact:>11}: top-1 accuracy {m['top1_accuracy']:.4f}")
    print(f"run folder: {run_dir}\nnext: rps predict {run_dir / 'model.tflite'} <image or folder>")
    return 0


def cmd_export(args) -> int:
    from rps.pipeline import reexport

    run_dir = reexport(Path(args.run_dir))
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
    results = evaluate_run(run_dir, cfg, load_splits(cfg.data, cfg.seed))
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


def cmd_bench(args) -> int:
    from rps.bench import run_bench
    from rps.runs import write_atomic

    cfg = _config(args)
    out_dir = Path(args.out or Path(cfg.output_dir) / f"bench-{cfg.run_name}")
    seeds = [cfg.seed + i for i in range(args.seeds)]
    result = run_bench(cfg, out_dir, seeds, args.reference_epochs,
                       config_path=args.config or DEFAULT_CONFIG, overrides=args.overrides)
    table = (out_dir / "bench.md").read_text()
    if args.docs:
        write_atomic(args.docs, "# Benchmarks\n\nWritten by `make bench` (`rps bench`); "
                     "see bench.json in the bench folder for every number.\n\n" + table)
    print(table)
    print(f"results: {out_dir / 'bench.json'}, {out_dir / 'bench.md'}"
          + (f", {args.docs}" if args.docs else ""))
    return 0 if result["ours"] else 1


def cmd_download(args) -> int:
    from rps.download import main as download_main

    return download_main(["--to", args.to, "--source", args.source])


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

    p = with_config(verbs.add_parser("train", help="train, export and evaluate one run"))
    p.set_defaults(func=cmd_train)
    p = verbs.add_parser("export", help="re-export a complete run's model.keras")
    p.add_argument("run_dir", help="run folder, e.g. saved_models/latest")
    p.set_defaults(func=cmd_export)
    p = verbs.add_parser("evaluate", help="evaluate every export of a run on test/ and validation/")
    p.add_argument("run_dir", help="run folder, e.g. saved_models/latest")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data overrides, e.g. data.root=/other/images")
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
    p.set_defaults(func=cmd_bench)
    p = verbs.add_parser("download", help="download the official data set")
    p.add_argument("--to", default="data/rps", help="destination folder (default: data/rps)")
    p.add_argument("--source", choices=("zips", "tfds"), default="zips")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rps`` console script. User errors (bad config, missing or bad files)
    print one clear message and exit with status 2; no traceback."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info lines
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"rps {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
