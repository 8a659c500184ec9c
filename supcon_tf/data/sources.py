"""Where records come from: any TFDS image-classification dataset by name, or an image folder.

A source answers what the pipelines need and nothing about views:

    name, class_names, is_jpeg   (is_jpeg: every image is an encoded JPEG, so crops
                                  can decode only the part they use)
    split_size(split)            examples in a split
    records(split, ...)          {"image": key, "label": int64}, this pipeline's part
    read(key)                    the encoded image bytes of a key (a tf function)
    labeled_keys(split, ...)     (keys, labels) of this pipeline's part, in memory

Keys are cheap to carry and skip (the TFDS record bytes themselves, or a file path
read only when the record is decoded). Nothing here downloads.

config.data.name="image_folder" reads config.data.data_dir in TFDS's ImageFolder
layout, DIR/<split>/<class>/<image> (JPEG, PNG, GIF or BMP, any size, mixed);
class names are the folder names, sorted, and must be the same in every split.
Any other name is a TFDS builder; its Image and ClassLabel features are found
from its features dict. "fashion_mnist" not prepared in data_dir is read from its
IDX files instead (idx.py: config.data.data_dir or Debian's dataset-fashion-mnist).
"""

import contextlib
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from supcon_tf.data import digits  # noqa: F401  (registers the embedded 'digits' builder with TFDS)
from supcon_tf.data import idx

IMAGE_FOLDER = "image_folder"
# The datasets the shipped configs are written for; any TFDS image-classification name works.
DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")
# What tf.io.decode_image reads; other files in a class folder are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not in data_dir; the message says how to prepare it."""


def check_name(name):
    """Raises ValueError unless `name` is "image_folder" or a registered TFDS dataset."""
    if name == IMAGE_FOLDER:
        return
    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"config.data.name={name!r} is unknown; set it to {IMAGE_FOLDER!r} (with "
            "config.data.data_dir=DIR holding DIR/<split>/<class>/<image>) or a TFDS dataset "
            f"name such as {', '.join(DATASETS)} or oxford_flowers102 (any name in "
            "tfds.list_builders())") from None


def source(data_config):
    """The Source of config.data: an ImageFolder for "image_folder", Fashion-MNIST's IDX
    files for "fashion_mnist" when TFDS has not prepared it, a TfdsSource otherwise."""
    if data_config.name == IMAGE_FOLDER:
        return ImageFolder(data_config)
    if data_config.name == idx.NAME and not _tfds_prepared(data_config):
        return idx.FashionMnistIdx(data_config)
    return TfdsSource(data_config)


def _pipelines(input_context):
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _in_memory(records):
    """A records dataset -> (keys, labels) numpy arrays."""
    keys, labels = [], []
    for record in records.as_numpy_iterator():
        keys.append(record["image"])
        labels.append(record["label"])
    return np.array(keys, dtype=object), np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------------------- TFDS


def _data_dir(data_config):
    return data_config.data_dir or os.path.expanduser("~/tensorflow_datasets")


def _feature_key(features, kind, conventional_key, data_config):
    """The key of the one `kind` feature; with several, the one named conventional_key."""
    keys = [key for key, feature in features.items() if isinstance(feature, kind)]
    if len(keys) == 1:
        return keys[0]
    if conventional_key in keys:  # e.g. cifar100's "label" beside its "coarse_label"
        return conventional_key
    found = "none" if not keys else "several (" + ", ".join(keys) + ")"
    raise ValueError(
        f"config.data.name={data_config.name!r} is not an image-classification dataset: it "
        f"needs one {kind.__name__} feature (or one named {conventional_key!r}) and has "
        f"{found}; its features are {', '.join(features)}")


@contextlib.contextmanager
def _quiet_tfds():
    """Without TFDS's notices about a folder it is still writing, and its progress bars
    (turned off for good: nothing else here prepares a dataset), which would otherwise
    fill the terminal of the run that prepares the digits."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


def _tfds_prepared(data_config):
    with _quiet_tfds():
        return tfds.builder(data_config.name, data_dir=_data_dir(data_config)).is_prepared()


class TfdsSource:
    """A prepared TFDS dataset; only the embedded digits prepares itself (offline)."""

    def __init__(self, data_config):
        self.name = data_config.name
        self._data_config = data_config
        check_name(self.name)
        with _quiet_tfds():
            self._builder = tfds.builder(self.name, data_dir=_data_dir(data_config))
            if self.name == "digits" and not self._builder.is_prepared():
                self._builder.download_and_prepare()  # offline: from scikit-learn
        features = self._builder.info.features
        self._image_key = _feature_key(features, tfds.features.Image, "image", data_config)
        self._label_key = _feature_key(features, tfds.features.ClassLabel, "label", data_config)
        self.is_jpeg = features[self._image_key].encoding_format == "jpeg"
        self.class_names = tuple(features[self._label_key].names)

    def not_prepared(self, cause=""):
        name, data_dir = self.name, _data_dir(self._data_config)
        how = f"`tfds build {name} --data_dir={data_dir}`"
        if name == "imagenet2012":
            how = (f"`tfds build imagenet2012 --data_dir={data_dir} --manual_dir=DIR` where DIR "
                   "holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (ImageNet cannot "
                   "be downloaded automatically)")
        return DatasetNotPreparedError(
            f"Dataset {name!r} is not prepared in data_dir={data_dir} and this code never "
            f"downloads. Prepare it once with {how}, then set config.data.data_dir to that "
            f"directory (gs:// paths work).{' (' + cause + ')' if cause else ''}")

    def split_size(self, split):
        try:
            return self._builder.info.splits[split].num_examples
        except KeyError:
            # No split metadata: either not prepared (reading raises the clear error)
            # or a reader without metadata (mocked TFDS), where the reader knows the size.
            size = int(self.records(split).cardinality())
            if size < 0:
                raise self.not_prepared() from None
            return size

    def records(self, split, *, shuffle_seed=None, input_context=None):
        """This pipeline's records, file order unless shuffle_seed."""
        num_pipelines, pipeline_id = _pipelines(input_context)
        read_context = None
        if num_pipelines > 1:
            try:
                num_files = self._builder.info.splits[split].num_shards
            except (KeyError, ValueError):  # split sizes unknown (e.g. under mock_data)
                num_files = num_pipelines
            if num_files >= num_pipelines:
                read_context = input_context  # each host reads whole files of its own
            else:  # fewer files than hosts: each host reads its own slice of records
                split = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
        # No TFDS auto-cache of small datasets: a training stream stops mid-epoch when
        # its stage ends, which leaves the cache half-written (TensorFlow warns on every
        # run), and reading the records again each epoch costs little beside decoding.
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, input_context=read_context,
                                      try_autocache=False)
        try:
            dataset = self._builder.as_dataset(
                split=split, shuffle_files=shuffle_seed is not None,
                decoders={self._image_key: tfds.decode.SkipDecoding()},
                read_config=read_config)
        except AssertionError as err:  # how TFDS reports a missing dataset directory
            raise self.not_prepared(str(err)) from err
        image_key, label_key = self._image_key, self._label_key
        return dataset.map(lambda example: {"image": example[image_key],
                                            "label": example[label_key]})

    @staticmethod
    def read(key):
        return key  # the record holds the encoded image

    def labeled_keys(self, split, *, input_context=None):
        """This pipeline's records held in memory: fine up to a few GB of encoded images."""
        return _in_memory(self.records(split, input_context=input_context))


# ---------------------------------------------------------------------------- image folders


def _is_image(filename):
    return filename.lower().endswith(IMAGE_EXTENSIONS)


class ImageFolder:
    """DIR/<split>/<class>/<image>; gs:// works (tf.io.gfile)."""

    name = IMAGE_FOLDER
    is_jpeg = False  # JPEG and PNG may mix, so every image goes through tf.io.decode_image

    def __init__(self, data_config):
        if not data_config.data_dir:
            raise ValueError(
                f"config.data.name={IMAGE_FOLDER!r} needs config.data.data_dir=DIR, the folder "
                "holding DIR/<split>/<class>/<image>")
        self._root = data_config.data_dir
        self._train_split = data_config.train_split
        self._files = {}
        self.class_names = self._classes(self._train_split)
        for split in (data_config.train_split, data_config.eval_split):
            self.files(split)  # checks every configured split now, in one clear line

    def _split_dir(self, split):
        return tf.io.gfile.join(self._root, split)

    def _classes(self, split):
        split_dir = self._split_dir(split)
        if not tf.io.gfile.isdir(split_dir):
            found = (sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(self._root))
                     if tf.io.gfile.isdir(self._root) else [])
            raise ValueError(
                f"image folder split {split_dir} does not exist ({self._root} holds: "
                f"{', '.join(found) or 'nothing'}); set config.data.train_split/eval_split "
                "to subfolders of config.data.data_dir")
        classes = sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(split_dir)
                         if tf.io.gfile.isdir(tf.io.gfile.join(split_dir, entry)))
        if not classes:
            raise ValueError(f"image folder split {split_dir} has no class folders; put the "
                             f"images in {split_dir}/<class>/<image>")
        return tuple(classes)

    def files(self, split):
        """(paths, labels) of a split, sorted by class then file name."""
        if split not in self._files:
            classes = self._classes(split)
            if classes != self.class_names:
                missing = sorted(set(self.class_names) - set(classes))
                extra = sorted(set(classes) - set(self.class_names))
                raise ValueError(
                    f"image folder split {self._split_dir(split)} has other classes than "
                    f"{self._split_dir(self._train_split)} (missing: "
                    f"{', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}); "
                    "every split needs the same class folders")
            paths, labels = [], []
            for label, name in enumerate(classes):
                class_dir = tf.io.gfile.join(self._split_dir(split), name)
                images = sorted(f for f in tf.io.gfile.listdir(class_dir) if _is_image(f))
                if not images:
                    raise ValueError(
                        f"image folder class {class_dir} has no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder "
                        "from every split")
                paths += [tf.io.gfile.join(class_dir, image) for image in images]
                labels += [label] * len(images)
            self._files[split] = (np.array(paths, dtype=object), np.array(labels, np.int64))
        return self._files[split]

    def split_size(self, split):
        return len(self.files(split)[0])

    def labeled_keys(self, split, *, input_context=None):
        """This pipeline's files: every num_pipelines-th one of the sorted list, from its id."""
        num_pipelines, pipeline_id = _pipelines(input_context)
        paths, labels = self.files(split)
        return paths[pipeline_id::num_pipelines], labels[pipeline_id::num_pipelines]

    def records(self, split, *, shuffle_seed=None, input_context=None):
        """This pipeline's files; with shuffle_seed, in a new seeded order on each pass."""
        paths, labels = self.labeled_keys(split, input_context=input_context)
        dataset = tf.data.Dataset.from_tensor_slices({"image": paths.astype(str),
                                                      "label": labels})
        if shuffle_seed is not None:
            # The whole list: it is sorted by class, so a smaller buffer would not mix it.
            dataset = dataset.shuffle(len(paths), seed=shuffle_seed,
                                      reshuffle_each_iteration=True)
        return dataset

    @staticmethod
    def read(key):
        return tf.io.read_file(key)
