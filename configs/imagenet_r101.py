r"""SupCon ResNet-101 on ImageNet.

Paper row: Table 2, SupCon ResNet-101 (AutoAugment); no ResNet-101 figure is confirmed
by the sources this project follows, so none is promised here. Official recipe: google-research
`supcon/scripts/supcon_imagenet_resnet101.sh`, otherwise configs/imagenet_r50.py
(docs/recipes.md): global batch 4096, LARS base lr 0.4 (peak 6.4),
350 epochs, weight decay 1e-4; stage two RMSProp base 0.05 (peak 0.8), x0.97 every
0.5 epoch, 90 epochs, L2 1e-6.

Command:
  python main.py --config=configs/imagenet_r101.py --tpu=my-tpu --workdir=gs://bucket/supcon_r101

Expected: above the ResNet-50 row's 78.7% (not run here: no TPU).
Hardware/time: 128 TPU v3 cores (32 images each), the official setup; one to two days.
"""

import os
import runpy

R50 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_r50.py")


def get_config(arg=None):
    """configs/imagenet_r50.py with ResNet-101's recipe; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r101.py takes no argument; got {arg!r}")
    config = runpy.run_path(R50)["get_config"]()
    config.model.name = "resnet101"
    config.optim.weight_decay = 1e-4
    config.train.global_batch_size = 4096
    config.linear.global_batch_size = 4096
    return config
