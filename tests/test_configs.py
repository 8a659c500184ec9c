"""Every config in configs/ loads, follows the team schema, and builds its model and optimizers."""

import glob
import importlib.util
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from supcon_tf import config_validation, constants, data, models, optim, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
# Fields whose default is None in some config: typed placeholders, so main.py can set them.
NONE_DEFAULT_OVERRIDES = {
    "data.data_dir": ("gs://bucket/tensorflow_datasets", "gs://bucket/tensorflow_datasets"),
    "loss.block_size": ("512", 512),
    "loss.positives_cap": ("4", 4),
    "train.mixed_precision": ("mixed_float16", "mixed_float16"),
}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg)


def section(config, dotted):
    for part in filter(None, dotted.split(".")):
        config = config[part]
    return config


def test_the_issue_lists_every_experiment():
    names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
    expected = {"imagenet_r50", "imagenet_r101", "imagenet_r200", "imagenet_r50_ce",
                "imagenet_r50_simclr", "digits", "digits_ce"}
    for dataset in ("cifar10", "cifar100"):
        expected |= {f"{dataset}_r50", f"{dataset}_r50_ce", f"{dataset}_r50_simclr"}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_follows_schema_and_documents_itself(path):
    module, config = load(path)
    doc = module.__doc__
    name = os.path.basename(path)
    for heading in ("Paper row", "Command:", "Expected", "ardware"):
        assert heading in doc, f"{name} docstring lacks {heading!r}"
    assert f"python main.py --config=configs/{name}" in doc
    # config_validation.FIELD_TYPES, the one table of fields, against the config's leaves.
    fields = dict(config_validation.leaves(config))
    missing = set(config_validation.FIELD_TYPES) - set(fields)
    assert not missing, f"{name} lacks config.{', config.'.join(sorted(missing))}"
    untyped = [field for field in fields if config_validation.field_kind(field) is None]
    assert not untyped, f"{name}: add config.{', config.'.join(untyped)} to FIELD_TYPES"
    config_validation.check_types(config)
    assert config.method in constants.METHODS
    assert config.data.name in data.DATASETS
    assert config.model.name in models.ENCODER_NAMES
    assert config.optim.name in optim.OPTIMIZERS and config.linear.optim.name in optim.OPTIMIZERS
    assert str(config.train.jit_compile).lower() in ("true", "false", "auto")
    # The input pipeline's own validation of every augmentation field.
    data.ViewSpec.from_data_config(config.data, jpeg=config.data.name == "imagenet2012")
    data.ViewSpec.from_data_config(train.stage_two_data_config(config),
                                   jpeg=config.data.name == "imagenet2012")
    unknown = set(config.linear.data) - set(config.data)
    assert not unknown, f"{name}: config.linear.data overrides unknown fields {unknown}"
    assert config.train.global_batch_size % 8 == 0 or config.data.name == "digits"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_none_defaults_can_be_overridden_on_the_command_line(path):
    """As main.py parses them: --config.data.data_dir=gs://... and the like."""
    _, default = load(path)
    argv = ["main.py", f"--config={path}"]
    argv += [f"--config.{field}={text}" for field, (text, _) in NONE_DEFAULT_OVERRIDES.items()]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    for field, (_, value) in NONE_DEFAULT_OVERRIDES.items():
        assert section(default, field) in (None, "mixed_bfloat16")
        assert section(config, field) == value and type(section(config, field)) is type(value)


def distinct_model_slices():
    seen = {}
    for path in CONFIG_FILES:
        _, config = load(path)
        key = repr(sorted(config.model.items()))
        seen.setdefault(key, (os.path.basename(path), config))
    return list(seen.values())


@pytest.mark.parametrize("name,config", distinct_model_slices(), ids=lambda v: v if isinstance(v, str) else "")
def test_model_and_optimizers_build(name, config):
    # Real depth and width; a small image keeps this quick (the stem bounds it below by 32).
    image_size = min(config.data.image_size, 32)
    model = models.build_model(config.model, num_classes=NUM_CLASSES[config.data.name],
                               image_size=image_size)
    assert model.encoder.output_shape[-1] > 0
    variables = train.trained_variables(model, config.method)
    optimizer = optim.build_optimizer(config.optim, variables,
                                      global_batch_size=config.train.global_batch_size,
                                      steps_per_epoch=10, total_steps=10 * config.train.epochs,
                                      batch_norm_variables=optim.batch_norm_variables(model))
    assert optimizer.iterations.numpy() == 0
    head = models.linear_head(NUM_CLASSES[config.data.name], init=config.model.classifier_init)
    head.build((None, model.encoder.output_shape[-1]))
    optim.build_optimizer(config.linear.optim, head.trainable_variables,
                          global_batch_size=config.linear.global_batch_size,
                          steps_per_epoch=10, total_steps=10 * config.linear.epochs)


@pytest.mark.parametrize("name", ["digits.py", "digits_ce.py"])
def test_tiny_variants(name):
    _, real = load(os.path.join(REPO, "configs", name))
    _, tiny = load(os.path.join(REPO, "configs", name), "tiny")
    assert tiny.method == real.method
    assert tiny.train.epochs <= real.train.epochs and tiny.data.image_size <= real.data.image_size
    with pytest.raises(ValueError, match=re.escape(name)):
        load(os.path.join(REPO, "configs", name), "huge")
