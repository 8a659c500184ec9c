"""--mode=selfcheck (supcon_tf/selfcheck.py): every check passes where the strategy computes
the run, and fails where it does not.

In-process on MirroredStrategy over 8 logical CPUs; through main.py on two
MultiWorkerMirroredStrategy workers on 127.0.0.1, once as they are and once with the
loss's cross-replica gather broken (tests/selfcheck_wrong_gather.py), which must fail.
The checks' own comparisons are tested on small inputs, each with a case that fails.
"""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, free_loopback_ports, load_config, mirrored_strategy

from supcon_tf import selfcheck, train

NUM_WORKERS = 2
WORKER_TIMEOUT_S = 600
REPORT_FIELDS = {"passed", "checks", "images_per_sec_per_replica", "strategy", "num_replicas",
                 "device", "method", "global_batch_size", "per_replica_batch", "num_views",
                 "image_size", "sync_bn", "jit_compile", "tensorflow", "seconds"}
STAGE_ONE_CHECKS = ("static shapes", "stage one step input", "stage one loss",
                    "stage one gradients", "batch-norm statistics", "weights",
                    "checkpoint round trip")
STAGE_TWO_CHECKS = ("stage two step input", "stage two loss", "stage two gradients")


def tiny_config(**fields):
    """configs/digits.py:tiny with fields ("a__b" for a.b) overridden."""
    config = load_config("digits.py", "tiny")
    for dotted, value in fields.items():
        *parents, leaf = dotted.split("__")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def results(report):
    return {check["name"]: check["result"] for check in report["checks"]}


def default_setting(config):
    return selfcheck._Setting(config=config, strategy=tf.distribute.get_strategy(),
                              num_classes=10, num_train_examples=1437, jit_compile=False,
                              precision="float32", slices=1)


# ---------------------------------------------------------------- the comparisons


def test_gradients_agree_to_rounding_and_a_wrong_variable_is_named():
    variables = [types.SimpleNamespace(shape=(3, 4), path="conv/kernel"),
                 types.SimpleNamespace(shape=(4,), path="bn/gamma"),
                 types.SimpleNamespace(shape=(2,), path="zero_init/gamma")]
    rng = np.random.default_rng(0)
    want = np.concatenate([rng.normal(size=12), rng.normal(size=4), np.zeros(2)])
    rounded = want * (1 + 1e-6 * rng.normal(size=want.size))
    rounded[-2:] = 1e-9  # a gradient that should be zero, off by rounding
    check = selfcheck.compare_gradients("g", rounded, want, variables, rtol=1e-3)
    assert check.passed, check.detail

    wrong = want.copy()
    wrong[12:16] *= 1.01  # bn/gamma's gradient 1% off
    check = selfcheck.compare_gradients("g", wrong, want, variables, rtol=1e-3)
    assert not check.passed and check.values["worst_variable"] == "bn/gamma"
    assert check.values["max_relative_error"] == pytest.approx(0.01, rel=1e-6)
    wrong[0] = np.nan
    check = selfcheck.compare_gradients("g", wrong, want, variables, rtol=1e-3)
    assert not check.passed and check.values["worst_variable"] == "conv/kernel"


def test_loss_agrees_to_rounding_and_fails_beyond_the_tolerance():
    want = {"loss": 5.0, "classifier_loss": 2.3}
    assert selfcheck.compare_loss("l", {"loss": 5.0 + 1e-6, "classifier_loss": 2.3}, want,
                                  1e-4).passed
    check = selfcheck.compare_loss("l", {"loss": 5.0, "classifier_loss": 2.31}, want, 1e-4)
    assert not check.passed and "(classifier_loss)" in check.detail
    assert not selfcheck.compare_loss("l", {"loss": np.nan, "classifier_loss": 2.3}, want,
                                      1e-4).passed


def test_replicas_agree_only_when_every_replica_holds_the_same_values():
    strategy = mirrored_strategy(2)
    with strategy.scope():
        variable = tf.Variable(tf.zeros([3]), aggregation=tf.VariableAggregation.NONE)

    @tf.function
    def write_replica_id():
        def write():
            context = tf.distribute.get_replica_context()
            variable.assign(tf.fill([3], tf.cast(context.replica_id_in_sync_group, tf.float32)))
        strategy.run(write)

    groups = {"v": ([variable], "variables")}
    check, = selfcheck.check_replicas_agree(strategy, groups)
    assert check.passed and "identical" in check.detail
    write_replica_id()  # each replica writes its own copy only (aggregation NONE)
    assert [float(np.asarray(v)[0]) for v in strategy.experimental_local_results(variable)] == [
        0.0, 1.0]
    check, = selfcheck.check_replicas_agree(strategy, groups)
    assert not check.passed and check.values["max_difference"] == 1.0


def test_static_shape_checks_fail_on_a_batch_without_a_fixed_size():
    strategy = tf.distribute.get_strategy()

    def batch_fn(step):
        return selfcheck.synthetic_batch(step, global_batch_size=4, num_views=2, image_size=8,
                                         num_classes=10, seed=0, salt=1)

    check = selfcheck._check_element_spec(selfcheck.distributed_batches(strategy, batch_fn, 4))
    assert check.passed, check.detail
    unbatched = tf.data.Dataset.range(3).map(batch_fn).unbatch().batch(4)  # no drop_remainder
    check = selfcheck._check_element_spec(strategy.experimental_distribute_dataset(unbatched))
    assert not check.passed and "not fully defined" in check.detail

    setting = default_setting(tiny_config())
    fixed = [("label", tf.TensorShape([128])), ("views", tf.TensorShape([128, 2, 8, 8, 3]))]
    assert selfcheck._check_traced_shapes("stage one", fixed, 128, setting).passed
    for shapes_seen in ([("label", tf.TensorShape([None]))], [("label", tf.TensorShape([64]))],
                        []):
        assert not selfcheck._check_traced_shapes("stage one", shapes_seen, 128,
                                                  setting).passed


def test_synthetic_batches_are_a_function_of_the_step_in_the_configs_shapes():
    def batch(step, salt=1):
        return selfcheck.synthetic_batch(step, global_batch_size=6, num_views=2, image_size=8,
                                         num_classes=10, seed=3, salt=salt)

    first = batch(0)
    assert first["views"].shape == (6, 2, 8, 8, 3) and first["label"].dtype == tf.int32
    views = first["views"].numpy()
    assert 0.0 <= views.min() and views.max() <= 1.0
    np.testing.assert_array_equal(views, batch(0)["views"].numpy())
    assert not np.array_equal(views, batch(1)["views"].numpy())
    assert not np.array_equal(views, batch(0, salt=2)["views"].numpy())


def test_reference_batch_norm_runs_each_replicas_rows_alone():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                              keras.layers.BatchNormalization()])
    images = tf.random.stateless_normal([8, 4], seed=[1, 2]) + tf.range(8.0)[:, None]
    sliced = selfcheck._ReplicaSlices(model, 2)
    per_slice = tf.concat([model(images[:4], training=True), model(images[4:], training=True)], 0)
    np.testing.assert_allclose(sliced(images, training=True), per_slice, rtol=1e-6)
    assert np.abs(model(images, training=True) - per_slice).max() > 0.1  # the whole batch differs
    stateless, _ = sliced.stateless_call([v.value for v in model.trainable_variables],
                                         [v.value for v in model.non_trainable_variables],
                                         images, training=True)
    np.testing.assert_allclose(stateless, per_slice, rtol=1e-6)
    assert sliced.trainable_variables == model.trainable_variables


def test_queue_comparison_fails_when_the_queues_differ():
    def queue(features, labels, pointer=4, count=4):
        return types.SimpleNamespace(features=tf.Variable(features), labels=tf.Variable(labels),
                                     pointer=tf.Variable(pointer), count=tf.Variable(count),
                                     queue_size=8)

    features = np.eye(8, 3, dtype=np.float32)
    labels = np.array([1, 2, 3, 4, -1, -1, -1, -1], np.int32)
    assert selfcheck._compare_queues(queue(features, labels), queue(features, labels)).passed
    swapped = labels[[1, 0, 2, 3, 4, 5, 6, 7]]
    assert not selfcheck._compare_queues(queue(features, swapped), queue(features, labels)).passed
    assert not selfcheck._compare_queues(queue(features + 0.01, labels),
                                         queue(features, labels)).passed
    assert not selfcheck._compare_queues(queue(features, labels, pointer=0),
                                         queue(features, labels)).passed


def test_the_host_reference_is_bounded_and_the_error_says_how_to_shrink_it():
    config = load_config("imagenet_r50.py")
    with pytest.raises(selfcheck.SelfCheckError) as raised:
        selfcheck.check_budget(config, num_replicas=8)
    message = str(raised.value)
    assert "config.train.global_batch_size=6144 x 2 view(s) at 224x224" in message
    suggested = int(message.split("--config.train.global_batch_size=")[1].split()[0])
    assert suggested % 8 == 0 and 8 <= suggested < 6144
    config.train.global_batch_size = config.linear.global_batch_size = suggested
    selfcheck.check_budget(config, num_replicas=8)
    # One image per replica is always allowed, however large.
    config.train.global_batch_size = config.linear.global_batch_size = 128
    selfcheck.check_budget(config, num_replicas=128)
    selfcheck.check_budget(load_config("digits.py"), num_replicas=1)


def test_checkpoint_round_trip_fails_when_the_restore_restores_nothing(tmp_path, monkeypatch):
    config = tiny_config()
    setting = default_setting(config)
    model, _, checkpoint, _ = train.build_stage_one(config, setting.strategy, **setting.sizes)
    model.set_weights([w + 1.0 for w in model.get_weights()])  # unlike a fresh build
    check = selfcheck._checkpoint_round_trip(setting, model, checkpoint, str(tmp_path))
    assert check.passed, check.detail
    assert check.values["mismatched"] == 0 and check.values["variables"] > 100
    assert os.listdir(tmp_path) == []  # the temporary checkpoints are removed

    class Restored:
        def assert_existing_objects_matched(self):
            return self

    monkeypatch.setattr(tf.train.Checkpoint, "read", lambda self, path: Restored())
    check = selfcheck._checkpoint_round_trip(setting, model, checkpoint, str(tmp_path))
    assert not check.passed and check.values["mismatched"] > 0, check.detail
    assert check.values["replicas_not_restored"] == 1


# ---------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_every_check_passes_on_8_mirrored_replicas(tmp_path, capsys):
    strategy = mirrored_strategy(8)
    config = tiny_config()  # no sync_bn: each replica normalizes its own 16 samples
    report = selfcheck.run(config, str(tmp_path), strategy)
    assert results(report) == {
        **{name: "pass" for name in STAGE_ONE_CHECKS + STAGE_TWO_CHECKS},
        "stage one throughput": "info", "stage two throughput": "info"}, report
    assert report["passed"] and report["num_replicas"] == 8
    assert report["strategy"] == "MirroredStrategy" and report["per_replica_batch"] == 16
    assert report["images_per_sec_per_replica"]["stage_one"] > 0
    assert not os.listdir(tmp_path)

    selfcheck.print_report(report)
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1]) == json.loads(json.dumps(report))
    assert REPORT_FIELDS <= set(report)
    for name in STAGE_ONE_CHECKS + STAGE_TWO_CHECKS:
        assert any(line.startswith(name) and "PASS" in line for line in printed), name


@pytest.mark.slow
def test_a_reference_on_the_whole_batch_fails_without_sync_bn(tmp_path, monkeypatch):
    """Without sync_bn the reference must normalize each replica's slice: the whole batch at
    once is another computation, and the gradient check sees it."""
    monkeypatch.setattr(selfcheck._Setting, "reference_view", lambda self, model: model)
    config = tiny_config(method="ce")
    report = selfcheck.run(config, str(tmp_path), mirrored_strategy(2))
    outcome = results(report)
    assert outcome["stage one gradients"] == "fail" and outcome["stage one loss"] == "fail"
    assert outcome["checkpoint round trip"] == "pass" and not report["passed"]


def run_two_workers(tmp_path, program, *flags):
    """`python program --mode=selfcheck` as the 2 workers of a cluster on 127.0.0.1; returns
    [(exit status, stdout, stderr)] in task order. A worker that outlives
    WORKER_TIMEOUT_S is killed (its peer may wait for it forever)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_loopback_ports(NUM_WORKERS)]}
    processes = []
    for index in range(NUM_WORKERS):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, program, "--config=configs/digits.py:tiny",
                   "--mode=selfcheck", f"--workdir={tmp_path / f'worker{index}'}", *flags]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outcomes = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=WORKER_TIMEOUT_S)
            outcomes.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outcomes


@pytest.mark.slow
def test_two_workers_pass_through_main(tmp_path):
    outcomes = run_two_workers(tmp_path, "main.py", "--config.model.sync_bn=True",
                               "--config.loss.queue_size=512")
    for status, stdout, stderr in outcomes:
        assert status == 0, (stdout + stderr)[-3000:]
        report = json.loads(stdout.splitlines()[-1])
        assert REPORT_FIELDS <= set(report) and report["passed"]
        assert report["strategy"] == "MultiWorkerMirroredStrategy"
        assert report["num_replicas"] == NUM_WORKERS and report["sync_bn"]
        assert set(results(report).values()) == {"pass", "info"}
        assert {"momentum queue", *STAGE_ONE_CHECKS, *STAGE_TWO_CHECKS} <= set(results(report))
        assert "selfcheck: every check passed" in stdout


@pytest.mark.slow
def test_two_workers_with_a_wrong_gather_fail(tmp_path):
    outcomes = run_two_workers(tmp_path, os.path.join("tests", "selfcheck_wrong_gather.py"),
                               "--config.linear.protocol=cached")  # stage two: no gather
    for status, stdout, stderr in outcomes:
        assert status == 1, (stdout + stderr)[-3000:]
        report = json.loads(stdout.splitlines()[-1])
        outcome = results(report)
        assert not report["passed"]
        assert outcome["stage one loss"] == "fail" and outcome["stage one gradients"] == "fail"
        assert outcome["static shapes"] == outcome["checkpoint round trip"] == "pass"
        assert "FAILED" in stdout
