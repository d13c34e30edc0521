"""Compare a candidate config with a baseline by their cross-validation files (``cv.json``).

Both files come from ``scripts/cross_validation.py`` (``make cv``) with the same ``--folds`` and
split seed (``data.split_seed``, else ``seed``), so they hold out the same hands fold by fold.
The decision rule of docs/experiments.md, written down before the runs: the candidate replaces
the baseline only if all three hold:

1. its mean negative log-likelihood (NLL, nats) per hand is lower, in a one-sided Wilcoxon
   signed-rank test over the paired hands (``scipy.stats.wilcoxon``,
   https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.wilcoxon.html), with
   p < ``--alpha`` (0.1);
2. its held-out errors, summed over the folds, are not higher;
3. its ``validation/`` errors, summed over the folds, are not higher.

``test.json`` is not read. Usage:
``python scripts/compare_cv.py docs/cv/width40-seed42-fixedseeds.cv.json saved_models/cv-NAME/cv.json``
(prints the figures and the verdict; ``--json FILE`` also writes them). The baseline files made
before the op-seed fix of 2026-12-05 (``width40-seed42``, ``width40-rerun-seed42``) trained with
correlated augmentation draws; compare a candidate with a run made after it.

While the candidate's run is still going (its finished folds a subset of the baseline's), the
same command gives the interim verdict instead: parts 2 and 3 compare the candidate's errors so
far with the baseline's totals over all its folds, since more folds can only add errors; once
either fails, the candidate cannot be adopted and its run can be stopped (the stopping rule of
docs/experiments.md).

Replicates: one run's error counts move by chance (the A/A check of docs/experiments.md gave 3
and 0 held-out errors for two runs of the same config), so each side may be several runs of its
config (``--baseline A.json B.json --candidate C.json D.json``, the same number on each side).
``pool`` merges them before the rule is applied: errors are summed over the runs and the NLL of
each hand is averaged over them.

``--nll-only`` judges part 1 alone, between sides that may differ in ``--folds`` and in the
number of runs: the learning curve over training hands of docs/experiments.md
(``--nll-only --baseline cv-3fold/cv.json --candidate A.json B.json``: do 18 training hands
give a lower NLL than 14?).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import wilcoxon


def pool(runs: list[dict]) -> dict:
    """Merge replicate runs of one config into one ``cv.json``-shaped dict.

    Per fold and in total, errors and images are summed over the runs; the NLL of each hand and
    of each fold's held-out images and ``validation/`` is averaged over them. One run is
    returned unchanged.

    Raises:
        ValueError: no runs, or the runs differ in finished folds or in the hands of a fold.
    """
    if not runs:
        raise ValueError("no runs to pool")
    if len(runs) == 1:
        return runs[0]
    done = [sorted(run["total"]["folds_done"]) for run in runs]
    if any(d != done[0] for d in done):
        raise ValueError(f"replicate runs differ in finished folds: {done}")

    def merge(scores: list[dict]) -> dict:
        """Errors (and images) summed over the runs, NLL averaged."""
        merged = {key: sum(score[key] for score in scores)
                  for key in ("errors", "images") if key in scores[0]}
        return {**merged, "nll": sum(score["nll"] for score in scores) / len(scores)}

    folds = {}
    for fold in map(str, done[0]):
        hands = [sorted(run["folds"][fold]["held_out"]["per_hand"]) for run in runs]
        if any(h != hands[0] for h in hands):
            raise ValueError(f"replicate runs hold out other hands in fold {fold}: {hands}")
        parts = [run["folds"][fold] for run in runs]
        folds[fold] = {
            "held_out": {**merge([p["held_out"] for p in parts]),
                         "per_hand": {hand: merge([p["held_out"]["per_hand"][hand] for p in parts])
                                      for hand in hands[0]}},
            "validation_folder": merge([p["validation_folder"] for p in parts])}
    total = {part: {key: sum(run["total"][part][key] for run in runs)
                    for key in ("errors", "images")}
             for part in ("held_out", "validation_folder")}
    return {"folds": folds, "total": {**total, "folds_done": done[0]}, "runs": len(runs)}


def per_hand_nll(cv: dict) -> dict[str, float]:
    """Mean NLL (nats) per held-out hand, over all folds of one ``cv.json``."""
    return {hand: scores["nll"]
            for fold in cv["folds"].values()
            for hand, scores in fold["held_out"]["per_hand"].items()}


def nll_test(baseline: dict, candidate: dict) -> dict:
    """Part 1 of the rule alone: is the candidate's mean NLL per hand lower? One-sided Wilcoxon
    signed-rank test over the hands, paired by name. The two sides may differ in ``--folds``
    (a learning curve: 3 folds train on fewer hands than 7) as long as every hand is held out
    on both.

    Returns:
        ``{"hands", "baseline": {"mean_nll_per_hand"}, "candidate": {...},
        "candidate_lower_nll_hands", "p_one_sided"}``.

    Raises:
        ValueError: the two sides hold out different hands.
    """
    base, cand = per_hand_nll(baseline), per_hand_nll(candidate)
    if set(base) != set(cand):
        raise ValueError(f"held-out hands differ (seed or --folds?): "
                         f"only in baseline {sorted(set(base) - set(cand))}, "
                         f"only in candidate {sorted(set(cand) - set(base))}")
    hands = sorted(base)
    # H1: the candidate's NLL is lower, i.e. baseline - candidate > 0.
    p = float(wilcoxon([base[h] for h in hands], [cand[h] for h in hands],
                       alternative="greater").pvalue)
    return {"hands": len(hands),
            "baseline": {"mean_nll_per_hand": sum(base.values()) / len(base)},
            "candidate": {"mean_nll_per_hand": sum(cand.values()) / len(cand)},
            "candidate_lower_nll_hands": sum(cand[h] < base[h] for h in hands),
            "p_one_sided": p}


def compare(baseline: dict, candidate: dict, alpha: float = 0.1) -> dict:
    """Apply the three-part rule to two parsed ``cv.json`` files.

    Returns:
        A dict of the figures (errors, ``validation/`` errors, mean NLL per hand, hands where the
        candidate's NLL is lower, the one-sided p-value) and ``adopt`` (bool).

    Raises:
        ValueError: the files do not hold the same finished folds or the same hands (different
            seed or ``--folds``, or an unfinished run).
    """
    folds = {side: sorted(cv["total"]["folds_done"]) for side, cv in
             (("baseline", baseline), ("candidate", candidate))}
    if folds["baseline"] != folds["candidate"]:
        raise ValueError(f"finished folds differ: {folds}")
    nll = nll_test(baseline, candidate)
    result = {"hands": nll["hands"], "folds": folds["baseline"]}
    for side, cv in (("baseline", baseline), ("candidate", candidate)):
        result[side] = {"held_out_errors": cv["total"]["held_out"]["errors"],
                        "held_out_images": cv["total"]["held_out"]["images"],
                        "validation_folder_errors": cv["total"]["validation_folder"]["errors"],
                        "mean_nll_per_hand": nll[side]["mean_nll_per_hand"]}
    result["candidate_lower_nll_hands"] = nll["candidate_lower_nll_hands"]
    result["p_one_sided"] = p = nll["p_one_sided"]
    checks = {
        "nll_lower": p < alpha,
        "held_out_errors_not_higher": (result["candidate"]["held_out_errors"]
                                       <= result["baseline"]["held_out_errors"]),
        "validation_folder_errors_not_higher": (
            result["candidate"]["validation_folder_errors"]
            <= result["baseline"]["validation_folder_errors"]),
    }
    result["checks"] = checks
    result["adopt"] = all(checks.values())
    return result


def interim(baseline: dict, candidate: dict) -> dict:
    """Can an unfinished candidate run still pass parts 2 and 3 of the rule?

    Errors only grow with more folds, so a part fails for good once the candidate's errors over
    its finished folds exceed the baseline's over all of its folds. Part 1 (NLL) is not judged
    on a subset of the hands.

    Returns:
        A dict: the finished folds, the candidate's errors so far, the baseline's errors on the
        same folds and in total, ``checks`` (part 2 and part 3 still possible) and ``stop``
        (True once either has failed).

    Raises:
        ValueError: the candidate has a fold the baseline lacks, or holds out other hands.
    """
    done = sorted(candidate["total"]["folds_done"])
    extra = set(done) - set(baseline["total"]["folds_done"])
    if extra:
        raise ValueError(f"the candidate has folds the baseline lacks: {sorted(extra)}")
    for fold in map(str, done):
        hands = {side: sorted(cv["folds"][fold]["held_out"]["per_hand"])
                 for side, cv in (("baseline", baseline), ("candidate", candidate))}
        if hands["baseline"] != hands["candidate"]:
            raise ValueError(f"fold {fold} holds out other hands (seed or --folds?): {hands}")

    def errors(cv: dict, part: str, folds) -> int:
        return sum(cv["folds"][str(f)][part]["errors"] for f in folds)

    result: dict = {"folds": done, "checks": {}}
    for part, check in (("held_out", "held_out_errors_not_higher"),
                        ("validation_folder", "validation_folder_errors_not_higher")):
        so_far = errors(candidate, part, done)
        total = baseline["total"][part]["errors"]
        result[part] = {"candidate_so_far": so_far,
                        "baseline_same_folds": errors(baseline, part, done),
                        "baseline_total": total}
        result["checks"][check] = so_far <= total
    result["stop"] = not all(result["checks"].values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*", help="BASELINE CANDIDATE (one run each)")
    parser.add_argument("--baseline", type=Path, nargs="+", help="replicate runs of the baseline")
    parser.add_argument("--candidate", type=Path, nargs="+", help="replicate runs of the candidate")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--nll-only", action="store_true",
                        help="part 1 only (NLL per hand); the sides may differ in --folds and "
                             "in the number of runs")
    args = parser.parse_args()
    if args.files:
        if len(args.files) != 2 or args.baseline or args.candidate:
            parser.error("give BASELINE CANDIDATE, or --baseline ... --candidate ..., not both")
        args.baseline, args.candidate = [args.files[0]], [args.files[1]]
    elif not (args.baseline and args.candidate):
        parser.error("give BASELINE CANDIDATE, or --baseline ... --candidate ...")
    if len(args.baseline) != len(args.candidate) and not args.nll_only:
        parser.error(f"{len(args.baseline)} baseline runs against {len(args.candidate)} candidate "
                     "runs: error counts are only comparable with the same number on each side")
    try:
        baseline, candidate = (pool([json.loads(path.read_text()) for path in paths])
                               for paths in (args.baseline, args.candidate))
    except ValueError as error:
        parser.error(str(error))
    if args.nll_only:
        try:
            result = nll_test(baseline, candidate)
        except ValueError as error:
            parser.error(str(error))
        result["adopt"] = result["p_one_sided"] < args.alpha
        unfinished = False
    else:
        unfinished = (set(candidate["total"]["folds_done"])
                      < set(baseline["total"]["folds_done"]))
        result = (interim(baseline, candidate) if unfinished
                  else compare(baseline, candidate, args.alpha))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if unfinished:
        print("interim verdict:", "STOP, keep the baseline (part 2 or 3 can no longer hold)"
              if result["stop"] else "parts 2 and 3 can still hold: let the run finish")
    else:
        print("verdict:", "ADOPT the candidate" if result["adopt"] else "keep the baseline")


if __name__ == "__main__":
    main()
