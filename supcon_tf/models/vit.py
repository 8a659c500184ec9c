"""Vision Transformer encoders (Dosovitskiy et al., 2021): ViT-B/16 and a tiny ViT for tests.

Pre-norm transformer blocks over non-overlapping patches, a learned class token
and learned position embeddings; r is the class token after the final
LayerNorm, as in the original ViT.
"""

import dataclasses

import keras
from keras import ops

from supcon_tf.models.resnet import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_STD, ChannelStandardization


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int


VIT_CONFIGS = {
    "vit_b16": ViTConfig(
        patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_size=3072
    ),
    # Small enough for unit tests on 32x32 images (64 patches).
    "vit_tiny": ViTConfig(patch_size=4, hidden_size=64, num_layers=2, num_heads=2, mlp_size=128),
}

LAYER_NORM_EPSILON = 1e-6


class ClassTokenAndPositions(keras.layers.Layer):
    """Prepends a learned class token to [N, T, D] tokens and adds learned position embeddings."""

    def build(self, input_shape):
        num_tokens, hidden = input_shape[1], input_shape[2]
        self.class_token = self.add_weight(
            shape=(1, 1, hidden), initializer="zeros", name="class_token"
        )
        self.position_embedding = self.add_weight(
            shape=(1, num_tokens + 1, hidden),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position_embedding",
        )

    def call(self, tokens):
        batch, hidden = ops.shape(tokens)[0], tokens.shape[-1]
        class_tokens = ops.broadcast_to(
            ops.cast(self.class_token, tokens.dtype), (batch, 1, hidden)
        )
        tokens = ops.concatenate([class_tokens, tokens], axis=1)
        return tokens + ops.cast(self.position_embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])


def _transformer_block(x, config, name):
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{name}_ln1")(x)
    y = keras.layers.MultiHeadAttention(
        config.num_heads, config.hidden_size // config.num_heads, name=f"{name}_attention"
    )(y, y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{name}_ln2")(x)
    y = keras.layers.Dense(config.mlp_size, activation="gelu", name=f"{name}_mlp1")(y)
    y = keras.layers.Dense(config.hidden_size, name=f"{name}_mlp2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def build_vit(variant, *, image_size, input_mean=DEFAULT_INPUT_MEAN, input_std=DEFAULT_INPUT_STD):
    """ViT encoder `variant`: float32 images [N, H, W, 3] in [0, 1] -> r [N, hidden_size].

    The images are standardized to (x - input_mean) / input_std first; the default
    maps [0, 1] to [-1, 1], the input range of the original ViT.
    """
    if variant not in VIT_CONFIGS:
        raise ValueError(f"ViT variant must be one of {sorted(VIT_CONFIGS)}; got {variant!r}.")
    config = VIT_CONFIGS[variant]
    if image_size < config.patch_size or image_size % config.patch_size:
        raise ValueError(
            f"image_size {image_size} does not fit {variant}: it must be a positive "
            f"multiple of the patch size {config.patch_size}."
        )
    grid = image_size // config.patch_size

    images = keras.Input((image_size, image_size, 3), name="images")
    x = ChannelStandardization(input_mean, input_std, dtype="float32", name="standardize")(images)
    x = keras.layers.Conv2D(
        config.hidden_size, config.patch_size, strides=config.patch_size, name="patch_embedding"
    )(x)
    x = keras.layers.Reshape((grid * grid, config.hidden_size), name="patch_tokens")(x)
    x = ClassTokenAndPositions(name="tokens")(x)
    for layer in range(config.num_layers):
        x = _transformer_block(x, config, f"block{layer + 1}")
    # LayerNorm acts per token, so normalizing only the class token equals slicing after it.
    class_token = x[:, 0]
    r = keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, dtype="float32", name="embedding"
    )(class_token)
    return keras.Model(images, r, name=variant)
