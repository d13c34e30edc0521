"""Multi-worker training: who the workers are (``TF_CONFIG``), which one is the chief, and the
two fixes Keras 3's ``model.fit`` needs under ``tf.distribute.MultiWorkerMirroredStrategy``.

Usage: set ``TF_CONFIG`` on every worker (or pass ``rps train --cluster host:port,host:port
--task-index I``, which writes it); ``rps.train.make_strategy`` then builds a
``MultiWorkerMirroredStrategy`` and ``rps.pipeline.run`` lets only the chief write the run
folder that users see. https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras

``TF_CONFIG`` is JSON: ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
"task": {"type": "worker", "index": 0}}``. The chief is the task of type ``chief`` if the cluster
has one, else worker 0 (TensorFlow's convention).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path

TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """This process's place in the cluster. A process without ``TF_CONFIG`` is the single
    worker ``("worker", 0)`` of a one-worker cluster, and the chief."""

    task_type: str = "worker"
    task_index: int = 0
    num_workers: int = 1
    has_chief_task: bool = False  # the cluster has a task of type "chief"

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                            and not self.has_chief_task)

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def cluster_tf_config(workers: list[str], task_index: int) -> str:
    """The ``TF_CONFIG`` JSON for ``rps train --cluster``: ``workers`` are ``host:port`` strings,
    worker 0 is the chief.

    Raises:
        ValueError: fewer than two workers, a worker without a port, or ``task_index`` out of
            range.
    """
    workers = [w.strip() for w in workers if w.strip()]
    if len(workers) < 2:
        raise ValueError(f"--cluster needs at least two host:port entries, got {workers}")
    for worker in workers:
        host, _, port = worker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--cluster entry {worker!r} is not host:port")
    if not 0 <= task_index < len(workers):
        raise ValueError(f"--task-index {task_index} is out of range for {len(workers)} workers "
                         f"(0 to {len(workers) - 1})")
    return json.dumps({"cluster": {"worker": workers},
                       "task": {"type": "worker", "index": task_index}})


def worker_info(environ: Mapping[str, str] | None = None) -> WorkerInfo:
    """Read ``TF_CONFIG`` from ``environ`` (default ``os.environ``).

    Raises:
        ValueError: ``TF_CONFIG`` is not JSON, has no ``cluster`` or ``task``, or names a task
            that its cluster lacks (the message quotes it).
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return WorkerInfo()
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, task_index = task["type"], int(task["index"])
        tasks = {t: list(cluster.get(t, [])) for t in TASK_TYPES}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not a valid cluster spec ({err!r}): {text}") from err
    if task_type not in TASK_TYPES or not 0 <= task_index < len(tasks[task_type]):
        raise ValueError(f"TF_CONFIG names task {task_type}:{task_index}, which its cluster "
                         f"{cluster} lacks (task types: {', '.join(TASK_TYPES)})")
    return WorkerInfo(task_type, task_index, len(tasks["chief"]) + len(tasks["worker"]),
                      bool(tasks["chief"]))


def worker_output_dir(output_dir: str | Path, info: WorkerInfo) -> str:
    """Where a worker writes its run folder: the chief writes ``output_dir`` (the folder users
    see); every other worker keeps its checkpoints, backups and logs under
    ``<output_dir>/.workers/<type>-<index>``, so that workers sharing a file system never write
    the same file, and a restarted worker finds its own backup."""
    if info.is_chief:
        return str(output_dir)
    return str(Path(output_dir) / ".workers" / info.name)


def _first_replica_symbolic_build(self, iterator=None, data_batch=None):
    """``Trainer._maybe_symbolic_build`` (keras/src/backend/tensorflow/trainer.py) takes the
    first batch of the distributed dataset to build the model symbolically; it averages the
    batch across replicas with ``strategy.reduce``, which fails under
    ``MultiWorkerMirroredStrategy`` ("Attempt to convert a value (PerReplica...)"). Only
    shapes and dtypes matter here, so this takes the first local replica's batch instead."""
    import tensorflow as tf
    from keras import tree

    if iterator is not None:
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda x: (self.distribute_strategy.experimental_local_results(x)[0]
                           if isinstance(x, tf.distribute.DistributedValues) else x), next(it))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _install_reduce_fix() -> None:
    """Keras's ``reduce_per_replica`` averages each step's logs across workers with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails for the scalar logs (loss, accuracy)
    under ``MultiWorkerMirroredStrategy`` ("Invalid reduction dimension 0 for input with 0
    dimensions"). The fix reduces them with ``axis=None`` (a plain cross-replica mean) and leaves
    every other strategy and reduction to Keras. Installed once per process."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "rps_fixed", False):
        return
    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if (reduction in ("auto", "mean")
                and trainer._collective_all_reduce_multi_worker(strategy)):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica.rps_fixed = True
    trainer.reduce_per_replica = reduce_per_replica


def enable_multi_worker_fit(model) -> None:
    """Make ``model.fit`` / ``evaluate`` work under ``MultiWorkerMirroredStrategy`` with
    Keras 3.15 and TensorFlow 2.21, where they fail out of the box (keras-team/keras#20585,
    tensorflow/tensorflow#72388): ``model`` gets the first-replica symbolic build, and the Keras
    step's log reduction is fixed for scalars. Call it on the compiled model, on every worker;
    under other strategies nothing changes. Tested by ``tests/test_multiworker.py``."""
    model._maybe_symbolic_build = types.MethodType(_first_replica_symbolic_build, model)
    _install_reduce_fix()


def agree_on_epoch(strategy, epoch: int) -> int:
    """The smallest ``epoch`` over all workers (a collective: every worker must call it at the
    same point). Used to resume every worker at the same epoch after a restart.

    Args:
        strategy: the run's ``MultiWorkerMirroredStrategy``.
        epoch: this worker's first epoch to train (0-based).
    """
    import tensorflow as tf

    @tf.function
    def gather_min():
        def replica_min():
            local = tf.constant([float(epoch)], tf.float32)
            return tf.reduce_min(tf.distribute.get_replica_context().all_gather(local, axis=0))
        return strategy.run(replica_min)

    return int(strategy.experimental_local_results(gather_min())[0].numpy())
