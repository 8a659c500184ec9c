"""Test-session set-up shared by every test module.

The CPU is split into 8 logical devices before TensorFlow initializes, so that
MirroredStrategy tests can run 2, 4 or 8 replicas in one process. Tests that
want one device simply use the default strategy (it places work on /cpu:0).
TensorFlow runs on the BFC host allocator, as main.py sets it up.
"""

import os
import runpy
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as main.py runs; the suite is faster too

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS,
)


def cpu_devices(n):
    """Names of the first n logical CPU devices, for MirroredStrategy(devices=...)."""
    if n > NUM_LOGICAL_CPUS:
        raise ValueError(f"asked for {n} devices; conftest made {NUM_LOGICAL_CPUS}")
    return [f"/cpu:{i}" for i in range(n)]


_strategies = {}


def mirrored_strategy(num_replicas):
    """The process's MirroredStrategy over the first num_replicas logical CPUs.

    Strategies are cached, and each new one gets its own range of collective
    keys: two strategies that start from the same keys in one process abort
    each other's collectives ("Shape mismatch in the collective instance").
    """
    if num_replicas not in _strategies:
        tf.distribute.MirroredStrategy._collective_key_base = 100_000 * (len(_strategies) + 1)
        _strategies[num_replicas] = tf.distribute.MirroredStrategy(cpu_devices(num_replicas))
    return _strategies[num_replicas]


def load_config(filename, arg=None):
    """get_config(arg) of configs/<filename>, loaded by path as main.py's --config does."""
    return runpy.run_path(os.path.join(REPO, "configs", filename))["get_config"](arg)


def pytest_collection_modifyitems(items):
    """Tests marked slow run first, so that the suite's two workers (pytest.ini) end together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def sigterm_after_first_loop(monkeypatch):
    """Makes train's next steps_per_loop call end with a SIGTERM to this process (a
    preemption); undo with monkeypatch.undo()."""
    from supcon_tf import train

    real_make_train_loop = train.make_train_loop

    def loop_then_sigterm(*args):
        loop = real_make_train_loop(*args)

        def run(iterator, num_steps):
            metrics = loop(iterator, num_steps)
            os.kill(os.getpid(), signal.SIGTERM)
            return metrics
        return run

    monkeypatch.setattr(train, "make_train_loop", loop_then_sigterm)


def import_main(monkeypatch):
    """The main.py module, imported without leaking its TF_CPP_MIN_LOG_LEVEL default
    into later tests' subprocesses."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    sys.path.insert(0, REPO)
    try:
        import main
    finally:
        sys.path.remove(REPO)
    return main
