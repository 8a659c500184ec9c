"""ResNet v1 encoders (18 to 200 layers), channels-last, functional Keras 3.

Post-activation ResNet as the official SupCon codes build it (google-research
supcon/blocks.py and resnet.py; HobbitLong/SupContrast networks/resnet_big.py):
bias-free convolutions, batch norm after every convolution, basic blocks for
18/34 layers and bottleneck blocks from 50 up. A bottleneck block downsamples in
its 3x3 convolution (both official codes), not in its first 1x1 convolution as
the original v1 and keras.applications do; the parameters are the same.

A strided convolution wider than 1x1 pads (k - 1) // 2 before and the rest
after, then convolves VALID (GR's Conv2DFixedPadding), so the output grid does
not depend on the parity of the input size; unstrided convolutions use SAME.

Two initializations, one per official code (`conv_init`):
- "fan_in_truncated_normal": TF1 tf.compat.v1.variance_scaling_initializer()
  defaults (GR): scale 1, fan_in, normal truncated at 2 std with the std divided
  by 0.8796..., so the kept values have variance 1 / fan_in. Keras 3's
  VarianceScaling applies the same correction.
- "fan_out_normal": torch kaiming_normal_(mode="fan_out", nonlinearity="relu")
  (SupContrast): untruncated normal with std sqrt(2 / fan_out), fan_out = k*k*out.
"""

import keras
from keras import ops

# depth -> (block kind, blocks per stage)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

BOTTLENECK_EXPANSION = 4
# Batch-norm settings of both official codes (GR blocks.py; torch defaults).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
CONV_INITS = ("fan_in_truncated_normal", "fan_out_normal")
# [0, 1] -> [-1, 1], GR's ImageNet input range.
DEFAULT_INPUT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_INPUT_STD = (0.5, 0.5, 0.5)


def conv_initializer(conv_init):
    """A fresh Keras initializer for conv kernels; see the module docstring for the names."""
    # A fresh instance per layer: an unseeded Keras initializer fixes its seed when
    # constructed, so a shared one would give equal-shaped kernels equal values.
    if conv_init == "fan_in_truncated_normal":
        return keras.initializers.VarianceScaling(
            scale=1.0, mode="fan_in", distribution="truncated_normal"
        )
    if conv_init == "fan_out_normal":
        return keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_out", distribution="untruncated_normal"
        )
    raise ValueError(f"model.conv_init must be one of {CONV_INITS}; got {conv_init!r}.")


def check_mean_std(mean, std):
    """(mean, std) as float 3-tuples; raises ValueError unless 3 values each and std > 0."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise ValueError(
            "model.input_mean and model.input_std must hold 3 values each (RGB, in [0, 1] "
            f"pixel units), std > 0; got mean {mean}, std {std}."
        )
    return mean, std


class ChannelStandardization(keras.layers.Layer):
    """(x - mean) / std per channel with constants (no variables); callers feed [0, 1] images."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = check_mean_std(mean, std)

    def call(self, images):
        mean = ops.convert_to_tensor(self.mean, dtype=images.dtype)
        std = ops.convert_to_tensor(self.std, dtype=images.dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _conv(x, filters, kernel_size, stride, name, *, conv_init):
    if stride > 1 and kernel_size > 1:
        begin = (kernel_size - 1) // 2
        end = kernel_size - 1 - begin
        x = keras.layers.ZeroPadding2D(((begin, end), (begin, end)), name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # adds no padding to 1x1 kernels, whatever the stride
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_initializer(conv_init),
        name=name,
    )(x)


class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose moving averages hold one value on every replica.

    Keras 3 creates the moving mean and variance without an aggregation, so under
    MirroredStrategy or TPUStrategy each replica's update writes its own copy alone.
    Without `synchronized` (per-replica batch statistics) the copies drift apart:
    replica r keeps the averages of its own part of each batch, evaluation inside
    strategy.run reads a different copy on each replica, and a checkpoint saves replica
    0's. Here they aggregate by "mean": every copy takes the mean of the replicas'
    updates. With `synchronized` every replica already writes the same value.
    """

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") in ("moving_mean", "moving_variance") and not self.synchronized:
            kwargs["aggregation"] = "mean"
        return super().add_weight(*args, **kwargs)


def _batch_norm(x, name, *, sync_bn, zero_gamma=False):
    return BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=sync_bn,
        name=name,
    )(x)


def _conv_bn(x, filters, kernel_size, stride, name, *, options, relu=True, zero_gamma=False):
    x = _conv(x, filters, kernel_size, stride, f"{name}_conv", conv_init=options["conv_init"])
    x = _batch_norm(x, f"{name}_bn", sync_bn=options["sync_bn"], zero_gamma=zero_gamma)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut(x, out_channels, stride, name, *, options):
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    return _conv_bn(x, out_channels, 1, stride, f"{name}_proj", options=options, relu=False)


def _basic_block(x, filters, stride, name, *, options):
    shortcut = _shortcut(x, filters, stride, name, options=options)
    x = _conv_bn(x, filters, 3, stride, f"{name}_1", options=options)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", options=options, relu=False,
                 zero_gamma=options["zero_init_last_bn"])
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _bottleneck_block(x, filters, stride, name, *, options):
    out_channels = filters * BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out_channels, stride, name, options=options)
    x = _conv_bn(x, filters, 1, 1, f"{name}_1", options=options)
    x = _conv_bn(x, filters, 3, stride, f"{name}_2", options=options)
    x = _conv_bn(x, out_channels, 1, 1, f"{name}_3", options=options, relu=False,
                 zero_gamma=options["zero_init_last_bn"])
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def min_image_size(cifar_stem):
    """Smallest input side: the total stride, so the last stage sees at least one pixel."""
    return 8 if cifar_stem else 32


def build_resnet(depth, *, image_size, cifar_stem=False, width_multiplier=1.0, sync_bn=False,
                 zero_init_last_bn=True, conv_init="fan_in_truncated_normal",
                 input_mean=DEFAULT_INPUT_MEAN, input_std=DEFAULT_INPUT_STD, name=None):
    """ResNet-`depth` encoder: float32 images [N, H, W, 3] in [0, 1] -> pooled r [N, De].

    De is 512 * width_multiplier for 18/34 layers and 2048 * width_multiplier above.
    The images are first standardized to (x - input_mean) / input_std. cifar_stem
    replaces the 7x7 stride-2 convolution and max-pool with one 3x3 stride-1
    convolution. zero_init_last_bn starts each block's last BN gamma at zero (GR),
    so every residual block begins as the identity; False starts it at 1
    (SupContrast). The returned model carries `conv_init` and `zero_init_last_bn`
    as attributes, for describe_model.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}; got {depth}.")
    if not width_multiplier > 0:
        raise ValueError(f"model.width_multiplier must be > 0; got {width_multiplier}.")
    conv_initializer(conv_init)  # validates the name before any layer is built
    smallest = min_image_size(cifar_stem)
    if image_size < smallest:
        raise ValueError(
            f"image_size {image_size} is too small for resnet{depth} with "
            f"cifar_stem={cifar_stem}: it needs at least {smallest} (its total stride)."
        )
    kind, stage_blocks = RESNET_DEPTHS[depth]
    block_fn = _basic_block if kind == "basic" else _bottleneck_block
    options = {"sync_bn": sync_bn, "conv_init": conv_init, "zero_init_last_bn": zero_init_last_bn}

    def width(channels):
        return max(1, int(channels * width_multiplier))

    images = keras.Input((image_size, image_size, 3), name="images")
    x = ChannelStandardization(input_mean, input_std, dtype="float32", name="standardize")(images)
    if cifar_stem:
        x = _conv_bn(x, width(64), 3, 1, "stem", options=options)
    else:
        x = _conv_bn(x, width(64), 7, 2, "stem", options=options)
        # GR's 3x3/2 SAME max-pool: on even sizes its windows start at 0 (padding (0, 1)).
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)

    for stage, num_blocks in enumerate(stage_blocks):
        for block in range(num_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = block_fn(x, width(64 * 2**stage), stride, f"stage{stage + 1}_block{block + 1}",
                         options=options)
    # Pool in float32 so r keeps full precision under mixed_bfloat16.
    r = keras.layers.GlobalAveragePooling2D(dtype="float32", name="embedding")(x)
    model = keras.Model(images, r, name=name or f"resnet{depth}")
    model.conv_init = conv_init
    model.zero_init_last_bn = bool(zero_init_last_bn)
    return model
