"""The momentum key encoder and its queue (supcon_tf/momentum.py), and joint training
(config.loss.cross_entropy_weight) in stage one's step."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import load_config, mirrored_strategy, sigterm_after_first_loop

from supcon_tf import momentum as momentum_lib
from supcon_tf import train

NUM_CLASSES = 10


def queue_config(global_batch_size=16, queue_size=64):
    config = load_config("digits_small_batch.py", "tiny")
    config.train.global_batch_size = global_batch_size
    config.loss.queue_size = queue_size
    config.model.momentum = 0.9
    return config


def synthetic_iterator(strategy, config, seed=0):
    """Fixed global batches (a new one each step); replica i gets rows [i * b, (i + 1) * b)."""
    rng = np.random.default_rng(seed)
    size, views = config.data.image_size, config.data.num_views
    global_batch = config.train.global_batch_size
    batches = {"views": rng.uniform(size=(8, global_batch, views, size, size, 3)).astype(np.float32),
               "label": rng.integers(0, 4, size=(8, global_batch)).astype(np.int32)}

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        rows = tf.data.Dataset.from_tensor_slices(batches).unbatch()
        return rows.batch(per_replica, drop_remainder=True).repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def build(config, strategy, jit_compile=False):
    """Stage one with its momentum queue: (model, optimizer, momentum, loop filling the
    queue, loop using it)."""
    model, optimizer, checkpoint, _ = train.build_stage_one(
        config, strategy, num_classes=NUM_CLASSES, num_train_examples=1000)
    loops = [train.make_train_loop(strategy, train.make_replica_step(
        config, model, optimizer, strategy.num_replicas_in_sync, momentum=checkpoint.momentum,
        queue_in_loss=queue_in_loss), jit_compile) for queue_in_loss in (False, True)]
    return model, optimizer, checkpoint.momentum, loops[0], loops[1]


def local(variable, strategy):
    return [v.numpy() for v in strategy.experimental_local_results(variable)]


# ---------------------------------------------------------------- the module alone


def test_ema_update_matches_the_formula_and_leaves_batch_norm_statistics_alone():
    config = queue_config()
    model, _, momentum, _, _ = build(config, tf.distribute.get_strategy())
    key_model = momentum.key_model
    rng = np.random.default_rng(0)
    for variable in model.variables + key_model.variables:  # query and key differ
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    before = {id(v): v.numpy() for v in key_model.variables}
    query = model.encoder.trainable_weights + model.projection_head.trainable_weights
    keys = key_model.encoder.trainable_weights + key_model.projection_head.trainable_weights
    momentum.update_key_encoder()
    for key, query_variable in zip(keys, query):
        expected = 0.9 * before[id(key)] + 0.1 * query_variable.numpy()
        np.testing.assert_allclose(key.numpy(), expected, rtol=1e-6, atol=1e-7)
    averaged = {id(v) for v in keys}
    untouched = [v for v in key_model.variables if id(v) not in averaged]
    assert any("moving_mean" in v.path for v in untouched)
    for variable in untouched:  # batch norm statistics and the unused classifier
        np.testing.assert_array_equal(variable.numpy(), before[id(variable)])


def test_key_model_starts_as_a_copy_of_the_model():
    model, _, momentum, _, _ = build(queue_config(), tf.distribute.get_strategy())
    query = model.encoder.weights + model.projection_head.weights
    keys = momentum.key_model.encoder.weights + momentum.key_model.projection_head.weights
    assert len(keys) == len(query) > 0
    for key, query_variable in zip(keys, query):
        np.testing.assert_array_equal(key.numpy(), query_variable.numpy())


def test_queue_is_fifo_and_wraps_around():
    """10 slots, 2 samples x 2 views a step: key k goes to slot k % 10, the last 10 stay."""
    model = build(queue_config(), tf.distribute.get_strategy())[0]
    queue = momentum_lib.MomentumQueue(model, model, momentum=0.5, queue_size=10,
                                       projection_dim=3)
    for step in range(3):
        ids = np.arange(4 * step, 4 * step + 4, dtype=np.float32)  # key ids, sample-major
        keys = np.repeat(ids[:, None], 3, axis=1).reshape(2, 2, 3)
        queue.enqueue(tf.constant(keys), tf.constant([10 * step, 10 * step + 1]))
        filled = min(4 * (step + 1), 10)
        assert int(queue.count.numpy()) == filled
        assert int(queue.pointer.numpy()) == 4 * (step + 1) % 10
    features, labels = queue.features.numpy(), queue.labels.numpy()
    for key_id in range(2, 12):
        np.testing.assert_array_equal(features[key_id % 10], [key_id] * 3)
        step, sample = divmod(key_id // 2, 2)
        assert labels[key_id % 10] == 10 * step + sample  # both views carry the label


def test_unfilled_slots_are_empty_until_the_queue_fills():
    model = build(queue_config(), tf.distribute.get_strategy())[0]
    queue = momentum_lib.MomentumQueue(model, model, momentum=0.5, queue_size=10,
                                       projection_dim=3)
    queue.enqueue(tf.ones([2, 2, 3]), tf.constant([3, 4]))
    np.testing.assert_array_equal(queue.labels.numpy()[4:], [momentum_lib.EMPTY_LABEL] * 6)
    assert momentum_lib.steps_to_fill(10, 4) == 3 and momentum_lib.steps_to_fill(8, 4) == 2


@pytest.mark.slow
def test_training_passes_the_queue_to_the_loss_only_once_full(tmp_path, monkeypatch):
    """train() runs steps_to_fill steps without the queue, then every step with a full one."""
    config = queue_config(global_batch_size=128, queue_size=640)  # 256 keys a step: 3 to fill
    counts = tf.Variable([0, 0])
    real_loss = train.supcon_loss

    def counting_loss(features, labels=None, **kwargs):
        if kwargs.get("queue_features") is None:
            counts.assign_add([1, 0])
        else:
            tf.debugging.assert_none_equal(kwargs["queue_labels"], momentum_lib.EMPTY_LABEL)
            counts.assign_add([0, 1])
        return real_loss(features, labels, **kwargs)

    monkeypatch.setattr(train, "supcon_loss", counting_loss)
    _, steps = train.train(config, str(tmp_path), tf.distribute.get_strategy(),
                           num_classes=NUM_CLASSES, num_train_examples=1437)
    assert steps == 1437 // 128
    assert counts.numpy().tolist() == [3, steps - 3]


# ---------------------------------------------------------------- replicas and XLA


@pytest.mark.slow
def test_four_replicas_hold_one_queue_equal_to_the_one_device_run():
    """Sync BN: 4 replicas take the one-device steps on the global batch, queue included."""
    config = queue_config(global_batch_size=16, queue_size=48)  # 32 keys a step
    config.model.sync_bn = True
    runs = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy(4)):
        model, _, momentum, _, use = build(config, strategy)
        iterator = synthetic_iterator(strategy, config)
        # One traced loop (tracing 4 replicas is the cost): the first step sees an empty
        # queue, the second a partly filled one, the others a full one; all are contrasts.
        losses = [float(use(iterator, tf.constant(1))["loss"]) for _ in range(4)]
        copies = local(momentum.features, strategy)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0])
        label_copies = local(momentum.labels, strategy)
        assert all(np.array_equal(c, label_copies[0]) for c in label_copies)
        assert int(momentum.count.numpy()) == 48 and int(momentum.pointer.numpy()) == 32
        runs.append((losses, copies[0], label_copies[0],
                     [v.numpy() for v in model.trainable_variables],
                     [v.numpy() for v in momentum.key_model.trainable_variables]))
    (losses_one, queue_one, labels_one, weights_one, keys_one), four = runs[0], runs[1]
    np.testing.assert_allclose(four[0], losses_one, rtol=1e-5)
    np.testing.assert_array_equal(four[2], labels_one)
    np.testing.assert_allclose(four[1], queue_one, rtol=1e-4, atol=1e-5)
    for one, other in zip(weights_one + keys_one, four[3] + four[4]):
        np.testing.assert_allclose(other, one, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.host_xla
def test_single_replica_step_with_the_queue_compiles_with_xla():
    config = queue_config(global_batch_size=16, queue_size=32)
    config.optim.name = "lars"
    _, optimizer, momentum, fill, use = build(config, tf.distribute.get_strategy(),
                                              jit_compile=True)
    iterator = synthetic_iterator(tf.distribute.get_strategy(), config)
    assert float(fill(iterator, tf.constant(1))["finite"]) == 1.0
    metrics = use(iterator, tf.constant(2))
    assert float(metrics["finite"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert int(optimizer.iterations.numpy()) == 3 and int(momentum.pointer.numpy()) == 0


# ---------------------------------------------------------------- checkpoints


def checkpoint_values(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if not key.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}


@pytest.mark.slow
def test_run_preempted_while_filling_resumes_bit_for_bit(tmp_path, monkeypatch):
    config = queue_config(global_batch_size=64, queue_size=512)  # 4 steps to fill
    config.train.steps_per_loop = 2
    strategy = tf.distribute.get_strategy()
    sizes = dict(num_classes=NUM_CLASSES, num_train_examples=1437)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train(config, straight, strategy, **sizes)

    sigterm_after_first_loop(monkeypatch)
    with pytest.raises(train.Preempted):
        train.train(config, resumed, strategy, **sizes)
    assert tf.train.latest_checkpoint(os.path.join(resumed, "checkpoints")).endswith("ckpt-2")
    monkeypatch.undo()
    train.train(config, resumed, strategy, **sizes)

    expected, actual = checkpoint_values(straight), checkpoint_values(resumed)
    assert sorted(actual) == sorted(expected)
    assert any(key.startswith("momentum/key_model/") for key in expected)
    assert any(key.startswith("momentum/features") for key in expected)
    differing = [key for key in expected if not np.array_equal(actual[key], expected[key])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ: {differing[:5]}"


# ---------------------------------------------------------------- joint training


def sgd_config(weight):
    config = load_config("digits.py", "tiny")
    config.train.global_batch_size = 16
    config.loss.cross_entropy_weight = weight
    config.loss.label_smoothing = 0.1
    config.optim.update(name="sgd", momentum=0.0, weight_decay=0.0, warmup_epochs=0)
    return config


def one_step_gradients(config):
    """(gradient the step applied, expected gradient of the SupCon loss, expected gradient of
    the classifier's cross-entropy through the encoder), per encoder variable; plain SGD."""
    strategy = tf.distribute.get_strategy()
    model, optimizer, _, _ = train.build_stage_one(config, strategy, num_classes=NUM_CLASSES,
                                                   num_train_examples=1000)
    batch = next(synthetic_iterator(strategy, config))
    images = tf.reshape(batch["views"], [-1] + batch["views"].shape[2:].as_list())
    labels = batch["label"]
    encoder = model.encoder.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(images, training=True)
        projections = tf.reshape(outputs["projection"], [16, 2, -1])
        supcon = train.supcon_loss(projections, labels, temperature=config.loss.temperature)
        logits = model.classifier(model.head_input(outputs["embedding"]))
        targets = tf.one_hot(tf.repeat(labels, 2), NUM_CLASSES) * 0.9 + 0.01
        ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
    expected_supcon, expected_ce = tape.gradient(supcon, encoder), tape.gradient(ce, encoder)
    before = [v.numpy() for v in encoder]
    learning_rate = float(optimizer.learning_rate)
    step = train.make_replica_step(config, model, optimizer, 1)
    train.make_train_loop(strategy, step, False)(iter([batch]), tf.constant(1))
    applied = [(b - v.numpy()) / learning_rate for b, v in zip(before, encoder)]
    return applied, expected_supcon, expected_ce


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_cross_entropy_weight_adds_weighted_cross_entropy_gradient_to_the_encoder(weight):
    applied, supcon, ce = one_step_gradients(sgd_config(weight))
    assert max(float(tf.reduce_max(tf.abs(g))) for g in ce) > 1e-3  # the term is not tiny
    for got, s, c in zip(applied, supcon, ce):
        np.testing.assert_allclose(got, s.numpy() + weight * c.numpy(), rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize("field, value, message", [
    ("loss.queue_size", 31, "smaller than the 32 keys"),
    ("loss.queue_size", -1, "integer >= 0"),
    ("model.momentum", 1.0, r"must be in \[0, 1\)"),
    ("loss.cross_entropy_weight", -0.5, "number >= 0"),
    ("loss.positives_cap", 2, "does not combine with a queue"),
    ("method", "ce", "apply to supcon and simclr"),
])
def test_config_check_names_the_bad_queue_field(field, value, message):
    config = load_config("digits_small_batch.py")
    momentum_lib.check_config(config)  # the shipped config passes
    section, name = field.rsplit(".", 1) if "." in field else (None, field)
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        momentum_lib.check_config(config)
