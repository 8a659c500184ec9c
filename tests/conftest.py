"""Test-session set-up shared by every test module.

The CPU is split into 8 logical devices before TensorFlow initializes, so that
MirroredStrategy tests can run 2, 4 or 8 replicas in one process. Tests that
want one device simply use the default strategy (it places work on /cpu:0).
TensorFlow runs on the BFC host allocator, as main.py sets it up.

Two markers skip what this TensorFlow build cannot run, with the reason:

    @pytest.mark.host_xla   compiles with jit_compile=True on the CPU (not under the TPU
                            wheel, tensorflow-tpu: supcon_tf.host_xla.available() is False)
    @pytest.mark.tf_keras   imports tf_keras or tensorflow_hub (hub.KerasLayer), which the
                            TPU install leaves out: they require the plain tensorflow wheel
"""

import glob
import importlib.metadata
import importlib.util
import os
import re
import runpy
import signal
import socket
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as main.py runs; the suite is faster too
# Without a TPU, the TPU wheel's `import tensorflow` waits about 8 minutes on
# metadata-server queries unless TPU_SKIP_MDS_QUERY=1 (then about 4 s); the default
# wheel ignores the variable. The suite runs on the CPU, split into replicas, so it
# sets the variable by default where no TPU device node is present. On a TPU VM it is
# left alone (this suite's CPU-split tests are not what one runs there anyway). An
# explicit value wins; the tests' subprocesses inherit it.
if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

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


# Distributions that install the `tensorflow` package; one environment holds one.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-tpu",
                            "tensorflow-intel", "tensorflow-macos", "tf-nightly", "tf-nightly-cpu",
                            "tf-nightly-tpu")


def installed_tensorflow_distributions():
    """[(name, version)] of the installed distributions among TENSORFLOW_DISTRIBUTIONS,
    one entry per installed copy (two copies of one name, in two places, show twice)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name in TENSORFLOW_DISTRIBUTIONS:
            found.add((name, dist.version, str(dist.locate_file(""))))
    return sorted((name, version) for name, version, _ in found)


def pytest_report_header():
    found = installed_tensorflow_distributions()
    wheels = ", ".join(f"{name} {version}" for name, version in found) or "no distribution found"
    return f"TensorFlow {tf.__version__} from {wheels}"


def _host_xla_missing():
    """Why host_xla tests cannot run here, or None when they can."""
    from supcon_tf import host_xla

    if host_xla.available():
        return None
    wheels = ", ".join(name for name, _ in installed_tensorflow_distributions())
    return ("needs XLA compiled for the host CPU (jit_compile=True on /cpu:0), which this "
            f"TensorFlow build ({wheels}) lacks: supcon_tf.host_xla.available() is False")


def _tf_keras_missing():
    """Why tf_keras tests cannot run here, or None when they can."""
    missing = [name for name in ("tf_keras", "tensorflow_hub")
               if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"needs {' and '.join(missing)} (hub.KerasLayer), not installed: they require "
            "the plain tensorflow wheel, so the TPU install leaves them out")


SKIP_CONDITIONS = {"host_xla": _host_xla_missing, "tf_keras": _tf_keras_missing}


def pytest_collection_modifyitems(items):
    """Tests marked slow run first, so that the suite's two workers (pytest.ini) end together.
    Tests marked host_xla or tf_keras skip, with the reason, where this install lacks that."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    reasons = {}  # each condition probed once, and only when a collected test carries its marker
    for item in items:
        for marker, why_missing in SKIP_CONDITIONS.items():
            if item.get_closest_marker(marker) is not None:
                if marker not in reasons:
                    reasons[marker] = why_missing()
                if reasons[marker]:
                    item.add_marker(pytest.mark.skip(reason=reasons[marker]))


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


def free_loopback_ports(count):
    """count TCP ports on 127.0.0.1 that nothing listens on right now (for TF_CONFIG)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
