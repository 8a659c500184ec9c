r"""Trains and evaluates Supervised Contrastive Learning from a config file.

  python main.py --config=configs/digits.py --workdir=/tmp/supcon_digits
  python main.py --config=configs/imagenet_r50.py --workdir=gs://bucket/run --tpu=my-tpu
  python main.py --config=configs/digits.py:tiny --config.seed=1 --mode=train
  python main.py --config=configs/imagenet_r50.py --mode=describe   # the recipe as JSON

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

from supcon_tf import config_validation, describe  # noqa: E402
from supcon_tf import strategy as strategy_lib  # noqa: E402
from supcon_tf import train  # noqa: E402

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
    "mode", "train_then_eval", train.MODES + ("describe",),
    "train: stage one only; eval: stage two on the latest checkpoint; describe: print the "
    "effective recipe as one JSON line, without data or training.")
flags.mark_flag_as_required("config")


def default_workdir(config_argument):
    """./runs/imagenet_r50 for configs/imagenet_r50.py, ./runs/digits_tiny for ...:tiny."""
    path, _, arg = config_argument.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{arg}" if arg else name)


def fail(message, status):
    """One line on stderr, no traceback."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv):
    """absl's parsing, with a bad --config file or field as one line and exit status 2.

    config_flags raises while parsing an unknown --config.FIELD, and defers a config
    file that fails to load until its value is read, so it is read here.
    """
    try:
        remaining = flags.FLAGS(argv)
        _CONFIG.value.keys()  # a file that failed to load raises on first use
    except flags.Error as error:
        # A get_config() that raised comes with its traceback; its last line says it.
        fail(f"{str(error).strip().splitlines()[-1]} (see python main.py --help)", 2)
    except (AttributeError, KeyError) as error:
        fail(f"{error} is not a field of the config; check the --config.FIELD=VALUE "
             "spelling against the config file", 2)
    except (OSError, ValueError, TypeError) as error:
        fail(f"--config: {error}", 2)
    return remaining


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODE.value == "describe":
        try:
            recipe = describe.describe(_CONFIG.value)
        except ValueError as error:
            fail(error, 2)
        print(json.dumps(recipe, sort_keys=True))
        return
    workdir = _WORKDIR.value or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    if _TPU.value and _TPU.value != "local" and not workdir.startswith("gs://"):
        logging.warning("a remote TPU cannot write to the local workdir %s; use gs://", workdir)
    logging.info("workdir %s, mode %s", workdir, _MODE.value)
    strategy = strategy_lib.make_strategy(_TPU.value)
    try:
        config_validation.validate(_CONFIG.value, num_replicas=strategy.num_replicas_in_sync,
                                   workdir=workdir)
    except config_validation.ConfigError as error:
        fail(error, 2)
    try:
        train.run(_CONFIG.value, workdir, strategy, _MODE.value, start_time=START_TIME)
    except train.Preempted as preempted:
        logging.warning("%s", preempted)
        sys.exit(143)
    except (FloatingPointError, FileNotFoundError) as error:  # divergence; eval without a run
        fail(error, 1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
