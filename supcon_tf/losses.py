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

supcon_loss runs these steps, each a function: LossOptions.checked and the
checks of the inputs; the cross-replica gather (in supcon_loss's own body);
_anchors_and_contrasts; _class_positives (and _capped) or _weighted_positives,
which build the one _PositiveSets object; _per_anchor_loss; _mean_over_anchors.
check_config applies LossOptions' checks to a config file's loss section.

Where each equation lives:

  Eq. 2, L_out     _per_anchor_loss: the log-denominator minus the mean positive
                   logit z_i / tau . sum_p z_p / |P(i)|, from positive_sums
                   (_class_positives, _capped, _weighted_positives)
  Eq. 3, L_in      _per_anchor_loss: log-denominator - log-numerator + log |P(i)|,
                   the numerator a _logsumexp_over the positives
  denominators     "all" (the paper's A(i)) and "only_negatives": _logsumexp_over
                   the set that _PositiveSets.select names; "one_positive":
                   _sum_of_softplus (L_out) or _logsumexp_of_log_sigmoid (L_in)
                   over the pairs, in _reduce_over_contrasts
  weighted forms   w_ia: _weighted_positives (multi_hot_mask); log w_ia added to
                   the logits: _selected; w_ip * -log p_ip: _sum_of_softplus
  the mean         _mean_over_anchors, exact across replicas
  block_size       _blockwise, the loop under both matrix passes
"""

import dataclasses
import functools
from typing import NamedTuple, Optional

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
# Every integer key (_AnchorKeys) of the rows that pad the last block of
# anchors: no contrast's id and no class. Their results are dropped and get a
# zero upstream gradient.
_PADDING_KEY = -1
# supcon_loss's options that a config's loss section carries, in checking order.
_OPTION_FIELDS = ("temperature", "base_temperature", "contrast_mode", "variant", "block_size",
                  "denominator_mode", "positives_cap")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """supcon_loss's keyword options, checked; see supcon_loss for their meaning."""

    temperature: float
    base_temperature: Optional[float]
    contrast_mode: str
    variant: str
    block_size: Optional[int]
    denominator_mode: str
    positives_cap: Optional[int]

    @classmethod
    def checked(cls, num_views, **options):
        """The options, or a ValueError naming the first bad one. num_views: V,
        None when it is not known at trace time."""
        if num_views is None:
            views_name = "the number of views, which must be known when the loss is traced"
        else:
            views_name = f"the number of views V = {num_views}"
        problem = _first_problem(options, num_views, views_name)
        if problem is not None:
            field, requirement, _ = problem
            raise ValueError(f"{field} {requirement}; got {options[field]!r}.")
        base = options["base_temperature"]
        return cls(**dict(options, temperature=float(options["temperature"]),
                          base_temperature=None if base is None else float(base)))


def check_config(loss_config, *, num_views):
    """Raises ValueError if supcon_loss would refuse the options of a config.

    loss_config: the config's loss section (a ConfigDict or dict holding the
    fields of _OPTION_FIELDS); num_views: config.data.num_views. The message
    is one line naming config.loss.<field>, its value and the fix.
    """
    options = {field: loss_config[field] for field in _OPTION_FIELDS}
    problem = _first_problem(options, num_views, f"config.data.num_views={num_views}")
    if problem is not None:
        field, requirement, fix = problem
        raise ValueError(f"config.loss.{field}={options[field]!r} {requirement}; {fix}")


def _first_problem(options, num_views, views_name):
    """(field, requirement, fix for a config) of the first option supcon_loss
    refuses, or None. views_name names V in the requirement on positives_cap."""
    cap = options["positives_cap"]
    cap_is_int = cap is None or _is_int(cap, minimum=0)
    whole_samples = cap is None or not cap_is_int or (bool(num_views) and cap % num_views == 0)
    rules = (
        ("temperature", _is_positive_number(options["temperature"]), "must be a number > 0",
         "the paper uses 0.1"),
        ("base_temperature", options["base_temperature"] is None
         or _is_positive_number(options["base_temperature"]), "must be > 0 or None",
         "None: no scaling; 1.0 scales the loss by T as the official TF code, 0.07 by T/0.07 "
         "as SupContrast"),
        ("contrast_mode", options["contrast_mode"] in CONTRAST_MODES,
         f"is unknown, use one of {CONTRAST_MODES}",
         "'all' makes every view an anchor, 'one' view 0"),
        ("variant", options["variant"] in VARIANTS, f"is unknown, use one of {VARIANTS}",
         "'out' is L^sup_out (Eq. 2), 'in' L^sup_in (Eq. 3)"),
        ("block_size", options["block_size"] is None or _is_int(options["block_size"], minimum=1),
         "must be None or a positive int",
         "None builds the whole anchors x contrasts matrix, an int that many anchors at a time"),
        ("denominator_mode", options["denominator_mode"] in DENOMINATOR_MODES,
         f"is unknown, use one of {DENOMINATOR_MODES}", "'all' is the paper's"),
        ("positives_cap", cap_is_int, "must be None (no cap, the official -1) or an int >= 0",
         "None keeps every positive"),
        ("positives_cap", whole_samples,
         f"must be a multiple of {views_name} (it keeps whole samples)",
         "set such a multiple, or None for no cap"),
    )
    for field, valid, requirement, fix in rules:
        if not valid:
            return field, requirement, fix
    return None


def _is_positive_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _is_int(value, *, minimum):
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


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
    features = _checked_features(features)
    options = LossOptions.checked(
        features.shape[1], temperature=temperature, base_temperature=base_temperature,
        contrast_mode=contrast_mode, variant=variant, block_size=block_size,
        denominator_mode=denominator_mode, positives_cap=positives_cap,
    )
    labels = _checked_labels(features, labels, options.positives_cap)
    queue_features = _checked_queue(features, queue_features, options.positives_cap)
    queue_labels = _checked_queue_labels(labels, mask, queue_features, queue_labels)
    mask = _checked_mask(features, labels, mask, queue_features, options.positives_cap)
    features = tf.cast(features, tf.float32)
    if labels is not None:
        labels = tf.cast(labels, tf.int32)
    if queue_labels is not None:
        queue_labels = tf.cast(queue_labels, tf.int32)

    # The gather sits here, outside any nested tf.function, because XLA and
    # MirroredStrategy cannot compile a nested function holding it.
    all_features = cross_replica.gather_rows(features)
    all_labels = cross_replica.gather_rows(labels) if labels is not None else None

    views = _anchors_and_contrasts(features, all_features, queue_features, options.contrast_mode)
    need_sums = options.variant == "out" and options.denominator_mode != "one_positive"
    if mask is not None or (labels is not None and labels.shape.rank == 2):
        positives = _weighted_positives(views, labels, all_labels, mask, queue_labels, need_sums)
    else:
        positives = _class_positives(
            views, all_labels, queue_labels, options.positives_cap, need_sums
        )
    return _mean_over_anchors(_per_anchor_loss(views, positives, options), positives, options)


@dataclasses.dataclass(frozen=True)
class _Views:
    """The views of the global batch: this replica's anchors, and the contrasts.

    Fields:
      anchors: [A, D] float32, this replica's anchor views: all of them (A = B * V)
        or view 0 of each sample (A = B).
      anchor_ids: [A] int32, each anchor's row among the contrasts.
      anchor_samples: [A] int32, each anchor's sample in the global batch.
      contrasts: [N, D] float32, the global batch's views sample-major (row
        s * V + v is view v of sample s), then the queue's entries.
      contrast_ids: [N] int32, 0 .. N - 1.
      sample_sums: [S, D] float32, per sample the sum of its contrasts: the
        global batch's samples, then the queue's entries (one view each).
      batch: B, this replica's samples.
      first_sample: the global index of this replica's first sample.
      global_batch: B_global, the samples of every replica.
      num_views: V, a Python int when known at trace time.
      queue_size: Q, or None without a queue.
    """

    anchors: tf.Tensor
    anchor_ids: tf.Tensor
    anchor_samples: tf.Tensor
    contrasts: tf.Tensor
    contrast_ids: tf.Tensor
    sample_sums: tf.Tensor
    batch: tf.Tensor
    first_sample: tf.Tensor
    global_batch: tf.Tensor
    num_views: object
    queue_size: Optional[tf.Tensor]


def _anchors_and_contrasts(features, all_features, queue_features, contrast_mode):
    """_Views: this replica's [B, V, D] features as anchors among the gathered
    [B_global, V, D] ones, followed by the queue's entries as one-view samples
    that are never anchors."""
    batch = tf.shape(features)[0]
    num_views = features.shape[1] if features.shape[1] is not None else tf.shape(features)[1]
    dim = tf.shape(features)[2]
    first_sample = cross_replica.replica_id() * batch
    if contrast_mode == "all":
        anchors = tf.reshape(features, [-1, dim])
        anchor_ids = first_sample * num_views + tf.range(batch * num_views)
    else:
        anchors = features[:, 0]
        anchor_ids = (first_sample + tf.range(batch)) * num_views
    contrasts = tf.reshape(all_features, [-1, dim])
    sample_sums = tf.reduce_sum(all_features, 1)
    queue_size = None
    if queue_features is not None:
        queue = tf.stop_gradient(tf.cast(queue_features, tf.float32))  # keys of earlier steps
        contrasts = tf.concat([contrasts, queue], 0)
        sample_sums = tf.concat([sample_sums, queue], 0)
        queue_size = tf.shape(queue)[0]
    return _Views(
        anchors=anchors,
        anchor_ids=anchor_ids,
        anchor_samples=anchor_ids // num_views,
        contrasts=contrasts,
        contrast_ids=tf.range(tf.shape(contrasts)[0]),
        sample_sums=sample_sums,
        batch=batch,
        first_sample=first_sample,
        global_batch=tf.shape(all_features)[0],
        num_views=num_views,
        queue_size=queue_size,
    )


class _AnchorKeys(NamedTuple):
    """Per anchor row, what its row of each selection depends on; the fields
    that the form of the positive sets does not use are None."""

    ids: tf.Tensor  # [A] its row among the contrasts: an anchor is not its own contrast
    classes: Optional[tf.Tensor] = None  # [A] class ids: its dense class index
    rank_limits: Optional[tf.Tensor] = None  # [A] capped: keeps class ranks below this
    weight_rows: Optional[tf.Tensor] = None  # [A] weighted: its row of weights (local sample)


@dataclasses.dataclass(frozen=True)
class _PositiveSets:
    """P(i) of every anchor i, from class ids, capped class ids or weights.

    Class ids: the positives are the anchor's class's other contrasts; capped:
    only those of its own sample and of the samples of its class ranked below
    its rank limit (rank: in the order of the global batch); weighted: contrast
    a weighs weights[anchor's local sample, a's sample] as a positive.

    Fields:
      views: the _Views whose anchors these are the positives of.
      keys: _AnchorKeys of the anchors.
      num_positives: [A] float32, |P(i)|, or sum_p w_ip when weighted.
      num_negatives: [A] float32, how many contrasts are negatives of i.
      positive_sums: [A, D] float32, sum_p w_ip z_p (w = 1 unless weighted);
        None when the loss does not need it.
      contrast_class: [N] int32, each contrast's dense class (class ids only).
      contrast_rank: [N] int32, each contrast's rank in its class (capped only).
      weights: [B, S] float32, sample s as a positive of local sample b, 1 for
        b itself (weighted only).
    """

    views: _Views
    keys: _AnchorKeys
    num_positives: tf.Tensor
    num_negatives: tf.Tensor
    positive_sums: Optional[tf.Tensor]
    contrast_class: Optional[tf.Tensor] = None
    contrast_rank: Optional[tf.Tensor] = None
    weights: Optional[tf.Tensor] = None

    @property
    def weighted(self):
        return self.weights is not None

    def select(self, kind, keys):
        """[rows, N]: which contrasts are in a set of the anchor rows of keys.

        kind: "positives" P(i), "negatives", or "denominator" the paper's A(i):
        every contrast but the anchor itself (and, capped, the capped-out ones).
        A bool mask, except the weights w_ia (0 off P(i)) for weighted positives.
        """
        not_self = keys.ids[:, None] != self.views.contrast_ids
        if self.weighted:
            return self._weighted_selection(kind, keys, not_self)
        capped = self.contrast_rank is not None
        if kind == "denominator" and not capped:
            return not_self
        other_class = keys.classes[:, None] != self.contrast_class
        if kind == "negatives":
            return other_class
        positive = tf.logical_and(not_self, tf.logical_not(other_class))
        if capped:
            num_views = self.views.num_views
            own_sample = keys.ids[:, None] // num_views == self.views.contrast_ids // num_views
            kept = tf.logical_or(own_sample, self.contrast_rank < keys.rank_limits[:, None])
            positive = tf.logical_and(positive, kept)
        return positive if kind == "positives" else tf.logical_or(positive, other_class)

    def _weighted_selection(self, kind, keys, not_self):
        if kind == "denominator":
            return not_self
        # Padding rows (_PADDING_KEY) read row 0.
        sample_weights = tf.gather(self.weights, tf.maximum(keys.weight_rows, 0))
        global_batch = self.views.global_batch
        row_weights = tf.concat(
            [tf.repeat(sample_weights[:, :global_batch], self.views.num_views, axis=1),
             sample_weights[:, global_batch:]],
            1,
        )
        if kind == "negatives":
            return tf.logical_and(not_self, row_weights <= 0.0)
        return tf.where(not_self, row_weights, 0.0)


def _class_positives(views, all_labels, queue_labels, positives_cap, need_sums):
    """_PositiveSets from the class ids of the global batch and the queue.

    With labels None (SimCLR) a sample's identity is its label, so only its own
    views are positives, and the queue's entries share a label no batch sample
    has. need_sums: whether the loss needs positive_sums.
    """
    num_views = tf.cast(views.num_views, tf.float32)
    if all_labels is None:
        all_labels = tf.range(views.global_batch)
        if views.queue_size is not None:
            queue_labels = tf.fill([views.queue_size], views.global_batch)
    sample_labels = all_labels
    contrasts_per_sample = tf.fill([views.global_batch], num_views)
    if views.queue_size is not None:
        sample_labels = tf.concat([all_labels, queue_labels], 0)
        contrasts_per_sample = tf.concat(
            [contrasts_per_sample, tf.ones_like(queue_labels, tf.float32)], 0
        )
    # Classes and ranks are per sample; every view shares its sample's.
    num_samples = tf.size(sample_labels)
    sample_class, sample_rank = _class_index_and_rank(sample_labels)
    class_contrasts = tf.math.unsorted_segment_sum(contrasts_per_sample, sample_class, num_samples)
    anchor_class = tf.gather(sample_class, views.anchor_samples)
    anchor_class_contrasts = tf.gather(class_contrasts, anchor_class)
    positives = _PositiveSets(
        views=views,
        keys=_AnchorKeys(views.anchor_ids, classes=anchor_class),
        num_positives=anchor_class_contrasts - 1.0,  # the anchor is its own contrast
        num_negatives=tf.cast(tf.shape(views.contrasts)[0], tf.float32) - anchor_class_contrasts,
        positive_sums=None,
        contrast_class=tf.concat(
            [tf.repeat(sample_class[: views.global_batch], views.num_views),
             sample_class[views.global_batch:]],
            0,
        ),
    )
    if positives_cap is not None:
        return _capped(positives, sample_class, sample_rank, positives_cap, need_sums)
    if not need_sums:
        return positives
    # sum_{p in P(i)} z_p through per-class sums: O(N x D).
    class_sums = tf.math.unsorted_segment_sum(views.sample_sums, sample_class, num_samples)
    return dataclasses.replace(
        positives, positive_sums=tf.gather(class_sums, anchor_class) - views.anchors
    )


def _capped(positives, sample_class, sample_rank, positives_cap, need_sums):
    """Class-id positives limited to the anchor's own sample and the first
    positives_cap / V other samples of its class in the order of the global
    batch, as the official top_k over a 0/1 mask keeps them."""
    views = positives.views
    anchor_class = positives.keys.classes
    kept_samples = positives_cap // views.num_views
    anchor_rank = tf.gather(sample_rank, views.anchor_samples)
    # An anchor's own sample is never counted against the cap: among the first
    # kept_samples of its class, it frees its place for the next one.
    rank_limits = kept_samples + tf.cast(anchor_rank < kept_samples, tf.int32)
    class_size = tf.math.unsorted_segment_sum(
        tf.ones_like(sample_class, tf.float32), sample_class, tf.size(sample_class)
    )
    kept_others = tf.minimum(tf.gather(class_size, anchor_class) - 1.0, float(kept_samples))
    positive_sums = None
    if need_sums:

        def class_sums_of(selected):
            selected_sums = views.sample_sums * tf.cast(selected, tf.float32)[:, None]
            return tf.math.unsorted_segment_sum(selected_sums, sample_class, views.global_batch)

        kept_sums = class_sums_of(sample_rank < kept_samples)
        next_sums = class_sums_of(sample_rank == kept_samples)
        # The anchor's own sample, or for one among the kept, the next one in its place.
        own_or_next = tf.where(
            (anchor_rank < kept_samples)[:, None],
            tf.gather(next_sums, anchor_class),
            tf.gather(views.sample_sums, views.anchor_samples),
        )
        positive_sums = tf.gather(kept_sums, anchor_class) + own_or_next - views.anchors
    return dataclasses.replace(
        positives,
        keys=positives.keys._replace(rank_limits=rank_limits),
        num_positives=tf.cast(views.num_views, tf.float32) * (kept_others + 1.0) - 1.0,
        positive_sums=positive_sums,
        contrast_rank=tf.repeat(sample_rank, views.num_views),
    )


def _weighted_positives(views, labels, all_labels, mask, queue_labels, need_sums):
    """_PositiveSets of the weights of a [B, B_global (+ Q)] mask, or of the
    Jaccard index of multi-hot labels (multi_hot_mask) over the global batch
    and the queue. need_sums: whether the loss needs positive_sums."""
    if mask is None:
        columns = all_labels
        if queue_labels is not None:
            columns = tf.concat([all_labels, queue_labels], 0)
        weights = multi_hot_mask(labels, columns)
    else:
        weights = tf.cast(mask, tf.float32)
        if views.queue_size is not None:  # a [B, B_global] mask: queue entries are negatives
            missing = tf.shape(views.sample_sums)[0] - tf.shape(weights)[1]
            weights = tf.pad(weights, [[0, 0], [0, missing]])
    # The anchor's own sample weighs 1 whatever the mask says; the mask gets no gradient.
    own = tf.one_hot(views.first_sample + tf.range(views.batch), tf.shape(weights)[1])
    others = tf.stop_gradient(weights) * (1.0 - own)
    weights = others + own
    weight_rows = views.anchor_samples - views.first_sample
    num_views = tf.cast(views.num_views, tf.float32)

    def per_anchor(columns):
        """Total of a [B, samples] row over what an anchor sees: V views of
        each batch sample and one entry per queue sample."""
        in_batch = tf.reduce_sum(columns[:, : views.global_batch], 1)
        totals = num_views * in_batch + tf.reduce_sum(columns[:, views.global_batch:], 1)
        return tf.gather(totals, weight_rows)

    positive_sums = None
    if need_sums:  # sum_a w_ia z_a through per-sample sums: O(B x samples x D)
        sums = tf.matmul(weights, views.sample_sums)
        positive_sums = tf.gather(sums, weight_rows) - views.anchors
    num_contrasts = tf.cast(tf.shape(views.contrasts)[0], tf.float32)
    return _PositiveSets(
        views=views,
        keys=_AnchorKeys(views.anchor_ids, weight_rows=weight_rows),
        num_positives=per_anchor(others) + num_views - 1.0,  # and its own other views
        num_negatives=num_contrasts - num_views - per_anchor(tf.cast(others > 0.0, tf.float32)),
        positive_sums=positive_sums,
        weights=weights,
    )


def _per_anchor_loss(views, positives, options):
    """[A] each anchor's loss: Eq. 2 (variant "out") or Eq. 3 ("in"), weighted
    forms included, with the denominator of options.denominator_mode."""
    scaled_anchors = views.anchors * (1.0 / options.temperature)
    safe_num_positives = tf.maximum(positives.num_positives, 1.0)

    def logsumexp_over(kind):
        return _logsumexp_over(
            functools.partial(positives.select, kind), scaled_anchors, views.contrasts,
            positives.keys, block_size=options.block_size,
        )

    if options.denominator_mode == "one_positive":
        # Each positive has its own denominator, so this takes a pass over the
        # positive pairs: -log p_ip = softplus(lse_neg_i - s_ip).
        log_negatives = logsumexp_over("negatives")
        reduce_rows = _sum_of_softplus if options.variant == "out" else _logsumexp_of_log_sigmoid
        pair_reduction = _reduce_over_contrasts(
            reduce_rows, log_negatives, functools.partial(positives.select, "positives"),
            scaled_anchors, views.contrasts, positives.keys, block_size=options.block_size,
        )
        if options.variant == "out":
            return pair_reduction / safe_num_positives
        return tf.math.log(safe_num_positives) - pair_reduction
    denominator = "negatives" if options.denominator_mode == "only_negatives" else "denominator"
    log_denominator = logsumexp_over(denominator)
    if options.variant == "out":
        # sum_{p in P(i)} w_ip s_ip is z_i / tau . (sum_p w_ip z_p), so only the
        # denominator needs the anchors x contrasts matrix.
        mean_positive_logit = (
            tf.reduce_sum(scaled_anchors * positives.positive_sums, 1) / safe_num_positives
        )
        return log_denominator - mean_positive_logit
    log_numerator = logsumexp_over("positives")
    return log_denominator - log_numerator + tf.math.log(safe_num_positives)


def _mean_over_anchors(per_anchor_loss, positives, options):
    """The mean of per_anchor_loss over this replica's anchors with a defined
    loss (a positive and, with only_negatives, a negative), normalized so that
    the mean over replicas is the global batch's; times T / base_temperature."""
    has_loss = positives.num_positives > 0
    if options.denominator_mode == "only_negatives":
        # With labels, either every anchor has a negative or the global batch
        # is one class, so the count still agrees across replicas.
        has_loss = tf.logical_and(has_loss, positives.num_negatives > 0)
    per_anchor_loss = tf.where(has_loss, per_anchor_loss, 0.0)

    num_anchors = tf.reduce_sum(tf.cast(has_loss, tf.float32))
    num_views = positives.views.num_views
    one_view = not isinstance(num_views, int) or num_views == 1
    num_replicas = cross_replica.num_replicas()
    if num_replicas > 1 and (one_view or positives.weighted):
        # With one view or a mask, replicas can differ in how many anchors
        # have a loss; normalizing by the global count keeps the mean of the
        # per-replica losses equal to the global loss.
        global_anchors = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, num_anchors)
        num_anchors = global_anchors / num_replicas
    loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor_loss), tf.stop_gradient(num_anchors))
    if options.base_temperature is not None:
        loss *= options.temperature / options.base_temperature
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


def _checked_features(features):
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 3:
        raise ValueError(
            f"features must have rank 3 [batch, views, dim]; got shape {features.shape}. "
            "Reshape the projections to [B, V, D] (views on their own axis)."
        )
    if not features.dtype.is_floating:
        raise ValueError(f"features must be float32 or bfloat16; got {features.dtype.name}.")
    return features


def _checked_labels(features, labels, positives_cap):
    if labels is None:
        return None
    batch = features.shape[0]
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[1] != 1:
        if not labels.shape[:1].is_compatible_with([batch]):
            raise ValueError(
                f"multi-hot labels must have shape [B, C] with B = {batch} as in features; "
                f"got {labels.shape}."
            )
        if positives_cap is not None:
            raise ValueError(
                "positives_cap needs class ids; with multi-hot labels set positives_cap=None."
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
    return labels


def _checked_queue(features, queue_features, positives_cap):
    if queue_features is None:
        return None
    dim = features.shape[2]
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
    return queue_features


def _checked_queue_labels(labels, mask, queue_features, queue_labels):
    if queue_labels is None:
        if queue_features is not None and labels is not None:
            raise ValueError(
                "queue_labels must be given with labels and queue_features: the class of "
                "each queue entry decides whether it is a positive."
            )
        return None
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
    multi_hot = labels.shape.rank == 2
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
    return queue_labels


def _checked_mask(features, labels, mask, queue_features, positives_cap):
    if mask is None:
        return None
    if labels is not None:
        raise ValueError(
            "pass either labels or mask, not both: the mask replaces the labels' positives."
        )
    if positives_cap is not None:
        raise ValueError("positives_cap needs class ids; with a mask set positives_cap=None.")
    batch = features.shape[0]
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
    return mask


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


def _split_into_blocks(rows, block_size):
    """[M, ...] -> [ceil(M / block_size), block_size, ...]: static block shapes.
    The rows that pad the last block hold _PADDING_KEY if integer, else 0."""
    padding_value = _PADDING_KEY if rows.dtype.is_integer else 0
    num_rows = tf.shape(rows)[0]
    num_blocks = (num_rows + block_size - 1) // block_size
    paddings = [[0, num_blocks * block_size - num_rows]] + [[0, 0]] * (rows.shape.rank - 1)
    padded = tf.pad(rows, paddings, constant_values=padding_value)
    return tf.reshape(padded, tf.concat([[num_blocks, block_size], tf.shape(rows)[1:]], 0))


def _map_rows(fn, rows):
    """fn over every tensor of a nest of per-row tensors; None stays None."""
    return tf.nest.map_structure(lambda tensor: None if tensor is None else fn(tensor), rows)


def _selected(logits, selection):
    """logits where a bool selection holds, logits + log w where a weight
    selection w is > 0, _MASKED_LOGIT elsewhere."""
    if selection.dtype == tf.bool:
        return tf.where(selection, logits, _MASKED_LOGIT)
    log_weights = tf.math.log(tf.maximum(selection, _TINY))
    return tf.where(selection > 0.0, logits + log_weights, _MASKED_LOGIT)


def _logsumexp_over(select, scaled_anchors, contrasts, keys, *, block_size):
    """log sum_a w_ia exp(s_ia) per anchor row over the contrasts a in
    select(keys), a bool mask (w = 1) or weights w_ia >= 0, s_ia =
    scaled_anchor_i . contrast_a, with a hand-written gradient.

    d lse_i / d s_ia is the (weighted) softmax of the row, so the backward pass
    is one elementwise pass and two matmuls. The shift that keeps exp() in
    range is the Cauchy-Schwarz bound |a_i| max_a |c_a| >= s_ia when that bound
    is small enough that nothing can underflow (always for unit features and
    tau >= 0.025); otherwise the exact row max, which costs one more pass.
    """
    bound = tf.stop_gradient(
        tf.norm(scaled_anchors, axis=1) * tf.reduce_max(tf.norm(contrasts, axis=1))
    )
    bound_is_safe = tf.reduce_max(bound) <= _MAX_BOUND_SHIFT

    if block_size is not None:

        def forward(logits, row_data, values):
            del values  # none: the bound gets no gradient
            block_keys, block_bound = row_data
            return _shifted_logsumexp(logits, select(block_keys), block_bound, bound_is_safe)

        def backward(logits, row_data, values, lse, upstream):
            del values
            return _logsumexp_gradient(logits, select(row_data[0]), lse, upstream), ()

        return _blockwise(
            forward, backward, scaled_anchors, contrasts, (keys, bound), (), block_size=block_size
        )

    @tf.custom_gradient
    def full(anchors, contrasts):
        logits = tf.matmul(anchors, contrasts, transpose_b=True)
        selection = select(keys)
        lse = _shifted_logsumexp(logits, selection, bound, bound_is_safe)

        def grad(upstream):
            d_logits = _logsumexp_gradient(logits, selection, lse, upstream)
            return tf.matmul(d_logits, contrasts), tf.matmul(d_logits, anchors, transpose_a=True)

        return lse, grad

    return full(scaled_anchors, contrasts)


def _shifted_logsumexp(logits, selection, bound, bound_is_safe):
    """log sum_a w_ia exp(logits_ia) over a selection, each row shifted by its
    bound while bound_is_safe, else by its exact max."""

    def exact_max():
        row_max = tf.reduce_max(_selected(logits, selection), axis=1)
        return tf.where(row_max > _MASKED_LOGIT, row_max, 0.0)  # empty rows: any finite shift

    if selection.dtype == tf.bool:
        shift = tf.cond(bound_is_safe, lambda: bound, exact_max)
    else:  # small weights could underflow below the bound
        shift = exact_max()
    total = tf.reduce_sum(tf.exp(_selected(logits - shift[:, None], selection)), axis=1)
    return shift + tf.math.log(tf.maximum(total, _TINY))


def _logsumexp_gradient(logits, selection, lse, upstream):
    """d loss / d logits from d loss / d lse: the rows' (weighted) softmax."""
    return upstream[:, None] * tf.exp(_selected(logits - lse[:, None], selection))


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
    reduce_rows, row_values, select, scaled_anchors, contrasts, keys, *, block_size
):
    """reduce_rows(logits, select(keys), row_values) per anchor row, for any
    differentiable reduce_rows: the slow path for terms that need every
    (anchor, contrast) pair. Blockwise, the backward pass differentiates
    reduce_rows on each recomputed block alone."""
    if block_size is None:
        logits = tf.matmul(scaled_anchors, contrasts, transpose_b=True)
        return reduce_rows(logits, select(keys), row_values)

    def forward(logits, block_keys, values):
        return reduce_rows(logits, select(block_keys), *values)

    def backward(logits, block_keys, values, results, upstream):
        del results
        (block_values,) = values
        with tf.GradientTape() as tape:
            tape.watch([logits, block_values])
            results = reduce_rows(logits, select(block_keys), block_values)
        d_logits, d_values = tape.gradient(
            results, [logits, block_values], output_gradients=upstream
        )
        return d_logits, (d_values,)

    return _blockwise(
        forward, backward, scaled_anchors, contrasts, keys, (row_values,), block_size=block_size
    )


def _blockwise(forward, backward, anchors, contrasts, row_data, values, *, block_size):
    """Per anchor row results of forward, block_size anchor rows at a time.

    A tf.while_loop runs the blocks one after another and keeps only their
    results; the backward loop recomputes each block's logits, so one block's
    [block_size, N] matrices exist at a time instead of the [A, N] ones.

    forward(logits, row_data, values) gives a block's [block_size] results,
    logits being its anchors . contrasts; backward(logits, row_data, values,
    results, upstream) gives (d_logits, d_values). row_data: a nest of [A]
    tensors read without a gradient; values: a tuple of [A] float32 tensors
    that get one.
    """
    num_anchors = tf.shape(anchors)[0]
    blocked_anchors = _split_into_blocks(anchors, block_size)
    blocked_row_data = _map_rows(lambda tensor: _split_into_blocks(tensor, block_size), row_data)
    num_blocks = tf.shape(blocked_anchors)[0]

    def row_blocks(element_shape):
        return tf.TensorArray(tf.float32, size=num_blocks, element_shape=element_shape)

    @tf.custom_gradient
    def run(anchors, contrasts, *values):
        del anchors  # read block by block through blocked_anchors
        blocked_values = [_split_into_blocks(value, block_size) for value in values]

        def block(i):
            logits = tf.matmul(blocked_anchors[i], contrasts, transpose_b=True)
            block_row_data = _map_rows(lambda blocked: blocked[i], blocked_row_data)
            return logits, block_row_data, tuple(blocked[i] for blocked in blocked_values)

        def forward_block(i, result_blocks):
            return i + 1, result_blocks.write(i, forward(*block(i)))

        _, result_blocks = tf.while_loop(
            lambda i, _: i < num_blocks, forward_block, (0, row_blocks([block_size])),
            parallel_iterations=1,
        )
        blocked_results = result_blocks.stack()

        def grad(upstream):
            blocked_upstream = _split_into_blocks(upstream, block_size)

            def backward_block(i, d_contrasts, d_anchor_blocks, *d_value_blocks):
                d_logits, d_values = backward(*block(i), blocked_results[i], blocked_upstream[i])
                d_anchor_blocks = d_anchor_blocks.write(i, tf.matmul(d_logits, contrasts))
                d_contrasts += tf.matmul(d_logits, blocked_anchors[i], transpose_a=True)
                d_value_blocks = [blocks.write(i, d) for blocks, d in zip(d_value_blocks, d_values)]
                return (i + 1, d_contrasts, d_anchor_blocks, *d_value_blocks)

            d_anchor_blocks = row_blocks(blocked_anchors.shape[1:])
            d_value_blocks = [row_blocks([block_size]) for _ in values]
            _, d_contrasts, d_anchor_blocks, *d_value_blocks = tf.while_loop(
                lambda i, *_: i < num_blocks,
                backward_block,
                (0, tf.zeros_like(contrasts), d_anchor_blocks, *d_value_blocks),
                parallel_iterations=1,
            )
            d_anchors = tf.reshape(d_anchor_blocks.stack(), [num_blocks * block_size, -1])
            d_values = [tf.reshape(blocks.stack(), [-1])[:num_anchors] for blocks in d_value_blocks]
            return (d_anchors[:num_anchors], d_contrasts, *d_values)

        return tf.reshape(blocked_results, [-1])[:num_anchors], grad

    return run(anchors, contrasts, *values)


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConLoss(keras.losses.Loss):
    """`supcon_loss` as a Keras loss: y_true = int labels [B] (or [B, 1]) or
    multi-hot [B, C] with C >= 2; y_pred = L2-normalized embeddings, [B, V, D]
    (V views per sample) or [B, D] (one view per sample, the shape of a plain
    Keras model's output and of keras-io's supervised contrastive example),
    which is taken as [B, 1, D]. With one view an anchor's positives are the
    other samples of its class in the global batch; an anchor whose class has
    no other sample there is left out of the mean (see `supcon_loss`).

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
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank == 2:
            y_pred = y_pred[:, None, :]  # [B, D]: one view per sample, [B, 1, D]
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
