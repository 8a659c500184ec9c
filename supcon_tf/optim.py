"""Optimizers and learning-rate schedules for both training stages.

Every optimizer reads one config slice (`config.optim` or `config.linear.optim`):

    name          "lars" | "sgd" | "nesterov" | "rmsprop" | "adamw"
    base_lr       peak lr for a global batch of 256; the peak is base_lr * global_batch / 256
    momentum      momentum (LARS, SGD, Nesterov, RMSProp); AdamW keeps beta_1 = 0.9
    weight_decay  0 disables it; BN parameters and biases are always excluded
    warmup_epochs linear warmup from 0 to the peak
    schedule      "cosine" (to 0 at the last step) | "piecewise" (x decay_rate at each
                  of decay_epochs)
    decay_epochs, decay_rate

Weight decay and LARS's trust ratio skip every variable of rank <= 1: BN gammas and
betas, biases and LayerNorm parameters. Kernels and embeddings keep them.
LARS adds the decay to the gradient before the trust ratio, as in You et al. (2017)
and SimCLR. The Keras optimizers apply it decoupled (w -= lr * wd * w per step), which
for SGD is the same L2 penalty up to the momentum's smoothing.
"""

import math

import keras
import tensorflow as tf
from keras import ops

OPTIMIZERS = ("lars", "sgd", "nesterov", "rmsprop", "adamw")
SCHEDULES = ("cosine", "piecewise")


def decays_weight(variable):
    """True for kernels; False for BN parameters, biases and other vectors."""
    return len(variable.shape) > 1


def scaled_learning_rate(base_lr, global_batch_size):
    """The linear scaling rule: base_lr is quoted for a global batch of 256."""
    return base_lr * global_batch_size / 256.0


@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to peak_lr, then a half cosine down to 0 at total_steps."""

    def __init__(self, peak_lr, warmup_steps, total_steps):
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) "
                "and total_steps > 0; check optim.warmup_epochs and train.epochs")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak_lr * step / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * self.peak_lr * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupPiecewise(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then peak_lr * decay_rate ** (number of boundaries passed)."""

    def __init__(self, peak_lr, warmup_steps, boundaries, decay_rate):
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"optim.decay_epochs must increase; got {boundaries} in steps")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak_lr * step / max(self.warmup_steps, 1)
        passed = tf.zeros([], tf.float32)
        for boundary in self.boundaries:
            passed += tf.cast(step >= boundary, tf.float32)
        decayed = self.peak_lr * tf.pow(self.decay_rate, passed)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "boundaries": self.boundaries, "decay_rate": self.decay_rate}


def build_schedule(optim_config, *, global_batch_size, steps_per_epoch, total_steps):
    """The schedule named by optim_config.schedule, in optimizer steps."""
    peak_lr = scaled_learning_rate(optim_config.base_lr, global_batch_size)
    warmup_steps = int(round(optim_config.warmup_epochs * steps_per_epoch))
    if optim_config.schedule == "cosine":
        return WarmupCosine(peak_lr, min(warmup_steps, total_steps), total_steps)
    if optim_config.schedule == "piecewise":
        boundaries = [int(round(e * steps_per_epoch)) for e in optim_config.decay_epochs]
        return WarmupPiecewise(peak_lr, warmup_steps, boundaries, optim_config.decay_rate)
    raise ValueError(f"optim.schedule={optim_config.schedule!r}; use one of {SCHEDULES}")


@keras.saving.register_keras_serializable(package="supcon_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) with heavy-ball momentum.

    For a variable w that decays_weight():
        g' = g + weight_decay * w
        trust = eta * ||w|| / ||g'||   (1 when either norm is 0)
        v <- momentum * v + lr * trust * g'
        w <- w - v                      (Nesterov: w - (momentum * v + lr * trust * g'))
    BN parameters and biases take the same momentum step with g' = g and trust = 1.
    """

    def __init__(self, learning_rate, momentum=0.9, lars_weight_decay=0.0, eta=1e-3,
                 nesterov=False, name="lars", **kwargs):
        # The decay lives inside the update (before the trust ratio), so the base
        # class's decoupled decay stays off.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = momentum
        self.lars_weight_decay = lars_weight_decay
        self.eta = eta
        self.nesterov = nesterov

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, name="momentum")
                          for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        if decays_weight(variable):
            gradient = gradient + ops.cast(self.lars_weight_decay, dtype) * variable
            weight_norm = ops.sqrt(ops.sum(ops.square(variable)))
            grad_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            both_positive = ops.logical_and(weight_norm > 0, grad_norm > 0)
            trust = ops.where(both_positive,
                              ops.cast(self.eta, dtype) * weight_norm
                              / ops.where(both_positive, grad_norm, ops.ones_like(grad_norm)),
                              ops.ones_like(grad_norm))
            learning_rate = learning_rate * trust
        step = learning_rate * gradient
        momentum = ops.cast(self.momentum, dtype)
        self.assign(velocity, momentum * velocity + step)
        if self.nesterov:
            self.assign_sub(variable, momentum * velocity + step)
        else:
            self.assign_sub(variable, velocity)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "lars_weight_decay": self.lars_weight_decay,
                       "eta": self.eta, "nesterov": self.nesterov})
        return config


def build_optimizer(optim_config, variables, *, global_batch_size, steps_per_epoch,
                    total_steps):
    """Creates the optimizer named by optim_config and builds its slots for `variables`.

    Call it inside strategy.scope() before the first traced step: slots created lazily
    inside a tf.range loop under MirroredStrategy fail.
    """
    schedule = build_schedule(optim_config, global_batch_size=global_batch_size,
                              steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    name = optim_config.name
    weight_decay = optim_config.weight_decay or None
    if name == "lars":
        optimizer = LARS(schedule, momentum=optim_config.momentum,
                         lars_weight_decay=optim_config.weight_decay)
    elif name in ("sgd", "nesterov"):
        optimizer = keras.optimizers.SGD(schedule, momentum=optim_config.momentum,
                                         nesterov=(name == "nesterov"),
                                         weight_decay=weight_decay)
    elif name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(schedule, rho=0.9, momentum=optim_config.momentum,
                                             weight_decay=weight_decay)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=optim_config.weight_decay)
    else:
        raise ValueError(f"optim.name={name!r}; use one of {OPTIMIZERS}")
    if name != "lars":
        # Keras matches exclusions by variable identity; an empty list would reset them.
        excluded = [v for v in variables if not decays_weight(v)]
        if excluded:
            optimizer.exclude_from_weight_decay(var_list=excluded)
    optimizer.build(variables)
    return optimizer
