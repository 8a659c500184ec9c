"""The one cross-replica gather of the loss, the same program under every strategy.

`gather_rows(values)` returns every replica's rows in replica order. Each replica
places its rows in a zero tensor of the global shape with a one-hot mask over the
replicas and all-reduces the sum. That is how TPUStrategy implements `all_gather`
internally; doing it here means MirroredStrategy, MultiWorkerMirroredStrategy and
TPUStrategy run the same forward and backward ops, so what the CPU tests prove about
values and gradients holds on a TPU. The gradient of an all-reduced sum is the
all-reduced sum of the upstream gradients (ReplicaContext.all_reduce defines it), and
the one-hot mask then hands each replica the rows it owns: the summed contributions
of every replica to its own rows.

Shapes are static (the mask multiplies instead of slicing at a replica-dependent
offset), so XLA compiles it on a TPU, where the replica id is only known at run time.
"""

import tensorflow as tf

def num_replicas():
    """Replicas in sync in the current replica context (1 outside strategy.run)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def replica_id():
    """This replica's index, int32 (0 outside strategy.run)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def gather_rows(values):
    """[n, ...] on each replica -> [num_replicas * n, ...], replica r's rows at r * n.

    Outside strategy.run, or with one replica, returns values unchanged. n must be
    the same on every replica. Float rows carry gradients back to their owner;
    integer rows (labels) are gathered exactly while below 2**24 in magnitude.
    """
    context = tf.distribute.get_replica_context()
    count = context.num_replicas_in_sync if context is not None else 1
    if count == 1:
        return values
    values = tf.convert_to_tensor(values)
    dtype = values.dtype
    carried = values if dtype.is_floating else tf.cast(values, tf.float32)
    placement = tf.one_hot(replica_id(), count, dtype=carried.dtype)
    placement = tf.reshape(placement, [count] + [1] * carried.shape.rank)
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, placement * carried[None])
    gathered = tf.reshape(summed, tf.concat([[-1], tf.shape(values)[1:]], 0))
    if values.shape[0] is not None:
        gathered = tf.ensure_shape(gathered, [count * values.shape[0]] + values.shape[1:])
    return gathered if dtype.is_floating else tf.cast(gathered, dtype)
