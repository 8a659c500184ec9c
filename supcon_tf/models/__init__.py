"""Encoders (ResNet v1 18..200, ViT) and the ContrastiveModel that wraps them.

    encoder(name, *, image_size, ...)   images [N, H, W, 3] in [0, 1] -> r [N, De]
    ContrastiveModel(encoder, projection_dims, num_classes=..., ...)
    linear_head(num_classes, init=...)  stage-two classifier; feed it model.head_input(r)
    build_model(config.model, *, num_classes, image_size)
    describe_model(model)               architecture summary dict
    check_config(config.model, image_size=...)  raises ValueError naming the bad field
"""

from supcon_tf import constants
from supcon_tf.models.contrastive import ContrastiveModel, describe_model
from supcon_tf.models.heads import CLASSIFIER_INITS, HEAD_INITS, linear_head, projection_head
from supcon_tf.models.resnet import (
    CONV_INITS,
    DEFAULT_INPUT_MEAN,
    DEFAULT_INPUT_STD,
    RESNET_DEPTHS,
    build_resnet,
    min_image_size,
)
from supcon_tf.models.vit import VIT_CONFIGS, build_vit

ENCODER_NAMES = tuple(f"resnet{depth}" for depth in RESNET_DEPTHS) + tuple(VIT_CONFIGS)


def encoder(name, *, image_size, cifar_stem=False, width_multiplier=1.0, sync_bn=False,
            zero_init_last_bn=True, conv_init="fan_in_truncated_normal",
            input_mean=DEFAULT_INPUT_MEAN, input_std=DEFAULT_INPUT_STD):
    """The encoder `name` as a keras.Model: float32 images [N, H, W, 3] in [0, 1] -> r [N, De].

    Input normalization, (x - input_mean) / input_std, happens inside; the default
    maps [0, 1] to [-1, 1] (GR ImageNet, and the original ViT). ResNets honour
    every argument. ViTs have no batch norm, residual-branch BN or ResNet convs, so
    they ignore sync_bn, zero_init_last_bn and conv_init; they have a fixed width
    and stem, so they reject cifar_stem=True and width_multiplier != 1 rather than
    ignore them.
    """
    if name not in ENCODER_NAMES:
        raise ValueError(
            f"model.name {name!r} is unknown; valid names: {', '.join(ENCODER_NAMES)}."
        )
    if name in VIT_CONFIGS:
        if cifar_stem:
            raise ValueError(f"model.cifar_stem=True applies to ResNets only, not {name}.")
        if width_multiplier != 1.0:
            raise ValueError(
                f"model.width_multiplier must be 1.0 for {name}; got {width_multiplier}."
            )
        return build_vit(name, image_size=image_size, input_mean=input_mean, input_std=input_std)
    return build_resnet(
        int(name[len("resnet"):]),
        image_size=image_size,
        cifar_stem=cifar_stem,
        width_multiplier=width_multiplier,
        sync_bn=sync_bn,
        zero_init_last_bn=zero_init_last_bn,
        conv_init=conv_init,
        input_mean=input_mean,
        input_std=input_std,
    )


def build_model(model_config, *, num_classes, image_size):
    """ContrastiveModel from a config.model slice (check_config has accepted it)."""
    return ContrastiveModel(
        encoder(
            model_config.name,
            image_size=image_size,
            cifar_stem=model_config.cifar_stem,
            width_multiplier=model_config.width_multiplier,
            sync_bn=model_config.sync_bn,
            zero_init_last_bn=model_config.zero_init_last_bn,
            conv_init=model_config.conv_init,
            input_mean=tuple(model_config.input_mean),
            input_std=tuple(model_config.input_std),
        ),
        projection_dims=tuple(model_config.projection_dims),
        num_classes=num_classes,
        projection_bn=model_config.projection_bn,
        projection_output_bias=model_config.projection_output_bias,
        head_init=model_config.head_init,
        normalize_embedding=model_config.normalize_embedding,
        classifier_init=model_config.classifier_init,
        sync_bn=model_config.sync_bn,
        name="contrastive_model",
    )


def check_config(model_config, *, image_size):
    """Raises ValueError naming the config.model field (or config.data.image_size) that
    cannot build an encoder, with the fix."""
    name = model_config.name
    constants.check_choice("model.name", name, ENCODER_NAMES)
    constants.check_choice("model.conv_init", model_config.conv_init, CONV_INITS)
    constants.check_choice("model.head_init", model_config.head_init, HEAD_INITS)
    constants.check_choice("model.classifier_init", model_config.classifier_init,
                           CLASSIFIER_INITS)
    _check_widths(model_config)
    for field in ("input_mean", "input_std"):
        value = tuple(model_config[field])
        if len(value) != 3:
            raise ValueError(f"config.model.{field}={value} must have 3 values, one per "
                             "RGB channel, in [0, 1] pixel units")
    if min(model_config.input_std) <= 0:
        raise ValueError(f"config.model.input_std={tuple(model_config.input_std)} must be > 0")
    _check_image_size(model_config, image_size)


def _check_widths(model_config):
    width, name = model_config.width_multiplier, model_config.name
    if not width > 0:
        raise ValueError(f"config.model.width_multiplier={width} must be > 0 (1.0: the "
                         "published widths)")
    dims = tuple(model_config.projection_dims)
    if not dims or any(d != int(d) or d < 1 for d in dims):
        raise ValueError(f"config.model.projection_dims={dims} must list the head's widths "
                         "(hidden..., output), each an integer >= 1, e.g. (2048, 128)")
    if name in VIT_CONFIGS:
        if model_config.cifar_stem:
            raise ValueError(f"config.model.cifar_stem=True applies to ResNets only, not "
                             f"{name}; set it to False")
        if width != 1.0:
            raise ValueError(f"config.model.width_multiplier={width} must be 1.0 for {name} "
                             "(ViTs have fixed widths)")


def _check_image_size(model_config, size):
    name = model_config.name
    if name in VIT_CONFIGS:
        smallest = VIT_CONFIGS[name].patch_size
    else:
        smallest = min_image_size(model_config.cifar_stem)
    if size < smallest:
        raise ValueError(
            f"config.data.image_size={size} is too small for config.model.name={name!r} "
            f"(cifar_stem={model_config.cifar_stem}); set it to at least {smallest}")
    if name in VIT_CONFIGS and size % smallest:
        raise ValueError(
            f"config.data.image_size={size} is not a multiple of {name}'s patch size "
            f"{smallest}; set it to e.g. {size // smallest * smallest}")


__all__ = [
    "CLASSIFIER_INITS",
    "CONV_INITS",
    "ENCODER_NAMES",
    "HEAD_INITS",
    "ContrastiveModel",
    "build_model",
    "check_config",
    "describe_model",
    "encoder",
    "linear_head",
    "projection_head",
]
