"""Input throughput: two-view SimAugment at 224, with and without XLA, against decode+resize.

Source images are the two real photos bundled with scikit-learn (427x640),
JPEG-encoded at quality 90 into an in-memory dataset of repeated records, so the
measurement needs no dataset on disk. All pipelines run in this process on the
same records, one after the other:

  decode_only  decode_jpeg + resize to 224, parallel map, batch, prefetch; the image
               is cast to float32 before the resize, the faster order (as the crops do)
  simaugment   the training pipeline of supcon_tf.data (decode once with
               decode_and_crop_jpeg, 2 random resized crops per image, then
               flips, colour jitter, grayscale and blur as one XLA program per image)
  simaugment_no_xla
               the same pipeline with that program run as a plain TF graph, the
               path of a TensorFlow build without XLA for the host CPU (the TPU
               wheel: supcon_tf.host_xla); the same views to float rounding

images/s counts source images (each gives 2 views in the SimAugment pipeline).
The pipelines are timed one after the other in each of several rounds. This VM
has spells of seconds to tens of seconds in which everything runs up to 1.8x
slower, so each images/s is the best round (noise only ever slows a round down)
and each ratio compares best rounds; median_ratio is the median over rounds of
the ratio within a round, for comparison. SimAugment is timed with the ImageNet
blur (the headline figure) and without it (CIFAR's recipe). All run on
TensorFlow's BFC host allocator, as main.py sets it up; run with
TF_CPU_ALLOCATOR_USE_BFC=false to time them on the default allocator.

images_per_s, ratio and the no_blur figures are the path main.py takes in this
TensorFlow build (XLA where host_xla.available(), else the graph); no_xla_* are
the graph path's, and no_xla_over_xla its throughput over the XLA path's
(best rounds; no_xla_median_over_xla: the median of the ratio within a round).
Without XLA for the host only the graph path runs, and the *_over_xla figures
are null.
Run: python benchmarks/input_bench.py [--images 512] [--batch 64] [--rounds 9]
The last line is one JSON object.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as main.py; read at TF start-up

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn import datasets as sk_datasets  # noqa: E402

from supcon_tf import host_xla  # noqa: E402
from supcon_tf.data import augment  # noqa: E402
from supcon_tf.data import datasets as datasets_lib  # noqa: E402
from supcon_tf.data import views as views_lib  # noqa: E402

IMAGE_SIZE = 224


def jpeg_records(num_records):
    """{"image": JPEG bytes (quality 90), "label": int64} over scikit-learn's sample photos."""
    photos = sk_datasets.load_sample_images().images
    encoded = [tf.io.encode_jpeg(photo, quality=90).numpy() for photo in photos]
    images = [encoded[i % len(encoded)] for i in range(num_records)]
    labels = np.arange(num_records, dtype=np.int64) % len(encoded)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def decode_only_pipeline(records, batch_size):
    def decode(example):
        image = tf.cast(tf.io.decode_jpeg(example["image"], channels=3), tf.float32)
        return tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE]) / 255.0, example["label"]

    dataset = records.repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def images_per_second(dataset, batch_size, num_images):
    """Examples per second over num_images, after one warm-up pass of a few batches."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    num_batches = max(1, num_images // batch_size)
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
    tf.nest.map_structure(lambda t: t.numpy(), batch)
    return num_batches * batch_size / (time.perf_counter() - start)


def simaugment_pipeline(records, batch_size, blur, xla):
    """The training pipeline, its photometry compiled with XLA or not (fixed when it is traced)."""
    spec = views_lib.ViewSpec(augment="simaugment", image_size=IMAGE_SIZE, num_views=2,
                              crop_area_min=0.08, color_strength=1.0, hflip=True, blur=blur,
                              jpeg=True)
    augment.HOST_XLA = xla
    try:
        return datasets_lib.train_pipeline(records, spec, batch_size=batch_size, seed=(0, 0))
    finally:
        augment.HOST_XLA = None


def best_and_median_ratio(rates, name, baseline):
    """(best of name / best of baseline, median over rounds of their ratio), or Nones."""
    if baseline not in rates:
        return None, None
    best = max(rates[name]) / max(rates[baseline])
    median = statistics.median(a / b for a, b in zip(rates[name], rates[baseline]))
    return round(best, 3), round(median, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images timed per measurement")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    records = jpeg_records(64)
    xla = host_xla.available()
    # simaugment* compile with XLA, simaugment*_no_xla do not; without host XLA only the latter.
    pipelines = {"decode_only": decode_only_pipeline(records, args.batch)}
    for compiled in ((True, False) if xla else (False,)):
        suffix = "" if compiled else "_no_xla"
        pipelines["simaugment" + suffix] = simaugment_pipeline(records, args.batch, True, compiled)
        pipelines["simaugment_no_blur" + suffix] = simaugment_pipeline(records, args.batch, False,
                                                                       compiled)
    rates = {name: [] for name in pipelines}
    for round_index in range(args.rounds):
        for name, pipeline in pipelines.items():
            rates[name].append(images_per_second(pipeline, args.batch, args.images))
            print(f"round {round_index}: {name}: {rates[name][-1]:.1f} images/s", flush=True)
    best = {name: max(values) for name, values in rates.items()}
    main_path = "" if xla else "_no_xla"  # the pipeline main.py runs in this build
    ratio, median_ratio = best_and_median_ratio(rates, "simaugment" + main_path, "decode_only")
    over_xla, median_over_xla = best_and_median_ratio(rates, "simaugment_no_xla", "simaugment")
    no_blur_over_xla, no_blur_median_over_xla = best_and_median_ratio(
        rates, "simaugment_no_blur_no_xla", "simaugment_no_blur")
    print(json.dumps({
        "host_xla": xla,
        "images_per_s": round(best["simaugment" + main_path], 1),
        "decode_only_images_per_s": round(best["decode_only"], 1),
        "ratio": ratio,
        "median_ratio": median_ratio,
        "no_blur_images_per_s": round(best["simaugment_no_blur" + main_path], 1),
        "no_blur_ratio": round(best["simaugment_no_blur" + main_path] / best["decode_only"], 3),
        "no_xla_images_per_s": round(best["simaugment_no_xla"], 1),
        "no_xla_no_blur_images_per_s": round(best["simaugment_no_blur_no_xla"], 1),
        "no_xla_over_xla": over_xla,
        "no_xla_median_over_xla": median_over_xla,
        "no_xla_no_blur_over_xla": no_blur_over_xla,
        "no_xla_no_blur_median_over_xla": no_blur_median_over_xla,
        "bfc_allocator": os.environ["TF_CPU_ALLOCATOR_USE_BFC"]}))


if __name__ == "__main__":
    main()
