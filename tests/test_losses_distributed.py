"""supcon_loss under MirroredStrategy with 4 replicas equals one device.

Each replica holds a quarter of the global batch. The mean of the per-replica
losses must equal the single-device loss on the global batch, and the gradient
of (per-replica loss / num_replicas) with respect to each replica's own rows,
which all_gather sums over every replica's loss, must equal the single-device
gradient for those rows.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy

from supcon_tf.losses import supcon_loss

NUM_REPLICAS = 4
PER_REPLICA_BATCH = 3


@pytest.fixture(scope="module")
def strategy():
    return mirrored_strategy(NUM_REPLICAS)


def shard(strategy, array):
    """Replica r holds the r-th quarter of the global batch."""
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(np.split(array, NUM_REPLICAS)[context.replica_id_in_sync_group])
    )


def single_device(features, labels, kwargs):
    features = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = supcon_loss(features, labels, **kwargs)
    return loss.numpy(), tape.gradient(loss, features).numpy()


def per_replica(strategy, features, labels, kwargs):
    def replica_step(local_features, local_labels):
        with tf.GradientTape() as tape:
            tape.watch(local_features)
            loss = supcon_loss(local_features, local_labels, **kwargs)
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return loss, tape.gradient(scaled, local_features)

    @tf.function
    def step(local_features, local_labels):
        return strategy.run(replica_step, args=(local_features, local_labels))

    local_labels = shard(strategy, labels) if labels is not None else None
    losses, gradients = step(shard(strategy, features), local_labels)
    losses = [t.numpy() for t in strategy.experimental_local_results(losses)]
    gradients = [t.numpy() for t in strategy.experimental_local_results(gradients)]
    return np.array(losses), np.concatenate(gradients)


@pytest.mark.parametrize(
    "num_views,supervised,kwargs",
    [
        (2, True, dict()),
        (2, False, dict(contrast_mode="one", variant="in")),
        (3, True, dict(block_size=4)),
        # One view: replicas hold different numbers of anchors with a positive.
        (1, True, dict(base_temperature=0.07)),
        # The cap keeps class 0's first samples in global order (0, 3, then 11).
        (2, True, dict(denominator_mode="one_positive", positives_cap=2, block_size=4)),
        (3, True, dict(denominator_mode="only_negatives", variant="in", positives_cap=3)),
    ],
)
def test_replicas_reproduce_one_device(strategy, num_views, supervised, kwargs):
    global_batch = NUM_REPLICAS * PER_REPLICA_BATCH
    rng = np.random.default_rng(num_views)
    features = rng.normal(size=(global_batch, num_views, 6)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    labels = np.array([0, 1, 2, 0, 3, 3, 1, 4, 5, 2, 6, 0], np.int32) if supervised else None
    kwargs = dict(temperature=0.1, **kwargs)

    loss, gradient = single_device(features, labels, kwargs)
    replica_losses, replica_gradients = per_replica(strategy, features, labels, kwargs)

    assert len(set(replica_losses.tolist())) > 1  # the replicas really saw different anchors
    np.testing.assert_allclose(replica_losses.mean(), loss, rtol=1e-5)
    np.testing.assert_allclose(replica_gradients, gradient, atol=1e-5)


def test_summed_variable_gradients_match_one_device(strategy):
    # The training recipe from the losses module docstring: per-replica loss
    # divided by the replica count, variable gradients summed across replicas.
    rng = np.random.default_rng(7)
    inputs = rng.normal(size=(NUM_REPLICAS * PER_REPLICA_BATCH, 2, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 3, 3, 1, 4, 5, 2, 6, 0], np.int32)
    initial_kernel = rng.normal(size=(5, 4)).astype(np.float32)

    def project(x, kernel):
        return tf.math.l2_normalize(tf.einsum("bvi,io->bvo", x, kernel), axis=-1)

    kernel = tf.Variable(initial_kernel)
    with tf.GradientTape() as tape:
        loss = supcon_loss(project(tf.constant(inputs), kernel), labels)
    expected = tape.gradient(loss, kernel).numpy()

    with strategy.scope():
        mirrored_kernel = tf.Variable(initial_kernel)

    def replica_step(local_inputs, local_labels):
        with tf.GradientTape() as tape:
            local_loss = supcon_loss(project(local_inputs, mirrored_kernel), local_labels)
            scaled = local_loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return tape.gradient(scaled, mirrored_kernel)

    @tf.function
    def step(local_inputs, local_labels):
        gradients = strategy.run(replica_step, args=(local_inputs, local_labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, gradients, axis=None)

    summed = step(shard(strategy, inputs), shard(strategy, labels))
    np.testing.assert_allclose(summed.numpy(), expected, atol=1e-5)
