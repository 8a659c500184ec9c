r"""Cross-entropy baseline on the embedded digits dataset (compare with configs/digits.py).

Paper row: none; the cross-entropy side of the paper's comparison at laptop scale.
Same encoder, augmentation, images per step (each of the 2 views counts as an
example), optimizer and epochs as configs/digits.py; the model's own classifier,
trained end to end, is evaluated on the test split.

Command:
  python main.py --config=configs/digits_ce.py --workdir=/tmp/ce_digits
  python main.py --config=configs/digits_ce.py:tiny --workdir=/tmp/ce_digits_tiny   # tests

Expected: test top-1 0.992 for seed 0 (seeds 0-2: 0.992, 0.989, 0.992), against
0.983 / 0.978 / 0.986 for SupCon, on an AMD EPYC with AVX2, oneDNN off (with oneDNN
on: 0.986, 0.986, 0.997). Hardware/time: 2 CPU cores, no accelerator, no network;
92 s wall for seed 0, start-up included (55 s with oneDNN on; target: 3 minutes).
"""

import os
import runpy

SUPCON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")


def get_config(arg=None):
    """arg: as for configs/digits.py (None, or 'tiny' for tests)."""
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/digits_ce.py takes no argument or 'tiny'; got {arg!r}")
    config = runpy.run_path(SUPCON)["get_config"](arg)
    config.method = "ce"  # all else as in digits.py, the tiny variant included
    return config
