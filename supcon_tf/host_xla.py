"""Whether XLA can compile for the host CPU in this TensorFlow build.

The default TensorFlow wheel can. The TPU wheel (tensorflow-tpu) cannot: any
`jit_compile=True` function placed on the CPU fails there with "could not find
registered transfer manager for platform Host". On a TPU VM the input pipeline and
evaluation run on that host, so host-side code asks `available()` before it
compiles with XLA.
"""

import functools

import tensorflow as tf


@functools.lru_cache(maxsize=None)
def available():
    """True when a jit_compile=True function runs on /cpu:0 (probed once per process)."""
    # The probe must run, not be traced: the first question often comes from inside
    # a tf.data map function, where calling it would only add ops to that graph.
    with tf.init_scope():
        return _probe()


def _probe():
    @tf.function(jit_compile=True)
    def add_one(x):
        return x + 1.0

    try:
        with tf.device("/cpu:0"):
            add_one(tf.constant(1.0))
    except (tf.errors.OpError, RuntimeError, ValueError):
        return False
    return True
