"""Kill smoke training runs with SIGKILL at random moments, rerun the same command, and count
how many runs recover into a complete, valid run folder (issue: "survives kills").

Usage: ``python scripts/stress_resume.py --kills 10 --docs docs/reliability.md`` (``make stress``;
about 10 minutes on 2 CPU cores).

Each trial starts ``rps train --config configs/smoke.yaml`` (6 epochs) in a fresh output folder
and kills it at one of three kinds of moment, chosen by a seeded random generator:

- ``random``: a uniform random delay over the length of a whole run (measured first by one
  uninterrupted calibration run), so start-up, training, export and evaluation are all hit in
  proportion to their length;
- ``checkpoint``: 0-30 ms after the ``BackupAndRestore`` weights file of a random epoch starts
  to change (inside or right after that checkpoint write);
- ``export``: a random delay after training has finished (``checkpoints/trained.json``), while
  the SavedModel, TFLite files and metrics are written.

Then it runs the same command to the end and checks the folder: exit status 0, ``COMPLETE``,
``latest`` points to it, ``history.csv`` holds each epoch exactly once, no training state or
temporary files are left, ``model.keras`` (safe mode) and ``model.tflite`` (LiteRT) load and
give probabilities, and ``metrics.json`` says the TFLite file agrees with Keras. With
``--docs`` the table replaces the part of that file between ``<!-- stress:begin -->`` and
``<!-- stress:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- stress:begin -->", "<!-- stress:end -->"


def train_command(args, out: Path) -> list[str]:
    return [sys.executable, "-m", "rps", "train", "--config", args.config,
            f"data.root={args.data_root}", f"output_dir={out}", f"train.epochs={args.epochs}",
            "log_format=text"]


def backup_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoints/backup/training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def phase(run_dir: Path, epochs: int) -> str:
    """What the run was doing, read from the files it had written."""
    checks = [("COMPLETE", "finished"), ("metrics.json", "plots and report"),
              ("model.tflite", "export (TFLite written), evaluation"),
              ("checkpoints/trained.json", "export")]
    for name, label in checks:
        if (run_dir / name).exists():
            return label
    if not run_dir.exists():
        return "start-up (no run folder yet)"
    epoch = backup_epoch(run_dir)
    return f"training epoch {epoch + 1} of {epochs}" if epoch else "start-up or epoch 1"


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def run_and_kill(command, log: Path, run_dir: Path, kind: str, delay: float,
                 timeout: float, epoch: int = 1) -> tuple[float, bool]:
    """Start the command; SIGKILL it at the chosen moment (``epoch``: whose backup write, for
    ``kind="checkpoint"``). Returns seconds until the kill (or until it exited by itself) and
    whether it was killed (``False``: it had finished before the moment came)."""
    weights = run_dir / "checkpoints/backup/latest.weights.h5"
    with open(log, "w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        armed_at, seen = None, None
        while proc.poll() is None and time.monotonic() - start < timeout:
            now = time.monotonic()
            if kind == "random" and now - start >= delay:
                break
            if kind == "checkpoint" and seen is None and backup_epoch(run_dir) == epoch - 1:
                seen = _mtime(weights)  # the previous epoch's backup is whole
            if kind == "checkpoint" and armed_at is None and seen is not None \
                    and _mtime(weights) != seen:
                armed_at = now  # this epoch's backup write has begun (or just ended)
            if kind == "export" and armed_at is None and (run_dir / "checkpoints/trained.json").exists():
                armed_at = now
            if armed_at is not None and now - armed_at >= delay:
                break
            time.sleep(0.002)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return time.monotonic() - start, killed


def validate(run_dir: Path, epochs: int, check_latest: bool = True) -> list[str]:
    """Problems with a finished run folder; empty when it is complete and valid."""
    import numpy as np

    from rps.predict import load_predictor
    from rps.runs import is_complete, read_history

    problems = []
    if not is_complete(run_dir):
        return ["no COMPLETE marker"]
    if check_latest and (run_dir.parent / "latest").resolve() != run_dir.resolve():
        problems.append("latest does not point to the run")
    logged = read_history(run_dir / "history.csv").get("epoch", [])
    if logged != list(range(epochs)):
        problems.append(f"history.csv epochs {logged}")
    leftovers = [p.name for p in run_dir.rglob(".tmp-*")] + [p.name for p in run_dir.rglob(".old-*")]
    if leftovers or (run_dir / "checkpoints/backup").exists():
        problems.append(f"left over: {leftovers or 'checkpoints/backup'}")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if metrics["test"]["tflite"]["agreement"] != 1.0:
            problems.append("TFLite disagrees with Keras")
        images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
        for artifact in ("model.keras", "model.tflite"):
            probabilities = load_predictor(run_dir / artifact).predict(images)
            if not np.allclose(probabilities.sum(1), 1.0, atol=1e-4):
                problems.append(f"{artifact} gives no probabilities")
    except Exception as err:  # any failure to load is a failed recovery, reported as such
        problems.append(f"{type(err).__name__}: {err}")
    return problems


def trial(args, index: int, kind: str, delay: float, epoch: int, work: Path) -> dict:
    out = work / f"trial-{index:02d}"
    run_dir = out / Path(args.config).stem
    command = train_command(args, out)
    killed_after, killed = run_and_kill(command, out.with_suffix(".kill.log"), run_dir, kind,
                                        delay, args.trial_timeout, epoch)
    if not killed:  # the run ended before the moment came: no kill to recover from
        return {"trial": index, "kind": kind, "delay_s": round(delay, 3), "killed": False}
    at_kill = phase(run_dir, args.epochs)
    if kind == "checkpoint" and at_kill.startswith(("training", "start-up or")):
        at_kill = f"writing the backup of epoch {epoch}"
    latest = out / "latest"
    latest_ok = not latest.exists() or (latest.resolve() / "COMPLETE").is_file()
    start = time.monotonic()
    log = out.with_suffix(".rerun.log")
    with open(log, "w") as f:
        rc = subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            timeout=args.trial_timeout).returncode
    rerun_seconds = time.monotonic() - start
    text = log.read_text()
    resumed = re.search(r"resuming training at epoch (\d+)", text)
    fallback = " from the previous backup" if "resuming from the previous one" in text else ""
    how = (f"resumed at epoch {resumed.group(1)}{fallback}" if resumed else
           "reused finished training" if "had finished; reusing" in text else
           "from scratch")
    problems = ([] if rc == 0 else [f"rerun exit status {rc}"])
    problems += [] if latest_ok else ["latest pointed to an incomplete run after the kill"]
    if at_kill == "finished":
        # Killed after COMPLETE: the run was done, and the rerun rightly starts a new one
        # (a complete run is never reopened); both must be complete, latest on the new one.
        how = "new run (the killed one had finished)"
        problems += validate(run_dir, args.epochs, check_latest=False)
        problems += validate((out / "latest").resolve(), args.epochs)
    else:
        problems += validate(run_dir, args.epochs)
    return {"trial": index, "kind": kind, "delay_s": round(delay, 3), "killed": True,
            "killed_after_s": round(killed_after, 1), "phase": at_kill, "rerun": how,
            "rerun_s": round(rerun_seconds, 1), "recovered": not problems, "problems": problems}


def markdown(rows: list[dict], calibration_s: float, args, not_killed: int = 0) -> str:
    recovered = sum(r["recovered"] for r in rows)
    extra = (f" ({not_killed} more draw(s) came after the run had finished by itself: no kill, "
             f"not counted)" if not_killed else "")
    lines = [f"Measured by `make stress` (`python scripts/stress_resume.py --kills {args.kills} "
             f"--seed {args.seed}`) on {os.cpu_count()} CPU cores: smoke config, "
             f"{args.epochs} epochs; an uninterrupted run took {calibration_s:.0f} s.",
             "", f"**Recovered: {recovered}/{len(rows)}** runs ended complete and valid after one "
             f"rerun of the same command{extra}.", "",
             "| # | kill moment | killed after (s) | the run was in | rerun | rerun (s) | result |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        moment = {"random": f"random, {r['delay_s']:.1f} s",
                  "checkpoint": f"backup write + {r['delay_s'] * 1000:.0f} ms",
                  "export": f"training done + {r['delay_s']:.1f} s"}[r["kind"]]
        result = "recovered" if r["recovered"] else "FAILED: " + "; ".join(r["problems"])
        lines.append(f"| {r['trial']} | {moment} | {r['killed_after_s']} | {r['phase']} | "
                     f"{r['rerun']} | {r['rerun_s']} | {result} |")
    return "\n".join(lines)


def write_docs(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section to replace")
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1])


def parse_args(argv=None):
    default_root = next((str(p) for p in (REPO / "data/rps", REPO.parent / "shared/data/rps")
                         if (p / "train").is_dir()), "data/rps")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="number of kill + rerun trials")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--epochs", type=int, default=6, help="train.epochs of each run")
    parser.add_argument("--data-root", default=default_root)
    parser.add_argument("--work", help="folder for the runs (default: a temporary folder, "
                                       "deleted at the end)")
    parser.add_argument("--docs", help="markdown file whose stress section gets the table")
    parser.add_argument("--trial-timeout", type=float, default=600,
                        help="seconds allowed for one run (default 600)")
    parser.add_argument("--max-minutes", type=float, default=60,
                        help="stop starting trials after this long (default 60)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="rps-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    calibration = work / "calibration"
    t0 = time.monotonic()
    with open(work / "calibration.log", "w") as f:
        subprocess.run(train_command(args, calibration), cwd=REPO, stdout=f,
                       stderr=subprocess.STDOUT, check=True, timeout=args.trial_timeout)
    calibration_s = time.monotonic() - t0
    print(f"calibration run: {calibration_s:.1f} s", flush=True)
    rows, index = [], 0
    while len(rows) < args.kills and index < 2 * args.kills:
        index += 1
        if time.monotonic() - started > args.max_minutes * 60:
            print(f"time limit reached after {len(rows)} kills", flush=True)
            break
        kind = rng.choice(["random", "random", "checkpoint", "export"])
        delay = {"random": rng.uniform(1.0, 0.95 * calibration_s),
                 "checkpoint": rng.uniform(0.0, 0.03),
                 "export": rng.uniform(0.0, 0.3 * calibration_s)}[kind]
        row = trial(args, index, kind, delay, rng.randint(1, args.epochs), work)
        print(json.dumps(row), flush=True)
        if row["killed"]:
            row["trial"] = len(rows) + 1
            rows.append(row)
    table = markdown(rows, calibration_s, args, not_killed=index - len(rows))
    print(table)
    if args.docs:
        write_docs(Path(args.docs), table)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rows and all(r["recovered"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
