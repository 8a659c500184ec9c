"""Two-stage training: stage one (supcon, simclr or ce), then the linear evaluation.

    run(config, workdir, strategy, mode)  # mode: "train", "eval" or "train_then_eval"

Methods
- supcon: SupCon (config.loss) on the L2-normalized projections [B, V, Dp], plus the
  online linear classifier's cross-entropy on stop_gradient(embedding).
- simclr: the same with labels withheld from the contrastive loss (NT-Xent); the
  online classifier still reads labels, for monitoring only.
- ce: cross-entropy through the encoder and the model's classifier; each of the V
  views counts as one example, so all methods see the same images per step.

The loss is the mean over the global batch: each replica divides its mean by the
replica count and the optimizer sums gradients across replicas (see losses.py).
Stage two (evaluate.py) freezes the encoder in inference mode and trains
models.linear_head on its embeddings; ce reports its own classifier instead.

The step is optimizer.iterations. The data stream restarts from it on resume
(build_train_dataset(start_step=...)), so the checkpoint holds the model and the
optimizer only. A non-finite loss or gradient stops training with the step range and
is never saved; SIGTERM saves a checkpoint and raises Preempted.
"""

import json
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from supcon_tf import data, evaluate, models, optim
from supcon_tf import strategy as strategy_lib
from supcon_tf.losses import supcon_loss

METHODS = ("supcon", "simclr", "ce")
# tf.summary.scalar needs the tensorboard package, which TF no longer installs; a raw
# summary tagged for TensorBoard's scalars plugin reads the same.
SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()
MODES = ("train", "eval", "train_then_eval")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last finished step was saved."""


# ---------------------------------------------------------------- workdir files


def write_atomically(path, text):
    """Writes text to path via a temporary file and a rename, so readers never see half."""
    tmp_path = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp_path, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def save_config(config, workdir):
    """workdir/config.json: the resolved config; export rebuilds the model from it."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    write_atomically(os.path.join(workdir, "config.json"), text)
    logging.info("config:\n%s", text)


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


# ---------------------------------------------------------------- model and optimizer


def steps_per_epoch(num_examples, global_batch_size):
    steps = num_examples // global_batch_size
    if steps < 1:
        raise ValueError(f"train.global_batch_size={global_batch_size} exceeds the "
                         f"{num_examples} training examples; lower it")
    return steps


def trained_variables(model, method):
    """ce leaves the projection head untouched, so it is neither trained nor decayed."""
    if method == "ce":
        return model.encoder.trainable_variables + model.classifier.trainable_variables
    return model.trainable_variables


def build_stage_one(config, strategy, *, num_classes, num_train_examples):
    """Model, optimizer (slots built) and checkpoint, created inside strategy.scope()."""
    train_config = config.train
    per_epoch = steps_per_epoch(num_train_examples, train_config.global_batch_size)
    keras.utils.set_random_seed(config.seed)  # the same seed gives the same initial weights
    with strategy.scope():
        model = models.build_model(config.model, num_classes=num_classes,
                                   image_size=config.data.image_size)
        optimizer = optim.build_optimizer(
            config.optim, trained_variables(model, config.method),
            global_batch_size=train_config.global_batch_size, steps_per_epoch=per_epoch,
            total_steps=train_config.epochs * per_epoch)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint, per_epoch


# ---------------------------------------------------------------- train step


def cross_entropy(labels, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))


def make_replica_step(config, model, optimizer, num_replicas):
    """The per-replica step: forward, loss, gradient, optimizer update; returns metrics."""
    method = config.method
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    variables = trained_variables(model, method)
    loss_config = config.loss
    batch_size = config.train.global_batch_size // num_replicas

    def replica_step(batch):
        # Multi-worker input arrives without a static batch size; reshapes and XLA need one.
        views = tf.ensure_shape(batch["views"], [batch_size] + batch["views"].shape[1:].as_list())
        labels = tf.ensure_shape(batch["label"], [batch_size])
        num_views = views.shape[1]
        images = tf.reshape(views, [batch_size * num_views] + views.shape[2:].as_list())
        # Sample-major, like the views: row b * V + v is view v of sample b.
        view_labels = tf.repeat(labels, num_views)
        with tf.GradientTape() as tape:
            if method == "ce":
                embedding = model.encoder(images, training=True)
                logits = tf.cast(model.classifier(embedding), tf.float32)
                loss = classifier_loss = loss_to_minimize = cross_entropy(view_labels, logits)
            else:
                outputs = model(images, training=True)
                logits = outputs["logits"]
                projections = tf.reshape(outputs["projection"], [batch_size, num_views, -1])
                loss = supcon_loss(
                    projections, labels if method == "supcon" else None,
                    temperature=loss_config.temperature,
                    base_temperature=loss_config.base_temperature,
                    contrast_mode=loss_config.contrast_mode, variant=loss_config.variant,
                    block_size=loss_config.block_size)
                classifier_loss = cross_entropy(view_labels, logits)
                loss_to_minimize = loss + classifier_loss
            scaled_loss = loss_to_minimize / num_replicas
        grads = tape.gradient(scaled_loss, variables)
        finite = tf.logical_and(tf.math.is_finite(loss_to_minimize),
                                tf.math.is_finite(tf.linalg.global_norm(grads)))
        optimizer.apply_gradients(zip(grads, variables))
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                tf.cast(view_labels, tf.int32)), tf.float32)
        return {"loss": loss, "classifier_loss": classifier_loss, "top1": tf.reduce_mean(hits),
                "finite": tf.cast(finite, tf.float32)}

    return replica_step


def make_train_loop(strategy, replica_step, jit_compile):
    """A tf.function running num_steps steps; returns the metrics averaged over them."""
    step_fn = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    @tf.function
    def train_loop(iterator, num_steps):
        sums = {key: tf.constant(0.0) for key in ("loss", "classifier_loss", "top1", "finite")}
        for _ in tf.range(num_steps):
            per_replica = strategy.run(step_fn, args=(next(iterator),))
            sums = {key: value + strategy.reduce(tf.distribute.ReduceOp.MEAN,
                                                 per_replica[key], axis=None)
                    for key, value in sums.items()}
        return {key: value / tf.cast(num_steps, tf.float32) for key, value in sums.items()}

    return train_loop


# ---------------------------------------------------------------- stage one


def train(config, workdir, strategy, *, num_classes, num_train_examples):
    """Stage one until config.train.epochs, resuming from workdir/checkpoints.

    Returns (model, final step).
    """
    train_config = config.train
    global_batch = train_config.global_batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"train.global_batch_size={global_batch} must divide evenly over "
                         f"{strategy.num_replicas_in_sync} replicas")
    jit_compile = strategy_lib.resolve_jit_compile(train_config.jit_compile, strategy)
    logging.info("jit_compile for the train step: %s", jit_compile)

    # ---- model, optimizer, checkpoint
    model, optimizer, checkpoint, per_epoch = build_stage_one(
        config, strategy, num_classes=num_classes, num_train_examples=num_train_examples)
    total_steps = train_config.epochs * per_epoch
    chief = is_chief(strategy)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not chief:  # every worker must save (variables sync), only the chief keeps it
        checkpoint_dir = os.path.join(workdir, "tmp", f"worker_{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                         max_to_keep=train_config.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s", manager.latest_checkpoint)
    step = int(optimizer.iterations.numpy())
    if step >= total_steps:
        logging.info("already trained: step %d of %d", step, total_steps)
        return model, step

    # ---- input
    def dataset_fn(input_context):
        return data.build_train_dataset(config.data, global_batch_size=global_batch,
                                        seed=config.seed, input_context=input_context,
                                        start_step=step)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_loop = make_train_loop(
        strategy, make_replica_step(config, model, optimizer, strategy.num_replicas_in_sync),
        jit_compile)

    # ---- loop
    writer = (tf.summary.create_file_writer(os.path.join(workdir, "train")) if chief
              else tf.summary.create_noop_writer())
    preempted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
    logging.info("training steps %d..%d (%d per epoch)", step, total_steps, per_epoch)
    try:
        while step < total_steps:
            num_steps = min(train_config.steps_per_loop, total_steps - step)
            started = time.time()
            metrics = {k: float(v) for k, v in train_loop(iterator, tf.constant(num_steps)).items()}
            seconds = time.time() - started
            if metrics["finite"] < 1.0:
                raise FloatingPointError(
                    f"non-finite loss or gradient in steps {step + 1}..{step + num_steps} "
                    f"(last good checkpoint: {manager.latest_checkpoint}); lower optim.base_lr "
                    "or check the input")
            previous_step, step = step, step + num_steps
            steps_per_sec = num_steps / seconds
            if crossed(previous_step, step, train_config.log_every_steps) or step == total_steps:
                log_metrics(writer, step, total_steps, metrics, steps_per_sec, global_batch,
                            float(optimizer.learning_rate))
            if (crossed(previous_step, step, train_config.checkpoint_every_steps)
                    or step == total_steps or preempted):
                manager.save(checkpoint_number=step)
            if preempted:
                raise Preempted(f"SIGTERM: saved step {step} to {checkpoint_dir}")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        writer.flush()
    if not chief:
        tf.io.gfile.rmtree(checkpoint_dir)
    return model, step


def crossed(previous_step, step, every):
    return every > 0 and step // every > previous_step // every


def log_metrics(writer, step, total_steps, metrics, steps_per_sec, global_batch, learning_rate):
    eta_minutes = (total_steps - step) / max(steps_per_sec, 1e-9) / 60
    logging.info("step %d/%d  loss %.4f  online top-1 %.3f  lr %.4g  %.2f steps/s  ETA %.1f min",
                 step, total_steps, metrics["loss"], metrics["top1"], learning_rate,
                 steps_per_sec, eta_minutes)
    scalars = {"loss": metrics["loss"], "classifier_loss": metrics["classifier_loss"],
               "online_top1": metrics["top1"], "lr": learning_rate,
               "steps_per_sec": steps_per_sec, "examples_per_sec": steps_per_sec * global_batch}
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), metadata=SCALAR_METADATA)


# ---------------------------------------------------------------- stage two


def restore_for_eval(config, workdir, strategy, *, num_classes, num_train_examples):
    """The stage-one model from the latest checkpoint in workdir (for --mode=eval)."""
    model, _, checkpoint, _ = build_stage_one(config, strategy, num_classes=num_classes,
                                              num_train_examples=num_train_examples)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; run --mode=train first")
    checkpoint.restore(latest).assert_existing_objects_matched()
    return model, int(checkpoint.optimizer.iterations.numpy())


def split_outputs(config, strategy, embed_fn, split):
    eval_batch = config.eval.batch_size
    if eval_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"eval.batch_size={eval_batch} must divide evenly over "
                         f"{strategy.num_replicas_in_sync} replicas")
    dataset = data.build_eval_dataset(config.data, split=split, batch_size=eval_batch)
    return evaluate.extract_embeddings(
        embed_fn, strategy.experimental_distribute_dataset(dataset), strategy=strategy)


def linear_eval(config, workdir, strategy, model, *, num_classes):
    """Top-1/top-5 on config.data.eval_split of the final model (stage two for supcon/simclr)."""
    if config.method == "ce":
        outputs, labels = split_outputs(
            config, strategy, lambda x: model.classifier(model.encoder(x, training=False)),
            config.data.eval_split)
        return {"top1": evaluate.topk_accuracy(labels, outputs, 1),
                "top5": evaluate.topk_accuracy(labels, outputs, 5),
                "num_eval_examples": len(labels)}

    def embed_fn(images):
        outputs = model(images, training=False)
        return {"embedding": outputs["embedding"], "logits": outputs["logits"]}

    train_outputs, train_labels = split_outputs(config, strategy, embed_fn, config.data.train_split)
    eval_outputs, eval_labels = split_outputs(config, strategy, embed_fn, config.data.eval_split)
    head = models.linear_head(num_classes)
    probe = evaluate.linear_probe(
        train_outputs["embedding"], train_labels, eval_outputs["embedding"], eval_labels,
        num_classes=num_classes, optim_config=config.linear.optim, epochs=config.linear.epochs,
        batch_size=config.linear.global_batch_size, seed=config.seed, head=head)
    if is_chief(strategy):
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(head=head),
                                             os.path.join(workdir, "linear"), max_to_keep=1)
        manager.save(checkpoint_number=config.linear.epochs)
    return {"top1": probe["top1"], "top5": probe["top5"], "linear_train_top1": probe["train_top1"],
            "online_top1": evaluate.topk_accuracy(eval_labels, eval_outputs["logits"], 1),
            "num_eval_examples": len(eval_labels)}


# ---------------------------------------------------------------- entry point


def run(config, workdir, strategy, mode="train_then_eval", *, start_time=None):
    """Trains and/or evaluates; returns the results dict (None for mode="train").

    Fills config.num_classes, writes workdir/config.json and, after evaluation,
    workdir/results.json (atomically).
    """
    start_time = time.time() if start_time is None else start_time
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    tf.io.gfile.makedirs(workdir)
    info = data.dataset_info(config.data)
    with config.unlocked():
        config.num_classes = int(info.num_classes)
    if is_chief(strategy):
        save_config(config, workdir)
    sizes = dict(num_classes=info.num_classes, num_train_examples=info.num_train_examples)

    if mode in ("train", "train_then_eval"):
        model, step = train(config, workdir, strategy, **sizes)
        if mode == "train":
            return None
    else:
        model, step = restore_for_eval(config, workdir, strategy, **sizes)

    results = {"method": config.method, "dataset": config.data.name, "seed": config.seed,
               "eval_split": config.data.eval_split, "steps": step}
    results.update(linear_eval(config, workdir, strategy, model, num_classes=info.num_classes))
    results["wall_s"] = round(time.time() - start_time, 1)
    logging.info("results: %s", results)
    if is_chief(strategy):
        write_atomically(os.path.join(workdir, "results.json"),
                         json.dumps(results, indent=2, sort_keys=True, default=_to_builtin))
    return results


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")
