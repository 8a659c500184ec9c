"""Fashion-MNIST: the IDX reader, the offline source, its errors, the TFDS path, a tiny run.

The tests write their own IDX files (a few dozen random 28x28 images) with the
format's definition below, never with the code under test: two zero bytes, the
type byte 0x08, the number of dimensions, one big-endian uint32 per dimension,
then the bytes.
"""

import gzip
import json
import os
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from supcon_tf.data import datasets, idx, sources
from conftest import load_config

NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot")
NUM_TRAIN, NUM_TEST = 48, 20


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        struct.pack(">I", dim) for dim in array.shape)
    return header + array.tobytes()


def write(path, content, gz=False):
    if gz:
        path += ".gz"
        content = gzip.compress(content)
    with open(path, "wb") as f:
        f.write(content)
    return path


def write_dataset(directory, *, gz=False, seed=0):
    """The four files in directory; returns {split: (images, labels)} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10  # every class present
        write(os.path.join(directory, f"{split}-images-idx3-ubyte"), idx_bytes(images), gz)
        write(os.path.join(directory, f"{split}-labels-idx1-ubyte"), idx_bytes(labels), gz)
        written["test" if split == "t10k" else split] = (images, labels)
    return written


def data_config(data_dir):
    return ml_collections.ConfigDict(dict(name="fashion_mnist", data_dir=str(data_dir),
                                          train_split="train", eval_split="test"))


@pytest.fixture(autouse=True)
def no_debian_files(monkeypatch, tmp_path_factory):
    """The tests' own files only, whether or not this machine has the Debian package."""
    monkeypatch.setattr(idx, "DEBIAN_DIR", str(tmp_path_factory.mktemp("no_debian")))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    labels = np.array([9, 0, 4], np.uint8)
    np.testing.assert_array_equal(
        idx.read_idx(write(str(tmp_path / "i"), idx_bytes(images), gz), 3), images)
    np.testing.assert_array_equal(
        idx.read_idx(write(str(tmp_path / "l"), idx_bytes(labels), gz), 1), labels)


@pytest.mark.parametrize("gz", [False, True])
def test_source_sizes_labels_images_and_class_names(tmp_path, gz):
    written = write_dataset(str(tmp_path), gz=gz)
    source = sources.source(data_config(tmp_path))
    assert isinstance(source, idx.FashionMnistIdx)
    assert source.class_names == NAMES
    assert source.split_size("train") == NUM_TRAIN and source.split_size("test") == NUM_TEST
    assert source.split_size("train[:10]") == 10 and source.split_size("test[50%:]") == 10
    keys, labels = source.labeled_keys("test")
    np.testing.assert_array_equal(labels, written["test"][1])
    image = tf.io.decode_image(source.read(tf.constant(keys[3])), channels=3).numpy()
    for channel in range(3):  # gray replicated, as the digits are
        np.testing.assert_array_equal(image[..., channel], written["test"][0][3])
    info = datasets.dataset_info(data_config(tmp_path))
    assert (info.num_classes, info.num_train_examples, info.class_names) == (10, NUM_TRAIN, NAMES)


def test_records_shard_per_pipeline(tmp_path):
    written = write_dataset(str(tmp_path))
    source = sources.source(data_config(tmp_path))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    labels = [int(r["label"]) for r in source.records("test", input_context=context)]
    assert labels == list(written["test"][1][1::2])


def test_eval_pipeline_reads_the_images(tmp_path):
    written = write_dataset(str(tmp_path))
    config = load_config("fashion_mnist.py", "tiny").data
    config.data_dir = str(tmp_path)
    config.image_size = 28  # no resize: the pixels come back exactly
    batch = next(iter(datasets.build_eval_dataset(config, split="test", batch_size=8)))
    np.testing.assert_allclose(batch["image"].numpy()[..., 1] * 255.0,
                               written["test"][0][:8].astype(np.float32), atol=1e-3)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_no_files_anywhere_names_the_file_and_the_package(tmp_path):
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    message = one_line(error)
    assert "train-images-idx3-ubyte" in message and "apt-get install dataset-fashion-mnist" in message


def test_missing_file_is_named(tmp_path):
    write_dataset(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    assert "t10k-labels-idx1-ubyte" in one_line(error)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_is_named(tmp_path, gz):
    write_dataset(str(tmp_path))
    path = str(tmp_path / "train-images-idx3-ubyte")
    with open(path, "rb") as f:
        content = f.read()
    os.remove(path)
    path = write(path, content[:-100], gz)
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    message = one_line(error)
    assert path in message and "truncated" in message


def test_truncated_gzip_stream_is_named(tmp_path):
    write_dataset(str(tmp_path), gz=True)
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    assert path in one_line(error)


@pytest.mark.parametrize("header", [b"\x00\x00\x08\x01", b"\x00\x00\x0d\x03", b"PK\x03\x04"])
def test_wrong_magic_number_is_named(tmp_path, header):
    """A labels file (1 dimension), floats (type 0x0d) or a zip where images belong."""
    write_dataset(str(tmp_path))
    path = str(tmp_path / "train-images-idx3-ubyte")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(header + content[4:])
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    message = one_line(error)
    assert path in message and "magic number" in message


def test_images_and_labels_of_different_lengths(tmp_path):
    write_dataset(str(tmp_path))
    write(str(tmp_path / "t10k-labels-idx1-ubyte"), idx_bytes(np.zeros(NUM_TEST - 1)))
    with pytest.raises(idx.IdxError) as error:
        sources.source(data_config(tmp_path))
    assert "do not match" in one_line(error)


def test_unknown_split_is_a_clear_error(tmp_path):
    write_dataset(str(tmp_path))
    config = data_config(tmp_path)
    config.eval_split = "validation"
    with pytest.raises(idx.IdxError) as error:
        sources.source(config)
    assert "'validation'" in one_line(error)


def test_prepared_tfds_dataset_is_read_through_tfds(tmp_path, monkeypatch):
    write_dataset(str(tmp_path))  # present, yet TFDS wins once it has the dataset
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=12):
        source = sources.source(data_config(tmp_path))
        assert isinstance(source, sources.TfdsSource)
        assert source.class_names == NAMES
        config = load_config("fashion_mnist.py", "tiny").data
        batch = next(iter(datasets.build_eval_dataset(config, split="test", batch_size=4)))
    assert batch["image"].shape == (4, 8, 8, 3)


def test_tiny_run_writes_class_names(tmp_path):
    from supcon_tf import train

    os.makedirs(tmp_path / "idx")
    write_dataset(str(tmp_path / "idx"))
    config = load_config("fashion_mnist.py", "tiny")
    config.data.data_dir = str(tmp_path / "idx")
    workdir = str(tmp_path / "run")
    results = train.run(config, workdir, tf.distribute.get_strategy())
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        saved_config = json.load(f)
    assert saved["class_names"] == list(NAMES) == saved_config["class_names"]
    assert saved["dataset"] == "fashion_mnist" and saved["num_eval_examples"] == NUM_TEST
    assert 0.0 <= results["top1"] <= 1.0
