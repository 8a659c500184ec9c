r"""SupCon ResNet-101 on ImageNet.

Paper row: Table 2, SupCon ResNet-101 (AutoAugment). Recipe from the official scripts:
global batch 4096, LARS base lr 0.3, weight decay 1e-4, temperature 0.1, 350 epochs,
then RMSProp linear classifier for 90 epochs.

Command:
  python main.py --config=configs/imagenet_r101.py --tpu=my-tpu --workdir=gs://bucket/supcon_r101

Expected: the paper's ResNet-101 row, about 80% top-1 (untested here; no TPU).
Hardware/time: TPU v3-128 or larger, a day or more.
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
    config.optim.base_lr = 0.3
    config.optim.weight_decay = 0.0001
    config.train.global_batch_size = 4096
    return config
