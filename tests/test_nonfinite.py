"""Non-finite guard: a diverging run stops with the step range and keeps its last good checkpoint.

A learning rate of 1e30 makes the weights explode within a few steps, the way a
real divergence does. The run must stop (not hang, not train on NaNs) with an
error naming the steps where the loss or gradient went non-finite; every
checkpoint it leaves must predate those steps and hold only finite numbers, so
the last good one can be restored.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
STEPS_PER_LOOP = 2


@pytest.mark.slow
def test_divergence_stops_with_step_range_and_keeps_finite_checkpoint(tmp_path):
    workdir = str(tmp_path / "workdir")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, "main.py", "--config=configs/digits.py:tiny", f"--workdir={workdir}",
         "--mode=train", "--config.optim.base_lr=1e30", "--config.train.global_batch_size=32",
         # A checkpoint after every loop, so one would land on the NaNs without the guard.
         f"--config.train.steps_per_loop={STEPS_PER_LOOP}",
         f"--config.train.checkpoint_every_steps={STEPS_PER_LOOP}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]

    found = re.search(r"non-finite .*steps (\d+)\.\.(\d+)", output)
    assert found, output[-3000:]
    first_bad, last_bad = int(found.group(1)), int(found.group(2))
    # The range is one loop of steps, starting after a finished loop.
    assert last_bad - first_bad + 1 == STEPS_PER_LOOP
    assert (first_bad - 1) % STEPS_PER_LOOP == 0

    checkpoint_dir = os.path.join(workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    assert latest is not None, "the guard fired before any checkpoint; the test needs one"
    saved_steps = sorted(int(name.split("-")[1].split(".")[0])
                         for name in os.listdir(checkpoint_dir) if name.endswith(".index"))
    assert saved_steps and max(saved_steps) < first_bad
    assert latest.endswith(f"ckpt-{max(saved_steps)}")
    assert latest in output  # the error points at the checkpoint to go back to

    reader = tf.train.load_checkpoint(latest)
    floats = [key for key, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
    assert any(key.startswith("model/") for key in floats)
    not_finite = [key for key in floats if not np.all(np.isfinite(reader.get_tensor(key)))]
    assert not not_finite, not_finite[:10]
