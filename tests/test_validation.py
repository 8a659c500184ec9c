"""Config validation: each unworkable config gets one clear line, in-process and from main.py.

In-process, `validate` must raise ConfigError (a ValueError) whose one-line
message names the offending field. Through main.py, the same message must be
the error line on stderr, with exit status 2 and no traceback; those runs start
in parallel since each pays for a TensorFlow import.
"""

import os
import subprocess
import sys

import pytest

from conftest import load_config

from supcon_tf import config_validation
from supcon_tf.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = "configs/digits.py:tiny"
MAIN_TIMEOUT_S = 240


def tiny_config():
    return load_config("digits.py", "tiny")


def unwritable_workdir(tmp_path):
    # Permissions do not stop root, but nobody can create a directory inside a file.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return str(blocker / "workdir")


def set_field(config, dotted, value):
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value


def error_for(config, *, num_replicas=1, workdir):
    with pytest.raises(ConfigError) as raised:
        config_validation.validate(config, num_replicas=num_replicas, workdir=workdir)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_valid_tiny_config_passes_on_one_and_eight_replicas(tmp_path):
    workdir = str(tmp_path / "new" / "workdir")
    for num_replicas in (1, 8):  # tiny batches are 32 (train) and 64 (linear)
        config_validation.validate(tiny_config(), num_replicas=num_replicas, workdir=workdir)
    # The workdir was created and the probe file removed.
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("field, batch, num_replicas", [
    ("train.global_batch_size", 30, 8),
    ("train.global_batch_size", 32, 3),
    ("linear.global_batch_size", 60, 8),
    ("eval.batch_size", 100, 8),
    ("train.global_batch_size", 0, 1),
])
def test_global_batch_must_divide_over_replicas(tmp_path, field, batch, num_replicas):
    config = tiny_config()
    set_field(config, field, batch)
    message = error_for(config, num_replicas=num_replicas, workdir=str(tmp_path))
    assert f"config.{field}={batch}" in message
    assert f"{num_replicas} replicas" in message


@pytest.mark.parametrize("field, value", [
    ("model.name", "resnet51"),
    ("data.augment", "simaugmentt"),
    ("method", "supcon2"),
    ("optim.name", "lamb"),
    ("linear.optim.name", "lamb"),
    ("optim.schedule", "linear"),
    ("data.name", "mnist_typo"),
    ("loss.denominator_mode", "some"),
    ("loss.cross_entropy_views", "second"),
    ("linear.protocol", "cache"),
    ("linear.bn_mode", "train"),
    ("model.conv_init", "he"),
])
def test_unknown_names(tmp_path, field, value):
    config = tiny_config()
    set_field(config, field, value)
    message = error_for(config, workdir=str(tmp_path))
    assert f"config.{field}={value!r} is unknown" in message
    # The fix lists the valid names, including the one the tiny config uses.
    valid_example = {"model.name": "resnet18", "data.augment": "simaugment", "method": "supcon",
                     "optim.name": "sgd", "linear.optim.name": "sgd", "optim.schedule": "cosine",
                     "data.name": "digits", "loss.denominator_mode": "only_negatives",
                     "loss.cross_entropy_views": "first", "linear.protocol": "augmented",
                     "linear.bn_mode": "batch_stats", "model.conv_init": "fan_out_normal"}[field]
    assert valid_example in message


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan")])
def test_temperature_must_be_positive(tmp_path, temperature):
    config = tiny_config()
    config.loss.temperature = temperature
    assert "config.loss.temperature" in error_for(config, workdir=str(tmp_path))


@pytest.mark.parametrize("field, value, expected", [
    ("loss.positives_cap", 3, "multiple of config.data.num_views=2"),
    ("loss.base_temperature", -1.0, "config.loss.base_temperature=-1.0 must be > 0"),
    ("loss.block_size", 0, "config.loss.block_size=0"),
    ("loss.label_smoothing", 1.0, "config.loss.label_smoothing=1.0"),
    ("linear.label_smoothing", -0.1, "config.linear.label_smoothing=-0.1"),
    ("model.input_std", (0.5, 0.0, 0.5), "config.model.input_std"),
    ("optim.weight_decay_form", "decoupled_l2", "config.optim.weight_decay_form"),
    ("linear.optim.weight_decay", -1e-4, "config.linear.optim.weight_decay"),
])
def test_field_values(tmp_path, field, value, expected):
    config = tiny_config()
    set_field(config, field, value)
    assert expected in error_for(config, workdir=str(tmp_path))


@pytest.mark.parametrize("field, value, expected", [
    ("train.epochs", 0, "config.train.epochs=0 must be > 0"),
    ("linear.epochs", -1, "config.linear.epochs=-1 must be > 0"),
    ("train.global_batch_size", 2048, "larger than the 1437 examples"),
    ("linear.global_batch_size", 4096, "config.linear.global_batch_size=4096 is larger"),
])
def test_epochs_and_batches_must_fit_the_dataset(tmp_path, field, value, expected):
    config = tiny_config()
    set_field(config, field, value)
    assert expected in error_for(config, workdir=str(tmp_path))


def test_stage_two_overrides_must_name_data_fields(tmp_path):
    config = tiny_config()
    config.linear.data.augmentation = "crop_flip"  # a typo of augment
    assert "config.linear.data overrides augmentation" in error_for(config,
                                                                   workdir=str(tmp_path))
    config = tiny_config()
    config.linear.data.num_views = 0
    assert "stage two: config.data.num_views" in error_for(config, workdir=str(tmp_path))


@pytest.mark.parametrize("model_name, cifar_stem, image_size, smallest", [
    ("resnet18", False, 16, 32),   # 7x7/2 stem + max-pool + 3 strided stages: stride 32
    ("resnet50", True, 4, 8),      # CIFAR stem: stride 8 (also below the crop minimum)
    ("vit_b16", False, 8, 16),     # smaller than one 16x16 patch
])
def test_image_size_too_small_for_architecture(tmp_path, model_name, cifar_stem, image_size,
                                               smallest):
    config = tiny_config()
    config.model.name = model_name
    config.model.cifar_stem = cifar_stem
    config.model.width_multiplier = 1.0  # a ViT's only width
    config.data.image_size = image_size
    message = error_for(config, workdir=str(tmp_path))
    assert f"config.data.image_size={image_size}" in message
    if image_size >= 8:  # the data module's own crop minimum is 8; above it, the model decides
        assert f"at least {smallest}" in message


def test_vit_image_size_must_be_whole_patches(tmp_path):
    config = tiny_config()
    config.model.name, config.model.cifar_stem, config.data.image_size = "vit_b16", False, 40
    config.model.width_multiplier = 1.0
    message = error_for(config, workdir=str(tmp_path))
    assert "config.data.image_size=40" in message and "patch" in message


def test_num_views_checked_by_data_module(tmp_path):
    config = tiny_config()
    config.data.num_views = 0
    assert "config.data.num_views" in error_for(config, workdir=str(tmp_path))


def test_dataset_not_prepared(tmp_path):
    config = tiny_config()
    config.data.name, config.data.data_dir = "cifar10", str(tmp_path / "empty_data_dir")
    message = error_for(config, workdir=str(tmp_path / "workdir"))
    assert "config.data.name='cifar10'" in message
    assert "tfds build cifar10" in message  # says how to prepare it


def test_selfcheck_validation_skips_only_the_dataset(tmp_path):
    config = tiny_config()
    config.data.name, config.data.data_dir = "cifar10", str(tmp_path / "empty_data_dir")
    config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "workdir"),
                               check_dataset=False)
    config.train.global_batch_size = 30  # the config's own fields are still checked
    with pytest.raises(ConfigError, match="config.train.global_batch_size=30"):
        config_validation.validate(config, num_replicas=8, workdir=str(tmp_path / "workdir"),
                                   check_dataset=False)


def test_workdir_not_writable(tmp_path):
    workdir = unwritable_workdir(tmp_path)
    message = error_for(tiny_config(), workdir=workdir)
    assert f"--workdir={workdir} is not writable" in message


# ---------------------------------------------------------------- through main.py


def main_cases(tmp_path):
    """name -> (extra main.py flags, config edit giving the same error in-process, workdir)."""
    empty_data_dir = str(tmp_path / "empty_data_dir")
    unwritable = unwritable_workdir(tmp_path)
    return {
        "architecture": (["--config.model.name=resnet51"],
                         lambda c: set_field(c, "model.name", "resnet51"), None),
        "temperature": (["--config.loss.temperature=0"],
                        lambda c: set_field(c, "loss.temperature", 0.0), None),
        "image_size": (["--config.model.cifar_stem=False"],
                       lambda c: set_field(c, "model.cifar_stem", False), None),
        "dataset": (["--config.data.name=cifar10", f"--config.data.data_dir={empty_data_dir}"],
                    lambda c: (set_field(c, "data.name", "cifar10"),
                               set_field(c, "data.data_dir", empty_data_dir)), None),
        "workdir": ([], lambda c: None, unwritable),
    }


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory):
    """Starts main.py once per case, all at once; yields name -> (cases entry, CompletedProcess)."""
    tmp_path = tmp_path_factory.mktemp("main_validation")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    cases = main_cases(tmp_path)
    processes = {}
    for name, (flags, _, workdir) in cases.items():
        workdir = workdir or str(tmp_path / f"workdir_{name}")
        command = [sys.executable, "main.py", f"--config={TINY_CONFIG}", f"--workdir={workdir}",
                   *flags]
        processes[name] = (workdir, subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = {}
    try:
        for name, (workdir, process) in processes.items():
            stdout, stderr = process.communicate(timeout=MAIN_TIMEOUT_S)
            results[name] = (cases[name], workdir, process.returncode, stdout + stderr)
    finally:
        for _, process in processes.values():
            if process.poll() is None:
                process.kill()
    return results


@pytest.mark.parametrize("case",
                         ["architecture", "temperature", "image_size", "dataset", "workdir"])
def test_main_exits_2_with_one_error_line(main_runs, case):
    (_, edit, _), workdir, returncode, output = main_runs[case]
    config = tiny_config()
    edit(config)
    expected = error_for(config, workdir=workdir)
    assert returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    error_lines = [line for line in output.splitlines() if expected in line]
    assert len(error_lines) == 1, output[-3000:]
    # Nothing was built or trained: no checkpoint, no results.
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    assert not os.path.exists(os.path.join(workdir, "results.json"))


@pytest.mark.parametrize("flags, expected", [
    (["--config=configs/no_such_config.py"], "No such file or directory"),
    ([f"--config={TINY_CONFIG}", "--config.optim.lerning_rate=0.1"], "is not a field"),
    (["--config=configs/digits.py:huge"], "takes no argument or 'tiny'"),
    ([f"--config={TINY_CONFIG}", "--config.train.epochs=abc"], "--config.train.epochs=abc"),
    ([f"--config={TINY_CONFIG}", "--config.train.epochs=0"], "config.train.epochs=0"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, expected):
    done = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path}", *flags], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                          text=True, timeout=MAIN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], output[-3000:]


def test_eval_without_a_checkpoint_says_so_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "main.py", f"--config={TINY_CONFIG}", "--mode=eval",
                           f"--workdir={tmp_path}"], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                          text=True, timeout=MAIN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert f"error: no checkpoint in {tmp_path}/checkpoints; run --mode=train first" in output
