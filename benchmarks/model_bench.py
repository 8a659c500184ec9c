"""ResNet-50 forward + backward at 224 under XLA on the CPU: supcon_tf against stock Keras.

Both networks run the same jit-compiled step (training-mode forward, a scalar
loss on the pooled features, gradients of every trainable variable) in the same
process, with repetitions interleaved so background load hits both alike. The
figure of merit is the ratio of median step times (target: <= 1.1).

    python benchmarks/model_bench.py [--batch_size 8] [--repeats 7]

Prints a table, then one JSON object on the last line.
"""

import argparse
import json
import statistics
import time

import keras
import tensorflow as tf

from supcon_tf import models

IMAGE_SIZE = 224


def compiled_step(network):
    @tf.function(jit_compile=True)
    def step(images):
        with tf.GradientTape() as tape:
            features = network(images, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(features, tf.float32)))
        return loss, tape.gradient(loss, network.trainable_variables)

    return step


def run_once(step, images):
    start = time.perf_counter()
    loss, grads = step(images)
    # Fetching values waits for the whole step to finish.
    loss.numpy()
    grads[0].numpy()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    images = tf.random.stateless_uniform((args.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), seed=(0, 0))
    networks = {
        "supcon_resnet50": models.encoder("resnet50", image_size=IMAGE_SIZE),
        "keras_resnet50": keras.applications.ResNet50(
            weights=None, include_top=False, pooling="avg",
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        ),
    }
    steps = {name: compiled_step(network) for name, network in networks.items()}
    compile_s = {name: run_once(step, images) for name, step in steps.items()}  # compiles
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(run_once(step, images))

    medians_ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"ResNet-50 fwd+bwd, batch {args.batch_size} at {IMAGE_SIZE}x{IMAGE_SIZE}, XLA, CPU; "
          f"median of {args.repeats} interleaved runs")
    print(f"{'network':<18}{'params':>12}{'compile s':>11}{'median ms':>11}{'min ms':>9}")
    for name, network in networks.items():
        params = sum(int(tf.size(v)) for v in network.trainable_variables)
        print(f"{name:<18}{params:>12,}{compile_s[name]:>11.1f}{medians_ms[name]:>11.0f}"
              f"{1000 * min(times[name]):>9.0f}")
    result = {
        "supcon_resnet50_ms": round(medians_ms["supcon_resnet50"], 1),
        "keras_resnet50_ms": round(medians_ms["keras_resnet50"], 1),
        "ratio": round(medians_ms["supcon_resnet50"] / medians_ms["keras_resnet50"], 3),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
