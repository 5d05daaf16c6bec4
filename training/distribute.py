"""`--distribute`: one process, several local devices (mirrored), or several workers.

Multi-worker training uses `tf.distribute.MultiWorkerMirroredStrategy`, configured from the
TF_CONFIG environment variable as Kubernetes operators and `deploy/training/` set it. Every
worker runs the same command on the same data; the global batch size is the `--batch-size`
(the source default when unset) and each of the N replicas computes 1/N of it, so N workers
take the same steps on the same batches as one process would.

BatchNorm layers are rebuilt with `synchronized=True`: each step's batch mean and variance are
all-reduced across replicas, so normalisation and the moving averages see the global batch,
exactly as single-process training does (unsynchronised BN would normalise with 1/N of the
batch, a different model for the small per-replica batches of the BN models here). Its cost
is one small all-reduce per BN layer and step, against one of every gradient.

Keras 3.15's `fit` fails under a multi-worker strategy in two places
(keras-team/keras#20585): it hands the whole (images, labels) batch to one `strategy.reduce`
to learn the input shapes, and it averages the scalar step logs with `reduce(..., axis=0)`.
`DistributedModel` overrides those two steps (shapes from the local replica; logs as 1-vectors)
and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import tensorflow as tf
from keras.src import tree

from cnnserve.contracts.errors import CnnserveError

MODES = ("none", "mirrored", "multiworker")


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in the training job."""

    mode: str
    strategy: tf.distribute.Strategy | None
    worker_index: int = 0
    num_workers: int = 1
    replicas: int = 1

    @property
    def is_chief(self) -> bool:
        """Only the chief writes the run directory (worker 0 when TF_CONFIG names no chief)."""
        return self.worker_index == 0


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise CnnserveError(
            "--distribute multiworker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    return parse_tf_config(raw)


def parse_tf_config(raw: str) -> dict:
    """TF_CONFIG checked for what this trainer needs: workers only, and this task among them."""
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CnnserveError(f"TF_CONFIG is not valid ({error!r}); it needs cluster.worker and task") from None
    if "chief" in config["cluster"]:
        raise CnnserveError("TF_CONFIG with a 'chief' task is not supported; list every task as a worker")
    if task.get("type") != "worker" or not 0 <= index < len(workers):
        raise CnnserveError(
            f"TF_CONFIG task {task} is not one of the {len(workers)} workers in cluster.worker"
        )
    return config


def make_cluster(mode: str) -> Cluster:
    """Creates the strategy; must run before TensorFlow executes its first operation."""
    if mode == "none":
        return Cluster(mode, None)
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Cluster(mode, strategy, replicas=strategy.num_replicas_in_sync)
    if mode != "multiworker":
        raise CnnserveError(f"--distribute must be one of {', '.join(MODES)}, received {mode!r}")
    config = _tf_config()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:  # the eager context was already started
        raise CnnserveError(f"cannot start multi-worker training: {error}") from None
    return Cluster(
        mode, strategy, worker_index=int(config["task"]["index"]),
        num_workers=len(config["cluster"]["worker"]), replicas=strategy.num_replicas_in_sync,
    )  # fmt: skip


class DistributedModel(keras.Model):
    """The zoo model for `fit` under a tf.distribute strategy (see the module docstring)."""

    def __init__(self, *, inputs, outputs, multi_worker: bool, name: str | None = None) -> None:
        super().__init__(inputs=inputs, outputs=outputs, name=name)
        self.multi_worker = multi_worker

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                batch = next(batches)
                data_batch = tree.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0], batch
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        logs = super().train_step(data)
        if not self.multi_worker:
            return logs
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}


def _synchronized_batchnorm(layer: keras.layers.Layer) -> keras.layers.Layer:
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["synchronized"] = True
    return layer.__class__.from_config(config)


def distributed_model(template: keras.Model, cluster: Cluster) -> keras.Model:
    """A copy of `template` (same weights) built in the strategy's scope, BN synchronised."""
    assert cluster.strategy is not None
    with cluster.strategy.scope():
        clone = keras.models.clone_model(template, clone_function=_synchronized_batchnorm)
        model = DistributedModel(
            inputs=clone.inputs, outputs=clone.outputs, multi_worker=cluster.mode == "multiworker",
            name=template.name,
        )  # fmt: skip
        model.set_weights(template.get_weights())
    return model


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Workers read the same in-memory stream and keep their share of each global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class _ChiefBackupReader(keras.callbacks.BackupAndRestore):
    """A non-chief worker's BackupAndRestore: restores from the chief's backup, never writes.

    At an epoch boundary every worker holds the same weights, so one backup serves all; a
    worker that wrote its own could be an epoch ahead of or behind the chief's after a crash
    between the two writes, and the restarted workers would then disagree on where to resume.
    """

    def _save_model(self) -> None:
        return

    def on_train_end(self, logs=None) -> None:
        return  # the chief deletes the backup once training has finished


def backup_callback(cluster: Cluster, backup_dir: str) -> keras.callbacks.BackupAndRestore:
    """Keras's BackupAndRestore at `backup_dir` (RUN/backup), written by the chief alone."""
    if cluster.is_chief:
        return keras.callbacks.BackupAndRestore(backup_dir)
    return _ChiefBackupReader(backup_dir)
