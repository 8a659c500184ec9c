"""Multi-worker: 2 processes on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy, CPU)
train the tiny config for a few steps and end with the weights of one process that
holds the same global batch.

The worker program is tests/multiworker_worker.py. Ports come from binding port 0
on the loopback interface; every process has a bounded timeout and is killed if
it outlives it (a worker waits forever for a peer that died).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiworker_worker.py")
NUM_WORKERS = 2
NUM_STEPS = 3
TIMEOUT_S = 300


def free_loopback_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(output_path, tf_config=None):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, WORKER, output_path, str(NUM_STEPS)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_all(processes):
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_workers_match_one_process_with_the_same_global_batch(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_loopback_ports(NUM_WORKERS)]}
    worker_outputs = [str(tmp_path / f"worker{i}.npz") for i in range(NUM_WORKERS)]
    single_output = str(tmp_path / "single.npz")
    processes = [start(path, {"cluster": cluster, "task": {"type": "worker", "index": i}})
                 for i, path in enumerate(worker_outputs)]
    processes.append(start(single_output))
    finish_all(processes)

    single = np.load(single_output)
    assert int(single["num_replicas"]) == 1 and int(single["step"]) == NUM_STEPS
    assert float(single["finite"]) == 1.0
    num_weights = len([key for key in single.files if key.startswith("final_")])
    for path in worker_outputs:
        worker = np.load(path)
        assert int(worker["num_replicas"]) == NUM_WORKERS
        assert int(worker["step"]) == NUM_STEPS
        np.testing.assert_allclose(worker["loss"], single["loss"], rtol=1e-4)
        moved = 0
        for i in range(num_weights):
            np.testing.assert_array_equal(worker[f"initial_{i}"], single[f"initial_{i}"])
            initial = single[f"initial_{i}"]
            change = single[f"final_{i}"] - initial
            moved += np.abs(change).max() > 1e-5
            # Compare the changes, so that a small update cannot hide in large weights;
            # the tolerance covers all-reduce summing in another order, and float32
            # rounding at the variable's own scale when it barely moves.
            np.testing.assert_allclose(
                worker[f"final_{i}"] - initial, change, rtol=1e-3,
                atol=1e-3 * np.abs(change).max() + 1e-6 * np.abs(initial).max(),
                err_msg=f"weight {i}")
        assert moved > num_weights // 2  # most variables (weights, BN statistics) changed
