r"""SupCon train step against a cross-entropy train step: same encoder, same images per step.

Both steps are supcon_tf.train's own per-replica steps inside its steps_per_loop loop:
supcon = encoder + projection + SupCon loss + online classifier + optimizer update;
ce = encoder + classifier + cross-entropy + optimizer update, each of the V views
counted as an example, so both push batch * V images through the encoder per step.
Each variant runs without and with XLA (jit_compile), timed side by side in
interleaved rounds; the median round counts. Target: supcon / ce <= 1.05.
supcon_queue is the supcon step with the momentum key encoder and a queue of
--queue_size keys (supcon_tf/momentum.py), without XLA (the CPU default); its cost
is queue_ratio = supcon_queue / supcon.

  python benchmarks/step_bench.py                       # the digits encoder, 16x16, 2 x 128 images
  python benchmarks/step_bench.py --model=resnet50 --image_size=64 --batch=32

The last line is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import digits  # noqa: E402
from supcon_tf import train  # noqa: E402

NUM_CLASSES = 10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="encoder name (default: the digits config's)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128, help="samples per step (x views images)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--steps_per_call", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queue_size", type=int, default=4096, help="keys in the queue")
    return parser.parse_args()


def make_config(args, method, queue_size=0):
    config = digits.get_config()
    config.method = method
    config.loss.queue_size = queue_size
    config.data.num_views = args.views
    config.train.global_batch_size = args.batch
    if args.model:
        config.model.name = args.model
    if args.width:
        config.model.width_multiplier = args.width
    if args.image_size:
        config.data.image_size = args.image_size
    config.model.cifar_stem = config.data.image_size < 64
    return config


def make_runner(args, config, jit_compile):
    strategy = tf.distribute.get_strategy()
    model, optimizer, checkpoint, _ = train.build_stage_one(
        config, strategy, num_classes=NUM_CLASSES, num_train_examples=1000 * args.batch)
    momentum = getattr(checkpoint, "momentum", None)
    loop = train.make_train_loop(
        strategy, train.make_replica_step(config, model, optimizer, 1, momentum=momentum),
        jit_compile)
    rng = np.random.default_rng(0)
    size = config.data.image_size
    batch = {"views": rng.uniform(size=(args.batch, args.views, size, size, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)}
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    num_steps = tf.constant(args.steps_per_call)
    loop(iterator, num_steps)  # trace and compile

    def run():
        started = time.perf_counter()
        float(loop(iterator, num_steps)["loss"])  # waits for the result
        return (time.perf_counter() - started) / args.steps_per_call * 1000

    return run


def main(args):
    runners = {(method, xla): make_runner(args, make_config(args, method), xla)
               for xla in (False, True) for method in ("supcon", "ce")}
    runners[("supcon_queue", False)] = make_runner(
        args, make_config(args, "supcon", args.queue_size), False)
    times = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            times[key].append(run())
    ms = {key: statistics.median(values) for key, values in times.items()}
    for (method, xla), value in ms.items():
        print(f"{method:12s} xla={xla!s:5s} {value:8.2f} ms/step")
    config = make_config(args, "supcon")
    result = {
        "benchmark": "step_bench",
        "model": config.model.name, "width": config.model.width_multiplier,
        "image_size": config.data.image_size, "batch": args.batch, "views": args.views,
        "images_per_step": args.batch * args.views,
        "supcon_ms": round(ms[("supcon", False)], 2), "ce_ms": round(ms[("ce", False)], 2),
        "supcon_xla_ms": round(ms[("supcon", True)], 2), "ce_xla_ms": round(ms[("ce", True)], 2),
        "ratio": round(ms[("supcon", False)] / ms[("ce", False)], 3),
        "ratio_xla": round(ms[("supcon", True)] / ms[("ce", True)], 3),
        "xla_speedup_supcon": round(ms[("supcon", False)] / ms[("supcon", True)], 3),
        "target_ratio": 1.05,
        "queue_size": args.queue_size, "supcon_queue_ms": round(ms[("supcon_queue", False)], 2),
        "queue_ratio": round(ms[("supcon_queue", False)] / ms[("supcon", False)], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(parse_args())
