r"""Stability (the paper's Fig. 4a) on digits: SupCon against cross-entropy as one thing
at a time changes from each method's recipe (configs/digits.py, configs/digits_ce.py).

  python -m supcon_tf.study --study=configs/studies/stability.py --root=runs/studies

Axes, each varied alone from the recipe (SimAugment, SGD with momentum, base lr 0.3):
  augmentation   simaugment, autoaugment, randaugment, stacked_randaugment
  optimizer      sgd, lars, rmsprop (same base lr; RMSProp with the recipe's epsilon 1.0)
  learning_rate  base lr 0.1, 0.3, 1.0 (scaled by batch / 256, as every run)
Seeds 0-2. The figure has a box per method and axis over its values and seeds: the
paper's claim is that SupCon's box is the narrower one.

AutoAugment's and RandAugment's constants are ImageNet's (translations up to 250 and
100 pixels, cutout up to 100): on 8 x 8 digits those ops can move or blank out the
whole digit, so the augmentation axis tests both methods far from their comfort.

Points: 8 runs per method and seed (the recipe is shared by the three axes) x 2
methods x 3 seeds = 48 main.py runs of 60 + 30 epochs. A run took 85 s (SupCon) and
55 s (cross-entropy) on the machine alone (configs/digits.py, configs/digits_ce.py),
and about 2.5 min with four other jobs on its 2 cores: 1 h 10 min alone, up to 2 h
shared, on the 2-core AMD EPYC (oneDNN on).
"""

SEEDS = [0, 1, 2]


def get_study():
    return {
        "methods": {"supcon": "configs/digits.py", "ce": "configs/digits_ce.py"},
        "axes": [
            {"name": "augmentation", "values": [
                {"data.augment": name} for name in
                ("simaugment", "autoaugment", "randaugment", "stacked_randaugment")]},
            {"name": "optimizer", "values": [
                {"optim.name": name} for name in ("sgd", "lars", "rmsprop")]},
            {"name": "learning_rate", "values": [
                {"optim.base_lr": lr} for lr in (0.1, 0.3, 1.0)]},
        ],
        "seeds": SEEDS,
        "plot": {"kind": "box", "title": "digits: top-1 as one thing changes from the recipe"},
    }
