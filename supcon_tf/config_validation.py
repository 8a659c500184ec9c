"""Checks a resolved config before any work starts.

main.py calls `validate` right after the strategy exists (the replica count is
known) and before it builds a dataset or a model, so a config that cannot work
fails in a second with one line naming the field and the fix, instead of
minutes later (or hours later, on a pod) with a traceback from deep inside
TensorFlow.

The valid names come from the modules that implement them, so adding an
architecture, augmentation, method or optimizer there is enough.
"""

import uuid

import tensorflow as tf

from supcon_tf import data as data_lib
from supcon_tf import models as models_lib
from supcon_tf import optim as optim_lib
from supcon_tf import train as train_lib
from supcon_tf.models import resnet as resnet_lib
from supcon_tf.models import vit as vit_lib


class ConfigError(ValueError):
    """A config that cannot work; the message is one line naming the field and the fix."""


def validate(config, *, num_replicas, workdir):
    """Raises ConfigError for the first problem found in `config`.

    Checks of the config itself come first; then the dataset (which reads
    metadata from data_dir, or builds the embedded digits once) and last the
    workdir (which is created if needed and gets a probe file written and removed).
    """
    _check_names(config)
    _check_batches(config, num_replicas)
    _check_loss(config.loss)
    _check_data_fields(config.data)
    _check_image_size(config)
    _check_dataset(config.data)
    _check_workdir(workdir)


def _one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def _choose(field, value, valid):
    if value not in valid:
        raise ConfigError(
            f"config.{field}={value!r} is unknown; set it to one of: {', '.join(valid)}")


def _check_names(config):
    _choose("method", config.method, train_lib.METHODS)
    _choose("model.name", config.model.name, models_lib.ENCODER_NAMES)
    _choose("data.name", config.data.name, data_lib.DATASETS)
    _choose("data.augment", config.data.augment, data_lib.AUGMENTATIONS)
    for prefix, optim_config in (("optim", config.optim), ("linear.optim", config.linear.optim)):
        _choose(f"{prefix}.name", optim_config.name, optim_lib.OPTIMIZERS)
        _choose(f"{prefix}.schedule", optim_config.schedule, optim_lib.SCHEDULES)


def _check_batches(config, num_replicas):
    # eval.batch_size too: evaluation splits it over the replicas after training ends.
    for field, batch in (("train.global_batch_size", config.train.global_batch_size),
                         ("linear.global_batch_size", config.linear.global_batch_size),
                         ("eval.batch_size", config.eval.batch_size)):
        if batch <= 0 or batch % num_replicas:
            nearest = max(num_replicas, round(batch / num_replicas) * num_replicas)
            raise ConfigError(
                f"config.{field}={batch} does not divide evenly over {num_replicas} "
                f"replicas; set it to a multiple of {num_replicas} (e.g. {nearest})")


def _check_loss(loss_config):
    if not loss_config.temperature > 0:
        raise ConfigError(
            f"config.loss.temperature={loss_config.temperature!r} must be > 0; "
            "the paper uses 0.1")


def _check_data_fields(data_config):
    """num_views, crop area, colour strength...: the data module's own checks, one line each."""
    try:
        data_lib.ViewSpec.from_data_config(data_config, jpeg=False)
    except ValueError as err:
        raise ConfigError(_one_line(err)) from err


def _min_image_size(model_config):
    if model_config.name in vit_lib.VIT_CONFIGS:
        return vit_lib.VIT_CONFIGS[model_config.name].patch_size
    return resnet_lib.min_image_size(model_config.cifar_stem)


def _check_image_size(config):
    size, name = config.data.image_size, config.model.name
    smallest = _min_image_size(config.model)
    if size < smallest:
        raise ConfigError(
            f"config.data.image_size={size} is too small for config.model.name={name!r} "
            f"(cifar_stem={config.model.cifar_stem}); set it to at least {smallest}")
    if name in vit_lib.VIT_CONFIGS and size % smallest:
        raise ConfigError(
            f"config.data.image_size={size} is not a multiple of {name}'s patch size "
            f"{smallest}; set it to e.g. {size // smallest * smallest}")


def _check_dataset(data_config):
    try:
        data_lib.dataset_info(data_config)
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise ConfigError(f"config.data.name={data_config.name!r}: {_one_line(err)}") from err


def _check_workdir(workdir):
    probe = tf.io.gfile.join(workdir, f".write_probe_{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as err:
        raise ConfigError(
            f"--workdir={workdir} is not writable ({_one_line(err)}); "
            "pass a directory where files can be created") from err
