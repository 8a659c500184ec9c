"""Every config field and every flag: a bad value is one line naming it, and no traceback.

FIELD_CASES holds bad values for every leaf of configs/digits.py;
test_every_digits_field_has_a_case fails when a leaf has no row. Each row runs
in-process through config_validation.validate, which main.py turns into exit
status 2. ENTRY_POINT_CASES run main.py, export_hub.py and
`python -m supcon_tf.analysis` as a user does, several at a time (a run that gets
past the flags pays for a TensorFlow import), some with TF_CONFIG set, and check the
exit status, the one `error:` line and that no traceback is printed.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

from conftest import free_loopback_ports, import_main, load_config

from supcon_tf import config_validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = "configs/digits.py:tiny"
A_FILE = "<a file>"  # replaced by the path of an existing file
TIMEOUT_S = 240
PARALLEL_RUNS = 6


def case(field, value, expected=None, **also):
    """A bad `value` for `field`; `expected` (default "config.FIELD=") must be in the error;
    `also` sets other fields first (dots as "__"), for values only some settings read."""
    also = {name.replace("__", "."): setting for name, setting in also.items()}
    return pytest.param(field, value, expected or f"config.{field}=", also,
                        id=f"{field}={value!r}")


def optim_cases(prefix):
    return [
        case(f"{prefix}.name", "lamb"),
        case(f"{prefix}.base_lr", 0.0),
        case(f"{prefix}.base_lr", "0.1"),
        case(f"{prefix}.momentum", 1.0),
        case(f"{prefix}.rho", 1.0, **{f"{prefix}__name": "rmsprop"}),
        case(f"{prefix}.epsilon", 0.0, **{f"{prefix}__name": "rmsprop"}),
        case(f"{prefix}.weight_decay", -1e-4),
        case(f"{prefix}.weight_decay_form", "decoupled_l2"),
        case(f"{prefix}.decay_batch_norm", "no"),
        case(f"{prefix}.warmup_epochs", -1),
        case(f"{prefix}.warmup_start_lr", -0.1),
        case(f"{prefix}.schedule", "linear"),
        case(f"{prefix}.min_lr_ratio", 1.5),
        case(f"{prefix}.decay_epochs", (5, 2), **{f"{prefix}__schedule": "piecewise"}),
        case(f"{prefix}.decay_epochs", "5"),
        case(f"{prefix}.decay_every_epochs", 0.0, **{f"{prefix}__schedule": "exponential"}),
        case(f"{prefix}.decay_rate", 0.0, **{f"{prefix}__schedule": "exponential"}),
    ]


FIELD_CASES = [
    case("seed", -1),
    case("seed", 2**32),
    case("seed", 1.5),
    case("method", "supcon2"),
    # --- data
    case("data.name", "mnist_typo"),
    case("data.data_dir", A_FILE, "config.data.name='digits'"),
    case("data.data_dir", 5),
    case("data.train_split", "trian", "train_split='trian'"),
    case("data.train_split", 0),
    case("data.eval_split", "tset", "eval_split='tset'"),
    case("data.image_size", 4),
    case("data.image_size", 8.5),
    case("data.num_views", 0),
    case("data.num_views", 2.0),
    case("data.augment", "simaugmentt"),
    case("data.crop_area_min", 0.0),
    case("data.crop_area_min", 1.5),
    case("data.color_strength", -0.5),
    case("data.color_strength", 3.0),
    case("data.color_jitter_style", "keras"),
    case("data.hflip", "no"),
    case("data.blur", "yes"),
    case("data.blur_probability", 1.5),
    case("data.randaugment_layers", -1, data__augment="randaugment"),
    case("data.randaugment_magnitude", 11, data__augment="randaugment"),
    case("data.shuffle_buffer", -1),
    # --- model
    case("model.name", "resnet51"),
    case("model.width_multiplier", 0.0),
    case("model.cifar_stem", "true"),
    case("model.sync_bn", "false"),
    case("model.zero_init_last_bn", 1),
    case("model.conv_init", "he"),
    case("model.input_mean", (0.5, 0.5)),
    case("model.input_mean", "abc"),
    case("model.input_std", (0.5, 0.0, 0.5)),
    case("model.normalize_embedding", "yes"),
    case("model.projection_dims", ()),
    case("model.projection_dims", (128, 0)),
    case("model.projection_dims", (12.5,)),
    case("model.projection_bn", None),
    case("model.projection_output_bias", "no"),
    case("model.head_init", "xavier"),
    case("model.classifier_init", "xavier"),
    # --- loss
    case("loss.temperature", 0.0),
    case("loss.temperature", "0.1"),
    case("loss.base_temperature", -1.0),
    case("loss.variant", "middle"),
    case("loss.contrast_mode", "some"),
    case("loss.denominator_mode", "some"),
    case("loss.positives_cap", 3),
    case("loss.positives_cap", -2),
    case("loss.block_size", 0),
    case("loss.block_size", 2.5),
    case("loss.label_smoothing", 1.0),
    case("loss.cross_entropy_views", "second"),
    # --- optimizers, both stages
    *optim_cases("optim"),
    *optim_cases("linear.optim"),
    # --- training loop
    case("train.global_batch_size", 2048, "config.train.global_batch_size=2048 is larger"),
    case("train.global_batch_size", 0),
    case("train.global_batch_size", 64.0),
    case("train.epochs", 0),
    case("train.epochs", "1"),
    case("train.steps_per_loop", 0),
    case("train.steps_per_loop", 1.5),
    case("train.min_steps", -1),
    case("linear.min_steps", 2.5),
    case("train.checkpoint_every_steps", -1),
    case("train.keep_checkpoints", 0),
    case("train.log_every_steps", -1),
    case("train.jit_compile", "yes"),
    case("train.jit_compile", 1),
    case("train.mixed_precision", "float17"),
    # --- stage two
    case("linear.protocol", "cache"),
    case("linear.bn_mode", "train"),
    case("linear.data.num_views", 0, "stage two: config.data.num_views=0"),
    case("linear.data.augmentation", "crop_flip", "config.linear.data overrides augmentation"),
    case("linear.epochs", 0),
    case("linear.global_batch_size", 4096, "config.linear.global_batch_size=4096 is larger"),
    case("linear.label_smoothing", -0.1),
    # --- evaluation
    case("eval.batch_size", 0),
    case("eval.batch_size", "64"),
    # --- fields added after this table was written: add their rows here.
    case("init_from", A_FILE),
    case("init_from_required", "yes"),
    case("loss.queue_size", -1),
    case("loss.cross_entropy_weight", -1.0),
    case("model.momentum", 1.0, loss__queue_size=1024),
    case("data.samples_per_class", -1),
]

# Leaves that no value can make unworkable; each needs a reason. (None yet.)
FIELDS_WITHOUT_CASES = {}


def leaves(config, prefix=""):
    for name, value in config.items():
        if hasattr(value, "items"):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def set_field(config, dotted, value):
    """Sets config.dotted even to a value of another type, as a config file can."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config[name]
    with config.ignore_type():
        config[leaf] = value


def test_every_digits_field_has_a_case():
    covered = {param.values[0] for param in FIELD_CASES}
    for arg in (None, "tiny"):
        missing = set(leaves(load_config("digits.py", arg))) - covered - set(FIELDS_WITHOUT_CASES)
        assert not missing, (f"add a row with a bad value to FIELD_CASES (or a reason to "
                             f"FIELDS_WITHOUT_CASES) for: {', '.join(sorted(missing))}")


@pytest.mark.parametrize("field, value, expected, also", FIELD_CASES)
def test_bad_field_is_one_line_naming_it(tmp_path, field, value, expected, also):
    config = load_config("digits.py", "tiny")
    config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "valid"))
    for other, setting in also.items():
        set_field(config, other, setting)
    # The row's other settings are workable on their own, so the error is the field's.
    config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "valid"))
    if value == A_FILE:
        value = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("not a directory")
    set_field(config, field, value)
    with pytest.raises(config_validation.ConfigError) as raised:
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "workdir"))
    message = str(raised.value)
    assert "\n" not in message and expected in message, message


@pytest.mark.parametrize("field, value, expected", [
    ("model.width_multiplier", 0.5, "config.model.width_multiplier=0.5 must be 1.0 for vit_tiny"),
    ("model.cifar_stem", True, "config.model.cifar_stem=True applies to ResNets only"),
])
def test_vit_has_fixed_width_and_stem(tmp_path, field, value, expected):
    config = load_config("digits.py", "tiny")
    config.model.name, config.data.image_size = "vit_tiny", 32
    config.model.width_multiplier, config.model.cifar_stem = 1.0, False
    config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))
    set_field(config, field, value)
    with pytest.raises(config_validation.ConfigError, match=expected):
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))


# ---------------------------------------------------------------- through the entry points

MAIN = ("main.py", f"--config={TINY_CONFIG}", "--workdir={tmp}/run")
EXPORT = ("export_hub.py",)
ANALYSIS = ("-m", "supcon_tf.analysis")


def with_tf_config(tf_config):
    """The environment of a case: TF_CONFIG set to tf_config (a dict, or text as is)."""
    return {"TF_CONFIG": tf_config if isinstance(tf_config, str) else json.dumps(tf_config)}


TWO_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}

# name: (command after `python`, exit status, text of the one error line[, environment])
# {tmp} is the case's tmp dir; {closed_port}, a loopback port nothing listens on.
ENTRY_POINT_CASES = {
    # main.py, refused while parsing flags (before TensorFlow loads)
    "main_no_config": (("main.py",), 2, "--config must have a value"),
    "main_mode": (MAIN + ("--mode=fast",), 2, "--mode=fast"),
    "main_positional": (MAIN + ("extra",), 2, "unexpected arguments extra"),
    "main_bool_value": (MAIN + ("--config.data.hflip=maybe",), 2, "--config.data.hflip=maybe"),
    "main_int_value": (MAIN + ("--config.seed=1.5",), 2, "--config.seed=1.5"),
    # main.py, refused by config_validation or the strategy
    "main_steps_per_loop": (MAIN + ("--config.train.steps_per_loop=0",), 2,
                            "config.train.steps_per_loop=0 must be >= 1"),
    "main_tuple_value": (MAIN + ("--config.model.projection_dims=(0,)",), 2,
                         "config.model.projection_dims=(0,)"),
    "main_tpu": (MAIN + ("--tpu=no-such-tpu",), 2, "--tpu=no-such-tpu cannot be used"),
    "main_tpu_unreachable": (MAIN + ("--tpu=grpc://127.0.0.1:{closed_port}",), 2,
                             "--tpu=grpc://127.0.0.1:{closed_port} cannot be used: "
                             "127.0.0.1:{closed_port}: cannot connect"),
    # main.py with a bad TF_CONFIG, refused before TensorFlow loads
    "main_tf_config_not_json": (MAIN, 2, "TF_CONFIG is not JSON", with_tf_config("{worker")),
    "main_tf_config_no_cluster": (MAIN, 2, 'TF_CONFIG has no "cluster"', with_tf_config(
        {"task": {"type": "worker", "index": 0}})),
    "main_tf_config_no_task": (MAIN, 2, 'TF_CONFIG has no "task"', with_tf_config(
        {"cluster": TWO_WORKERS})),
    "main_tf_config_no_type": (MAIN, 2, 'TF_CONFIG task has no "type"', with_tf_config(
        {"cluster": TWO_WORKERS, "task": {"index": 0}})),
    "main_tf_config_no_index": (MAIN, 2, 'TF_CONFIG task has no "index"', with_tf_config(
        {"cluster": TWO_WORKERS, "task": {"type": "worker"}})),
    "main_tf_config_index_out_of_range": (
        MAIN, 2, "TF_CONFIG task index 2 is out of range: cluster 'worker' has 2 address(es)",
        with_tf_config({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}})),
    "main_tf_config_task_type": (
        MAIN, 2, "TF_CONFIG task type 'chief' is not a job of the cluster",
        with_tf_config({"cluster": TWO_WORKERS, "task": {"type": "chief", "index": 0}})),
    "main_tf_config_address": (
        MAIN, 2, "TF_CONFIG cluster 'worker' address 1 is 'localhost'",
        with_tf_config({"cluster": {"worker": ["127.0.0.1:2001", "localhost"]},
                        "task": {"type": "worker", "index": 0}})),
    # export_hub.py
    "export_no_export_dir": (EXPORT + ("--workdir={tmp}/run",), 2,
                             "--export_dir must have a value"),
    "export_bool_value": (EXPORT + ("--workdir={tmp}/run", "--export_dir={tmp}/hub",
                                    "--overwrite=maybe"), 2, "--overwrite"),
    "export_positional": (EXPORT + ("--workdir={tmp}/run", "--export_dir={tmp}/hub", "extra"), 2,
                          "unexpected arguments extra"),
    "export_checkpoint": (EXPORT + ("--workdir={tmp}/untrained", "--export_dir={tmp}/hub",
                                    "--checkpoint={tmp}/ckpt-9"), 1,
                          "--checkpoint {tmp}/ckpt-9 not found"),
    # python -m supcon_tf.analysis
    "analysis_not_an_export": (ANALYSIS + ("--export_dir={tmp}", "--output_dir={tmp}/out"), 2,
                               "{tmp}/export_info.json not found"),
    "analysis_config": (ANALYSIS + ("--export_dir={tmp}", "--output_dir={tmp}/out",
                                    "--config=configs/no_such_config.py"), 2,
                        "No such file or directory"),
    "analysis_plot_method": (ANALYSIS + ("--export_dir={tmp}", "--output_dir={tmp}/out",
                                         "--plot_method=umap"), 2, "--plot_method=umap"),
    "analysis_k": (ANALYSIS + ("--export_dir={tmp}", "--output_dir={tmp}/out", "--k=0"), 2,
                   "--k=0"),
}


def run_entry_point(command, tmp, environment=None):
    command = [sys.executable] + [part.format(tmp=tmp, closed_port=CLOSED_PORT)
                                  for part in command]
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the entry points' own default
    env.pop("TF_CONFIG", None)
    env.update(environment or {})
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


CLOSED_PORT = free_loopback_ports(1)[0]


@pytest.fixture(scope="module")
def entry_point_runs(tmp_path_factory):
    """name -> (tmp dir, CompletedProcess), each case in its own tmp dir, PARALLEL_RUNS at once."""
    tmps = {}
    for name in ENTRY_POINT_CASES:
        tmp = tmp_path_factory.mktemp(name)
        untrained = tmp / "untrained"  # what main.py writes before the first checkpoint
        untrained.mkdir()
        config = load_config("digits.py", "tiny").to_dict()
        (untrained / "config.json").write_text(json.dumps(dict(config, num_classes=10)))
        tmps[name] = str(tmp)
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {name: pool.submit(run_entry_point, ENTRY_POINT_CASES[name][0], tmps[name],
                                     *ENTRY_POINT_CASES[name][3:])
                   for name in ENTRY_POINT_CASES}
        return {name: (tmps[name], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("name", ENTRY_POINT_CASES)
def test_entry_point_exits_with_one_error_line(entry_point_runs, name):
    _, status, expected, *_ = ENTRY_POINT_CASES[name]
    tmp, done = entry_point_runs[name]
    expected = expected.format(tmp=tmp, closed_port=CLOSED_PORT)
    output = done.stdout + done.stderr
    assert done.returncode == status, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], output[-3000:]
    # Nothing but the run's own lines: TensorFlow's start-up stays off the terminal.
    others = [line for line in done.stderr.splitlines()
              if not line.startswith("error: ") and "main.py:" not in line
              and "strategy.py:" not in line]
    assert not others, output[-3000:]


def test_main_modes_are_train_modes_describe_selfcheck_and_continuous_eval(monkeypatch):
    main = import_main(monkeypatch)
    from supcon_tf import constants

    assert main.MODES == constants.MODES + ("describe", "selfcheck", "continuous_eval")
