"""Two-stage training through one loop: stage one (supcon, simclr or ce), then stage two.

    run(config, workdir, strategy, mode)  # mode: "train", "eval" or "train_then_eval"

A stage is its step function, the variables it trains, its optimizer, its dataset and
its checkpoint directory (`Stage`); `run_stage` runs any of them with resume, logging,
summaries, the non-finite guard and SIGTERM handling. Every step is `make_step` over an
objective, `(model, batch) -> (loss to minimize, metrics)`: `cross_entropy_objective`,
`contrastive_objective` (SupCon and SimCLR, the queue and the joint weight) and
`linear_objective` (stage two); the momentum queue's key update and enqueue are hooks
around it (`queue_hooks`). Checkpoint and workdir I/O live in checkpoints.py,
evaluation in evaluate.py.

Stage one
- supcon: SupCon (config.loss) on the L2-normalized projections [B, V, Dp], plus an
  online linear classifier's cross-entropy on stop_gradient(head input), for
  monitoring; the classifier is never weight-decayed.
- simclr: the same with labels withheld from the contrastive loss (NT-Xent).
- ce: cross-entropy through the encoder and the model's classifier. Batch norm sees
  every view; the loss reads view 1 only when config.loss.cross_entropy_views is
  "first" (the official TF code) or every view ("all").

Stage two (supcon and simclr; ce reports its own classifier), config.linear:
- protocol "augmented", the official one: a fresh linear classifier trains through
  the frozen encoder on augmented training views (config.data with config.linear.data
  overridden), cross-entropy on view 1 with config.linear.label_smoothing. bn_mode
  "batch_stats" runs the encoder's batch norm on batch statistics without updating
  its moving averages (the official TF code); "inference" uses the moving averages
  (the PyTorch reference).
- protocol "cached", for small data and analysis: the encoder runs once without
  augmentation and a logistic regression is fitted to convergence on those embeddings
  (supcon_tf/probe.py: L-BFGS, its L2 penalty chosen by cross-validation on the
  training split).
Either way nothing is selected on config.data.eval_split.

check_config(config, num_replicas=...) checks the fields the stages own: the method,
batches, lengths, loop counts, precision and the cross-entropy options.

Each replica divides its loss by the replica count and the optimizer sums gradients
across replicas, so the loss is the mean over the global batch (see losses.py).
Weight decay lives in the optimizer (optim.build_optimizer). The step is each stage's
optimizer.iterations; the data stream restarts from it on resume, so checkpoints hold
the model (or head) and the optimizer only. A non-finite loss or gradient stops
training with the step range and is never saved; SIGTERM saves a checkpoint and
raises Preempted.
"""

import dataclasses
import json
import os
import signal
import time
from typing import Callable

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from supcon_tf import checkpoints, data, evaluate, init_from, models, optim
from supcon_tf import momentum as momentum_lib
from supcon_tf import strategy as strategy_lib
from supcon_tf.constants import (BN_MODES, CROSS_ENTROPY_VIEWS, LINEAR_PROTOCOLS, METHODS,
                                 MODES, STAGE_TWO_SEED_OFFSET, check_choice,
                                 stage_two_data_config, stage_two_runs)
from supcon_tf.losses import supcon_loss

STAGE_ONE_METRICS = ("loss", "classifier_loss", "top1", "finite")
STAGE_TWO_METRICS = ("loss", "top1", "finite")
# tf.summary.scalar needs the tensorboard package, which TF no longer installs; a raw
# summary tagged for TensorBoard's scalars plugin reads the same.
SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last finished step was saved."""


# ---------------------------------------------------------------- config checks


def check_config(config, *, num_replicas):
    """Raises ValueError naming the first field of the stages' own that cannot work."""
    check_choice("method", config.method, METHODS)
    check_choice("linear.protocol", config.linear.protocol, LINEAR_PROTOCOLS)
    check_choice("linear.bn_mode", config.linear.bn_mode, BN_MODES)
    check_choice("loss.cross_entropy_views", config.loss.cross_entropy_views,
                 CROSS_ENTROPY_VIEWS)
    for field in ("loss.label_smoothing", "linear.label_smoothing"):
        section, name = field.split(".")
        if not 0 <= config[section][name] < 1:
            raise ValueError(f"config.{field}={config[section][name]} must be in [0, 1)")
    # eval.batch_size too: evaluation splits it over the replicas after training ends.
    for field, batch in (("train.global_batch_size", config.train.global_batch_size),
                         ("linear.global_batch_size", config.linear.global_batch_size),
                         ("eval.batch_size", config.eval.batch_size)):
        if batch <= 0 or batch % num_replicas:
            nearest = max(num_replicas, round(batch / num_replicas) * num_replicas)
            raise ValueError(
                f"config.{field}={batch} does not divide evenly over {num_replicas} "
                f"replicas; set it to a multiple of {num_replicas} (e.g. {nearest})")
    _check_lengths(config)
    _check_loop_counts(config)
    _check_precision(config.train)


def _check_lengths(config):
    fields = [("train.epochs", config.train.epochs)]
    if config.train.epochs == 0 and config.get("init_from"):
        _check_frozen_transfer(config)
        fields = []
    if stage_two_runs(config):
        fields.append(("linear.epochs", config.linear.epochs))
    for field, epochs in fields:
        if not epochs > 0:
            raise ValueError(f"config.{field}={epochs!r} must be > 0; it counts passes over "
                             "the training split")


def _check_frozen_transfer(config):
    """train.epochs=0 with init_from: no stage one, a classifier on the loaded encoder."""
    if not stage_two_runs(config):
        raise ValueError(f"config.train.epochs=0 with method={config.method!r} trains nothing; "
                         "set train.epochs > 0 to fine-tune, or method='supcon' for a linear "
                         "classifier on the frozen encoder")
    try:  # stage one's optimizer is built (and checkpointed) even when it never steps
        optim.build_schedule(config.optim, global_batch_size=config.train.global_batch_size,
                             steps_per_epoch=1.0, total_steps=0)
    except ValueError as err:
        raise ValueError(f"config.train.epochs=0: optim.schedule={config.optim.schedule!r} "
                         "needs steps; set config.optim.schedule='piecewise' (as "
                         "configs/transfer.py:linear does)") from err


def _check_loop_counts(config):
    """Integer fields that nothing else bounds, with the smallest value each accepts."""
    largest_seed = 2**32 - 1 - STAGE_TWO_SEED_OFFSET  # NumPy seeds are uint32
    if not 0 <= config.seed <= largest_seed:
        raise ValueError(f"config.seed={config.seed} must be in [0, {largest_seed}]")
    for section, field, smallest, meaning in (
            ("train", "steps_per_loop", 1, "steps run per call of the compiled loop"),
            ("train", "min_steps", 0, "0: the epochs alone set stage one's length"),
            ("linear", "min_steps", 0, "0: the epochs alone set stage two's length"),
            ("train", "checkpoint_every_steps", 0, "0 saves only at the end of a stage"),
            ("train", "keep_checkpoints", 1, "how many recent checkpoints stay on disk"),
            ("train", "log_every_steps", 0, "0 logs only the last step")):
        value = config[section][field]
        if value < smallest:
            raise ValueError(f"config.{section}.{field}={value} must be >= {smallest} "
                             f"({meaning})")


def _check_precision(train_config):
    jit = train_config.jit_compile
    # An override --config.train.jit_compile=true arrives as a string: the field holds "auto".
    if not (isinstance(jit, bool) or jit == "auto"
            or (isinstance(jit, str) and jit.lower() in ("true", "false"))):
        raise ValueError(f"config.train.jit_compile={jit!r} must be True, False or 'auto' "
                         "(XLA on a TPU or a GPU, not on a CPU)")
    policy = train_config.mixed_precision
    if policy is not None:
        try:
            keras.mixed_precision.Policy(policy)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"config.train.mixed_precision={policy!r} is not a Keras dtype policy; use None "
                "(float32), 'mixed_bfloat16' (TPU) or 'mixed_float16' (GPU)") from err


# ---------------------------------------------------------------- stage sizes


def steps_per_epoch(num_examples, global_batch_size):
    """Examples over batch, a float as in the official code; a stage is
    optim.epochs_to_steps(epochs, it)."""
    if global_batch_size > num_examples:
        raise ValueError(f"global batch size {global_batch_size} exceeds the {num_examples} "
                         "training examples; lower it")
    return num_examples / global_batch_size


def stage_steps(epochs, per_epoch, min_steps):
    """A stage's length: its epochs, or min_steps when that is more, so that a small
    dataset trains long enough. epochs=0 (a frozen-encoder transfer) stays 0."""
    steps = optim.epochs_to_steps(epochs, per_epoch)
    return max(steps, min_steps) if epochs > 0 else steps


# ---------------------------------------------------------------- losses


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Mean softmax cross-entropy of int labels [N] against logits [N, C]."""
    num_classes = logits.shape[-1]
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))


def select_views(per_view, num_views, which):
    """Rows [B * V, ...] (sample-major) -> view 1's rows [B, ...] for "first", all for "all"."""
    if which == "all":
        return per_view
    return tf.reshape(per_view, [-1, num_views] + per_view.shape[1:].as_list())[:, 0]


def top1_hits(labels, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                            tf.cast(labels, tf.int32)), tf.float32)


# ---------------------------------------------------------------- the replica step


def _static_batch(batch, batch_size):
    """Multi-worker input arrives without a static batch size; reshapes and XLA need one.

    Returns {"images" [B * V, ...] (sample-major: row b * V + v is view v of sample b),
    "labels" [B], "num_views" V}.
    """
    views = tf.ensure_shape(batch["views"], [batch_size] + batch["views"].shape[1:].as_list())
    labels = tf.ensure_shape(batch["label"], [batch_size])
    num_views = views.shape[1]
    images = tf.reshape(views, [batch_size * num_views] + views.shape[2:].as_list())
    return {"images": images, "labels": labels, "num_views": num_views}


def make_step(objective, model, variables, optimizer, num_replicas, *, batch_size,
              before=None, after=None):
    """The per-replica step of every stage: objective under a tape, one optimizer update.

    objective(model, batch) -> (loss to minimize, metrics dict); batch is _static_batch's
    dict, extended by before(batch) (which runs ahead of the tape, e.g. the queue's keys);
    after(batch) runs once the update is applied. The returned metrics gain "finite".
    """
    def replica_step(batch):
        batch = _static_batch(batch, batch_size)
        if before is not None:
            batch = before(batch)
        with tf.GradientTape() as tape:
            loss_to_minimize, metrics = objective(model, batch)
            # The optimizer sums the replicas' gradients: dividing makes it a global mean.
            scaled_loss = loss_to_minimize / num_replicas
        grads = tape.gradient(scaled_loss, variables)
        finite = tf.logical_and(tf.math.is_finite(loss_to_minimize),
                                tf.math.is_finite(tf.linalg.global_norm(grads)))
        optimizer.apply_gradients(zip(grads, variables))
        if after is not None:
            after(batch)
        return {**metrics, "finite": tf.cast(finite, tf.float32)}

    return replica_step


def accuracy(labels, logits):
    return tf.reduce_mean(top1_hits(labels, logits))


# ---------------------------------------------------------------- stage one


def trained_variables(model, method):
    """ce leaves the projection head untouched, so it is neither trained nor decayed."""
    if method == "ce":
        return model.encoder.trainable_variables + model.classifier.trainable_variables
    return model.trainable_variables


def decay_exempt_variables(model, method):
    """The online classifier of supcon/simclr is a monitor: the official scopes never decay it."""
    return [] if method == "ce" else model.classifier.trainable_variables


def build_stage_one(config, strategy, *, num_classes, num_train_examples):
    """Model, optimizer (slots built) and checkpoint, created inside strategy.scope().

    Returns (model, optimizer, checkpoint, steps per epoch).
    """
    train_config = config.train
    per_epoch = steps_per_epoch(num_train_examples, train_config.global_batch_size)
    keras.utils.set_random_seed(config.seed)  # the same seed gives the same initial weights
    with strategy.scope():
        model = models.build_model(config.model, num_classes=num_classes,
                                   image_size=config.data.image_size)
        optimizer = optim.build_optimizer(
            config.optim, trained_variables(model, config.method),
            global_batch_size=train_config.global_batch_size, steps_per_epoch=per_epoch,
            total_steps=stage_steps(train_config.epochs, per_epoch, train_config.min_steps),
            batch_norm_variables=optim.batch_norm_variables(model),
            exempt_variables=decay_exempt_variables(model, config.method))
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if config.loss.queue_size:  # the key model and queue: checkpoint.momentum
            checkpoint.momentum = momentum_lib.MomentumQueue.build(
                config.model, model, queue_size=config.loss.queue_size,
                num_classes=num_classes, image_size=config.data.image_size)
    return model, optimizer, checkpoint, per_epoch


def cross_entropy_objective(loss_config):
    """ce: cross-entropy through the encoder and the model's classifier."""
    which = loss_config.cross_entropy_views

    def objective(model, batch):
        num_views = batch["num_views"]
        labels = select_views(tf.repeat(batch["labels"], num_views), num_views, which)
        embedding = tf.cast(model.encoder(batch["images"], training=True), tf.float32)
        logits = tf.cast(model.classifier(model.head_input(embedding)), tf.float32)
        logits = select_views(logits, num_views, which)
        loss = cross_entropy(labels, logits, loss_config.label_smoothing)
        return loss, {"loss": loss, "classifier_loss": loss, "top1": accuracy(labels, logits)}

    return objective


# The momentum queue's contrasts, as queue_hooks adds them to the batch.
QUEUE_KEYS = ("queue_features", "queue_labels")


def contrastive_objective(loss_config, *, supervised):
    """supcon (supervised) or simclr: the contrastive loss plus the classifier's cross-entropy.

    The queue's contrasts, when batch holds them, enter the loss. Joint training (the
    official stage-one cross_entropy_weight): the classifier reads head_input(r) without
    stop_gradient and weight * its cross-entropy trains the encoder too; at 0 it stays
    the stop-gradient monitor of ContrastiveModel.
    """
    which, ce_weight = loss_config.cross_entropy_views, loss_config.cross_entropy_weight

    def objective(model, batch):
        labels, num_views = batch["labels"], batch["num_views"]
        ce_labels = select_views(tf.repeat(labels, num_views), num_views, which)
        outputs = model(batch["images"], training=True)
        logits = outputs["logits"]
        if ce_weight:
            logits = tf.cast(model.classifier(model.head_input(outputs["embedding"])),
                             tf.float32)
        logits = select_views(logits, num_views, which)
        projections = tf.reshape(outputs["projection"], [labels.shape[0], num_views, -1])
        loss = supcon_loss(
            projections, labels if supervised else None,
            temperature=loss_config.temperature, base_temperature=loss_config.base_temperature,
            contrast_mode=loss_config.contrast_mode, variant=loss_config.variant,
            block_size=loss_config.block_size, denominator_mode=loss_config.denominator_mode,
            positives_cap=loss_config.positives_cap,
            **{key: batch[key] for key in QUEUE_KEYS if key in batch})
        if ce_weight:
            classifier_loss = cross_entropy(ce_labels, logits, loss_config.label_smoothing)
            loss_to_minimize = loss + ce_weight * classifier_loss
        else:
            classifier_loss = cross_entropy(ce_labels, logits)
            loss_to_minimize = loss + classifier_loss
        return loss_to_minimize, {"loss": loss, "classifier_loss": classifier_loss,
                                  "top1": accuracy(ce_labels, logits)}

    return objective


def queue_hooks(momentum, batch_size, *, in_loss, with_labels):
    """make_step's before/after for a momentum_lib.MomentumQueue: before the tape, move
    the key encoder towards the model and compute the keys of the views (and read the
    queue, when in_loss); after the update, enqueue the keys of every replica."""
    def before(batch):
        momentum.update_key_encoder()
        batch = {**batch, "keys": momentum.keys(batch["images"], batch_size)}
        if in_loss:
            batch["queue_features"] = momentum.features.read_value()
            batch["queue_labels"] = momentum.labels.read_value() if with_labels else None
        return batch

    def after(batch):
        momentum.enqueue(batch["keys"], batch["labels"])

    return {"before": before, "after": after}


def make_replica_step(config, model, optimizer, num_replicas, *, momentum=None,
                      queue_in_loss=True):
    """Stage one's per-replica step: forward, loss, gradient, optimizer update; returns metrics.

    With a momentum_lib.MomentumQueue (checkpoint.momentum of build_stage_one), the step
    first moves the key encoder towards the model, computes the keys of its views, passes
    the queue to the loss as extra contrasts (when queue_in_loss) and finally enqueues the
    keys of every replica.
    """
    method = config.method
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    batch_size = config.train.global_batch_size // num_replicas
    if method == "ce":
        objective = cross_entropy_objective(config.loss)
    else:
        objective = contrastive_objective(config.loss, supervised=method == "supcon")
    hooks = {} if momentum is None else queue_hooks(
        momentum, batch_size, in_loss=queue_in_loss, with_labels=method == "supcon")
    return make_step(objective, model, trained_variables(model, method), optimizer,
                     num_replicas, batch_size=batch_size, **hooks)


# ---------------------------------------------------------------- stage two


def frozen_embedding(encoder, images, bn_mode):
    """The encoder's output with no gradient; "batch_stats" leaves the moving averages alone.

    stateless_call returns the batch norm updates instead of assigning them, and they
    are dropped: batch statistics in the forward pass, frozen averages (the official
    stage two).
    """
    if bn_mode == "inference":
        embedding = encoder(images, training=False)
    else:
        embedding, _ = encoder.stateless_call(
            [v.value for v in encoder.trainable_variables],
            [v.value for v in encoder.non_trainable_variables], images, training=True)
    return tf.stop_gradient(tf.cast(embedding, tf.float32))


def build_stage_two(config, strategy, model, *, num_classes, num_train_examples):
    """The stage-two classifier, its optimizer and checkpoint. Returns (head, optimizer,
    checkpoint, steps per epoch)."""
    linear = config.linear
    per_epoch = steps_per_epoch(num_train_examples, linear.global_batch_size)
    keras.utils.set_random_seed(config.seed + STAGE_TWO_SEED_OFFSET)
    with strategy.scope():
        head = models.linear_head(num_classes, init=config.model.classifier_init)
        head.build((None, model.encoder.output_shape[-1]))
        optimizer = optim.build_optimizer(
            linear.optim, head.trainable_variables, global_batch_size=linear.global_batch_size,
            steps_per_epoch=per_epoch,
            total_steps=stage_steps(linear.epochs, per_epoch, linear.min_steps),
            config_prefix="linear.optim")
        checkpoint = tf.train.Checkpoint(head=head, optimizer=optimizer)
    return head, optimizer, checkpoint, per_epoch


def linear_objective(head, linear):
    """Stage two: the classifier on view 1 of the frozen encoder's features.

    The encoder runs under the tape, but stop_gradient (frozen_embedding) and the
    trained variables (the head's) keep it out of the update.
    """
    def objective(model, batch):
        embedding = frozen_embedding(model.encoder, batch["images"], linear.bn_mode)
        features = select_views(model.head_input(embedding), batch["num_views"], "first")
        logits = tf.cast(head(features), tf.float32)
        loss = cross_entropy(batch["labels"], logits, linear.label_smoothing)
        return loss, {"loss": loss, "top1": accuracy(batch["labels"], logits)}

    return objective


def make_stage_two_step(config, model, head, optimizer, num_replicas):
    """Stage two's per-replica step: frozen encoder, classifier on view 1, update."""
    linear = config.linear
    if linear.bn_mode not in BN_MODES:
        raise ValueError(f"linear.bn_mode={linear.bn_mode!r}; use one of {BN_MODES}")
    return make_step(linear_objective(head, linear), model, head.trainable_variables,
                     optimizer, num_replicas,
                     batch_size=linear.global_batch_size // num_replicas)


# ---------------------------------------------------------------- the loop


def make_train_loop(strategy, replica_step, jit_compile, metric_names=STAGE_ONE_METRICS):
    """A tf.function running num_steps steps; returns the metrics averaged over them."""
    step_fn = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    @tf.function
    def train_loop(iterator, num_steps):
        sums = {key: tf.constant(0.0) for key in metric_names}
        for _ in tf.range(num_steps):
            per_replica = strategy.run(step_fn, args=(next(iterator),))
            sums = {key: value + strategy.reduce(tf.distribute.ReduceOp.MEAN,
                                                 per_replica[key], axis=None)
                    for key, value in sums.items()}
        return {key: value / tf.cast(num_steps, tf.float32) for key, value in sums.items()}

    return train_loop


@dataclasses.dataclass
class Stage:
    """What run_stage needs to train one stage."""

    name: str                  # in logs: "stage one", "stage two"
    checkpoint_subdir: str     # under the workdir
    summary_subdir: str
    replica_step: Callable
    metric_names: tuple
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    data_config: ml_collections.ConfigDict
    seed: int
    global_batch_size: int
    total_steps: int
    steps_per_epoch: float
    # Called when the stage starts without a checkpoint of its own (config.init_from).
    initialize: Callable | None = None


def run_stage(stage, config, workdir, strategy):
    """Trains `stage` until stage.total_steps, resuming from its checkpoints; returns the step."""
    global_batch = stage.global_batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"{stage.name}: global batch size {global_batch} must divide evenly "
                         f"over {strategy.num_replicas_in_sync} replicas")
    jit_compile = strategy_lib.resolve_jit_compile(config.train.jit_compile, strategy)
    manager = _resume(stage, config, workdir, strategy)
    step = int(stage.optimizer.iterations.numpy())
    if step >= stage.total_steps:
        logging.info("%s: already trained, step %d of %d", stage.name, step, stage.total_steps)
        return step

    def dataset_fn(input_context):
        return data.build_train_dataset(stage.data_config, global_batch_size=global_batch,
                                        seed=stage.seed, input_context=input_context,
                                        start_step=step)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_loop = make_train_loop(strategy, stage.replica_step, jit_compile, stage.metric_names)
    chief = checkpoints.is_chief(strategy)
    writer = (tf.summary.create_file_writer(os.path.join(workdir, stage.summary_subdir))
              if chief else tf.summary.create_noop_writer())
    logging.info("%s: steps %d..%d (%.1f per epoch), jit_compile %s", stage.name, step,
                 stage.total_steps, stage.steps_per_epoch, jit_compile)
    step = _train_until_done(stage, config.train, train_loop, iterator, manager, writer, step)
    if not chief:
        tf.io.gfile.rmtree(manager.directory)
    return step


def _resume(stage, config, workdir, strategy):
    """The stage's CheckpointManager, after restoring its newest readable checkpoint or,
    without one, initializing the stage (config.init_from) and saving that as step 0."""
    checkpoint_dir = os.path.join(workdir, stage.checkpoint_subdir)
    if not checkpoints.is_chief(strategy):
        # Every worker must save (the save synchronizes variables); only the chief's stays.
        checkpoint_dir = os.path.join(workdir, "tmp", stage.checkpoint_subdir,
                                      f"worker_{strategy.cluster_resolver.task_id}")
    resumed_from = checkpoints.restore_newest_readable(stage.checkpoint, checkpoint_dir)
    if resumed_from:
        logging.info("%s: resumed from %s", stage.name, resumed_from)
    manager = tf.train.CheckpointManager(stage.checkpoint, checkpoint_dir,
                                         max_to_keep=config.train.keep_checkpoints)
    if not resumed_from and stage.initialize is not None:
        stage.initialize()
        manager.save(checkpoint_number=0)  # a resumed run restores this, not the source
    return manager


def _train_until_done(stage, train_config, train_loop, iterator, manager, writer, step):
    """Runs train_loop from `step` to stage.total_steps with logging, summaries, the
    non-finite guard, checkpoints and SIGTERM; returns the last step."""
    total_steps = stage.total_steps
    preempted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
    try:
        while step < total_steps:
            num_steps = min(train_config.steps_per_loop, total_steps - step)
            started = time.time()
            metrics = {k: float(v) for k, v in train_loop(iterator, tf.constant(num_steps)).items()}
            seconds = time.time() - started
            if metrics["finite"] < 1.0:
                raise FloatingPointError(
                    f"{stage.name}: non-finite loss or gradient in steps {step + 1}.."
                    f"{step + num_steps} (last good checkpoint: {manager.latest_checkpoint}); "
                    "lower the base_lr or check the input")
            previous_step, step = step, step + num_steps
            if crossed(previous_step, step, train_config.log_every_steps) or step == total_steps:
                log_metrics(writer, stage.name, step, total_steps, metrics, num_steps / seconds,
                            stage.global_batch_size, float(stage.optimizer.learning_rate))
            if (crossed(previous_step, step, train_config.checkpoint_every_steps)
                    or step == total_steps or preempted):
                manager.save(checkpoint_number=step)
            if preempted:
                raise Preempted(f"SIGTERM: saved step {step} to {manager.directory}")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        writer.flush()
    return step


def crossed(previous_step, step, every):
    return every > 0 and step // every > previous_step // every


def log_metrics(writer, stage_name, step, total_steps, metrics, steps_per_sec, global_batch,
                learning_rate):
    eta_minutes = (total_steps - step) / max(steps_per_sec, 1e-9) / 60
    logging.info("%s: step %d/%d  loss %.4f  train top-1 %.3f  lr %.4g  %.2f steps/s  "
                 "ETA %.1f min", stage_name, step, total_steps, metrics["loss"], metrics["top1"],
                 learning_rate, steps_per_sec, eta_minutes)
    scalars = {key: value for key, value in metrics.items() if key != "finite"}
    scalars.update({"lr": learning_rate, "steps_per_sec": steps_per_sec,
                    "examples_per_sec": steps_per_sec * global_batch})
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), metadata=SCALAR_METADATA)


# ---------------------------------------------------------------- stages, assembled


def train(config, workdir, strategy, *, num_classes, num_train_examples):
    """Stage one until config.train.epochs, resuming from workdir/checkpoints.

    Returns (model, final step).
    """
    model, optimizer, checkpoint, per_epoch = build_stage_one(
        config, strategy, num_classes=num_classes, num_train_examples=num_train_examples)
    momentum = getattr(checkpoint, "momentum", None)
    initialize = init_from.initializer(config, model.encoder)
    total_steps = stage_steps(config.train.epochs, per_epoch, config.train.min_steps)
    # (name, last step, whether the loss sees the queue): a queue enters the loss once
    # every slot holds a key, so its empty slots never count as contrasts.
    phases = [("stage one", total_steps, True)]
    if momentum is not None:
        if initialize is not None:
            initialize_model = initialize

            def initialize():  # the key encoder starts as a copy of the initialized model
                initialize_model()
                momentum.copy_query_weights()
        fill_steps = momentum_lib.steps_to_fill(
            config.loss.queue_size, config.train.global_batch_size * config.data.num_views)
        phases.insert(0, ("stage one (filling the queue)", min(fill_steps, total_steps), False))
    for name, last_step, queue_in_loss in phases:
        stage = Stage(
            name=name, checkpoint_subdir="checkpoints", summary_subdir="train",
            replica_step=make_replica_step(config, model, optimizer,
                                           strategy.num_replicas_in_sync, momentum=momentum,
                                           queue_in_loss=queue_in_loss),
            metric_names=STAGE_ONE_METRICS, optimizer=optimizer, checkpoint=checkpoint,
            data_config=config.data, seed=config.seed,
            global_batch_size=config.train.global_batch_size, total_steps=last_step,
            steps_per_epoch=per_epoch, initialize=initialize)
        step = run_stage(stage, config, workdir, strategy)
    return model, step


def train_stage_two(config, workdir, strategy, model, *, num_classes, num_train_examples):
    """The official stage two through run_stage; returns the trained classifier."""
    head, optimizer, checkpoint, per_epoch = build_stage_two(
        config, strategy, model, num_classes=num_classes, num_train_examples=num_train_examples)
    stage = Stage(
        name="stage two", checkpoint_subdir="linear", summary_subdir="linear_train",
        replica_step=make_stage_two_step(config, model, head, optimizer,
                                         strategy.num_replicas_in_sync),
        metric_names=STAGE_TWO_METRICS, optimizer=optimizer, checkpoint=checkpoint,
        data_config=stage_two_data_config(config),
        seed=config.seed + STAGE_TWO_SEED_OFFSET,
        global_batch_size=config.linear.global_batch_size,
        total_steps=stage_steps(config.linear.epochs, per_epoch, config.linear.min_steps),
        steps_per_epoch=per_epoch)
    run_stage(stage, config, workdir, strategy)
    return head


def restore_for_eval(config, workdir, strategy, *, num_classes, num_train_examples):
    """The stage-one model from the latest checkpoint in workdir (for --mode=eval)."""
    model, _, checkpoint, _ = build_stage_one(config, strategy, num_classes=num_classes,
                                              num_train_examples=num_train_examples)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if checkpoints.restore_newest_readable(checkpoint, checkpoint_dir) is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; run --mode=train first")
    return model, int(checkpoint.optimizer.iterations.numpy())


# ---------------------------------------------------------------- entry point


def prepare(config):
    """What every job on a config does first: the precision policy, config.num_classes and
    config.class_names from the dataset, and the source's encoder when config.init_from is
    set. Returns the dataset's DatasetInfo."""
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    info = data.dataset_info(config.data)
    with config.unlocked():
        config.num_classes = int(info.num_classes)
        config.class_names = list(info.class_names)
    init_from.adopt_architecture(config)
    return info


def run(config, workdir, strategy, mode="train_then_eval", *, start_time=None):
    """Trains and/or evaluates; returns the results dict (None for mode="train").

    Fills config.num_classes and config.class_names, writes workdir/config.json and,
    after evaluation, workdir/results.json (atomically).
    """
    start_time = time.time() if start_time is None else start_time
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    info = prepare(config)
    tf.io.gfile.makedirs(workdir)
    if checkpoints.is_chief(strategy):
        checkpoints.save_config(config, workdir)
    sizes = dict(num_classes=info.num_classes, num_train_examples=info.num_train_examples)

    if mode in ("train", "train_then_eval"):
        model, step = train(config, workdir, strategy, **sizes)
        if mode == "train":
            return None
    else:
        model, step = restore_for_eval(config, workdir, strategy, **sizes)

    results = {"method": config.method, "dataset": config.data.name, "seed": config.seed,
               "eval_split": config.data.eval_split, "steps": step,
               "class_names": list(config.class_names)}
    if config.get("init_from"):
        results["init_from"] = config.init_from
    results.update(evaluate.evaluate_model(config, workdir, strategy, model,
                                           train_classifier=train_stage_two, **sizes))
    results["wall_s"] = round(time.time() - start_time, 1)
    logging.info("results: %s", {k: v for k, v in results.items() if k != "class_names"})
    if checkpoints.is_chief(strategy):
        checkpoints.write_atomically(
            os.path.join(workdir, "results.json"),
            json.dumps(results, indent=2, sort_keys=True, default=_to_builtin))
    return results


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")
