"""Optimizers, learning-rate schedules and weight decay for both training stages.

Every optimizer reads one config slice (`config.optim` or `config.linear.optim`):

    name               "lars" | "sgd" | "nesterov" | "rmsprop" | "adamw"
    base_lr            lr for a global batch of 256; peak = base_lr * global_batch / 256
    momentum           LARS, SGD, Nesterov and RMSProp momentum (AdamW keeps beta_1 = 0.9)
    rho, epsilon       RMSProp only: decay of the mean square and the term added inside
                       the square root (GR: 0.9 and 1.0 in stage one, 0.001 in stage two)
    weight_decay       wd; 0 turns decay off
    weight_decay_form  "l2": wd * w joins the gradient before the momentum / RMS
                       accumulators (the official TF code adds wd * sum ||w||^2 / 2 to the
                       loss; PyTorch SGD's weight_decay is the same), and before LARS's
                       trust ratio. "decoupled": w -= lr * wd * w each step, as Keras
                       does (AdamW). LARS accepts only "l2", AdamW only "decoupled".
    decay_batch_norm   False: BN gammas and betas never decay (GR); True: they decay too
                       (SupContrast decays every parameter). Biases always decay.
    warmup_epochs      linear warmup, per step, from warmup_start_lr to the peak
    warmup_start_lr    absolute lr at step 0 (GR 0; SupContrast 0.01)
    schedule           "cosine"       GR: after the warmup a half cosine from the peak down
                                      to peak * min_lr_ratio at step total_steps
                       "cosine_epoch" SupContrast: epoch e = 1..E holds
                                      floor + (peak - floor) * (1 + cos(pi e / E)) / 2;
                                      the warmup ends at the value of epoch warmup_epochs
                       "exponential"  GR staircase: peak * decay_rate ** floor(t / (
                                      decay_every_epochs * steps_per_epoch))
                       "piecewise"    peak * decay_rate ** (boundaries passed)
    min_lr_ratio       floor of both cosines, as a fraction of the peak (SupContrast 1e-3)
    decay_epochs       piecewise boundaries, in epochs
    decay_every_epochs exponential interval, in epochs (GR default 2.4; stage two 0.5)
    decay_rate         factor of the exponential and piecewise schedules

For "cosine", "exponential" and "piecewise", t counts steps from the end of the warmup,
as in GR's build_learning_rate_schedule, and the lr is 0 after total_steps. "cosine_epoch"
holds its floor after the last epoch, which is where SupContrast's training stops. A run
shorter than its warmup spends all of it warming up to the peak.

Which variables decay (`decayed_variables`): every variable given to build_optimizer
except `exempt_variables` (an online classifier, say) and, when decay_batch_norm is
False, `batch_norm_variables` (collect them with `batch_norm_variables(model)`). LARS
also keeps its trust ratio at 1 for the variables outside that set (GR's exclusion list
serves both). Configs written before these fields existed get `DEFAULTS`.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from supcon_tf import constants

OPTIMIZERS = ("lars", "sgd", "nesterov", "rmsprop", "adamw")
SCHEDULES = ("cosine", "cosine_epoch", "exponential", "piecewise")
WEIGHT_DECAY_FORMS = ("l2", "decoupled")

# Values for fields that older config slices lack (GR's hparams_flags defaults).
DEFAULTS = {
    "rho": 0.9,
    "epsilon": 1.0,
    "weight_decay_form": "l2",   # "decoupled" for adamw
    "decay_batch_norm": False,
    "warmup_start_lr": 0.0,
    "min_lr_ratio": 0.0,
    "decay_every_epochs": 2.4,
    "decay_epochs": (),
    "decay_rate": 0.1,
}


def _field(optim_config, name):
    if name == "weight_decay_form" and name not in optim_config:
        return "decoupled" if optim_config.name == "adamw" else "l2"
    return optim_config.get(name, DEFAULTS.get(name))


def scaled_learning_rate(base_lr, global_batch_size):
    """The linear scaling rule: base_lr is quoted for a global batch of 256."""
    return base_lr * global_batch_size / 256.0


def epochs_to_steps(epochs, steps_per_epoch):
    """int(epochs * steps_per_epoch), truncated as GR's tf.cast does (with float slack)."""
    return int(math.floor(epochs * steps_per_epoch + 1e-6))


# ---------------------------------------------------------------- config checks


def check_optim_config(optim_config, *, prefix="optim"):
    """Raises ValueError naming the field (`config.{prefix}.field=value`) and the fix."""
    def fail(field, value, fix):
        raise ValueError(f"config.{prefix}.{field}={value!r}: {fix}")

    name, schedule = optim_config.name, optim_config.schedule
    form = _field(optim_config, "weight_decay_form")
    constants.check_choice(f"{prefix}.name", name, OPTIMIZERS)
    constants.check_choice(f"{prefix}.schedule", schedule, SCHEDULES)
    constants.check_choice(f"{prefix}.weight_decay_form", form, WEIGHT_DECAY_FORMS)
    if name == "lars" and form != "l2":
        fail("weight_decay_form", form, "LARS adds wd * w to the gradient before its trust "
             "ratio; set it to 'l2'")
    if name == "adamw" and form != "decoupled":
        fail("weight_decay_form", form, "AdamW's decay is decoupled by definition; set it to "
             "'decoupled' (or pick optim.name='sgd'/'nesterov'/'rmsprop' for L2)")
    if not optim_config.base_lr > 0:
        fail("base_lr", optim_config.base_lr, "must be > 0")
    if not optim_config.weight_decay >= 0:
        fail("weight_decay", optim_config.weight_decay, "must be >= 0 (0 turns decay off)")
    if not 0 <= optim_config.momentum < 1:
        fail("momentum", optim_config.momentum, "must be in [0, 1)")
    if name == "rmsprop":
        if not 0 <= _field(optim_config, "rho") < 1:
            fail("rho", _field(optim_config, "rho"), "must be in [0, 1)")
        if not _field(optim_config, "epsilon") > 0:
            fail("epsilon", _field(optim_config, "epsilon"), "must be > 0")
    if not optim_config.warmup_epochs >= 0:
        fail("warmup_epochs", optim_config.warmup_epochs, "must be >= 0")
    if not _field(optim_config, "warmup_start_lr") >= 0:
        fail("warmup_start_lr", _field(optim_config, "warmup_start_lr"), "must be >= 0")
    if schedule in ("cosine", "cosine_epoch"):
        if not 0 <= _field(optim_config, "min_lr_ratio") <= 1:
            fail("min_lr_ratio", _field(optim_config, "min_lr_ratio"), "must be in [0, 1]")
    if schedule == "cosine_epoch" and optim_config.warmup_epochs != int(optim_config.warmup_epochs):
        fail("warmup_epochs", optim_config.warmup_epochs, "schedule 'cosine_epoch' warms up "
             "over whole epochs (SupContrast); use an integer")
    if schedule in ("exponential", "piecewise") and not _field(optim_config, "decay_rate") > 0:
        fail("decay_rate", _field(optim_config, "decay_rate"), "must be > 0")
    if schedule == "exponential" and not _field(optim_config, "decay_every_epochs") > 0:
        fail("decay_every_epochs", _field(optim_config, "decay_every_epochs"),
             "must be > 0 for schedule 'exponential'")
    if schedule == "piecewise":
        boundaries = list(_field(optim_config, "decay_epochs"))
        if boundaries != sorted(boundaries) or any(b < 0 for b in boundaries):
            fail("decay_epochs", tuple(boundaries), "boundaries must be >= 0 and increasing")


# ---------------------------------------------------------------- schedules


class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from warmup_start_lr to `target` over warmup_steps (none if 0)."""

    def _warmup(self, step, target):
        fraction = step / max(self.warmup_steps, 1)
        return self.warmup_start_lr + (target - self.warmup_start_lr) * fraction


@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupCosine(_WarmupSchedule):
    """GR: warmup, then floor + (peak - floor) * (1 + cos(pi * t / (total - warmup))) / 2
    with t counted from the end of the warmup and floor = peak * min_lr_ratio; 0 after
    total_steps (tf.train.cosine_decay inside build_learning_rate_schedule)."""

    def __init__(self, peak_lr, warmup_steps, total_steps, warmup_start_lr=0.0,
                 min_lr_ratio=0.0):
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) "
                "and total_steps > 0; check optim.warmup_epochs and train.epochs")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        floor = self.peak_lr * self.min_lr_ratio
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = floor + (self.peak_lr - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        lr = tf.where(step < self.warmup_steps, self._warmup(step, self.peak_lr), cosine)
        return tf.where(step > self.total_steps, 0.0, lr)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "warmup_start_lr": self.warmup_start_lr,
                "min_lr_ratio": self.min_lr_ratio}


@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupPiecewise(_WarmupSchedule):
    """Warmup, then peak * decay_rate ** n, n = boundaries (in steps counted from the end
    of the warmup, as GR's piecewise_linear_decay gets them) that t has reached; 0 after
    total_steps when it is given.

    A boundary b applies from t = b, as SupContrast's epoch rule (epoch > b, 1-indexed)
    does; GR's tf.train.piecewise_constant switches one step later (t > b).
    """

    def __init__(self, peak_lr, warmup_steps, boundaries, decay_rate, warmup_start_lr=0.0,
                 total_steps=None):
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"optim.decay_epochs must increase; got {boundaries} in steps")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_rate = float(decay_rate)
        self.warmup_start_lr = float(warmup_start_lr)
        self.total_steps = None if total_steps is None else int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        after_warmup = step - self.warmup_steps
        passed = tf.zeros([], tf.float32)
        for boundary in self.boundaries:
            passed += tf.cast(after_warmup >= boundary, tf.float32)
        decayed = self.peak_lr * tf.pow(self.decay_rate, passed)
        lr = tf.where(step < self.warmup_steps, self._warmup(step, self.peak_lr), decayed)
        if self.total_steps is not None:
            lr = tf.where(step > self.total_steps, 0.0, lr)
        return lr

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "boundaries": self.boundaries, "decay_rate": self.decay_rate,
                "warmup_start_lr": self.warmup_start_lr, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupExponential(_WarmupSchedule):
    """GR: warmup, then peak * decay_rate ** floor(t / decay_steps) with t counted from the
    end of the warmup (tf.train.exponential_decay, staircase=True); 0 after total_steps.
    decay_steps = decay_every_epochs * steps_per_epoch stays a float, as in GR."""

    def __init__(self, peak_lr, warmup_steps, total_steps, decay_steps, decay_rate,
                 warmup_start_lr=0.0):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps={decay_steps} must be > 0; "
                             "check optim.decay_every_epochs")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay_steps = float(decay_steps)
        self.decay_rate = float(decay_rate)
        self.warmup_start_lr = float(warmup_start_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        after_warmup = tf.maximum(step - self.warmup_steps, 0.0)
        decayed = self.peak_lr * tf.pow(self.decay_rate,
                                        tf.floor(after_warmup / self.decay_steps))
        lr = tf.where(step < self.warmup_steps, self._warmup(step, self.peak_lr), decayed)
        return tf.where(step > self.total_steps, 0.0, lr)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "warmup_start_lr": self.warmup_start_lr}


@keras.saving.register_keras_serializable(package="supcon_tf")
class EpochCosine(_WarmupSchedule):
    """SupContrast's cosine (util.adjust_learning_rate / warmup_learning_rate), in steps.

    adjust_learning_rate runs at the start of epoch e = 1..E and sets
        lr(e) = floor + (peak - floor) * (1 + cos(pi * e / E)) / 2,  floor = peak * min_lr_ratio
    so the peak itself is never used and the last epoch trains at the floor. During the
    first warmup_epochs epochs warmup_learning_rate overrides it per step:
        lr = warmup_start_lr + t / (warmup_epochs * spe) * (lr(warmup_epochs) - warmup_start_lr).
    Step t belongs to epoch floor(t / spe) + 1; after the last epoch the floor holds.
    """

    def __init__(self, peak_lr, steps_per_epoch, epochs, warmup_epochs=0,
                 warmup_start_lr=0.0, min_lr_ratio=0.0):
        if steps_per_epoch <= 0 or epochs < 1 or not 0 <= warmup_epochs <= epochs:
            raise ValueError(
                f"need steps_per_epoch ({steps_per_epoch}) > 0, epochs ({epochs}) >= 1 and "
                f"0 <= warmup_epochs ({warmup_epochs}) <= epochs; check optim.warmup_epochs "
                "and train.epochs")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = float(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr_ratio = float(min_lr_ratio)
        self.warmup_steps = epochs_to_steps(self.warmup_epochs, self.steps_per_epoch)

    def _epoch_lr(self, epoch):
        floor = self.peak_lr * self.min_lr_ratio
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + tf.cos(math.pi * epoch / self.epochs))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.minimum(tf.floor(step / self.steps_per_epoch) + 1.0, float(self.epochs))
        warmup_target = self._epoch_lr(tf.constant(float(self.warmup_epochs)))
        return tf.where(step < self.warmup_steps, self._warmup(step, warmup_target),
                        self._epoch_lr(epoch))

    def get_config(self):
        return {"peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                "warmup_start_lr": self.warmup_start_lr, "min_lr_ratio": self.min_lr_ratio}


def build_schedule(optim_config, *, global_batch_size, steps_per_epoch, total_steps,
                   config_prefix="optim"):
    """The schedule named by optim_config.schedule, in optimizer steps."""
    check_optim_config(optim_config, prefix=config_prefix)
    peak_lr = scaled_learning_rate(optim_config.base_lr, global_batch_size)
    start_lr = _field(optim_config, "warmup_start_lr")
    warmup_steps = min(epochs_to_steps(optim_config.warmup_epochs, steps_per_epoch), total_steps)
    schedule = optim_config.schedule
    if schedule == "cosine":
        return WarmupCosine(peak_lr, warmup_steps, total_steps, warmup_start_lr=start_lr,
                            min_lr_ratio=_field(optim_config, "min_lr_ratio"))
    if schedule == "cosine_epoch":
        epochs = max(1, round(total_steps / steps_per_epoch))
        return EpochCosine(peak_lr, steps_per_epoch, epochs,
                           warmup_epochs=min(int(optim_config.warmup_epochs), epochs),
                           warmup_start_lr=start_lr,
                           min_lr_ratio=_field(optim_config, "min_lr_ratio"))
    if schedule == "exponential":
        return WarmupExponential(
            peak_lr, warmup_steps, total_steps,
            decay_steps=_field(optim_config, "decay_every_epochs") * steps_per_epoch,
            decay_rate=_field(optim_config, "decay_rate"), warmup_start_lr=start_lr)
    boundaries = [epochs_to_steps(e, steps_per_epoch) for e in _field(optim_config, "decay_epochs")]
    return WarmupPiecewise(peak_lr, warmup_steps, boundaries, _field(optim_config, "decay_rate"),
                           warmup_start_lr=start_lr, total_steps=total_steps)


def describe_schedule(optim_config, *, global_batch_size, steps_per_epoch, total_steps,
                      config_prefix="optim"):
    """Plain numbers for --mode=describe: the peak, the warmup and lr at 25/50/75% and at
    the last step (step int(fraction * total_steps))."""
    schedule = build_schedule(optim_config, global_batch_size=global_batch_size,
                              steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                              config_prefix=config_prefix)
    points = {"25%": int(0.25 * total_steps), "50%": int(0.5 * total_steps),
              "75%": int(0.75 * total_steps), "last": total_steps - 1}
    return {
        "schedule": optim_config.schedule,
        "peak_lr": scaled_learning_rate(optim_config.base_lr, global_batch_size),
        "warmup_steps": schedule.warmup_steps,
        "total_steps": int(total_steps),
        "lr_at": {key: float(schedule(step)) for key, step in points.items()},
    }


# ---------------------------------------------------------------- which variables decay


def _key(variable):
    # By identity: model.trainable_variables and layer.gamma return the same objects.
    return id(variable)


def batch_norm_variables(model):
    """gamma and beta of every keras.layers.BatchNormalization inside `model`, at any depth.

    Matched by layer type, never by name. Moving statistics are not trained, so not listed.
    """
    found, seen = [], set()
    # _flatten_layers is how Keras itself walks nested layers (Model.layers is one level).
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in (layer.gamma, layer.beta):
                if variable is not None and _key(variable) not in seen:
                    seen.add(_key(variable))
                    found.append(variable)
    return found


def decayed_variables(optim_config, variables, *, batch_norm_variables=(), exempt_variables=()):
    """The variables weight decay applies to (in the order given), whatever wd's value.

    Everything in `variables` except exempt_variables and, unless
    optim_config.decay_batch_norm, batch_norm_variables. LARS adapts exactly these.
    """
    skipped = {_key(v) for v in exempt_variables}
    if not _field(optim_config, "decay_batch_norm"):
        skipped |= {_key(v) for v in batch_norm_variables}
    return [v for v in variables if _key(v) not in skipped]


# ---------------------------------------------------------------- optimizers


class _DecaySet(keras.optimizers.Optimizer):
    """Fixes at build() which variables decay, from exclude_from_weight_decay(var_list=...).

    The flags are Python bools, so an update traces (and compiles with XLA) with no
    runtime branch. With no exclusions set, every variable decays.
    """

    def build(self, variables):
        super().build(variables)
        self._decays = tuple(self._use_weight_decay(v) for v in variables)

    def _decays_variable(self, variable):
        return self._decays[self._get_variable_index(variable)]

    def _l2_gradient(self, gradient, variable, l2):
        """g' = g + l2 * w for a decaying variable: the gradient of loss + l2 ||w||^2 / 2."""
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)  # the accumulators are dense anyway
        gradient = ops.cast(gradient, variable.dtype)
        if l2 and self._decays_variable(variable):
            gradient = gradient + ops.cast(l2, variable.dtype) * variable
        return gradient


@keras.saving.register_keras_serializable(package="supcon_tf")
class Momentum(_DecaySet):
    """Heavy-ball / Nesterov momentum in the TF1 MomentumOptimizer (= PyTorch SGD) form.

        g' = g + l2 * w               (decaying variables; coupled L2)
        accum <- momentum * accum + g'
        w <- w - lr * accum           (Nesterov: w - lr * (g' + momentum * accum))
    The lr multiplies the accumulator rather than entering it, unlike Keras's SGD, which
    matters while the lr changes. `weight_decay` (the Keras argument) is the decoupled form.
    """

    def __init__(self, learning_rate, momentum=0.9, nesterov=False, l2=0.0, name="momentum",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = (self.add_optimizer_variables(variables, "momentum")
                          if self.momentum else [])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = self._l2_gradient(gradient, variable, self.l2)
        if not self.momentum:
            self.assign_sub(variable, lr * gradient)
            return
        momentum = ops.cast(self.momentum, variable.dtype)
        accum = self.momentums[self._get_variable_index(variable)]
        new_accum = momentum * accum + gradient
        self.assign(accum, new_accum)
        step = gradient + momentum * new_accum if self.nesterov else new_accum
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov, "l2": self.l2})
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class RMSPropTF1(_DecaySet):
    """RMSProp as TF1's RMSPropOptimizer runs it (ApplyRMSProp), which GR used.

        g' = g + l2 * w                       (decaying variables; coupled L2)
        ms <- rho * ms + (1 - rho) * g'^2     (ms starts at 1, TF1's ones initializer)
        mom <- momentum * mom + lr * g' / sqrt(ms + epsilon)
        w <- w - mom
    Keras's RMSprop starts ms at 0, so its first steps are much larger with epsilon small.
    """

    def __init__(self, learning_rate, rho=0.9, momentum=0.9, epsilon=1.0, l2=0.0,
                 name="rmsprop_tf1", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.mean_squares = self.add_optimizer_variables(variables, "rms", initializer="ones")
        self.moments = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = self._l2_gradient(gradient, variable, self.l2)
        index = self._get_variable_index(variable)
        mean_square, moment = self.mean_squares[index], self.moments[index]
        rho = ops.cast(self.rho, dtype)
        new_mean_square = rho * mean_square + (1.0 - rho) * ops.square(gradient)
        new_moment = (ops.cast(self.momentum, dtype) * moment
                      + lr * gradient / ops.sqrt(new_mean_square + ops.cast(self.epsilon, dtype)))
        self.assign(mean_square, new_mean_square)
        self.assign(moment, new_moment)
        self.assign_sub(variable, new_moment)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                       "l2": self.l2})
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class LARS(_DecaySet):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), GR's classic-momentum form.

    For a decaying variable w (see _DecaySet):
        g' = g + lars_weight_decay * w
        trust = eta * ||w|| / ||g'||   (1 when either norm is 0)
        v <- momentum * v + lr * trust * g'
        w <- w - v                      (Nesterov: w - (momentum * v + lr * trust * g'))
    Variables excluded from decay take the same momentum step with g' = g and trust = 1.
    """

    def __init__(self, learning_rate, momentum=0.9, lars_weight_decay=0.0, eta=1e-3,
                 nesterov=False, name="lars", **kwargs):
        # The decay lives inside the update (before the trust ratio); the base class's
        # decoupled decay must stay off.
        kwargs.pop("weight_decay", None)
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
        gradient = self._l2_gradient(gradient, variable, self.lars_weight_decay)
        velocity = self.momentums[self._get_variable_index(variable)]
        if self._decays_variable(variable):
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
        new_velocity = momentum * velocity + step
        self.assign(velocity, new_velocity)
        self.assign_sub(variable, momentum * new_velocity + step if self.nesterov
                        else new_velocity)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "lars_weight_decay": self.lars_weight_decay,
                       "eta": self.eta, "nesterov": self.nesterov})
        return config


def build_optimizer(optim_config, variables, *, global_batch_size, steps_per_epoch,
                    total_steps, batch_norm_variables=(), exempt_variables=(),
                    config_prefix="optim"):
    """Creates the optimizer named by optim_config and builds its slots for `variables`.

    batch_norm_variables: the BN gammas/betas among `variables` (use the module's
    batch_norm_variables(model)); they skip decay unless optim_config.decay_batch_norm.
    exempt_variables never decay (nor get LARS's trust ratio). config_prefix names the
    slice in error messages ("linear.optim" for stage two).

    Call it inside strategy.scope() before the first traced step: slots created lazily
    inside a tf.range loop under MirroredStrategy fail.
    """
    schedule = build_schedule(optim_config, global_batch_size=global_batch_size,
                              steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                              config_prefix=config_prefix)
    name = optim_config.name
    wd = float(optim_config.weight_decay)
    coupled = _field(optim_config, "weight_decay_form") == "l2"
    l2 = wd if coupled else 0.0
    decoupled = wd if (wd and not coupled) else None
    if name == "lars":
        optimizer = LARS(schedule, momentum=optim_config.momentum, lars_weight_decay=wd)
    elif name in ("sgd", "nesterov"):
        optimizer = Momentum(schedule, momentum=optim_config.momentum,
                             nesterov=(name == "nesterov"), l2=l2, weight_decay=decoupled)
    elif name == "rmsprop":
        optimizer = RMSPropTF1(schedule, rho=_field(optim_config, "rho"),
                               momentum=optim_config.momentum,
                               epsilon=_field(optim_config, "epsilon"), l2=l2,
                               weight_decay=decoupled)
    else:  # adamw (check_optim_config has rejected anything else)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=wd)
    decayed = {_key(v) for v in decayed_variables(
        optim_config, variables, batch_norm_variables=batch_norm_variables,
        exempt_variables=exempt_variables)}
    excluded = [v for v in variables if _key(v) not in decayed]
    # Keras matches by variable identity; an empty list means "decay everything".
    optimizer.exclude_from_weight_decay(var_list=excluded)
    optimizer.build(variables)
    return optimizer
