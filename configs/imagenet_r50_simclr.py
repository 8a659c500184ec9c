r"""SimCLR (self-supervised contrastive) baseline, ResNet-50 on ImageNet.

Paper row: the SimCLR ResNet-50 reference in Table 2 (the SimCLR paper reports 69.3%).
Labels are withheld from the contrastive loss (NT-Xent); SimCLR's augmentation
(crops, flips, strong colour distortion, blur), LARS base lr 0.3, weight decay 1e-6,
temperature 0.1, batch 4096, 1000 epochs.

Command:
  python main.py --config=configs/imagenet_r50_simclr.py --tpu=my-tpu --workdir=gs://bucket/simclr_r50

Expected: about 69% top-1 after the linear stage (untested here; no TPU).
Hardware/time: TPU v3-128, a few days.
"""

import os
import runpy

SUPCON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_r50.py")


def get_config(arg=None):
    """configs/imagenet_r50.py with SimCLR's recipe; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r50_simclr.py takes no argument; got {arg!r}")
    config = runpy.run_path(SUPCON)["get_config"]()
    config.method = "simclr"
    config.data.augment = "simaugment"  # crops, flips, strong colour distortion...
    config.data.blur = True  # ...and blur, as in SimCLR
    config.optim.base_lr = 0.3
    config.optim.weight_decay = 1e-6
    config.train.global_batch_size = 4096
    config.train.epochs = 1000
    return config
