"""Scale: 8 logical CPU replicas holding slices of the global batch behave like 1 device.

The loss and its gradient (plain and blockwise, SupCon and SimCLR), then two
whole training steps of the train module (SupCon plus the online classifier,
LARS update): every replica count must give the single-device result on the
same global batch. The step uses the tiny ViT: tracing eight replicas of even
the narrowest ResNet-18 costs minutes of CPU here, and synchronized BN across
replicas is tested with the models.
"""


import numpy as np
import pytest
import tensorflow as tf
from conftest import load_config, mirrored_strategy

from supcon_tf import train
from supcon_tf.losses import supcon_loss

NUM_REPLICAS = 8
PER_REPLICA_BATCH = 2
GLOBAL_BATCH = NUM_REPLICAS * PER_REPLICA_BATCH
NUM_VIEWS = 2


@pytest.fixture(scope="module")
def strategy():
    return mirrored_strategy(NUM_REPLICAS)


def slice_per_replica(strategy, array):
    """Replica r gets rows [r * b, (r + 1) * b) of the global array."""
    def value_fn(context):
        start = context.replica_id_in_sync_group * PER_REPLICA_BATCH
        return tf.constant(array[start:start + PER_REPLICA_BATCH])
    return strategy.experimental_distribute_values_from_function(value_fn)


def loss_and_gradient(features, labels, kwargs):
    """Loss and d loss / d features for this replica's rows, the loss scaled by 1/replicas
    as training does."""
    num_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = supcon_loss(features, labels, **kwargs)
        scaled = loss / num_replicas
    return loss, tape.gradient(scaled, features)


# Each case traces eight replicas; two cases cover both paths of the loss and both positives.
@pytest.mark.parametrize("use_labels, block_size", [(True, None), (False, 3)],
                         ids=["supcon-full", "simclr-blockwise"])
def test_loss_and_gradient_on_8_replicas_match_one_device(strategy, use_labels, block_size):
    rng = np.random.default_rng(7)
    features = rng.normal(size=(GLOBAL_BATCH, NUM_VIEWS, 6)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    labels = rng.integers(0, 4, size=GLOBAL_BATCH).astype(np.int32) if use_labels else None
    kwargs = dict(temperature=0.1, block_size=block_size)

    expected_loss, expected_gradient = loss_and_gradient(tf.constant(features), labels, kwargs)

    @tf.function
    def replicated(local_features, local_labels):
        return strategy.run(loss_and_gradient, args=(local_features, local_labels, kwargs))

    local_labels = slice_per_replica(strategy, labels) if use_labels else None
    losses, gradients = replicated(slice_per_replica(strategy, features), local_labels)
    losses = [t.numpy() for t in strategy.experimental_local_results(losses)]
    gradients = np.concatenate([t.numpy() for t in strategy.experimental_local_results(gradients)])

    assert len(losses) == NUM_REPLICAS
    np.testing.assert_allclose(np.mean(losses), expected_loss.numpy(), rtol=1e-5)
    assert np.abs(expected_gradient.numpy()).max() > 1e-3  # a real gradient, not zeros
    np.testing.assert_allclose(gradients, expected_gradient.numpy(), rtol=1e-4, atol=1e-6)


def tiny_config():
    config = load_config("digits.py", "tiny")
    config.model.name = "vit_tiny"
    config.model.cifar_stem, config.model.width_multiplier = False, 1.0  # ViTs take neither
    config.optim.name = "lars"  # the optimizer of the paper's pod runs
    config.optim.warmup_epochs = 0  # a nonzero learning rate from the first step
    config.optim.base_lr = 1.0
    config.train.global_batch_size = GLOBAL_BATCH
    return config


def train_two_steps(config, strategy, batch, initial_weights=None):
    """Variables before and after two steps of the train module's loop on `batch` twice."""
    model, optimizer, _, _ = train.build_stage_one(config, strategy, num_classes=10,
                                                   num_train_examples=10 * GLOBAL_BATCH)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    before = [w.copy() for w in model.get_weights()]
    replica_step = train.make_replica_step(config, model, optimizer,
                                           strategy.num_replicas_in_sync)
    train_loop = train.make_train_loop(strategy, replica_step, jit_compile=False)
    # experimental_distribute_dataset splits each global batch over the replicas in order.
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    metrics = train_loop(iter(strategy.experimental_distribute_dataset(dataset)), tf.constant(2))
    return before, model.get_weights(), {k: float(v) for k, v in metrics.items()}


@pytest.mark.slow
def test_two_training_steps_on_8_replicas_match_one_device(strategy):
    config = tiny_config()
    size = config.data.image_size
    rng = np.random.default_rng(3)
    batch = {"views": rng.uniform(size=(GLOBAL_BATCH, NUM_VIEWS, size, size, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=GLOBAL_BATCH).astype(np.int32)}

    before, expected, expected_metrics = train_two_steps(config, tf.distribute.get_strategy(),
                                                         batch)
    _, actual, actual_metrics = train_two_steps(config, strategy, batch, initial_weights=before)

    assert expected_metrics["finite"] == actual_metrics["finite"] == 1.0
    for key in ("loss", "classifier_loss", "top1"):
        np.testing.assert_allclose(actual_metrics[key], expected_metrics[key], rtol=1e-4,
                                   err_msg=key)
    changes = [want - start for start, want in zip(before, expected)]
    largest_change = max(np.abs(change).max() for change in changes)
    for start, change, got in zip(before, changes, actual):
        # Compare the changes, so that a small update cannot hide in large weights. A
        # variable that barely moves (the zero-initialized class token gets ~1e-9) may
        # differ by float32 rounding, at its own scale or at the scale of the step.
        np.testing.assert_allclose(
            got - start, change, rtol=1e-3,
            atol=1e-3 * np.abs(change).max() + 1e-6 * (np.abs(start).max() + largest_change))
    moved = sum(np.abs(change).max() > 1e-4 for change in changes)
    assert moved > len(before) // 2  # most variables did change
