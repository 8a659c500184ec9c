r"""Trains and evaluates Supervised Contrastive Learning from a config file.

  python main.py --config=configs/digits.py --workdir=/tmp/supcon_digits
  python main.py --config=configs/imagenet_r50.py --workdir=gs://bucket/run --tpu=my-tpu
  python main.py --config=configs/digits.py:tiny --config.seed=1 --mode=train
  python main.py --config=configs/imagenet_r50.py --mode=describe   # the recipe as JSON
  python main.py --config=configs/digits.py --mode=selfcheck        # is the strategy right?
  python main.py --config=configs/digits.py --workdir=W --mode=continuous_eval  # the evaluator job

--workdir defaults to ./runs/<config file name>[_<arg>]. The same command resumes
from the latest checkpoint there. Exit status 143 means SIGTERM arrived and a
checkpoint was saved: run the command again to continue.
"""

import json
import os
import sys
import time

START_TIME = time.time()  # wall time in results.json counts start-up too

# TensorFlow's BFC allocator keeps freed host memory for reuse; the default one
# returns large buffers (decoded images, views, batches) to the OS and then pays
# page faults to touch them again. With BFC the ImageNet input pipeline runs 1.2x
# faster (benchmarks/input_bench.py). TensorFlow reads this once, at start-up:
# set TF_CPU_ALLOCATOR_USE_BFC=false to keep the default allocator.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from supcon_tf import cli, constants  # noqa: E402

cli.quiet_tensorflow_startup()  # before TensorFlow loads; see supcon_tf/cli.py

# constants imports no TensorFlow, so the flags parse before TensorFlow loads.
MODES = constants.MODES + ("describe", "selfcheck", "continuous_eval")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/digits.py or configs/digits.py:tiny; "
    "fields can be overridden with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, summaries, config.json and results.json go here (local "
    "or gs://). Default: ./runs/<config name>.")
_TPU = flags.DEFINE_string(
    "tpu", None, "TPU name, grpc:// address, or 'local' on a TPU VM. Unset: GPUs if any, "
    "else the CPU; with TF_CONFIG set, multi-worker mirrored.")
_MODE = flags.DEFINE_enum(
    "mode", "train_then_eval", MODES,
    "train: stage one only; eval: stage two on the latest checkpoint; describe: print the "
    "effective recipe as one JSON line, without data or training; selfcheck: a few steps of "
    "each stage on synthetic data, checked against the host CPU, with throughput (a table, "
    "then one JSON line; exit status 1 if a check fails); continuous_eval: evaluate each new "
    "stage-one checkpoint in the workdir as a trainer writes it (docs/continuous_eval.md).")
_EVAL_WITH = flags.DEFINE_list(
    "eval_with", ["online", "knn"], "continuous_eval: online (the model's own classifier), "
    "knn (on the encoder's embedding, the train split as memory bank), or both.")
_EVAL_TIMEOUT_S = flags.DEFINE_float(
    "eval_timeout_s", 3600.0, "continuous_eval: stop when no new checkpoint has appeared for "
    "this many seconds.", lower_bound=0.0)
_EVAL_POLL_S = flags.DEFINE_float(
    "eval_poll_s", 30.0, "continuous_eval: seconds between looks at the checkpoint directory.",
    lower_bound=0.0)
flags.mark_flag_as_required("config")


def default_workdir(config_argument):
    """./runs/imagenet_r50 for configs/imagenet_r50.py, ./runs/digits_tiny for ...:tiny."""
    path, _, arg = config_argument.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{arg}" if arg else name)


def parse_flags(argv):
    return cli.parse_flags(argv, config_flags=[_CONFIG])


def main(argv):
    del argv  # parse_flags refused positional arguments
    cli.show_library_info_off(__file__)
    from supcon_tf import strategy as strategy_lib  # loads no TensorFlow

    if _MODE.value != "describe":
        # TF_CONFIG and a grpc:// --tpu are checked before TensorFlow sees them: one line,
        # and an unreachable TPU fails within strategy_lib.TPU_PROBE_TIMEOUT_S.
        try:
            strategy_lib.check_environment(_TPU.value)
        except strategy_lib.StrategyError as error:
            cli.fail(error, 2)
    # Imported after the flags parse, so a bad flag fails before TensorFlow loads.
    startup_log = cli.import_tensorflow_quietly()
    from supcon_tf import config_validation, describe, train

    if _MODE.value == "describe":
        try:
            recipe = describe.describe(_CONFIG.value)
        except ValueError as error:
            cli.fail(error, 2)
        print(json.dumps(recipe, sort_keys=True))
        return
    workdir = _WORKDIR.value or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    if _TPU.value and _TPU.value != "local" and not workdir.startswith("gs://"):
        logging.warning("a remote TPU cannot write to the local workdir %s; use gs://", workdir)
    logging.info("workdir %s, mode %s", workdir, _MODE.value)
    try:
        strategy = strategy_lib.make_strategy(_TPU.value)
    except strategy_lib.StrategyError as error:
        cli.fail(error, 2)
    try:
        # selfcheck reads no data: a dataset not prepared yet is no reason to stop it.
        config_validation.validate(_CONFIG.value, num_replicas=strategy.num_replicas_in_sync,
                                   workdir=workdir, check_dataset=_MODE.value != "selfcheck")
    except config_validation.ConfigError as error:
        cli.fail(error, 2)
    if _MODE.value == "continuous_eval":
        run_continuous_eval(workdir, strategy, startup_log)
        return
    cli.save_startup_log(workdir, startup_log)
    if _MODE.value == "selfcheck":
        run_selfcheck(workdir, strategy)
        return
    try:
        train.run(_CONFIG.value, workdir, strategy, _MODE.value, start_time=START_TIME)
    except train.Preempted as preempted:
        logging.warning("%s", preempted)
        sys.exit(143)
    except (FloatingPointError, FileNotFoundError) as error:  # divergence; eval without a run
        cli.fail(error, 1)


def run_selfcheck(workdir, strategy):
    """--mode=selfcheck: the table and the JSON line on stdout; exit status 1 on a failed check."""
    from supcon_tf import selfcheck

    try:
        report = selfcheck.run(_CONFIG.value, workdir, strategy)
    except selfcheck.SelfCheckError as error:
        cli.fail(error, 2)
    selfcheck.print_report(report)
    if not report["passed"]:
        sys.exit(1)


def run_continuous_eval(workdir, strategy, startup_log):
    """--mode=continuous_eval: its files go to <workdir>/eval, the trainer's stay its own."""
    import tensorflow as tf

    from supcon_tf import continuous_eval

    try:
        continuous_eval.check_eval_with(_EVAL_WITH.value)
    except ValueError as error:
        cli.fail(error, 2)
    eval_dir = os.path.join(workdir, continuous_eval.EVAL_SUBDIR)
    tf.io.gfile.makedirs(eval_dir)
    cli.save_startup_log(eval_dir, startup_log)
    try:
        continuous_eval.run(_CONFIG.value, workdir, strategy, eval_with=_EVAL_WITH.value,
                            timeout_s=_EVAL_TIMEOUT_S.value, poll_s=_EVAL_POLL_S.value)
    except ValueError as error:  # a config with no stage one to watch
        cli.fail(error, 2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
