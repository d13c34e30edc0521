"""scripts/compare_cv.py: the decision rule of docs/experiments.md on two committed cv.json files."""

import copy
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_cv", REPO / "scripts" / "compare_cv.py")
compare_cv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_cv)


def load(name):
    return json.loads((REPO / "docs" / "cv" / f"{name}-seed42.cv.json").read_text())


def test_width_comparison_reproduces_the_recorded_decision():
    # docs/experiments.md: width 32 fails all three checks against width 40 (p = 0.94); the
    # other way round, width 40 passes all three (p = 0.064 < 0.1).
    w32 = compare_cv.compare(load("width40"), load("width32"))
    assert w32["hands"] == 21 and w32["baseline"]["held_out_errors"] == 3
    assert w32["candidate"]["held_out_errors"] == 6 and w32["candidate_lower_nll_hands"] == 8
    assert w32["p_one_sided"] == pytest.approx(0.94, abs=0.01)
    assert not any(w32["checks"].values()) and not w32["adopt"]
    w40 = compare_cv.compare(load("width32"), load("width40"))
    assert w40["p_one_sided"] == pytest.approx(0.064, abs=0.001)
    assert all(w40["checks"].values()) and w40["adopt"]


def test_files_with_different_hands_or_folds_are_refused():
    base = load("width40")
    other = copy.deepcopy(base)
    fold = other["folds"]["0"]["held_out"]["per_hand"]
    fold["rock99"] = fold.pop("rock01")
    with pytest.raises(ValueError, match="rock01"):
        compare_cv.compare(base, other)
    unfinished = copy.deepcopy(base)
    unfinished["total"]["folds_done"] = [0, 1]
    with pytest.raises(ValueError, match="finished folds differ"):
        compare_cv.compare(base, unfinished)


@pytest.mark.parametrize("name, folds, stop_on", [
    # the three runs stopped early (docs/experiments.md), each for the part it records
    ("aspect02", [0], {"held_out_errors_not_higher"}),
    ("nodecay1d", [0, 1, 2, 3], {"held_out_errors_not_higher", "validation_folder_errors_not_higher"}),
    ("erasing025", [0, 1, 2], {"validation_folder_errors_not_higher"}),
])
def test_interim_verdict_reproduces_the_recorded_stops(name, folds, stop_on):
    base = load("width40")
    result = compare_cv.interim(base, load(name))
    assert result["folds"] == folds and result["stop"]
    assert {check for check, ok in result["checks"].items() if not ok} == stop_on
    assert result["held_out"]["baseline_total"] == 3
    assert result["validation_folder"]["baseline_total"] == 1


def test_interim_verdict_lets_a_run_go_on_while_both_parts_can_hold():
    base = load("width40")
    partial = copy.deepcopy(base)  # the baseline itself, after its first two folds
    for fold in ("2", "3", "4", "5", "6"):
        del partial["folds"][fold]
    partial["total"]["folds_done"] = [0, 1]
    result = compare_cv.interim(base, partial)
    assert not result["stop"] and all(result["checks"].values())
    assert result["held_out"] == {"candidate_so_far": 3, "baseline_same_folds": 3, "baseline_total": 3}
    moved = copy.deepcopy(partial)
    fold = moved["folds"]["1"]["held_out"]["per_hand"]
    fold["rock99"] = fold.pop("rock03")
    with pytest.raises(ValueError, match="other hands"):
        compare_cv.interim(base, moved)


def test_the_a_a_rerun_is_kept_out_by_nll_and_pooled_runs_sum_errors_and_average_nll():
    # docs/experiments.md: the baseline run again is not "adopted" over itself (p = 0.54) though
    # its error counts (0 against 3) pass parts 2 and 3.
    base, rerun = load("width40"), load("width40-rerun")
    aa = compare_cv.compare(base, rerun)
    assert aa["p_one_sided"] == pytest.approx(0.54, abs=0.01) and not aa["adopt"]
    assert aa["checks"]["held_out_errors_not_higher"] and aa["candidate"]["held_out_errors"] == 0
    pooled = compare_cv.pool([base, rerun])
    assert pooled["runs"] == 2 and pooled["total"]["folds_done"] == list(range(7))
    assert pooled["total"]["held_out"] == {"errors": 3, "images": 5040}
    assert pooled["total"]["validation_folder"] == {"errors": 2, "images": 462}
    assert pooled["folds"]["0"]["held_out"]["per_hand"]["rock01"] == pytest.approx({
        "nll": (base["folds"]["0"]["held_out"]["per_hand"]["rock01"]["nll"]
                + rerun["folds"]["0"]["held_out"]["per_hand"]["rock01"]["nll"]) / 2,
        "errors": 3})
    # A pooled file goes through the rule like a single one: width 32 against the pooled
    # baseline, with the single width-32 run counted twice, is still rejected on every part.
    w32 = compare_cv.compare(pooled, compare_cv.pool([load("width32")] * 2))
    assert w32["candidate"]["held_out_errors"] == 12 and not any(w32["checks"].values())
    assert compare_cv.pool([base]) is base
    with pytest.raises(ValueError, match="differ in finished folds"):
        compare_cv.pool([base, load("erasing025")])


def test_cli_takes_replicates_and_refuses_unequal_numbers_of_runs():
    cv = [str(REPO / "docs" / "cv" / f"{name}-seed42.cv.json") for name in ("width40", "width32")]
    script = str(REPO / "scripts" / "compare_cv.py")
    one = subprocess.run([sys.executable, script, *cv], capture_output=True, text=True, check=True)
    flags = subprocess.run([sys.executable, script, "--baseline", cv[0], "--candidate", cv[1]],
                           capture_output=True, text=True, check=True)
    assert one.stdout == flags.stdout and "verdict: keep the baseline" in one.stdout
    unequal = subprocess.run([sys.executable, script, "--baseline", cv[0], cv[0],
                              "--candidate", cv[1]], capture_output=True, text=True)
    assert unequal.returncode == 2 and "2 baseline runs against 1 candidate runs" in unequal.stderr


def test_nll_only_compares_runs_with_other_folds_and_run_counts(tmp_path):
    # The learning curve over training hands: a 3-fold run (fewer training hands) against 7-fold
    # runs, paired hand by hand. Here the "3-fold" run is width40's hands regrouped into 3 folds,
    # each hand's NLL raised by 0.01, so 7 folds must win on all 21 hands.
    base = load("width40")
    hands = [(h, s) for fold in base["folds"].values() for h, s in fold["held_out"]["per_hand"].items()]
    three = {"folds": {str(k): {"held_out": {"per_hand": {
        h: {**s, "nll": s["nll"] + 0.01} for h, s in hands[k::3]}}} for k in range(3)},
        "total": {"folds_done": [0, 1, 2]}}
    result = compare_cv.nll_test(three, base)
    assert result["hands"] == 21 and result["candidate_lower_nll_hands"] == 21
    assert result["p_one_sided"] < 1e-5
    with pytest.raises(ValueError, match="finished folds differ"):
        compare_cv.compare(three, base)
    path = tmp_path / "three.cv.json"
    path.write_text(json.dumps(three))
    seven = [str(REPO / "docs" / "cv" / f"{name}-seed42.cv.json") for name in ("width40", "width40-rerun")]
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_cv.py"), "--nll-only",
                          "--baseline", str(path), "--candidate", *seven],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.split("\nverdict")[0])["hands"] == 21
    assert "verdict: ADOPT the candidate" in out.stdout
