"""ResNet v1 encoders (18 to 200 layers), channels-last, functional Keras 3.

Post-activation ResNet as in He et al. (2016): bias-free convolutions, batch
norm after every convolution, basic blocks for 18/34 layers and bottleneck
blocks from 50 up. As in the original v1 (and keras.applications), a bottleneck
block downsamples in its first 1x1 convolution. The later "v1.5" placement on
the 3x3 convolution has the same parameters but ~6% more FLOPs, and its strided
3x3 backward pass ran ~1.2x slower under XLA on the CPU (benchmarks/model_bench.py).
Strided convolutions wider than 1x1 pad explicitly and symmetrically, so the
output does not depend on the parity of the input size.
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
# Batch-norm settings of the TPU ResNet reference.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_initializer():
    # A fresh instance per layer: an unseeded Keras initializer fixes its seed when
    # constructed, so a shared one would give equal-shaped kernels equal values.
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="truncated_normal"
    )


class ChannelStandardization(keras.layers.Layer):
    """(x - mean) / std per channel with constants (no variables); callers feed [0, 1] images."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        mean = ops.convert_to_tensor(self.mean, dtype=images.dtype)
        std = ops.convert_to_tensor(self.std, dtype=images.dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _conv(x, filters, kernel_size, stride, name):
    if stride > 1 and kernel_size > 1:
        # Symmetric padding; "same" would pad (0, 1) on even inputs.
        x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # adds no padding to 1x1 kernels, whatever the stride
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=_conv_initializer(),
        name=name,
    )(x)


def _batch_norm(x, name, *, sync_bn, zero_gamma=False):
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=sync_bn,
        name=name,
    )(x)


def _conv_bn(x, filters, kernel_size, stride, name, *, sync_bn, relu=True, zero_gamma=False):
    x = _conv(x, filters, kernel_size, stride, f"{name}_conv")
    x = _batch_norm(x, f"{name}_bn", sync_bn=sync_bn, zero_gamma=zero_gamma)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut(x, out_channels, stride, name, *, sync_bn):
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    return _conv_bn(x, out_channels, 1, stride, f"{name}_proj", sync_bn=sync_bn, relu=False)


def _basic_block(x, filters, stride, name, *, sync_bn, zero_init_last_bn):
    shortcut = _shortcut(x, filters, stride, name, sync_bn=sync_bn)
    x = _conv_bn(x, filters, 3, stride, f"{name}_1", sync_bn=sync_bn)
    x = _conv_bn(
        x, filters, 3, 1, f"{name}_2", sync_bn=sync_bn, relu=False, zero_gamma=zero_init_last_bn
    )
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _bottleneck_block(x, filters, stride, name, *, sync_bn, zero_init_last_bn):
    out_channels = filters * BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out_channels, stride, name, sync_bn=sync_bn)
    x = _conv_bn(x, filters, 1, stride, f"{name}_1", sync_bn=sync_bn)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", sync_bn=sync_bn)
    x = _conv_bn(
        x, out_channels, 1, 1, f"{name}_3", sync_bn=sync_bn, relu=False,
        zero_gamma=zero_init_last_bn,
    )
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def min_image_size(cifar_stem):
    """Smallest input side: the total stride, so the last stage sees at least one pixel."""
    return 8 if cifar_stem else 32


def build_resnet(depth, *, image_size, cifar_stem=False, width_multiplier=1.0, sync_bn=False,
           zero_init_last_bn=True, name=None):
    """ResNet-`depth` encoder: float32 images [N, H, W, 3] in [0, 1] -> pooled r [N, De].

    De is 512 * width_multiplier for 18/34 layers and 2048 * width_multiplier above.
    cifar_stem replaces the 7x7 stride-2 convolution and max-pool with one 3x3
    stride-1 convolution. zero_init_last_bn starts each block's last BN gamma at
    zero, so every residual block begins as the identity.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}; got {depth}.")
    if not width_multiplier > 0:
        raise ValueError(f"model.width_multiplier must be > 0; got {width_multiplier}.")
    smallest = min_image_size(cifar_stem)
    if image_size < smallest:
        raise ValueError(
            f"image_size {image_size} is too small for resnet{depth} with "
            f"cifar_stem={cifar_stem}: it needs at least {smallest} (its total stride)."
        )
    kind, stage_blocks = RESNET_DEPTHS[depth]
    block_fn = _basic_block if kind == "basic" else _bottleneck_block

    def width(channels):
        return max(1, int(channels * width_multiplier))

    images = keras.Input((image_size, image_size, 3), name="images")
    x = ChannelStandardization(
        IMAGENET_MEAN, IMAGENET_STD, dtype="float32", name="standardize"
    )(images)
    if cifar_stem:
        x = _conv_bn(x, width(64), 3, 1, "stem", sync_bn=sync_bn)
    else:
        x = _conv_bn(x, width(64), 7, 2, "stem", sync_bn=sync_bn)
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)

    for stage, num_blocks in enumerate(stage_blocks):
        for block in range(num_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = block_fn(
                x, width(64 * 2**stage), stride, f"stage{stage + 1}_block{block + 1}",
                sync_bn=sync_bn, zero_init_last_bn=zero_init_last_bn,
            )
    # Pool in float32 so r keeps full precision under mixed_bfloat16.
    r = keras.layers.GlobalAveragePooling2D(dtype="float32", name="embedding")(x)
    return keras.Model(images, r, name=name or f"resnet{depth}")
