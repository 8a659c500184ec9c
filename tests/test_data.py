"""Datasets and pipelines: digits, mocked TFDS, determinism, resume, sharding, bad input."""

import hashlib

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import mirrored_strategy

from supcon_tf import data
from supcon_tf.data import datasets as datasets_lib
from supcon_tf.data import digits as digits_lib
from supcon_tf.data import views as views_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **overrides):
    fields = dict(name="digits", data_dir=data_dir, train_split="train", eval_split="test",
                  image_size=16, num_views=2, augment="simaugment", crop_area_min=0.2,
                  color_strength=0.5, color_jitter_style="pytorch", hflip=True, blur=True,
                  blur_probability=0.5, randaugment_layers=2, randaugment_magnitude=10,
                  shuffle_buffer=64)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def _take(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(count)]


def _image_digest(image):
    return hashlib.sha1(np.round(np.asarray(image) * 255).astype(np.uint8).tobytes()).hexdigest()


def test_digits_builder_split_and_info(data_dir):
    info = data.dataset_info(_config(data_dir))
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 1437, 360)
    from sklearn import datasets as sk_datasets
    labels = sk_datasets.load_digits().target
    indices = digits_lib.split_indices()
    assert not set(indices["train"]) & set(indices["test"])
    overall = np.bincount(labels, minlength=10) / len(labels)
    in_test = np.bincount(labels[indices["test"]], minlength=10) / 360
    assert np.abs(in_test - overall).max() < 0.01   # stratified


def _masked(batches):
    """[(label, image digest)] of the real (unpadded) examples, sorted."""
    return sorted((int(label), _image_digest(image)) for batch in batches
                  for image, label in zip(batch["image"][batch["mask"]],
                                          batch["label"][batch["mask"]]))


@pytest.fixture(scope="module")
def full_eval(data_dir):
    # image_size 8 keeps the raw 8x8 digits, to compare with scikit-learn's pixels.
    config = _config(data_dir, image_size=8, blur=False)
    return _take(data.build_eval_dataset(config, split="test", batch_size=16), 100)


def test_eval_reads_whole_split_padded_with_mask(full_eval):
    assert len(full_eval) == 23   # ceil(360 / 16)
    for batch in full_eval:
        assert batch["image"].shape == (16, 8, 8, 3) and batch["mask"].shape == (16,)
    assert full_eval[-1]["mask"].sum() == 360 - 22 * 16 and not full_eval[-1]["mask"][-1]
    from sklearn import datasets as sk_datasets
    digits = sk_datasets.load_digits()
    test = digits_lib.split_indices()["test"]
    expected = np.rint(digits.images[test] * 255 / 16)[..., None].repeat(3, axis=-1) / 255
    want = sorted(zip(digits.target[test].tolist(), map(_image_digest, expected)))
    assert _masked(full_eval) == want


def test_train_batches_are_seeded_and_start_step_resumes_the_stream(data_dir):
    config = _config(data_dir, num_views=3)
    stream = _take(data.build_train_dataset(config, global_batch_size=8, seed=5), 4)
    resumed = _take(data.build_train_dataset(config, global_batch_size=8, seed=5,
                                             start_step=2), 2)
    other = _take(data.build_train_dataset(config, global_batch_size=8, seed=6), 1)
    batch = stream[0]
    assert batch["views"].shape == (8, 3, 16, 16, 3) and batch["views"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert batch["views"].min() >= 0.0 and batch["views"].max() <= 1.0
    # The views of one image differ from each other (independent augmentations).
    assert not np.allclose(batch["views"][:, 0], batch["views"][:, 1])
    # Same seed, same stream: the resumed run sees exactly steps 2 and 3.
    for a, b in zip(stream[2:], resumed):
        np.testing.assert_array_equal(a["views"], b["views"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.allclose(stream[0]["views"], other[0]["views"])


def test_augment_none_views_are_the_same_decoded_image(data_dir):
    config = _config(data_dir, augment="none", num_views=2)
    batch = _take(data.build_train_dataset(config, global_batch_size=4, seed=0), 1)[0]
    np.testing.assert_array_equal(batch["views"][:, 0], batch["views"][:, 1])


def test_input_context_shards_hosts_and_sets_per_replica_batch(data_dir, full_eval):
    config = _config(data_dir, image_size=8, blur=False)
    shards = []
    for host in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host,
                                             num_replicas_in_sync=4)
        # 16 examples per step: 8 per host, read as 2 replicas x 4.
        assert datasets_lib._batch_sizes(16, context) == (4, 8)
        shards.append(_masked(_take(data.build_eval_dataset(
            config, split="test", batch_size=16, input_context=context), 100)))
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == _masked(full_eval)


def test_distribute_datasets_from_function_gives_per_replica_batches(data_dir):
    strategy = mirrored_strategy(2)
    config = _config(data_dir)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: data.build_train_dataset(config, global_batch_size=8, seed=0,
                                                 input_context=context))
    batch = next(iter(dataset))
    for views in strategy.experimental_local_results(batch["views"]):
        assert views.shape == (4, 2, 16, 16, 3)


@pytest.mark.parametrize("name,split", [("cifar10", "test"), ("imagenet2012", "validation")])
def test_tfds_datasets_through_mock_data(name, split):
    config = _config("/nonexistent", name=name, eval_split=split, image_size=32,
                     blur=(name == "imagenet2012"))
    with tfds.testing.mock_data(num_examples=12):
        train = _take(data.build_train_dataset(config, global_batch_size=4, seed=0), 1)[0]
        evaluation = _take(data.build_eval_dataset(config, split=split, batch_size=5), 10)
        info = data.dataset_info(config)
    assert train["views"].shape == (4, 2, 32, 32, 3)
    assert [b["mask"].sum() for b in evaluation] == [5, 5, 2]
    assert info.num_classes == {"cifar10": 10, "imagenet2012": 1000}[name]
    assert info.num_eval_examples == 12


@pytest.mark.parametrize("name,advice", [("cifar100", "tfds build cifar100"),
                                         ("imagenet2012", "--manual_dir")])
def test_unprepared_dataset_says_how_to_prepare(tmp_path, name, advice):
    config = _config(str(tmp_path), name=name)
    for build in (lambda: data.dataset_info(config),
                  lambda: data.build_train_dataset(config, global_batch_size=4, seed=0)):
        with pytest.raises(data.DatasetNotPreparedError) as error:
            build()
        assert advice in str(error.value) and "config.data.data_dir" in str(error.value)


@pytest.mark.parametrize("field,value", [("num_views", 0), ("augment", "mixup"),
                                         ("image_size", 4), ("crop_area_min", 0.0),
                                         ("name", "mnist_typo"), ("color_jitter_style", "hsv"),
                                         ("blur_probability", 1.5), ("blur_probability", -0.1)])
def test_bad_config_names_the_field(data_dir, field, value):
    config = _config(data_dir, **{field: value})
    with pytest.raises(ValueError, match=f"config.data.{field}"):
        data.build_train_dataset(config, global_batch_size=4, seed=0)


@pytest.mark.parametrize("overrides,message", [
    (dict(color_jitter_style="hsv"), "use one of tf, pytorch"),
    (dict(blur_probability=2.0), r"config.data.blur_probability=2.0 must be in \[0, 1\]"),
    (dict(color_jitter_style="tf", color_strength=1.5),
     "config.data.color_strength=1.5 is too strong for config.data.color_jitter_style='tf'"),
    (dict(color_jitter_style="pytorch", color_strength=3.0), "at most 2.5"),
    (dict(augment="stacked_randaugment", randaugment_magnitude=11),
     "config.data.randaugment_magnitude=11 must be in"),
])
def test_view_spec_checks_the_new_fields_with_clear_errors(data_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        views_lib.ViewSpec.from_data_config(_config(data_dir, **overrides), jpeg=False)


def test_view_spec_reads_the_new_fields_and_names_a_missing_one(data_dir):
    spec = views_lib.ViewSpec.from_data_config(
        _config(data_dir, augment="crop_flip", color_jitter_style="tf", blur_probability=0.25),
        jpeg=True)
    assert (spec.augment, spec.color_jitter_style, spec.blur_probability, spec.jpeg) == (
        "crop_flip", "tf", 0.25, True)
    # A strength the tf style refuses is fine where no jitter runs.
    views_lib.ViewSpec.from_data_config(
        _config(data_dir, augment="crop_flip", color_jitter_style="tf", color_strength=2.0),
        jpeg=False)
    config = _config(data_dir)
    del config["blur_probability"]
    with pytest.raises(ValueError, match="config.data.blur_probability is missing"):
        views_lib.ViewSpec.from_data_config(config, jpeg=False)


@pytest.mark.parametrize("augment", ["crop_flip", "stacked_randaugment"])
def test_new_modes_through_the_digits_pipeline(data_dir, augment):
    config = _config(data_dir, augment=augment, image_size=24, color_jitter_style="tf")
    batch = _take(data.build_train_dataset(config, global_batch_size=4, seed=0), 1)[0]
    assert batch["views"].shape == (4, 2, 24, 24, 3)
    assert batch["views"].min() >= 0.0 and batch["views"].max() <= 1.0
    assert not np.allclose(batch["views"][:, 0], batch["views"][:, 1])


def _png_records(count):
    images = [tf.io.encode_png(np.full((10, 10, 3), 20 * i, np.uint8)).numpy()
              for i in range(count)]
    return images


def test_corrupt_records_are_skipped_and_counted(capfd):
    good = _png_records(6)
    images = good[:2] + [b"not an image"] + good[2:4] + [b"\x89PNG broken"] + good[4:]
    labels = np.array([0, 1, -1, 2, 3, -1, 4, 5])
    records = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    spec = views_lib.ViewSpec(augment="none", image_size=10, num_views=1)
    evaluation = list(datasets_lib.eval_pipeline(records, spec, batch_size=8))
    assert evaluation[0]["label"][evaluation[0]["mask"]].numpy().tolist() == [0, 1, 2, 3, 4, 5]
    assert "skipped so far: 2" in capfd.readouterr().err
    train = datasets_lib.train_pipeline(records, spec, batch_size=6, seed=(0, 0))
    assert sorted(next(iter(train))["label"].numpy().tolist()) == [0, 1, 2, 3, 4, 5]


def test_entirely_corrupt_dataset_raises_instead_of_hanging():
    records = tf.data.Dataset.from_tensor_slices(
        {"image": [b"garbage", b"more garbage"], "label": [0, 1]})
    spec = views_lib.ViewSpec(augment="simaugment", image_size=16, num_views=2)
    with pytest.raises(data.CorruptDatasetError, match=data.CORRUPT_DATASET_MESSAGE):
        datasets_lib.train_pipeline(records, spec, batch_size=2, seed=(0, 0))
    with pytest.raises(data.CorruptDatasetError, match=data.CORRUPT_DATASET_MESSAGE):
        datasets_lib.eval_pipeline(records, spec, batch_size=2)


def test_long_run_of_corrupt_records_raises_while_streaming():
    bad = data.MAX_CONSECUTIVE_DECODE_FAILURES
    images = _png_records(2) + [b"garbage"] * bad + _png_records(2)
    records = tf.data.Dataset.from_tensor_slices({"image": images, "label": [0] * (bad + 4)})
    spec = views_lib.ViewSpec(augment="none", image_size=10, num_views=1)
    train = iter(datasets_lib.train_pipeline(records, spec, batch_size=2, seed=(0, 0)))
    next(train)
    with pytest.raises(tf.errors.InvalidArgumentError, match=data.CORRUPT_DATASET_MESSAGE):
        next(train)
    shorter = _png_records(2) + [b"garbage"] * (bad - 1) + _png_records(2)
    records = tf.data.Dataset.from_tensor_slices({"image": shorter, "label": [0] * (bad + 3)})
    train = iter(datasets_lib.train_pipeline(records, spec, batch_size=2, seed=(0, 0)))
    assert [next(train)["label"].shape for _ in range(3)] == [(2,)] * 3


def test_balanced_stream_stops_on_a_class_whose_drawn_images_all_fail():
    # The class gives no image, so the step's batch would take the next step's.
    keys = _png_records(2) + [b"garbage", b"more garbage"]
    spec = views_lib.ViewSpec(augment="none", image_size=10, num_views=1)
    stream = datasets_lib.balanced_train_pipeline(keys, [0, 0, 1, 1], spec, batch_size=4,
                                                  samples_per_class=2, seed=(0, 0))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="all 2 images drawn for one class failed to decode"):
        next(iter(stream))
