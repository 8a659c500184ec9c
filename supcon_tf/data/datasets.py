"""tf.data pipelines: multi-view training batches and padded eval batches.

Records come from sources.py: a TFDS dataset, which must already be prepared in
config.data.data_dir (gs:// works; the embedded "digits" prepares itself from
scikit-learn on first use), or an image folder. Nothing here downloads.

Training stream, per input pipeline (host):

    records (this host's shard, image bytes or paths) -> repeat -> shuffle(seed)
    -> enumerate (stream index) -> skip(start_step * per-host batch)
    -> read + decode once + V crops, seed = (seed, host, index)   [parallel]
    -> drop undecodable records -> augment the V views      [parallel]
    -> batch(b) -> count the dropped ones from the gaps in the stream index (logged)
    -> prefetch (tf.data's autotuner off, see _prefetch)

Every random number comes from stateless ops seeded by the stream index, so the
stream is a pure function of (seed, host), and start_step skips records before
they are decoded to resume it.
"""

import dataclasses
import sys

import tensorflow as tf
import tensorflow_datasets as tfds

from supcon_tf.data import augment
from supcon_tf.data import sources
from supcon_tf.data import views as views_lib
from supcon_tf.data.sources import DatasetNotPreparedError  # noqa: F401  (part of the API)

# A dataset that fails this many records in a row is corrupt, not unlucky: the
# pipeline raises instead of skipping forever.
MAX_CONSECUTIVE_DECODE_FAILURES = 100
CORRUPT_DATASET_MESSAGE = "consecutive records failed to decode"


# The tf.data functions here have no Python control flow on tensors, so AutoGraph
# would only slow their tracing down (several seconds per pipeline).
_plain_graph = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple  # label i is class_names[i]; TFDS's names, or an image folder's folders


def is_jpeg(data_config):
    """Whether every image of config.data is an encoded JPEG (crops then decode only their part)."""
    return sources.source(data_config).is_jpeg


def dataset_info(data_config):
    """Classes and split sizes of config.data; raises DatasetNotPreparedError if not in data_dir."""
    source = sources.source(data_config)
    return DatasetInfo(
        name=data_config.name,
        num_classes=len(source.class_names),
        num_train_examples=source.split_size(data_config.train_split),
        num_eval_examples=source.split_size(data_config.eval_split),
        class_names=source.class_names)


# ---------------------------------------------------------------------------- bad records


class CorruptDatasetError(ValueError):
    """No record decodes; the message says what to check."""


def _corrupt_message(where):
    return (f"supcon_tf.data: {MAX_CONSECUTIVE_DECODE_FAILURES} {CORRUPT_DATASET_MESSAGE} "
            f"{where}; the dataset looks corrupt: re-prepare it (tfds build) or check "
            "config.data.data_dir")


def require_decodable(indexed_records, decode_fn):
    """Raises CorruptDatasetError unless one of the first (index, record) elements decodes.

    decode_and_batch skips undecodable records, so on a dataset where nothing
    decodes it would search forever; run this once on the records before streaming.
    """
    probe = indexed_records.take(MAX_CONSECUTIVE_DECODE_FAILURES).map(_plain_graph(decode_fn))
    for _ in probe.ignore_errors().take(1):
        return
    raise CorruptDatasetError(_corrupt_message("at the start of the stream"))


def decode_and_batch(indexed_records, decode_fn, *, batch_size, drop_remainder, first_index=0,
                     augment_fn=None):
    """(index, record) elements, consecutive int64 indices -> batches of decode_fn(index, record).

    decode_fn returns a dict; it runs in a parallel map that keeps the order.
    Records it fails on are dropped and counted from the gaps they leave in the
    index: each batch with a gap logs the running count, and a gap of
    MAX_CONSECUTIVE_DECODE_FAILURES records raises InvalidArgumentError (message
    containing CORRUPT_DATASET_MESSAGE). augment_fn, if given, maps each decoded
    dict to the dict that is batched, in a second parallel map.
    """

    @_plain_graph
    def decode_with_index(index, record):
        return dict(decode_fn(index, record), _index=index)

    dataset = indexed_records.map(decode_with_index, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
    # log_warning: TF logs each failure's error message.
    dataset = dataset.ignore_errors(log_warning=True)
    if augment_fn is not None:
        # A map of its own: with the decoding and the augmentations (XLA programs) in
        # one map, the training pipeline ran 1.05-1.1x slower.
        dataset = dataset.map(_plain_graph(lambda element: dict(
            augment_fn(element), _index=element["_index"])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    @_plain_graph
    def count_failures(state, batch):
        last_index, total = state
        indices = batch.pop("_index")
        previous = tf.concat([[last_index], indices[:-1]], axis=0)
        gaps = indices - previous - 1
        skipped = tf.reduce_sum(gaps)
        total += skipped
        check = tf.debugging.assert_less(
            tf.reduce_max(gaps), tf.constant(MAX_CONSECUTIVE_DECODE_FAILURES, tf.int64),
            message=_corrupt_message("in a row"))

        def log_failures():
            log = tf.print("supcon_tf.data: skipped", skipped, "records that failed to decode; "
                           "skipped so far:", total, output_stream=sys.stderr)
            with tf.control_dependencies([log]):
                return tf.constant(True)

        with tf.control_dependencies([check]):
            logged = tf.cond(skipped > 0, log_failures, lambda: tf.constant(False))
        with tf.control_dependencies([logged]):
            batch = tf.nest.map_structure(tf.identity, batch)
        return (indices[-1], total), batch

    start = (tf.constant(first_index - 1, tf.int64), tf.constant(0, tf.int64))
    return dataset.scan(start, count_failures)


# ---------------------------------------------------------------------------- pipelines


def _no_read(key):
    return key  # the records hold the encoded images


def train_pipeline(records, spec, *, batch_size, seed, shuffle_buffer=0, skip_examples=0,
                   read=_no_read):
    """Records {"image": key, "label": int} -> infinite batches of V views.

    read(key) gives the encoded image (a source's read; by default the key is
    the encoded image). Public so that benchmarks and tests can feed records
    from memory. `seed` is an int32 [2]-convertible pair; batches are a pure
    function of it.
    """
    seed = tf.constant(seed, tf.int32)
    dataset = records.map(lambda example: (example["image"], example["label"]))

    def decode(index, record):
        key, label = record
        encoded = read(key)
        crop_seed, augment_seed = views_lib.stage_seeds(augment.fold_seed(seed, index))
        return {"views": views_lib.crop_views(encoded, crop_seed, spec),
                "augment_seed": augment_seed, "label": tf.cast(label, tf.int32)}

    def augment_views(element):
        return {"views": views_lib.augment_views(element["views"], element["augment_seed"], spec),
                "label": element["label"]}

    require_decodable(dataset.enumerate(), decode)
    dataset = dataset.repeat()
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=int(augment.fold_seed(seed, -1)[0]))
    dataset = dataset.enumerate().skip(skip_examples)
    dataset = decode_and_batch(dataset, decode, batch_size=batch_size, drop_remainder=True,
                               first_index=skip_examples, augment_fn=augment_views)
    return _prefetch(dataset)


def eval_pipeline(records, spec, *, batch_size, read=_no_read):
    """Records -> the whole split, one view, batches padded to batch_size with a mask."""
    size = spec.image_size

    def decode(index, record):
        key, label = record
        return {"image": views_lib.eval_image(read(key), spec), "label": tf.cast(label, tf.int32)}

    dataset = records.map(lambda example: (example["image"], example["label"])).enumerate()
    require_decodable(dataset, decode)
    dataset = decode_and_batch(dataset, decode, batch_size=batch_size, drop_remainder=False)

    @_plain_graph
    def pad(batch):
        count = tf.shape(batch["label"])[0]
        padding = batch_size - count
        image = tf.pad(batch["image"], [[0, padding], [0, 0], [0, 0], [0, 0]])
        label = tf.pad(batch["label"], [[0, padding]])
        return {"image": tf.ensure_shape(image, [batch_size, size, size, 3]),
                "label": tf.ensure_shape(label, [batch_size]),
                "mask": tf.ensure_shape(tf.range(batch_size) < count, [batch_size])}

    return _prefetch(dataset.map(pad))


def _prefetch(dataset):
    """The end of every pipeline: prefetch, with tf.data's autotuner off.

    Deleting an iterator waits for the autotuner's thread, and TensorFlow 2.21
    does not always wake it: main.py sat about 30 s after training in 3 runs of
    7, the thread waiting out its period. Without it AUTOTUNE means one call per
    core, which measured as fast for the training pipeline.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _batch_sizes(global_batch_size, input_context):
    """(per-replica batch, per-pipeline examples per step)."""
    if input_context is None:
        return global_batch_size, global_batch_size
    if global_batch_size % input_context.num_replicas_in_sync:
        raise ValueError(
            f"global batch size {global_batch_size} does not divide over "
            f"{input_context.num_replicas_in_sync} replicas (config.train.global_batch_size)")
    per_replica = input_context.get_per_replica_batch_size(global_batch_size)
    return per_replica, global_batch_size // input_context.num_input_pipelines


def build_train_dataset(data_config, *, global_batch_size, seed, input_context=None, start_step=0):
    """Infinite {"views": float32 [b, V, H, W, 3] in [0, 1], "label": int32 [b]} for this pipeline.

    b is the per-replica batch. The stream is a pure function of (seed, input
    pipeline); start_step=k gives the same stream with its first k steps left out,
    skipped before decoding.
    """
    source = sources.source(data_config)
    spec = views_lib.ViewSpec.from_data_config(data_config, jpeg=source.is_jpeg)
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    batch_size, examples_per_step = _batch_sizes(global_batch_size, input_context)
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    records = source.records(data_config.train_split, shuffle_seed=seed,
                             input_context=input_context)
    return train_pipeline(
        records, spec, batch_size=batch_size, seed=(seed, pipeline_id),
        shuffle_buffer=int(data_config.shuffle_buffer),
        skip_examples=start_step * examples_per_step, read=source.read)


def build_eval_dataset(data_config, *, split, batch_size, input_context=None):
    """{"image": float32 [b, H, W, 3], "label": int32 [b], "mask": bool [b]} over the whole split.

    batch_size is global; with input_context each pipeline reads its own part of
    the split in per-replica batches. The last batch is padded (mask False).
    """
    source = sources.source(data_config)
    spec = views_lib.ViewSpec.from_data_config(data_config, jpeg=source.is_jpeg)
    per_replica, _ = _batch_sizes(batch_size, input_context)
    records = source.records(split, input_context=input_context)
    return eval_pipeline(records, spec, batch_size=per_replica, read=source.read)
