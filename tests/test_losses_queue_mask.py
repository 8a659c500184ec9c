"""supcon_loss with a queue of extra contrasts, against a per-anchor reference.

The reference below is a loop over anchors written from Eq. 2 and Eq. 3 of
Khosla et al. (2020), in float64, with the queue's entries as extra contrasts
(never anchors) and every contrast a carrying a weight w_ia as a positive of
anchor i: 1 for the anchor's other views, 1 or 0 by class otherwise. Positives
are the contrasts with w_ia > 0, negatives those with w_ia = 0; Eq. 2 becomes
-sum_p w_ip log p_ip / sum_p w_ip and Eq. 3 -log(sum_p w_ip p_ip / sum_p w_ip).
It shares no code with supcon_tf.losses.
"""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy

from supcon_tf.losses import supcon_loss


def reference_loss(
    features,
    temperature,
    weight,
    queue=None,
    *,
    contrast_mode="all",
    variant="out",
    denominator_mode="all",
):
    """Mean over anchors with a defined loss. weight(b, c) is the positive
    weight of batch sample c for anchor sample b (c != b), weight(b, ("q", k))
    that of queue entry k."""
    features = np.asarray(features, np.float64)
    batch, num_views, _ = features.shape
    queue = np.zeros((0, features.shape[2])) if queue is None else np.asarray(queue, np.float64)
    vectors = {(c, w): features[c, w] for c in range(batch) for w in range(num_views)}
    vectors.update({("q", k): queue[k] for k in range(len(queue))})

    anchors = [(b, v) for b in range(batch) for v in range(num_views)]
    if contrast_mode == "one":
        anchors = [(b, 0) for b in range(batch)]
    anchor_losses = []
    for b, v in anchors:
        others = [a for a in vectors if a != (b, v)]  # A(i): every contrast but the anchor

        def w(a):
            if a[0] == b:
                return 1.0  # the anchor's own other views
            return float(weight(b, a if a[0] == "q" else a[0]))

        def e(a):
            return math.exp(features[b, v] @ vectors[a] / temperature)

        positives = [a for a in others if w(a) > 0]
        negatives = [a for a in others if w(a) == 0]
        if not positives or (denominator_mode == "only_negatives" and not negatives):
            continue
        negatives_sum = sum(e(n) for n in negatives)
        if denominator_mode == "all":
            denominators = [sum(e(a) for a in others)] * len(positives)
        elif denominator_mode == "one_positive":
            denominators = [negatives_sum + e(p) for p in positives]
        else:
            denominators = [negatives_sum] * len(positives)
        weights = [w(p) for p in positives]
        ratios = [e(p) / d for p, d in zip(positives, denominators)]
        if variant == "out":
            terms = [wp * math.log(r) for wp, r in zip(weights, ratios)]
            anchor_losses.append(-sum(terms) / sum(weights))
        else:
            mean = sum(wp * r for wp, r in zip(weights, ratios)) / sum(weights)
            anchor_losses.append(-math.log(mean))
    return sum(anchor_losses) / len(anchor_losses) if anchor_losses else 0.0


def label_weight(labels, queue_labels=None):
    """Eq. 2's positives: same class (SimCLR without labels: no other sample)."""

    def weight(b, c):
        if labels is None:
            return 0.0
        other = queue_labels[c[1]] if isinstance(c, tuple) else labels[c]
        return float(labels[b] == other)

    return weight


def normalized(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def loss_and_gradients(features, labels=None, queue=None, **kwargs):
    """Loss, d loss / d features, and d loss / d queue (None if none flows)."""
    features = tf.constant(features)
    queue = tf.constant(queue) if queue is not None else None
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        if queue is not None:
            tape.watch(queue)
        loss = supcon_loss(features, labels, queue_features=queue, **kwargs)
    queue_gradient = tape.gradient(loss, queue) if queue is not None else None
    return loss.numpy(), tape.gradient(loss, features).numpy(), queue_gradient


def central_differences(f, x, step=1e-5):
    x = np.asarray(x, np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (f(up) - f(down)) / (2 * step)
    return gradient


LABELS = np.array([0, 1, 0, 2, 1, 3])
QUEUE_LABELS = np.array([1, 4, 0, 0, 3, 1, 2, 5, 3])  # class 3 has one batch sample
OPTIONS = [
    dict(variant=variant, contrast_mode=mode, denominator_mode=denominator)
    for variant, mode, denominator in itertools.product(
        ["out", "in"], ["all", "one"], ["all", "one_positive", "only_negatives"]
    )
]


@pytest.mark.parametrize("supervised", [True, False])
@pytest.mark.parametrize("num_views", [1, 2, 3])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_queue_matches_reference(options, num_views, supervised):
    features = normalized(0, (6, num_views, 4))
    queue = normalized(1, (9, 4))
    labels, queue_labels = (LABELS, QUEUE_LABELS) if supervised else (None, None)
    weight = label_weight(labels, queue_labels)
    expected = reference_loss(features, 0.2, weight, queue, **options)
    for block_size in (None, 4):
        loss = supcon_loss(
            features, labels, temperature=0.2, block_size=block_size,
            queue_features=queue, queue_labels=queue_labels, **options,
        )
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, err_msg=str(block_size))
    if not supervised and num_views == 1:
        assert expected == 0.0  # no anchor has a positive: the queue holds only negatives
        return
    # The queue really enters: without it the loss differs.
    assert not np.isclose(expected, reference_loss(features, 0.2, weight, None, **options))


@pytest.mark.parametrize(
    "supervised,options",
    [
        (True, dict()),
        (True, dict(variant="in", denominator_mode="one_positive")),
        (False, dict(denominator_mode="only_negatives", contrast_mode="one")),
        (True, dict(variant="in", block_size=3)),
        (True, dict(denominator_mode="one_positive", block_size=3)),
    ],
)
def test_queue_gradient_matches_central_differences(supervised, options):
    features = normalized(2, (4, 2, 3))
    queue = normalized(3, (5, 3))
    labels, queue_labels = (LABELS[:4], QUEUE_LABELS[:5]) if supervised else (None, None)
    weight = label_weight(labels, queue_labels)
    reference_options = {k: v for k, v in options.items() if k != "block_size"}
    _, gradient, queue_gradient = loss_and_gradients(
        features, labels, queue, queue_labels=queue_labels, temperature=0.5, **options
    )
    expected = central_differences(
        lambda x: reference_loss(x, 0.5, weight, queue, **reference_options), features
    )
    np.testing.assert_allclose(gradient, expected, atol=2e-5)
    # The queue is a constant of the step: nothing flows into it.
    assert queue_gradient is None or not np.any(queue_gradient)


def test_simclr_queue_entries_are_negatives_even_if_equal_to_an_anchor():
    # A queue entry identical to an anchor is still a negative without labels:
    # it adds exp(1 / tau) to that anchor's denominator and nothing else.
    features = normalized(6, (3, 2, 4))
    queue = features[:1, 0].copy()
    loss = supcon_loss(features, None, temperature=0.5, queue_features=queue)
    expected = reference_loss(features, 0.5, label_weight(None), queue)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    assert loss.numpy() > supcon_loss(features, None, temperature=0.5).numpy()


def test_empty_queue_changes_nothing():
    features = normalized(7, (6, 2, 4))
    empty = np.zeros((0, 4), np.float32)
    for labels, queue_labels in [(LABELS, np.zeros(0, np.int32)), (None, None)]:
        np.testing.assert_allclose(
            supcon_loss(features, labels, queue_features=empty, queue_labels=queue_labels),
            supcon_loss(features, labels).numpy(),
            rtol=1e-6,
        )


@pytest.mark.parametrize(
    "options", [dict(), dict(variant="in", block_size=5), dict(denominator_mode="one_positive")]
)
def test_queue_compiles_with_xla(options):
    features = normalized(8, (6, 2, 4))
    queue = normalized(9, (9, 4))

    @tf.function(jit_compile=True)
    def compiled(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = supcon_loss(
                x, LABELS, queue_features=queue, queue_labels=QUEUE_LABELS, **options
            )
        return loss, tape.gradient(loss, x)

    loss, gradient = compiled(tf.constant(features))
    eager_loss, eager_gradient, _ = loss_and_gradients(
        features, LABELS, queue, queue_labels=QUEUE_LABELS, **options
    )
    np.testing.assert_allclose(loss.numpy(), eager_loss, rtol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), eager_gradient, atol=1e-5)


# Under 4 replicas: each holds 3 samples of the 12, the queue is replicated.
NUM_REPLICAS = 4
GLOBAL_LABELS = np.array([0, 1, 2, 0, 3, 3, 1, 4, 5, 2, 6, 0], np.int32)
GLOBAL_QUEUE_LABELS = np.array([6, 0, 7, 4, 1, 5, 5, 2], np.int32)


def per_replica(features, labels, kwargs):
    """Per-replica losses and, concatenated, each replica's gradient of
    loss / replicas with respect to its own rows."""
    strategy = mirrored_strategy(NUM_REPLICAS)

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(
                np.split(array, NUM_REPLICAS)[context.replica_id_in_sync_group]
            )
        )

    def replica_step(local_features, local_labels):
        with tf.GradientTape() as tape:
            tape.watch(local_features)
            loss = supcon_loss(local_features, local_labels, **kwargs)
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return loss, tape.gradient(scaled, local_features)

    @tf.function
    def step(local_features, local_labels):
        return strategy.run(replica_step, args=(local_features, local_labels))

    losses, gradients = step(shard(features), shard(labels) if labels is not None else None)
    losses = [t.numpy() for t in strategy.experimental_local_results(losses)]
    gradients = [t.numpy() for t in strategy.experimental_local_results(gradients)]
    return np.array(losses), np.concatenate(gradients)


@pytest.mark.parametrize(
    "num_views,supervised,options",
    [
        (2, True, dict()),
        (2, False, dict(variant="in", contrast_mode="one")),
        (1, True, dict(block_size=2)),
        (3, True, dict(denominator_mode="one_positive", variant="in")),
        (2, True, dict(denominator_mode="only_negatives", block_size=4)),
    ],
)
def test_queue_under_four_replicas_equals_one_device(num_views, supervised, options):
    features = normalized(10, (12, num_views, 5))
    queue = normalized(11, (8, 5))
    labels = GLOBAL_LABELS if supervised else None
    queue_labels = GLOBAL_QUEUE_LABELS if supervised else None
    kwargs = dict(temperature=0.2, queue_features=queue, queue_labels=queue_labels, **options)

    loss, gradient, _ = loss_and_gradients(
        features, labels, queue, queue_labels=queue_labels, temperature=0.2, **options
    )
    reference_options = {k: v for k, v in options.items() if k != "block_size"}
    weight = label_weight(labels, queue_labels)
    np.testing.assert_allclose(
        loss, reference_loss(features, 0.2, weight, queue, **reference_options), rtol=1e-5
    )
    replica_losses, replica_gradients = per_replica(features, labels, kwargs)
    assert len(set(replica_losses.tolist())) > 1  # the replicas saw different anchors
    np.testing.assert_allclose(replica_losses.mean(), loss, rtol=1e-5)
    np.testing.assert_allclose(replica_gradients, gradient, atol=1e-5)


QUEUE = normalized(12, (5, 3))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(queue_features=QUEUE), "queue_labels must be given"),
        (dict(queue_labels=np.arange(5)), "queue_labels needs both"),
        (dict(labels=None, queue_features=QUEUE, queue_labels=np.arange(5)), "queue_labels needs"),
        (dict(queue_features=QUEUE[:, :2], queue_labels=np.arange(5)), "queue_features must be"),
        (dict(queue_features=QUEUE[None], queue_labels=np.arange(5)), "queue_features must be"),
        (dict(queue_features=np.arange(15).reshape(5, 3)), "queue_features must be"),
        (dict(queue_features=QUEUE, queue_labels=np.arange(4)), "queue_labels must be int"),
        (dict(queue_features=QUEUE, queue_labels=np.ones(5)), "queue_labels must be int"),
        (
            dict(queue_features=QUEUE, queue_labels=np.arange(5), positives_cap=2),
            "positives_cap does not combine",
        ),
    ],
)
def test_bad_queue_arguments_raise_value_error(kwargs, message):
    arguments = dict(labels=np.array([0, 1, 0, 1]))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        supcon_loss(normalized(13, (4, 2, 3)), arguments.pop("labels"), **arguments)
