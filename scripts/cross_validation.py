"""Group k-fold cross-validation of a config on ``train/``: every hand is held out once.

The validation split of a single run holds out about 15% of the hands of ``train/``: with the
real data (7 rendered hands per class, 120 images each) that is one hand per class, and its
errors come from one or two hands. Comparing two configs on it compares how they do on three
hands. This script trains the config once per fold (``data.folds=K data.fold=k``, all folds
with the config's seed, so that the folds partition ``train/``), scores the weights the run
exports (``train.checkpoint``) on the fold's held-out hands, and sums over the folds: with
``--folds 7`` every one of the 2,520 images and 21 hands of ``train/`` is scored by a model that
never trained on it.

Outputs in ``--out``:

- ``cv.json``: per fold and in total, errors, top-1 and mean negative log-likelihood (nats) on
  the held-out hands, the same per hand (group key), and on ``validation/``. Decide on
  this file.
- ``images.json``: per fold, every held-out and ``validation/`` image (path relative to
  ``data.root``, label, the exported model's probabilities rounded to 5 decimals), so that
  which images a run got wrong, and scores other than those in ``cv.json``, can be read
  without the weights.
- ``test.json``: ``test/`` top-1 and errors per fold, with the same per-image records, written
  for the record and read by nothing here; it is not a decision input.

Both files are rewritten after every fold, so a stopped run keeps its finished folds.

Replicates: a second run with the same config and seed may repeat the first bit for bit (it
did for batch 32 on 2026-12-08, docs/experiments.md), and then adds no evidence. A replicate
keeps the folds and changes the training streams (initialisation, shuffling, augmentation):
``seed=43 data.split_seed=42`` holds out the same hands in each fold as ``seed=42``.

Usage: ``python scripts/cross_validation.py --folds 7 --out saved_models/cv [key=value ...]``
(one full training per fold: about 7 minutes each for the default on a 2-core Intel Xeon,
about 20 on a 2-core AMD EPYC, where make train's 30 epochs took 18 minutes on 2026-12-08).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--folds", type=int, default=7)
    parser.add_argument("--only", type=int, nargs="*", help="run only these folds (0-based)")
    parser.add_argument("--out", default="saved_models/cv")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()

    from rps.config import load_config
    from rps.data import group_keys, load_splits, make_eval_dataset
    from rps.evaluate import collect, nll_and_accuracy, predict_probabilities
    from rps.models import add_softmax
    from rps.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, [*args.overrides, f"data.folds={args.folds}"])
    cv_file, test_file, images_file = out / "cv.json", out / "test.json", out / "images.json"
    cv = json.loads(cv_file.read_text()) if cv_file.exists() else {"folds": {}}
    test = json.loads(test_file.read_text()) if test_file.exists() else {}
    images = json.loads(images_file.read_text()) if images_file.exists() else {}
    config = json.loads(json.dumps(dataclasses.asdict(base)))
    if cv.get("config", config) != config:
        raise SystemExit(f"{cv_file} holds folds of another config; choose another --out.")
    cv["config"] = config
    for fold in args.only if args.only is not None else range(args.folds):
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, fold=fold))
        splits = load_splits(cfg.data, cfg.seed)
        result = train(cfg, splits, out / f"fold-{fold}")
        model = add_softmax(result.model)  # the exported model's softmax head
        row = {}
        for name, split in (("held_out", splits.val), ("validation_folder", splits.validation_folder),
                            ("test", splits.test)):
            if split is None:
                continue
            x, y = collect(make_eval_dataset(split, cfg.data))
            probabilities = predict_probabilities(model, x)
            scores = {**nll_and_accuracy(probabilities, y), "images": len(y)}
            records = [{"path": os.path.relpath(p, cfg.data.root), "label": int(label),
                        "probabilities": [round(float(q), 5) for q in row_p]}
                       for p, label, row_p in zip(split.paths, y, probabilities)]
            if name == "held_out":
                hands = np.asarray(group_keys(split.paths, cfg.data.group_pattern))
                scores["per_hand"] = {h: nll_and_accuracy(probabilities[hands == h], y[hands == h])
                                      for h in sorted(set(hands))}
            if name == "test":
                test.setdefault(str(fold), {})[name] = {**scores, "per_image": records}
            else:
                row[name] = scores
                images.setdefault(str(fold), {})[name] = records
        cv["folds"][str(fold)] = row
        cv["total"] = {
            name: {"errors": sum(r[name]["errors"] for r in cv["folds"].values()),
                   "images": sum(r[name]["images"] for r in cv["folds"].values()),
                   "mean_nll": sum(r[name]["nll"] for r in cv["folds"].values()) / len(cv["folds"])}
            for name in row}
        cv["total"]["folds_done"] = sorted(int(k) for k in cv["folds"])
        cv_file.write_text(json.dumps(cv, indent=1))
        test_file.write_text(json.dumps(test, indent=1))
        images_file.write_text(json.dumps(images))
        print(json.dumps({"fold": fold, **{k: v["errors"] for k, v in row.items()},
                          "errors_per_hand": {h: r["errors"] for h, r in
                                              row["held_out"]["per_hand"].items()}}), flush=True)
    print(json.dumps(cv["total"], indent=1))


if __name__ == "__main__":
    main()
