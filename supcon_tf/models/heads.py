"""Projection head (stage one) and linear classification head (online and stage-two eval).

Initializations, by the names config.model uses:
- "normal_0.01" (GR projection head): kernels N(0, 0.01^2) (untruncated), zero biases.
- "pytorch_default" (torch.nn.Linear): kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
- "glorot_uniform" (GR classifier default) and "zeros" (GR zero_initialize_classifier):
  that kernel, zero bias.
"""

import math

import keras

# The projection head's BN uses the encoder's settings (GR blocks.batch_norm).
from supcon_tf.models.resnet import BN_EPSILON, BN_MOMENTUM, BatchNormalization

HEAD_INITS = ("normal_0.01", "pytorch_default")
CLASSIFIER_INITS = ("glorot_uniform", "zeros", "pytorch_default")


class TorchDefaultDense(keras.layers.Dense):
    """Dense with torch.nn.Linear's default init: kernel and bias U(+-1/sqrt(fan_in)).

    fan_in is the input width, known only at build, so the initializers are set there.
    """

    def build(self, input_shape):
        bound = 1.0 / math.sqrt(input_shape[-1])
        self.kernel_initializer = keras.initializers.RandomUniform(-bound, bound)
        self.bias_initializer = keras.initializers.RandomUniform(-bound, bound)
        super().build(input_shape)


def _dense(units, *, use_bias, init, name, **kwargs):
    if init == "pytorch_default":
        return TorchDefaultDense(units, use_bias=use_bias, name=name, **kwargs)
    kernel_initializer = {
        "normal_0.01": lambda: keras.initializers.RandomNormal(stddev=0.01),
        "glorot_uniform": keras.initializers.GlorotUniform,
        "zeros": keras.initializers.Zeros,
    }[init]()  # a fresh instance per layer, so equal-shaped kernels differ
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=kernel_initializer,
                              bias_initializer="zeros", name=name, **kwargs)


def projection_head(projection_dims=(2048, 128), *, use_bn=False, output_bias=False,
                    init="normal_0.01", sync_bn=False, name="projection_head"):
    """MLP [Dense -> [BN] -> ReLU] per hidden width -> Dense(projection_dims[-1]).

    projection_dims lists the hidden widths then the output width; a single entry
    gives a linear projection. A hidden Dense has a bias only without BN (BN's
    beta replaces it); BN has gamma and beta, momentum 0.9, eps 1e-5. The output
    Dense has a bias only if output_bias, and no BN or activation. sync_bn makes the
    BN cross-replica, as the encoder's (GR passes use_global_batch_norm to both).
    The caller L2-normalizes the output. Defaults are GR's ProjectionHead.
    """
    projection_dims = tuple(projection_dims)
    if not projection_dims or any(int(d) != d or d < 1 for d in projection_dims):
        raise ValueError(
            "model.projection_dims must be a non-empty sequence of positive ints "
            f"(hidden widths..., output width); got {projection_dims}."
        )
    if init not in HEAD_INITS:
        raise ValueError(f"model.head_init must be one of {HEAD_INITS}; got {init!r}.")
    head = keras.Sequential(name=name)
    for index, width in enumerate(projection_dims[:-1]):
        head.add(_dense(int(width), use_bias=not use_bn, init=init, name=f"hidden{index + 1}"))
        if use_bn:
            head.add(BatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=sync_bn,
                name=f"hidden{index + 1}_bn",
            ))
        head.add(keras.layers.ReLU(name=f"hidden{index + 1}_relu"))
    head.add(_dense(int(projection_dims[-1]), use_bias=output_bias, init=init, name="output"))
    return head


def linear_head(num_classes, *, init="zeros", name="linear_head"):
    """A Dense layer to num_classes logits, computed in float32 even under mixed precision.

    init is one of CLASSIFIER_INITS. The default "zeros" starts a linear probe from
    uniform predictions; build_model passes config.model.classifier_init.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")
    if init not in CLASSIFIER_INITS:
        raise ValueError(f"model.classifier_init must be one of {CLASSIFIER_INITS}; got {init!r}.")
    return _dense(int(num_classes), use_bias=True, init=init, dtype="float32", name=name)


def describe_dense_stack(head):
    """A projection head's layout, e.g. "2048-BN-ReLU-2048-BN-ReLU-128 (no bias)"."""
    parts, biases = [], []
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense):
            parts.append(str(layer.units))
            biases.append(layer.use_bias)
        elif isinstance(layer, keras.layers.BatchNormalization):
            parts.append("BN")
        elif isinstance(layer, keras.layers.ReLU):
            parts.append("ReLU")
    if all(biases):
        bias = "all biases"
    elif not any(biases):
        bias = "no bias"
    else:
        bias = "biases on " + ", ".join(
            "output" if i == len(biases) - 1 else f"hidden{i + 1}"
            for i, has_bias in enumerate(biases) if has_bias
        )
    return f"{'-'.join(parts)} ({bias})"
