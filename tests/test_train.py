"""The training loop, the methods, resume, SIGTERM, non-finite stops and evaluation helpers."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import load_config, mirrored_strategy, sigterm_after_first_loop

from supcon_tf import checkpoints, evaluate, train
from supcon_tf import strategy as strategy_lib

NUM_CLASSES = 10


def tiny_config(method="supcon", **train_overrides):
    config = load_config("digits.py", "tiny")
    config.method = method
    config.train.update(train_overrides)
    return config


def synthetic_iterator(strategy, config, seed=0):
    """A fixed global batch, repeated; replica i gets rows [i * b, (i + 1) * b)."""
    rng = np.random.default_rng(seed)
    size, views = config.data.image_size, config.data.num_views
    global_batch = config.train.global_batch_size
    batch = {"views": rng.uniform(size=(global_batch, views, size, size, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, size=global_batch).astype(np.int32)}

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        return tf.data.Dataset.from_tensor_slices(batch).batch(
            per_replica, drop_remainder=True).repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def stage_one(config, strategy, jit_compile=False, num_train_examples=1024):
    model, optimizer, _, _ = train.build_stage_one(
        config, strategy, num_classes=NUM_CLASSES, num_train_examples=num_train_examples)
    step = train.make_replica_step(config, model, optimizer, strategy.num_replicas_in_sync)
    return model, optimizer, train.make_train_loop(strategy, step, jit_compile)


@pytest.fixture(scope="module")
def four_replicas():
    return mirrored_strategy(4)


def run_steps(config, strategy, jit_compile=False):
    """One step, then three: returns (model, optimizer, loop, iterator, first-step metrics)."""
    model, optimizer, loop = stage_one(config, strategy, jit_compile=jit_compile,
                                       num_train_examples=100 * config.train.global_batch_size)
    iterator = synthetic_iterator(strategy, config)
    first = loop(iterator, tf.constant(1))
    assert int(optimizer.iterations.numpy()) == 1
    few = loop(iterator, tf.constant(3))
    assert int(optimizer.iterations.numpy()) == 4
    for metrics in (first, few):
        assert float(metrics["finite"]) == 1.0
        assert np.isfinite(float(metrics["loss"]))
    return model, optimizer, loop, iterator, first


@pytest.mark.parametrize("method", ["supcon", "simclr", "ce"])
def test_one_replica_steps_and_loss_goes_down_on_a_fixed_batch(method):
    config = tiny_config(method, global_batch_size=16)
    config.optim.warmup_epochs = 0
    model, _, loop, iterator, first = run_steps(config, tf.distribute.get_strategy())
    loop(iterator, tf.constant(20))
    last = float(loop(iterator, tf.constant(1))["loss"])
    assert last < 0.8 * float(first["loss"])
    if method == "ce":  # ce never trains the projection head
        trained = {id(v) for v in train.trained_variables(model, method)}
        assert not trained & {id(v) for v in model.projection_head.variables}


@pytest.mark.parametrize("method", ["simclr", "ce"])
def test_four_replica_steps(method, four_replicas):
    config = tiny_config(method, global_batch_size=16)
    model, _, _, _, _ = run_steps(config, four_replicas)
    for variable in model.trainable_variables:
        assert np.all(np.isfinite(variable.numpy()))


@pytest.mark.slow
def test_four_replicas_take_the_one_device_step_on_the_global_batch(four_replicas):
    """With synchronized BN, 4 replicas match one device holding the global batch, step by step."""
    config = tiny_config("supcon", global_batch_size=16)
    config.model.sync_bn = True
    results = []
    for strategy in (tf.distribute.get_strategy(), four_replicas):
        model, _, _, _, first = run_steps(config, strategy)
        results.append((float(first["loss"]), [v.numpy() for v in model.trainable_variables]))
    (loss_one, weights_one), (loss_four, weights_four) = results
    assert loss_four == pytest.approx(loss_one, rel=1e-5)
    for one, four in zip(weights_one, weights_four):
        np.testing.assert_allclose(four, one, rtol=1e-3, atol=1e-5)


@pytest.mark.host_xla
def test_whole_train_step_compiles_with_xla():
    """TPU-readiness: model, SupCon loss, gradient and LARS update under jit_compile=True."""
    config = tiny_config("supcon", global_batch_size=16)
    config.optim.name = "lars"
    run_steps(config, tf.distribute.get_strategy(), jit_compile=True)


def final_weights(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config("supcon")
    strategy = tf.distribute.get_strategy()
    sizes = dict(num_classes=NUM_CLASSES, num_train_examples=1437)
    straight = str(tmp_path / "straight")
    _, steps = train.train(config, straight, strategy, **sizes)

    resumed = str(tmp_path / "resumed")
    sigterm_after_first_loop(monkeypatch)
    with pytest.raises(train.Preempted):
        train.train(config, resumed, strategy, **sizes)
    saved = tf.train.latest_checkpoint(os.path.join(resumed, "checkpoints"))
    assert saved.endswith(f"ckpt-{config.train.steps_per_loop}")
    monkeypatch.undo()
    _, resumed_steps = train.train(config, resumed, strategy, **sizes)

    assert resumed_steps == steps == 1437 // config.train.global_batch_size
    expected, actual = final_weights(straight), final_weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.slow
def test_non_finite_loss_stops_without_saving(tmp_path, monkeypatch):
    config = tiny_config("supcon")
    monkeypatch.setattr(train, "supcon_loss",
                        lambda features, *args, **kwargs: tf.reduce_sum(features) * np.nan)
    with pytest.raises(FloatingPointError, match=r"steps 1\.\.2"):
        train.train(config, str(tmp_path), tf.distribute.get_strategy(),
                    num_classes=NUM_CLASSES, num_train_examples=1437)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) is None


def test_topk_accuracy_counts_by_hand():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [1, 0, 0]])
    labels = np.array([2, 0, 0, 1])
    assert evaluate.topk_accuracy(labels, logits, 1) == 0.25
    assert evaluate.topk_accuracy(labels, logits, 2) == 0.75  # row 3 ties for second place
    assert evaluate.topk_accuracy(labels, logits, 3) == 1.0
    mask = np.array([True, True, False, False])
    assert evaluate.topk_accuracy(labels, logits, 1, mask=mask) == 0.5


@pytest.mark.parametrize("replicas", [1, 4])
def test_extract_embeddings_drops_padding_and_keeps_every_row(replicas):
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    batches = []
    for start in range(0, 10, 8):  # two padded batches of 8, like build_eval_dataset
        chunk = images[start:start + 8]
        valid = len(chunk)
        batches.append({"image": np.concatenate([chunk, np.zeros((8 - valid, 2, 2, 3), np.float32)]),
                        "label": np.arange(start, start + 8, dtype=np.int32),
                        "mask": np.arange(8) < valid})
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]})
    strategy = (tf.distribute.get_strategy() if replicas == 1
                else mirrored_strategy(replicas))
    embed = lambda x: tf.reduce_mean(x, axis=[1, 2])  # noqa: E731
    if replicas > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    outputs, labels = evaluate.extract_embeddings(
        embed, dataset, strategy=strategy if replicas > 1 else None)
    np.testing.assert_array_equal(np.sort(labels), np.arange(10))
    np.testing.assert_allclose(outputs[:, 0], labels.astype(np.float32))


def test_linear_probe_separates_separable_embeddings():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(NUM_CLASSES, 16)) * 3
    train_labels = rng.integers(0, NUM_CLASSES, 500)
    test_labels = rng.integers(0, NUM_CLASSES, 200)
    train_emb = centers[train_labels] + rng.normal(size=(500, 16)) * 0.1
    test_emb = centers[test_labels] + rng.normal(size=(200, 16)) * 0.1
    result = evaluate.linear_probe(train_emb, train_labels, test_emb, test_labels,
                                   num_classes=NUM_CLASSES)
    assert result["top1"] == 1.0 and result["top5"] == 1.0
    shuffled = evaluate.linear_probe(train_emb, rng.permutation(train_labels), test_emb,
                                     test_labels, num_classes=NUM_CLASSES)
    assert shuffled["top1"] < 0.5  # labels that carry no signal give chance-level accuracy


def test_run_writes_config_and_results(tmp_path):
    config = tiny_config("ce")
    results = train.run(config, str(tmp_path), tf.distribute.get_strategy())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert {"method", "top1", "top5", "steps", "wall_s"} <= saved.keys()
    assert saved["method"] == "ce" and saved["steps"] == 1437 // config.train.global_batch_size
    assert 0.0 <= saved["top1"] <= saved["top5"] <= 1.0
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["num_classes"] == NUM_CLASSES and written["method"] == "ce"


def test_min_steps_lengthens_a_short_stage_and_its_schedule(tmp_path):
    config = tiny_config("ce")  # one epoch: 1437 // batch steps
    epoch_steps = 1437 // config.train.global_batch_size
    config.train.min_steps = epoch_steps + 3
    results = train.run(config, str(tmp_path), tf.distribute.get_strategy(), mode="train_then_eval")
    assert results["steps"] == epoch_steps + 3
    config.train.min_steps = epoch_steps - 1  # below the epochs' length: no effect
    assert train.stage_steps(config.train.epochs, 1437 / config.train.global_batch_size,
                             config.train.min_steps) == epoch_steps


@pytest.mark.parametrize("setting, expected", [
    pytest.param(True, True, marks=pytest.mark.host_xla),
    pytest.param("True", True, marks=pytest.mark.host_xla), ("false", False), (False, False)])
def test_jit_compile_setting_accepts_command_line_strings(setting, expected):
    assert strategy_lib.resolve_jit_compile(setting, tf.distribute.get_strategy()) is expected


def test_jit_compile_setting_rejects_unknown_values():
    with pytest.raises(ValueError, match="train.jit_compile"):
        strategy_lib.resolve_jit_compile("sometimes", tf.distribute.get_strategy())


# ---------------------------------------------------------------- cross-entropy forms


def numpy_cross_entropy(labels, logits, smoothing):
    """Eq.: mean over rows of -sum_c t_c log softmax(logits)_c, t = (1-s) onehot + s / C."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    targets = np.eye(logits.shape[1])[labels] * (1 - smoothing) + smoothing / logits.shape[1]
    return float(np.mean(-(targets * log_probs).sum(1)))


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.3])
def test_cross_entropy_with_label_smoothing_matches_numpy(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, 12)
    actual = float(train.cross_entropy(tf.constant(labels, tf.int32), tf.constant(logits),
                                       smoothing))
    np.testing.assert_allclose(actual, numpy_cross_entropy(labels, logits, smoothing), rtol=1e-5)


def test_select_views_keeps_view_one_of_each_sample():
    rows = tf.reshape(tf.range(12), [6, 2])  # 3 samples x 2 views, sample-major
    np.testing.assert_array_equal(train.select_views(rows, 2, "first").numpy(),
                                  [[0, 1], [4, 5], [8, 9]])
    assert train.select_views(rows, 2, "all").shape == (6, 2)


def test_ce_on_the_first_view_ignores_the_second_views_logits():
    """With BN in the batch, view 2 still moves the statistics, so compare the loss to
    cross-entropy computed by hand on view 1's logits of the same forward pass."""
    config = tiny_config("ce", global_batch_size=8)
    config.loss.cross_entropy_views = "first"
    config.loss.label_smoothing = 0.1
    model, _, loop = stage_one(config, tf.distribute.get_strategy())
    batch = next(synthetic_iterator(tf.distribute.get_strategy(), config))
    images = tf.reshape(batch["views"], [-1] + batch["views"].shape[2:].as_list())
    expected_logits = model.classifier(model.head_input(model.encoder(images, training=True)))
    expected = numpy_cross_entropy(batch["label"].numpy(), expected_logits.numpy()[0::2], 0.1)
    metrics = loop(iter([batch]), tf.constant(1))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)


# ---------------------------------------------------------------- stage two


def stage_two(config, strategy, model, num_train_examples=1024, jit_compile=False):
    head, optimizer, _, _ = train.build_stage_two(
        config, strategy, model, num_classes=NUM_CLASSES, num_train_examples=num_train_examples)
    step = train.make_stage_two_step(config, model, head, optimizer,
                                     strategy.num_replicas_in_sync)
    return head, optimizer, train.make_train_loop(strategy, step, jit_compile,
                                                  train.STAGE_TWO_METRICS)


def stage_two_iterator(config, strategy):
    view_config = tiny_config()
    view_config.train.global_batch_size = config.linear.global_batch_size
    return synthetic_iterator(strategy, view_config)


@pytest.mark.parametrize("bn_mode", ["batch_stats", "inference"])
def test_stage_two_trains_only_the_classifier_and_freezes_bn_averages(bn_mode):
    config = tiny_config("supcon")
    config.linear.bn_mode = bn_mode
    config.linear.global_batch_size = 16
    strategy = tf.distribute.get_strategy()
    model, _, _ = stage_one(config, strategy)
    encoder_before = [v.numpy().copy() for v in model.encoder.variables]
    head, optimizer, loop = stage_two(config, strategy, model)
    head_before = [v.numpy().copy() for v in head.variables]
    iterator = stage_two_iterator(config, strategy)
    first = float(loop(iterator, tf.constant(1))["loss"])
    loop(iterator, tf.constant(20))
    last = float(loop(iterator, tf.constant(1))["loss"])
    assert last < first
    assert int(optimizer.iterations.numpy()) == 22
    for before, variable in zip(encoder_before, model.encoder.variables):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.path)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(head.variables, head_before))


def test_frozen_embedding_uses_batch_statistics_without_updating_averages():
    config = tiny_config("supcon")
    model = train.build_stage_one(config, tf.distribute.get_strategy(), num_classes=NUM_CLASSES,
                                  num_train_examples=1024)[0]
    images = tf.random.stateless_uniform([16, 8, 8, 3], [1, 2])
    model.encoder(images, training=True)  # moving averages away from their initial values
    averages = [v.numpy().copy() for v in model.encoder.non_trainable_variables]
    frozen = train.frozen_embedding(model.encoder, images, "batch_stats")
    for before, variable in zip(averages, model.encoder.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), before)
    # The same forward pass in training mode (which would update them) gives the same output.
    np.testing.assert_allclose(frozen, model.encoder(images, training=True), rtol=1e-5, atol=1e-6)
    inference = train.frozen_embedding(model.encoder, images, "inference")
    assert not np.allclose(inference, frozen)


def test_stage_two_loss_reads_view_one_only():
    """In inference mode the views do not interact, so changing view 2 cannot move the loss."""
    config = tiny_config("supcon")
    config.linear.bn_mode = "inference"
    config.linear.global_batch_size = 8
    strategy = tf.distribute.get_strategy()
    model, _, _ = stage_one(config, strategy)
    batch = next(stage_two_iterator(config, strategy))
    changed = dict(batch, views=tf.concat([batch["views"][:, :1], 1 - batch["views"][:, 1:]], 1))
    losses = []
    for each in (batch, changed):  # build_stage_two seeds the head: both start equal
        _, _, loop = stage_two(config, strategy, model)
        losses.append(float(loop(iter([each]), tf.constant(1))["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_stage_two_data_config_overrides_only_the_listed_fields():
    config = load_config("cifar10_r50.py")
    stage_two_data = train.stage_two_data_config(config)
    assert stage_two_data.augment == "crop_flip" and stage_two_data.num_views == 1
    assert stage_two_data.crop_area_min == config.data.crop_area_min == 0.2
    assert config.data.augment == "simaugment" and config.data.num_views == 2


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["augmented", "cached"])
def test_run_trains_stage_two_and_re_evaluates_without_training(tmp_path, protocol):
    config = tiny_config("supcon")
    config.linear.protocol = protocol
    results = train.run(config, str(tmp_path), tf.distribute.get_strategy())
    assert results["linear_protocol"] == protocol
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    head_checkpoint = tf.train.latest_checkpoint(str(tmp_path / "linear"))
    assert head_checkpoint is not None
    names = tf.train.load_checkpoint(head_checkpoint).get_variable_to_shape_map()
    assert any(name.startswith("head/") for name in names)
    if protocol == "augmented":
        assert any(name.startswith("optimizer/") for name in names)  # resumable
        per_epoch = 1437 / config.linear.global_batch_size
        assert head_checkpoint.endswith(f"ckpt-{int(config.linear.epochs * per_epoch)}")
        again = train.run(tiny_config("supcon"), str(tmp_path), tf.distribute.get_strategy())
        assert again["top1"] == results["top1"]  # the finished head, scored again


def official_stage_two(config):
    """The TF rows' stage two: RMSProp, exponential decay, batch statistics, smoothing."""
    config.model.sync_bn = True
    config.linear.global_batch_size = 16
    config.linear.bn_mode = "batch_stats"
    config.linear.label_smoothing = 0.05
    config.linear.optim.update(name="rmsprop", epsilon=0.001, weight_decay=1e-6,
                               schedule="exponential", decay_every_epochs=0.5, decay_rate=0.97)
    return config


def test_four_replicas_take_the_one_device_stage_two_step(four_replicas):
    """With synchronized BN, 4 replicas of stage two match one device holding the global batch."""
    config = official_stage_two(tiny_config("supcon"))
    results = []
    for strategy in (tf.distribute.get_strategy(), four_replicas):
        model = train.build_stage_one(config, strategy, num_classes=NUM_CLASSES,
                                      num_train_examples=1024)[0]
        head, _, loop = stage_two(config, strategy, model)
        iterator = stage_two_iterator(config, strategy)
        loss = float(loop(iterator, tf.constant(3))["loss"])
        results.append((loss, [v.numpy() for v in head.variables]))
    (loss_one, head_one), (loss_four, head_four) = results
    assert loss_four == pytest.approx(loss_one, rel=1e-5)
    for one, four in zip(head_one, head_four):
        np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-6)


@pytest.mark.host_xla
def test_stage_two_step_compiles_with_xla():
    """TPU-readiness of stage two: frozen encoder on batch statistics, head, RMSProp update."""
    config = official_stage_two(tiny_config("supcon"))
    strategy = tf.distribute.get_strategy()
    model = train.build_stage_one(config, strategy, num_classes=NUM_CLASSES,
                                  num_train_examples=1024)[0]
    _, optimizer, loop = stage_two(config, strategy, model, jit_compile=True)
    metrics = loop(stage_two_iterator(config, strategy), tf.constant(2))
    assert float(metrics["finite"]) == 1.0 and int(optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_falls_back_and_is_kept(tmp_path):
    config = tiny_config("supcon")
    config.train.keep_checkpoints = 3
    strategy = tf.distribute.get_strategy()
    sizes = dict(num_classes=NUM_CLASSES, num_train_examples=1437)
    workdir = str(tmp_path)
    _, steps = train.train(config, workdir, strategy, **sizes)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    data_file = f"{latest}.data-00000-of-00001"
    with open(data_file, "rb") as f:
        truncated = f.read()[:100]
    with open(data_file, "wb") as f:  # what a disk that filled up mid-save leaves
        f.write(truncated)

    _, resumed_steps = train.train(config, workdir, strategy, **sizes)
    assert resumed_steps == steps  # fell back to the one before, then trained to the end
    assert tf.train.latest_checkpoint(checkpoint_dir) == latest  # saved again, readable
    tf.train.load_checkpoint(latest).get_variable_to_shape_map()
    kept = os.path.join(checkpoint_dir, checkpoints.UNREADABLE_PREFIX + os.path.basename(data_file))
    with open(kept, "rb") as f:
        assert f.read() == truncated  # nothing that was saved is lost
