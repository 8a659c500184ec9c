r"""SimCLR baseline, ResNet-50 (CIFAR stem) on CIFAR10: labels withheld from the loss.

Paper row: the PyTorch reference's SimCLR row for CIFAR10 (ResNet-50, batch 1024,
temperature 0.5, SGD lr 0.5, 1000 epochs); linear stage SGD for 100 epochs.

Command:
  python main.py --config=configs/cifar10_r50_simclr.py --workdir=/tmp/simclr_cifar10

Expected: below SupCon (the reference lists SimCLR at 70.7% on CIFAR-100);
untested at full length here.
Hardware/time: 8 V100 GPUs about a day.
"""

import os
import runpy

SUPCON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_r50.py")


def get_config(arg=None):
    """configs/cifar10_r50.py with labels withheld; no arguments."""
    if arg is not None:
        raise ValueError(f"configs/cifar10_r50_simclr.py takes no argument; got {arg!r}")
    config = runpy.run_path(SUPCON)["get_config"]()
    config.method = "simclr"
    config.loss.temperature = 0.5  # SimCLR's temperature for CIFAR
    return config
