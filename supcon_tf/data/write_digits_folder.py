"""Writes the embedded digits as an image folder, to try config.data.name="image_folder" offline.

    python -m supcon_tf.data.write_digits_folder DIR [--size 32]

DIR/train/<digit>/<n>.png|jpg and DIR/test/<digit>/<n>.png|jpg: the same
train/test split as the "digits" TFDS dataset, upscaled (nearest neighbour) to
size x size, every other image a PNG and the rest JPEGs, so both decoders run.
Then train on it:

    python main.py --config=configs/digits.py --config.data.name=image_folder \\
        --config.data.data_dir=DIR --workdir=/tmp/folder_run
"""

import argparse

import numpy as np
import tensorflow as tf

from supcon_tf.data import digits


def write_digits_folder(root, size=32):
    """Writes the folder; returns {split: number of images}."""
    images, labels = digits.digits_arrays()
    scale = -(-size // images.shape[1])  # ceil: nearest-neighbour upscaling, then a crop
    counts = {}
    for split, indices in digits.split_indices().items():
        for number, index in enumerate(indices):
            image = np.kron(images[index], np.ones((scale, scale, 1), np.uint8))[:size, :size]
            as_png = number % 2 == 0
            encoded = tf.io.encode_png(image) if as_png else tf.io.encode_jpeg(image, quality=95)
            class_dir = tf.io.gfile.join(root, split, str(labels[index]))
            tf.io.gfile.makedirs(class_dir)
            path = tf.io.gfile.join(class_dir, f"{index:04d}.{'png' if as_png else 'jpg'}")
            tf.io.write_file(path, encoded)
        counts[split] = len(indices)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder to write (local or gs://)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args()
    counts = write_digits_folder(args.root, args.size)
    print(f"wrote {counts} images to {args.root}/<split>/<digit>/")


if __name__ == "__main__":
    main()
