"""Input-pipeline throughput: two-view SimAugment at 224 against decode+resize alone.

Source images are the two real photos bundled with scikit-learn (427x640),
JPEG-encoded at quality 90 into an in-memory dataset of repeated records, so the
measurement needs no dataset on disk. Both pipelines run in this process on the
same records, one after the other:

  decode_only  decode_jpeg + resize to 224, parallel map, batch, prefetch; the image
               is cast to float32 before the resize, the faster order (as the crops do)
  simaugment   the training pipeline of supcon_tf.data (decode once with
               decode_and_crop_jpeg, 2 random resized crops per image, then
               flips, colour jitter, grayscale and blur as one XLA program per image)

images/s counts source images (each gives 2 views in the SimAugment pipeline).
The pipelines are timed one after the other in each of several rounds. This VM
has spells of seconds to tens of seconds in which everything runs up to 1.8x
slower, so each images/s is the best round (noise only ever slows a round down)
and each ratio compares best rounds; median_ratio is the median over rounds of
the ratio within a round, for comparison. SimAugment is timed with the ImageNet
blur (the headline figure) and without it (CIFAR's recipe). All three run on
TensorFlow's BFC host allocator, as main.py sets it up; run with
TF_CPU_ALLOCATOR_USE_BFC=false to time them on the default allocator.
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


def simaugment_pipeline(records, batch_size, blur):
    spec = views_lib.ViewSpec(augment="simaugment", image_size=IMAGE_SIZE, num_views=2,
                              crop_area_min=0.08, color_strength=1.0, hflip=True, blur=blur,
                              jpeg=True)
    return datasets_lib.train_pipeline(records, spec, batch_size=batch_size, seed=(0, 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images timed per measurement")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    records = jpeg_records(64)
    pipelines = {"decode_only": decode_only_pipeline(records, args.batch),
                 "simaugment": simaugment_pipeline(records, args.batch, blur=True),
                 "simaugment_no_blur": simaugment_pipeline(records, args.batch, blur=False)}
    rates = {name: [] for name in pipelines}
    for round_index in range(args.rounds):
        for name, pipeline in pipelines.items():
            rates[name].append(images_per_second(pipeline, args.batch, args.images))
            print(f"round {round_index}: {name}: {rates[name][-1]:.1f} images/s", flush=True)
    best = {name: max(values) for name, values in rates.items()}
    median_ratio = statistics.median(
        a / b for a, b in zip(rates["simaugment"], rates["decode_only"]))
    print(json.dumps({
        "images_per_s": round(best["simaugment"], 1),
        "decode_only_images_per_s": round(best["decode_only"], 1),
        "ratio": round(best["simaugment"] / best["decode_only"], 3),
        "median_ratio": round(median_ratio, 3),
        "no_blur_images_per_s": round(best["simaugment_no_blur"], 1),
        "no_blur_ratio": round(best["simaugment_no_blur"] / best["decode_only"], 3),
        "bfc_allocator": os.environ["TF_CPU_ALLOCATOR_USE_BFC"]}))


if __name__ == "__main__":
    main()
