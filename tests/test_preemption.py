"""Preemption: a run killed at any moment and restarted with the same command ends
exactly where an uninterrupted run with the same seed ends.

One tiny digits run goes through three lives, each started with the same command:
  1. kill -9 right after its first checkpoint (no chance to clean up);
     partial files of an interrupted save are then left beside the checkpoints;
  2. SIGTERM as soon as training is under way: it must save and exit with 143;
  3. runs to the end.
Its final weights, optimizer state and last logged metrics must equal those of
an uninterrupted run of the same command (deterministic ops on the CPU).
"""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
# The tiny config with the loop pinned, so that its tuning cannot change what is
# tested: 1437 digits // 32 = 44 steps per epoch, loops of 2, a checkpoint every 4.
GLOBAL_BATCH = 32
TOTAL_STEPS = 1437 // GLOBAL_BATCH
CHECKPOINT_EVERY = 4
FLAGS = ["--config=configs/digits.py:tiny", "--mode=train", "--config.train.epochs=1",
         f"--config.train.global_batch_size={GLOBAL_BATCH}", "--config.train.steps_per_loop=2",
         f"--config.train.checkpoint_every_steps={CHECKPOINT_EVERY}"]


class Run:
    """main.py in a subprocess with its log in a file, so the test can watch it."""

    def __init__(self, workdir, log_path):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_DETERMINISTIC_OPS="1")
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", f"--workdir={workdir}", *FLAGS],
            cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_until(self, condition, what):
        deadline = time.time() + TIMEOUT_S
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"main.py exited ({self.process.returncode}) before {what}:\n"
                            + self.log()[-3000:])
            if time.time() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n" + self.log()[-3000:])
            time.sleep(0.02)

    def finish(self):
        try:
            self.process.wait(timeout=TIMEOUT_S)
        finally:
            self.kill()
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


def latest_step(workdir):
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def checkpoint_values(path):
    """Every saved tensor (model, optimizer slots, step) by its checkpoint key; not the
    object graph or save_counter, which count saves rather than describe training."""
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if not key.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}


def logged_metrics(workdir, step):
    """TensorBoard scalars written at `step`, over all event files of the workdir."""
    metrics = {}
    for path in glob.glob(os.path.join(workdir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if event.step == step:
                for value in event.summary.value:
                    metrics[value.tag] = float(tf.make_ndarray(value.tensor))
    return metrics


def leave_partial_save(checkpoint_dir, number):
    """What a kill in the middle of saving ckpt-`number` can leave on disk: a temporary
    shard directory and a truncated data file with no index, never recorded in the
    `checkpoint` state file."""
    temp_dir = os.path.join(checkpoint_dir, f"ckpt-{number}_temp")
    os.makedirs(temp_dir)
    with open(os.path.join(temp_dir, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\x00partial")
    with open(os.path.join(checkpoint_dir, f"ckpt-{number}.data-00000-of-00001"), "wb") as f:
        f.write(b"\x00trunc")


@pytest.mark.slow
def test_killed_and_preempted_run_ends_like_uninterrupted_run(tmp_path):
    reference_dir, resumed_dir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    checkpoint_dir = os.path.join(resumed_dir, "checkpoints")
    reference = Run(reference_dir, str(tmp_path / "reference.log"))
    try:
        # Life 1: kill -9 as soon as the first checkpoint is recorded.
        first = Run(resumed_dir, str(tmp_path / "life1.log"))
        first.wait_until(lambda: latest_step(resumed_dir) is not None, "the first checkpoint")
        first.process.send_signal(signal.SIGKILL)
        assert first.finish() == -signal.SIGKILL, "the run ended before the kill"
        killed_at = latest_step(resumed_dir)
        assert killed_at < TOTAL_STEPS
        # The recorded checkpoint is whole: every tensor reads back.
        checkpoint_values(os.path.join(checkpoint_dir, f"ckpt-{killed_at}"))
        leave_partial_save(checkpoint_dir, killed_at + CHECKPOINT_EVERY)

        # Life 2: SIGTERM once training is under way; a checkpoint must be saved first.
        second = Run(resumed_dir, str(tmp_path / "life2.log"))
        second.wait_until(lambda: f"ckpt-{killed_at}" in second.log()
                          and "stage one: steps" in second.log(), "resuming and training")
        second.process.send_signal(signal.SIGTERM)
        assert second.finish() == 143, second.log()[-3000:]
        preempted_at = latest_step(resumed_dir)
        assert killed_at < preempted_at < TOTAL_STEPS
        assert f"saved step {preempted_at}" in second.log()

        # Life 3: the same command again, to the end.
        third = Run(resumed_dir, str(tmp_path / "life3.log"))
        assert third.finish() == 0, third.log()[-3000:]
        assert f"ckpt-{preempted_at}" in third.log()  # it resumed rather than restarted
        assert reference.finish() == 0, reference.log()[-3000:]
    finally:
        reference.kill()

    assert latest_step(reference_dir) == latest_step(resumed_dir) == TOTAL_STEPS
    expected = checkpoint_values(os.path.join(reference_dir, "checkpoints", f"ckpt-{TOTAL_STEPS}"))
    actual = checkpoint_values(os.path.join(checkpoint_dir, f"ckpt-{TOTAL_STEPS}"))
    assert sorted(actual) == sorted(expected)
    assert any(key.startswith("model/") for key in expected)
    differing = [key for key, value in expected.items()
                 if not np.array_equal(actual[key], value)]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ: {differing[:10]}"

    expected_metrics = logged_metrics(reference_dir, TOTAL_STEPS)
    assert {"loss", "top1"} <= set(expected_metrics)
    actual_metrics = logged_metrics(resumed_dir, TOTAL_STEPS)
    for tag in ("loss", "classifier_loss", "top1", "lr"):
        assert actual_metrics[tag] == expected_metrics[tag], tag
