"""TPU constraints across replicas (2, 4 and 8 logical CPUs, MirroredStrategy, no XLA):
the loss's cross-replica gather, checkpoints moved between replica counts, and batch
norm statistics. The single-replica and graph constraints are in test_tpu_constraints.py.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy
from test_tpu_constraints import (GLOBAL_BATCH, build_stage, fixed_batch, stage_config,
                                  stream_of)

from supcon_tf import checkpoints, cross_replica
from supcon_tf.losses import supcon_loss


def split_over_replicas(strategy, array):
    """Replica r holds the r-th of num_replicas equal parts of array's first axis."""
    parts = np.split(array, strategy.num_replicas_in_sync)
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(parts[context.replica_id_in_sync_group]))


def local_values(strategy, value):
    """Every replica's copy (or part) of a per-replica value or variable, as numpy."""
    if hasattr(value, "value") and not isinstance(value, tf.Variable):  # a Keras variable
        value = value.value
    return [np.asarray(part) for part in strategy.experimental_local_results(value)]


# ---------------------------------------------------------------- 5. the gather


@pytest.mark.parametrize("replicas", [2, 4, 8])
def test_gather_rows_equals_all_gather_in_value_and_gradient(replicas):
    strategy = mirrored_strategy(replicas)
    rows = 3
    rng = np.random.default_rng(replicas)
    values = rng.normal(size=(replicas * rows, 2, 5)).astype(np.float32)
    # Each replica weighs the gathered rows its own way, so a row's gradient sums the
    # contributions of every replica and each replica's part of it is distinct.
    weights = rng.normal(size=(replicas, replicas * rows, 2, 5)).astype(np.float32)
    labels = (2**24 - np.arange(1, replicas * rows + 1)).astype(np.int32)  # exact in float32

    def replica_fn(local, local_weights, local_labels):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(local)
            ours = cross_replica.gather_rows(local)
            theirs = context.all_gather(local, axis=0)
            our_loss = tf.reduce_sum(local_weights[0] * tf.sin(ours))
            their_loss = tf.reduce_sum(local_weights[0] * tf.sin(theirs))
        return {"ours": ours, "theirs": theirs,
                "our_gradient": tape.gradient(our_loss, local),
                "their_gradient": tape.gradient(their_loss, local),
                "our_labels": cross_replica.gather_rows(local_labels),
                "their_labels": context.all_gather(local_labels, axis=0)}

    @tf.function
    def run(*args):
        return strategy.run(replica_fn, args=args)

    out = run(*(split_over_replicas(strategy, a) for a in (values, weights, labels)))
    assert out["our_gradient"] is not None, "no gradient flows back through gather_rows"
    out = {key: local_values(strategy, value) for key, value in out.items()}
    expected_gradient = weights.sum(axis=0) * np.cos(values)
    for r in range(replicas):
        assert out["ours"][r].shape == values.shape
        np.testing.assert_array_equal(out["ours"][r], values)
        np.testing.assert_array_equal(out["ours"][r], out["theirs"][r])
        np.testing.assert_array_equal(out["our_labels"][r], labels)
        assert out["our_labels"][r].dtype == out["their_labels"][r].dtype == np.int32
        np.testing.assert_array_equal(out["our_labels"][r], out["their_labels"][r])
    for key in ("our_gradient", "their_gradient"):
        np.testing.assert_allclose(np.concatenate(out[key]), expected_gradient, rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    np.testing.assert_allclose(np.concatenate(out["our_gradient"]),
                               np.concatenate(out["their_gradient"]), rtol=1e-6, atol=1e-7)


def reference_supcon(features, labels, temperature):
    """Eq. 2 of the paper written out densely on one device (NT-Xent when labels is None):
    -mean_i 1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t))."""
    batch, views, dim = features.shape
    z = tf.reshape(features, [batch * views, dim])
    sample = tf.repeat(tf.range(batch), views)
    group = tf.repeat(tf.constant(labels), views) if labels is not None else sample
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    itself = tf.eye(batch * views, dtype=tf.bool)
    log_prob = logits - tf.reduce_logsumexp(tf.where(itself, -np.inf, logits), axis=1,
                                            keepdims=True)
    positive = tf.logical_and(tf.equal(group[:, None], group[None, :]), ~itself)
    positive = tf.cast(positive, tf.float32)
    per_anchor = -tf.reduce_sum(positive * log_prob, 1) / tf.reduce_sum(positive, 1)
    return tf.reduce_mean(per_anchor)


@pytest.mark.parametrize("supervised", [True, False])
@pytest.mark.parametrize("replicas", [2, 4, 8])
def test_supcon_loss_on_replicas_is_the_one_device_loss_of_the_global_batch(replicas,
                                                                           supervised):
    strategy = mirrored_strategy(replicas)
    rng = np.random.default_rng(10 * replicas + supervised)
    features = rng.normal(size=(GLOBAL_BATCH, 2, 6)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    labels = rng.integers(0, 5, GLOBAL_BATCH).astype(np.int32) if supervised else None
    temperature = 0.1

    features_tensor = tf.constant(features)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features_tensor)
        expected = reference_supcon(features_tensor, labels, temperature)
        one_device = supcon_loss(features_tensor, labels, temperature=temperature)
    expected_gradient = tape.gradient(expected, features_tensor).numpy()
    np.testing.assert_allclose(one_device.numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(one_device, features_tensor), expected_gradient,
                               atol=1e-5)

    def replica_fn(local_features, local_labels=None):
        with tf.GradientTape() as tape:
            tape.watch(local_features)
            loss = supcon_loss(local_features, local_labels, temperature=temperature)
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return loss, tape.gradient(scaled, local_features)

    @tf.function
    def run(*args):
        return strategy.run(replica_fn, args=args)

    args = [split_over_replicas(strategy, features)]
    if supervised:
        args.append(split_over_replicas(strategy, labels))
    losses, gradients = run(*args)
    losses = np.array(local_values(strategy, losses))
    assert len(set(losses.tolist())) > 1  # each replica has its own anchors
    np.testing.assert_allclose(losses.mean(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(local_values(strategy, gradients)),
                               expected_gradient, atol=1e-5)


# ---------------------------------------------------------------- 6. checkpoints


def queue_state(built):
    """The checkpointed state of stage one with the queue, grouped: {group: [variables]}."""
    momentum = built.checkpoint.momentum
    return {"model": built.model.variables, "optimizer": built.optimizer.variables,
            "key model": momentum.key_model.variables,
            "queue": [momentum.features, momentum.labels, momentum.pointer, momentum.count]}


def variable_name(variable):
    return getattr(variable, "path", None) or variable.name


@pytest.mark.slow
def test_a_checkpoint_from_eight_replicas_restores_on_one_and_on_four(tmp_path):
    config = stage_config("queue")  # synchronized batch norm, as on a TPU
    config.loss.queue_size = 96  # 2 steps of 16 x 2 keys leave the pointer at 64
    config.optim.name = "sgd"  # momentum slots like LARS's, and a cheaper trace on 8 replicas
    eight = mirrored_strategy(8)
    built = build_stage("queue", eight, config=config)
    initial = {group: [local_values(eight, v)[0] for v in variables]
               for group, variables in queue_state(built).items()}
    metrics = built.loop(stream_of(built, eight), tf.constant(2))
    assert float(metrics["finite"]) == 1.0
    saved = {}
    for group, variables in queue_state(built).items():
        saved[group] = []
        for variable in variables:
            copies = local_values(eight, variable)
            assert len(copies) == 8
            for copy in copies[1:]:  # the 8 replicas hold one state
                np.testing.assert_array_equal(copy, copies[0], err_msg=variable_name(variable))
            saved[group].append(copies[0])
        changed = [not np.array_equal(a, b) for a, b in zip(initial[group], saved[group])]
        assert any(changed), f"training left the {group} as it was built"
    momentum = built.checkpoint.momentum
    assert int(built.optimizer.iterations.numpy()) == 2
    assert int(momentum.pointer.numpy()) == int(momentum.count.numpy()) == 64
    directory = str(tmp_path / "checkpoints")
    path = tf.train.CheckpointManager(built.checkpoint, directory, max_to_keep=1).save(
        checkpoint_number=2)

    for strategy in (tf.distribute.get_strategy(), mirrored_strategy(4)):
        restored = build_stage("queue", strategy, config=config)
        assert checkpoints.restore_newest_readable(restored.checkpoint, directory) == path
        restored.checkpoint.restore(path).assert_consumed()
        assert int(restored.optimizer.iterations.numpy()) == 2
        for group, variables in queue_state(restored).items():
            assert len(variables) == len(saved[group]), group
            for variable, value in zip(variables, saved[group]):
                copies = local_values(strategy, variable)
                assert len(copies) == strategy.num_replicas_in_sync
                for copy in copies:
                    np.testing.assert_array_equal(copy, value, err_msg=variable_name(variable))


# ---------------------------------------------------------------- 7. batch norm


def moving_statistics(built, strategy):
    """{variable path: every replica's copy} of the encoder's and head's moving averages."""
    return {variable.path: local_values(strategy, variable)
            for variable in built.model.variables
            if variable.path.endswith(("moving_mean", "moving_variance"))}


def bn_config(sync_bn, global_batch_size=GLOBAL_BATCH):
    config = stage_config("supcon")
    config.train.mixed_precision = None
    config.optim.name = "sgd"
    config.model.sync_bn = sync_bn
    config.train.global_batch_size = global_batch_size
    return config


@pytest.fixture(scope="module")
def one_device_statistics():
    """The moving averages of one device holding the global batch: {1: after the first
    step, 3: after the third}."""
    strategy = tf.distribute.get_strategy()
    built = build_stage("supcon", strategy, config=bn_config(sync_bn=False))
    iterator = stream_of(built, strategy)
    statistics = {}
    for steps, run in ((1, 1), (3, 2)):
        built.loop(iterator, tf.constant(run))
        statistics[steps] = {path: copies[0] for path, copies in
                             moving_statistics(built, strategy).items()}
    return statistics


@pytest.mark.slow
def test_synchronized_batch_norm_statistics_are_the_global_batch_statistics(
        one_device_statistics):
    """sync_bn: after 3 steps on 4 replicas every replica holds the same moving averages,
    those of one device holding the global batch."""
    four = mirrored_strategy(4)
    built = build_stage("supcon", four, config=bn_config(sync_bn=True))
    assert float(built.loop(stream_of(built, four), tf.constant(3))["finite"]) == 1.0
    statistics = moving_statistics(built, four)
    expected = one_device_statistics[3]
    assert statistics.keys() == expected.keys() and len(statistics) > 20
    for path, copies in statistics.items():
        assert len(copies) == 4
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0], err_msg=path)
        np.testing.assert_allclose(copies[0], expected[path], rtol=1e-3, atol=1e-5,
                                   err_msg=path)


@pytest.mark.slow
def test_per_replica_batch_norm_statistics_are_averaged_over_the_replicas(
        one_device_statistics):
    """sync_bn=False: each replica normalizes with its own quarter of the batch, and the
    moving averages take the mean of the replicas' updates. After one step every replica
    (and so the checkpoint) holds the mean over the quarters of the statistics one device
    computes on each quarter alone; those are not the global batch's statistics."""
    four = mirrored_strategy(4)
    built = build_stage("supcon", four, config=bn_config(sync_bn=False))
    assert float(built.loop(stream_of(built, four), tf.constant(1))["finite"]) == 1.0
    statistics = moving_statistics(built, four)

    one = tf.distribute.get_strategy()
    quarter_size = GLOBAL_BATCH // 4
    alone = build_stage("supcon", one, config=bn_config(False, global_batch_size=quarter_size))
    initial = [variable.numpy() for variable in alone.model.variables]
    batch = fixed_batch(alone.data_config, GLOBAL_BATCH)
    per_quarter = []
    for quarter in range(4):
        for variable, value in zip(alone.model.variables, initial):
            variable.assign(value)
        rows = {key: value[quarter * quarter_size:(quarter + 1) * quarter_size]
                for key, value in batch.items()}
        alone.loop(iter(tf.data.Dataset.from_tensors(rows).repeat()), tf.constant(1))
        per_quarter.append({path: copies[0] for path, copies in
                            moving_statistics(alone, one).items()})

    global_batch = one_device_statistics[1]
    assert statistics.keys() == global_batch.keys() and len(statistics) > 20
    differs_from_global = []
    for path, copies in statistics.items():
        for replica, copy in enumerate(copies[1:], 1):
            np.testing.assert_array_equal(copy, copies[0], err_msg=f"{path}, replica {replica}")
        mean_of_quarters = np.mean([quarter[path] for quarter in per_quarter], axis=0)
        np.testing.assert_allclose(copies[0], mean_of_quarters, rtol=1e-4, atol=1e-6,
                                   err_msg=path)
        differs_from_global.append(not np.allclose(copies[0], global_batch[path], rtol=1e-3,
                                                   atol=1e-5))
    assert sum(differs_from_global) > len(statistics) // 2
