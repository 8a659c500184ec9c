"""tf.data pipelines: multi-view training batches and padded eval batches.

Records come from sources.py: a TFDS dataset, which must already be prepared in
config.data.data_dir (gs:// works; the embedded "digits" prepares itself from
scikit-learn on first use), or an image folder. Nothing here downloads.

Training stream, per input pipeline (host):

    records (this host's shard, image bytes or paths) -> repeat -> shuffle(seed)
    -> enumerate (stream index) -> skip(start_step * per-host batch)
    -> read + decode once + V crops, seed = (seed, host, index)   [parallel]
    -> drop undecodable records -> augment the V views      [parallel]
    -> batch(b) -> count the dropped ones from the stream indices missing (logged)
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


# ---------------------------------------------------------------------------- records

# The stream index of a decoded element, from _Decoder.decode to _count_failures,
# which finds the records that failed to decode from the indices missing.
_INDEX = "_index"


def _no_read(key):
    return key  # the records hold the encoded images


@_plain_graph
def _key_and_label(example):
    return example["image"], example["label"]


class _Decoder:
    """decode and augment, the per-record functions of every pipeline.

    decode(index, key, label) decodes the image read(key): for training (a seed)
    into crop_views' V crops, seeded by (seed, index), plus the seed of
    augment(element), the second stage; for eval (no seed) into the eval image.
    The element keeps its index (_INDEX) until _count_failures.
    """

    def __init__(self, spec, read, seed=None):
        self.spec = spec
        self.read = read
        self.seed = None if seed is None else tf.constant(seed, tf.int32)

    @property
    def training(self):
        return self.seed is not None

    def decode(self, index, key, label):
        element = {"label": tf.cast(label, tf.int32), _INDEX: index}
        encoded = self.read(key)
        if not self.training:
            element["image"] = views_lib.eval_image(encoded, self.spec)
            return element
        crop_seed, element["augment_seed"] = views_lib.stage_seeds(
            augment.fold_seed(self.seed, index))
        element["views"] = views_lib.crop_views(encoded, crop_seed, self.spec)
        return element

    def augment(self, element):
        element = dict(element)
        seed = element.pop("augment_seed")
        element["views"] = views_lib.augment_views(element["views"], seed, self.spec)
        return element


def _decode_record(decoder):
    """decoder.decode as a map function of enumerate's (index, (key, label)) elements."""
    return _plain_graph(lambda index, record: decoder.decode(index, *record))


# ---------------------------------------------------------------------------- bad records


class CorruptDatasetError(ValueError):
    """No record decodes; the message says what to check."""


def _corrupt_message(where):
    return (f"supcon_tf.data: {MAX_CONSECUTIVE_DECODE_FAILURES} {CORRUPT_DATASET_MESSAGE} "
            f"{where}; the dataset looks corrupt: re-prepare it (tfds build) or check "
            "config.data.data_dir")


def require_decodable(indexed_records, decoder):
    """Raises CorruptDatasetError unless one of the first (index, (key, label)) elements decodes.

    The pipelines skip undecodable records, so on a dataset where nothing
    decodes they would search forever; run this once on the records before streaming.
    """
    probe = indexed_records.take(MAX_CONSECUTIVE_DECODE_FAILURES).map(_decode_record(decoder))
    for _ in probe.ignore_errors().take(1):
        return
    raise CorruptDatasetError(_corrupt_message("at the start of the stream"))


def _count_failures(batches, span, *, first_index, action, what):
    """Batches holding _INDEX -> the batches without it, their failed records counted.

    The batches cover the stream's indices in order from first_index:
    span(start, indices) gives the end of a batch's range (it starts where the
    previous one ended) and an assertion that stops a broken stream. The records
    that failed in a batch are the indices of its range it does not hold; a batch
    with some logs "supcon_tf.data: <action> n <what>; <action> so far: total".
    """

    @_plain_graph
    def count(state, batch):
        start, total = state
        indices = batch.pop(_INDEX)
        end, check = span(start, indices)
        failed = end - start - tf.size(tf.unique(indices).y, out_type=tf.int64)
        total += failed
        batch = _checked_and_logged(batch, check, failed, f"supcon_tf.data: {action}", failed,
                                    f"{what}; {action} so far:", total)
        return (end, total), batch

    return batches.scan((tf.constant(first_index, tf.int64), tf.constant(0, tf.int64)), count)


def _up_to_last(start, indices):
    """The span of a uniform or eval batch: failed records were dropped, so it ends at its
    last index; a gap of MAX_CONSECUTIVE_DECODE_FAILURES indices means a corrupt dataset."""
    previous = tf.concat([[start - 1], indices[:-1]], axis=0)
    check = tf.debugging.assert_less(
        tf.reduce_max(indices - previous - 1),
        tf.constant(MAX_CONSECUTIVE_DECODE_FAILURES, tf.int64),
        message=_corrupt_message("in a row"))
    return indices[-1] + 1, check


def _one_step(examples_per_step, samples_per_class):
    """The span of a class-balanced batch: step t's E indices [t E, (t + 1) E), failed images
    replaced by their class's others; an index of another step means a class lost all M."""

    def span(start, indices):
        check = tf.debugging.assert_equal(
            indices // examples_per_step, start // examples_per_step,
            message=f"all {samples_per_class} images drawn for one class failed to decode "
                    "(config.data.samples_per_class); check the class folders or the dataset")
        return start + examples_per_step, check

    return span


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


def _parallel_map(dataset, function):
    return dataset.map(_plain_graph(function), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def decode_and_batch(indexed_records, decoder, *, batch_size, drop_remainder, first_index=0):
    """(index, (key, label)) elements, consecutive int64 indices -> batches of decoded records.

    decoder.decode, then for training decoder.augment, run in parallel maps
    that keep the order. Records that fail to decode are dropped and counted
    (_count_failures): each batch after a gap logs the running count, and a gap of
    MAX_CONSECUTIVE_DECODE_FAILURES records raises InvalidArgumentError (message
    containing CORRUPT_DATASET_MESSAGE).
    """
    dataset = _parallel_map(indexed_records, _decode_record(decoder))
    # log_warning: TF logs each failure's error message.
    dataset = dataset.ignore_errors(log_warning=True)
    if decoder.training:
        # A map of its own: with the decoding and the augmentations (XLA programs) in
        # one map, the training pipeline ran 1.05-1.1x slower.
        dataset = _parallel_map(dataset, decoder.augment)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return _count_failures(dataset, _up_to_last, first_index=first_index, action="skipped",
                           what="records that failed to decode")


def train_pipeline(records, spec, *, batch_size, seed, shuffle_buffer=0, skip_examples=0,
                   read=_no_read):
    """Records {"image": key, "label": int} -> infinite batches of V views.

    read(key) gives the encoded image (a source's read; by default the key is
    the encoded image). Public so that benchmarks and tests can feed records
    from memory. `seed` is an int32 [2]-convertible pair; batches are a pure
    function of it.
    """
    decoder = _Decoder(spec, read, seed)
    dataset = records.map(_key_and_label)
    require_decodable(dataset.enumerate(), decoder)
    dataset = dataset.repeat()
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer,
                                  seed=int(augment.fold_seed(decoder.seed, -1)[0]))
    dataset = dataset.enumerate().skip(skip_examples)
    dataset = decode_and_batch(dataset, decoder, batch_size=batch_size, drop_remainder=True,
                               first_index=skip_examples)
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
    decoder = _Decoder(spec, read, seed)
    keys = tf.constant(np.asarray(keys, dtype=object), tf.string)
    labels = tf.constant(labels, tf.int32)
    require_decodable(tf.data.Dataset.from_tensor_slices((keys, labels)).enumerate(), decoder)

    @_plain_graph
    def decoded_group(indices, positions):
        # Failed images are dropped and the class's others repeated to fill its M.
        records = (indices, tf.gather(keys, positions), tf.gather(labels, positions))
        return (tf.data.Dataset.from_tensor_slices(records)
                .map(_plain_graph(decoder.decode)).ignore_errors(log_warning=True)
                .repeat().take(samples_per_class))

    sampler_seed = augment.fold_seed(decoder.seed, -2)  # -1 seeds the uniform stream's shuffle
    groups = _class_groups(sampler, sampler_seed, start_step)
    dataset = groups.interleave(decoded_group, block_length=samples_per_class,
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = _parallel_map(dataset, decoder.augment)
    dataset = dataset.batch(examples_per_step, drop_remainder=True)
    dataset = _count_failures(
        dataset, _one_step(examples_per_step, samples_per_class),
        first_index=start_step * examples_per_step, action="replaced",
        what="images that failed to decode by others of their class")
    if batch_size != examples_per_step:
        dataset = dataset.unbatch().batch(batch_size, drop_remainder=True)
    return _prefetch(dataset)


def _class_groups(sampler, seed, start_step):
    """(stream indices [M], positions [M]) of each class drawn, K a step from start_step on.

    Step t's indices are t E ... (t + 1) E - 1 (E = K M), class after class.
    """
    k, m = sampler.classes_per_step, sampler.samples_per_class

    @_plain_graph
    def step_groups(step):
        indices = step * k * m + tf.range(k * m, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(
            (tf.reshape(indices, [k, m]), sampler.positions(seed, step)))

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    return steps.flat_map(step_groups)


def eval_pipeline(records, spec, *, batch_size, read=_no_read):
    """Records -> the whole split, one view, batches padded to batch_size with a mask."""
    size = spec.image_size
    decoder = _Decoder(spec, read)
    dataset = records.map(_key_and_label).enumerate()
    require_decodable(dataset, decoder)
    dataset = decode_and_batch(dataset, decoder, batch_size=batch_size, drop_remainder=False)

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
