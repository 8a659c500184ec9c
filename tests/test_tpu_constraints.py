"""What a TPU demands of the training step, checked on the CPU without one.

TPUStrategy compiles each stage's whole replicated step with XLA. That requires:
static shapes from the input pipeline (a partial batch would not compile), no
variable created while a step is traced, no float64 anywhere in the step, and a
replica step XLA can compile. Under MirroredStrategy over several logical CPUs XLA
compiles neither the update of mirrored optimizer variables nor the all-gather, so
compilation is proved on one replica (default strategy) and the multi-replica
properties without XLA on 2 replicas. Exactness across 2, 4 and 8 replicas, the
checkpoints and batch norm are in test_tpu_constraints_replicas.py.

Stages, each built the way train.train / train.train_stage_two build it:
  supcon      LARS, synchronized batch norm, mixed_bfloat16 (the ImageNet TPU configs)
  simclr      SGD, per-epoch cosine, per-replica batch norm
  ce          Nesterov, cross-entropy on view 1
  stage_two   frozen encoder on batch statistics, RMSProp, exponential decay (official)
  stage_two_inference  frozen encoder on moving averages, SGD, piecewise decay
  queue       supcon with the momentum queue (key encoder EMA, keys, queue in the
              loss, enqueue); the steps that fill the queue first run a subset of its ops
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import load_config, mirrored_strategy
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry

from supcon_tf import constants, data, optim, train

NUM_CLASSES = 10
NUM_TRAIN_EXAMPLES = 1437  # the digits training split
GLOBAL_BATCH = 16
QUEUE_SIZE = 64  # two steps of 16 samples x 2 views
STAGES = ("supcon", "simclr", "ce", "stage_two", "stage_two_inference", "queue")


def stage_config(stage):
    """configs/digits.py:tiny at a global batch of 16, set up for `stage`."""
    config = load_config("digits.py", "tiny")
    config.train.global_batch_size = GLOBAL_BATCH
    config.linear.global_batch_size = GLOBAL_BATCH
    if stage in ("supcon", "queue"):
        config.optim.name = "lars"
        config.model.sync_bn = True
    if stage == "supcon":
        config.train.mixed_precision = "mixed_bfloat16"
    if stage == "queue":
        config.loss.queue_size = QUEUE_SIZE
        config.model.momentum = 0.9
    if stage == "simclr":
        config.method = "simclr"
        config.optim.schedule = "cosine_epoch"
    if stage == "ce":
        config.method = "ce"
        config.optim.name = "nesterov"
        config.loss.cross_entropy_views = "first"
        config.loss.label_smoothing = 0.1
    if stage == "stage_two":
        config.linear.bn_mode = "batch_stats"
        config.linear.label_smoothing = 0.05
        config.linear.optim.update(name="rmsprop", epsilon=0.001, weight_decay=1e-6,
                                   schedule="exponential", decay_every_epochs=0.5,
                                   decay_rate=0.97)
    if stage == "stage_two_inference":
        config.linear.bn_mode = "inference"
        config.linear.optim.update(schedule="piecewise", decay_epochs=(0.5, 1.0))
    return config


Built = collections.namedtuple(
    "Built", "loop model optimizer checkpoint data_config global_batch_size seed metric_names")


def build_stage(stage, strategy, jit_compile=False, config=None):
    """The stage's train loop as train.py assembles it, with everything it needs."""
    config = config or stage_config(stage)
    sizes = dict(num_classes=NUM_CLASSES, num_train_examples=NUM_TRAIN_EXAMPLES)
    if config.train.mixed_precision:  # as train.run sets it; the layers keep their policy
        keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    try:
        model, optimizer, checkpoint, _ = train.build_stage_one(config, strategy, **sizes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    replicas = strategy.num_replicas_in_sync
    if stage.startswith("stage_two"):
        head, optimizer, checkpoint, _ = train.build_stage_two(config, strategy, model, **sizes)
        step = train.make_stage_two_step(config, model, head, optimizer, replicas)
        return Built(train.make_train_loop(strategy, step, jit_compile, train.STAGE_TWO_METRICS),
                     model, optimizer, checkpoint, train.stage_two_data_config(config),
                     config.linear.global_batch_size,
                     config.seed + constants.STAGE_TWO_SEED_OFFSET, train.STAGE_TWO_METRICS)
    step = train.make_replica_step(config, model, optimizer, replicas,
                                   momentum=getattr(checkpoint, "momentum", None),
                                   queue_in_loss=True)
    return Built(train.make_train_loop(strategy, step, jit_compile), model, optimizer, checkpoint,
                 config.data, config.train.global_batch_size, config.seed,
                 train.STAGE_ONE_METRICS)


def distributed_stream(strategy, data_config, global_batch_size, seed, start_step=0):
    """The distributed dataset exactly as train.run_stage makes it."""
    def dataset_fn(input_context):
        return data.build_train_dataset(data_config, global_batch_size=global_batch_size,
                                        seed=seed, input_context=input_context,
                                        start_step=start_step)

    return strategy.distribute_datasets_from_function(dataset_fn)


def fixed_batch(data_config, global_batch_size):
    """One global batch of the pipeline's shapes and dtypes, in memory."""
    rng = np.random.default_rng(0)
    size, views = data_config.image_size, data_config.num_views
    views = rng.uniform(size=(global_batch_size, views, size, size, 3)).astype(np.float32)
    return {"views": views,
            "label": rng.integers(0, NUM_CLASSES, global_batch_size).astype(np.int32)}


def fixed_stream(strategy, data_config, global_batch_size):
    """fixed_batch on every step; replica r gets its rows [r * b, (r + 1) * b). Its
    element_spec is the pipeline's (test 1), so the loop traces the same step."""
    batch = fixed_batch(data_config, global_batch_size)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        return tf.data.Dataset.from_tensor_slices(batch).batch(
            per_replica, drop_remainder=True).repeat()

    return strategy.distribute_datasets_from_function(dataset_fn)


def stream_of(built, strategy):
    return iter(fixed_stream(strategy, built.data_config, built.global_batch_size))


def assert_trained(built, metrics, steps):
    assert set(metrics) == set(built.metric_names)
    assert float(metrics["finite"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert int(built.optimizer.iterations.numpy()) == steps


# ---------------------------------------------------------------- 1. static shapes


def write_image_folder(root):
    """root/{train,test}/<class>/<image>: 3 classes of PNG and JPEG images of odd sizes."""
    sizes = [(13, 9), (9, 21), (17, 17)]
    for split in ("train", "test"):
        for label, name in enumerate(("ant", "bee", "cat")):
            class_dir = root / split / name
            class_dir.mkdir(parents=True)
            for number, (height, width) in enumerate(sizes):
                image = np.full((height, width, 3), 40 * label + 10 * number, np.uint8)
                encoded = tf.io.encode_jpeg(image) if number % 2 else tf.io.encode_png(image)
                tf.io.write_file(str(class_dir / f"{number}.{'jpg' if number % 2 else 'png'}"),
                                 encoded)
    return str(root)


def source_config(source, tmp_path):
    config = stage_config("supcon")
    if source == "image_folder":
        config.data.update(name="image_folder", data_dir=write_image_folder(tmp_path))
    elif source == "tfds_mock":  # any TFDS name; its images come in many sizes
        config.data.update(name="oxford_flowers102", data_dir=str(tmp_path / "absent"),
                           eval_split="test")
    elif source == "balanced":
        config.data.samples_per_class = 2
    return config


@pytest.mark.parametrize("stage", ["stage_one", "stage_two"])
@pytest.mark.parametrize("source", ["digits", "image_folder", "tfds_mock", "balanced"])
def test_every_distributed_batch_has_a_fully_static_shape(source, stage, tmp_path):
    """A partial or unknown-size batch is a compile failure under TPUStrategy."""
    config = source_config(source, tmp_path)
    strategy = mirrored_strategy(2)
    if stage == "stage_one":
        data_config, global_batch = config.data, config.train.global_batch_size
    else:
        data_config, global_batch = (train.stage_two_data_config(config),
                                     config.linear.global_batch_size)
    num_views = data_config.num_views
    size = data_config.image_size
    per_replica = global_batch // strategy.num_replicas_in_sync
    expected = {"views": [per_replica, num_views, size, size, 3], "label": [per_replica]}
    with tfds.testing.mock_data(num_examples=12):  # only the TFDS-by-name source reads it
        stream = distributed_stream(strategy, data_config, global_batch, seed=3, start_step=2)
        iterator = iter(stream)
        for spec in (stream.element_spec, iterator.element_spec):
            assert set(spec) == set(expected)
            for key, per_replica_spec in spec.items():
                # One TensorSpec per replica.
                components = tf.nest.flatten(per_replica_spec, expand_composites=True)
                assert len(components) == strategy.num_replicas_in_sync, per_replica_spec
                for tensor_spec in components:
                    assert tensor_spec.shape.is_fully_defined(), (key, tensor_spec)
                    assert tensor_spec.shape.as_list() == expected[key], (key, tensor_spec)
        batch = next(iterator)
    # The steps below are traced on fixed_stream: the same element_spec.
    assert fixed_stream(strategy, data_config, global_batch).element_spec == stream.element_spec
    for key, value in batch.items():
        for local in strategy.experimental_local_results(value):
            assert local.shape.as_list() == expected[key]


# ---------------------------------------------------------------- 2. variable creation


def refuse_variable_creation(next_creator, **kwargs):
    raise AssertionError(f"variable {kwargs.get('name')!r} created inside a traced step")


# The graph of each stage's loop as the test below traces it, for the float64 test.
TRACED = {}


def traced_on_two_replicas(stage, guard=None):
    """The GraphDef of the stage's train loop traced on 2 replicas. Tracing runs the
    replica step's Python once per replica, and a tf.function creates variables only
    while it traces."""
    strategy = mirrored_strategy(2)
    built = build_stage(stage, strategy)
    iterator = stream_of(built, strategy)
    with tf.variable_creator_scope(guard or (lambda next_creator, **kw: next_creator(**kw))):
        concrete = built.loop.get_concrete_function(iterator, tf.constant(2))
    return concrete.graph.as_graph_def()


@pytest.mark.parametrize("stage", STAGES)
def test_no_variable_is_created_inside_the_traced_step(stage):
    """Everything is built before the loop is traced, on 2 replicas as TPUStrategy runs."""
    TRACED[stage] = traced_on_two_replicas(stage, guard=refuse_variable_creation)


def test_the_variable_guard_sees_a_variable_made_inside_the_replica_step():
    strategy = mirrored_strategy(2)
    created = []

    def step_making_a_variable(batch):
        if not created:  # the lazy creation that building before the loop avoids
            created.append(tf.Variable(0.0))
        return {name: tf.cast(batch, tf.float32) + created[0] for name in ("loss", "finite")}

    loop = train.make_train_loop(strategy, step_making_a_variable, False, ("loss", "finite"))
    stream = strategy.distribute_datasets_from_function(
        lambda _: tf.data.Dataset.range(1).repeat())
    with tf.variable_creator_scope(refuse_variable_creation):
        with pytest.raises(AssertionError, match="created inside a traced step"):
            loop(iter(stream), tf.constant(1))


# ---------------------------------------------------------------- 3. no float64


FLOAT64 = (types_pb2.DT_DOUBLE, types_pb2.DT_DOUBLE_REF)


def output_types(node, library):
    """The DataTypes of a NodeDef's outputs, from its op's definition and attributes."""
    if node.op in library:  # a call of a library function by name
        return [arg.type for arg in library[node.op].signature.output_arg]
    op_def = op_def_registry.get(node.op)
    assert op_def is not None, f"unknown op {node.op} ({node.name})"
    types = []
    for arg in op_def.output_arg:
        if arg.type_list_attr:
            types += list(node.attr[arg.type_list_attr].list.type)
            continue
        dtype = arg.type or node.attr[arg.type_attr].type
        types += [dtype] * (node.attr[arg.number_attr].i if arg.number_attr else 1)
    return types


def graph_float64(graph_def):
    """(every float64 output or function argument, as text; op types walked) in the graph
    and every function of its library (loop bodies, branches, the XLA step, gradients)."""
    library = {f.signature.name: f for f in graph_def.library.function}
    found, op_types = [], collections.Counter()
    bodies = [("<top>", graph_def.node)] + [(name, f.node_def) for name, f in library.items()]
    for where, nodes in bodies:
        for node in nodes:
            op_types[node.op] += 1
            if any(dtype in FLOAT64 for dtype in output_types(node, library)):
                found.append(f"{where}/{node.name} ({node.op})")
    for name, function in library.items():
        for arg in list(function.signature.input_arg) + list(function.signature.output_arg):
            if arg.type in FLOAT64:
                found.append(f"{name}:{arg.name}")
    return found, op_types


@pytest.mark.parametrize("stage", STAGES)
def test_no_float64_in_the_step(stage):
    """TPUs have no float64: not in the replica step, its gradient, the optimizer update,
    the all-reduces or the loop, on 2 replicas."""
    graph_def = TRACED.pop(stage, None) or traced_on_two_replicas(stage)
    found, op_types = graph_float64(graph_def)
    assert op_types["AssignVariableOp"] + op_types["AssignSubVariableOp"] > 0  # the update
    assert op_types["Conv2D"] > 0  # the encoder, inside the loop body
    assert not found, f"{len(found)} float64 tensors: {found[:10]}"


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_no_float64_in_any_optimizer_update(name, schedule):
    """Every optimizer and schedule, on a small stand-in for the model's variables."""
    config = load_config("digits.py").optim
    config.update(name=name, schedule=schedule, decay_epochs=(1.0, 2.0))
    if name == "adamw":
        config.weight_decay_form = "decoupled"
    variables = [tf.Variable(tf.ones([3, 2])), tf.Variable(tf.zeros([2]))]
    optimizer = optim.build_optimizer(config, variables, global_batch_size=GLOBAL_BATCH,
                                      steps_per_epoch=10.0, total_steps=30,
                                      batch_norm_variables=variables[1:])

    @tf.function
    def update(gradients):
        optimizer.apply_gradients(zip(gradients, variables))
        return optimizer.learning_rate

    gradients = [tf.ones([3, 2]), tf.ones([2])]
    with tf.variable_creator_scope(refuse_variable_creation):
        graph_def = update.get_concrete_function(gradients).graph.as_graph_def()
        update(gradients)
    found, op_types = graph_float64(graph_def)
    assert op_types["AssignVariableOp"] + op_types["AssignSubVariableOp"] > 0
    assert not found, f"{len(found)} float64 tensors: {found[:10]}"


# ---------------------------------------------------------------- 4. XLA


@pytest.mark.host_xla
@pytest.mark.parametrize("stage", STAGES)
def test_the_whole_replica_step_compiles_with_xla(stage):
    """jit_compile=True on one replica: model, loss, gradient, optimizer update, the key
    encoder's EMA and the enqueue, as TPUStrategy compiles them (it fails rather than
    fall back to TensorFlow when an op does not compile)."""
    strategy = tf.distribute.get_strategy()
    built = build_stage(stage, strategy, jit_compile=True)
    metrics = built.loop(stream_of(built, strategy), tf.constant(2))
    assert_trained(built, metrics, steps=2)
    if stage == "supcon":
        assert built.model.encoder.dtype_policy.compute_dtype == "bfloat16"
