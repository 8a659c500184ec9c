"""supcon_tf.host_xla: the probe of XLA for the host CPU runs, even when asked from a trace."""

import tensorflow as tf

from supcon_tf import host_xla


def test_the_probe_runs_eagerly_when_first_asked_inside_a_dataset_map(monkeypatch):
    # Traced instead of run, a probe could not fail, so the TPU wheel would report XLA.
    ran_eagerly = []

    def probe():
        ran_eagerly.append(tf.executing_eagerly())
        return False

    monkeypatch.setattr(host_xla, "_probe", probe)
    host_xla.available.cache_clear()
    try:
        dataset = tf.data.Dataset.range(2).map(
            lambda x: x + int(host_xla.available()) + int(host_xla.available()))
        assert list(dataset.as_numpy_iterator()) == [0, 1]
        assert ran_eagerly == [True]  # once per process, eagerly
    finally:
        host_xla.available.cache_clear()


def test_the_answer_matches_whether_a_jit_compiled_cpu_function_runs():
    @tf.function(jit_compile=True)
    def double(x):
        return 2.0 * x

    try:
        with tf.device("/cpu:0"):
            runs = float(double(tf.constant(1.5))) == 3.0
    except (tf.errors.OpError, RuntimeError, ValueError):
        runs = False
    assert host_xla.available() is runs
