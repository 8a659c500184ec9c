"""Names shared by train.py, the config checks and main.py, and the one-line check of a
name. It imports nothing of the project and no TensorFlow: main.py parses its flags
before TensorFlow loads."""

import ml_collections

METHODS = ("supcon", "simclr", "ce")
MODES = ("train", "eval", "train_then_eval")
LINEAR_PROTOCOLS = ("augmented", "cached")
BN_MODES = ("batch_stats", "inference")
CROSS_ENTROPY_VIEWS = ("first", "all")
# Stage two's data stream: a seed of its own, so its views are not stage one's.
STAGE_TWO_SEED_OFFSET = 10_000


def stage_two_runs(config):
    """Whether a linear classifier trains after stage one: ce reports its own classifier."""
    return config.method != "ce"


def stage_two_data_config(config):
    """config.data with the fields of config.linear.data overridden."""
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.update(config.linear.data.to_dict())
    return data_config


def check_choice(field, value, valid):
    """Raises ValueError naming config.<field> unless `value` is one of `valid`."""
    if value not in valid:
        raise ValueError(
            f"config.{field}={value!r} is unknown; set it to one of: {', '.join(valid)}")
