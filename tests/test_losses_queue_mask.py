"""supcon_loss with a queue of extra contrasts and weighted positives (a mask
or multi-hot labels), against a per-anchor reference.

The reference below is a loop over anchors written from Eq. 2 and Eq. 3 of
Khosla et al. (2020), in float64, with the queue's entries as extra contrasts
(never anchors) and every contrast a carrying a weight w_ia as a positive of
anchor i: 1 for the anchor's other views; otherwise 1 or 0 by class, the
mask's entry, or the Jaccard index of two sets of classes. Positives
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

from supcon_tf.losses import SupConLoss, multi_hot_mask, supcon_loss


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


@pytest.mark.parametrize("num_views,supervised", [(1, True), (2, True), (2, False), (3, True)])
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
@pytest.mark.host_xla
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


def per_replica(features, labels, kwargs, mask=None):
    """Per-replica losses and, concatenated, each replica's gradient of
    loss / replicas with respect to its own rows (and mask rows)."""
    strategy = mirrored_strategy(NUM_REPLICAS)

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(
                np.split(array, NUM_REPLICAS)[context.replica_id_in_sync_group]
            )
        )

    def replica_step(local_features, local_labels, local_mask):
        with tf.GradientTape() as tape:
            tape.watch(local_features)
            loss = supcon_loss(local_features, local_labels, mask=local_mask, **kwargs)
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return loss, tape.gradient(scaled, local_features)

    @tf.function
    def step(local_features, local_labels, local_mask):
        return strategy.run(replica_step, args=(local_features, local_labels, local_mask))

    losses, gradients = step(
        shard(features),
        shard(labels) if labels is not None else None,
        shard(mask) if mask is not None else None,
    )
    losses = [t.numpy() for t in strategy.experimental_local_results(losses)]
    gradients = [t.numpy() for t in strategy.experimental_local_results(gradients)]
    return np.array(losses), np.concatenate(gradients)


@pytest.mark.parametrize(
    "num_views,supervised,options",
    [
        (2, True, dict()),
        (2, False, dict(variant="in", contrast_mode="one")),
        (1, True, dict(block_size=2)),
        (3, True, dict(denominator_mode="only_negatives", variant="in", block_size=4)),
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


# Weighted positives.


def mask_weight(mask):
    """w(b, c) = mask[b, c]; queue entry k is column B + k when the mask has it."""
    mask = np.asarray(mask, np.float64)

    def weight(b, c):
        if isinstance(c, tuple):
            column = mask.shape[0] + c[1]  # single device: B_global = B
            return mask[b, column] if column < mask.shape[1] else 0.0
        return mask[b, c]

    return weight


def jaccard_weight(multi_hot, queue_multi_hot=None):
    """|Y_b & Y_c| / |Y_b | Y_c| of the sets of classes."""

    def classes(row):
        return {k for k, on in enumerate(row) if on}

    def weight(b, c):
        other = queue_multi_hot[c[1]] if isinstance(c, tuple) else multi_hot[c]
        union = classes(multi_hot[b]) | classes(other)
        return len(classes(multi_hot[b]) & classes(other)) / len(union) if union else 0.0

    return weight


def soft_mask(seed, rows, columns):
    """Weights in [0, 1], about a third exactly 0."""
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(rows, columns))
    return np.where(mask < 0.35, 0.0, mask).astype(np.float32)


MULTI_HOT = np.array(
    [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], np.int32
)
QUEUE_MULTI_HOT = np.array(
    [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0]], np.int32
)


@pytest.mark.parametrize("num_views,queue_columns", [(1, 9), (2, None), (2, 0), (3, 9)])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_soft_mask_matches_reference(options, num_views, queue_columns):
    # queue_columns: None without a queue, 0 for a [B, B] mask with a queue
    # (its entries are negatives), 9 for a [B, B + Q] mask weighing them.
    features = normalized(20, (6, num_views, 4))
    queue = normalized(21, (9, 4)) if queue_columns is not None else None
    mask = soft_mask(22, 6, 6 + (queue_columns or 0))
    expected = reference_loss(features, 0.2, mask_weight(mask), queue, **options)
    for block_size in (None, 4):
        loss = supcon_loss(
            features, mask=mask, temperature=0.2, block_size=block_size,
            queue_features=queue, **options,
        )
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, err_msg=str(block_size))


@pytest.mark.parametrize("with_queue", [False, True])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_label_mask_reproduces_the_labels_path(options, with_queue):
    features = normalized(23, (6, 2, 4))
    queue, queue_labels, columns = None, None, LABELS
    if with_queue:
        queue, queue_labels = normalized(24, (9, 4)), QUEUE_LABELS
        columns = np.concatenate([LABELS, QUEUE_LABELS])
    mask = (LABELS[:, None] == columns[None]).astype(np.float32)
    np.fill_diagonal(mask, 0.0)  # the own column is 1 whatever the mask says
    for block_size in (None, 4):
        kwargs = dict(block_size=block_size, **options)
        loss, gradient, _ = loss_and_gradients(
            features, LABELS, queue, queue_labels=queue_labels, **kwargs
        )
        mask_loss, mask_gradient, _ = loss_and_gradients(features, None, queue, mask=mask, **kwargs)
        np.testing.assert_allclose(mask_loss, loss, rtol=1e-6)
        np.testing.assert_allclose(mask_gradient, gradient, atol=1e-5)


def test_own_column_and_zero_mask():
    features = normalized(25, (5, 2, 3))
    mask = soft_mask(26, 5, 5)
    ones, zeros = mask.copy(), mask.copy()
    np.fill_diagonal(ones, 1.0)
    np.fill_diagonal(zeros, 0.0)
    np.testing.assert_allclose(
        supcon_loss(features, mask=ones).numpy(), supcon_loss(features, mask=zeros).numpy()
    )
    # An all-zero mask leaves the other views as the only positives: SimCLR.
    np.testing.assert_allclose(
        supcon_loss(features, mask=np.zeros((5, 5), np.float32)).numpy(),
        supcon_loss(features).numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(variant="in"),
        dict(variant="in", block_size=3),
        dict(denominator_mode="one_positive", block_size=3),
        dict(variant="in", denominator_mode="one_positive"),
        dict(denominator_mode="only_negatives", contrast_mode="one"),
    ],
    ids=str,
)
def test_soft_mask_gradient_matches_central_differences(options):
    features = normalized(27, (4, 2, 3))
    queue = normalized(28, (3, 3))
    mask = soft_mask(29, 4, 7)
    reference_options = {k: v for k, v in options.items() if k != "block_size"}
    _, gradient, queue_gradient = loss_and_gradients(
        features, None, queue, mask=mask, temperature=0.5, **options
    )
    expected = central_differences(
        lambda x: reference_loss(x, 0.5, mask_weight(mask), queue, **reference_options), features
    )
    np.testing.assert_allclose(gradient, expected, atol=2e-5)
    assert queue_gradient is None or not np.any(queue_gradient)


def test_multi_hot_mask_is_the_jaccard_index():
    weight = jaccard_weight(MULTI_HOT, QUEUE_MULTI_HOT)
    columns = list(range(6)) + [("q", k) for k in range(5)]
    expected = [[weight(b, c) for c in columns] for b in range(6)]
    got = multi_hot_mask(MULTI_HOT, np.concatenate([MULTI_HOT, QUEUE_MULTI_HOT]))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got.numpy()[0, 2] == pytest.approx(2 / 3) and got.numpy()[3, 3] == 0.0


@pytest.mark.parametrize("with_queue", [False, True])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_multi_hot_labels_match_reference(options, with_queue):
    features = normalized(30, (6, 2, 4))
    queue, queue_labels = (normalized(31, (5, 4)), QUEUE_MULTI_HOT) if with_queue else (None, None)
    expected = reference_loss(
        features, 0.2, jaccard_weight(MULTI_HOT, QUEUE_MULTI_HOT), queue, **options
    )
    for block_size in (None, 4):
        loss = supcon_loss(
            features, MULTI_HOT, temperature=0.2, block_size=block_size,
            queue_features=queue, queue_labels=queue_labels, **options,
        )
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, err_msg=str(block_size))


def test_one_hot_labels_are_class_ids():
    features = normalized(32, (6, 2, 4))
    one_hot = np.eye(5, dtype=np.float32)[LABELS]
    queue = normalized(33, (9, 4))
    queue_one_hot = np.eye(6, dtype=np.float32)[QUEUE_LABELS][:, :5]  # class 5: no class
    ids = loss_and_gradients(features, LABELS, queue, queue_labels=np.minimum(QUEUE_LABELS, 9))
    hot = loss_and_gradients(features, one_hot, queue, queue_labels=queue_one_hot)
    # Queue class 5 matches no batch sample, as an all-zero row matches nothing.
    np.testing.assert_allclose(hot[0], ids[0], rtol=1e-6)
    np.testing.assert_allclose(hot[1], ids[1], atol=1e-6)


def test_keras_loss_takes_multi_hot_labels():
    features = normalized(34, (6, 2, 4))
    loss = SupConLoss(temperature=0.2, variant="in")
    np.testing.assert_allclose(
        loss(MULTI_HOT, features).numpy(),
        reference_loss(features, 0.2, jaccard_weight(MULTI_HOT), variant="in"),
        rtol=1e-5,
    )
    ids = LABELS[:, None]  # [B, 1]: class ids, as Keras often shapes them
    np.testing.assert_allclose(
        loss(ids, features).numpy(),
        reference_loss(features, 0.2, label_weight(LABELS), variant="in"),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "options", [dict(), dict(variant="in", block_size=5), dict(denominator_mode="one_positive")]
)
@pytest.mark.host_xla
def test_mask_and_multi_hot_compile_with_xla(options):
    features = normalized(35, (6, 2, 4))
    queue = normalized(36, (5, 4))
    mask = soft_mask(37, 6, 11)

    def both(x):
        multi_hot = dict(queue_features=queue, queue_labels=QUEUE_MULTI_HOT, **options)
        return (
            supcon_loss(x, mask=mask, queue_features=queue, **options)
            + supcon_loss(x, MULTI_HOT, **multi_hot)
        )

    @tf.function(jit_compile=True)
    def compiled(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = both(x)
        return loss, tape.gradient(loss, x)

    loss, gradient = compiled(tf.constant(features))
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        eager_loss = both(x)
    np.testing.assert_allclose(loss.numpy(), eager_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), tape.gradient(eager_loss, x).numpy(), atol=1e-5)


GLOBAL_MULTI_HOT = np.random.default_rng(38).integers(0, 2, size=(12, 4)).astype(np.int32)
GLOBAL_QUEUE_MULTI_HOT = np.random.default_rng(39).integers(0, 2, size=(8, 4)).astype(np.int32)


@pytest.mark.parametrize(
    "num_views,positives,options",
    [
        (2, "mask", dict()),
        (1, "mask", dict(variant="in", block_size=2)),
        (2, "mask_with_queue", dict(denominator_mode="one_positive")),
        (2, "mask_queue_negatives", dict(denominator_mode="only_negatives", contrast_mode="one")),
        (3, "multi_hot_with_queue", dict(variant="in", block_size=4)),
    ],
)
def test_weighted_positives_under_four_replicas_equal_one_device(num_views, positives, options):
    features = normalized(40, (12, num_views, 5))
    queue = normalized(41, (8, 5)) if "queue" in positives else None
    labels, mask, queue_labels = None, None, None
    if positives.startswith("mask"):
        mask = soft_mask(42, 12, 20 if positives == "mask_with_queue" else 12)
        weight = mask_weight(mask)
    else:
        labels = GLOBAL_MULTI_HOT
        queue_labels = GLOBAL_QUEUE_MULTI_HOT if queue is not None else None
        weight = jaccard_weight(GLOBAL_MULTI_HOT, GLOBAL_QUEUE_MULTI_HOT)
    kwargs = dict(temperature=0.2, queue_features=queue, queue_labels=queue_labels, **options)

    features_tensor = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(features_tensor)
        loss = supcon_loss(features_tensor, labels, mask=mask, **kwargs)
    gradient = tape.gradient(loss, features_tensor).numpy()
    reference_options = {k: v for k, v in options.items() if k != "block_size"}
    np.testing.assert_allclose(
        loss.numpy(), reference_loss(features, 0.2, weight, queue, **reference_options), rtol=1e-5
    )
    replica_losses, replica_gradients = per_replica(features, labels, kwargs, mask=mask)
    assert len(set(replica_losses.tolist())) > 1
    np.testing.assert_allclose(replica_losses.mean(), loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(replica_gradients, gradient, atol=1e-5)


def test_replica_count_normalizes_anchors_without_a_loss():
    # only_negatives: replica 0's anchors weigh every sample as a positive, so
    # they have no negative and no loss; the others do. The per-replica means
    # still average to the global loss.
    features = normalized(43, (12, 2, 5))
    mask = soft_mask(44, 12, 12)
    mask[:3] = 1.0
    kwargs = dict(temperature=0.2, denominator_mode="only_negatives")
    loss = supcon_loss(features, mask=mask, **kwargs).numpy()
    expected = reference_loss(features, 0.2, mask_weight(mask), denominator_mode="only_negatives")
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    replica_losses, _ = per_replica(features, None, kwargs, mask=mask)
    assert replica_losses[0] == 0.0
    np.testing.assert_allclose(replica_losses.mean(), loss, rtol=1e-5)


MASK = soft_mask(45, 4, 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mask=MASK), "either labels or mask"),
        (dict(labels=None, mask=MASK, positives_cap=2), "positives_cap needs class ids"),
        (dict(labels=None, mask=MASK[:3]), "mask must be weights"),
        (dict(labels=None, mask=MASK[:, :3]), "mask must be weights"),
        (dict(labels=None, mask=MASK[0]), "mask must be weights"),
        (dict(labels=None, mask=MASK, queue_features=QUEUE, queue_labels=np.arange(5)),
         "queue_labels does not combine with mask"),
        (dict(labels=None, mask=np.ones((4, 8), np.float32), queue_features=QUEUE),
         r"mask must be weights .*\[B, B_global \+ Q\]"),
        (dict(labels=MULTI_HOT[:4], positives_cap=2), "positives_cap needs class ids"),
        (dict(labels=MULTI_HOT[:3]), "multi-hot labels must have shape"),
        (dict(labels=MULTI_HOT[:4], queue_features=QUEUE, queue_labels=np.arange(5)),
         r"queue_labels must be multi-hot"),
        (dict(labels=MULTI_HOT[:4], queue_features=QUEUE, queue_labels=QUEUE_MULTI_HOT[:, :3]),
         r"queue_labels must be multi-hot"),
        (dict(labels=np.array([[0], [1], [0], [1]])), r"\[B, C\] with C >= 2"),
    ],
)
def test_bad_mask_arguments_raise_value_error(kwargs, message):
    arguments = dict(labels=np.array([0, 1, 0, 1]))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        supcon_loss(normalized(13, (4, 2, 3)), arguments.pop("labels"), **arguments)
