"""Names shared by train.py, config validation and main.py. It imports nothing of the
project and no TensorFlow: main.py parses its flags before TensorFlow loads, and
validating a config does not load the training code."""

import ml_collections

METHODS = ("supcon", "simclr", "ce")
MODES = ("train", "eval", "train_then_eval")
LINEAR_PROTOCOLS = ("augmented", "cached")
BN_MODES = ("batch_stats", "inference")
CROSS_ENTROPY_VIEWS = ("first", "all")
# Stage two's data stream: a seed of its own, so its views are not stage one's.
STAGE_TWO_SEED_OFFSET = 10_000


def stage_two_data_config(config):
    """config.data with the fields of config.linear.data overridden."""
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.update(config.linear.data.to_dict())
    return data_config
