"""One process of tests/test_multiworker.py: a few steps of the tiny config, weights to a file.

    python tests/multiworker_worker.py OUTPUT.npz NUM_STEPS [mirrored]

With TF_CONFIG set, supcon_tf.strategy picks MultiWorkerMirroredStrategy and
this process is one worker; without it, one process holds the whole global
batch, on one replica or, with "mirrored", on 2 replicas (logical CPU devices).
All read the same seeded stream of global batches, and each input pipeline (one
per worker) keeps its own slice of every batch, so the workers together see
exactly what the single process sees. Batch norm is synchronized so that its
statistics also cover the global batch. The weights are saved after the first
step and after the last.
"""

import importlib.util
import os
import sys

import numpy as np
import tensorflow as tf

from supcon_tf import data, train
from supcon_tf import strategy as strategy_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    spec = importlib.util.spec_from_file_location("digits_config",
                                                  os.path.join(REPO, "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.model.sync_bn = True
    config.train.global_batch_size = 32
    config.optim.warmup_epochs = 0  # every step moves the weights
    return config


def make_strategy(mirrored):
    if not mirrored:
        return strategy_lib.make_strategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def main(output_path, num_steps, mirrored=False):
    strategy = make_strategy(mirrored)
    config = tiny_config()
    global_batch = config.train.global_batch_size
    info = data.dataset_info(config.data)
    model, optimizer, _, _ = train.build_stage_one(
        config, strategy, num_classes=info.num_classes,
        num_train_examples=info.num_train_examples)
    initial_weights = model.get_weights()

    def dataset_fn(input_context):
        per_pipeline = global_batch // input_context.num_input_pipelines
        start = input_context.input_pipeline_id * per_pipeline
        global_batches = data.build_train_dataset(config.data, global_batch_size=global_batch,
                                                  seed=config.seed)
        mine = global_batches.map(
            lambda batch: {key: value[start:start + per_pipeline] for key, value in batch.items()})
        # One pipeline feeding 2 replicas gives them consecutive batches.
        return mine.rebatch(input_context.get_per_replica_batch_size(global_batch))

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    replica_step = train.make_replica_step(config, model, optimizer,
                                           strategy.num_replicas_in_sync)
    train_loop = train.make_train_loop(strategy, replica_step, jit_compile=False)
    first = train_loop(iterator, tf.constant(1))
    after_first_step = model.get_weights()
    metrics = train_loop(iterator, tf.constant(num_steps - 1))
    np.savez(output_path, num_replicas=strategy.num_replicas_in_sync,
             step=int(optimizer.iterations.numpy()), first_loss=float(first["loss"]),
             loss=float(metrics["loss"]),
             finite=min(float(first["finite"]), float(metrics["finite"])),
             **{f"initial_{i}": w for i, w in enumerate(initial_weights)},
             **{f"first_{i}": w for i, w in enumerate(after_first_step)},
             **{f"final_{i}": w for i, w in enumerate(model.get_weights())})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), mirrored=sys.argv[3:] == ["mirrored"])
