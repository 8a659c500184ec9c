"""Supervised contrastive loss (Khosla et al. 2020), exact across replicas.

`supcon_loss` computes L^sup_out (Eq. 2) or L^sup_in (Eq. 3) of the paper, or
SimCLR's NT-Xent when no labels are given. Views are flattened sample-major:
row b * V + v of the [B * V, D] matrix is view v of sample b.

Inside `strategy.run` with several replicas the local rows are the anchors and
the all-gathered global batch is the set of contrasts. Each replica returns the
mean over its own anchors; the gradient of the gathered contrasts flows back
through `all_gather` to the replica owning each row. To train on exactly the
single-device loss of the global batch, divide the per-replica loss by
`num_replicas_in_sync` before taking gradients and sum the gradients across
replicas (what Keras optimizers and `strategy.reduce(SUM, ...)` do): the mean
of the per-replica losses is then the global loss and the summed gradient is
its gradient.

Only the softmax denominator needs the anchors x contrasts matrix. The
positives' term of L_out is z_i . (sum of z_i's class - z_i), computed from
per-class sums of the contrasts in O(N * D). The log-sum-exp over contrasts
has a hand-written gradient (`tf.custom_gradient`): d lse_i / d logit_ia is
the row's softmax, so the backward pass is one elementwise pass and two
matmuls, three N x N x D matmuls in all. With `block_size`, anchors are
processed in blocks inside a `tf.while_loop` whose backward pass recomputes
each block's logits, so peak memory is O(block_size x contrasts) instead of
O(anchors x contrasts).
"""

import keras
import tensorflow as tf

_VARIANTS = ("out", "in")
_CONTRAST_MODES = ("all", "one")
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
):
    """Supervised contrastive loss of L2-normalized multi-view features.

    Args:
      features: float32 or bfloat16 [B, V, D], V >= 1 views per sample, already
        L2-normalized by the caller. Computed in float32.
      labels: int [B] class ids, or None for SimCLR / NT-Xent (the only
        positives of an anchor are the other views of its own sample).
      temperature: tau > 0.
      base_temperature: None gives the paper's formula exactly; a number
        multiplies the loss by temperature / base_temperature, as the PyTorch
        reference does (so with base_temperature == temperature both agree).
      contrast_mode: "all" makes every view an anchor; "one" only view 0, with
        every view still a contrast.
      variant: "out" for L^sup_out (Eq. 2, 1/|P(i)| outside the log), "in" for
        L^sup_in (Eq. 3, inside the log).
      block_size: None builds the whole anchors x contrasts matrix; a positive
        int processes that many anchor rows at a time and recomputes them in
        the backward pass (same value and gradient, O(block_size x contrasts)
        memory).

    Returns:
      Scalar float32: the mean over this replica's anchors that have at least
      one positive (only V = 1 can leave an anchor without one); 0 with zero
      gradient when no anchor has a positive. With V = 1 under several
      replicas the denominator is the global count of such anchors divided by
      the replica count, so the mean of the per-replica losses is still
      exactly the global-batch loss.

    Raises:
      ValueError: for features not of rank 3, labels not of shape [B] or not
        integers, temperature or base_temperature <= 0, an unknown
        contrast_mode or variant, or a block_size that is not a positive int.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 3:
        raise ValueError(
            f"features must have rank 3 [batch, views, dim]; got shape {features.shape}. "
            "Reshape the projections to [B, V, D] (views on their own axis)."
        )
    if not features.dtype.is_floating:
        raise ValueError(f"features must be float32 or bfloat16; got {features.dtype.name}.")
    if labels is not None:
        labels = tf.convert_to_tensor(labels)
        if not labels.dtype.is_integer:
            raise ValueError(
                f"labels must be integer class ids; got dtype {labels.dtype.name}. "
                "Cast them to int32."
            )
        if labels.shape.rank != 1 or not labels.shape[:1].is_compatible_with(features.shape[:1]):
            raise ValueError(
                f"labels must have shape [B] = [{features.shape[0]}] to match features "
                f"{features.shape}; got {labels.shape}."
            )
    temperature = _positive_number("temperature", temperature)
    if base_temperature is not None:
        base_temperature = _positive_number("base_temperature", base_temperature)
    if contrast_mode not in _CONTRAST_MODES:
        raise ValueError(f"contrast_mode must be one of {_CONTRAST_MODES}; got {contrast_mode!r}.")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}; got {variant!r}.")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0
    ):
        raise ValueError(f"block_size must be None or a positive int; got {block_size!r}.")

    features = tf.cast(features, tf.float32)
    batch = tf.shape(features)[0]
    num_views = features.shape[1] if features.shape[1] is not None else tf.shape(features)[1]
    dim = tf.shape(features)[2]
    if labels is not None:
        labels = tf.cast(labels, tf.int32)

    # The gather sits here, outside any nested tf.function, because XLA and
    # MirroredStrategy cannot compile a nested function holding it.
    replica_context = tf.distribute.get_replica_context()
    num_replicas = replica_context.num_replicas_in_sync if replica_context else 1
    if num_replicas > 1:
        all_features = replica_context.all_gather(features, axis=0)
        all_labels = replica_context.all_gather(labels, axis=0) if labels is not None else None
        first_sample = tf.cast(replica_context.replica_id_in_sync_group, tf.int32) * batch
    else:
        all_features, all_labels, first_sample = features, labels, tf.constant(0, tf.int32)
    global_batch = tf.shape(all_features)[0]

    # SimCLR: a sample's identity is its label, so only its own views are positives.
    if all_labels is None:
        all_labels = tf.range(global_batch)
        labels = first_sample + tf.range(batch)

    contrasts = tf.reshape(all_features, [-1, dim])
    contrast_labels = tf.repeat(all_labels, num_views)
    if contrast_mode == "all":
        anchors = tf.reshape(features, [-1, dim])
        anchor_labels = tf.repeat(labels, num_views)
        anchor_ids = first_sample * num_views + tf.range(batch * num_views)
    else:
        anchors = features[:, 0]
        anchor_labels = labels
        anchor_ids = (first_sample + tf.range(batch)) * num_views

    # Positives through class sums (O(N * D)): sum_{p in P(i)} z_i . z_p is
    # z_i . (sum of z_i's class - z_i), so only the softmax denominator needs
    # the anchors x contrasts matrix.
    scaled_anchors = anchors * (1.0 / temperature)
    contrast_class = _class_index(contrast_labels)
    anchor_class = tf.gather(contrast_class, anchor_ids)
    class_count = tf.math.unsorted_segment_sum(
        tf.ones_like(contrast_labels, tf.float32), contrast_class, tf.size(contrast_labels)
    )
    num_positives = tf.gather(class_count, anchor_class) - 1.0  # the anchor is its own contrast
    has_positive = num_positives > 0
    safe_num_positives = tf.maximum(num_positives, 1.0)

    log_denominator = _logsumexp_over_contrasts(
        scaled_anchors, contrasts, anchor_ids, anchor_labels, contrast_labels,
        positives_only=False, block_size=block_size,
    )
    if variant == "out":
        class_sums = tf.math.unsorted_segment_sum(
            contrasts, contrast_class, tf.size(contrast_labels)
        )
        positive_sums = tf.gather(class_sums, anchor_class) - anchors
        mean_positive_logit = tf.reduce_sum(scaled_anchors * positive_sums, 1) / safe_num_positives
        per_anchor_loss = log_denominator - mean_positive_logit
    else:
        log_numerator = _logsumexp_over_contrasts(
            scaled_anchors, contrasts, anchor_ids, anchor_labels, contrast_labels,
            positives_only=True, block_size=block_size,
        )
        per_anchor_loss = log_denominator - log_numerator + tf.math.log(safe_num_positives)
    per_anchor_loss = tf.where(has_positive, per_anchor_loss, 0.0)

    num_anchors = tf.reduce_sum(tf.cast(has_positive, tf.float32))
    if num_replicas > 1 and (num_views is None or not isinstance(num_views, int) or num_views == 1):
        # With one view, replicas can differ in how many anchors have a
        # positive; normalizing by the global count keeps the mean of the
        # per-replica losses equal to the global loss.
        global_anchors = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, num_anchors)
        num_anchors = global_anchors / num_replicas
    loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor_loss), tf.stop_gradient(num_anchors))
    if base_temperature is not None:
        loss *= temperature / base_temperature
    return loss


def _positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0; got {value!r}.")
    return float(value)


def _class_index(labels):
    """Dense class index in [0, len(labels)) per element, via a sort (no N x N compare)."""
    order = tf.argsort(labels)
    sorted_labels = tf.gather(labels, order)
    starts = tf.concat([[1], tf.cast(sorted_labels[1:] != sorted_labels[:-1], tf.int32)], 0)
    return tf.scatter_nd(order[:, None], tf.cumsum(starts) - 1, tf.shape(labels))


def _logsumexp_over_contrasts(
    scaled_anchors, contrasts, anchor_ids, anchor_labels, contrast_labels, *, positives_only,
    block_size,
):
    """log sum_a exp(s_ia) per anchor row over A(i) (or over P(i) if positives_only),
    s_ia = scaled_anchor_i . contrast_a, with a hand-written gradient.

    d lse_i / d s_ia is the softmax of the row, so the backward pass is one
    elementwise pass and two matmuls. The shift that keeps exp() in range is
    the Cauchy-Schwarz bound |a_i| max_a |c_a| >= s_ia when that bound is
    small enough that nothing can underflow (always for unit features and
    tau >= 0.025); otherwise the exact row max, which costs one more pass.
    """
    contrast_ids = tf.range(tf.shape(contrasts)[0])
    bound = tf.stop_gradient(
        tf.norm(scaled_anchors, axis=1) * tf.reduce_max(tf.norm(contrasts, axis=1))
    )
    bound_is_safe = tf.reduce_max(bound) <= _MAX_BOUND_SHIFT

    def row_mask(ids, labels):
        mask = ids[:, None] != contrast_ids[None, :]
        if positives_only:
            mask = tf.logical_and(mask, labels[:, None] == contrast_labels[None, :])
        return mask

    def row_logsumexp(anchor_rows, ids, labels, row_bound):
        logits = tf.matmul(anchor_rows, contrasts, transpose_b=True)
        mask = row_mask(ids, labels)

        def exact_max():
            row_max = tf.reduce_max(tf.where(mask, logits, _MASKED_LOGIT), axis=1)
            return tf.where(row_max > _MASKED_LOGIT, row_max, 0.0)  # empty rows: any finite shift

        shift = tf.cond(bound_is_safe, lambda: row_bound, exact_max)
        shifted = tf.where(mask, logits - shift[:, None], _MASKED_LOGIT)
        total = tf.reduce_sum(tf.exp(shifted), axis=1)
        return shift + tf.math.log(tf.maximum(total, _TINY)), logits, mask

    def logits_gradient(logits, mask, lse, upstream):
        return upstream[:, None] * tf.exp(tf.where(mask, logits - lse[:, None], _MASKED_LOGIT))

    if block_size is None:

        @tf.custom_gradient
        def full(anchors, contrasts):
            lse, logits, mask = row_logsumexp(anchors, anchor_ids, anchor_labels, bound)

            def grad(upstream):
                d_logits = logits_gradient(logits, mask, lse, upstream)
                d_anchors = tf.matmul(d_logits, contrasts)
                return d_anchors, tf.matmul(d_logits, anchors, transpose_a=True)

            return lse, grad

        return full(scaled_anchors, contrasts)

    # Blocks of anchor rows run one after another in a while_loop; only the
    # per-row results survive the forward loop and the backward loop
    # recomputes each block's logits. Rows are padded to whole blocks (static
    # shapes); padding rows get id -1 and a zero upstream gradient.
    num_anchors = tf.shape(scaled_anchors)[0]
    num_blocks = (num_anchors + block_size - 1) // block_size
    padding = num_blocks * block_size - num_anchors

    def blocked(rows, value=0):
        paddings = [[0, padding]] + [[0, 0]] * (rows.shape.rank - 1)
        padded = tf.pad(rows, paddings, constant_values=value)
        return tf.reshape(padded, tf.concat([[num_blocks, block_size], tf.shape(rows)[1:]], 0))

    blocked_anchors = blocked(scaled_anchors)
    blocked_ids = blocked(anchor_ids, -1)
    blocked_labels = blocked(anchor_labels)
    blocked_bound = blocked(bound)

    @tf.custom_gradient
    def blockwise(anchors, contrasts):
        del anchors  # read block by block through blocked_anchors

        def forward_block(i, lse_blocks):
            lse, _, _ = row_logsumexp(
                blocked_anchors[i], blocked_ids[i], blocked_labels[i], blocked_bound[i]
            )
            return i + 1, lse_blocks.write(i, lse)

        lse_blocks = tf.TensorArray(tf.float32, size=num_blocks, element_shape=[block_size])
        _, lse_blocks = tf.while_loop(
            lambda i, _: i < num_blocks, forward_block, (0, lse_blocks), parallel_iterations=1
        )
        blocked_lse = lse_blocks.stack()

        def grad(upstream):
            blocked_upstream = blocked(upstream)

            def backward_block(i, d_contrasts, d_anchor_blocks):
                logits = tf.matmul(blocked_anchors[i], contrasts, transpose_b=True)
                mask = row_mask(blocked_ids[i], blocked_labels[i])
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


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConLoss(keras.losses.Loss):
    """`supcon_loss` as a Keras loss: y_true = int labels [B], y_pred = [B, V, D].

    Keras converts y_true to the loss dtype before `call`; the labels are cast
    back to int32 here (class ids are exact in float32 below 2**24). The result
    is already a scalar mean, so sample weights do not apply.
    """

    def __init__(
        self,
        temperature=0.1,
        base_temperature=None,
        contrast_mode="all",
        variant="out",
        block_size=None,
        name="supcon_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode
        self.variant = variant
        self.block_size = block_size

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return supcon_loss(
            y_pred,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            block_size=self.block_size,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "base_temperature": self.base_temperature,
            "contrast_mode": self.contrast_mode,
            "variant": self.variant,
            "block_size": self.block_size,
        }
