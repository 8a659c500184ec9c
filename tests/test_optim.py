"""Optimizers and schedules against hand-computed values (numpy and math only)."""

import math

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import optim


def optim_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        name="sgd", base_lr=0.1, momentum=0.9, weight_decay=0.0, warmup_epochs=0,
        schedule="cosine", decay_epochs=(), decay_rate=0.1))
    config.update(overrides)
    return config


def test_linear_scaling_rule():
    assert optim.scaled_learning_rate(0.4, 6144) == pytest.approx(9.6)
    assert optim.scaled_learning_rate(0.5, 256) == pytest.approx(0.5)


def test_warmup_cosine_values():
    schedule = optim.build_schedule(optim_config(base_lr=0.2, warmup_epochs=2),
                                    global_batch_size=512, steps_per_epoch=10, total_steps=100)
    peak = 0.2 * 512 / 256
    expected = {0: 0.0, 5: peak * 5 / 20, 20: peak,
                60: peak * 0.5 * (1 + math.cos(math.pi * 40 / 80)),
                100: 0.0, 150: 0.0}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-6), step
    # Monotone up during warmup, monotone down after it.
    values = [float(schedule(s)) for s in range(101)]
    assert all(a <= b for a, b in zip(values[:20], values[1:21]))
    assert all(a >= b for a, b in zip(values[20:], values[21:]))


def test_warmup_piecewise_values():
    schedule = optim.build_schedule(
        optim_config(base_lr=0.256, warmup_epochs=1, schedule="piecewise",
                     decay_epochs=(3, 6), decay_rate=0.1),
        global_batch_size=256, steps_per_epoch=10, total_steps=100)
    expected = {0: 0.0, 5: 0.128, 10: 0.256, 29: 0.256, 30: 0.0256, 59: 0.0256, 60: 0.00256}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step


def test_bad_names_raise():
    variables = [tf.Variable(tf.ones([2, 2]))]
    with pytest.raises(ValueError, match="optim.name"):
        optim.build_optimizer(optim_config(name="adagrad"), variables,
                              global_batch_size=256, steps_per_epoch=1, total_steps=10)
    with pytest.raises(ValueError, match="optim.schedule"):
        optim.build_schedule(optim_config(schedule="linear"), global_batch_size=256,
                             steps_per_epoch=1, total_steps=10)


def numpy_lars_step(w, g, v, lr, momentum, wd, eta, adapt):
    if adapt:
        g = g + wd * w
        trust = eta * np.linalg.norm(w) / np.linalg.norm(g)
        lr = lr * trust
    v = momentum * v + lr * g
    return w - v, v


def test_lars_two_steps_match_hand_computation():
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(3, 4)).astype(np.float32)
    bias0 = rng.normal(size=(4,)).astype(np.float32)
    grads = [(rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32))
             for _ in range(2)]
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    lr, momentum, wd, eta = 0.5, 0.9, 1e-2, 1e-3
    optimizer = optim.LARS(lr, momentum=momentum, lars_weight_decay=wd, eta=eta)
    optimizer.build([kernel, bias])

    w_k, v_k, w_b, v_b = kernel0, np.zeros_like(kernel0), bias0, np.zeros_like(bias0)
    for g_k, g_b in grads:
        optimizer.apply_gradients([(tf.constant(g_k), kernel), (tf.constant(g_b), bias)])
        w_k, v_k = numpy_lars_step(w_k, g_k, v_k, lr, momentum, wd, eta, adapt=True)
        w_b, v_b = numpy_lars_step(w_b, g_b, v_b, lr, momentum, wd, eta, adapt=False)
    np.testing.assert_allclose(kernel.numpy(), w_k, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias.numpy(), w_b, rtol=1e-5, atol=1e-7)
    # The kernel's step really was rescaled: the plain-SGD step would be ~1000x larger.
    assert np.abs(kernel.numpy() - kernel0).max() < 1e-2


def test_lars_zero_weights_use_unit_trust():
    kernel = keras.Variable(np.zeros((2, 2), np.float32))
    optimizer = optim.LARS(0.1, momentum=0.0, lars_weight_decay=0.0)
    optimizer.build([kernel])
    optimizer.apply_gradients([(tf.ones([2, 2]), kernel)])
    np.testing.assert_allclose(kernel.numpy(), -0.1 * np.ones((2, 2)), rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "rmsprop", "adamw"])
def test_weight_decay_skips_bn_and_bias(name):
    """With a zero gradient only weight decay moves a variable: kernels shrink, vectors stay."""
    kernel = keras.Variable(np.ones((2, 3), np.float32))
    gamma = keras.Variable(np.ones((3,), np.float32))
    bias = keras.Variable(np.ones((3,), np.float32))
    config = optim_config(name=name, base_lr=0.256, weight_decay=0.1)
    optimizer = optim.build_optimizer(config, [kernel, gamma, bias], global_batch_size=256,
                                      steps_per_epoch=10, total_steps=10)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in (kernel, gamma, bias)])
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in (kernel, gamma, bias)])
    assert kernel.numpy().max() < 1.0
    np.testing.assert_array_equal(gamma.numpy(), np.ones(3))
    np.testing.assert_array_equal(bias.numpy(), np.ones(3))


def test_lars_builds_from_config_and_reads_schedule():
    kernel = keras.Variable(np.ones((2, 2), np.float32))
    config = optim_config(name="lars", base_lr=1.0, momentum=0.0, weight_decay=0.0,
                          warmup_epochs=1)
    optimizer = optim.build_optimizer(config, [kernel], global_batch_size=256,
                                      steps_per_epoch=4, total_steps=8)
    assert isinstance(optimizer, optim.LARS)
    optimizer.apply_gradients([(tf.ones([2, 2]), kernel)])  # lr(0) = 0 during warmup
    np.testing.assert_array_equal(kernel.numpy(), np.ones((2, 2)))
    optimizer.apply_gradients([(tf.ones([2, 2]), kernel)])  # lr(1) = 0.25, trust = 1e-3
    np.testing.assert_allclose(kernel.numpy(), 1.0 - 0.25 * 1e-3, rtol=1e-6)
