"""A momentum key encoder and a label-aware FIFO queue of its projections (MoCo-style).

    momentum = MomentumQueue.build(config.model, query_model, queue_size=..., ...)
    momentum.update_key_encoder()              # key = m * key + (1 - m) * query
    keys = momentum.keys(images, batch_size)   # [B, V, Dp], no gradient
    loss = supcon_loss(z, labels, queue_features=momentum.features, ...)
    momentum.enqueue(keys, labels)             # every replica's keys, in global order
    check_config(config)                       # the queue's fields, before any work

Built inside strategy.scope() and checkpointed with the model (tf.train.Checkpoint
tracks the key model and the queue variables). The loss sees the queue only as
tensors; nothing here depends on the loss.

Choices, following MoCo (facebookresearch/moco, moco/builder.py; the SupContrast
repository does not publish its momentum-encoder code):
- The key model is the query model's architecture (models.build_model), initialized
  as a copy of its encoder and projection head.
- The EMA runs on the trainable variables only, before the keys of the step are
  computed. Batch norm moving statistics are not averaged: the key model runs in
  training mode, so its batch norm normalizes with the key batch's statistics and
  keeps moving averages of its own, as MoCo's key encoder keeps its own buffers.
  (MoCo's shuffled batch norm is not reproduced; with sync_bn every replica's key
  batch norm sees the global batch.)
- Each step enqueues every view's key, sample-major as the loss flattens views,
  all-gathered from every replica in replica order (the global batch's order).
  The queue is a ring of queue_size slots; the oldest keys are overwritten.
- Unfilled slots hold zeros and label -1 and must stay out of the loss (MoCo
  starts from random vectors instead): `steps_to_fill` is the number of steps
  after which every slot holds a key, and the training loop passes the queue to
  the loss only from then on.

Every replica holds the same queue: the variables are mirrored with
aggregation ONLY_FIRST_REPLICA, so an update written in a replica context takes
the first replica's value (they all compute the same one from the gathered keys).
The key model's variables are updated per replica from identical query weights.
"""

import math

import tensorflow as tf

from supcon_tf import models

EMPTY_LABEL = -1


def steps_to_fill(queue_size, keys_per_step):
    """Training steps after which a queue of queue_size slots holds no empty slot."""
    return math.ceil(queue_size / keys_per_step)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(config):
    """Raises ValueError naming loss.queue_size, model.momentum or loss.cross_entropy_weight
    when the queue cannot work with the rest of the config."""
    loss_config = config.loss
    queue_size, momentum = loss_config.queue_size, config.model.momentum
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 0:
        raise ValueError(f"config.loss.queue_size={queue_size!r} must be an integer >= 0 "
                         "(0: no momentum queue)")
    weight = loss_config.cross_entropy_weight
    if not _is_number(weight) or not weight >= 0:
        raise ValueError(f"config.loss.cross_entropy_weight={weight!r} must be a number >= 0 "
                         "(0: the classifier only monitors)")
    if config.method == "ce" and (queue_size or weight):
        raise ValueError(
            "config.loss.queue_size and config.loss.cross_entropy_weight apply to supcon and "
            "simclr; method='ce' trains on cross-entropy alone, so set both to 0")
    if not queue_size:
        return
    if not _is_number(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"config.model.momentum={momentum!r} must be in [0, 1): the key "
                         "encoder's EMA rate (e.g. 0.999)")
    keys_per_step = config.train.global_batch_size * config.data.num_views
    if queue_size < keys_per_step:
        raise ValueError(
            f"config.loss.queue_size={queue_size} is smaller than the {keys_per_step} keys "
            "one step enqueues (train.global_batch_size x data.num_views); set it to at least "
            f"{keys_per_step}, or 0 for no queue")
    if loss_config.positives_cap is not None:
        raise ValueError("config.loss.positives_cap does not combine with a queue; set "
                         "config.loss.positives_cap=None or config.loss.queue_size=0")


def _queue_variable(initial_value, name):
    return tf.Variable(initial_value, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _key_weights(model):
    """The variables the keys depend on: encoder and projection head, not the classifier."""
    return model.encoder.weights + model.projection_head.weights


def _key_trainable_weights(model):
    return model.encoder.trainable_weights + model.projection_head.trainable_weights


class MomentumQueue(tf.Module):
    """The key model (an EMA of the query model) and a queue of its projections with labels.

    Attributes (all checkpointed): key_model; features float32 [Q, Dp]; labels int32
    [Q] (EMPTY_LABEL in unfilled slots); pointer, the slot the next key goes to;
    count, the number of filled slots.
    """

    def __init__(self, key_model, query_model, *, momentum, queue_size, projection_dim):
        super().__init__(name="momentum_queue")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size!r} must be >= 1")
        self.key_model = key_model
        self._query_model = query_model  # not tracked: the checkpoint holds it as "model"
        self.momentum = float(momentum)
        self.queue_size = int(queue_size)
        self.features = _queue_variable(tf.zeros([queue_size, projection_dim]), "queue_features")
        self.labels = _queue_variable(tf.fill([queue_size], EMPTY_LABEL), "queue_labels")
        self.pointer = _queue_variable(tf.constant(0, tf.int32), "queue_pointer")
        self.count = _queue_variable(tf.constant(0, tf.int32), "queue_count")
        self._key_variables = _key_trainable_weights(key_model)
        self._query_variables = _key_trainable_weights(query_model)
        self.copy_query_weights()

    @classmethod
    def build(cls, model_config, query_model, *, queue_size, num_classes, image_size):
        """A key model built from model_config (as the query model was), a copy of it;
        call inside strategy.scope() after the query model has its initial weights."""
        key_model = models.build_model(model_config, num_classes=num_classes,
                                       image_size=image_size)
        projection_dim = int(query_model.projection_head.output_shape[-1])
        return cls(key_model, query_model, momentum=model_config.momentum,
                   queue_size=queue_size, projection_dim=projection_dim)

    def copy_query_weights(self):
        """key := query for the encoder and projection head, batch norm statistics included."""
        keys, queries = _key_weights(self.key_model), _key_weights(self._query_model)
        if [k.shape for k in keys] != [q.shape for q in queries]:
            raise ValueError("the key model's variables do not match the query model's")
        for key, query in zip(keys, queries):
            key.assign(query.value)

    def update_key_encoder(self):
        """key = m * key + (1 - m) * query, for every trainable variable of encoder and head."""
        m = self.momentum
        for key, query in zip(self._key_variables, self._query_variables):
            key.assign(m * key.value + (1.0 - m) * query.value)

    def keys(self, images, batch_size):
        """The key model's L2-normalized projections [B, V, Dp] of images [B * V, ...],
        in training mode (batch statistics; updates the key model's moving averages)."""
        projection = self.key_model(images, training=True)["projection"]
        return tf.stop_gradient(tf.reshape(projection, [batch_size, -1, projection.shape[-1]]))

    def enqueue(self, keys, labels):
        """Writes this step's keys [B, V, Dp] with labels [B] of every replica into the queue.

        Call in a replica context (or with no strategy); the keys are all-gathered in
        replica order, so every replica writes the same global batch, sample-major.
        """
        batch_size, num_views, dim = keys.shape
        context = tf.distribute.get_replica_context()
        num_replicas = context.num_replicas_in_sync if context is not None else 1
        if num_replicas > 1:
            keys = context.all_gather(keys, axis=0)
            labels = context.all_gather(labels, axis=0)
        num_keys = num_replicas * batch_size * num_views  # static, as XLA needs
        keys = tf.reshape(tf.cast(keys, tf.float32), [num_keys, dim])
        labels = tf.reshape(tf.repeat(tf.cast(labels, tf.int32), num_views), [num_keys])
        if num_keys > self.queue_size:
            raise ValueError(f"a step makes {num_keys} keys but the queue has {self.queue_size} "
                             "slots; the queue must hold at least one step's keys")
        slots = (self.pointer + tf.range(num_keys)) % self.queue_size
        self.features.scatter_update(tf.IndexedSlices(keys, slots))
        self.labels.scatter_update(tf.IndexedSlices(labels, slots))
        self.pointer.assign((self.pointer + num_keys) % self.queue_size)
        self.count.assign(tf.minimum(self.count + num_keys, self.queue_size))
