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

import keras
import tensorflow as tf

from supcon_tf import constants
from supcon_tf import data as data_lib
from supcon_tf import init_from as init_from_lib
from supcon_tf import losses as losses_lib
from supcon_tf import models as models_lib
from supcon_tf import optim as optim_lib
from supcon_tf.models import heads as heads_lib
from supcon_tf.models import resnet as resnet_lib
from supcon_tf.models import vit as vit_lib


class ConfigError(ValueError):
    """A config that cannot work; the message is one line naming the field and the fix."""


def validate(config, *, num_replicas, workdir):
    """Raises ConfigError for the first problem found in `config`.

    Checks of the config itself come first; then the dataset (which reads
    metadata from data_dir, or builds the embedded digits once) and last the
    workdir (which is created if needed and gets a probe file written and removed).
    With config.init_from set, the checks see the source's architecture, as the run will.
    """
    _check_init_from(config)
    config = init_from_lib.with_architecture(config)
    _check_names(config)
    _check_value_types(config)
    _check_optimizers(config)
    _check_batches(config, num_replicas)
    _check_epochs(config)
    _check_counts(config)
    _check_train_options(config)
    _check_model_sizes(config.model)
    _check_loss(config.loss, num_views=config.data.num_views)
    _check_momentum_queue(config)
    _check_model(config.model)
    _check_data_fields(config)
    _check_image_size(config)
    _check_dataset(config)
    _check_workdir(workdir)


def _one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def _choose(field, value, valid):
    if value not in valid:
        raise ConfigError(
            f"config.{field}={value!r} is unknown; set it to one of: {', '.join(valid)}")


def _check_names(config):
    _choose("method", config.method, constants.METHODS)
    _choose("model.name", config.model.name, models_lib.ENCODER_NAMES)
    _choose("model.conv_init", config.model.conv_init, resnet_lib.CONV_INITS)
    _choose("model.head_init", config.model.head_init, heads_lib.HEAD_INITS)
    _choose("model.classifier_init", config.model.classifier_init, heads_lib.CLASSIFIER_INITS)
    try:
        data_lib.check_dataset_name(config.data.name)
    except ValueError as err:
        raise ConfigError(_one_line(err)) from err
    _choose("data.augment", config.data.augment, data_lib.AUGMENTATIONS)
    _choose("loss.variant", config.loss.variant, losses_lib.VARIANTS)
    _choose("loss.contrast_mode", config.loss.contrast_mode, losses_lib.CONTRAST_MODES)
    _choose("loss.denominator_mode", config.loss.denominator_mode, losses_lib.DENOMINATOR_MODES)
    _choose("loss.cross_entropy_views", config.loss.cross_entropy_views,
            constants.CROSS_ENTROPY_VIEWS)
    _choose("linear.protocol", config.linear.protocol, constants.LINEAR_PROTOCOLS)
    _choose("linear.bn_mode", config.linear.bn_mode, constants.BN_MODES)
    for prefix, optim_config in (("optim", config.optim), ("linear.optim", config.linear.optim)):
        _choose(f"{prefix}.name", optim_config.name, optim_lib.OPTIMIZERS)
        _choose(f"{prefix}.schedule", optim_config.schedule, optim_lib.SCHEDULES)


def _check_optimizers(config):
    """The optimizer module's own checks of each stage's slice, one line each."""
    for prefix, optim_config in (("optim", config.optim), ("linear.optim", config.linear.optim)):
        try:
            optim_lib.check_optim_config(optim_config, prefix=prefix)
        except ValueError as err:
            raise ConfigError(f"config.{_one_line(err)}") from err


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


def _stage_two_runs(config):
    return config.method != "ce"  # ce reports its own classifier


def _check_init_from(config):
    path = config.get("init_from")
    if not path:
        if config.get("init_from_required"):
            raise ConfigError("this config starts from other weights: pass "
                              f"--config.init_from=PATH, {init_from_lib.USAGE}")
        return
    try:
        init_from_lib.check_fits(config)  # locates the source and loads it into its encoder
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise ConfigError(f"config.init_from={path!r}: {_one_line(err)}") from err


def _check_frozen_transfer(config):
    """train.epochs=0 with init_from: no stage one, a classifier on the loaded encoder."""
    if not _stage_two_runs(config):
        raise ConfigError(f"config.train.epochs=0 with method={config.method!r} trains nothing; "
                          "set train.epochs > 0 to fine-tune, or method='supcon' for a linear "
                          "classifier on the frozen encoder")
    try:  # stage one's optimizer is built (and checkpointed) even when it never steps
        optim_lib.build_schedule(config.optim, global_batch_size=config.train.global_batch_size,
                                 steps_per_epoch=1.0, total_steps=0)
    except ValueError as err:
        raise ConfigError(f"config.train.epochs=0: optim.schedule={config.optim.schedule!r} needs "
                          "steps; set config.optim.schedule='piecewise' (as "
                          "configs/transfer.py:linear does)") from err


def _check_epochs(config):
    fields = [("train.epochs", config.train.epochs)]
    if config.train.epochs == 0 and config.get("init_from"):
        _check_frozen_transfer(config)
        fields = []
    if _stage_two_runs(config):
        fields.append(("linear.epochs", config.linear.epochs))
    for field, epochs in fields:
        if not epochs > 0:
            raise ConfigError(f"config.{field}={epochs!r} must be > 0; it counts passes over "
                              "the training split")


# A config file can give any field any type; --config.FIELD=VALUE overrides are parsed
# to the field's type already. Each group lists the fields its check reads.
_SWITCHES = ("data.hflip", "data.blur", "model.cifar_stem", "model.sync_bn",
             "model.zero_init_last_bn", "model.normalize_embedding", "model.projection_bn",
             "model.projection_output_bias", "optim.decay_batch_norm",
             "linear.optim.decay_batch_norm")
_INTEGERS = ("seed", "data.image_size", "data.num_views", "data.randaugment_layers",
             "data.randaugment_magnitude", "data.shuffle_buffer", "train.global_batch_size",
             "train.steps_per_loop", "train.checkpoint_every_steps", "train.keep_checkpoints",
             "train.log_every_steps", "linear.global_batch_size", "eval.batch_size",
             "loss.positives_cap", "loss.block_size", "train.min_steps", "linear.min_steps")
_OPTIM_NUMBERS = ("base_lr", "momentum", "rho", "epsilon", "weight_decay", "warmup_epochs",
                  "warmup_start_lr", "min_lr_ratio", "decay_every_epochs", "decay_rate")
_NUMBERS = ("data.crop_area_min", "data.color_strength", "data.blur_probability",
            "model.width_multiplier", "loss.temperature", "loss.base_temperature",
            "loss.label_smoothing", "linear.label_smoothing", "train.epochs",
            "linear.epochs") + tuple(f"{prefix}.{name}" for prefix in ("optim", "linear.optim")
                                     for name in _OPTIM_NUMBERS)
_NUMBER_LISTS = ("model.input_mean", "model.input_std", "model.projection_dims",
                 "optim.decay_epochs", "linear.optim.decay_epochs")
_STRINGS = ("data.train_split", "data.eval_split")
# Placeholders that may stay None (unset).
_OPTIONAL = ("loss.positives_cap", "loss.block_size", "loss.base_temperature")
_MISSING = object()


def _lookup(config, dotted):
    for name in dotted.split("."):
        if name not in config:
            return _MISSING
        config = config[name]
    return config


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value_types(config):
    def values(fields):
        for field in fields:
            value = _lookup(config, field)
            if value is not _MISSING and not (value is None and field in _OPTIONAL):
                yield field, value

    for field, value in values(_SWITCHES):
        if not isinstance(value, bool):
            raise ConfigError(f"config.{field}={value!r} must be True or False")
    for field, value in values(_INTEGERS):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"config.{field}={value!r} must be an integer")
    for field, value in values(_NUMBERS):
        if not _is_number(value):
            raise ConfigError(f"config.{field}={value!r} must be a number")
    for field, value in values(_NUMBER_LISTS):
        if isinstance(value, str) or not all(_is_number(v) for v in _iterable(value)):
            raise ConfigError(f"config.{field}={value!r} must be a tuple of numbers")
    for field, value in values(_STRINGS):
        if not isinstance(value, str):
            raise ConfigError(f"config.{field}={value!r} must be a split name such as 'train'")
    data_dir = _lookup(config, "data.data_dir")
    if data_dir is not None and data_dir is not _MISSING and not isinstance(data_dir, str):
        raise ConfigError(f"config.data.data_dir={data_dir!r} must be a directory path or None "
                          "(~/tensorflow_datasets)")


def _iterable(value):
    try:
        return list(value)
    except TypeError:
        return [None]  # not a sequence: fails the element check


def _check_counts(config):
    """Integer fields that no other check bounds, with the smallest value each accepts."""
    largest_seed = 2**32 - 1 - constants.STAGE_TWO_SEED_OFFSET  # NumPy seeds are uint32
    if not 0 <= config.seed <= largest_seed:
        raise ConfigError(f"config.seed={config.seed} must be in [0, {largest_seed}]")
    for field, smallest, meaning in (
            ("data.shuffle_buffer", 0, "0 or 1 turns shuffling off"),
            ("train.steps_per_loop", 1, "steps run per call of the compiled loop"),
            ("train.min_steps", 0, "0: the epochs alone set stage one's length"),
            ("linear.min_steps", 0, "0: the epochs alone set stage two's length"),
            ("train.checkpoint_every_steps", 0, "0 saves only at the end of a stage"),
            ("train.keep_checkpoints", 1, "how many recent checkpoints stay on disk"),
            ("train.log_every_steps", 0, "0 logs only the last step")):
        value = _lookup(config, field)
        if value is not _MISSING and value < smallest:
            raise ConfigError(f"config.{field}={value} must be >= {smallest} ({meaning})")


def _check_train_options(config):
    jit = config.train.jit_compile
    # An override --config.train.jit_compile=true arrives as a string: the field holds "auto".
    if not (isinstance(jit, bool) or jit == "auto"
            or (isinstance(jit, str) and jit.lower() in ("true", "false"))):
        raise ConfigError(f"config.train.jit_compile={jit!r} must be True, False or 'auto' "
                          "(XLA on a TPU or a GPU, not on a CPU)")
    policy = config.train.mixed_precision
    if policy is not None:
        try:
            keras.mixed_precision.Policy(policy)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"config.train.mixed_precision={policy!r} is not a Keras dtype policy; use None "
                "(float32), 'mixed_bfloat16' (TPU) or 'mixed_float16' (GPU)") from err


def _check_model_sizes(model_config):
    width = model_config.width_multiplier
    if not width > 0:
        raise ConfigError(f"config.model.width_multiplier={width} must be > 0 (1.0: the "
                          "published widths)")
    dims = tuple(model_config.projection_dims)
    if not dims or any(d != int(d) or d < 1 for d in dims):
        raise ConfigError(f"config.model.projection_dims={dims} must list the head's widths "
                          "(hidden..., output), each an integer >= 1, e.g. (2048, 128)")
    if model_config.name in vit_lib.VIT_CONFIGS:
        if model_config.cifar_stem:
            raise ConfigError(f"config.model.cifar_stem=True applies to ResNets only, not "
                              f"{model_config.name}; set it to False")
        if width != 1.0:
            raise ConfigError(f"config.model.width_multiplier={width} must be 1.0 for "
                              f"{model_config.name} (ViTs have fixed widths)")


def _check_loss(loss_config, *, num_views):
    try:
        losses_lib.check_config(loss_config, num_views=num_views)
    except ValueError as err:
        raise ConfigError(_one_line(err)) from err
    # Cross-entropy's option, not supcon_loss's.
    if not 0 <= loss_config.label_smoothing < 1:
        raise ConfigError(
            f"config.loss.label_smoothing={loss_config.label_smoothing} must be in [0, 1)")


def _check_momentum_queue(config):
    """loss.queue_size, model.momentum and loss.cross_entropy_weight (supcon_tf/momentum.py)."""
    loss_config = config.loss
    queue_size, momentum = loss_config.queue_size, config.model.momentum
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 0:
        raise ConfigError(f"config.loss.queue_size={queue_size!r} must be an integer >= 0 "
                          "(0: no momentum queue)")
    weight = loss_config.cross_entropy_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ConfigError(f"config.loss.cross_entropy_weight={weight!r} must be a number >= 0 "
                          "(0: the classifier only monitors)")
    if config.method == "ce" and (queue_size or weight):
        raise ConfigError(
            "config.loss.queue_size and config.loss.cross_entropy_weight apply to supcon and "
            "simclr; method='ce' trains on cross-entropy alone, so set both to 0")
    if not queue_size:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            0 <= momentum < 1):
        raise ConfigError(f"config.model.momentum={momentum!r} must be in [0, 1): the key "
                          "encoder's EMA rate (e.g. 0.999)")
    keys_per_step = config.train.global_batch_size * config.data.num_views
    if queue_size < keys_per_step:
        raise ConfigError(
            f"config.loss.queue_size={queue_size} is smaller than the {keys_per_step} keys "
            "one step enqueues (train.global_batch_size x data.num_views); set it to at least "
            f"{keys_per_step}, or 0 for no queue")
    if loss_config.positives_cap is not None:
        raise ConfigError("config.loss.positives_cap does not combine with a queue; set "
                          "config.loss.positives_cap=None or config.loss.queue_size=0")


def _check_model(model_config):
    for field in ("input_mean", "input_std"):
        value = tuple(model_config[field])
        if len(value) != 3:
            raise ConfigError(f"config.model.{field}={value} must have 3 values, one per "
                              "RGB channel, in [0, 1] pixel units")
    if min(model_config.input_std) <= 0:
        raise ConfigError(f"config.model.input_std={tuple(model_config.input_std)} must be > 0")


def _check_data_fields(config):
    """num_views, crop area, colour strength...: the data module's own checks, one line each,
    for stage one and for stage two's overrides."""
    unknown = sorted(set(config.linear.data) - set(config.data))
    if unknown:
        raise ConfigError(
            f"config.linear.data overrides {', '.join(unknown)}, which config.data does not "
            "have; list only config.data fields there")
    if not 0 <= config.linear.label_smoothing < 1:
        raise ConfigError(
            f"config.linear.label_smoothing={config.linear.label_smoothing} must be in [0, 1)")
    for prefix, data_config in (("", config.data),
                                ("stage two: ", constants.stage_two_data_config(config))):
        try:
            data_lib.ViewSpec.from_data_config(data_config, jpeg=False)
        except ValueError as err:
            raise ConfigError(prefix + _one_line(err)) from err


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


def _check_dataset(config):
    data_config = config.data
    try:
        info = data_lib.dataset_info(data_config)
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise ConfigError(
            f"config.data.name={data_config.name!r} (train_split={data_config.train_split!r}, "
            f"eval_split={data_config.eval_split!r}): {_one_line(err)}") from err
    batches = [("train.global_batch_size", config.train.global_batch_size)]
    if _stage_two_runs(config):
        batches.append(("linear.global_batch_size", config.linear.global_batch_size))
    for field, batch in batches:
        if batch > info.num_train_examples:
            raise ConfigError(
                f"config.{field}={batch} is larger than the {info.num_train_examples} examples "
                f"of {data_config.name}'s {data_config.train_split!r} split; lower it")
    _check_samples_per_class(config, info.num_classes)


def _check_samples_per_class(config, num_classes):
    """Class-balanced batches: M must divide each stage's batch into at most num_classes groups."""
    stages = [("config.data", config.data, "train.global_batch_size",
               config.train.global_batch_size)]
    if _stage_two_runs(config):
        stages.append(("stage two: config.linear.data", constants.stage_two_data_config(config),
                       "linear.global_batch_size", config.linear.global_batch_size))
    for where, data_config, field, batch in stages:
        samples = data_config.get("samples_per_class")
        if not samples:
            continue  # None or 0: uniform batches
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"{where}.samples_per_class={samples!r} must be None (uniform "
                              "batches) or an integer >= 1 images per class")
        if batch % samples:
            raise ConfigError(
                f"config.{field}={batch} is not a multiple of {where}.samples_per_class="
                f"{samples}; set the batch to a multiple of it or samples_per_class to a "
                "divisor of the batch")
        if batch // samples > num_classes:
            fewest = next(m for m in range(-(-batch // num_classes), batch + 1) if batch % m == 0)
            raise ConfigError(
                f"{where}.samples_per_class={samples} puts {batch // samples} classes in each "
                f"batch of config.{field}={batch}, but {config.data.name} has {num_classes}; "
                f"raise samples_per_class to {fewest} or more")


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
