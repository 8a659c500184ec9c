"""Fashion-MNIST offline, from its four original IDX files.

Without a prepared TFDS `fashion_mnist` in data_dir, sources.source reads

    train-images-idx3-ubyte  train-labels-idx1-ubyte   (60,000 examples, "train")
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte    (10,000 examples, "test")

each plain or gzipped (.gz), from config.data.data_dir, else from where Debian's
package dataset-fashion-mnist installs them (DEBIAN_DIR). The first of those
directories holding any of the four files must hold all four.

An IDX file is a big-endian header, two zero bytes, a type byte (0x08: unsigned
bytes, the only type these files use) and the number of dimensions, then one
uint32 per dimension, then the values in C order. Images are 28 x 28 gray; the
source's keys are their raw bytes and read() encodes a key as a gray PNG, which
the pipelines decode to 3 channels as every dataset of the project has (the
embedded digits replicate their gray channel the same way).
"""

import functools
import gzip
import os
import re
import struct
import zlib

import numpy as np
import tensorflow as tf

NAME = "fashion_mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# The labels' names, in label order (Xiao et al. 2017, the dataset's README).
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# (images file, labels file) of each split, without ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UNSIGNED_BYTE = 0x08
_HEADER = struct.Struct(">HBB")  # zero, type, number of dimensions
# "train", "test[:1000]", "train[10%:]": a TFDS-style slice of ints or percents.
_SPLIT = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


class IdxError(ValueError):
    """An IDX file is missing, truncated or not what its name says; the message says what to do."""


def _remedy():
    return (f"put the four Fashion-MNIST IDX files (plain or .gz) in config.data.data_dir, "
            f"or install them with `apt-get install {DEBIAN_PACKAGE}` (into {DEBIAN_DIR})")


def read_idx(path, ndim):
    """The array of an IDX file of unsigned bytes with `ndim` dimensions (gzipped if .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a .gz cut short or damaged
        raise IdxError(f"IDX file {path} cannot be read ({err}); {_remedy()}") from None
    if len(content) < _HEADER.size:
        raise IdxError(f"IDX file {path} is truncated: {len(content)} bytes, not even a header; "
                       f"{_remedy()}")
    zero, dtype, dims = _HEADER.unpack_from(content)
    if zero != 0 or dtype != UNSIGNED_BYTE or dims != ndim:
        magic = content[:4].hex()
        raise IdxError(
            f"IDX file {path} has magic number 0x{magic}, not 0x0000{UNSIGNED_BYTE:02x}{ndim:02x} "
            f"(unsigned bytes, {ndim} dimensions); it is not the file its name says: {_remedy()}")
    header_size = _HEADER.size + 4 * ndim
    if len(content) < header_size:
        raise IdxError(f"IDX file {path} is truncated inside its header; {_remedy()}")
    shape = struct.unpack_from(f">{ndim}I", content, _HEADER.size)
    expected = int(np.prod(shape))
    values = len(content) - header_size
    if values != expected:
        what = "truncated" if values < expected else "longer than its header says"
        raise IdxError(f"IDX file {path} is {what}: {values} bytes of values for shape "
                       f"{'x'.join(map(str, shape))} ({expected} bytes); {_remedy()}")
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def _present(directory, name):
    """The path of `name` or `name`.gz in directory, or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_directory(data_dir):
    """The first of data_dir and DEBIAN_DIR holding any of the IDX files; IdxError if none does."""
    names = [name for files in SPLIT_FILES.values() for name in files]
    searched = [d for d in (data_dir, DEBIAN_DIR) if d]
    for directory in searched:
        if any(_present(directory, name) for name in names):
            return directory
    raise IdxError(
        f"config.data.name={NAME!r}: no prepared TFDS fashion_mnist and no IDX file "
        f"{names[0]}[.gz] in {' or '.join(searched)}; {_remedy()}, or prepare it with "
        f"`tfds build fashion_mnist --data_dir=DIR`")


@functools.lru_cache(maxsize=4)
def _load(images_path, labels_path):
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise IdxError(f"IDX files {images_path} ({len(images)} images) and {labels_path} "
                       f"({len(labels)} labels) do not match; {_remedy()}")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise IdxError(f"IDX file {labels_path} holds label {labels.max()}; Fashion-MNIST has "
                       f"{len(CLASS_NAMES)} classes (0-9): {_remedy()}")
    return images, labels.astype(np.int64)


def _bound(text, size):
    if text is None:
        return None
    if text.endswith("%"):
        return int(round(int(text[:-1]) * size / 100))
    return int(text)


class FashionMnistIdx:
    """The Source (sources.py) of Fashion-MNIST read from its IDX files."""

    name = NAME
    class_names = CLASS_NAMES
    is_jpeg = False

    def __init__(self, data_config):
        self.directory = find_directory(data_config.get("data_dir"))
        for split in (data_config.train_split, data_config.eval_split):
            self.arrays(split)  # every file checked now, in one clear line
        self._image_shape = self.arrays(data_config.train_split)[0].shape[1:]

    def arrays(self, split):
        """(images uint8 [N, 28, 28], labels int64 [N]) of a split such as "train" or "test[:500]"."""
        match = _SPLIT.match(split)
        if not match or match.group(1) not in SPLIT_FILES:
            raise IdxError(f"split {split!r} of {NAME} is unknown; use train or test, or a slice "
                           "such as train[:10000] or test[:50%]")
        paths = []
        for name in SPLIT_FILES[match.group(1)]:
            path = _present(self.directory, name)
            if path is None:
                raise IdxError(f"IDX file {os.path.join(self.directory, name)}[.gz] is missing "
                               f"(the directory holds some of the others); {_remedy()}")
            paths.append(path)
        images, labels = _load(*paths)
        start, stop = (_bound(match.group(i), len(labels)) for i in (2, 3))
        return images[start:stop], labels[start:stop]

    def split_size(self, split):
        return len(self.arrays(split)[1])

    def labeled_keys(self, split, *, input_context=None):
        """This pipeline's images as raw-byte keys: every num_pipelines-th one from its id."""
        images, labels = self.arrays(split)
        step, first = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                       if input_context else (1, 0))
        images, labels = images[first::step], labels[first::step]
        keys = np.array([image.tobytes() for image in images], dtype=object)
        return keys, labels

    def records(self, split, *, shuffle_seed=None, input_context=None):
        """This pipeline's examples; with shuffle_seed, in a new seeded order on each pass."""
        keys, labels = self.labeled_keys(split, input_context=input_context)
        dataset = tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(list(keys), tf.string), "label": labels})
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(keys), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset

    def read(self, key):
        """A raw-byte key -> the image as a gray PNG."""
        rows, cols = self._image_shape
        return tf.io.encode_png(tf.reshape(tf.io.decode_raw(key, tf.uint8), [rows, cols, 1]))
