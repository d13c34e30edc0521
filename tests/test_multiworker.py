"""Multi-worker training (MultiWorkerMirroredStrategy): TF_CONFIG parsing, two real worker
processes on 127.0.0.1 training the smoke config, and a worker killed mid-run and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from rps import cluster
from rps.runs import is_complete, read_history


def test_cluster_flag_writes_tf_config():
    spec = json.loads(cluster.cluster_tf_config(["10.0.0.1:2222", "10.0.0.2:2222"], 1))
    assert spec == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                    "task": {"type": "worker", "index": 1}}
    info = cluster.worker_info({"TF_CONFIG": json.dumps(spec)})
    assert (info.name, info.num_workers, info.is_chief, info.multi_worker) == ("worker-1", 2, False, True)


@pytest.mark.parametrize("workers, index, message", [
    (["a:1"], 0, "at least two"), (["a:1", "b"], 0, "not host:port"), (["a:1", "b:2"], 2, "out of range")])
def test_cluster_flag_errors(workers, index, message):
    with pytest.raises(ValueError, match=message):
        cluster.cluster_tf_config(workers, index)


def test_chief_and_output_folders(tmp_path):
    assert cluster.worker_info({}).is_chief and not cluster.worker_info({}).multi_worker
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}
    worker0 = cluster.worker_info({"TF_CONFIG": json.dumps(with_chief)})
    assert not worker0.is_chief and worker0.num_workers == 2  # the chief task is the chief
    assert cluster.worker_output_dir(tmp_path, worker0) == str(tmp_path / ".workers" / "worker-0")
    assert cluster.worker_output_dir(tmp_path, cluster.WorkerInfo()) == str(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a valid cluster spec"),
    ('{"cluster": {"worker": ["a:1"]}}', "not a valid cluster spec"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "lacks")])
def test_bad_tf_config_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        cluster.worker_info({"TF_CONFIG": text})


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(overrides: list[str], logs: Path, tag: str) -> list[subprocess.Popen]:
    """One `rps train --cluster` process per worker (two), worker 1 first."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    # PYTHONFAULTHANDLER: a worker that dies of a native crash prints its Python stack to its log.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONFAULTHANDLER": "1"}
    env.pop("TF_CONFIG", None)
    procs = {}
    for index in (1, 0):
        log = open(logs / f"{tag}-worker{index}.log", "w")
        procs[index] = subprocess.Popen(
            [sys.executable, "-m", "rps", "train", "--config", "configs/smoke.yaml",
             "--cluster", hosts, "--task-index", str(index), *overrides],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return [procs[0], procs[1]]


def wait_all(procs: list[subprocess.Popen], timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a worker did not finish in time")
    return codes


def check_chief_export(run_dir: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    assert is_complete(run_dir)
    Interpreter(model_path=str(run_dir / "model.tflite")).allocate_tensors()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["tflite"]["agreement"] >= 0.99
    return json.loads((run_dir / "run_info.json").read_text())


@pytest.mark.slow
def test_two_workers_train_and_chief_exports(smoke_overrides, tmp_path):
    out = tmp_path / "runs"
    procs = start_workers([*smoke_overrides, "data.global_batch_size=4", "run_name=mw"], tmp_path, "run")
    codes = wait_all(procs)
    logs = {i: (tmp_path / f"run-worker{i}.log").read_text() for i in (0, 1)}
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for i in (0, 1):
        assert "replicas: 2, global batch size: 4, per-replica batch size: 2" in logs[i]
        assert "sharding policy" not in logs[i]  # explicit DATA policy: no AUTO fallback warning
    info = check_chief_export(out / "mw")
    assert info["num_replicas"] == 2 and info["worker"] == {"task": "worker-0", "num_workers": 2}
    assert (out / "latest").resolve() == (out / "mw").resolve()
    # The other worker trained in lockstep (same history) but wrote no run folder of its own.
    scratch = out / ".workers" / "worker-1" / "mw"
    assert not is_complete(scratch) and not (scratch / "model.tflite").exists()
    # Only the chief ran the profiler.
    assert list((out / "mw" / "logs" / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert not (scratch / "logs" / "train" / "plugins" / "profile").exists()
    assert read_history(scratch / "history.csv")["loss"] == read_history(out / "mw" / "history.csv")["loss"]


@pytest.mark.slow
def test_killed_worker_restarts_and_training_resumes(smoke_overrides, tmp_path):
    out = tmp_path / "runs"
    overrides = [*smoke_overrides, "data.global_batch_size=4", "run_name=mw", "train.epochs=4",
                 "train.collective_timeout=30", "export.quantize=none",
                 # The profiler is tested above; a worker has died in its window (docs/distributed.md).
                 "train.profile_batches=0"]
    procs = start_workers(overrides, tmp_path, "first")
    history = out / ".workers" / "worker-1" / "mw" / "history.csv"
    deadline = time.monotonic() + 300
    while len(read_history(history).get("epoch", [])) < 2:  # worker 1 is past epoch 2
        assert procs[1].poll() is None and time.monotonic() < deadline, "worker 1 never got to epoch 2"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    # The survivor notices within the heartbeat / collective timeout and exits with a clear error.
    assert wait_all(procs[:1], timeout=120) != [0]
    first = (tmp_path / "first-worker0.log").read_text()
    assert "lost contact with another worker" in first and "Traceback" not in first
    assert not is_complete(out / "mw")

    codes = wait_all(start_workers(overrides, tmp_path, "again"))
    again = {i: (tmp_path / f"again-worker{i}.log").read_text() for i in (0, 1)}
    assert codes == [0, 0], again[0][-3000:] + again[1][-3000:]
    assert "resuming training at epoch" in again[0]
    info = check_chief_export(out / "mw")
    assert info["resumed"] is True
    assert read_history(out / "mw" / "history.csv")["epoch"] == [0, 1, 2, 3]
