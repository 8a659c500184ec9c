"""SupConLoss and supcon_loss train the same model on 1 and on 4 replicas.

model.fit under MirroredStrategy(4 logical CPUs) must give the weights and the
reported loss of one device holding the global batch, and the reported loss
must be Eq. 2 of the paper on that batch (a NumPy reference written from the
equation, independent of supcon_loss). A custom train_step that calls
supcon_loss and divides by num_replicas_in_sync, as its docstring says, must
do the same.

The README's Keras example (one view per sample, y_pred [B, D], y_true [B, 1])
is read out of README.md and run as written, under MirroredStrategy over 2
logical CPUs.
"""

import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy

from supcon_tf.losses import SupConLoss, supcon_loss

BATCH, VIEWS, IN_DIM, HIDDEN, DIM, STEPS = 16, 2, 6, 8, 4, 3
TEMPERATURE, LEARNING_RATE = 0.5, 0.5
NUM_REPLICAS = 4


def eq2_loss(features, labels, temperature):
    """L^sup_out (Eq. 2), mean over every anchor i of the B * V views that has a
    positive: -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/T) / sum_{a != i} exp(z_i.z_a/T)).
    features [B, V, D] or [B, D] (one view)."""
    features = np.asarray(features, np.float64)
    views = features.shape[1] if features.ndim == 3 else 1
    z = features.reshape(-1, features.shape[-1])
    view_labels = np.repeat(np.reshape(labels, [-1]), views)
    terms = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if view_labels[p] == view_labels[i]]
        if not positives:  # a lone sample of its class, with one view: no term
            continue
        log_denominator = np.log(sum(np.exp(z[i] @ z[a] / temperature) for a in others))
        terms.append(-np.mean([z[i] @ z[p] / temperature - log_denominator for p in positives]))
    return np.mean(terms)


def make_data():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(STEPS * BATCH, VIEWS, IN_DIM)).astype(np.float32)
    labels = rng.integers(0, 4, size=STEPS * BATCH).astype(np.int32)
    return inputs, labels


def initial_weights():
    # Fixed NumPy weights, so both strategies start from the same point
    # whatever Keras's initializers do under a scope.
    rng = np.random.default_rng(1)
    return [
        rng.normal(scale=0.5, size=(IN_DIM, HIDDEN)).astype(np.float32),
        rng.normal(scale=0.1, size=HIDDEN).astype(np.float32),
        rng.normal(scale=0.5, size=(HIDDEN, DIM)).astype(np.float32),
        rng.normal(scale=0.1, size=DIM).astype(np.float32),
    ]


def numpy_features(weights, inputs):
    w1, b1, w2, b2 = (w.astype(np.float64) for w in weights)
    z = np.tanh(inputs @ w1 + b1) @ w2 + b2
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def build_model(model_class=keras.Model):
    inputs = keras.Input((VIEWS, IN_DIM))
    hidden = keras.layers.Dense(HIDDEN, activation="tanh")(inputs)
    outputs = keras.layers.UnitNormalization(axis=-1)(keras.layers.Dense(DIM)(hidden))
    model = model_class(inputs, outputs)
    model.set_weights(initial_weights())
    return model


class RecordBatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))  # running mean over the epoch's steps


def fit_with_supcon_loss(strategy, **fit_kwargs):
    inputs, labels = make_data()
    with strategy.scope():
        model = build_model()
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=SupConLoss(temperature=TEMPERATURE),
            jit_compile=False,  # XLA cannot update mirrored variables on CPU replicas
        )
    record = RecordBatchLogs()
    history = model.fit(
        inputs, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
        callbacks=[record], **fit_kwargs,
    )
    return model, history.history["loss"], record.losses


def test_fit_on_four_replicas_matches_one_device_and_eq2():
    one_model, one_history, one_steps = fit_with_supcon_loss(tf.distribute.get_strategy())
    many_model, many_history, many_steps = fit_with_supcon_loss(mirrored_strategy(NUM_REPLICAS))

    inputs, labels = make_data()
    first_batch = numpy_features(initial_weights(), inputs[:BATCH])
    expected_first = eq2_loss(first_batch, labels[:BATCH], TEMPERATURE)
    np.testing.assert_allclose(one_steps[0], expected_first, rtol=1e-5)
    np.testing.assert_allclose(many_steps[0], expected_first, rtol=1e-5)

    assert len(one_steps) == len(many_steps) == STEPS
    np.testing.assert_allclose(many_steps, one_steps, rtol=1e-5)
    np.testing.assert_allclose(many_history, one_history, rtol=1e-5)
    for many, one in zip(many_model.get_weights(), one_model.get_weights()):
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)
    # The steps moved the weights, so equal weights are not trivially equal.
    assert not np.allclose(one_model.get_weights()[0], initial_weights()[0], atol=1e-3)


class SupConStep(keras.Model):
    """A train_step calling supcon_loss directly, scaled as its docstring says."""

    def train_step(self, data):
        x, y = data
        num_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            z = self(x, training=True)
            loss = supcon_loss(z, tf.cast(y, tf.int32), temperature=TEMPERATURE)
            scaled = loss / num_replicas  # the optimizer sums gradients over replicas
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return {"loss": loss}


def fit_custom_step(strategy):
    inputs, labels = make_data()
    with strategy.scope():
        model = build_model(SupConStep)
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), jit_compile=False)
    model.fit(inputs, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_custom_train_step_on_four_replicas_matches_one_device():
    one = fit_custom_step(tf.distribute.get_strategy())
    many = fit_custom_step(mirrored_strategy(NUM_REPLICAS))
    for many_weight, one_weight in zip(many, one):
        np.testing.assert_allclose(many_weight, one_weight, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one[0], initial_weights()[0], atol=1e-3)


def test_sample_weight_is_rejected():
    inputs, labels = make_data()
    features = numpy_features(initial_weights(), inputs[:BATCH]).astype(np.float32)
    loss = SupConLoss(temperature=TEMPERATURE)
    with pytest.raises(ValueError, match="sample_weight"):
        loss(labels[:BATCH], features, sample_weight=np.ones(BATCH, np.float32))
    # Without weights the direct call is Eq. 2, unscaled on one device.
    np.testing.assert_allclose(
        loss(labels[:BATCH], features).numpy(),
        eq2_loss(features, labels[:BATCH], TEMPERATURE),
        rtol=1e-5,
    )
    # fit's sample_weight and class_weight both reach the loss as sample_weight.
    class_weight = {c: 1.0 for c in range(4)}
    for fit_kwargs in ({"sample_weight": np.ones(len(labels))}, {"class_weight": class_weight}):
        with pytest.raises(ValueError, match="sample_weight"):
            fit_with_supcon_loss(tf.distribute.get_strategy(), **fit_kwargs)


def test_reduction_other_than_the_default_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        SupConLoss(reduction="sum")


def test_one_view_shapes_equal_the_multi_view_form():
    """y_pred [B, D] is [B, 1, D]; y_true [B] and [B, 1] are the same labels."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(12, DIM))
    z = (z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 2, 4], np.int32)  # class 4: one sample
    loss = SupConLoss(temperature=TEMPERATURE)
    reference = loss(labels, z[:, None, :]).numpy()
    np.testing.assert_allclose(reference, eq2_loss(z, labels, TEMPERATURE), rtol=1e-5)
    for y_true in (labels, labels[:, None], labels.astype(np.int64)[:, None]):
        for y_pred in (z, z[:, None, :]):
            np.testing.assert_allclose(loss(y_true, y_pred).numpy(), reference, rtol=1e-6)
    # Multi-hot labels [B, C] take [B, D] too.
    multi_hot = np.eye(5, dtype=np.int32)[labels]
    multi_hot[:4, 4] = 1
    np.testing.assert_allclose(
        loss(multi_hot, z).numpy(), loss(multi_hot, z[:, None, :]).numpy(), rtol=1e-6
    )
    # In a traced function, as fit calls it.
    traced = tf.function(lambda y_true, y_pred: loss(y_true, y_pred))
    np.testing.assert_allclose(traced(labels[:, None], z).numpy(), reference, rtol=1e-6)


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_keras_example():
    """The indented code block of README.md's "## The loss" section that calls model.fit."""
    with open(README) as f:
        section = f.read().split("\n## The loss\n", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in section.splitlines() + ["end"]:  # a paragraph line ends the last block
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
            current = []
    found = [block for block in blocks if "model.fit(" in block]
    assert len(found) == 1, f"expected one code block calling model.fit in {README}'s loss section"
    return found[0]


def test_readme_keras_example_on_two_replicas(monkeypatch):
    code = readme_keras_example()
    for needed in ("strategy.scope()", "loss=SupConLoss(temperature=0.1)",
                   "history = model.fit(x, y,", "UnitNormalization()"):
        assert needed in code
    strategy = mirrored_strategy(2)
    # The example makes tf.distribute.MirroredStrategy(); here it gets 2 logical CPUs.
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", lambda *args, **kwargs: strategy)
    namespace = {}
    exec(compile(code, README, "exec"), namespace)
    monkeypatch.undo()
    assert namespace["strategy"] is strategy and strategy.num_replicas_in_sync == 2
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    assert y.shape[1:] == (1,) and model.output_shape[1:] == (16,)

    losses = namespace["history"].history["loss"]
    assert len(losses) >= 2 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.05, losses

    # One batch of the global size, split over the two replicas, reports Eq. 2
    # of the whole batch.
    batch = 128
    with strategy.scope():
        reported = model.evaluate(x[:batch], y[:batch], batch_size=batch, verbose=0)
    features = model.predict(x[:batch], batch_size=batch, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(reported, eq2_loss(features, y[:batch], 0.1), rtol=1e-5)
