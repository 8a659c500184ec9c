r"""`python main.py --config=C --mode=selfcheck [--tpu=...]`: is this strategy computing the run?

A user's first minute on an accelerator. On the strategy main.py builds, the config's
model takes a few steps of each of the config's stages (stage one with its method and,
with config.loss.queue_size, the momentum queue; stage two for supcon and simclr) on
synthetic data of the config's shapes, through train.py's own builders, step functions
and loop. No dataset is read. Checked:

- static shapes: every tensor the distributed dataset yields has a fully defined
  shape (what reshapes and XLA need).
- loss and gradients: the first step's loss, and the gradients each replica hands the
  optimizer summed over the replicas, against the same step function run once on the
  whole global batch on the host CPU, outside strategy.run, on the same weights. With
  model.sync_bn the replicas' batch norm sees the global batch, so the reference does
  too; without it each replica normalizes its own slice, and so does the reference.
- momentum queue (with loss.queue_size): the queue after that step, against the
  reference's.
- replicas agree: every replica holds the same batch-norm moving statistics, and the
  same weights, after the steps.
- checkpoint round trip: the stage-one checkpoint written to a temporary directory
  under the workdir, read into a fresh build, identical on every replica and when
  written again; the directory is removed afterwards.

Throughput is images (views) per second per replica over TIMED_STEPS steps of
train.make_train_loop after its first (traced, compared) call; those steps also copy the
gradients for the comparison, one vector per replica. A table goes to stdout, one row per
check, then one JSON line (the last line) for scripts; main.py exits 1 when a check fails.

The host reference runs the whole global batch, so its size is bounded by
HOST_REFERENCE_PIXELS; shrink the batch with --config.train.global_batch_size=N
--config.linear.global_batch_size=N (the per-replica batch is what the devices see).
"""

import contextlib
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from supcon_tf import constants, describe, train
from supcon_tf import strategy as strategy_lib

TIMED_STEPS = 3
# Views x pixels the host CPU reference may push through the encoder per stage:
# 32,768 views at 8x8, 4,096 at 32x32, 83 at 224x224.
HOST_REFERENCE_PIXELS = 2**22
# Relative tolerances of the distributed step against the host reference: float32 sums
# in another order (all-reduce, per-replica partial sums, synchronized batch norm) agree
# to about 1e-6 in the loss and 1e-5 in a gradient; a wrong gather is off by 1e-1 or more.
LOSS_RTOL = {"float32": 1e-4, "mixed": 5e-3}
GRADIENT_RTOL = {"float32": 1e-3, "mixed": 5e-2}
# A variable's gradient error is relative to its own norm, but never to less than this
# fraction of the whole gradient's norm (some gradients are zero, e.g. behind a
# zero-initialized batch norm scale).
GRADIENT_NORM_FLOOR = 1e-3
AGREE_RTOL = 1e-6
STAGE_ONE_SALT, STAGE_TWO_SALT = 1, 2
_HOST_CPU = "/cpu:0"


class SelfCheckError(ValueError):
    """The self-check cannot run as configured; one line saying what to change."""


@dataclasses.dataclass
class Check:
    name: str
    passed: bool | None  # None: information only (throughput, a skipped stage)
    detail: str
    values: dict = dataclasses.field(default_factory=dict)

    def as_dict(self):
        result = {None: "info", True: "pass", False: "fail"}[self.passed]
        return {"name": self.name, "result": result, "detail": self.detail, **self.values}


# ---------------------------------------------------------------- synthetic data


def synthetic_batch(step, *, global_batch_size, num_views, image_size, num_classes, seed, salt):
    """Global batch `step` of a stage: {"views": float32 [G, V, H, W, 3] uniform in [0, 1],
    "label": int32 [G] uniform over the classes}, a pure function of its arguments."""
    step = tf.cast(step, tf.int64)
    stream = tf.constant(salt * 2**40, tf.int64) + 2 * step
    base = tf.constant(seed, tf.int64)
    views = tf.random.stateless_uniform(
        [global_batch_size, num_views, image_size, image_size, 3], seed=tf.stack([base, stream]))
    labels = tf.random.stateless_uniform([global_batch_size], seed=tf.stack([base, stream + 1]),
                                         minval=0, maxval=num_classes, dtype=tf.int32)
    return {"views": views, "label": labels}


def distributed_batches(strategy, batch_fn, global_batch_size):
    """batch_fn(step)'s global batches, each replica fed its slice in replica order, through
    distribute_datasets_from_function as training's input is. Returns the distributed dataset.

    Each input pipeline computes the global batch and keeps the consecutive slices of the
    replicas it feeds; one element per replica and step, of static shape.
    """
    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        replicas_here = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * replicas_here * per_replica

        def pipeline_batch(step):
            return {key: tf.reshape(value[first:first + replicas_here * per_replica],
                                    [replicas_here, per_replica] + value.shape[1:].as_list())
                    for key, value in batch_fn(step).items()}

        options = tf.data.Options()
        options.autotune.enabled = False  # see data.datasets._prefetch
        dataset = tf.data.Dataset.counter().map(pipeline_batch).unbatch().prefetch(2)
        return dataset.with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _spec_shapes(element_spec):
    """Every TensorSpec in a (distributed) dataset's element_spec, as (name, TensorShape)."""
    shapes = []
    for path, spec in _flatten_with_paths(element_spec):
        # A PerReplicaSpec (several replicas in this process) holds one spec per replica.
        components = None if isinstance(spec, tf.TensorSpec) else spec._component_specs
        for index, component in enumerate(components if components is not None else [spec]):
            shapes.append((f"{path}[{index}]" if components is not None else path,
                           component.shape))
    return shapes


def _flatten_with_paths(structure):
    if isinstance(structure, dict):
        return [(f"{key}{'/' + sub if sub else ''}", leaf) for key in sorted(structure)
                for sub, leaf in _flatten_with_paths(structure[key])]
    return [("", structure)]


# ---------------------------------------------------------------- the step, observed


class _GradientRecorder:
    """Stands in for the optimizer a step function is built with: keeps the gradients it is
    handed and applies them with the real optimizer, if any.

    The step functions call optimizer.apply_gradients(zip(grads, variables)) once per
    step, in a replica context with that replica's own gradients. They go, as one float32
    vector, into a variable synchronized on read with aggregation SUM: each replica writes
    its own copy, and reading it outside strategy.run (`summed()`) sums the copies over
    every replica of every worker, which is what the optimizer applies. Created in
    strategy.scope() (None: no strategy, one copy).
    """

    def __init__(self, variables, optimizer=None, strategy=None):
        self._optimizer = optimizer
        size = sum(int(np.prod(v.shape)) for v in variables)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            self._gradient = tf.Variable(
                tf.zeros([size]), trainable=False, name="selfcheck_gradient",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM)

    def apply_gradients(self, grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        self._gradient.assign(tf.concat(
            [tf.reshape(tf.cast(g if g is not None else tf.zeros(v.shape), tf.float32), [-1])
             for g, v in grads_and_vars], 0))
        if self._optimizer is not None:
            return self._optimizer.apply_gradients(grads_and_vars)
        return None

    def summed(self):
        """The last step's gradients summed over the replicas (numpy float32 [N])."""
        return self._gradient.numpy()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._optimizer, name)


class _ReplicaSlices:
    """A model (or encoder) whose calls run each replica's rows on their own and concatenate.

    Without model.sync_bn a replica's batch norm normalizes its own slice of the global
    batch; this makes the host reference do the same. Rows are split into num_slices
    equal consecutive parts, replica order (images are sample-major, so a replica's
    samples are consecutive rows). Attributes not defined here are the wrapped model's.
    """

    def __init__(self, model, num_slices, parts=()):
        self._model = model
        self._num_slices = num_slices
        for part in parts:
            setattr(self, part, _ReplicaSlices(getattr(model, part), num_slices))

    def _split(self, images):
        return tf.split(images, self._num_slices, axis=0)

    def __call__(self, images, training=False):
        outputs = [self._model(part, training=training) for part in self._split(images)]
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *outputs)

    def stateless_call(self, trainable_variables, non_trainable_variables, images, **kwargs):
        outputs, updates = [], None
        for part in self._split(images):
            output, updates = self._model.stateless_call(trainable_variables,
                                                         non_trainable_variables, part, **kwargs)
            outputs.append(output)
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *outputs), updates

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)


def _noting_shapes(step, shapes_seen):
    """step, noting the shapes of the batch it receives when traced (once per replica)."""
    def noted_step(batch):
        shapes_seen.extend((key, value.shape) for key, value in sorted(batch.items()))
        return step(batch)

    return noted_step


# ---------------------------------------------------------------- comparisons


def _relative(got, want):
    return abs(float(got) - float(want)) / max(abs(float(want)), 1e-12)


def compare_loss(name, got, want, rtol):
    """Each metric of `want` (the host reference) against `got` (the strategy's)."""
    errors = {key: _relative(got[key], want[key]) for key in want}
    worst = max(errors, key=errors.get)
    passed = all(error <= rtol for error in errors.values()) and all(
        np.isfinite(float(got[key])) for key in want)
    detail = (f"{float(got['loss']):.6g} on {{replicas}} vs {float(want['loss']):.6g} on the host "
              f"CPU; worst relative difference {errors[worst]:.1e} ({worst}), tolerance {rtol:g}")
    return Check(name, passed, detail, {
        "loss": float(got["loss"]), "reference_loss": float(want["loss"]),
        "max_relative_error": errors[worst], "tolerance": rtol})


def compare_gradients(name, got, want, variables, rtol, floor=GRADIENT_NORM_FLOOR):
    """got, want: float32 vectors, the variables' gradients concatenated in order.

    A variable's error is ||got - want|| / max(||want||, floor * ||want over all||).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    sizes = [int(np.prod(v.shape)) for v in variables]
    if got.shape != want.shape or sum(sizes) != want.size:
        return Check(name, False, f"gradient sizes differ: {got.shape} vs {want.shape}")
    total = np.linalg.norm(want)
    errors = []
    for got_part, want_part in zip(np.split(got, np.cumsum(sizes)[:-1]),
                                   np.split(want, np.cumsum(sizes)[:-1])):
        scale = max(np.linalg.norm(want_part), floor * total, 1e-30)
        errors.append(np.linalg.norm(got_part - want_part) / scale)
    errors = np.nan_to_num(np.array(errors), nan=np.inf)  # NaN counts as the worst
    index = int(np.argmax(errors))
    worst, worst_name = float(errors[index]), _variable_name(variables[index])
    overall = np.linalg.norm(got - want) / max(total, 1e-30)
    passed = bool(worst <= rtol) and bool(np.all(np.isfinite(got)))
    detail = (f"{len(variables)} variables summed over {{replicas}}; worst relative difference "
              f"{worst:.1e} ({worst_name}), whole gradient {overall:.1e}, tolerance {rtol:g}")
    return Check(name, passed, detail, {
        "variables": len(variables), "max_relative_error": float(worst),
        "worst_variable": worst_name, "relative_error": float(overall), "tolerance": rtol})


def _variable_name(variable):
    return getattr(variable, "path", None) or variable.name


def replica_values(strategy, variables):
    """Each replica's own copy of `variables`, flattened: float32 [num replicas, N].

    Read inside strategy.run (a replica reads its local copy) and gathered across
    replicas and workers.
    """
    if not variables:
        return np.zeros([strategy.num_replicas_in_sync, 0], np.float32)

    def local_values():
        return tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(v), tf.float32), [-1])
                          for v in variables], 0)[None]

    @tf.function
    def gather():
        return strategy.gather(strategy.run(local_values), axis=0)

    return gather().numpy()


def local_replica_values(strategy, variables):
    """This worker's replicas' copies of `variables`, flattened: [local replicas, N]."""
    per_variable = [[np.ravel(np.asarray(value, np.float32))
                     for value in strategy.experimental_local_results(v.value)]
                    for v in variables]
    return np.stack([np.concatenate(copies) for copies in zip(*per_variable)])


def check_replicas_agree(strategy, groups, rtol=AGREE_RTOL):
    """One Check per group: name -> (variables, what they are). A group passes when every
    replica holds the same values (up to rtol of the largest). One gather for all groups."""
    everything = [v for variables, _ in groups.values() for v in variables]
    values = replica_values(strategy, everything)
    checks, start = [], 0
    for name, (variables, what) in groups.items():
        size = sum(int(np.prod(v.shape)) for v in variables)
        part, start = values[:, start:start + size], start + size
        spread = float(np.max(np.abs(part - part[:1]))) if part.size else 0.0
        scale = float(np.max(np.abs(part))) if part.size else 0.0
        passed = spread <= rtol * max(scale, 1e-30)
        detail = (f"{len(variables)} {what} on {{replicas}}: "
                  + ("identical" if spread == 0 else f"largest difference {spread:.3g} "
                     f"(values up to {scale:.3g})"))
        if not passed and what.startswith("batch-norm"):
            detail += ("; the copies drifted apart, so evaluation inside strategy.run "
                       "normalizes differently on each replica, and a checkpoint keeps the "
                       "first replica's")
        checks.append(Check(name, passed, detail,
                            {"variables": len(variables), "max_difference": spread}))
    return checks


def _moving_statistics(*models):
    return [v for model in models for v in model.non_trainable_weights
            if _variable_name(v).rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")]


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class _Setting:
    """What the checks share."""

    config: object
    strategy: object
    num_classes: int
    num_train_examples: int
    jit_compile: bool
    precision: str
    slices: int  # the reference runs its batch norm on this many slices (1: the whole batch)

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def sizes(self):
        return {"num_classes": self.num_classes, "num_train_examples": self.num_train_examples}

    def reference_view(self, model):
        if self.slices == 1:
            return model
        return _ReplicaSlices(model, self.slices, parts=("encoder", "projection_head"))


def check_budget(config, num_replicas):
    """Raises SelfCheckError when the host reference's global batch is too large to run."""
    size = config.data.image_size
    stages = [("train.global_batch_size", config.train.global_batch_size,
               config.data.num_views)]
    if constants.stage_two_runs(config) and config.linear.protocol == "augmented":
        stages.append(("linear.global_batch_size", config.linear.global_batch_size,
                       train.stage_two_data_config(config).num_views))
    for field, batch, views in stages:
        pixels = batch * views * size * size
        if pixels <= HOST_REFERENCE_PIXELS or batch <= num_replicas:
            continue
        fits = HOST_REFERENCE_PIXELS // (views * size * size) // num_replicas * num_replicas
        suggested = max(num_replicas, fits)
        raise SelfCheckError(
            f"selfcheck: config.{field}={batch} x {views} view(s) at {size}x{size} is "
            f"{pixels / 1e6:.1f}M pixels for the host CPU reference (limit "
            f"{HOST_REFERENCE_PIXELS / 1e6:.1f}M); the devices only see the per-replica "
            f"batch, so shrink the global one, e.g. --config.train.global_batch_size="
            f"{suggested} --config.linear.global_batch_size={suggested} ({num_replicas} "
            f"replica{'s' * (num_replicas != 1)})")


def run(config, workdir, strategy):
    """Runs every check on `strategy`; returns the report (see report_json)."""
    started = time.time()
    check_budget(config, strategy.num_replicas_in_sync)
    try:
        jit_compile = strategy_lib.resolve_jit_compile(config.train.jit_compile, strategy)
        num_classes, num_train, sizes_from = describe.dataset_sizes(config.data)
    except (ValueError, OSError) as error:  # OSError: DatasetNotPreparedError, unpublished sizes
        raise SelfCheckError(f"selfcheck: {' '.join(str(error).split())}") from error
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    setting = _Setting(
        config=config, strategy=strategy, num_classes=int(num_classes),
        num_train_examples=int(num_train), jit_compile=jit_compile,
        precision="mixed" if config.train.mixed_precision else "float32",
        slices=1 if config.model.sync_bn else strategy.num_replicas_in_sync)
    tf.io.gfile.makedirs(workdir)
    logging.info("selfcheck: %s with %d replicas, %s, global batch %d, classes and sizes from "
                 "the %s", strategy_name(strategy), setting.num_replicas, config.method,
                 config.train.global_batch_size, sizes_from)

    checks, throughput = [], {}
    model, reference_model, stage_one_checks, images_per_sec = _stage_one(setting, workdir)
    checks += stage_one_checks
    throughput["stage_one"] = images_per_sec
    if not constants.stage_two_runs(config):
        pass  # ce reports its own classifier
    elif config.linear.protocol != "augmented":
        checks.append(Check("stage two", None, f"skipped: linear.protocol="
                            f"{config.linear.protocol!r} trains on cached embeddings on the host"))
    else:
        stage_two_checks, images_per_sec = _stage_two(setting, model, reference_model)
        checks += stage_two_checks
        throughput["stage_two"] = images_per_sec
    replicas = f"{setting.num_replicas} replica{'s' * (setting.num_replicas != 1)}"
    for check in checks:
        check.detail = check.detail.replace("{replicas}", replicas)
    return {
        "passed": all(check.passed is not False for check in checks),
        "checks": [check.as_dict() for check in checks],
        "images_per_sec_per_replica": throughput,
        "strategy": strategy_name(strategy),
        "num_replicas": setting.num_replicas,
        "device": _device_kind(strategy),
        "method": config.method,
        "global_batch_size": config.train.global_batch_size,
        "per_replica_batch": config.train.global_batch_size // setting.num_replicas,
        "num_views": config.data.num_views,
        "image_size": config.data.image_size,
        "sync_bn": bool(config.model.sync_bn),
        "jit_compile": jit_compile,
        "tensorflow": tf.__version__,
        "seconds": round(time.time() - started, 1),
    }


def strategy_name(strategy):
    """The public name of the strategy's class (MultiWorkerMirroredStrategy's is another)."""
    for name in ("TPUStrategy", "MultiWorkerMirroredStrategy", "MirroredStrategy",
                 "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return "default strategy"


def _device_kind(strategy):
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: one device, the CPU (make_strategy)
        devices = ()
    return tf.DeviceSpec.from_string(devices[0]).device_type if devices else "CPU"


def _stage_one(setting, workdir):
    """Stage one's checks; returns (model, the host reference model, checks, images/s)."""
    config, strategy = setting.config, setting.strategy
    model, optimizer, checkpoint, _ = train.build_stage_one(config, strategy, **setting.sizes)
    momentum = getattr(checkpoint, "momentum", None)
    with tf.device(_HOST_CPU):
        reference_model, _, reference_checkpoint, _ = train.build_stage_one(
            config, tf.distribute.get_strategy(), **setting.sizes)
    reference_momentum = getattr(reference_checkpoint, "momentum", None)
    global_batch, num_views = config.train.global_batch_size, config.data.num_views

    def batch_fn(step):
        return synthetic_batch(step, global_batch_size=global_batch, num_views=num_views,
                               image_size=config.data.image_size,
                               num_classes=setting.num_classes, seed=config.seed,
                               salt=STAGE_ONE_SALT)

    def replica_step(optimizer_or_recorder, on=model, queue=momentum,
                     num_replicas=setting.num_replicas, queue_in_loss=True):
        return train.make_replica_step(config, on, optimizer_or_recorder, num_replicas,
                                       momentum=queue, queue_in_loss=queue_in_loss)

    dataset = distributed_batches(strategy, batch_fn, global_batch)
    checks = [_check_element_spec(dataset)]
    iterator = iter(dataset)
    step = 0
    if momentum is not None:  # a step of keys first, so that the queue holds some
        fill = train.make_train_loop(strategy, replica_step(optimizer, queue_in_loss=False),
                                     setting.jit_compile)
        fill(iterator, tf.constant(1))
        step += 1

    # The host reference starts from the state the compared step starts from.
    with tf.device(_HOST_CPU):
        reference_model.set_weights(model.get_weights())
        if momentum is not None:
            _copy_queue(momentum, reference_momentum)
            reference_momentum.key_model = setting.reference_view(reference_momentum.key_model)
    variables = train.trained_variables(model, config.method)
    recorder, shapes_seen = _GradientRecorder(variables, optimizer, strategy), []
    loop = train.make_train_loop(strategy, _noting_shapes(replica_step(recorder), shapes_seen),
                                 setting.jit_compile)
    metrics = loop(iterator, tf.constant(1))  # the compared step; traces the loop
    checks.append(_check_traced_shapes("stage one", shapes_seen, global_batch, setting))
    with tf.device(_HOST_CPU):
        reference_recorder = _GradientRecorder(variables)
        reference_step = tf.function(replica_step(
            reference_recorder, on=setting.reference_view(reference_model),
            queue=reference_momentum, num_replicas=1))
        want = reference_step(batch_fn(step))
    names = ("loss", "classifier_loss")
    checks.append(compare_loss("stage one loss", metrics, {k: want[k] for k in names},
                               LOSS_RTOL[setting.precision]))
    checks.append(compare_gradients("stage one gradients", recorder.summed(),
                                    reference_recorder.summed(), variables,
                                    GRADIENT_RTOL[setting.precision]))
    if momentum is not None:
        checks.append(_compare_queues(momentum, reference_momentum))

    images_per_sec = _timed(loop, iterator, global_batch * num_views // setting.num_replicas)
    checks.append(Check("stage one throughput", None, _throughput_detail(
        images_per_sec, global_batch // setting.num_replicas, num_views, setting.jit_compile),
        {"images_per_sec_per_replica": images_per_sec}))

    # ---- the replicas' copies, then the checkpoint
    statistics = _moving_statistics(model, *([momentum.key_model] if momentum else []))
    weights = (model.trainable_weights + list(optimizer.variables)
               + (_queue_variables(momentum) if momentum else []))
    checks += check_replicas_agree(strategy, {
        "batch-norm statistics": (statistics, "batch-norm moving statistics"),
        "weights": (weights, "weights, optimizer and queue variables")})
    checks.append(_checkpoint_round_trip(setting, model, checkpoint, workdir))
    return model, reference_model, checks, images_per_sec


def _stage_two(setting, model, reference_model):
    """Stage two's checks on the stage-one model; returns (checks, images/s)."""
    config, strategy = setting.config, setting.strategy
    head, optimizer, _, _ = train.build_stage_two(config, strategy, model, **setting.sizes)
    data_config = train.stage_two_data_config(config)
    global_batch, num_views = config.linear.global_batch_size, data_config.num_views

    def batch_fn(step):
        return synthetic_batch(step, global_batch_size=global_batch, num_views=num_views,
                               image_size=data_config.image_size,
                               num_classes=setting.num_classes, seed=config.seed,
                               salt=STAGE_TWO_SALT)

    iterator = iter(distributed_batches(strategy, batch_fn, global_batch))
    with tf.device(_HOST_CPU):
        reference_model.set_weights(model.get_weights())
        reference_head, _, _, _ = train.build_stage_two(
            config, tf.distribute.get_strategy(), reference_model, **setting.sizes)
        reference_head.set_weights(head.get_weights())

    variables = head.trainable_variables
    recorder, shapes_seen = _GradientRecorder(variables, optimizer, strategy), []
    step = train.make_stage_two_step(config, model, head, recorder, setting.num_replicas)
    loop = train.make_train_loop(strategy, _noting_shapes(step, shapes_seen),
                                 setting.jit_compile, train.STAGE_TWO_METRICS)
    metrics = loop(iterator, tf.constant(1))
    checks = [_check_traced_shapes("stage two", shapes_seen, global_batch, setting)]
    with tf.device(_HOST_CPU):
        reference_recorder = _GradientRecorder(variables)
        reference_step = tf.function(train.make_stage_two_step(
            config, setting.reference_view(reference_model), reference_head,
            reference_recorder, 1))
        want = reference_step(batch_fn(0))
    checks.append(compare_loss("stage two loss", metrics, {"loss": want["loss"]},
                               LOSS_RTOL[setting.precision]))
    checks.append(compare_gradients("stage two gradients", recorder.summed(),
                                    reference_recorder.summed(), variables,
                                    GRADIENT_RTOL[setting.precision]))
    images_per_sec = _timed(loop, iterator, global_batch * num_views // setting.num_replicas)
    checks.append(Check("stage two throughput", None, _throughput_detail(
        images_per_sec, global_batch // setting.num_replicas, num_views, setting.jit_compile),
        {"images_per_sec_per_replica": images_per_sec}))
    return checks, images_per_sec


def _check_element_spec(dataset):
    shapes = _spec_shapes(dataset.element_spec)
    undefined = [f"{name} {shape}" for name, shape in shapes if not shape.is_fully_defined()]
    if undefined:
        return Check("static shapes", False, f"the distributed dataset yields shapes that are "
                     f"not fully defined: {', '.join(undefined[:4])}")
    shown = ", ".join(f"{name} {shape.as_list()}" for name, shape in shapes[:2])
    return Check("static shapes", True, f"{len(shapes)} tensor specs fully defined ({shown}, ...)",
                 {"tensors": len(shapes)})


def _check_traced_shapes(stage, shapes_seen, global_batch, setting):
    """What each replica's step received when traced: fully defined, the per-replica batch."""
    per_replica = global_batch // setting.num_replicas
    wrong = [f"{key} {shape}" for key, shape in shapes_seen
             if not shape.is_fully_defined() or shape[0] != per_replica]
    name = f"{stage} step input"
    if not shapes_seen or wrong:
        return Check(name, False, "the step received " + (", ".join(wrong[:4]) or "nothing")
                     + f"; expected fully defined shapes of {per_replica} rows")
    shown = ", ".join(f"{key} {shape.as_list()}" for key, shape in shapes_seen[:2])
    return Check(name, True, f"{shown} on each replica's trace")


def _timed(loop, iterator, images_per_replica_step):
    loop(iterator, tf.constant(1))  # the first call traces
    started = time.perf_counter()
    metrics = loop(iterator, tf.constant(TIMED_STEPS))
    float(metrics["loss"])  # waits for the steps
    seconds = time.perf_counter() - started
    return round(TIMED_STEPS * images_per_replica_step / seconds, 1)


def _throughput_detail(images_per_sec, per_replica, num_views, jit_compile):
    return (f"{images_per_sec:.1f} images/s per replica ({TIMED_STEPS} steps of {per_replica} "
            f"x {num_views} view(s) after the traced one; jit_compile {jit_compile})")


def _queue_variables(momentum):
    return [momentum.features, momentum.labels, momentum.pointer, momentum.count]


def _copy_queue(source, target):
    target.key_model.set_weights(source.key_model.get_weights())
    for got, want in zip(_queue_variables(source), _queue_variables(target)):
        want.assign(got.numpy())


def _compare_queues(momentum, reference):
    """The queue after the compared step against the host reference's queue."""
    features, want = momentum.features.numpy(), reference.features.numpy()
    labels_match = np.array_equal(momentum.labels.numpy(), reference.labels.numpy())
    places_match = (int(momentum.pointer.numpy()) == int(reference.pointer.numpy())
                    and int(momentum.count.numpy()) == int(reference.count.numpy()))
    error = float(np.max(np.abs(features - want)))  # unit vectors
    rtol = GRADIENT_RTOL["float32"]
    passed = labels_match and places_match and error <= rtol
    detail = (f"{int(momentum.count.numpy())} of {momentum.queue_size} slots filled; keys "
              f"differ by at most {error:.1e} (tolerance {rtol:g}), labels "
              f"{'match' if labels_match else 'DIFFER'}, pointer and count "
              f"{'match' if places_match else 'DIFFER'}")
    return Check("momentum queue", passed, detail, {"max_difference": error})


def _checkpoint_round_trip(setting, model, checkpoint, workdir):
    """checkpoint written under the workdir, read into a fresh build, compared, removed."""
    config, strategy = setting.config, setting.strategy
    resolver = getattr(strategy, "cluster_resolver", None)
    task = (f"{resolver.task_type}_{resolver.task_id}" if resolver is not None
            and resolver.task_type else "local")
    directory = f"{workdir.rstrip('/')}/selfcheck_tmp_{task}_{os.getpid()}"
    original_weights = model.get_weights()
    try:
        saved = checkpoint.write(f"{directory}/original")
        fresh_model, _, fresh, _ = train.build_stage_one(config, strategy, **setting.sizes)
        differed = sum(not np.array_equal(a, b)
                       for a, b in zip(fresh_model.get_weights(), original_weights))
        fresh.read(saved).assert_existing_objects_matched()
        rewritten = fresh.write(f"{directory}/restored")
        names = sorted(name for name, _ in tf.train.list_variables(saved)
                       if "_CHECKPOINTABLE_OBJECT_GRAPH" not in name)
        rewritten_names = sorted(name for name, _ in tf.train.list_variables(rewritten)
                                 if "_CHECKPOINTABLE_OBJECT_GRAPH" not in name)
        mismatched = [name for name in names if name in rewritten_names and not np.array_equal(
            tf.train.load_variable(saved, name), tf.train.load_variable(rewritten, name))]
        missing = sorted(set(names) ^ set(rewritten_names))
        # Every local replica of the fresh model holds what was saved here.
        restored = local_replica_values(strategy, fresh_model.weights)
        expected = np.concatenate([np.ravel(w).astype(np.float32) for w in original_weights])
        replicas_wrong = int(np.sum(np.any(restored != expected[None], axis=1)))
    except (tf.errors.OpError, AssertionError, ValueError) as error:
        return Check("checkpoint round trip", False, f"{type(error).__name__}: "
                     f"{' '.join(str(error).split())[:300]}")
    finally:
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)
    passed = not mismatched and not missing and not replicas_wrong and differed > 0
    detail = (f"{len(names)} variables written, read into a fresh build ({differed} of "
              f"{len(original_weights)} model weights differed before) and written again: "
              f"{len(mismatched)} differ, {len(missing)} missing; "
              f"{replicas_wrong} replica(s) not restored")
    if mismatched or missing:
        detail += f" (e.g. {(mismatched + missing)[0]})"
    return Check("checkpoint round trip", passed, detail,
                 {"variables": len(names), "mismatched": len(mismatched),
                  "missing": len(missing), "replicas_not_restored": replicas_wrong})


# ---------------------------------------------------------------- output


def format_table(report):
    rows = [(check["name"], check["result"].upper(), check["detail"])
            for check in report["checks"]]
    name_width = max(len("check"), *(len(row[0]) for row in rows))
    lines = [f"{'check':<{name_width}}  result  detail",
             f"{'-' * name_width}  ------  {'-' * 6}"]
    lines += [f"{name:<{name_width}}  {result:<6}  {detail}" for name, result, detail in rows]
    verdict = "every check passed" if report["passed"] else "FAILED: see the rows marked FAIL"
    lines.append(f"selfcheck: {verdict} ({report['strategy']}, {report['num_replicas']} "
                 f"replica(s) on {report['device']}, {report['seconds']} s)")
    return "\n".join(lines)


def report_json(report):
    """The report as one JSON line (what print_report prints last)."""
    return json.dumps(report, sort_keys=True)


def print_report(report):
    print(format_table(report))
    print(report_json(report), flush=True)
