"""supcon_loss against a loop-per-anchor NumPy transcription of the paper.

The reference below is written from Eq. 2 and Eq. 3 of Khosla et al. (2020)
with explicit sets A(i) and P(i), in float64, and shares no code with the
TensorFlow implementation.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import SupConLoss, supcon_loss


def reference_loss(
    features, labels, temperature, base_temperature=None, contrast_mode="all", variant="out"
):
    """Mean over anchors i with P(i) non-empty of Eq. 2 ("out") or Eq. 3 ("in")."""
    features = np.asarray(features, np.float64)
    batch, num_views, _ = features.shape
    views = [(b, v) for b in range(batch) for v in range(num_views)]

    def class_of(b):
        return b if labels is None else labels[b]  # SimCLR: each sample is its own class

    anchors = views if contrast_mode == "all" else [(b, 0) for b in range(batch)]
    anchor_losses = []
    for b, v in anchors:
        z_i = features[b, v]
        others = [(c, w) for c, w in views if (c, w) != (b, v)]  # A(i)
        positives = [(c, w) for c, w in others if class_of(c) == class_of(b)]  # P(i)
        if not positives:
            continue
        denominator = sum(math.exp(z_i @ features[c, w] / temperature) for c, w in others)
        ratios = [math.exp(z_i @ features[c, w] / temperature) / denominator for c, w in positives]
        if variant == "out":
            anchor_losses.append(-sum(math.log(r) for r in ratios) / len(positives))
        else:
            anchor_losses.append(-math.log(sum(ratios) / len(positives)))
    if not anchor_losses:
        return 0.0
    loss = sum(anchor_losses) / len(anchor_losses)
    if base_temperature is not None:
        loss *= temperature / base_temperature
    return loss


def normalized_features(seed, batch, num_views, dim):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, num_views, dim))
    return (features / np.linalg.norm(features, axis=-1, keepdims=True)).astype(np.float32)


def loss_and_gradient(features, labels, **kwargs):
    features = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = supcon_loss(features, labels, **kwargs)
    return loss, tape.gradient(loss, features)


LABELS = np.array([0, 1, 0, 2, 1, 1, 3, 0])  # class 3 appears once: no positive when V = 1


@pytest.mark.parametrize(
    "variant,contrast_mode,num_views,supervised",
    list(itertools.product(["out", "in"], ["all", "one"], [1, 2, 3], [True, False])),
)
def test_matches_paper_equations(variant, contrast_mode, num_views, supervised):
    features = normalized_features(0, 8, num_views, 5)
    labels = LABELS if supervised else None
    loss = supcon_loss(
        features, labels, temperature=0.2, contrast_mode=contrast_mode, variant=variant
    )
    expected = reference_loss(features, labels, 0.2, contrast_mode=contrast_mode, variant=variant)
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_base_temperature_scales_by_temperature_ratio(variant):
    features = normalized_features(1, 8, 2, 5)
    loss = supcon_loss(features, LABELS, temperature=0.1, base_temperature=0.07, variant=variant)
    expected = reference_loss(features, LABELS, 0.1, base_temperature=0.07, variant=variant)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    paper = supcon_loss(features, LABELS, temperature=0.1, variant=variant)
    np.testing.assert_allclose(loss.numpy(), paper.numpy() * 0.1 / 0.07, rtol=1e-6)


@pytest.mark.parametrize(
    "variant,contrast_mode,num_views,supervised,temperature",
    [
        ("out", "all", 2, True, 0.5),
        ("in", "all", 2, True, 0.5),
        ("out", "one", 3, True, 0.5),
        ("in", "one", 2, True, 0.1),
        ("out", "all", 1, True, 0.5),
        ("out", "all", 2, False, 0.1),
    ],
)
def test_gradient_matches_central_differences(
    variant, contrast_mode, num_views, supervised, temperature
):
    # Unnormalized features: the loss must be differentiable wherever it is defined.
    features = normalized_features(2, 5, num_views, 3) * 1.3
    labels = LABELS[:5] if supervised else None
    kwargs = dict(contrast_mode=contrast_mode, variant=variant)
    _, gradient = loss_and_gradient(features, labels, temperature=temperature, **kwargs)

    def reference(x):
        return reference_loss(x, labels, temperature, **kwargs)

    base = features.astype(np.float64)
    numeric = np.zeros_like(base)
    step = 1e-5
    for index in np.ndindex(base.shape):
        shifted = base.copy()
        shifted[index] += step
        upper = reference(shifted)
        shifted[index] -= 2 * step
        numeric[index] = (upper - reference(shifted)) / (2 * step)
    np.testing.assert_allclose(gradient.numpy(), numeric, atol=2e-4 / temperature, rtol=1e-3)


def test_permuting_the_batch_changes_nothing():
    features = normalized_features(3, 8, 2, 6)
    order = np.random.default_rng(3).permutation(8)
    loss, gradient = loss_and_gradient(features, LABELS)
    permuted_loss, permuted_gradient = loss_and_gradient(features[order], LABELS[order])
    np.testing.assert_allclose(permuted_loss.numpy(), loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(permuted_gradient.numpy(), gradient.numpy()[order], atol=1e-6)


def test_renaming_classes_changes_nothing():
    features = normalized_features(4, 8, 2, 6)
    renamed = np.array([17, 4, 0, 9])[LABELS]
    for variant in ("out", "in"):
        np.testing.assert_allclose(
            supcon_loss(features, renamed, variant=variant).numpy(),
            supcon_loss(features, LABELS, variant=variant).numpy(),
            rtol=1e-6,
        )


@pytest.mark.parametrize("num_views", [2, 3])
def test_unique_labels_give_simclr(num_views):
    features = normalized_features(5, 6, num_views, 4)
    unique = np.array([5, 3, 8, 1, 0, 2])
    for variant in ("out", "in"):
        np.testing.assert_allclose(
            supcon_loss(features, unique, variant=variant).numpy(),
            supcon_loss(features, None, variant=variant).numpy(),
            rtol=1e-6,
        )


@pytest.mark.parametrize(
    "features,labels",
    [
        (normalized_features(6, 4, 1, 3), np.array([0, 1, 2, 3])),  # V = 1, unique labels
        (normalized_features(6, 4, 1, 3), None),  # V = 1 SimCLR
        (normalized_features(6, 1, 1, 3), np.array([0])),  # one row, nothing to contrast
    ],
)
@pytest.mark.parametrize("block_size", [None, 3])
def test_no_positive_at_all_gives_zero_and_zero_gradient(features, labels, block_size):
    loss, gradient = loss_and_gradient(features, labels, block_size=block_size)
    assert loss.numpy() == 0.0
    np.testing.assert_array_equal(gradient.numpy(), np.zeros_like(features))


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize(
    "case", ["random", "identical_features", "single_class", "opposite_positives"]
)
# 0.026 is the lowest temperature shifted by the norm bound, 0.01 needs the row max.
@pytest.mark.parametrize("temperature", [0.01, 0.026])
def test_stays_finite_and_exact_in_hard_cases(variant, case, temperature):
    features = normalized_features(7, 8, 2, 4)
    labels = LABELS
    if case == "identical_features":
        features = np.broadcast_to(features[:1, :1], features.shape).copy()
    elif case == "single_class":
        labels = np.zeros(8, np.int64)
    elif case == "opposite_positives":
        # Positives at logit -1/tau while a negative sits at +1/tau.
        features = np.zeros((4, 2, 2), np.float32)
        features[:, 0, 0], features[:, 1, 0] = 1.0, -1.0
        features[1], features[3] = features[0], features[2]
        labels = np.array([0, 1, 2, 3])
    loss, gradient = loss_and_gradient(features, labels, temperature=temperature, variant=variant)
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(gradient.numpy()))
    expected = reference_loss(features, labels, temperature, variant=variant)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 3, 8, 64])
@pytest.mark.parametrize(
    "variant,contrast_mode,num_views,supervised",
    [
        ("out", "all", 2, True),
        ("in", "all", 3, True),
        ("out", "one", 2, False),
        ("in", "one", 1, True),
    ],
)
def test_block_size_gives_the_same_value_and_gradient(
    block_size, variant, contrast_mode, num_views, supervised
):
    features = normalized_features(8, 8, num_views, 5)
    labels = LABELS if supervised else None
    kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, variant=variant)
    loss, gradient = loss_and_gradient(features, labels, **kwargs)
    blocked_loss, blocked_gradient = loss_and_gradient(
        features, labels, block_size=block_size, **kwargs
    )
    np.testing.assert_allclose(blocked_loss.numpy(), loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(blocked_gradient.numpy(), gradient.numpy(), atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 5])
def test_loss_and_gradient_compile_with_xla(block_size):
    features = normalized_features(9, 8, 2, 5)
    kwargs = dict(variant="in", block_size=block_size)

    @tf.function(jit_compile=True)
    def compiled(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = supcon_loss(x, LABELS, **kwargs)
        return loss, tape.gradient(loss, x)

    loss, gradient = compiled(tf.constant(features))  # jit_compile=True fails if XLA cannot
    eager_loss, eager_gradient = loss_and_gradient(features, LABELS, **kwargs)
    np.testing.assert_allclose(loss.numpy(), eager_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), eager_gradient.numpy(), atol=1e-5)


def test_bfloat16_features_compute_in_float32():
    features = tf.constant(normalized_features(10, 8, 2, 16), tf.bfloat16)
    loss, gradient = loss_and_gradient(features, LABELS, temperature=0.05)
    assert loss.dtype == tf.float32 and gradient.dtype == tf.bfloat16
    assert np.all(np.isfinite(gradient.numpy().astype(np.float32)))
    # Same value as float32 on the bf16-rounded inputs: nothing is done in bf16.
    rounded = tf.cast(features, tf.float32).numpy()
    np.testing.assert_allclose(loss.numpy(), supcon_loss(rounded, LABELS, temperature=0.05).numpy())
    np.testing.assert_allclose(
        loss.numpy(), reference_loss(rounded, LABELS, 0.05), rtol=1e-5
    )


def test_batch_size_unknown_until_run_time():
    features = normalized_features(11, 8, 2, 5)
    signature = [tf.TensorSpec([None, 2, 5], tf.float32), tf.TensorSpec([None], tf.int32)]
    for block_size in (None, 3):
        traced = tf.function(
            lambda x, y, b=block_size: supcon_loss(x, y, block_size=b), input_signature=signature
        )
        np.testing.assert_allclose(
            traced(features, LABELS.astype(np.int32)).numpy(),
            reference_loss(features, LABELS, 0.1),
            rtol=1e-5,
        )


GOOD_FEATURES = normalized_features(12, 4, 2, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(features=GOOD_FEATURES[:, 0]), "rank 3"),
        (dict(features=GOOD_FEATURES[None]), "rank 3"),
        (dict(labels=np.array([0, 1, 2])), "shape"),
        (dict(labels=np.array([[0], [1], [2], [3]])), "shape"),
        (dict(labels=np.array([0.0, 1.0, 0.0, 1.0])), "integer"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.1), "temperature"),
        (dict(base_temperature=0.0), "base_temperature"),
        (dict(contrast_mode="both"), "contrast_mode"),
        (dict(variant="mid"), "variant"),
        (dict(block_size=0), "block_size"),
        (dict(block_size=-4), "block_size"),
        (dict(block_size=2.5), "block_size"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    arguments = dict(features=GOOD_FEATURES, labels=np.array([0, 1, 0, 1]))
    arguments.update(kwargs)
    features, labels = arguments.pop("features"), arguments.pop("labels")
    with pytest.raises(ValueError, match=message):
        supcon_loss(features, labels, **arguments)


def test_keras_loss_config_round_trip():
    loss = SupConLoss(temperature=0.07, base_temperature=0.07, variant="in", block_size=16)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SupConLoss)
    assert restored.get_config() == loss.get_config()
    features = normalized_features(13, 8, 2, 5)
    np.testing.assert_allclose(
        restored(LABELS, features).numpy(),
        reference_loss(features, LABELS, 0.07, base_temperature=0.07, variant="in"),
        rtol=1e-5,
    )


def test_keras_loss_trains_a_model_with_compile_and_fit():
    num_views, dim = 2, 6
    rng = np.random.default_rng(14)
    centers = rng.normal(size=(4, dim))
    labels = rng.integers(0, 4, size=64)
    inputs = centers[labels][:, None] + 0.8 * rng.normal(size=(64, num_views, dim))

    keras.utils.set_random_seed(14)
    model = keras.Sequential(
        [
            keras.Input((num_views, dim)),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(axis=-1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=SupConLoss(temperature=0.5))
    before = model.evaluate(inputs, labels, batch_size=64, verbose=0)
    np.testing.assert_allclose(
        before, reference_loss(model.predict(inputs, verbose=0), labels, 0.5), rtol=1e-4
    )
    model.fit(inputs, labels, batch_size=16, epochs=3, verbose=0)
    assert model.evaluate(inputs, labels, batch_size=64, verbose=0) < before
