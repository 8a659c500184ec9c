r"""SimCLR (self-supervised contrastive) baseline, ResNet-50 on ImageNet.

Paper row: Table 2's SimCLR ResNet-50 reference: 70.2% top-1. Official recipe:
google-research `supcon/scripts/simclr_imagenet_resnet50.sh` with the SIMCLR group of
`configs.sh` (docs/recipes.md): labels withheld from the loss, T 0.1
without scaling; global batch 6144, 100 epochs, LARS base lr 0.3 (peak 7.2), 12
warmup epochs, cosine, weight decay 1e-4; projection: the raw 2048-d embedding
through [Dense 2048 (no bias), BN, ReLU] x 2, then Dense 128 (no bias), L2; the
SimCLR augmentation at strength 1.0 (TF-style jitter, grayscale 0.2, blur p 0.5).
Stage two: 90 epochs, Nesterov base lr 0.1 (peak 2.4), 12 warmup epochs, cosine,
L2 1e-6 on a zero-initialized classifier, label smoothing 0.05.

Command:
  python main.py --config=configs/imagenet_r50_simclr.py --tpu=my-tpu --workdir=gs://bucket/simclr_r50

Expected: about 70.2% top-1 after stage two (paper; not run here: no TPU).
Hardware/time: 128 TPU v3 cores, the official setup; several hours.
"""

import os
import runpy

from ml_collections import config_dict

SUPCON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_r50.py")


def get_config(arg=None):
    """configs/imagenet_r50.py with SimCLR's recipe; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r50_simclr.py takes no argument; got {arg!r}")
    config = runpy.run_path(SUPCON)["get_config"]()
    config.method = "simclr"
    config.data.augment = "simaugment"
    config.data.color_strength = 1.0
    config.data.color_jitter_style = "tf"
    config.data.blur = True
    config.data.blur_probability = 0.5
    config.model.normalize_embedding = False
    config.model.projection_dims = (2048, 2048, 128)
    config.model.projection_bn = True
    config.model.classifier_init = "zeros"
    config.loss.base_temperature = config_dict.placeholder(float)  # no scaling by T
    config.optim.base_lr = 0.3
    config.optim.weight_decay = 1e-4
    config.train.epochs = 100
    config.linear.optim.name = "nesterov"
    config.linear.optim.base_lr = 0.1
    config.linear.optim.schedule = "cosine"
    return config
