"""The data fields' checks, for stage one (config.data) and stage two (config.data with
config.linear.data's overrides): check_config reads nothing, check_dataset reads the
dataset's sizes. Each raises ValueError with one line naming the field and the fix."""

import tensorflow as tf

from supcon_tf import constants
from supcon_tf.data.datasets import dataset_info
from supcon_tf.data.sources import check_name
from supcon_tf.data.views import ViewSpec


def _stages(config):
    """(where the data fields are, data config, batch field, batch) of each stage that runs."""
    stages = [("config.data", config.data, "train.global_batch_size",
               config.train.global_batch_size)]
    if constants.stage_two_runs(config):
        stages.append(("stage two: config.linear.data", constants.stage_two_data_config(config),
                       "linear.global_batch_size", config.linear.global_batch_size))
    return stages


def check_config(config):
    """The data fields of both stages, without reading the dataset."""
    check_name(config.data.name)
    if config.data.shuffle_buffer < 0:
        raise ValueError(f"config.data.shuffle_buffer={config.data.shuffle_buffer} must be "
                         ">= 0 (0 or 1 turns shuffling off)")
    unknown = sorted(set(config.linear.data) - set(config.data))
    if unknown:
        raise ValueError(
            f"config.linear.data overrides {', '.join(unknown)}, which config.data does not "
            "have; list only config.data fields there")
    for prefix, data_config in (("", config.data),
                                ("stage two: ", constants.stage_two_data_config(config))):
        try:
            ViewSpec.from_data_config(data_config, jpeg=False)
        except ValueError as err:
            raise ValueError(prefix + str(err)) from err
    for where, data_config, field, batch in _stages(config):
        samples = data_config.get("samples_per_class")
        if not samples:
            continue  # None or 0: uniform batches
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"{where}.samples_per_class={samples!r} must be None (uniform "
                             "batches) or an integer >= 1 images per class")
        if batch % samples:
            raise ValueError(
                f"config.{field}={batch} is not a multiple of {where}.samples_per_class="
                f"{samples}; set the batch to a multiple of it or samples_per_class to a "
                "divisor of the batch")


def check_dataset(config):
    """Each stage's batch against the dataset's sizes (reads its metadata from data_dir,
    or builds the embedded digits once)."""
    data_config = config.data
    try:
        info = dataset_info(data_config)
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise ValueError(
            f"config.data.name={data_config.name!r} (train_split={data_config.train_split!r}, "
            f"eval_split={data_config.eval_split!r}): {err}") from err
    for where, stage_config, field, batch in _stages(config):
        if batch > info.num_train_examples:
            raise ValueError(
                f"config.{field}={batch} is larger than the {info.num_train_examples} examples "
                f"of {data_config.name}'s {data_config.train_split!r} split; lower it")
        samples = stage_config.get("samples_per_class")
        if samples and batch // samples > info.num_classes:
            fewest = next(m for m in range(-(-batch // info.num_classes), batch + 1)
                          if batch % m == 0)
            raise ValueError(
                f"{where}.samples_per_class={samples} puts {batch // samples} classes in each "
                f"batch of config.{field}={batch}, but {data_config.name} has "
                f"{info.num_classes}; raise samples_per_class to {fewest} or more")
