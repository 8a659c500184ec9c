r"""SupCon ResNet-200 on ImageNet with Stacked RandAugment.

Paper row: Table 2 and the abstract, SupCon ResNet-200: 81.4% top-1. Official recipe:
google-research `supcon/scripts/supcon_imagenet_resnet200.sh`, otherwise
configs/imagenet_r50.py (docs/recipes.md): global batch 4096, 700
epochs, LARS base lr 0.2 (peak 3.2), weight decay 1e-4; STACKED_RANDAUGMENT at
magnitude 1.0: TF-style colour jitter (0.8/0.8/0.8/0.2, p 0.8), RandAugment N 2 M 10,
grayscale p 0.2, blur p 0.5; stage two RMSProp base 0.05 (peak 0.8), 90 epochs.

Command:
  python main.py --config=configs/imagenet_r200.py --tpu=my-tpu --workdir=gs://bucket/supcon_r200

Expected: about 81.4% top-1 on the validation split (paper; not run here: no TPU).
Hardware/time: 256 TPU v3 cores (16 images each), the official setup; several days.
"""

import os
import runpy

R50 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_r50.py")


def get_config(arg=None):
    """configs/imagenet_r50.py with ResNet-200's recipe; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r200.py takes no argument; got {arg!r}")
    config = runpy.run_path(R50)["get_config"]()
    config.model.name = "resnet200"
    config.data.augment = "stacked_randaugment"
    config.data.color_strength = 1.0
    config.data.blur = True
    config.data.blur_probability = 0.5
    config.optim.base_lr = 0.2
    config.optim.weight_decay = 1e-4
    config.train.global_batch_size = 4096
    config.train.epochs = 700
    config.linear.global_batch_size = 4096
    return config
