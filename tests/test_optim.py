"""Optimizers, weight decay and schedules against independent NumPy computations.

The references below are written from docs/recipes.md (and SupContrast's and GR's
loops as it describes them), not from supcon_tf/optim.py. Where TF still ships the TF1
optimizers GR ran (tf.compat.v1.train.MomentumOptimizer / RMSPropOptimizer), they are
a second reference: fed the gradient of loss + wd * l2_loss(w), as GR's loss was.
"""

import math

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import mirrored_strategy
from supcon_tf import optim


def optim_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        name="sgd", base_lr=0.1, momentum=0.9, rho=0.9, epsilon=1.0, weight_decay=0.0,
        weight_decay_form="l2", decay_batch_norm=False, warmup_epochs=0.0,
        warmup_start_lr=0.0, schedule="cosine", min_lr_ratio=0.0, decay_epochs=(),
        decay_every_epochs=2.4, decay_rate=0.1))
    config.update(overrides)
    return config


def schedule_for(spe, total, batch=256, **overrides):
    return optim.build_schedule(optim_config(**overrides), global_batch_size=batch,
                                steps_per_epoch=spe, total_steps=total)


def assert_values(schedule, expected):
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5, abs=1e-7), step


def test_linear_scaling_rule():
    assert optim.scaled_learning_rate(0.4, 6144) == pytest.approx(9.6)
    assert optim.scaled_learning_rate(0.5, 256) == pytest.approx(0.5)


# ---------------------------------------------------------------- schedules


def test_gr_cosine_with_warmup():
    # peak 0.2 * 512/256 = 0.4; 20 warmup steps from 0, cosine over the 80 after them.
    schedule = schedule_for(10, 100, batch=512, base_lr=0.2, warmup_epochs=2)
    assert_values(schedule, {0: 0.0, 5: 0.1, 19: 0.38, 20: 0.4,
                             60: 0.2,                       # cos(pi/2) = 0
                             40: 0.4 * (1 + math.cos(math.pi / 4)) / 2,
                             100: 0.0, 101: 0.0, 150: 0.0})
    values = [float(schedule(s)) for s in range(101)]
    assert all(a <= b for a, b in zip(values[:20], values[1:21]))
    assert all(a >= b for a, b in zip(values[20:], values[21:]))


def test_gr_cosine_with_start_lr_and_floor():
    # Warmup 0.04 -> 0.4 over 20 steps; cosine from 0.4 to the floor 0.04 at step 100;
    # GR's lr is 0 once the stage is over.
    schedule = schedule_for(10, 100, batch=512, base_lr=0.2, warmup_epochs=2,
                            warmup_start_lr=0.04, min_lr_ratio=0.1)
    assert_values(schedule, {0: 0.04, 10: 0.22, 20: 0.4, 60: 0.22, 100: 0.04, 101: 0.0})


def test_cosine_run_shorter_than_its_warmup_warms_up_to_the_peak():
    schedule = schedule_for(10, 5, warmup_epochs=2)
    assert_values(schedule, {0: 0.0, 4: 0.08, 5: 0.1})


def supcontrast_lrs(lr, epochs, spe, warm_epochs, warmup_from, decay_rate=0.1):
    """SupContrast's main loop: adjust_learning_rate at each epoch start, then the
    per-iteration warmup override during the first warm_epochs epochs."""
    eta_min = lr * decay_rate ** 3
    warmup_to = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * warm_epochs / epochs)) / 2
    lrs = []
    for epoch in range(1, epochs + 1):
        current = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
        for batch_id in range(spe):
            if warm_epochs and epoch <= warm_epochs:
                p = (batch_id + (epoch - 1) * spe) / (warm_epochs * spe)
                current = warmup_from + p * (warmup_to - warmup_from)
            lrs.append(current)
    return lrs


def test_supcontrast_cosine_epoch():
    spe, epochs = 7, 100
    schedule = schedule_for(spe, spe * epochs, base_lr=0.5, schedule="cosine_epoch",
                            warmup_epochs=10, warmup_start_lr=0.01, min_lr_ratio=1e-3)
    # Hand numbers: floor 5e-4; warmup target = the epoch-10 value.
    warm_to = 5e-4 + (0.5 - 5e-4) * (1 + math.cos(math.pi * 10 / 100)) / 2   # 0.487776
    assert warm_to == pytest.approx(0.487776, rel=1e-5)
    epoch11 = 5e-4 + (0.5 - 5e-4) * (1 + math.cos(math.pi * 11 / 100)) / 2
    assert_values(schedule, {0: 0.01, 35: 0.01 + 0.5 * (warm_to - 0.01),
                             69: 0.01 + 69 / 70 * (warm_to - 0.01),
                             70: epoch11, 76: epoch11,
                             spe * 99: 5e-4, spe * 100 - 1: 5e-4, spe * 100 + 50: 5e-4})
    reference = supcontrast_lrs(0.5, epochs, spe, warm_epochs=10, warmup_from=0.01)
    ours = [float(v) for v in schedule(tf.range(spe * epochs))]
    np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=1e-7)


def test_supcontrast_cosine_epoch_without_warmup_never_uses_the_peak():
    schedule = schedule_for(5, 50, base_lr=0.8, schedule="cosine_epoch", min_lr_ratio=1e-3)
    reference = supcontrast_lrs(0.8, 10, 5, warm_epochs=0, warmup_from=None)
    np.testing.assert_allclose([float(schedule(s)) for s in range(50)], reference, rtol=2e-5)
    assert float(schedule(0)) < 0.8


def test_gr_exponential_stage_two():
    # GR S2 rows: 12-epoch warmup, then x0.97 every 0.5 epoch; peak 0.05 * 512/256 = 0.1.
    spe, total = 10, 900
    schedule = schedule_for(spe, total, batch=512, base_lr=0.05, schedule="exponential",
                            warmup_epochs=12, decay_every_epochs=0.5, decay_rate=0.97)
    assert_values(schedule, {0: 0.0, 60: 0.05, 120: 0.1, 124: 0.1, 125: 0.097, 129: 0.097,
                             130: 0.1 * 0.97 ** 2, 500: 0.1 * 0.97 ** 76,
                             900: 0.1 * 0.97 ** 156, 901: 0.0})


def test_gr_exponential_defaults_with_float_interval():
    # decay_every_epochs 2.4 with 10 steps per epoch: decays at 24, 48, ... after warmup.
    schedule = schedule_for(10, 200, base_lr=1.0, schedule="exponential", warmup_epochs=1,
                            decay_every_epochs=2.4, decay_rate=0.1)
    assert_values(schedule, {10: 1.0, 33: 1.0, 34: 0.1, 57: 0.1, 58: 0.01})


def test_piecewise_counts_boundaries_from_the_warmup_end():
    schedule = schedule_for(10, 100, base_lr=0.256, warmup_epochs=1, schedule="piecewise",
                            decay_epochs=(3, 6), decay_rate=0.1)
    assert_values(schedule, {0: 0.0, 5: 0.128, 10: 0.256, 39: 0.256, 40: 0.0256,
                             69: 0.0256, 70: 0.00256, 100: 0.00256, 101: 0.0})


def test_piecewise_matches_supcontrast_linear_eval():
    # main_linear: x0.2 at epochs 60, 75, 90 (1-indexed epoch e decays once e > boundary).
    spe, epochs = 4, 100
    schedule = schedule_for(spe, spe * epochs, base_lr=5.0, schedule="piecewise",
                            decay_epochs=(60, 75, 90), decay_rate=0.2)
    reference = [5.0 * 0.2 ** sum(epoch > b for b in (60, 75, 90))
                 for epoch in range(1, epochs + 1) for _ in range(spe)]
    np.testing.assert_allclose([float(v) for v in schedule(tf.range(spe * epochs))],
                               reference, rtol=1e-5)


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedules_serialize(name):
    schedule = schedule_for(10, 100, warmup_epochs=2, warmup_start_lr=0.01, schedule=name,
                            decay_epochs=(3,), min_lr_ratio=0.01)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    for step in (0, 15, 55, 99):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


def test_describe_schedule():
    described = optim.describe_schedule(
        optim_config(base_lr=0.2, warmup_epochs=2), global_batch_size=512,
        steps_per_epoch=10, total_steps=100)
    assert described["schedule"] == "cosine"
    assert described["peak_lr"] == pytest.approx(0.4)
    assert described["warmup_steps"] == 20
    assert described["lr_at"]["25%"] == pytest.approx(0.4 * (1 + math.cos(math.pi * 5 / 80)) / 2)
    assert described["lr_at"]["50%"] == pytest.approx(0.4 * (1 + math.cos(math.pi * 30 / 80)) / 2)
    assert described["lr_at"]["75%"] == pytest.approx(0.4 * (1 + math.cos(math.pi * 55 / 80)) / 2)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides,field", [
    (dict(name="adagrad"), "optim.name"),
    (dict(schedule="linear"), "optim.schedule"),
    (dict(weight_decay_form="coupled"), "optim.weight_decay_form"),
    (dict(name="lars", weight_decay_form="decoupled"), "optim.weight_decay_form"),
    (dict(name="adamw", weight_decay_form="l2"), "optim.weight_decay_form"),
    (dict(name="rmsprop", epsilon=0.0), "optim.epsilon"),
    (dict(name="rmsprop", rho=1.0), "optim.rho"),
    (dict(min_lr_ratio=2.0), "optim.min_lr_ratio"),
    (dict(schedule="cosine_epoch", warmup_epochs=2.5), "optim.warmup_epochs"),
    (dict(schedule="exponential", decay_every_epochs=0.0), "optim.decay_every_epochs"),
    (dict(schedule="piecewise", decay_epochs=(6, 3)), "optim.decay_epochs"),
    (dict(warmup_start_lr=-1.0), "optim.warmup_start_lr"),
])
def test_bad_config_raises_naming_the_field(overrides, field):
    variables = [tf.Variable(tf.ones([2, 2]))]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        optim.build_optimizer(optim_config(**overrides), variables, global_batch_size=256,
                              steps_per_epoch=1, total_steps=10)


def test_error_names_the_stage_two_slice():
    with pytest.raises(ValueError, match=r"linear\.optim\.schedule='linear'"):
        optim.build_schedule(optim_config(schedule="linear"), global_batch_size=256,
                             steps_per_epoch=1, total_steps=10, config_prefix="linear.optim")


def test_older_config_slices_get_defaults():
    old = ml_collections.ConfigDict(dict(name="rmsprop", base_lr=0.1, momentum=0.9,
                                         weight_decay=1e-6, warmup_epochs=0, schedule="cosine",
                                         decay_epochs=(), decay_rate=0.1))
    optimizer = optim.build_optimizer(old, [keras.Variable(np.ones(3, np.float32))],
                                      global_batch_size=256, steps_per_epoch=1, total_steps=10)
    assert (optimizer.rho, optimizer.epsilon, optimizer.l2) == (0.9, 1.0, 1e-6)


# ---------------------------------------------------------------- coupled L2 (NumPy)


def numpy_momentum(w, grads, lrs, m, wd, nesterov):
    """TF1 MomentumOptimizer / PyTorch SGD with wd * w added to the gradient first."""
    w, accum = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        accum = m * accum + g
        w = w - lr * (g + m * accum if nesterov else accum)
    return w


def numpy_rmsprop(w, grads, lrs, rho, m, eps, wd):
    """TF1 RMSPropOptimizer with ms starting at 1, eps inside the sqrt, lr inside mom."""
    w = w.astype(np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        ms = rho * ms + (1 - rho) * g * g
        mom = m * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def random_problem(shapes, steps, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return init, grads


def cosine_lrs(peak, total, steps):
    """GR cosine with no warmup, by hand: peak * (1 + cos(pi t / total)) / 2."""
    return [peak * (1 + math.cos(math.pi * t / total)) / 2 for t in range(steps)]


@pytest.mark.parametrize("name", ["sgd", "nesterov", "rmsprop"])
def test_coupled_l2_enters_the_accumulators(name):
    shapes = [(3, 4), (4,), (4,)]                      # kernel, bias, BN gamma
    init, grads = random_problem(shapes, steps=4)
    kernel, bias, gamma = [keras.Variable(v) for v in init]
    wd, peak, total = 0.05, 0.3, 6                     # lr changes every step
    config = optim_config(name=name, base_lr=peak, weight_decay=wd, epsilon=0.1)
    optimizer = optim.build_optimizer(config, [kernel, bias, gamma], global_batch_size=256,
                                      steps_per_epoch=2, total_steps=total,
                                      batch_norm_variables=[gamma])
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], [kernel, bias, gamma]))
    lrs = cosine_lrs(peak, total, len(grads))
    for index, (variable, decays) in enumerate([(kernel, True), (bias, True), (gamma, False)]):
        var_grads = [g[index] for g in grads]
        if name == "rmsprop":
            expected = numpy_rmsprop(init[index], var_grads, lrs, 0.9, 0.9, 0.1, wd * decays)
        else:
            expected = numpy_momentum(init[index], var_grads, lrs, 0.9, wd * decays,
                                      nesterov=(name == "nesterov"))
        np.testing.assert_allclose(variable.numpy(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "rmsprop"])
def test_coupled_l2_matches_tf1_optimizers_with_l2_in_the_loss(name):
    """GR's graph: loss + wd * tf.nn.l2_loss(w) minimized by the TF1 optimizer."""
    init, grads = random_problem([(5, 3)], steps=3, seed=1)
    wd, lr = 0.1, 0.2
    ours = keras.Variable(init[0])
    config = optim_config(name=name, base_lr=lr, weight_decay=wd, epsilon=0.001,
                          schedule="piecewise")       # constant lr, no boundaries
    optimizer = optim.build_optimizer(config, [ours], global_batch_size=256,
                                      steps_per_epoch=1, total_steps=10)
    theirs = tf.Variable(init[0])
    if name == "rmsprop":
        tf1 = tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=0.001)
    else:
        tf1 = tf.compat.v1.train.MomentumOptimizer(lr, 0.9, use_nesterov=(name == "nesterov"))
    for (g,) in grads:
        optimizer.apply_gradients([(tf.constant(g), ours)])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.constant(g) * theirs) + wd * tf.nn.l2_loss(theirs)
        tf1.apply_gradients([(tape.gradient(loss, theirs), theirs)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_rmsprop_mean_square_starts_at_one():
    variable = keras.Variable(np.zeros((2, 3), np.float32))
    optimizer = optim.build_optimizer(optim_config(name="rmsprop"), [variable],
                                      global_batch_size=256, steps_per_epoch=1, total_steps=10)
    np.testing.assert_array_equal(optimizer.mean_squares[0].numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(optimizer.moments[0].numpy(), np.zeros((2, 3)))


# ---------------------------------------------------------------- decoupled decay


def test_decoupled_sgd_keeps_decay_out_of_the_momentum():
    """Zero gradients: decoupled decay only scales w by (1 - lr wd); nothing accumulates."""
    kernel = keras.Variable(np.ones((2, 2), np.float32))
    config = optim_config(name="sgd", base_lr=0.5, weight_decay=0.1,
                          weight_decay_form="decoupled", schedule="piecewise")
    optimizer = optim.build_optimizer(config, [kernel], global_batch_size=256,
                                      steps_per_epoch=1, total_steps=10)
    for _ in range(3):
        optimizer.apply_gradients([(tf.zeros([2, 2]), kernel)])
    np.testing.assert_allclose(kernel.numpy(), (1 - 0.05) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(optimizer.momentums[0].numpy(), np.zeros((2, 2)))


def numpy_adamw(w, grads, lrs, wd, b1=0.9, b2=0.999, eps=1e-7):
    """Keras AdamW: w -= lr * wd * w, then the bias-corrected Adam step."""
    w = w.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        w = w - lr * wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return w


def test_adamw_is_decoupled_and_skips_batch_norm():
    init, grads = random_problem([(3, 3), (3,)], steps=3, seed=2)
    kernel, gamma = keras.Variable(init[0]), keras.Variable(init[1])
    config = optim_config(name="adamw", base_lr=0.01, weight_decay=0.5,
                          weight_decay_form="decoupled")
    optimizer = optim.build_optimizer(config, [kernel, gamma], global_batch_size=256,
                                      steps_per_epoch=1, total_steps=5,
                                      batch_norm_variables=[gamma])
    for g_k, g_g in grads:
        optimizer.apply_gradients([(tf.constant(g_k), kernel), (tf.constant(g_g), gamma)])
    lrs = cosine_lrs(0.01, 5, 3)
    expected_kernel = numpy_adamw(init[0], [g[0] for g in grads], lrs, wd=0.5)
    expected_gamma = numpy_adamw(init[1], [g[1] for g in grads], lrs, wd=0.0)  # BN: no decay
    np.testing.assert_allclose(kernel.numpy(), expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gamma.numpy(), expected_gamma, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- which variables decay


def small_model():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    inner = keras.Model(inputs, x, name="encoder")
    outer = keras.Sequential([inner, keras.layers.Dense(2, name="classifier")])
    outer.build((None, 4))
    return outer, inner


def test_batch_norm_variables_by_type_in_nested_models():
    model, inner = small_model()
    bn = inner.get_layer("bn")
    found = optim.batch_norm_variables(model)
    assert [id(v) for v in found] == [id(bn.gamma), id(bn.beta)]
    assert all(any(v is t for t in model.trainable_variables) for v in found)


@pytest.mark.parametrize("decay_batch_norm", [False, True])
def test_batch_norm_decay_switch_and_biases_decay(decay_batch_norm):
    model, inner = small_model()
    variables = model.trainable_variables
    for v in variables:                     # every variable starts at 1, so decay shows
        v.assign(np.ones(v.shape, np.float32))
    bn_vars = optim.batch_norm_variables(model)
    classifier = model.layers[-1].trainable_variables
    config = optim_config(name="sgd", momentum=0.0, base_lr=0.5, weight_decay=0.1,
                          schedule="piecewise", decay_batch_norm=decay_batch_norm)
    decayed = optim.decayed_variables(config, variables, batch_norm_variables=bn_vars,
                                      exempt_variables=classifier)
    # dense kernel + bias always; BN gamma + beta only when switched on; classifier never.
    assert len(decayed) == (4 if decay_batch_norm else 2)
    optimizer = optim.build_optimizer(config, variables, global_batch_size=256,
                                      steps_per_epoch=1, total_steps=10,
                                      batch_norm_variables=bn_vars, exempt_variables=classifier)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    dense = inner.get_layer("dense")
    for v in (dense.kernel, dense.bias):
        np.testing.assert_allclose(v.numpy(), 0.95, rtol=1e-6)
    for v in bn_vars:
        np.testing.assert_allclose(v.numpy(), 0.95 if decay_batch_norm else 1.0, rtol=1e-6)
    for v in classifier:
        np.testing.assert_array_equal(v.numpy(), 1.0)


# ---------------------------------------------------------------- LARS


def numpy_lars(w, grads, lr, momentum, wd, eta, adapt):
    w, v = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g in grads:
        step_lr = lr
        if adapt:
            g = g + wd * w
            step_lr = lr * eta * np.linalg.norm(w) / np.linalg.norm(g)
        v = momentum * v + step_lr * g
        w = w - v
    return w


def test_lars_two_steps_match_hand_computation():
    init, grads = random_problem([(3, 4), (4,)], steps=2)
    kernel, bias = keras.Variable(init[0]), keras.Variable(init[1])
    lr, momentum, wd, eta = 0.5, 0.9, 1e-2, 1e-3
    optimizer = optim.LARS(lr, momentum=momentum, lars_weight_decay=wd, eta=eta)
    optimizer.exclude_from_weight_decay(var_list=[bias])
    optimizer.build([kernel, bias])
    for g_k, g_b in grads:
        optimizer.apply_gradients([(tf.constant(g_k), kernel), (tf.constant(g_b), bias)])
    np.testing.assert_allclose(kernel.numpy(), numpy_lars(init[0], [g[0] for g in grads], lr,
                                                          momentum, wd, eta, adapt=True),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias.numpy(), numpy_lars(init[1], [g[1] for g in grads], lr,
                                                        momentum, wd, eta, adapt=False),
                               rtol=1e-5, atol=1e-7)
    # The kernel's step really was rescaled: the plain-SGD step would be ~1000x larger.
    assert np.abs(kernel.numpy() - init[0]).max() < 1e-2


def test_lars_skips_trust_for_batch_norm_and_exempt_but_adapts_biases():
    shapes = [(3, 4), (4,), (4,), (4, 2)]      # kernel, bias, BN gamma, exempt classifier
    init, grads = random_problem(shapes, steps=2, seed=3)
    variables = [keras.Variable(v) for v in init]
    wd = 1e-3
    config = optim_config(name="lars", base_lr=1.0, weight_decay=wd, schedule="piecewise")
    optimizer = optim.build_optimizer(config, variables, global_batch_size=256,
                                      steps_per_epoch=1, total_steps=10,
                                      batch_norm_variables=[variables[2]],
                                      exempt_variables=[variables[3]])
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
    for index, adapt in enumerate([True, True, False, False]):
        expected = numpy_lars(init[index], [g[index] for g in grads], 1.0, 0.9, wd, 1e-3, adapt)
        np.testing.assert_allclose(variables[index].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_lars_zero_weights_use_unit_trust():
    kernel = keras.Variable(np.zeros((2, 2), np.float32))
    optimizer = optim.LARS(0.1, momentum=0.0, lars_weight_decay=0.0)
    optimizer.build([kernel])
    optimizer.apply_gradients([(tf.ones([2, 2]), kernel)])
    np.testing.assert_allclose(kernel.numpy(), -0.1 * np.ones((2, 2)), rtol=1e-6)


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


def test_optimizers_round_trip_their_config():
    for optimizer in (optim.Momentum(0.1, momentum=0.8, nesterov=True, l2=1e-4),
                      optim.RMSPropTF1(0.1, rho=0.8, momentum=0.5, epsilon=1e-3, l2=1e-6),
                      optim.LARS(0.1, momentum=0.8, lars_weight_decay=1e-3)):
        restored = type(optimizer).from_config(optimizer.get_config())
        config = optimizer.get_config()
        config.pop("name")
        assert {k: v for k, v in restored.get_config().items() if k != "name"} == config


# ---------------------------------------------------------------- distribution and XLA


def run_reference(name, init, grads, bn_index, wd, lr):
    """NumPy result for each variable of a constant-lr run (bn_index does not decay)."""
    results = []
    for index, w in enumerate(init):
        var_grads = [g[index] for g in grads]
        var_wd = 0.0 if index == bn_index else wd
        if name == "rmsprop":
            results.append(numpy_rmsprop(w, var_grads, [lr] * len(grads), 0.9, 0.9, 1.0, var_wd))
        elif name == "lars":
            results.append(numpy_lars(w, var_grads, lr, 0.9, wd, 1e-3, index != bn_index))
        else:
            results.append(numpy_momentum(w, var_grads, [lr] * len(grads), 0.9, var_wd,
                                          nesterov=(name == "nesterov")))
    return results


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "lars"])
def test_build_optimizer_under_mirrored_strategy(name):
    strategy = mirrored_strategy(2)
    init, grads = random_problem([(3, 4), (4,)], steps=2, seed=4)
    wd, lr = 0.05, 0.3
    config = optim_config(name=name, base_lr=lr, weight_decay=wd, schedule="piecewise")
    with strategy.scope():
        variables = [keras.Variable(v) for v in init]
        optimizer = optim.build_optimizer(config, variables, global_batch_size=256,
                                          steps_per_epoch=1, total_steps=10,
                                          batch_norm_variables=[variables[1]])

    @tf.function
    def step(step_grads):
        def replica_fn():
            # Each replica holds half of the gradient; the optimizer sums them.
            optimizer.apply_gradients(zip([g / 2.0 for g in step_grads], variables))
        strategy.run(replica_fn)

    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
    for variable, expected in zip(variables, run_reference(name, init, grads, 1, wd, lr)):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.host_xla
def test_build_optimizer_inside_jit_compiled_function(name):
    init, grads = random_problem([(3, 4), (4,)], steps=3, seed=5)
    config = optim_config(name=name, base_lr=0.3, weight_decay=0.05, warmup_epochs=1,
                          warmup_start_lr=0.01, schedule="cosine_epoch", min_lr_ratio=1e-3,
                          weight_decay_form="decoupled" if name == "adamw" else "l2")

    def make():
        variables = [keras.Variable(v) for v in init]
        optimizer = optim.build_optimizer(config, variables, global_batch_size=256,
                                          steps_per_epoch=2, total_steps=6,
                                          batch_norm_variables=[variables[1]])
        return variables, optimizer

    compiled_vars, compiled_opt = make()
    eager_vars, eager_opt = make()

    @tf.function(jit_compile=True)
    def step(step_grads):
        compiled_opt.apply_gradients(zip(step_grads, compiled_vars))

    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
        eager_opt.apply_gradients(zip([tf.constant(g) for g in step_grads], eager_vars))
    assert int(compiled_opt.iterations.numpy()) == 3
    for compiled, eager, start in zip(compiled_vars, eager_vars, init):
        assert not np.allclose(compiled.numpy(), start)
        np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)
