"""Export to TF Hub Reusable SavedModels: every consumer a user reaches for, and the safety rules.

One tiny workdir (configs/digits.py:tiny, random weights, BN statistics moved off
their initial values, a stage-two linear head) is exported once through the
export_hub.py command line; the tests load that export in tf.saved_model.load,
keras.layers.TFSMLayer, hub.KerasLayer (inference and fine-tuning) and
saved_model_cli, and compare with the original Keras model. The ResNet exports take
images of any H and W: at twice the training size they match a Keras model built at
that size with the same weights.

test_analysis.py and test_notebook.py reuse `shared_export` from here.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import digits as digits_config  # noqa: E402
from supcon_tf import export, models  # noqa: E402

NUM_CLASSES = 10
ATOL = 1e-5
_EXPORTS = {}


def tiny_config(data_dir):
    config = digits_config.get_config("tiny")
    config.data.data_dir = str(data_dir)
    return config


def make_workdir(workdir, config, *, linear_head=True, seed=0):
    """Writes a workdir as training would (config.json, checkpoints/, linear/); returns
    (model, head) holding exactly the values written, head None without linear_head."""
    keras.utils.set_random_seed(seed)
    image_size = config.data.image_size
    model = models.build_model(config.model, num_classes=NUM_CLASSES, image_size=image_size)
    # Random weights everywhere (the fresh heads are zero-initialized) and moved BN
    # statistics, so that equal outputs mean the right values were exported.
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(variable + 0.1 * rng.standard_normal(variable.shape).astype(np.float32))
    images = rng.random((32, image_size, image_size, 3), dtype=np.float32)
    for _ in range(3):
        model(images, training=True)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), os.path.join(workdir, "checkpoints"), max_to_keep=1
    ).save(checkpoint_number=7)

    head = None
    if linear_head:
        head = models.linear_head(NUM_CLASSES)
        head.build((None, model.encoder.output_shape[-1]))
        for variable in head.trainable_variables:
            variable.assign(rng.standard_normal(variable.shape).astype(np.float32))
        tf.train.CheckpointManager(
            tf.train.Checkpoint(head=head), os.path.join(workdir, "linear"), max_to_keep=1
        ).save(checkpoint_number=2)

    saved = config.copy_and_resolve_references()
    saved.num_classes = NUM_CLASSES
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(saved.to_json_best_effort(indent=2))
    return model, head


def run_export_hub(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "export_hub.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),  # no CUDA-probe noise on stderr
    )


def shared_export(tmp_path_factory):
    """One exported tiny workdir per test session (built through the CLI).

    Returns dict(export_dir, workdir, config, images, reference, reference_training,
    moving_stats_after_training, head, large_images, reference_large).
    large_images are twice the training size; reference_large holds the outputs of
    a Keras model built at that size with the model's weights (a ResNet's weights
    do not depend on the image size).
    """
    if "export" not in _EXPORTS:
        root = tmp_path_factory.mktemp("shared_export")
        config = tiny_config(root / "tfds")
        workdir = str(root / "workdir")
        model, head = make_workdir(workdir, config)
        export_dir = str(root / "hub")
        # A stale export that --overwrite must replace entirely.
        os.makedirs(os.path.join(export_dir, "encoder"))
        open(os.path.join(export_dir, "stale_file"), "w").close()
        result = run_export_hub(
            f"--workdir={workdir}", f"--export_dir={export_dir}", "--overwrite"
        )
        assert result.returncode == 0, result.stderr[-3000:]

        size = config.data.image_size
        images = np.random.default_rng(1).random((6, size, size, 3), dtype=np.float32)
        reference = {key: t.numpy() for key, t in model(images, training=False).items()}
        reference["linear_logits"] = head(model.head_input(reference["embedding"])).numpy()
        large_images = np.random.default_rng(2).random((4, 2 * size, 2 * size, 3),
                                                       dtype=np.float32)
        large_model = models.build_model(config.model, num_classes=NUM_CLASSES,
                                         image_size=2 * size)
        large_model(large_images[:1], training=False)
        large_model.set_weights(model.get_weights())
        reference_large = {k: t.numpy() for k, t in large_model(large_images).items()}
        reference_large["linear_logits"] = head(
            large_model.head_input(reference_large["embedding"])).numpy()
        # Last, because training mode moves the model's BN statistics.
        reference_training = {k: t.numpy() for k, t in model(images, training=True).items()}
        reference_training["linear_logits"] = head(
            model.head_input(reference_training["embedding"])).numpy()
        # In the order the encoder export lists its non-trainable variables.
        moving_stats = [v.numpy() for v in model.encoder.variables if not v.trainable]
        encoder_variable_counts = (
            len(model.encoder.variables), len(model.encoder.trainable_variables)
        )
        _EXPORTS["export"] = dict(
            export_dir=export_dir, workdir=workdir, config=config, images=images,
            reference=reference, reference_training=reference_training,
            moving_stats_after_training=moving_stats, head=head,
            encoder_variable_counts=encoder_variable_counts,
            large_images=large_images, reference_large=reference_large,
        )
    return _EXPORTS["export"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


# Which model output each export's __call__ returns; the classifier uses the linear head.
CALL_OUTPUT = {"encoder": "embedding", "projection": "projection", "classifier": "linear_logits"}


def test_export_dir_layout_and_info(exported):
    export_dir = exported["export_dir"]
    assert sorted(os.listdir(export_dir)) == sorted(
        ["encoder", "projection", "classifier", export.EXPORT_INFO_FILE]
    )
    siblings = os.listdir(os.path.dirname(export_dir))
    assert not [name for name in siblings if ".tmp-" in name or ".old-" in name]
    info = export.read_export_info(export_dir)
    assert info["classifier_head"] == "linear"
    assert info["checkpoint"].endswith("ckpt-7")
    assert info["num_classes"] == NUM_CLASSES
    size = exported["config"].data.image_size
    assert info["config"]["data"]["image_size"] == size
    # The ResNet takes any size; the training size is the recommended one.
    assert info["image_size"] == info["recommended_image_size"] == size
    assert info["input_shape"] == [None, None, None, 3]
    assert "any H and W" in info["image_size_note"]


def test_saved_model_load_matches_keras_model(exported):
    images, reference = exported["images"], exported["reference"]
    for name, output in CALL_OUTPUT.items():
        loaded = tf.saved_model.load(os.path.join(exported["export_dir"], name))
        np.testing.assert_allclose(loaded(images).numpy(), reference[output], atol=ATOL)
        # Any batch size, and training passed explicitly.
        np.testing.assert_allclose(
            loaded(images[:1], training=False).numpy(), reference[output][:1], atol=ATOL
        )
        served = loaded.signatures["serving_default"](images=tf.constant(images))
        assert sorted(served) == ["embedding", "logits", "projection"]
        for key in ("embedding", "projection"):
            np.testing.assert_allclose(served[key].numpy(), reference[key], atol=ATOL)
        np.testing.assert_allclose(served["logits"].numpy(), reference["linear_logits"], atol=ATOL)
        assert list(loaded.regularization_losses) == []
        trainable = {v.name for v in loaded.trainable_variables}
        assert trainable < {v.name for v in loaded.variables}
        assert not any("moving" in name for name in trainable)

        # Twice the training size, and a non-square size.
        large = exported["large_images"]
        np.testing.assert_allclose(
            loaded(large).numpy(), exported["reference_large"][output], atol=ATOL
        )
        served = loaded.signatures["serving_default"](images=tf.constant(large))
        for key in ("embedding", "projection"):
            np.testing.assert_allclose(served[key].numpy(), exported["reference_large"][key],
                                       atol=ATOL)
        assert loaded(large[:, :12, :]).shape == (len(large),) + reference[output].shape[1:]

        if name == "encoder":  # exactly the variables its __call__ needs
            counts = (len(loaded.variables), len(loaded.trainable_variables))
            assert counts == exported["encoder_variable_counts"]


def test_training_mode_call_matches_keras_and_updates_batch_norm(exported):
    loaded = tf.saved_model.load(os.path.join(exported["export_dir"], "classifier"))
    out = loaded(exported["images"], training=True).numpy()
    np.testing.assert_allclose(out, exported["reference_training"]["linear_logits"], atol=ATOL)
    # One training-mode call moved the loaded statistics exactly as it moved the model's.
    trainable = {id(v) for v in loaded.trainable_variables}
    moving = [v.numpy() for v in loaded.variables if id(v) not in trainable]
    expected = exported["moving_stats_after_training"]
    assert len(moving) == len(expected) > 0
    for index, (value, expected_value) in enumerate(zip(moving, expected)):
        np.testing.assert_allclose(value, expected_value, atol=ATOL, err_msg=str(index))


def test_tfsm_layer_in_keras3(exported):
    images, reference = exported["images"], exported["reference"]
    path = os.path.join(exported["export_dir"], "projection")
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    inputs = keras.Input((images.shape[1], images.shape[2], 3))
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=False)  # see test_tfsm_layer_runs_the_encoder_at_any_size
    outputs = model.predict(images, verbose=0)
    for key in ("embedding", "projection"):
        np.testing.assert_allclose(outputs[key], reference[key], atol=ATOL)
    np.testing.assert_allclose(outputs["logits"], reference["linear_logits"], atol=ATOL)


def test_tfsm_layer_runs_the_encoder_at_any_size(exported):
    """The encoder through TFSMLayer's default endpoint at the training size and at
    twice it: called on each size's images, and in one Keras model with unknown H and W.

    The eager calls come first: once a loaded function has been called on unknown H
    and W (the Keras model below), TensorFlow runs it on any size even where the
    signature fixes one, so only calls before that check the signature."""
    path = os.path.join(exported["export_dir"], "encoder")
    sizes = ((exported["images"], exported["reference"]),
             (exported["large_images"], exported["reference_large"]))
    layer = keras.layers.TFSMLayer(path)
    eager = [layer(images) for images, _ in sizes]
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.TFSMLayer(path)(inputs))
    # predict's default jit_compile="auto" compiles with XLA wherever a non-CPU device
    # is listed, and the TPU wheel lists TPU_SYSTEM but has no XLA for the host CPU.
    model.compile(jit_compile=False)
    for (images, reference), eager_outputs in zip(sizes, eager):
        for outputs in (eager_outputs, model.predict(images, verbose=0)):
            assert outputs["embedding"].shape == (len(images), reference["embedding"].shape[1])
            for key in ("embedding", "projection"):
                np.testing.assert_allclose(outputs[key], reference[key], atol=ATOL)
            np.testing.assert_allclose(outputs["logits"], reference["linear_logits"], atol=ATOL)


@pytest.mark.tf_keras
def test_hub_keras_layer_runs_the_encoder_at_any_size(exported):
    import tensorflow_hub as hub
    import tf_keras

    path = os.path.join(exported["export_dir"], "encoder")
    sizes = ((exported["images"], exported["reference"]),
             (exported["large_images"], exported["reference_large"]))
    # Eager calls first, on a layer of their own (see the TFSMLayer test above).
    layer = hub.KerasLayer(path)
    eager = [layer(images).numpy() for images, _ in sizes]
    inputs = tf_keras.Input((None, None, 3))
    model = tf_keras.Model(inputs, hub.KerasLayer(path)(inputs))
    for (images, reference), eager_embedding in zip(sizes, eager):
        for embedding in (eager_embedding, model(images).numpy()):
            assert embedding.shape == (len(images), reference["embedding"].shape[1])
            np.testing.assert_allclose(embedding, reference["embedding"], atol=ATOL)


@pytest.mark.tf_keras
def test_hub_keras_layer_inference_and_finetuning(exported):
    import tensorflow_hub as hub  # uses tf_keras since tf.keras is Keras 3 here
    import tf_keras

    images, reference = exported["images"], exported["reference"]
    size = images.shape[1]
    layer = hub.KerasLayer(os.path.join(exported["export_dir"], "classifier"), trainable=True)
    inputs = tf_keras.Input((size, size, 3))
    model = tf_keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model(images).numpy(), reference["linear_logits"], atol=ATOL)
    np.testing.assert_allclose(
        model(images, training=True).numpy(),
        exported["reference_training"]["linear_logits"], atol=ATOL,
    )
    assert layer.trainable_weights and layer.non_trainable_weights

    before = [w.numpy() for w in layer.weights]
    model.compile(
        tf_keras.optimizers.SGD(0.05),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.arange(len(images)) % NUM_CLASSES
    history = model.fit(images, labels, batch_size=len(images), epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = {
        id(w) for w, old in zip(layer.weights, before) if not np.allclose(w.numpy(), old)
    }
    kernels = {id(w) for w in layer.trainable_weights if len(w.shape) >= 2}
    assert kernels and kernels <= changed
    # BN ran in training mode: its moving statistics (all the non-trainables) moved too.
    moving = {id(w) for w in layer.non_trainable_weights}
    assert moving and moving <= changed


def test_saved_model_cli_shows_signature_and_both_traces(exported):
    result = subprocess.run(
        ["saved_model_cli", "show", "--all", "--dir",
         os.path.join(exported["export_dir"], "encoder")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "signature_def['serving_default']" in out
    # H and W unknown: the ResNet takes any size.
    images_info = "inputs['images'] tensor_info:\n        dtype: DT_FLOAT\n        shape: "
    assert images_info + "(-1, -1, -1, 3)" in out
    for key in ("embedding", "projection", "logits"):
        assert f"outputs['{key}']" in out
    call_section = out.split("Function Name: '__call__'")[1].split("Function Name:")[0]
    assert "Value: True" in call_section and "Value: False" in call_section


def test_online_classifier_used_without_linear_head(exported):
    config = exported["config"]
    model = export.build_from_config(export.read_workdir_config(exported["workdir"]))
    export.restore(tf.train.latest_checkpoint(
        os.path.join(exported["workdir"], "checkpoints")), what="test model", model=model)
    module = export.HubModule(
        export.ForwardPasses(model, image_size=config.data.image_size), "logits"
    )
    images = exported["images"]
    np.testing.assert_allclose(
        module(images).numpy(), exported["reference"]["logits"], atol=ATOL
    )
    assert {id(v) for v in module.variables} == {
        id(v.value) for v in model.encoder.variables + model.classifier.variables
    }


def test_cli_without_checkpoint_fails_with_one_line(tmp_path, exported):
    workdir = tmp_path / "empty_workdir"
    workdir.mkdir()
    with open(os.path.join(exported["workdir"], "config.json")) as f:
        (workdir / "config.json").write_text(f.read())
    result = run_export_hub(f"--workdir={workdir}", f"--export_dir={tmp_path / 'hub'}")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "no checkpoint in" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("change", ["width", "num_classes"])
def test_checkpoint_not_matching_config_is_a_clear_error(tmp_path, exported, change):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    config = json.loads(open(os.path.join(exported["workdir"], "config.json")).read())
    if change == "width":
        config["model"]["width_multiplier"] *= 2
    else:
        config["num_classes"] = NUM_CLASSES + 1
    (workdir / "config.json").write_text(json.dumps(config))
    checkpoint = tf.train.latest_checkpoint(os.path.join(exported["workdir"], "checkpoints"))
    with pytest.raises(ValueError, match="does not match"):
        export.export_from_workdir(str(workdir), str(tmp_path / "hub"), checkpoint=checkpoint)
    assert not (tmp_path / "hub").exists()


def test_missing_checkpoint_path_is_a_clear_error(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        export.export_from_workdir(exported["workdir"], str(tmp_path / "hub"),
                                   checkpoint=str(tmp_path / "ckpt-99"))


def test_missing_config_and_num_classes_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        export.read_workdir_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model": {}, "data": {}}))
    with pytest.raises(ValueError, match="num_classes"):
        export.read_workdir_config(str(tmp_path))


class _FakeSaves:
    """Stands in for save_hub_module: writes a marker file, optionally failing on one export."""

    def __init__(self, fail_on=None):
        self.fail_on = fail_on

    def __call__(self, module, path):
        if self.fail_on and path.endswith(self.fail_on):
            raise RuntimeError("simulated failure while saving")
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "w") as f:
            f.write(module.name)


@pytest.fixture(scope="module")
def small_model(exported):
    return export.build_from_config(export.read_workdir_config(exported["workdir"]))


def test_export_refuses_to_overwrite_and_replaces_atomically(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(export, "save_hub_module", _FakeSaves())
    size = small_model.encoder.input_shape[1]
    export_dir = tmp_path / "hub"
    export_dir.mkdir()
    (export_dir / "old_file").write_text("old export")

    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_models(small_model, str(export_dir), image_size=size)
    assert (export_dir / "old_file").read_text() == "old export"

    # A failure half-way leaves the old export untouched and no temporary directory.
    monkeypatch.setattr(export, "save_hub_module", _FakeSaves(fail_on="classifier"))
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_models(small_model, str(export_dir), image_size=size, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["hub"]
    assert sorted(os.listdir(export_dir)) == ["old_file"]

    monkeypatch.setattr(export, "save_hub_module", _FakeSaves())
    export.export_models(small_model, str(export_dir), image_size=size, overwrite=True,
                         info={"note": "new"})
    assert sorted(os.listdir(tmp_path)) == ["hub"]
    assert sorted(os.listdir(export_dir)) == sorted(
        ["encoder", "projection", "classifier", export.EXPORT_INFO_FILE]
    )
    assert (export_dir / "encoder" / "saved_model.pb").read_text() == "supcon_embedding"


def test_export_into_missing_or_empty_dir(tmp_path, monkeypatch, small_model):
    monkeypatch.setattr(export, "save_hub_module", _FakeSaves())
    size = small_model.encoder.input_shape[1]
    (tmp_path / "empty").mkdir()
    for export_dir in (tmp_path / "empty", tmp_path / "nested" / "new"):
        export.export_models(small_model, str(export_dir), image_size=size)
        assert sorted(os.listdir(export_dir)) == ["classifier", "encoder", "projection"]


def test_image_size_info_any_size_for_resnets_fixed_for_vits():
    resnet = models.encoder("resnet18", image_size=8, cifar_stem=True, width_multiplier=0.125)
    vit = models.encoder("vit_tiny", image_size=8)
    assert export.takes_any_image_size(resnet) and not export.takes_any_image_size(vit)
    assert export.input_shape(resnet, 8) == [None, None, None, 3]
    assert export.input_shape(vit, 8) == [None, 8, 8, 3]
    for encoder in (resnet, vit):
        assert export.image_size_info(encoder, 8)["recommended_image_size"] == 8
    assert "H = W = 8 only" in export.image_size_info(vit, 8)["image_size_note"]


def test_vit_export_keeps_its_fixed_size(tmp_path):
    """A ViT's export takes its training size and refuses another (position embeddings)."""
    config = digits_config.get_config("tiny")
    config.model.name = "vit_tiny"
    config.model.cifar_stem = False
    config.model.width_multiplier = 1.0
    model = models.build_model(config.model, num_classes=NUM_CLASSES, image_size=8)
    images = np.random.default_rng(3).random((2, 8, 8, 3), dtype=np.float32)
    expected = model(images, training=False)["embedding"].numpy()
    path = str(tmp_path / "encoder")
    export.save_hub_module(
        export.HubModule(export.ForwardPasses(model, image_size=8), "embedding"), path
    )
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded(images).numpy(), expected, atol=ATOL)
    signature = loaded.signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 8, 8, 3]
    with pytest.raises((ValueError, TypeError)):
        loaded(np.zeros((2, 16, 16, 3), np.float32))
    # The signature runs on any shape it is handed; the graph's own check stops it. 4 x 16
    # images have as many patches as 8 x 8 ones, so only that check can refuse them.
    for shape in ((2, 16, 16, 3), (2, 4, 16, 3)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="8x8 images only"):
            signature(images=tf.zeros(shape))
