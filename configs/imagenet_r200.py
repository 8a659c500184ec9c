r"""SupCon ResNet-200 on ImageNet with Stacked RandAugment.

Paper row: Table 2, SupCon ResNet-200: 81.4% top-1 (+0.8 over cross-entropy with the
same architecture). Recipe from the official scripts: global batch 4096, Stacked
RandAugment, LARS base lr 0.2, temperature 0.1, 700 epochs, RMSProp linear stage
for 90 epochs. Weight decay is not stated for this row; 1e-4 as for ResNet-101.

Command:
  python main.py --config=configs/imagenet_r200.py --tpu=my-tpu --workdir=gs://bucket/supcon_r200

Expected: about 81.4% top-1 on the validation split (untested here; no TPU).
Hardware/time: TPU v3-256 or larger, several days.
"""

import os
import runpy

R50 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_r50.py")


def get_config(arg=None):
    """configs/imagenet_r50.py with ResNet-200's recipe; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r200.py takes no argument; got {arg!r}")
    config = runpy.run_path(R50)["get_config"]()
    config.data.augment = "stacked_randaugment"
    config.model.name = "resnet200"
    config.optim.base_lr = 0.2
    config.optim.weight_decay = 0.0001  # not stated for this row; as for ResNet-101
    config.train.global_batch_size = 4096
    config.train.epochs = 700
    return config
