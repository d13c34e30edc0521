"""`rps bench` runs on the smoke config (a synthetic image folder) and writes its files; the
race timer and the FLOP counter give sane numbers. No speed targets here: those live in
`make bench` and docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from rps.bench import TestAccuracyRace, forward_flops

from conftest import REPO


def test_forward_flops_of_one_dense_layer():
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(5, use_bias=False)(keras.layers.Flatten()(inputs)))
    assert forward_flops(model) == 2 * 16 * 5


def test_race_records_first_epoch_reaching_target():
    race = TestAccuracyRace(np.zeros((1, 2)), np.zeros(1))
    race.records = [{"epoch": 1, "train_seconds": 3.0, "test_accuracy": 0.5},
                    {"epoch": 2, "train_seconds": 6.0, "test_accuracy": 0.99},
                    {"epoch": 3, "train_seconds": 9.0, "test_accuracy": 0.97}]
    assert race.time_to(0.98) == 6.0 and race.time_to(0.995) is None


@pytest.mark.slow
def test_bench_cli_writes_results(tiny_root, tmp_path):
    docs = tmp_path / "benchmarks.md"
    out = subprocess.run(
        [sys.executable, "-m", "rps", "bench", "--config", "configs/smoke.yaml", "--seeds", "1",
         "--reference-epochs", "1", "--docs", str(docs), f"data.root={tiny_root}",
         f"output_dir={tmp_path / 'runs'}", "data.image_size=48"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    bench_dir = tmp_path / "runs" / "bench-smoke"
    result = json.loads((bench_dir / "bench.json").read_text())
    assert [r["seed"] for r in result["ours"]] == [42]
    assert len(result["ours"][0]["records"]) == 4  # one test evaluation per epoch
    assert result["reference"]["num_parameters"] == 3_473_475
    assert result["pipeline"]["tf_data_images_per_second"] > 0
    markdown = (bench_dir / "bench.md").read_text()
    assert "| rps seed 42 |" in markdown and "| 4. parameters | <= 350,000 |" in markdown
    assert docs.read_text().startswith("# Benchmarks")


def _bench_result(tests, valids, speedup, tf_data=1000.0, train=150.0, params=232_523):
    from rps.bench import summarize

    ours = [{"seed": 42 + i, "test_accuracy": t, "validation_folder_accuracy": v, "time_to_98": 60.0,
             "train_seconds": 400.0, "train_images_per_second": train, "num_parameters": params,
             "forward_flops": 59_000_000} for i, (t, v) in enumerate(zip(tests, valids))]
    reference = None if speedup is None else {"time_to_98": 60.0 * speedup}
    return {"summary": summarize(ours, reference), "ours": ours,
            "pipeline": {"tf_data_images_per_second": tf_data}}


def test_goal_checks_judge_each_goal_of_issue_4():
    from rps.bench import goal_checks

    met = goal_checks(_bench_result([1.0, 0.9946, 1.0], [1.0, 1.0, 1.0], speedup=12.1))
    assert [g["met"] for g in met] == [True] * 6
    # Mean 0.9964 passes but one seed below 0.99 fails; one photo of validation/ missed fails;
    # the seed recipe not raced: speed-up not measured; 4x pipeline headroom and 351k parameters fail.
    missed = goal_checks(_bench_result([1.0, 0.9892, 1.0], [1.0, 0.9697, 1.0], speedup=None,
                                       tf_data=600.0, params=351_000))
    assert [g["met"] for g in missed] == [True, False, False, None, False, False]
    assert missed[1]["measured"] == "0.9892" and missed[3]["measured"] == "not measured"
    no_folder = goal_checks(_bench_result([1.0], [None], speedup=4.9))
    assert no_folder[2]["met"] is None and no_folder[3]["met"] is False


def test_ablation_markdown_and_docs(tmp_path):
    from rps.bench import ablation_markdown, write_benchmarks_doc

    result = {"speed": {"default": 100.0, "no cache (decode every epoch)": 50.0},
              "accuracy": {"default": {"test_accuracy": 0.99, "validation_folder_accuracy": 1.0,
                                       "time_to_98": None, "train_seconds": 120.0}}}
    table = ablation_markdown(result)
    assert "| no cache (decode every epoch) | 50 | 0.50x |" in table
    assert "| default | 0.9900 | 1.0000 | never | 120 |" in table
    # Only "default" ran: the table names the accuracy ablations that did not.
    assert "Not run (the run stopped before them): no robustness augmentation" in table
    assert "RMSprop, constant learning rate 0.001." in table
    env = {"date": "2026-12-03 06:00 UTC", "cpu": "Some CPU", "cpu_count": 2,
           "versions": {"tensorflow": "2.21.0", "keras": "3.15.1"},
           "matmul_gflops_float32": 189.4, "matmul_gflops_bfloat16": 316.0}
    dated = ablation_markdown({**result, "environment": env})
    assert dated.startswith("Date: 2026-12-03 06:00 UTC; CPU: Some CPU (2 cores)") and table in dated
    (tmp_path / "ablations-accuracy.md").write_text(ablation_markdown({**result, "speed": {}}))
    doc = write_benchmarks_doc(tmp_path, tmp_path / "benchmarks.md").read_text()
    assert doc.startswith("# Benchmarks") and "## Ablations: accuracy" in doc and "## Race" not in doc
    assert "0.50x" not in doc

    # Later bench folders with only the race, then only the speed ablations, keep what the
    # docs file already holds.
    later = tmp_path / "later"
    later.mkdir()
    (later / "bench.md").write_text("| rps seed 42 | 0.9900 |\n")
    (later / "ablations-speed.md").write_text(ablation_markdown({**result, "accuracy": {}}))
    doc = write_benchmarks_doc(later, tmp_path / "benchmarks.md").read_text()
    assert doc.index("## Race") < doc.index("## Ablations: speed") < doc.index("## Ablations: accuracy")
    assert "| rps seed 42 | 0.9900 |" in doc and "| default | 0.9900 | 1.0000 | never | 120 |" in doc
    assert "| no cache (decode every epoch) | 50 | 0.50x |" in doc
    assert doc.count("## Ablations: accuracy") == 1
    # A folder with none of the tables rewrites the docs file unchanged (kept sections keep
    # their layout, the blank line after each heading included).
    (tmp_path / "empty").mkdir()
    assert write_benchmarks_doc(tmp_path / "empty", tmp_path / "benchmarks.md").read_text() == doc


def test_augmentation_costs_per_layer_and_in_markdown(tiny_root):
    from rps.bench import ablation_markdown, augmentation_costs
    from rps.config import load_config
    from rps.data import load_splits

    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"data.root={tiny_root}", "augment.blur=0.2"])
    costs = augmentation_costs(cfg, load_splits(cfg.data, cfg.seed), repeats=1)
    assert list(costs["fused"]) == ["random_affine", "random_contrast_brightness", "random_blur", "all"]
    assert "random_rotation" in costs["keras"] and "random_affine" not in costs["keras"]
    assert all(ms > 0 for by_layer in costs.values() for ms in by_layer.values())
    table = ablation_markdown({"speed": {"default": 100.0}, "accuracy": {}, "augmentation_ms": costs})
    assert f"| `random_affine` | {costs['fused']['random_affine']:.1f} |  |" in table
    assert f"| `random_rotation` |  | {costs['keras']['random_rotation']:.1f} |" in table
    assert f"| {costs['fused']['all']:.1f} | {costs['keras']['all']:.1f} |" in table


@pytest.mark.slow
def test_bench_backends_reports_epoch_time_per_backend(tiny_root, tmp_path):
    def bench(backends):
        return subprocess.run(
            [sys.executable, "-m", "rps", "bench", "--config", "configs/smoke.yaml",
             "--backends", backends, f"data.root={tiny_root}", f"output_dir={tmp_path / 'runs'}",
             "data.image_size=48"], cwd=REPO, capture_output=True, text=True, timeout=600)

    out = bench("tensorflow,nonesuch")
    assert out.returncode == 2 and "unknown Keras backend(s) 'nonesuch'" in out.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work
    out = bench("tensorflow,torch")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "bench-smoke" / "backends.json").read_text())
    assert result["tensorflow"]["epoch_seconds"] > 0
    torch_installed = importlib.util.find_spec("torch") is not None
    assert ("epoch_seconds" in result["torch"]) == torch_installed, result["torch"]


def test_resumed_ablations_run_only_the_missing_rows(tmp_path, monkeypatch):
    import rps.bench as bench
    from rps.config import load_config, to_dict

    env = {"date": "2026-12-06 03:19 UTC", "cpu": "Some CPU", "cpu_count": 2,
           "versions": {"tensorflow": "2.21.0", "keras": "3.15.1"},
           "matmul_gflops_float32": 245.0, "matmul_gflops_bfloat16": 1028.0}
    monkeypatch.setattr(bench, "environment", lambda: {**env, "date": "2026-12-06 05:00 UTC"})
    raced = []

    def fake_race(cfg, run_dir, splits=None):
        raced.append(run_dir.name)
        return {"test_accuracy": 0.5, "validation_folder_accuracy": None, "time_to_98": None,
                "train_seconds": 1.0}

    monkeypatch.setattr(bench, "race", fake_race)
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    names = list(bench.ACCURACY_ABLATIONS)
    row = {"test_accuracy": 1.0, "validation_folder_accuracy": 1.0, "time_to_98": 80.0,
           "train_seconds": 500.0}
    earlier = {"environment": env, "config": to_dict(cfg), "speed": {},
               "accuracy": {names[1]: {**row, "overrides": bench.ACCURACY_ABLATIONS[names[1]]},
                            names[0]: {**row, "overrides": []},
                            # same name, other overrides (the table changed since): rerun
                            names[2]: {**row, "overrides": ["augment.hue=0"]}}}
    (tmp_path / "ablations.json").write_text(json.dumps(earlier))

    result = bench.run_ablations(cfg, tmp_path, speed=False, resume=True)
    assert raced == [f"ablation-{i}" for i in range(2, len(names))]
    assert list(result["accuracy"]) == names  # table order, not arrival order
    assert result["accuracy"][names[1]]["test_accuracy"] == 1.0
    assert result["accuracy"][names[2]]["test_accuracy"] == 0.5
    assert result["resumed"] == {"from": "2026-12-06 03:19 UTC", "accuracy": names[:2], "speed": []}
    table = (tmp_path / "ablations-accuracy.md").read_text()
    assert "stopped run of 2026-12-06 03:19 UTC" in table and "Not run" not in table
    assert json.loads((tmp_path / "ablations.json").read_text())["resumed"] == result["resumed"]

    # Without --resume, every row runs again.
    raced.clear()
    bench.run_ablations(cfg, tmp_path, speed=False)
    assert len(raced) == len(names)

    # Another config, or another CPU: refused, naming the file and what differs.
    (tmp_path / "ablations.json").write_text(json.dumps(earlier))
    other = load_config(REPO / "configs" / "smoke.yaml", ["train.epochs=7"])
    with pytest.raises(ValueError, match=r"ablations\.json: cannot resume.*train\.epochs"):
        bench.run_ablations(other, tmp_path, speed=False, resume=True)
    (tmp_path / "ablations.json").write_text(json.dumps({**earlier, "environment": {**env, "cpu": "Other"}}))
    with pytest.raises(ValueError, match=r"ablations\.json: cannot resume.*cpu 'Other'"):
        bench.run_ablations(cfg, tmp_path, speed=False, resume=True)
