"""Supervised contrastive loss (Khosla et al. 2020), exact across replicas.

`supcon_loss` computes L^sup_out (Eq. 2) or L^sup_in (Eq. 3) of the paper, or
SimCLR's NT-Xent when no labels are given, with the options of the official
code (google-research supcon/losses.py): which contrasts enter the softmax
denominator, and a cap on the positives per anchor. Views are flattened
sample-major: row b * V + v of the [B * V, D] matrix is view v of sample b.

Inside `strategy.run` with several replicas the local rows are the anchors and
the gathered global batch (`cross_replica.gather_rows`) is the set of contrasts.
Each replica returns the mean over its own anchors; the gradient of the gathered
contrasts flows back to the replica owning each row. To train on exactly the
single-device loss of the global batch, divide the per-replica loss by
`num_replicas_in_sync` before taking gradients and sum the gradients across
replicas (what Keras optimizers and `strategy.reduce(SUM, ...)` do): the mean
of the per-replica losses is then the global loss and the summed gradient is
its gradient. `SupConLoss` in `model.compile` / `model.fit` does the division
for you (Keras does not divide a loss that is already a scalar).

Only the softmax denominator needs the anchors x contrasts matrix. The
positives' term of L_out is z_i . (sum of z_i's class - z_i), computed from
per-class sums of the contrasts in O(N * D). The log-sum-exp over contrasts
has a hand-written gradient (`tf.custom_gradient`): d lse_i / d logit_ia is
the row's softmax, so the backward pass is one elementwise pass and two
matmuls, three N x N x D matmuls in all. With `block_size`, anchors are
processed in blocks inside a `tf.while_loop` whose backward pass recomputes
each block's logits, so peak memory is O(block_size x contrasts) instead of
O(anchors x contrasts).

A queue of extra contrasts (a momentum encoder's keys) is appended after the
global batch as one-view samples that are never anchors: the same masks and
class sums cover it, and it receives no gradient.

Weighted positives (a [B, B_global] mask, or multi-hot labels turned into
one) replace the 0/1 masks by weights: the positives' term of L_out takes
per-sample sums weighted by the mask (a [B, samples] x [samples, D] matmul),
L_in's numerator is a log-sum-exp with log w_ia added to the logits, and the
blockwise path gathers each block's mask rows, so the memory bound holds.

Denominators of the negatives only, or of the negatives and the kept
positives, take the same path with another mask. With denominator_mode
"one_positive" each (anchor, positive) pair has its own denominator, so the
positives' term needs a pass over the matrix too; blockwise, its backward
pass recomputes each block and differentiates it alone.
"""

import keras
import tensorflow as tf

from supcon_tf import cross_replica

VARIANTS = ("out", "in")
CONTRAST_MODES = ("all", "one")
DENOMINATOR_MODES = ("all", "one_positive", "only_negatives")
# Stands in for the excluded self-similarity; finite so that a row whose only
# contrast is itself (B = V = 1) still gives finite values instead of NaN.
_MASKED_LOGIT = -1e9
# The bound shift is used while 2 * bound <= 80, so every exp() stays above
# exp(-80), a normal float32; below that the exact row max is computed.
_MAX_BOUND_SHIFT = 40.0
_TINY = 1.1754944e-38  # smallest normal float32


# No tensor-dependent Python control flow here; skipping AutoGraph's source
# conversion saves seconds of tracing per call site.
@tf.autograph.experimental.do_not_convert
def supcon_loss(
    features,
    labels=None,
    *,
    temperature=0.1,
    base_temperature=None,
    contrast_mode="all",
    variant="out",
    block_size=None,
    denominator_mode="all",
    positives_cap=None,
    mask=None,
    queue_features=None,
    queue_labels=None,
):
    """Supervised contrastive loss of L2-normalized multi-view features.

    For an anchor i, P(i) are its positives (the other views of its own sample
    and, with labels, every view of the other samples of its class), the
    negatives are the views of other classes, and s_ia = z_i . z_a / tau.

    Weighted positives: with a mask (or multi-hot labels) each contrast a has
    a weight w_ia in [0, 1] as a positive of i; P(i) is where w_ia > 0 and the
    negatives are where w_ia = 0. Eq. 2 becomes the weighted mean
    -sum_p w_ip log p_ip / sum_p w_ip, and Eq. 3 takes the weighted mean
    inside the log, -log(sum_p w_ip p_ip / sum_p w_ip); with 0/1 weights both
    are the paper's equations. The denominator of p_ip is unchanged.

    Scaling rule: inside `strategy.run` with R = `num_replicas_in_sync` > 1
    replicas, a custom loop divides this loss by R before taking gradients
    (`tape.gradient(loss / R, ...)`), because the optimizer or
    `strategy.reduce(SUM, ...)` sums the gradients over replicas; report the
    undivided value's mean over replicas. `SupConLoss` in `model.compile` /
    `model.fit` does the division for you.

    Args:
      features: float32 or bfloat16 [B, V, D], V >= 1 views per sample, already
        L2-normalized by the caller. Computed in float32.
      labels: int [B] class ids, or None for SimCLR / NT-Xent (the only
        positives of an anchor are the other views of its own sample), or
        multi-hot [B, C] with C >= 2 (entries 0 or 1): the positive weights
        are then `multi_hot_mask` of the labels, the Jaccard index of the
        label sets (gathered across replicas like class ids).
      temperature: tau > 0.
      base_temperature: None gives the paper's formula exactly; a number
        multiplies the loss by temperature / base_temperature: 1.0 multiplies
        it by tau (the official code's scale_by_temperature=True), 0.07 by
        tau / 0.07 (SupContrast, the PyTorch reference).
      contrast_mode: "all" makes every view an anchor; "one" only view 0, with
        every view still a contrast.
      variant: "out" for L^sup_out (Eq. 2, 1/|P(i)| outside the log), "in" for
        L^sup_in (Eq. 3, inside the log).
      block_size: None builds the whole anchors x contrasts matrix; a positive
        int processes that many anchor rows at a time and recomputes them in
        the backward pass (same value and gradient, O(block_size x contrasts)
        memory).
      denominator_mode: which contrasts enter the softmax denominator of the
        probability p_ip of a positive p (official LossDenominatorMode):
        "all": every contrast but the anchor itself (the paper);
        "one_positive": the negatives and p itself, so p's probability is
          sigmoid(s_ip - logsumexp of the negatives);
        "only_negatives": the negatives only (p_ip can exceed 1). An anchor
          without any negative (the whole global batch one class) has no
          defined loss here and is left out like one without positives.
        "out" averages -log p_ip over P(i), "in" takes -log of the mean p_ip.
      positives_cap: None for no cap (the official -1); else a multiple of V.
        Besides the other views of its own sample, an anchor keeps as
        positives every view of the first positives_cap / V other samples of
        its class in the order of the global batch (replica by replica), as
        the official top_k over a 0/1 mask does; so it has at most
        positives_cap + V - 1 positives. Views of the samples past the cap
        are neither positives nor negatives: they leave the numerator and
        every denominator. With labels=None the cap changes nothing. Only
        with class ids (ValueError with a mask, multi-hot labels or a queue).
      mask: None, or weights in [0, 1] of shape [B, B_global] instead of
        labels (labels must be None): mask[b, s] weighs every view of sample
        s of the global batch (in replica order, its columns already global)
        as a positive of local sample b's anchors. The anchor's own other
        views always weigh 1, whatever mask[b, own column] says. With a
        queue, the mask may have Q more columns weighing the queue entries
        ([B, B_global + Q]); with B_global columns the queue entries are
        negatives. The mask gets no gradient.
      queue_features: None, or float [Q, D] extra contrasts (a momentum
        encoder's keys from earlier steps, L2-normalized by the caller),
        appended after the global batch. They are never anchors and get no
        gradient. The queue is not gathered: the caller keeps the same queue
        on every replica. With labels=None its entries are negatives only.
      queue_labels: int [Q] class ids of the queue entries (multi-hot [Q, C]
        with multi-hot labels), required exactly when both labels and
        queue_features are given: an entry of the anchor's class is one more
        positive, any other entry a negative. None with a mask.

    Returns:
      Scalar float32: the mean over this replica's anchors that have at least
      one positive (only V = 1 or positives_cap = 0 can leave an anchor without
      one); 0 with zero gradient when no anchor has a positive. With V = 1 or
      a mask under several replicas the denominator is the global count of
      such anchors divided by the replica count, so the mean of the
      per-replica losses is still exactly the global-batch loss.

    Raises:
      ValueError: for features not of rank 3, labels not int [B] or
        multi-hot [B, C], temperature or base_temperature <= 0, an unknown
        contrast_mode, variant or denominator_mode, a block_size that is not a
        positive int, a positives_cap that is not None or an int >= 0 that
        is a multiple of a statically known V, queue_features not of shape
        [Q, D], queue_labels not of shape [Q] or given without both labels and
        queue_features (or missing when both are given), a mask not of shape
        [B, B_global] (or [B, B_global + Q] with a queue) or given with
        labels or queue_labels, or positives_cap with a queue, a mask or
        multi-hot labels.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 3:
        raise ValueError(
            f"features must have rank 3 [batch, views, dim]; got shape {features.shape}. "
            "Reshape the projections to [B, V, D] (views on their own axis)."
        )
    if not features.dtype.is_floating:
        raise ValueError(f"features must be float32 or bfloat16; got {features.dtype.name}.")
    temperature = _positive_number("temperature", temperature)
    if base_temperature is not None:
        base_temperature = _positive_number("base_temperature", base_temperature)
    if contrast_mode not in CONTRAST_MODES:
        raise ValueError(f"contrast_mode must be one of {CONTRAST_MODES}; got {contrast_mode!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
    if block_size is not None and not _is_int(block_size, minimum=1):
        raise ValueError(f"block_size must be None or a positive int; got {block_size!r}.")
    if denominator_mode not in DENOMINATOR_MODES:
        raise ValueError(
            f"denominator_mode must be one of {DENOMINATOR_MODES}; got {denominator_mode!r}."
        )
    if positives_cap is not None:
        if not _is_int(positives_cap, minimum=0):
            raise ValueError(
                "positives_cap must be None (no cap, the official -1) or an int >= 0; "
                f"got {positives_cap!r}."
            )
        if features.shape[1] is None or positives_cap % features.shape[1]:
            raise ValueError(
                "positives_cap must be a multiple of the number of views, known when the "
                f"loss is traced (it keeps whole samples); got {positives_cap} for features "
                f"of shape {features.shape}."
            )

    labels, mask, queue_features, queue_labels = _checked_positive_sets(
        features, labels, mask, queue_features, queue_labels, positives_cap
    )
    multi_hot = labels is not None and labels.shape.rank == 2
    weighted = mask is not None or multi_hot

    features = tf.cast(features, tf.float32)
    batch = tf.shape(features)[0]
    num_views = features.shape[1] if features.shape[1] is not None else tf.shape(features)[1]
    dim = tf.shape(features)[2]
    if labels is not None:
        labels = tf.cast(labels, tf.int32)
    if queue_labels is not None:
        queue_labels = tf.cast(queue_labels, tf.int32)

    # The gather sits here, outside any nested tf.function, because XLA and
    # MirroredStrategy cannot compile a nested function holding it.
    all_features = cross_replica.gather_rows(features)
    all_labels = cross_replica.gather_rows(labels) if labels is not None else None
    first_sample = cross_replica.replica_id() * batch
    global_batch = tf.shape(all_features)[0]

    if contrast_mode == "all":
        anchors = tf.reshape(features, [-1, dim])
        anchor_ids = first_sample * num_views + tf.range(batch * num_views)
    else:
        anchors = features[:, 0]
        anchor_ids = (first_sample + tf.range(batch)) * num_views
    anchor_samples = anchor_ids // num_views
    num_views_float = tf.cast(num_views, tf.float32)

    # The queue's entries follow the global batch as one-view samples.
    contrasts = tf.reshape(all_features, [-1, dim])
    sample_sums = tf.reduce_sum(all_features, 1)
    if queue_features is not None:
        queue = tf.stop_gradient(tf.cast(queue_features, tf.float32))
        contrasts = tf.concat([contrasts, queue], 0)
        sample_sums = tf.concat([sample_sums, queue], 0)
    num_contrasts = tf.shape(contrasts)[0]
    num_contrasts_float = tf.cast(num_contrasts, tf.float32)
    contrast_ids = tf.range(num_contrasts)

    if weighted:
        # weights[b, s]: sample s (global batch, then queue) as a positive of
        # local sample b; the anchor's own sample always weighs 1.
        if mask is None:
            columns = all_labels
            if queue_labels is not None:
                columns = tf.concat([all_labels, queue_labels], 0)
            weights = multi_hot_mask(labels, columns)
        else:
            weights = tf.cast(mask, tf.float32)
            if queue_features is not None:  # a [B, B_global] mask: queue entries are negatives
                missing = tf.shape(sample_sums)[0] - tf.shape(weights)[1]
                weights = tf.pad(weights, [[0, 0], [0, missing]])
        own = tf.one_hot(first_sample + tf.range(batch), tf.shape(weights)[1])
        anchor_rows = anchor_samples - first_sample  # the anchor's row of weights
        others = tf.stop_gradient(weights) * (1.0 - own)
        weights = others + own

        def per_anchor(columns):
            """Total of a [B, samples] row over what an anchor sees: V views of
            each batch sample and one entry per queue sample."""
            in_batch = tf.reduce_sum(columns[:, :global_batch], 1)
            totals = num_views_float * in_batch + tf.reduce_sum(columns[:, global_batch:], 1)
            return tf.gather(totals, anchor_rows)

        # The anchor's own other views are V - 1 positives of weight 1.
        num_positives = per_anchor(others) + num_views_float - 1.0
        num_negatives = num_contrasts_float - num_views_float - per_anchor(
            tf.cast(others > 0.0, tf.float32)
        )
        anchor_keys = (anchor_ids, anchor_rows)

        def in_set(kind):
            """Per anchor row and contrast: "positives" the weights w_ia (0
            off P(i)), "negatives" where w_ia = 0, "denominator" all but self."""

            def select(keys):
                not_self = keys[0][:, None] != contrast_ids
                if kind == "denominator":
                    return not_self
                rows = tf.gather(weights, tf.maximum(keys[1], 0))  # padding rows have -1
                row_weights = tf.concat(
                    [tf.repeat(rows[:, :global_batch], num_views, axis=1), rows[:, global_batch:]],
                    1,
                )
                if kind == "negatives":
                    return tf.logical_and(not_self, row_weights <= 0.0)
                return tf.where(not_self, row_weights, 0.0)

            return select

        def sum_of_positives():
            """sum_a w_ia z_a over P(i), through per-sample sums: O(B x samples x D)."""
            return tf.gather(tf.matmul(weights, sample_sums), anchor_rows) - anchors

    else:
        # SimCLR: a sample's identity is its label, so only its own views are
        # positives; the queue's entries share a label no batch sample has.
        if all_labels is None:
            all_labels = tf.range(global_batch)
            if queue_features is not None:
                queue_labels = tf.fill(tf.shape(queue_features)[:1], global_batch)
        sample_labels = all_labels
        contrasts_per_sample = tf.fill([global_batch], num_views_float)
        if queue_features is not None:
            sample_labels = tf.concat([all_labels, queue_labels], 0)
            contrasts_per_sample = tf.concat(
                [contrasts_per_sample, tf.ones_like(queue_labels, tf.float32)], 0
            )
        # Classes and ranks are per sample; every view shares its sample's.
        num_samples = tf.size(sample_labels)
        sample_class, sample_rank = _class_index_and_rank(sample_labels)
        class_size = tf.math.unsorted_segment_sum(
            tf.ones_like(sample_class, tf.float32), sample_class, num_samples
        )
        class_contrasts = tf.math.unsorted_segment_sum(
            contrasts_per_sample, sample_class, num_samples
        )
        contrast_class = tf.concat(
            [tf.repeat(sample_class[:global_batch], num_views), sample_class[global_batch:]], 0
        )
        anchor_class = tf.gather(sample_class, anchor_samples)
        anchor_class_size = tf.gather(class_size, anchor_class)
        anchor_class_contrasts = tf.gather(class_contrasts, anchor_class)
        num_negatives = num_contrasts_float - anchor_class_contrasts

        if positives_cap is None:
            num_positives = anchor_class_contrasts - 1.0  # the anchor is its own contrast
            anchor_keys = (anchor_ids, anchor_class)
        else:
            kept_samples = positives_cap // num_views
            contrast_rank = tf.repeat(sample_rank, num_views)
            anchor_rank = tf.gather(sample_rank, anchor_samples)
            # An anchor's own sample is never counted against the cap: among the
            # first kept_samples of its class, it frees its place for the next one.
            anchor_threshold = kept_samples + tf.cast(anchor_rank < kept_samples, tf.int32)
            kept_others = tf.minimum(anchor_class_size - 1.0, float(kept_samples))
            num_positives = num_views_float * (kept_others + 1.0) - 1.0
            anchor_keys = (anchor_ids, anchor_class, anchor_threshold)

        def in_set(kind):
            """Mask [rows, contrasts] of one set of contrasts per anchor row, from the
            rows' keys: "positives" P(i), "negatives", or "denominator" (both)."""

            def select(keys):
                ids, classes = keys[0][:, None], keys[1][:, None]
                not_self = ids != contrast_ids
                if kind == "denominator" and positives_cap is None:
                    return not_self
                other_class = classes != contrast_class
                if kind == "negatives":
                    return other_class
                positive = tf.logical_and(not_self, tf.logical_not(other_class))
                if positives_cap is not None:
                    own_sample = ids // num_views == contrast_ids // num_views
                    kept = tf.logical_or(own_sample, contrast_rank < keys[2][:, None])
                    positive = tf.logical_and(positive, kept)
                return positive if kind == "positives" else tf.logical_or(positive, other_class)

            return select

        def sum_of_positives():
            """sum_{p in P(i)} z_p through per-class sums: O(N x D)."""
            if positives_cap is None:
                class_sums = tf.math.unsorted_segment_sum(sample_sums, sample_class, num_samples)
                return tf.gather(class_sums, anchor_class) - anchors

            def class_sums_of(selected):
                selected_sums = sample_sums * tf.cast(selected, tf.float32)[:, None]
                return tf.math.unsorted_segment_sum(selected_sums, sample_class, global_batch)

            kept_sums = class_sums_of(sample_rank < kept_samples)
            next_sums = class_sums_of(sample_rank == kept_samples)
            # The anchor's own sample, or for one among the kept, the next one in its place.
            own_or_next = tf.where(
                (anchor_rank < kept_samples)[:, None],
                tf.gather(next_sums, anchor_class),
                tf.gather(sample_sums, anchor_samples),
            )
            return tf.gather(kept_sums, anchor_class) + own_or_next - anchors

    scaled_anchors = anchors * (1.0 / temperature)
    has_positive = num_positives > 0
    safe_num_positives = tf.maximum(num_positives, 1.0)

    def logsumexp_over(kind):
        return _logsumexp_over_contrasts(
            scaled_anchors, contrasts, anchor_keys, in_set(kind), block_size=block_size
        )

    if denominator_mode == "one_positive":
        # Each positive has its own denominator, so this takes a pass over the
        # positive pairs: -log p_ip = softplus(lse_neg_i - s_ip).
        log_negatives = logsumexp_over("negatives")
        reduce_rows = _sum_of_softplus if variant == "out" else _logsumexp_of_log_sigmoid
        pair_reduction = _reduce_over_contrasts(
            reduce_rows, scaled_anchors, contrasts, anchor_keys, in_set("positives"),
            log_negatives, block_size=block_size,
        )
        if variant == "out":
            per_anchor_loss = pair_reduction / safe_num_positives
        else:
            per_anchor_loss = tf.math.log(safe_num_positives) - pair_reduction
    else:
        denominator_set = "denominator" if denominator_mode == "all" else "negatives"
        log_denominator = logsumexp_over(denominator_set)
        if variant == "out":
            # sum_{p in P(i)} w_ip s_ip is z_i / tau . (sum_p w_ip z_p), so only
            # the denominator needs the anchors x contrasts matrix.
            mean_positive_logit = (
                tf.reduce_sum(scaled_anchors * sum_of_positives(), 1) / safe_num_positives
            )
            per_anchor_loss = log_denominator - mean_positive_logit
        else:
            log_numerator = logsumexp_over("positives")
            per_anchor_loss = log_denominator - log_numerator + tf.math.log(safe_num_positives)

    has_loss = has_positive
    if denominator_mode == "only_negatives":
        # With labels, either every anchor has a negative or the global batch
        # is one class, so the count still agrees across replicas.
        has_loss = tf.logical_and(has_loss, num_negatives > 0)
    per_anchor_loss = tf.where(has_loss, per_anchor_loss, 0.0)

    num_anchors = tf.reduce_sum(tf.cast(has_loss, tf.float32))
    one_view = not isinstance(num_views, int) or num_views == 1
    num_replicas = cross_replica.num_replicas()
    if num_replicas > 1 and (one_view or weighted):
        # With one view or a mask, replicas can differ in how many anchors
        # have a loss; normalizing by the global count keeps the mean of the
        # per-replica losses equal to the global loss.
        global_anchors = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, num_anchors)
        num_anchors = global_anchors / num_replicas
    loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor_loss), tf.stop_gradient(num_anchors))
    if base_temperature is not None:
        loss *= temperature / base_temperature
    return loss


def multi_hot_mask(labels, other_labels):
    """Positive weights of multi-hot labels: the Jaccard index of label sets.

    weight[i, j] = |y_i and y_j| / |y_i or y_j| (0 when both sets are empty):
    1 for the same set of classes, a fraction for sets that overlap, 0 for
    disjoint ones. Jaccard rather than "any shared class = 1" because it
    reduces to the single-label mask for one-hot labels and keeps a frequent
    class (say, "person" in half the images) from making most pairs full
    positives: an image tagged {person, dog} weighs 1/3 as a positive of one
    tagged {person, car}, 1 of another {person, dog}.

    Args:
      labels: [B, C] multi-hot (entries 0 or 1, any numeric or bool dtype).
      other_labels: [S, C] multi-hot, the columns (for supcon_loss: the global
        batch in replica order, then the queue).

    Returns:
      float32 [B, S] weights in [0, 1], usable as supcon_loss's mask.
    """
    labels = tf.cast(labels, tf.float32)
    other_labels = tf.cast(other_labels, tf.float32)
    shared = tf.matmul(labels, other_labels, transpose_b=True)
    union = tf.reduce_sum(labels, 1)[:, None] + tf.reduce_sum(other_labels, 1) - shared
    return tf.math.divide_no_nan(shared, union)


def _checked_positive_sets(features, labels, mask, queue_features, queue_labels, positives_cap):
    """labels, mask, queue_features and queue_labels as tensors, or a ValueError
    naming what is wrong with them and how they combine."""
    batch, dim = features.shape[0], features.shape[2]
    if labels is not None:
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 2 and labels.shape[1] != 1:
            if not labels.shape[:1].is_compatible_with([batch]):
                raise ValueError(
                    f"multi-hot labels must have shape [B, C] with B = {batch} as in features; "
                    f"got {labels.shape}."
                )
        elif not labels.dtype.is_integer:
            raise ValueError(
                f"labels must be integer class ids; got dtype {labels.dtype.name}. "
                "Cast them to int32."
            )
        elif labels.shape.rank != 1 or not labels.shape.is_compatible_with([batch]):
            raise ValueError(
                f"labels must have shape [B] = [{batch}] (class ids) or [B, C] with C >= 2 "
                f"(multi-hot) to match features {features.shape}; got {labels.shape}."
            )
    multi_hot = labels is not None and labels.shape.rank == 2
    if multi_hot and positives_cap is not None:
        raise ValueError(
            "positives_cap needs class ids; with multi-hot labels set positives_cap=None."
        )

    if queue_features is not None:
        queue_features = tf.convert_to_tensor(queue_features)
        if (
            queue_features.shape.rank != 2
            or not queue_features.dtype.is_floating
            or not queue_features.shape[1:].is_compatible_with([dim])
        ):
            raise ValueError(
                f"queue_features must be float [Q, D] with D = {dim} as in "
                f"features; got {queue_features.dtype.name} of shape {queue_features.shape}."
            )
        if positives_cap is not None:
            raise ValueError(
                "positives_cap does not combine with a queue (the cap keeps whole samples of "
                "the batch); set positives_cap=None or drop queue_features."
            )
    if queue_labels is not None:
        if mask is not None:
            raise ValueError(
                "queue_labels does not combine with mask: the queue's weights are the mask's "
                "last Q columns (or, with a [B, B_global] mask, its entries are negatives); "
                "pass queue_labels=None."
            )
        if queue_features is None or labels is None:
            raise ValueError(
                "queue_labels needs both labels and queue_features; with labels=None (SimCLR) "
                "queue entries are negatives only, so pass queue_labels=None."
            )
        queue_labels = tf.convert_to_tensor(queue_labels)
        expected = queue_features.shape[:1] + labels.shape[1:]
        if (
            (not multi_hot and not queue_labels.dtype.is_integer)
            or queue_labels.shape.rank != labels.shape.rank
            or not queue_labels.shape.is_compatible_with(expected)
        ):
            form = "multi-hot of shape [Q, C]" if multi_hot else "int class ids of shape [Q]"
            raise ValueError(
                f"queue_labels must be {form} = {expected} like labels, to match "
                f"queue_features; got {queue_labels.dtype.name} of shape {queue_labels.shape}."
            )
    elif queue_features is not None and labels is not None:
        raise ValueError(
            "queue_labels must be given with labels and queue_features: the class of each "
            "queue entry decides whether it is a positive."
        )

    if mask is not None:
        if labels is not None:
            raise ValueError(
                "pass either labels or mask, not both: the mask replaces the labels' positives."
            )
        if positives_cap is not None:
            raise ValueError(
                "positives_cap needs class ids; with a mask set positives_cap=None."
            )
        mask = tf.convert_to_tensor(mask)
        global_batch = batch * cross_replica.num_replicas() if batch is not None else None
        columns = [global_batch]
        if queue_features is not None:
            queue_size = queue_features.shape[0]
            columns.append(None if global_batch is None or queue_size is None else
                           global_batch + queue_size)
        if (
            mask.shape.rank != 2
            or not (mask.dtype.is_floating or mask.dtype.is_integer or mask.dtype == tf.bool)
            or not mask.shape[:1].is_compatible_with([batch])
            or not any(mask.shape[1:].is_compatible_with([c]) for c in columns)
        ):
            queue_columns = " or [B, B_global + Q]" if queue_features is not None else ""
            raise ValueError(
                f"mask must be weights in [0, 1] of shape [B, B_global]{queue_columns} = "
                f"{' or '.join(str([batch, c]) for c in columns)} (columns: the global batch "
                f"in replica order, then the queue); got {mask.dtype.name} of shape "
                f"{mask.shape}."
            )
    return labels, mask, queue_features, queue_labels


def _positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0; got {value!r}.")
    return float(value)


def _is_int(value, *, minimum):
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def _class_index_and_rank(labels):
    """Dense class index in [0, len(labels)) per element, and how many earlier
    elements share its class, via a stable sort (no N x N compare)."""
    order = tf.argsort(labels, stable=True)
    sorted_labels = tf.gather(labels, order)
    starts = tf.concat([[1], tf.cast(sorted_labels[1:] != sorted_labels[:-1], tf.int32)], 0)
    sorted_class = tf.cumsum(starts) - 1
    positions = tf.range(tf.size(labels))
    class_start = tf.math.unsorted_segment_min(positions, sorted_class, tf.size(labels))
    sorted_rank = positions - tf.gather(class_start, sorted_class)

    def unsort(values):
        return tf.scatter_nd(order[:, None], values, tf.shape(labels))

    return unsort(sorted_class), unsort(sorted_rank)


def _split_into_blocks(rows, block_size, padding_value=0):
    """[M, ...] -> [ceil(M / block_size), block_size, ...]: static block shapes;
    the last block is padded with padding_value."""
    num_rows = tf.shape(rows)[0]
    num_blocks = (num_rows + block_size - 1) // block_size
    paddings = [[0, num_blocks * block_size - num_rows]] + [[0, 0]] * (rows.shape.rank - 1)
    padded = tf.pad(rows, paddings, constant_values=padding_value)
    return tf.reshape(padded, tf.concat([[num_blocks, block_size], tf.shape(rows)[1:]], 0))


def _selected(logits, selection):
    """logits where a bool selection holds, logits + log w where a weight
    selection w is > 0, _MASKED_LOGIT elsewhere."""
    if selection.dtype == tf.bool:
        return tf.where(selection, logits, _MASKED_LOGIT)
    log_weights = tf.math.log(tf.maximum(selection, _TINY))
    return tf.where(selection > 0.0, logits + log_weights, _MASKED_LOGIT)


def _logsumexp_over_contrasts(scaled_anchors, contrasts, anchor_keys, in_set, *, block_size):
    """log sum_a w_ia exp(s_ia) per anchor row over the contrasts a in
    in_set(keys), a bool mask (w = 1) or weights w_ia >= 0, s_ia =
    scaled_anchor_i . contrast_a, with a hand-written gradient.

    d lse_i / d s_ia is the (weighted) softmax of the row, so the backward pass is one
    elementwise pass and two matmuls. The shift that keeps exp() in range is
    the Cauchy-Schwarz bound |a_i| max_a |c_a| >= s_ia when that bound is
    small enough that nothing can underflow (always for unit features and
    tau >= 0.025); otherwise the exact row max, which costs one more pass.
    """
    bound = tf.stop_gradient(
        tf.norm(scaled_anchors, axis=1) * tf.reduce_max(tf.norm(contrasts, axis=1))
    )
    bound_is_safe = tf.reduce_max(bound) <= _MAX_BOUND_SHIFT

    def row_logsumexp(anchor_rows, keys, row_bound):
        logits = tf.matmul(anchor_rows, contrasts, transpose_b=True)
        mask = in_set(keys)

        def exact_max():
            row_max = tf.reduce_max(_selected(logits, mask), axis=1)
            return tf.where(row_max > _MASKED_LOGIT, row_max, 0.0)  # empty rows: any finite shift

        if mask.dtype == tf.bool:
            shift = tf.cond(bound_is_safe, lambda: row_bound, exact_max)
        else:  # small weights could underflow below the bound
            shift = exact_max()
        shifted = _selected(logits - shift[:, None], mask)
        total = tf.reduce_sum(tf.exp(shifted), axis=1)
        return shift + tf.math.log(tf.maximum(total, _TINY)), logits, mask

    def logits_gradient(logits, mask, lse, upstream):
        return upstream[:, None] * tf.exp(_selected(logits - lse[:, None], mask))

    if block_size is None:

        @tf.custom_gradient
        def full(anchors, contrasts):
            lse, logits, mask = row_logsumexp(anchors, anchor_keys, bound)

            def grad(upstream):
                d_logits = logits_gradient(logits, mask, lse, upstream)
                d_anchors = tf.matmul(d_logits, contrasts)
                return d_anchors, tf.matmul(d_logits, anchors, transpose_a=True)

            return lse, grad

        return full(scaled_anchors, contrasts)

    # Blocks of anchor rows run one after another in a while_loop; only the
    # per-row results survive the forward loop and the backward loop
    # recomputes each block's logits. Padding rows get id -1 and a zero
    # upstream gradient.
    num_anchors = tf.shape(scaled_anchors)[0]
    blocked_anchors = _split_into_blocks(scaled_anchors, block_size)
    blocked_keys = [_split_into_blocks(keys, block_size, -1) for keys in anchor_keys]
    blocked_bound = _split_into_blocks(bound, block_size)
    num_blocks = tf.shape(blocked_anchors)[0]

    def block_keys(i):
        return [keys[i] for keys in blocked_keys]

    @tf.custom_gradient
    def blockwise(anchors, contrasts):
        del anchors  # read block by block through blocked_anchors

        def forward_block(i, lse_blocks):
            lse, _, _ = row_logsumexp(blocked_anchors[i], block_keys(i), blocked_bound[i])
            return i + 1, lse_blocks.write(i, lse)

        lse_blocks = tf.TensorArray(tf.float32, size=num_blocks, element_shape=[block_size])
        _, lse_blocks = tf.while_loop(
            lambda i, _: i < num_blocks, forward_block, (0, lse_blocks), parallel_iterations=1
        )
        blocked_lse = lse_blocks.stack()

        def grad(upstream):
            blocked_upstream = _split_into_blocks(upstream, block_size)

            def backward_block(i, d_contrasts, d_anchor_blocks):
                logits = tf.matmul(blocked_anchors[i], contrasts, transpose_b=True)
                mask = in_set(block_keys(i))
                d_logits = logits_gradient(logits, mask, blocked_lse[i], blocked_upstream[i])
                d_anchor_blocks = d_anchor_blocks.write(i, tf.matmul(d_logits, contrasts))
                d_contrasts += tf.matmul(d_logits, blocked_anchors[i], transpose_a=True)
                return i + 1, d_contrasts, d_anchor_blocks

            d_anchor_blocks = tf.TensorArray(
                tf.float32, size=num_blocks, element_shape=blocked_anchors.shape[1:]
            )
            _, d_contrasts, d_anchor_blocks = tf.while_loop(
                lambda i, *_: i < num_blocks,
                backward_block,
                (0, tf.zeros_like(contrasts), d_anchor_blocks),
                parallel_iterations=1,
            )
            d_anchors = tf.reshape(d_anchor_blocks.stack(), [num_blocks * block_size, -1])
            return d_anchors[:num_anchors], d_contrasts

        return tf.reshape(blocked_lse, [-1])[:num_anchors], grad

    return blockwise(scaled_anchors, contrasts)


def _sum_of_softplus(logits, positives, log_negatives):
    """sum_p -w_ip log(e^s_ip / (e^s_ip + e^lse_neg_i)) = sum_p w_ip softplus(lse_neg_i - s_ip),
    w = 1 for a bool mask of positives."""
    terms = tf.nn.softplus(log_negatives[:, None] - logits)
    if positives.dtype != tf.bool:
        terms *= positives
        positives = positives > 0.0
    return tf.reduce_sum(tf.where(positives, terms, 0.0), axis=1)


def _logsumexp_of_log_sigmoid(logits, positives, log_negatives):
    """log sum_p w_ip e^s_ip / (e^s_ip + e^lse_neg_i)
    = logsumexp_p (log w_ip + log_sigmoid(s_ip - lse_neg_i)), w = 1 for a bool mask."""
    terms = tf.math.log_sigmoid(logits - log_negatives[:, None])
    return tf.reduce_logsumexp(_selected(terms, positives), axis=1)


def _reduce_over_contrasts(
    reduce_rows, scaled_anchors, contrasts, anchor_keys, in_set, row_values, *, block_size
):
    """reduce_rows(logits, in_set(keys), row_values) per anchor row, for any
    differentiable reduce_rows.

    The slow path for terms that need every (anchor, contrast) pair. With
    block_size, blocks run in a while_loop and the backward loop recomputes
    each block's logits and differentiates reduce_rows on that block alone.
    """
    if block_size is None:
        logits = tf.matmul(scaled_anchors, contrasts, transpose_b=True)
        return reduce_rows(logits, in_set(anchor_keys), row_values)

    num_anchors = tf.shape(scaled_anchors)[0]
    blocked_anchors = _split_into_blocks(scaled_anchors, block_size)
    blocked_keys = [_split_into_blocks(keys, block_size, -1) for keys in anchor_keys]
    num_blocks = tf.shape(blocked_anchors)[0]

    def block_mask(i):
        return in_set([keys[i] for keys in blocked_keys])

    @tf.custom_gradient
    def blockwise(anchors, contrasts, row_values):
        del anchors  # read block by block through blocked_anchors
        blocked_values = _split_into_blocks(row_values, block_size)

        def forward_block(i, result_blocks):
            logits = tf.matmul(blocked_anchors[i], contrasts, transpose_b=True)
            rows = reduce_rows(logits, block_mask(i), blocked_values[i])
            return i + 1, result_blocks.write(i, rows)

        result_blocks = tf.TensorArray(tf.float32, size=num_blocks, element_shape=[block_size])
        _, result_blocks = tf.while_loop(
            lambda i, _: i < num_blocks, forward_block, (0, result_blocks), parallel_iterations=1
        )

        def grad(upstream):
            blocked_upstream = _split_into_blocks(upstream, block_size)

            def backward_block(i, d_contrasts, d_anchor_blocks, d_value_blocks):
                logits = tf.matmul(blocked_anchors[i], contrasts, transpose_b=True)
                values = blocked_values[i]
                with tf.GradientTape() as tape:
                    tape.watch([logits, values])
                    rows = reduce_rows(logits, block_mask(i), values)
                d_logits, d_values = tape.gradient(
                    rows, [logits, values], output_gradients=blocked_upstream[i]
                )
                d_anchor_blocks = d_anchor_blocks.write(i, tf.matmul(d_logits, contrasts))
                d_contrasts += tf.matmul(d_logits, blocked_anchors[i], transpose_a=True)
                return i + 1, d_contrasts, d_anchor_blocks, d_value_blocks.write(i, d_values)

            d_anchor_blocks = tf.TensorArray(
                tf.float32, size=num_blocks, element_shape=blocked_anchors.shape[1:]
            )
            d_value_blocks = tf.TensorArray(tf.float32, size=num_blocks, element_shape=[block_size])
            _, d_contrasts, d_anchor_blocks, d_value_blocks = tf.while_loop(
                lambda i, *_: i < num_blocks,
                backward_block,
                (0, tf.zeros_like(contrasts), d_anchor_blocks, d_value_blocks),
                parallel_iterations=1,
            )
            d_anchors = tf.reshape(d_anchor_blocks.stack(), [num_blocks * block_size, -1])
            d_values = tf.reshape(d_value_blocks.stack(), [-1])
            return d_anchors[:num_anchors], d_contrasts, d_values[:num_anchors]

        return tf.reshape(result_blocks.stack(), [-1])[:num_anchors], grad

    return blockwise(scaled_anchors, contrasts, row_values)


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConLoss(keras.losses.Loss):
    """`supcon_loss` as a Keras loss: y_true = int labels [B] (or [B, 1]) or
    multi-hot [B, C] with C >= 2, y_pred = [B, V, D].

    Scaling across replicas: inside `strategy.run` with R =
    `num_replicas_in_sync` replicas, calling this loss returns
    `supcon_loss(...) / R`, as every Keras loss does through its reduction.
    Keras's train step takes gradients of that value, the optimizer sums them
    over replicas, and the loss tracker multiplies it back by R, so
    `model.compile(loss=SupConLoss(...))` + `model.fit` under any strategy
    gives the weights and the reported loss of one device holding the global
    batch. Outside a replica context (eagerly, on one device) the value is
    `supcon_loss` unscaled. A custom loop that calls `supcon_loss` itself
    divides by R before taking gradients.

    Keras's own reduction cannot do this: it skips the division by R for a
    loss that is already a scalar (keras/src/losses/loss.py, reduce_values),
    which would train on R times the gradient. So `__call__` is replaced and
    the `reduction` argument only accepts its default.

    `sample_weight` is rejected with a ValueError: each anchor's term is a
    softmax over the whole global batch, so weighting samples has no single
    meaning here. `fit`'s `class_weight` arrives as `sample_weight` too.

    Labels are cast to int32 directly, not through the loss's float dtype.
    The queue (queue_features, queue_labels) is per-step state and a mask has
    global columns, neither of which (y_true, y_pred) can carry, so this
    wrapper takes neither: a training loop with a momentum queue or a mask
    calls `supcon_loss` itself.
    """

    def __init__(
        self,
        temperature=0.1,
        base_temperature=None,
        contrast_mode="all",
        variant="out",
        block_size=None,
        denominator_mode="all",
        positives_cap=None,
        name="supcon_loss",
        **kwargs,
    ):
        reduction = kwargs.get("reduction", "sum_over_batch_size")
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"SupConLoss takes no reduction: it is already the mean over anchors; got "
                f"reduction={reduction!r}. Leave reduction at its default."
            )
        super().__init__(name=name, **kwargs)
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode
        self.variant = variant
        self.block_size = block_size
        self.denominator_mode = denominator_mode
        self.positives_cap = positives_cap

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "SupConLoss does not accept sample_weight (from model.fit's sample_weight or "
                "class_weight, or a direct call): every anchor's term is a softmax over the "
                "whole batch, so per-sample weights have no defined meaning. Drop "
                "sample_weight/class_weight; to rebalance classes, resample the dataset."
            )
        with tf.name_scope(self.name):
            loss = self.call(y_true, tf.cast(y_pred, self.dtype))
            # The same replica context supcon_loss gathers over: divide exactly
            # when it returned a per-replica loss of the global batch.
            loss = loss / cross_replica.num_replicas()
            return loss

    def call(self, y_true, y_pred):
        """The unscaled `supcon_loss` of this replica (no division by replicas)."""
        y_true = tf.convert_to_tensor(y_true)
        if y_true.shape.rank == 2 and y_true.shape[1] != 1:
            labels = y_true  # multi-hot
        else:
            labels = tf.reshape(y_true, [-1])
        labels = tf.cast(labels, tf.int32)
        return supcon_loss(
            y_pred,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            block_size=self.block_size,
            denominator_mode=self.denominator_mode,
            positives_cap=self.positives_cap,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "base_temperature": self.base_temperature,
            "contrast_mode": self.contrast_mode,
            "variant": self.variant,
            "block_size": self.block_size,
            "denominator_mode": self.denominator_mode,
            "positives_cap": self.positives_cap,
        }
