"""main.py with the loss's cross-replica gather broken on purpose, for tests/test_selfcheck.py.

    python tests/selfcheck_wrong_gather.py --config=... --mode=selfcheck ...

supcon_tf.cross_replica.gather_rows is replaced by `rotated_gather_rows`: every
replica's rows arrive, but each block one replica further on, so a replica finds
another replica's samples where its own should be. Everything else is main.py as
a user runs it; --mode=selfcheck must fail (exit status 1).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import main  # noqa: E402  (defines the flags; loads no TensorFlow)
from absl import app  # noqa: E402


def rotated_gather_rows(values, real_gather_rows):
    """The real gather, its replica blocks rolled by one (a no-op on one replica)."""
    import tensorflow as tf

    from supcon_tf import cross_replica

    gathered = real_gather_rows(values)
    if cross_replica.num_replicas() == 1:
        return gathered
    return tf.roll(gathered, shift=values.shape[0], axis=0)


def break_gather():
    from supcon_tf import cross_replica

    real = cross_replica.gather_rows
    cross_replica.gather_rows = lambda values: rotated_gather_rows(values, real)


if __name__ == "__main__":
    break_gather()
    app.run(main.main, flags_parser=main.parse_flags)
