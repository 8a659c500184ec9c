"""Checks a resolved config before any work starts.

main.py calls `validate` right after the strategy exists (the replica count is
known) and before it builds a dataset or a model, so a config that cannot work
fails in a second with one line naming the field and the fix, instead of
minutes later (or hours later, on a pod) with a traceback from deep inside
TensorFlow.

Each module checks the fields it owns (validate lists the calls); this module owns
only FIELD_TYPES, the type of every config field, checked first so that the owners
can compare values. tests/test_configs.py holds the table against every config's
fields.
"""

import tensorflow as tf

from supcon_tf import checkpoints
from supcon_tf import data as data_lib
from supcon_tf import init_from as init_from_lib
from supcon_tf import losses as losses_lib
from supcon_tf import models as models_lib
from supcon_tf import momentum as momentum_lib
from supcon_tf import optim as optim_lib
from supcon_tf import train as train_lib


class ConfigError(ValueError):
    """A config that cannot work; the message is one line naming the field and the fix."""


def validate(config, *, num_replicas, workdir, check_dataset=True):
    """Raises ConfigError for the first problem found in `config`.

    The config's own fields come first; then the dataset (which reads metadata from
    data_dir, or builds the embedded digits once; check_dataset=False skips it, for
    --mode=selfcheck on synthetic data) and last the workdir (created if needed, with a
    probe file written and removed). With config.init_from set, the checks see the
    source's architecture, as the run will.
    """
    check_types(config)
    _owned(_check_init_from, config)
    config = init_from_lib.with_architecture(config)
    _owned(train_lib.check_config, config, num_replicas=num_replicas)
    _owned(optim_lib.check_optim_config, config.optim, prefix="optim")
    _owned(optim_lib.check_optim_config, config.linear.optim, prefix="linear.optim")
    _owned(losses_lib.check_config, config.loss, num_views=config.data.num_views)
    _owned(momentum_lib.check_config, config)
    _owned(models_lib.check_config, config.model, image_size=config.data.image_size)
    _owned(data_lib.check_config, config)
    if check_dataset:
        _owned(data_lib.check_dataset, config)
    _owned(checkpoints.check_writable, workdir)


def _owned(check, *args, **kwargs):
    """Runs a module's own check; its ValueError becomes a one-line ConfigError."""
    try:
        check(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(" ".join(str(err).split()) or type(err).__name__) from err


def _check_init_from(config):
    path = config.get("init_from")
    if not path:
        if config.get("init_from_required"):
            raise ValueError("this config starts from other weights: pass "
                             f"--config.init_from=PATH, {init_from_lib.USAGE}")
        return
    try:
        init_from_lib.check_fits(config)  # locates the source and loads it into its encoder
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise ValueError(f"config.init_from={path!r}: {err}") from err


# ---------------------------------------------------------------- field types


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_numbers(value):
    if isinstance(value, str):
        return False
    try:
        return all(_is_number(v) for v in value)
    except TypeError:
        return False


# kind: (accepts, what the message asks for). A field whose kind ends in "?" may be
# None (a placeholder that stays unset).
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "numbers": (_is_numbers, "a tuple of numbers"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool or str": (lambda v: isinstance(v, (bool, str)), "True, False or a string"),
}
_OPTIM_TYPES = {
    "name": "str", "base_lr": "number", "momentum": "number", "rho": "number",
    "epsilon": "number", "weight_decay": "number", "weight_decay_form": "str",
    "decay_batch_norm": "bool", "warmup_epochs": "number", "warmup_start_lr": "number",
    "schedule": "str", "min_lr_ratio": "number", "decay_epochs": "numbers",
    "decay_every_epochs": "number", "decay_rate": "number",
}
_DATA_TYPES = {
    "name": "str", "data_dir": "str?", "train_split": "str", "eval_split": "str",
    "image_size": "int", "num_views": "int", "augment": "str", "crop_area_min": "number",
    "color_strength": "number", "color_jitter_style": "str", "hflip": "bool", "blur": "bool",
    "blur_probability": "number", "randaugment_layers": "int", "randaugment_magnitude": "int",
    "shuffle_buffer": "int", "samples_per_class": "int?",
}
# Every field of every config, and its kind. config.linear.data holds overrides of
# config.data fields, typed as those.
FIELD_TYPES = {
    "seed": "int", "method": "str", "init_from": "str?", "init_from_required": "bool",
    **{f"data.{name}": kind for name, kind in _DATA_TYPES.items()},
    "model.name": "str", "model.width_multiplier": "number", "model.cifar_stem": "bool",
    "model.sync_bn": "bool", "model.zero_init_last_bn": "bool", "model.conv_init": "str",
    "model.input_mean": "numbers", "model.input_std": "numbers",
    "model.normalize_embedding": "bool", "model.projection_dims": "numbers",
    "model.projection_bn": "bool", "model.projection_output_bias": "bool",
    "model.head_init": "str", "model.classifier_init": "str", "model.momentum": "number",
    "loss.temperature": "number", "loss.base_temperature": "number?", "loss.variant": "str",
    "loss.contrast_mode": "str", "loss.denominator_mode": "str", "loss.positives_cap": "int?",
    "loss.block_size": "int?", "loss.label_smoothing": "number",
    "loss.cross_entropy_views": "str", "loss.cross_entropy_weight": "number",
    "loss.queue_size": "int",
    **{f"optim.{name}": kind for name, kind in _OPTIM_TYPES.items()},
    "train.global_batch_size": "int", "train.epochs": "number", "train.min_steps": "int",
    "train.steps_per_loop": "int", "train.checkpoint_every_steps": "int",
    "train.keep_checkpoints": "int", "train.log_every_steps": "int",
    "train.jit_compile": "bool or str", "train.mixed_precision": "str?",
    "linear.protocol": "str", "linear.bn_mode": "str", "linear.epochs": "number",
    "linear.min_steps": "int", "linear.global_batch_size": "int",
    "linear.label_smoothing": "number",
    **{f"linear.optim.{name}": kind for name, kind in _OPTIM_TYPES.items()},
    "eval.batch_size": "int",
}
STAGE_TWO_OVERRIDES = "linear.data."


def field_kind(field):
    """The kind of a dotted field (a linear.data override has its data field's), or None."""
    if field.startswith(STAGE_TWO_OVERRIDES):
        field = "data." + field[len(STAGE_TWO_OVERRIDES):]
    return FIELD_TYPES.get(field)


def leaves(config, prefix=""):
    """(dotted field, value) of every leaf of a ConfigDict or dict."""
    for name, value in config.items():
        if hasattr(value, "items"):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def check_types(config):
    """Each field listed in FIELD_TYPES that the config has, against its kind. A config
    file can give any field any type; --config.FIELD=VALUE overrides arrive typed."""
    for field, value in leaves(config):
        kind = field_kind(field)
        if kind is None or (value is None and kind.endswith("?")):
            continue
        accepts, wanted = _KINDS[kind.rstrip("?")]
        if not accepts(value):
            wanted += " or None" if kind.endswith("?") else ""
            raise ConfigError(f"config.{field}={value!r} must be {wanted}")
