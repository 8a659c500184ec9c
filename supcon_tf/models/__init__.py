"""Encoders (ResNet v1 18..200, ViT) and the ContrastiveModel that wraps them.

    encoder(name, *, image_size, ...)   images [N, H, W, 3] in [0, 1] -> r [N, De]
    ContrastiveModel(encoder, projection_dims, num_classes=..., projection_bn=False)
    linear_head(num_classes)            stage-two classifier
    build_model(config.model, *, num_classes, image_size)
"""

from supcon_tf.models.contrastive import ContrastiveModel
from supcon_tf.models.heads import linear_head, projection_head
from supcon_tf.models.resnet import RESNET_DEPTHS, build_resnet
from supcon_tf.models.vit import VIT_CONFIGS, build_vit

ENCODER_NAMES = tuple(f"resnet{depth}" for depth in RESNET_DEPTHS) + tuple(VIT_CONFIGS)


def encoder(name, *, image_size, cifar_stem=False, width_multiplier=1.0, sync_bn=False,
            zero_init_last_bn=True):
    """The encoder `name` as a keras.Model: float32 images [N, H, W, 3] in [0, 1] -> r [N, De].

    Input normalization happens inside. ResNets honour every argument; ViTs have
    no batch norm and a fixed width, so they reject cifar_stem=True and
    width_multiplier != 1 rather than ignore them.
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
        return build_vit(name, image_size=image_size)
    return build_resnet(
        int(name[len("resnet"):]),
        image_size=image_size,
        cifar_stem=cifar_stem,
        width_multiplier=width_multiplier,
        sync_bn=sync_bn,
        zero_init_last_bn=zero_init_last_bn,
    )


def build_model(model_config, *, num_classes, image_size):
    """ContrastiveModel from a config.model slice (fields as in the team contract)."""
    return ContrastiveModel(
        encoder(
            model_config.name,
            image_size=image_size,
            cifar_stem=model_config.cifar_stem,
            width_multiplier=model_config.width_multiplier,
            sync_bn=model_config.sync_bn,
            zero_init_last_bn=model_config.zero_init_last_bn,
        ),
        projection_dims=tuple(model_config.projection_dims),
        num_classes=num_classes,
        projection_bn=model_config.projection_bn,
        name="contrastive_model",
    )


__all__ = [
    "ENCODER_NAMES",
    "ContrastiveModel",
    "build_model",
    "encoder",
    "linear_head",
    "projection_head",
]
