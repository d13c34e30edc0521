"""Paired comparison of three ways to use the same trained run, decided on the validation split.

For each seed, train the config once (``rps.train.train``) while keeping the weights of the
last ``--keep`` epochs in memory, then score on the validation split carved from ``train/``
and on ``validation/``:

- ``last``: the weights of the last epoch (the default export);
- ``flip_tta``: the same weights, probabilities averaged over the image and its mirror image;
- ``swa_K``: the average of the weights of the last K epochs with the BatchNorm statistics
  recomputed over one pass of augmented training batches (stochastic weight averaging,
  Izmailov et al. 2018, https://arxiv.org/abs/1803.05407).

Because every variant scores the same trained run, the run-to-run spread of training cancels
out of the comparison. The decision is taken on ``validation.json`` (written and printed
first); ``test/`` top-1 of each variant goes to ``test.json`` for the record, unread by
anything here.

Usage: ``python scripts/averaging_experiment.py --config configs/default.yaml --seeds 42 43 44
--out saved_models/averaging`` (about 6 minutes per seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import keras
import numpy as np


def recompute_batchnorm(model: keras.Model, batches) -> None:
    """Replace every BatchNormalization layer's moving mean and variance by their average over
    ``batches`` (training-mode forward passes; the cumulative average of SWA's ``bn_update``)."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    for k, (x, _) in enumerate(batches):
        for bn in bns:
            bn.momentum = k / (k + 1.0)  # new = k/(k+1) old + 1/(k+1) batch
        model(x, training=True)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--keep", type=int, default=10, help="epochs of weights kept for SWA")
    parser.add_argument("--out", default="saved_models/averaging")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from rps.config import load_config
    from rps.data import load_splits, make_eval_dataset
    from rps.evaluate import collect, nll_and_accuracy, predict_probabilities
    from rps.models import add_softmax, build_model
    from rps.train import make_fit_datasets, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, args.overrides)
    val_results, test_results = {}, {}
    for seed in args.seeds:
        cfg = dataclasses.replace(base, seed=seed)
        splits = load_splits(cfg.data, cfg.seed)
        snapshots: list[list[np.ndarray]] = []

        class Keep(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch >= cfg.train.epochs - args.keep:
                    snapshots.append([np.array(w) for w in self.model.get_weights()])

        result = train(cfg, splits, out / f"seed-{seed}", extra_callbacks=[Keep()])
        num_classes = len(splits.class_names)
        train_ds, _, steps = make_fit_datasets(cfg, splits)

        def fresh(weights):
            model = build_model(cfg.model, num_classes, cfg.data.image_size)
            model.set_weights(weights)
            return model

        variants = {"last": fresh(result.model.get_weights())}
        for k in (5, args.keep):
            model = fresh([np.mean(ws, axis=0) for ws in zip(*snapshots[-k:])])
            recompute_batchnorm(model, train_ds.take(steps))
            variants[f"swa_{k}"] = model

        def probabilities(model, images, flip=False):
            inference = add_softmax(model)  # the exported model's softmax head
            p = predict_probabilities(inference, images)
            if flip:
                p = (p + predict_probabilities(inference, images[:, :, ::-1])) / 2
            return p

        for split_name, split, store in (("val", splits.val, val_results),
                                         ("validation_folder", splits.validation_folder, val_results),
                                         ("test", splits.test, test_results)):
            x, y = collect(make_eval_dataset(split, cfg.data))
            for name, model in variants.items():
                store.setdefault(name, {}).setdefault(split_name, {})[seed] = nll_and_accuracy(
                    probabilities(model, x), y)
                store.setdefault(name + "+flip_tta", {}).setdefault(split_name, {})[seed] = \
                    nll_and_accuracy(probabilities(model, x, flip=True), y)
        (out / "validation.json").write_text(json.dumps(val_results, indent=1))
        (out / "test.json").write_text(json.dumps(test_results, indent=1))
        print(json.dumps({"seed": seed, "history_val_accuracy": result.history["val_accuracy"][-5:]}))

    for name, splits_ in val_results.items():
        row = {s: (np.mean([r["nll"] for r in by_seed.values()]),
                   np.mean([r["top1"] for r in by_seed.values()]),
                   sum(r["errors"] for r in by_seed.values())) for s, by_seed in splits_.items()}
        print(f"{name:20s} " + "  ".join(f"{s}: nll {n:.4f} top1 {a:.4f} errors {e}"
                                          for s, (n, a, e) in row.items()))


if __name__ == "__main__":
    main()
