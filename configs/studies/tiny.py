r"""The smallest study: 2 methods x 2 learning rates x 1 seed on the tiny digits configs.

For tests/test_study.py (each point a few seconds of training after TensorFlow's
start-up), and to see what a study writes:

  python -m supcon_tf.study --study=configs/studies/tiny.py --root=/tmp/studies
  python -m supcon_tf.study --study=configs/studies/tiny.py --root=/tmp/studies --list

Time: 4 main.py runs of 25-50 s each, most of it start-up and tracing, on the
2-core AMD EPYC (oneDNN on), shared with other jobs.
"""

# Stage two shortened to one epoch: the test is about the runner, not the accuracy.
FAST = {"linear.epochs": 1}


def get_study():
    return {
        "methods": {
            "supcon": {"config": "configs/digits.py:tiny", "overrides": FAST},
            "ce": {"config": "configs/digits_ce.py:tiny", "overrides": FAST},
        },
        "axes": [
            {"name": "learning_rate", "values": [{"optim.base_lr": 0.1}, {"optim.base_lr": 0.3}]},
        ],
        "seeds": [0],
        "plot": {"kind": "line", "title": "tiny digits: top-1 against the learning rate"},
    }
