"""configs/transfer.py and supcon_tf/init_from.py: a run that starts from a workdir, a
checkpoint or an export.

One tiny digits source (stage one only) and its export are made once per session; every
transfer then checks numbers against the source's own weights, read independently
(export.restore of the source checkpoint, or the export's SavedModel).
"""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import load_config

from supcon_tf import config_validation, data, export, init_from, train


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    """A tiny digits workdir after stage one, its export, and its encoder's weights."""
    root = tmp_path_factory.mktemp("transfer_source")
    workdir, export_dir = str(root / "workdir"), str(root / "export")
    train.run(load_config("digits.py", "tiny"), workdir, tf.distribute.get_strategy(), "train")
    info = export.export_from_workdir(workdir, export_dir)
    model = export.build_from_config(export.read_workdir_config(workdir))
    export.restore(info["checkpoint"], what="source model", model=model)
    return {"workdir": workdir, "export": export_dir, "checkpoint": info["checkpoint"],
            "model": model, "weights": [v.numpy() for v in model.encoder.variables]}


def transfer_config(mode, init_path):
    config = load_config("transfer.py", mode)
    config.init_from = init_path
    return config


def run_transfer(mode, init_path, workdir, run_mode="train_then_eval"):
    return train.run(transfer_config(mode, init_path), str(workdir),
                     tf.distribute.get_strategy(), run_mode)


def encoder_weights(workdir, checkpoint):
    """The encoder a transfer run saved, rebuilt from its own config.json."""
    model = export.build_from_config(export.read_workdir_config(str(workdir)))
    export.restore(os.path.join(str(workdir), "checkpoints", checkpoint), what="run",
                   model=model)
    return model, [v.numpy() for v in model.encoder.variables]


def assert_same(weights, expected):
    assert len(weights) == len(expected)
    for got, want in zip(weights, expected):
        np.testing.assert_array_equal(got, want)


def eval_split(config):
    images, labels = [], []
    for batch in data.build_eval_dataset(config.data, split=config.data.eval_split,
                                         batch_size=64):
        mask = batch["mask"].numpy().astype(bool)
        images.append(batch["image"].numpy()[mask])
        labels.append(batch["label"].numpy()[mask])
    return np.concatenate(images), np.concatenate(labels)


def linear_head_weights(workdir):
    """(kernel, bias) of the stage-two classifier the run checkpointed in workdir/linear."""
    prefix = tf.train.latest_checkpoint(os.path.join(str(workdir), "linear"))
    reader = tf.train.load_checkpoint(prefix)
    head = {len(shape): reader.get_tensor(key)
            for key, shape in tf.train.list_variables(prefix) if key.startswith("head/")}
    return head[2], head[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["workdir", "export"])
def test_linear_transfer_keeps_the_source_encoder_and_reports_its_probe(source, kind,
                                                                       tmp_path):
    init_path = source["workdir"] if kind == "workdir" else os.path.join(source["export"],
                                                                         "encoder")
    results = run_transfer("tiny_linear", init_path, tmp_path)
    assert results["steps"] == 0 and results["init_from"] == init_path
    assert results["linear_converged"] and results["linear_l2"] > 0
    assert "online_top1" not in results  # no stage one, so no online classifier
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["top1"] == results["top1"]
    _, saved = encoder_weights(tmp_path, "ckpt-0")
    assert_same(saved, source["weights"])

    # The probe, recomputed: the source's encoder (its restored Keras model, or the
    # exported SavedModel), the normalized embedding, the saved head, in NumPy.
    config = transfer_config("tiny_linear", init_path)
    images, labels = eval_split(config)
    if kind == "workdir":
        embedding = source["model"].encoder(images, training=False).numpy()
    else:
        embedding = tf.saved_model.load(init_path)(tf.constant(images)).numpy()
    embedding = embedding.astype(np.float64)
    features = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    kernel, bias = linear_head_weights(tmp_path)
    predictions = np.argmax(features @ kernel + bias, axis=1)
    assert results["num_eval_examples"] == len(labels) == 360
    assert results["top1"] == pytest.approx(np.mean(predictions == labels), abs=1e-12)


@pytest.mark.slow
def test_linear_stage_two_leaves_the_encoder_frozen(source, tmp_path):
    """Through the augmented protocol and batch statistics, the path that runs the
    encoder in training mode: the loaded weights and moving averages stay the source's."""
    config = transfer_config("tiny_linear", source["export"])
    config.linear.protocol, config.linear.bn_mode = "augmented", "batch_stats"
    config.linear.epochs, config.linear.global_batch_size = 1, 64
    init_from.adopt_architecture(config)
    strategy = tf.distribute.get_strategy()
    sizes = {"num_classes": 10, "num_train_examples": 1437}
    model, step = train.train(config, str(tmp_path), strategy, **sizes)
    head = train.train_stage_two(config, str(tmp_path), strategy, model, **sizes)
    assert step == 0 and int(head.kernel.shape[-1]) == 10
    assert tf.train.latest_checkpoint(str(tmp_path / "linear")).endswith("ckpt-22")
    assert_same([v.numpy() for v in model.encoder.variables], source["weights"])


@pytest.mark.slow
def test_finetune_starts_from_the_source_trains_the_encoder_and_resumes_its_own(
        source, tmp_path, monkeypatch):
    loads = []
    load_encoder = init_from.load_encoder
    monkeypatch.setattr(init_from, "load_encoder",
                        lambda *args: (loads.append(args[1].path), load_encoder(*args)))
    results = run_transfer("tiny_finetune", source["export"], tmp_path)
    assert results["method"] == "ce" and results["steps"] == 22  # 1437 // 64 in one epoch
    assert loads == [source["export"]] and 0.0 <= results["top1"] <= 1.0
    start, at_start = encoder_weights(tmp_path, "ckpt-0")
    assert_same(at_start, source["weights"])
    # A fresh classifier: the source's (also 10 classes) is not carried over.
    assert not np.array_equal(start.classifier.kernel.numpy(),
                              source["model"].classifier.kernel.numpy())
    _, trained = encoder_weights(tmp_path, "ckpt-22")
    changed = [not np.array_equal(a, b) for a, b in zip(trained, source["weights"])]
    assert np.mean(changed) > 0.5

    # The same command with one more epoch continues from ckpt-22, not from the source.
    config = transfer_config("tiny_finetune", source["export"])
    config.train.epochs = 2
    train.run(config, str(tmp_path), tf.distribute.get_strategy(), "train")
    assert loads == [source["export"]]
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    assert state.model_checkpoint_path.endswith("ckpt-44")

    # Its workdir exports like any run's, and that export is a valid source in turn.
    export.export_from_workdir(str(tmp_path), str(tmp_path / "hub"))
    assert init_from.locate(str(tmp_path / "hub")).kind == "export"
    reloaded = tf.saved_model.load(str(tmp_path / "hub" / "encoder"))
    final, _ = encoder_weights(tmp_path, "ckpt-44")
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(images).numpy(),
                               final.encoder(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_the_conversion_to_the_sources_images_is_logged_once(source, tmp_path, caplog):
    """A folder of 12x12 grey PNGs and RGB JPEGs; the source was trained on 8x8 grey digits."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            class_dir = tmp_path / "folder" / split / label
            class_dir.mkdir(parents=True)
            grey = rng.integers(0, 256, (12, 12, 1), dtype=np.uint8)
            colour = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            tf.io.write_file(str(class_dir / "0.png"), tf.io.encode_png(grey))
            tf.io.write_file(str(class_dir / "1.jpg"), tf.io.encode_jpeg(colour))
    config = transfer_config("tiny_linear", source["export"])
    config.data.name, config.data.data_dir = "image_folder", str(tmp_path / "folder")
    caplog.set_level(logging.INFO, logger="absl")
    init_from.with_architecture(config)  # config_validation's copy: silent
    init_from.adopt_architecture(config)  # the run's: one line
    lines = [r.getMessage() for r in caplog.records if "init_from:" in r.getMessage()]
    assert len(lines) == 1 and config.data.image_size == 8
    assert "trained on digits images of 8x8 (grey, replicated to 3 channels)" in lines[0]
    assert "resizes it to 8x8" in lines[0]
    assert "4 of 4 files read, 12x12 (so resized to 8x8), 2 grey, 2 RGB" in lines[0]


@pytest.mark.parametrize("path_kind", ["checkpoint", "export"])
def test_a_wrong_architecture_is_one_line_naming_the_source(source, tmp_path, path_kind):
    """The source's config says width 0.25; its weights were trained at 0.125."""
    if path_kind == "checkpoint":
        shutil.copytree(os.path.dirname(source["checkpoint"]), tmp_path / "checkpoints")
        with open(os.path.join(source["workdir"], "config.json")) as f:
            config_json = json.load(f)
        config_json["model"]["width_multiplier"] = 0.25
        with open(tmp_path / "config.json", "w") as f:
            json.dump(config_json, f)
        init_path = str(tmp_path / "checkpoints" / os.path.basename(source["checkpoint"]))
        expected = "does not fit the encoder built from"
    else:
        shutil.copytree(source["export"], tmp_path / "export")
        info_path = tmp_path / "export" / export.EXPORT_INFO_FILE
        with open(info_path) as f:
            info = json.load(f)
        info["config"]["model"]["width_multiplier"] = 0.25
        with open(info_path, "w") as f:
            json.dump(info, f)
        init_path = str(tmp_path / "export" / "encoder")
        expected = "variable 0 has shape (3, 3, 3, 8), the encoder's stem_conv/kernel has shape"
    config = transfer_config("tiny_linear", init_path)
    with pytest.raises(config_validation.ConfigError) as error:
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path / "run"))
    message = str(error.value)
    assert "\n" not in message and init_path in message and expected in message, message


@pytest.mark.parametrize("init_path,expected", [
    (None, "pass --config.init_from=PATH"),
    ("/nonexistent/run", "/nonexistent/run does not exist"),
])
def test_init_from_must_name_a_source(tmp_path, init_path, expected):
    config = load_config("transfer.py", "tiny_linear")
    config.init_from = init_path
    with pytest.raises(config_validation.ConfigError, match=expected):
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))


def test_a_source_directory_of_no_kind_is_named(tmp_path):
    with pytest.raises(init_from.InitFromError, match="has no config.json, no .index"):
        init_from.locate(str(tmp_path))


def test_zero_epochs_needs_init_from_and_a_stage_two(source, tmp_path):
    config = load_config("digits.py", "tiny")
    config.train.epochs = 0
    with pytest.raises(config_validation.ConfigError, match="train.epochs=0 must be > 0"):
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))
    config.init_from = source["workdir"]
    with pytest.raises(config_validation.ConfigError, match="optim.schedule='cosine' needs"):
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))
    config = transfer_config("tiny_finetune", source["workdir"])
    config.train.epochs = 0
    with pytest.raises(config_validation.ConfigError, match="method='ce' trains nothing"):
        config_validation.validate(config, num_replicas=1, workdir=str(tmp_path))
