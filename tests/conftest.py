"""Test-session set-up shared by every test module.

The CPU is split into 8 logical devices before TensorFlow initializes, so that
MirroredStrategy tests can run 2, 4 or 8 replicas in one process. Tests that
want one device simply use the default strategy (it places work on /cpu:0).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 8

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS,
)


def cpu_devices(n):
    """Names of the first n logical CPU devices, for MirroredStrategy(devices=...)."""
    if n > NUM_LOGICAL_CPUS:
        raise ValueError(f"asked for {n} devices; conftest made {NUM_LOGICAL_CPUS}")
    return [f"/cpu:{i}" for i in range(n)]
