"""SimAugment's photometric ops against Keras 3's augmentation layers, per view.

supcon_tf.data writes its own photometric ops because Keras 3's layers were
measured slower (and they draw from stateful seeds). This times both on the same
views (float32 in 0-255, as the crops leave them) in one process, in alternating
rounds, and reports core-milliseconds per view (process CPU time, so that work
spread over threads is counted in full):

  ours          augment.view_photometry on each image's 2 views, as the input
                pipeline runs it: flip, colour jitter, grayscale, blur
  ours_no_blur  the same without the blur (CIFAR's recipe)
  ours_no_xla, ours_no_blur_no_xla
                the same as plain TF graphs, the path of a TensorFlow build
                without XLA for the host CPU (the TPU wheel: supcon_tf.host_xla)
  keras_<op>    RandomFlip, RandomColorJitter, RandomGrayscale, RandomGaussianBlur
                on the whole batch with SimAugment's settings, each traced by
                tf.function without and with XLA (keras_<op>_xla)

keras_over_ours compares the sum of the faster Keras variant of each op with ours.
Without XLA for the host, ours and ours_no_blur, and the keras_<op>_xla
variants, are left out, and keras_over_ours compares with ours_no_xla.
Run: python benchmarks/augment_bench.py [--views 128] [--size 224] [--rounds 3]
The last line is one JSON object.
"""

import argparse
import json
import os
import statistics

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as main.py; read at TF start-up

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from supcon_tf import host_xla  # noqa: E402
from supcon_tf.data import augment  # noqa: E402

COLOR_STRENGTH = 1.0


def keras_layers():
    """SimAugment's photometric ops as Keras 3 layers, in the paper's order.

    A blur factor (lo, hi) draws each image's blur probability from [lo, hi], so
    (0.5, 0.5) gives the paper's p = 0.5.
    """
    return {
        "flip": keras.layers.RandomFlip("horizontal", seed=1),
        "color_jitter": keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=0.8 * COLOR_STRENGTH,
            contrast_factor=0.8 * COLOR_STRENGTH, saturation_factor=0.8 * COLOR_STRENGTH,
            hue_factor=0.2 * COLOR_STRENGTH, seed=2),
        "grayscale": keras.layers.RandomGrayscale(factor=0.2, seed=3),
        "gaussian_blur": keras.layers.RandomGaussianBlur(
            factor=(0.5, 0.5), kernel_size=2 * augment.BLUR_RADIUS + 1,
            sigma=augment.BLUR_SIGMA_RANGE, value_range=(0, 255), seed=4),
    }


def core_ms_per_view(fn, num_views, min_seconds=0.5):
    """Process CPU time per view, over as many calls as take min_seconds of CPU.

    Repeating cheap calls keeps the 10 ms tick of os.times() a small error.
    """
    start = os.times()
    calls = 0
    seconds = 0.0
    while seconds < min_seconds:
        fn()
        calls += 1
        end = os.times()
        seconds = (end.user - start.user) + (end.system - start.system)
    return seconds / calls / num_views * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=128, help="views (64 images x 2)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    views = tf.random.uniform([args.views, args.size, args.size, 3], 0.0, 255.0, seed=0)
    seed = tf.constant([0, 0])

    def ours(blur, xla):
        images = tf.unstack(tf.reshape(views, [-1, 2, args.size, args.size, 3]))
        fn = tf.function(lambda: [augment.view_photometry(
            pair, augment.fold_seed(seed, i), color_strength=COLOR_STRENGTH, blur=blur)
            for i, pair in enumerate(images)])
        augment.HOST_XLA = xla  # read when fn is traced
        try:
            fn.get_concrete_function()
        finally:
            augment.HOST_XLA = None
        return fn

    xla = host_xla.available()
    candidates = {}
    for compiled in ((True, False) if xla else (False,)):
        suffix = "" if compiled else "_no_xla"
        candidates["ours" + suffix] = ours(True, compiled)
        candidates["ours_no_blur" + suffix] = ours(False, compiled)
    layers = keras_layers()
    for name, layer in layers.items():
        candidates[f"keras_{name}"] = tf.function(lambda layer=layer: layer(views))
        if xla:
            candidates[f"keras_{name}_xla"] = tf.function(lambda layer=layer: layer(views),
                                                          jit_compile=True)
    for fn in candidates.values():
        fn()  # trace and compile outside the timed calls

    costs = {name: [] for name in candidates}
    for round_index in range(args.rounds):
        for name, fn in candidates.items():
            costs[name].append(core_ms_per_view(fn, args.views))
            print(f"round {round_index}: {name}: {costs[name][-1]:.2f} core-ms per view",
                  flush=True)
    median = {name: round(statistics.median(values), 3) for name, values in costs.items()}
    keras_best = sum(min(median[f"keras_{op}"], median.get(f"keras_{op}_xla", float("inf")))
                     for op in layers)
    ours_name = "ours" if xla else "ours_no_xla"
    print(json.dumps({"host_xla": xla,
                      **{f"{name}_core_ms_per_view": value for name, value in median.items()},
                      "keras_over_ours": round(keras_best / median[ours_name], 1)}))


if __name__ == "__main__":
    main()
