"""Distribution strategy set-up in one place, and where XLA may compile the train step.

    --tpu=NAME|grpc://ADDRESS|local  -> TPUStrategy
    TF_CONFIG set                    -> MultiWorkerMirroredStrategy
    one GPU                          -> OneDeviceStrategy on it
    several GPUs                     -> MirroredStrategy over them
    otherwise                        -> the default strategy (one CPU device)
"""

import json
import os

import tensorflow as tf
from absl import logging

# On one CPU XLA can help or hurt: a ResNet-50 step at 224 ran slower with it (DESIGN.md),
# while the small digits encoder's step ran 1.24x faster on idle cores
# (benchmarks/step_bench.py). So "auto" leaves XLA off on a CPU, and configs that
# measured a gain, like configs/digits.py, set train.jit_compile=True.
CPU_JIT_DEFAULT = False


def make_strategy(tpu=None):
    """The strategy for this process; `tpu` as given to main.py's --tpu (None: no TPU)."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif os.environ.get("TF_CONFIG"):
        task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
        logging.info("TF_CONFIG task %s: multi-worker mirrored", task)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) == 1:
            strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
        elif gpus:
            strategy = tf.distribute.MirroredStrategy([g.name for g in gpus])
        else:
            strategy = tf.distribute.get_strategy()
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def is_tpu(strategy):
    return isinstance(strategy, tf.distribute.TPUStrategy)


def resolve_jit_compile(setting, strategy):
    """Whether to wrap the per-replica step in tf.function(jit_compile=True).

    setting is config.train.jit_compile: True, False or "auto". TPUStrategy compiles
    the whole replicated step with XLA on its own, so this returns False there.
    Under (Multi)MirroredStrategy, XLA can compile neither the cross-replica
    gather nor the update of mirrored optimizer variables, so True is refused.
    """
    # A --config.train.jit_compile=... override arrives as a string: the field holds "auto".
    if isinstance(setting, str):
        setting = {"true": True, "false": False}.get(setting.lower(), setting)
    if setting not in (True, False, "auto"):
        raise ValueError(f"train.jit_compile={setting!r}; use True, False or 'auto'")
    if is_tpu(strategy):
        return False
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    single_device = strategy.num_replicas_in_sync == 1 and not isinstance(strategy, mirrored)
    if not single_device:
        if setting is True:
            raise ValueError(
                "train.jit_compile=True needs TPUStrategy or a single device "
                "(XLA cannot compile the all-gather or the mirrored optimizer update); "
                "use 'auto' or False")
        return False
    if setting == "auto":
        return bool(tf.config.list_logical_devices("GPU")) or CPU_JIT_DEFAULT
    return setting
