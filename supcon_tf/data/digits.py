"""The embedded `digits` dataset: a TFDS builder over scikit-learn's handwritten digits.

scikit-learn ships the 1,797 8x8 images of the UCI optical-digits set inside its
wheel, so this builder prepares itself on a machine with no network. Pixel values
0..16 become uint8 0..255 and the gray image is replicated to 3 channels, so every
dataset of the project has the same [H, W, 3] uint8 layout. The train/test split
is stratified and seeded, hence identical on every machine.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST_EXAMPLES = 360
SPLIT_SEED = 0


def digits_arrays():
    """(images uint8 [1797, 8, 8, 3], labels int64 [1797]) from scikit-learn."""
    from sklearn import datasets as sk_datasets  # only this builder needs scikit-learn

    digits = sk_datasets.load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    return images, digits.target.astype(np.int64)


def split_indices():
    """{"train": indices, "test": indices}: a seeded split, stratified by class."""
    from sklearn import model_selection  # only this builder needs scikit-learn

    _, labels = digits_arrays()
    indices = np.arange(len(labels))
    train, test = model_selection.train_test_split(
        indices, test_size=NUM_TEST_EXAMPLES, stratify=labels, random_state=SPLIT_SEED)
    return {"train": np.sort(train), "test": np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as RGB uint8 images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    # Nothing is downloaded, so there are no URL checksums to find next to this file.
    # (TFDS 4.9.10 looks them up through `importlib_resources`, which Python 3.11
    # installs lack.)
    code_path = None
    RELEASE_NOTES = {"1.0.0": "Stratified seeded split: 1,437 train, 360 test."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn load_digits (UCI optical recognition of handwritten digits).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the images ship with scikit-learn
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices):
        images, labels = digits_arrays()
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}
