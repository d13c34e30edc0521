"""The cluster manifests in deploy/ (docs/distributed.md): their `rps train` commands parse, their
configs load, and the cluster each describes gives one chief and the right worker count."""

import json
import shlex
from pathlib import Path

import yaml

from rps.cli import build_parser
from rps.cluster import cluster_tf_config, worker_info
from rps.config import load_config

from conftest import REPO

WORKDIR = Path("/app")  # docker/Dockerfile.*'s WORKDIR


def parse_train(argv: list[str]):
    assert argv[:2] == ["rps", "train"], argv
    args = build_parser().parse_args(argv[1:])
    return args, load_config(REPO / args.config, args.overrides)


def test_kubernetes_indexed_job_forms_one_cluster():
    service, job = yaml.safe_load_all((REPO / "deploy/kubernetes.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    container = pod["containers"][0]
    assert container["command"] == ["sh", "-c"]
    chiefs = 0
    for index in range(spec["completions"]):
        script = container["args"][0].replace("$JOB_COMPLETION_INDEX", str(index))
        argv = shlex.split(script)
        assert argv[0] == "exec"
        args, cfg = parse_train(argv[1:])
        hosts = args.cluster.split(",")
        # Pod i of an Indexed Job in subdomain S is <job>-<i>.S.
        assert hosts == [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:"
                         f"{service['spec']['ports'][0]['port']}" for i in range(spec["completions"])]
        assert container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
        info = worker_info({"TF_CONFIG": cluster_tf_config(hosts, args.task_index)})
        assert info.num_workers == spec["completions"] and info.task_index == index
        chiefs += info.is_chief
        # The volumes land where the config reads and writes, relative to the image's WORKDIR.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert Path(mounts["data"]) == WORKDIR / cfg.data.root
        assert Path(mounts["runs"]) == WORKDIR / cfg.output_dir
        assert cfg.run_name == "rps-k8s"  # fixed, so a restarted pod finds its backup
    assert chiefs == 1


def test_vertex_job_pools_run_one_command_and_pool0_is_chief():
    pools = yaml.safe_load((REPO / "deploy/vertex-job.yaml").read_text())["workerPoolSpecs"]
    assert len(pools) == 2 and pools[0]["replicaCount"] == 1
    assert pools[0]["containerSpec"] == pools[1]["containerSpec"]
    args, cfg = parse_train(pools[0]["containerSpec"]["command"])
    assert args.cluster is None  # Vertex AI writes TF_CONFIG itself
    assert cfg.data.root.startswith("/gcs/") and cfg.output_dir.startswith("/gcs/")
    # Vertex AI's TF_CONFIG: pool 0 is the chief task, pool 1 the worker tasks.
    cluster = {"chief": ["cmle-training-workerpool0-0:2222"],
               "worker": [f"cmle-training-workerpool1-{i}:2222"
                          for i in range(pools[1]["replicaCount"])]}
    chief = worker_info({"TF_CONFIG": json.dumps({"cluster": cluster,
                                                  "task": {"type": "chief", "index": 0}})})
    worker = worker_info({"TF_CONFIG": json.dumps({"cluster": cluster,
                                                   "task": {"type": "worker", "index": 0}})})
    assert chief.is_chief and not worker.is_chief
    assert chief.num_workers == worker.num_workers == 1 + pools[1]["replicaCount"]
