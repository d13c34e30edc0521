"""Compare a candidate config with a baseline by their cross-validation files (``cv.json``).

Both files come from ``scripts/cross_validation.py`` (``make cv``) with the same ``--folds`` and
seed, so they hold out the same hands fold by fold. The decision rule of docs/experiments.md,
written down before the runs: the candidate replaces the baseline only if all three hold:

1. its mean negative log-likelihood (NLL, nats) per hand is lower, in a one-sided Wilcoxon
   signed-rank test over the paired hands (``scipy.stats.wilcoxon``,
   https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.wilcoxon.html), with
   p < ``--alpha`` (0.1);
2. its held-out errors, summed over the folds, are not higher;
3. its ``validation/`` errors, summed over the folds, are not higher.

``test.json`` is not read. Usage:
``python scripts/compare_cv.py docs/cv/width40-seed42.cv.json saved_models/cv-NAME/cv.json``
(prints the figures and the verdict; ``--json FILE`` also writes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import wilcoxon


def per_hand_nll(cv: dict) -> dict[str, float]:
    """Mean NLL (nats) per held-out hand, over all folds of one ``cv.json``."""
    return {hand: scores["nll"]
            for fold in cv["folds"].values()
            for hand, scores in fold["held_out"]["per_hand"].items()}


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
    base, cand = per_hand_nll(baseline), per_hand_nll(candidate)
    if set(base) != set(cand):
        raise ValueError(f"held-out hands differ (seed or --folds?): "
                         f"only in baseline {sorted(set(base) - set(cand))}, "
                         f"only in candidate {sorted(set(cand) - set(base))}")
    hands = sorted(base)
    # H1: the candidate's NLL is lower, i.e. baseline - candidate > 0.
    p = float(wilcoxon([base[h] for h in hands], [cand[h] for h in hands],
                       alternative="greater").pvalue)
    result = {"hands": len(hands), "folds": folds["baseline"]}
    for side, cv, nll in (("baseline", baseline, base), ("candidate", candidate, cand)):
        result[side] = {"held_out_errors": cv["total"]["held_out"]["errors"],
                        "held_out_images": cv["total"]["held_out"]["images"],
                        "validation_folder_errors": cv["total"]["validation_folder"]["errors"],
                        "mean_nll_per_hand": sum(nll.values()) / len(nll)}
    result["candidate_lower_nll_hands"] = sum(cand[h] < base[h] for h in hands)
    result["p_one_sided"] = p
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = compare(json.loads(args.baseline.read_text()),
                     json.loads(args.candidate.read_text()), args.alpha)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("verdict:", "ADOPT the candidate" if result["adopt"] else "keep the baseline")


if __name__ == "__main__":
    main()
