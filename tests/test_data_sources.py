"""Data sources: image folders, any TFDS image-classification dataset, class-balanced batches.

Every image a test writes is a solid colour that encodes (class, number), so a
decoded image names the file it came from, whatever crop or resize it went through.
"""

import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import load_config

from supcon_tf import config_validation, data, export, train
from supcon_tf.data import balanced as balanced_lib
from supcon_tf.data import datasets as datasets_lib
from supcon_tf.data import sources

# Odd sizes, both orientations; PNG and JPEG alternate.
SIZES = [(13, 9), (40, 31), (9, 13), (17, 17), (31, 40)]
STEP = 12  # colour levels between two numbers: far above JPEG's error on a solid colour


def _colour(label, number):
    return np.array([20 + STEP * number, 30 + 40 * label, 230 - STEP * number], np.uint8)


def _identify(image):
    """(label, number) of a decoded solid image in [0, 1]."""
    red, green = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)[:2] * 255
    return int(round((green - 30) / 40)), int(round((red - 20) / STEP))


def _write_image(path, label, number):
    height, width = SIZES[number % len(SIZES)]
    image = np.broadcast_to(_colour(label, number), (height, width, 3))
    if number % 2:
        encoded = tf.io.encode_jpeg(image, quality=95)
    else:
        encoded = tf.io.encode_png(image)
    tf.io.write_file(f"{path}.{'jpg' if number % 2 else 'png'}", encoded)


def _write_folder(root, counts, *, broken_in=None):
    """root/<split>/<class>/<image>: counts {split: {class: number of images}}."""
    for split, classes in counts.items():
        for label, (name, count) in enumerate(sorted(classes.items())):
            class_dir = root / split / name
            class_dir.mkdir(parents=True)
            for number in range(count):
                _write_image(str(class_dir / f"img{number:02d}"), label, number)
            (class_dir / "notes.txt").write_text("not an image: ignored")
        if broken_in:
            (root / split / broken_in / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    return str(root)


TRAIN = {"cat": 5, "ant": 4, "bee": 6}  # written unsorted; labels follow sorted names
TEST = {"bee": 2, "ant": 3, "cat": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("folder"), {"train": TRAIN, "test": TEST},
                         broken_in="bee")


BALANCED = {f"c{c}": count for c, count in enumerate([2, 3, 9, 4, 5, 2])}


@pytest.fixture(scope="module")
def skewed_folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("skewed"),
                         {"train": BALANCED, "test": {name: 1 for name in BALANCED}})


def _config(data_dir, **overrides):
    fields = dict(name="image_folder", data_dir=data_dir, train_split="train",
                  eval_split="test", image_size=8, num_views=2, augment="none",
                  crop_area_min=0.2, color_strength=0.5, color_jitter_style="pytorch",
                  hflip=False, blur=False, blur_probability=0.5, randaugment_layers=2,
                  randaugment_magnitude=10, shuffle_buffer=16, samples_per_class=None)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def _expected(counts):
    return sorted((label, number) for label, (_, count) in enumerate(sorted(counts.items()))
                  for number in range(count))


def _eval_ids(config, split, **kwargs):
    ids = []
    for batch in data.build_eval_dataset(config, split=split, batch_size=4, **kwargs):
        for image, label in zip(batch["image"].numpy()[batch["mask"].numpy()],
                                batch["label"].numpy()[batch["mask"].numpy()]):
            identity = _identify(image)
            assert identity[0] == label  # the label is the folder the file sits in
            ids.append(identity)
    return sorted(ids)


def _train_ids(batch):
    """[(label, number)] of each example's first view."""
    return [_identify(views[0]) for views in np.asarray(batch["views"])]


def _take(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(count)]


# ---------------------------------------------------------------------------- image folders


def test_folder_info_has_sorted_class_names_and_counts_every_image_file(folder):
    info = data.dataset_info(_config(folder))
    assert info.class_names == ("ant", "bee", "cat") and info.num_classes == 3
    # The unreadable file is an image file until it is decoded; notes.txt is not.
    assert info.num_train_examples == 5 + 4 + 6 + 1
    assert info.num_eval_examples == 2 + 3 + 2 + 1
    assert not data.is_jpeg(_config(folder))


def test_folder_eval_decodes_both_formats_at_odd_sizes_and_skips_the_broken_file(folder, capfd):
    assert _eval_ids(_config(folder), "test") == _expected(TEST)
    assert "skipped so far: 1" in capfd.readouterr().err
    assert _eval_ids(_config(folder, image_size=11), "train") == _expected(TRAIN)


def test_folder_images_decode_to_their_pixels(folder):
    # PNG exactly, JPEG within its error, after resizing 13x9 etc. to 8x8.
    config = _config(folder)
    batches = list(data.build_eval_dataset(config, split="test", batch_size=16))
    for image, label in zip(batches[0]["image"].numpy()[batches[0]["mask"].numpy()],
                            batches[0]["label"].numpy()[batches[0]["mask"].numpy()]):
        _, number = _identify(image)
        error = np.abs(image * 255 - _colour(label, number)).max()
        assert error < (4 if number % 2 else 1e-3)


def test_folder_train_stream_covers_an_epoch_and_differs_by_seed(folder, capfd):
    config = _config(folder, augment="crop_flip", shuffle_buffer=1)
    stream = _take(data.build_train_dataset(config, global_batch_size=5, seed=3), 3)
    other = _take(data.build_train_dataset(config, global_batch_size=5, seed=4), 3)
    first_epoch = [i for batch in stream for i in _train_ids(batch)]
    # 16 files, one unreadable: the first 3 batches of 5 are exactly the 15 good images.
    assert sorted(first_epoch) == _expected(TRAIN)
    assert first_epoch != [i for batch in other for i in _train_ids(batch)]
    assert "skipped so far: 1" in capfd.readouterr().err


def test_folder_train_stream_resumes_exactly_across_epochs(skewed_folder):
    # start_step skips records before decoding, so (as for TFDS) resuming is exact
    # when no record before it failed to decode: this folder has no unreadable file.
    config = _config(skewed_folder, augment="simaugment", shuffle_buffer=1)
    stream = _take(data.build_train_dataset(config, global_batch_size=5, seed=3), 9)
    resumed = _take(data.build_train_dataset(config, global_batch_size=5, seed=3,
                                             start_step=7), 2)
    for a, b in zip(stream[7:], resumed):  # step 7 is in the second pass over the 25 images
        np.testing.assert_array_equal(a["views"], b["views"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # The first 5 batches of 5 are one pass: every class as often as it has images.
    first_pass = np.concatenate([b["label"] for b in stream[:5]])
    assert np.bincount(first_pass).tolist() == [BALANCED[name] for name in sorted(BALANCED)]


def test_two_input_pipelines_read_disjoint_files_covering_the_folder(folder):
    config = _config(folder)
    source = sources.source(config)
    everything = set(source.files("train")[0])
    parts, ids = [], []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        parts.append(set(source.labeled_keys("train", input_context=context)[0]))
        ids.append(_eval_ids(config, "train", input_context=context))
    assert not parts[0] & parts[1] and parts[0] | parts[1] == everything
    assert len(everything) == 16 and abs(len(parts[0]) - len(parts[1])) <= 1
    assert not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == _expected(TRAIN)


def _error(config):
    with pytest.raises(ValueError) as raised:
        data.dataset_info(config)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_folder_errors_are_one_clear_line(tmp_path):
    assert "needs config.data.data_dir" in _error(_config(None))
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    assert "has no class folders" in _error(_config(str(empty)))
    train_only = _write_folder(tmp_path / "train_only", {"train": {"a": 1}})
    message = _error(_config(train_only, eval_split="validation"))
    assert f"split {train_only}/validation does not exist ({train_only} holds: train)" in message
    no_images = tmp_path / "no_images"
    for split in ("train", "test"):
        (no_images / split / "a").mkdir(parents=True)
    assert f"class {no_images / 'train' / 'a'} has no images" in _error(
        _config(str(no_images)))
    mismatched = _write_folder(tmp_path / "mismatched",
                               {"train": {"a": 1, "b": 1, "c": 1}, "test": {"a": 1, "d": 1}})
    message = _error(_config(mismatched))
    assert "missing: b, c; extra: d" in message and "same class folders" in message


def test_a_run_on_a_folder_records_its_class_names_in_config_results_and_export(folder,
                                                                               tmp_path):
    config = load_config("digits.py", "tiny")
    config.data.update(dict(name="image_folder", data_dir=folder, shuffle_buffer=16))
    config.train.global_batch_size = config.linear.global_batch_size = 4
    config.eval.batch_size = 4
    config.linear.epochs = 1
    workdir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
    config_validation.validate(config, num_replicas=1, workdir=workdir)
    results = train.run(config, workdir, tf.distribute.get_strategy())
    with open(os.path.join(workdir, "config.json")) as f:
        saved_config = json.load(f)
    with open(os.path.join(workdir, "results.json")) as f:
        saved_results = json.load(f)
    info = export.export_from_workdir(workdir, export_dir)
    with open(os.path.join(export_dir, export.EXPORT_INFO_FILE)) as f:
        saved_info = json.load(f)
    names = sorted(TRAIN)
    assert saved_config["class_names"] == saved_results["class_names"] == names
    assert results["class_names"] == info["class_names"] == saved_info["class_names"] == names
    assert results["num_eval_examples"] == sum(TEST.values())


# ---------------------------------------------------------------------------- TFDS by name


def test_any_tfds_image_classification_dataset_by_name():
    config = _config("/nonexistent", name="oxford_flowers102", image_size=16)
    with tfds.testing.mock_data(num_examples=10):
        info = data.dataset_info(config)
        train = _take(data.build_train_dataset(config, global_batch_size=4, seed=0), 1)[0]
        evaluation = _take(data.build_eval_dataset(config, split="test", batch_size=4), 10)
    assert info.num_classes == 102 and len(info.class_names) == 102
    assert info.class_names[:2] == ("pink primrose", "hard-leaved pocket orchid")
    assert (info.num_train_examples, info.num_eval_examples) == (10, 10)
    assert train["views"].shape == (4, 2, 16, 16, 3)
    assert [int(b["mask"].sum()) for b in evaluation] == [4, 4, 2]
    assert all(0 <= label < 102 for b in evaluation for label in b["label"])


@pytest.mark.parametrize("name,jpeg", [("imagenet2012", True), ("cifar10", False),
                                       ("oxford_flowers102", False)])
def test_jpeg_is_read_from_the_image_feature(name, jpeg):
    assert data.is_jpeg(_config("/nonexistent", name=name)) is jpeg


def test_tfds_names_and_features_are_checked():
    with pytest.raises(ValueError, match="config.data.name='flowerz' is unknown"):
        data.check_dataset_name("flowerz")
    data.check_dataset_name("oxford_flowers102")
    data.check_dataset_name("image_folder")
    two_images = tfds.features.FeaturesDict({
        "left": tfds.features.Image(), "right": tfds.features.Image(),
        "label": tfds.features.ClassLabel(num_classes=2)})
    config = _config(None, name="pairs")
    with pytest.raises(ValueError, match=r"has several \(left, right\); its features are left, "
                                         r"right, label"):
        sources._feature_key(two_images, tfds.features.Image, "image", config)
    assert sources._feature_key(two_images, tfds.features.ClassLabel, "label", config) == "label"


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    config = _config(str(tmp_path), name="oxford_flowers102")
    with pytest.raises(data.DatasetNotPreparedError,
                       match="tfds build oxford_flowers102 .*config.data.data_dir"):
        data.dataset_info(config)


# ---------------------------------------------------------------------------- balanced batches


def _assert_balanced(ids, classes, per_class, distinct=True):
    labels = [label for label, _ in ids]
    assert sorted(np.unique(labels, return_counts=True)[1].tolist()) == [per_class] * classes
    if distinct:  # every class has >= M images: M distinct ones
        assert len(set(ids)) == len(ids)


def test_balanced_batches_hold_b_over_m_classes_seeded_and_resumable(skewed_folder):
    config = _config(skewed_folder, samples_per_class=2)
    stream = _take(data.build_train_dataset(config, global_batch_size=8, seed=1), 12)
    resumed = _take(data.build_train_dataset(config, global_batch_size=8, seed=1,
                                             start_step=7), 5)
    other = _take(data.build_train_dataset(config, global_batch_size=8, seed=2), 12)
    for batch in stream + other:
        ids = _train_ids(batch)
        assert [label for label, _ in ids] == batch["label"].tolist()
        _assert_balanced(ids, classes=4, per_class=2)
    for a, b in zip(stream[7:], resumed):
        np.testing.assert_array_equal(a["views"], b["views"])
    assert [b["label"].tolist() for b in stream] != [b["label"].tolist() for b in other]


def test_balanced_batches_per_pipeline_under_sharding(skewed_folder):
    config = _config(skewed_folder, samples_per_class=2)
    source = sources.source(config)
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=4)
        # Global batch 8: 4 per pipeline, read as 2 replicas x 2.
        batches = _take(data.build_train_dataset(config, global_batch_size=8, seed=0,
                                                 input_context=context), 8)
        assert all(b["views"].shape[0] == 2 for b in batches)
        own = {_identify_path(path) for path in source.labeled_keys(
            "train", input_context=context)[0]}
        for first, second in zip(batches[::2], batches[1::2]):
            ids = _train_ids(first) + _train_ids(second)
            # Class c0 has 2 images, one per pipeline: a pipeline repeats its one.
            _assert_balanced(ids, classes=2, per_class=2, distinct=False)
            assert set(ids) <= own
        seen.append(own)
    assert not seen[0] & seen[1]


def _identify_path(path):
    """(label, number) of a file written by _write_folder."""
    parts = str(path).split("/")
    return sorted(BALANCED).index(parts[-2]), int(parts[-1][3:5])


def test_balanced_sampler_draws_every_image_equally_often():
    # Independent of the sampler's mechanics: P(image) = K / C * min(M, n_c) / n_c.
    counts = np.array([1, 3, 10, 4, 7, 25])
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    k, m, steps = 3, 4, 3000
    sampler = balanced_lib.ClassBalancedSampler(labels, samples_per_class=m,
                                                classes_per_step=k)
    draw = tf.function(lambda step: sampler.positions(tf.constant([5, 6]), step))
    hits = np.zeros(len(labels))
    for step in range(steps):
        positions = draw(tf.constant(step, tf.int64)).numpy()
        assert positions.shape == (k, m)
        for row in positions:
            assert len(set(labels[row])) == 1
            assert len(set(row)) == min(m, counts[labels[row[0]]])
            hits[np.unique(row)] += 1
        assert len(set(labels[positions[:, 0]])) == k
    chance = k / len(counts) * np.minimum(m, counts[labels]) / counts[labels]
    sigma = np.sqrt(steps * chance * (1 - chance)) + 1e-9
    assert np.abs(hits - steps * chance).max() < 5 * sigma.max()
    assert np.abs((hits - steps * chance) / sigma).max() < 5


def test_balanced_batches_replace_an_unreadable_image_by_its_class(folder, capfd):
    config = _config(folder, samples_per_class=3)
    for batch in _take(data.build_train_dataset(config, global_batch_size=6, seed=0), 15):
        labels = batch["label"].tolist()
        assert sorted(np.unique(labels, return_counts=True)[1].tolist()) == [3, 3]
        assert [label for label, _ in _train_ids(batch)] == labels
    assert "replaced so far: " in capfd.readouterr().err


@pytest.mark.parametrize("samples,batch,message", [
    (3, 8, "must divide the 8 examples"),
    (1, 8, "has only 6"),
])
def test_balanced_batches_that_cannot_be_drawn_are_clear_errors(skewed_folder, samples, batch,
                                                                message):
    config = _config(skewed_folder, samples_per_class=samples)
    with pytest.raises(ValueError, match=message):
        data.build_train_dataset(config, global_batch_size=batch, seed=0)


@pytest.mark.parametrize("samples,message", [
    (3, "config.train.global_batch_size=128 is not a multiple of "
        "config.data.samples_per_class=3"),
    (8, "puts 16 classes in each batch of config.train.global_batch_size=128, but digits has "
        "10; raise samples_per_class to 16 or more"),
    (-2, "config.data.samples_per_class=-2 must be None"),
])
def test_validation_checks_samples_per_class(tmp_path, samples, message):
    config = load_config("digits.py", "tiny")
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.samples_per_class = samples
    with pytest.raises(config_validation.ConfigError) as raised:
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "work"))
    assert message in str(raised.value)


def test_stream_index_seeds_match_the_uniform_stream_contract():
    # The balanced stream's records are the in-memory pipeline's: a PNG decodes alike.
    records = [tf.io.encode_png(np.full((5, 7, 3), 10 * i, np.uint8)).numpy() for i in range(4)]
    spec = data.ViewSpec(augment="none", image_size=8, num_views=1)
    batch = next(iter(datasets_lib.balanced_train_pipeline(
        records, [0, 0, 1, 1], spec, batch_size=4, samples_per_class=2, seed=(0, 0))))
    values = sorted(np.round(batch["views"].numpy()[:, 0].mean(axis=(1, 2, 3)) * 255).tolist())
    assert values == [0.0, 10.0, 20.0, 30.0]
