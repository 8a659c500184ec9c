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

import numpy as np
import tensorflow as tf

from supcon_tf.data import augment
from supcon_tf.data import balanced as balanced_lib
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
        batch = _checked_and_logged(batch, check, skipped, "supcon_tf.data: skipped", skipped,
                                    "records that failed to decode; skipped so far:", total)
        return (indices[-1], total), batch

    start = (tf.constant(first_index - 1, tf.int64), tf.constant(0, tf.int64))
    return dataset.scan(start, count_failures)


def _checked_and_logged(batch, check, count, *message):
    """batch, once the assertion `check` has passed and, when count > 0, message has been
    printed to stderr (a per-batch log of decode failures inside the pipeline)."""
    def log():
        with tf.control_dependencies([tf.print(*message, output_stream=sys.stderr)]):
            return tf.constant(True)

    with tf.control_dependencies([check]):
        logged = tf.cond(count > 0, log, lambda: tf.constant(False))
    with tf.control_dependencies([logged]):
        return tf.nest.map_structure(tf.identity, batch)


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


def balanced_train_pipeline(keys, labels, spec, *, batch_size, samples_per_class, seed,
                            examples_per_step=None, start_step=0, read=_no_read):
    """Records in memory (keys [N], labels [N]) -> infinite class-balanced batches of V views.

    Each step's examples_per_step (default batch_size) examples are K = E / M
    classes with M = samples_per_class images each, grouped by class, in
    batches of batch_size (a divisor of E). Step t is a pure function of
    (seed, t), so start_step resumes without reading the steps before it.
    An image that fails to decode is replaced by another one of its class
    (counted and logged); a class whose M drawn images all fail stops the stream.
    """
    examples_per_step = examples_per_step or batch_size
    classes_per_step = balanced_lib.check_samples_per_class(samples_per_class,
                                                             examples_per_step)
    sampler = balanced_lib.ClassBalancedSampler(labels, samples_per_class=samples_per_class,
                                                classes_per_step=classes_per_step)
    seed = tf.constant(seed, tf.int32)
    sampler_seed = augment.fold_seed(seed, -2)  # -1 seeds the uniform stream's shuffle
    keys = tf.constant(np.asarray(keys, dtype=object), tf.string)
    labels = tf.constant(labels, tf.int32)

    def decode(index, position):
        crop_seed, augment_seed = views_lib.stage_seeds(augment.fold_seed(seed, index))
        return {"views": views_lib.crop_views(read(tf.gather(keys, position)), crop_seed, spec),
                "augment_seed": augment_seed, "label": tf.gather(labels, position),
                "_index": index}

    def augment_views(element):
        return {"views": views_lib.augment_views(element["views"], element["augment_seed"], spec),
                "label": element["label"], "_index": element["_index"]}

    probe = tf.data.Dataset.range(len(labels)).enumerate()
    require_decodable(probe, lambda index, position: decode(index, position))

    def step_groups(step):
        indices = step * examples_per_step + tf.range(examples_per_step, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(
            (tf.reshape(indices, [classes_per_step, samples_per_class]),
             sampler.positions(sampler_seed, step)))

    def group(indices, positions):
        # Failed images are dropped and the class's others repeated to fill its M.
        return (tf.data.Dataset.from_tensor_slices((indices, positions))
                .map(_plain_graph(decode)).ignore_errors(log_warning=True)
                .repeat().take(samples_per_class))

    dataset = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    dataset = dataset.flat_map(_plain_graph(step_groups)).interleave(
        _plain_graph(group), block_length=samples_per_class,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(_plain_graph(augment_views), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(examples_per_step, drop_remainder=True)

    @_plain_graph
    def count_replaced(state, batch):
        step, total = state
        indices = batch.pop("_index")
        aligned = tf.debugging.assert_equal(
            indices // examples_per_step, step,
            message=f"all {samples_per_class} images drawn for one class failed to decode "
                    "(config.data.samples_per_class); check the class folders or the dataset")
        replaced = examples_per_step - tf.size(tf.unique(indices).y, out_type=tf.int64)
        total += replaced
        batch = _checked_and_logged(batch, aligned, replaced, "supcon_tf.data: replaced",
                                    replaced, "images that failed to decode by others of their "
                                    "class; replaced so far:", total)
        return (step + 1, total), batch

    start = (tf.constant(start_step, tf.int64), tf.constant(0, tf.int64))
    dataset = dataset.scan(start, count_replaced)
    if batch_size != examples_per_step:
        dataset = dataset.unbatch().batch(batch_size, drop_remainder=True)
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
    skipped before decoding. With config.data.samples_per_class=M, each pipeline's
    step holds E / M classes with M images each (E = global batch / pipelines), and
    the stream is a pure function of (seed, pipeline, step); see balanced.py.
    """
    source = sources.source(data_config)
    spec = views_lib.ViewSpec.from_data_config(data_config, jpeg=source.is_jpeg)
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    batch_size, examples_per_step = _batch_sizes(global_batch_size, input_context)
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    samples_per_class = data_config.get("samples_per_class")
    if samples_per_class:
        keys, labels = source.labeled_keys(data_config.train_split, input_context=input_context)
        return balanced_train_pipeline(
            keys, labels, spec, batch_size=batch_size, examples_per_step=examples_per_step,
            samples_per_class=int(samples_per_class), seed=(seed, pipeline_id),
            start_step=start_step, read=source.read)
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
