"""Writes a small image folder of shapes: a new task, offline, for trying transfer.

    python -m supcon_tf.data.write_shapes_folder DIR [--train_per_class 80]
        [--test_per_class 100] [--size 32] [--seed 0]

DIR/{train,test}/{circle,square,triangle}/<n>.png|jpg, the layout of
config.data.name="image_folder": one filled shape per image, of equal area whatever
its class (so area tells nothing), at a random position, rotation and size, lighter
than its background by a random contrast, both tinted at random, on a brightness
gradient with pixel noise; edges are anti-aliased (drawn at 4x and averaged). Every
other file is a JPEG, and every third is saved in grayscale (one channel), so both
decoders and the grayscale to RGB conversion run. The defaults make the folder of
docs/transfer.md: 3 classes, 240 training and 300 test images of 32 x 32. Each image
is drawn from its own seed, (seed, split, class, index), so the folder is the same on
every machine.
"""

import argparse

import numpy as np
import tensorflow as tf

CLASSES = ("circle", "square", "triangle")
SPLITS = ("train", "test")
SUPERSAMPLE = 4
# The circle's radius, as a fraction of the image side; the square and triangle get
# the same area.
RADIUS_RANGE = (0.25, 0.4)
# Grey levels, 0..255: the background's, how much lighter the shape is, each channel's
# random tint, the background's brightness change across the image, the pixel noise.
BACKGROUND_MAX = 110.0
CONTRAST_RANGE = (60.0, 150.0)
TINT = 25.0
GRADIENT_MAX = 60.0
NOISE_STD_RANGE = (0.0, 20.0)


def shape_mask(kind, size, rng):
    """A float mask [size, size] in [0, 1]: the shape's coverage of each pixel."""
    fine = size * SUPERSAMPLE
    radius = rng.uniform(*RADIUS_RANGE) * fine
    # Equal areas: pi r^2 = (2 h)^2 for a square of half-side h, = (3 sqrt(3) / 4) R^2
    # for an equilateral triangle of circumradius R.
    extent = {"circle": radius, "square": radius * np.sqrt(np.pi) / 2,
              "triangle": radius * np.sqrt(4 * np.pi / (3 * np.sqrt(3)))}[kind]
    # The farthest point from the centre (a corner of the square), kept inside the image.
    reach = extent * np.sqrt(2) if kind == "square" else extent
    margin = min(reach, fine / 2)
    center = rng.uniform(margin, fine - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:fine, 0:fine] + 0.5
    y, x = rows - center[0], cols - center[1]
    # Coordinates in the shape's own rotated frame.
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    if kind == "circle":
        inside = u**2 + v**2 <= radius**2
    elif kind == "square":
        inside = np.maximum(np.abs(u), np.abs(v)) <= extent
    else:  # three half-planes, each edge at distance R / 2 from the centre
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3,
                                                     np.pi / 2 + 4 * np.pi / 3)]
        inside = np.all([nu * u + nv * v <= extent / 2 for nu, nv in normals], axis=0)
    coverage = inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return coverage


def draw(kind, size, rng):
    """One image, uint8 [size, size, 3]: a light shape on a darker, tinted background."""
    mask = shape_mask(kind, size, rng)[..., None]
    background = rng.uniform(0, BACKGROUND_MAX) + rng.uniform(-TINT, TINT, size=3)
    foreground = (background.mean() + rng.uniform(*CONTRAST_RANGE)
                  + rng.uniform(-TINT, TINT, size=3))
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    rows, cols = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = (direction[0] * rows + direction[1] * cols)[..., None] * rng.uniform(0, GRADIENT_MAX)
    image = mask * foreground + (1 - mask) * (background + ramp)
    image += rng.normal(size=image.shape) * rng.uniform(*NOISE_STD_RANGE)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_shapes_folder(root, *, train_per_class=80, test_per_class=100, size=32, seed=0):
    """Writes the folder; returns {split: number of images}."""
    counts = {}
    for split_id, (split, per_class) in enumerate(zip(SPLITS, (train_per_class,
                                                              test_per_class))):
        number = 0
        for label, kind in enumerate(CLASSES):
            class_dir = tf.io.gfile.join(root, split, kind)
            tf.io.gfile.makedirs(class_dir)
            for index in range(per_class):
                rng = np.random.default_rng([seed, split_id, label, index])
                image = draw(kind, size, rng)
                if number % 3 == 1:  # grayscale, one channel (ITU-R 601 luma)
                    image = np.rint(image @ [0.299, 0.587, 0.114])[..., None].astype(np.uint8)
                as_png = number % 2 == 0
                encoded = (tf.io.encode_png(image) if as_png else
                           tf.io.encode_jpeg(image, quality=90))
                name = f"{index:04d}.{'png' if as_png else 'jpg'}"
                tf.io.write_file(tf.io.gfile.join(class_dir, name), encoded)
                number += 1
        counts[split] = number
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder to write (local or gs://)")
    parser.add_argument("--train_per_class", type=int, default=80)
    parser.add_argument("--test_per_class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_shapes_folder(args.root, train_per_class=args.train_per_class,
                                 test_per_class=args.test_per_class, size=args.size,
                                 seed=args.seed)
    print(f"wrote {counts} images to {args.root}/<split>/<shape>/")


if __name__ == "__main__":
    main()
