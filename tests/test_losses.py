"""supcon_loss against a loop-per-anchor NumPy transcription of the paper.

The reference below is written from Eq. 2 and Eq. 3 of Khosla et al. (2020)
with explicit sets of positives, negatives and denominators per anchor, and
from the semantics of the official code (google-research supcon/losses.py)
for denominator_mode and positives_cap, in float64; it shares no code with
the TensorFlow implementation.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import SupConLoss, check_config, supcon_loss


def reference_loss(
    features,
    labels,
    temperature,
    base_temperature=None,
    contrast_mode="all",
    variant="out",
    denominator_mode="all",
    positives_cap=None,
):
    """Mean over anchors i with a defined loss of Eq. 2 ("out") or Eq. 3 ("in")."""
    features = np.asarray(features, np.float64)
    batch, num_views, _ = features.shape
    views = [(b, v) for b in range(batch) for v in range(num_views)]

    def class_of(b):
        return b if labels is None else labels[b]  # SimCLR: each sample is its own class

    anchors = views if contrast_mode == "all" else [(b, 0) for b in range(batch)]
    anchor_losses = []
    for b, v in anchors:
        z_i = features[b, v]

        def e(view):
            return math.exp(z_i @ features[view] / temperature)

        other_samples = [c for c in range(batch) if c != b and class_of(c) == class_of(b)]
        if positives_cap is not None:
            # The official top_k over a 0/1 row keeps the lowest sample indices.
            other_samples = other_samples[: positives_cap // num_views]
        positive_samples = [b] + other_samples
        positives = [(c, w) for c in positive_samples for w in range(num_views) if (c, w) != (b, v)]
        negatives = [(c, w) for c, w in views if class_of(c) != class_of(b)]
        if not positives or (denominator_mode == "only_negatives" and not negatives):
            continue
        negatives_sum = sum(e(n) for n in negatives)
        if denominator_mode == "all":  # A(i) without a cap; capped-out views are in neither set
            denominators = [negatives_sum + sum(e(q) for q in positives)] * len(positives)
        elif denominator_mode == "one_positive":
            denominators = [negatives_sum + e(p) for p in positives]
        else:
            denominators = [negatives_sum] * len(positives)
        ratios = [e(p) / d for p, d in zip(positives, denominators)]
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


# Per-sample losses of the official test (losses_test.py,
# testLossForSummationLocationsAndDenominatorModes): temperature 1, V = 2,
# unnormalized features; supcon_loss returns their mean.
OFFICIAL_FEATURES = np.array(
    [
        [[0.01, 0.02, 0.14], [0.38, 0.61, 0.50]],
        [[0.86, 0.97, 0.33], [0.26, 0.68, 0.45]],
        [[0.32, 0.64, 0.28], [0.45, 0.74, 0.73]],
    ],
    np.float32,
)


@pytest.mark.parametrize(
    "variant,denominator_mode,positives_cap,labels,per_sample",
    [
        ("out", "all", None, (0, 0, 1), [1.6755852, 1.7973773, 1.58471]),
        ("out", "one_positive", None, (0, 0, 1), [1.1782627, 1.3435497, 1.58471]),
        ("out", "only_negatives", None, (0, 0, 1), [0.79652834, 1.0154991, 1.3529458]),
        ("out", "all", 4, (0, 0, 1), [1.6755852, 1.7973773, 1.58471]),
        ("out", "all", 2, (0, 0, 0), [1.1385298, 1.1824025, 1.1557417]),
        ("out", "all", 0, (0, 0, 1), [1.3769293, 1.0785717, 1.58471]),
        ("in", "all", None, (0, 0, 1), [1.6356678, 1.7135872, 1.58471]),
        ("in", "one_positive", None, (0, 0, 1), [1.1571673, 1.2941568, 1.58471]),
        ("in", "only_negatives", None, (0, 0, 1), [0.756611, 0.93170905, 1.3529458]),
        ("in", "all", 4, (0, 0, 1), [1.6356678, 1.7135872, 1.58471]),
        ("in", "all", 2, (0, 0, 0), [1.0986123, 1.0986123, 1.0986123]),
        ("in", "all", 0, (0, 0, 1), [1.3769293, 1.0785717, 1.58471]),
    ],
)
def test_matches_the_official_test_values(
    variant, denominator_mode, positives_cap, labels, per_sample
):
    loss = supcon_loss(
        OFFICIAL_FEATURES,
        np.array(labels),
        temperature=1.0,
        base_temperature=1.0,  # scale_by_temperature=True
        variant=variant,
        denominator_mode=denominator_mode,
        positives_cap=positives_cap,
    )
    np.testing.assert_allclose(loss.numpy(), np.mean(per_sample), rtol=1e-5)


@pytest.mark.parametrize(
    "variant,denominator_mode,num_views,supervised",
    list(
        itertools.product(["out", "in"], ["one_positive", "only_negatives"], [2, 3], [True, False])
    ),
)
def test_denominator_modes_match_reference(variant, denominator_mode, num_views, supervised):
    features = normalized_features(15, 8, num_views, 5)
    labels = LABELS if supervised else None
    for contrast_mode, block_size in [("all", None), ("all", 5), ("one", None), ("one", 3)]:
        kwargs = dict(
            contrast_mode=contrast_mode, variant=variant, denominator_mode=denominator_mode
        )
        loss = supcon_loss(features, labels, temperature=0.2, block_size=block_size, **kwargs)
        expected = reference_loss(features, labels, 0.2, **kwargs)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, err_msg=str(kwargs))


CAP_LABELS = np.array([2, 0, 2, 1, 2, 0, 2, 2, 0, 3])  # class 2: samples 0, 2, 4, 6, 7


@pytest.mark.parametrize(
    "variant,denominator_mode,num_views",
    list(itertools.product(["out", "in"], ["all", "one_positive", "only_negatives"], [2, 3])),
)
def test_positives_cap_keeps_the_official_positives(variant, denominator_mode, num_views):
    features = normalized_features(16, 10, num_views, 4)
    for positives_cap, contrast_mode, block_size in [
        (0, "all", None),
        (num_views, "all", None),
        (2 * num_views, "all", 4),
        (2 * num_views, "one", None),
        (3 * num_views, "one", 3),
        (10 * num_views, "all", None),  # more than any class holds: no cap
    ]:
        kwargs = dict(
            contrast_mode=contrast_mode,
            variant=variant,
            denominator_mode=denominator_mode,
            positives_cap=positives_cap,
        )
        loss = supcon_loss(features, CAP_LABELS, temperature=0.2, block_size=block_size, **kwargs)
        expected = reference_loss(features, CAP_LABELS, 0.2, **kwargs)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, err_msg=str(kwargs))


def test_positives_cap_changes_nothing_without_labels():
    features = normalized_features(17, 6, 2, 4)
    for variant in ("out", "in"):
        np.testing.assert_allclose(
            supcon_loss(features, None, variant=variant, positives_cap=0).numpy(),
            supcon_loss(features, None, variant=variant).numpy(),
            rtol=1e-6,
        )


def test_positives_cap_selects_by_position_not_similarity():
    # Swapping two positives of class 2 must move the cap onto the other one:
    # the official cap keeps the lowest indices, whatever their similarity.
    features = normalized_features(18, 10, 2, 4)
    swapped = features.copy()
    swapped[[2, 6]] = features[[6, 2]]
    capped = dict(positives_cap=2, denominator_mode="all")
    assert not np.isclose(
        supcon_loss(features, CAP_LABELS, **capped).numpy(),
        supcon_loss(swapped, CAP_LABELS, **capped).numpy(),
    )
    np.testing.assert_allclose(
        supcon_loss(swapped, CAP_LABELS, **capped).numpy(),
        reference_loss(swapped, CAP_LABELS, 0.1, **capped),
        rtol=1e-5,
    )


@pytest.mark.parametrize("block_size", [None, 3])
def test_only_negatives_without_any_negative_gives_zero_and_zero_gradient(block_size):
    # One class: no anchor has a negative, so no only_negatives loss is defined.
    features = normalized_features(19, 4, 2, 3)
    loss, gradient = loss_and_gradient(
        features, np.zeros(4, np.int32), denominator_mode="only_negatives", block_size=block_size
    )
    assert loss.numpy() == 0.0
    np.testing.assert_array_equal(gradient.numpy(), np.zeros_like(features))


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("denominator_mode", ["one_positive", "only_negatives"])
@pytest.mark.parametrize("block_size", [None, 3])
def test_denominator_modes_stay_finite_at_low_temperature(variant, denominator_mode, block_size):
    # Positives at logit -1/tau while a negative sits at +1/tau, and tau = 0.01.
    features = np.zeros((4, 2, 2), np.float32)
    features[:, 0, 0], features[:, 1, 0] = 1.0, -1.0
    features[1], features[3] = features[0], features[2]
    labels = np.array([0, 1, 2, 3])
    kwargs = dict(variant=variant, denominator_mode=denominator_mode)
    loss, gradient = loss_and_gradient(
        features, labels, temperature=0.01, block_size=block_size, **kwargs
    )
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(gradient.numpy()))
    expected = reference_loss(features, labels, 0.01, **kwargs)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "variant,contrast_mode,num_views,supervised,temperature,options",
    [
        ("out", "all", 2, True, 0.5, dict()),
        ("in", "all", 2, True, 0.5, dict()),
        ("out", "one", 3, True, 0.5, dict()),
        ("in", "one", 2, True, 0.1, dict()),
        ("out", "all", 1, True, 0.5, dict()),
        ("out", "all", 2, False, 0.1, dict()),
        ("out", "all", 2, True, 0.5, dict(denominator_mode="one_positive")),
        ("in", "one", 3, True, 0.5, dict(denominator_mode="one_positive", positives_cap=3)),
        ("out", "all", 2, True, 0.5, dict(denominator_mode="only_negatives", positives_cap=0)),
        ("in", "all", 3, False, 0.2, dict(denominator_mode="only_negatives")),
    ],
)
def test_gradient_matches_central_differences(
    variant, contrast_mode, num_views, supervised, temperature, options
):
    # Unnormalized features: the loss must be differentiable wherever it is defined.
    features = normalized_features(2, 5, num_views, 3) * 1.3
    labels = np.array([0, 1, 0, 0, 1]) if supervised else None  # class 0 exceeds a cap of 1 sample
    kwargs = dict(contrast_mode=contrast_mode, variant=variant, **options)
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
    "variant,contrast_mode,num_views,supervised,options",
    [
        ("out", "all", 2, True, dict()),
        ("in", "all", 3, True, dict()),
        ("out", "one", 2, False, dict()),
        ("in", "one", 1, True, dict()),
        ("out", "all", 2, True, dict(denominator_mode="one_positive")),
        ("in", "one", 3, True, dict(denominator_mode="one_positive", positives_cap=3)),
        ("in", "all", 2, False, dict(denominator_mode="only_negatives", positives_cap=2)),
    ],
)
def test_block_size_gives_the_same_value_and_gradient(
    block_size, variant, contrast_mode, num_views, supervised, options
):
    features = normalized_features(8, 8, num_views, 5)
    labels = LABELS if supervised else None
    kwargs = dict(temperature=0.1, contrast_mode=contrast_mode, variant=variant, **options)
    loss, gradient = loss_and_gradient(features, labels, **kwargs)
    blocked_loss, blocked_gradient = loss_and_gradient(
        features, labels, block_size=block_size, **kwargs
    )
    np.testing.assert_allclose(blocked_loss.numpy(), loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(blocked_gradient.numpy(), gradient.numpy(), atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 5])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(denominator_mode="one_positive", positives_cap=2), dict(positives_cap=2)],
)
@pytest.mark.host_xla
def test_loss_and_gradient_compile_with_xla(block_size, options):
    features = normalized_features(9, 8, 2, 5)
    kwargs = dict(variant="in", block_size=block_size, **options)

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
    options = dict(denominator_mode="one_positive", positives_cap=2)
    loss, gradient = loss_and_gradient(features, LABELS, temperature=0.05, **options)
    assert loss.dtype == tf.float32 and gradient.dtype == tf.bfloat16
    np.testing.assert_allclose(
        loss.numpy(), reference_loss(rounded, LABELS, 0.05, **options), rtol=1e-5
    )


def test_batch_size_unknown_until_run_time():
    features = normalized_features(11, 8, 2, 5)
    signature = [tf.TensorSpec([None, 2, 5], tf.float32), tf.TensorSpec([None], tf.int32)]
    for block_size, options in [
        (None, dict()),
        (3, dict()),
        (None, dict(positives_cap=2)),
        (3, dict(denominator_mode="one_positive", positives_cap=2)),
    ]:
        traced = tf.function(
            lambda x, y, b=block_size, o=options: supcon_loss(x, y, block_size=b, **o),
            input_signature=signature,
        )
        np.testing.assert_allclose(
            traced(features, LABELS.astype(np.int32)).numpy(),
            reference_loss(features, LABELS, 0.1, **options),
            rtol=1e-5,
        )


def test_positives_cap_needs_the_number_of_views_at_trace_time():
    traced = tf.function(
        lambda x: supcon_loss(x, positives_cap=2),
        input_signature=[tf.TensorSpec([4, None, 3], tf.float32)],
    )
    with pytest.raises(ValueError, match="positives_cap must be a multiple of the number of views"):
        traced.get_concrete_function()


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
        (dict(denominator_mode="negatives"), "denominator_mode"),
        (dict(denominator_mode=None), "denominator_mode"),
        (dict(positives_cap=-1), "positives_cap must be None"),
        (dict(positives_cap=2.0), "positives_cap must be None"),
        (dict(positives_cap=True), "positives_cap must be None"),
        (dict(positives_cap=3), "multiple of the number of views"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    arguments = dict(features=GOOD_FEATURES, labels=np.array([0, 1, 0, 1]))
    arguments.update(kwargs)
    features, labels = arguments.pop("features"), arguments.pop("labels")
    with pytest.raises(ValueError, match=message):
        supcon_loss(features, labels, **arguments)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0),
        ("temperature", "0.1"),
        ("base_temperature", -1.0),
        ("contrast_mode", "both"),
        ("variant", "mid"),
        ("block_size", 0),
        ("block_size", 2.5),
        ("denominator_mode", "negatives"),
        ("positives_cap", -2),
        ("positives_cap", 3),
    ],
)
def test_check_config_names_the_field_supcon_loss_refuses(field, value):
    loss_config = dict(temperature=0.1, base_temperature=None, contrast_mode="all", variant="out",
                       block_size=None, denominator_mode="all", positives_cap=None)
    check_config(loss_config, num_views=2)
    with pytest.raises(ValueError, match=field):
        supcon_loss(GOOD_FEATURES, np.array([0, 1, 0, 1]), **{field: value})
    loss_config[field] = value
    with pytest.raises(ValueError) as raised:
        check_config(loss_config, num_views=2)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"config.loss.{field}={value!r} "), message


def test_keras_loss_config_round_trip():
    options = dict(variant="in", denominator_mode="one_positive", positives_cap=2)
    loss = SupConLoss(temperature=0.07, base_temperature=0.07, block_size=16, **options)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SupConLoss)
    assert restored.get_config() == loss.get_config()
    assert restored.get_config()["denominator_mode"] == "one_positive"
    assert restored.get_config()["positives_cap"] == 2
    features = normalized_features(13, 8, 2, 5)
    np.testing.assert_allclose(
        restored(LABELS, features).numpy(),
        reference_loss(features, LABELS, 0.07, base_temperature=0.07, **options),
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
