"""supcon_tf/strategy.py: TF_CONFIG checked before TensorFlow reads it, a grpc:// TPU address
probed within a bound, and where XLA may compile the step when the host has no XLA.

Every socket here is on 127.0.0.1.
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading

import grpc
import pytest
import tensorflow as tf
from conftest import REPO, free_loopback_ports

from supcon_tf import host_xla
from supcon_tf import strategy as strategy_lib
TWO_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


def tf_config(cluster=TWO_WORKERS, **task):
    return json.dumps({"cluster": cluster, "task": task or {"type": "worker", "index": 0}})


# ---------------------------------------------------------------- TF_CONFIG


@pytest.mark.parametrize("text", [
    tf_config(),
    tf_config(type="worker", index=1),
    tf_config(type="worker", index="1"),  # TensorFlow reads the index with int()
    tf_config({"chief": ["127.0.0.1:2000"], **TWO_WORKERS}, type="chief", index=0),
    tf_config({"worker": ["[::1]:2001"]}),
    json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 0},
                "environment": "cloud", "rpc_layer": "grpc"}),
])
def test_a_valid_tf_config_is_accepted(text):
    parsed = strategy_lib.parse_tf_config(text)
    assert parsed == json.loads(text)
    task_type, index, address = strategy_lib.tf_config_task(parsed)
    assert parsed["cluster"][task_type][index] == address


BAD_TF_CONFIGS = {
    "not_json": ("{worker", "TF_CONFIG is not JSON"),
    "not_an_object": ("[1, 2]", "TF_CONFIG must be a JSON object"),
    "no_cluster": (json.dumps({"task": {"type": "worker", "index": 0}}),
                   'TF_CONFIG has no "cluster"'),
    "empty_cluster": (tf_config({}), 'TF_CONFIG "cluster" is {}'),
    "ps_job": (tf_config({"ps": ["127.0.0.1:2000"], **TWO_WORKERS}),
               "TF_CONFIG cluster has a 'ps' job"),
    "addresses_not_a_list": (tf_config({"worker": "127.0.0.1:2001"}),
                             "TF_CONFIG cluster 'worker' is \"127.0.0.1:2001\""),
    "no_port": (tf_config({"worker": ["127.0.0.1"]}), "TF_CONFIG cluster 'worker' address 0"),
    "port_out_of_range": (tf_config({"worker": ["127.0.0.1:70000"]}),
                          "TF_CONFIG cluster 'worker' address 0 is '127.0.0.1:70000'"),
    "same_address_twice": (tf_config({"worker": ["127.0.0.1:2001", "127.0.0.1:2001"]}),
                           "TF_CONFIG cluster lists 127.0.0.1:2001 twice"),
    "two_chiefs": (tf_config({"chief": ["127.0.0.1:1", "127.0.0.1:2"], **TWO_WORKERS}),
                   'TF_CONFIG cluster has 2 "chief" addresses'),
    "no_task": (json.dumps({"cluster": TWO_WORKERS}), 'TF_CONFIG has no "task"'),
    "task_not_an_object": (json.dumps({"cluster": TWO_WORKERS, "task": "worker"}),
                           'TF_CONFIG "task" is "worker"'),
    "no_type": (tf_config(index=0), 'TF_CONFIG task has no "type"'),
    "type_not_in_cluster": (tf_config(type="chief", index=0),
                            "TF_CONFIG task type 'chief' is not a job of the cluster (worker)"),
    "no_index": (tf_config(type="worker"), 'TF_CONFIG task has no "index"'),
    "index_out_of_range": (tf_config(type="worker", index=2),
                           "TF_CONFIG task index 2 is out of range: cluster 'worker' has 2"),
    "negative_index": (tf_config(type="worker", index=-1), "TF_CONFIG task index -1 is out of"),
    "fractional_index": (tf_config(type="worker", index=0.5),
                         "TF_CONFIG task index 0.5 is not a whole number"),
    "boolean_index": (tf_config(type="worker", index=True),
                      "TF_CONFIG task index True is not a whole number"),
}


@pytest.mark.parametrize("name", BAD_TF_CONFIGS)
def test_a_bad_tf_config_is_one_line_naming_it(name):
    text, expected = BAD_TF_CONFIGS[name]
    with pytest.raises(strategy_lib.StrategyError) as raised:
        strategy_lib.parse_tf_config(text)
    message = str(raised.value)
    assert "\n" not in message and expected in message, message


def test_check_environment_reads_tf_config_only_without_tpu(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{worker")
    with pytest.raises(strategy_lib.StrategyError, match="TF_CONFIG is not JSON"):
        strategy_lib.check_environment(None)
    assert strategy_lib.check_environment("local") is None  # TPUStrategy ignores TF_CONFIG
    monkeypatch.setenv("TF_CONFIG", "")
    assert strategy_lib.check_environment(None) is None  # empty: unset
    monkeypatch.setenv("TF_CONFIG", tf_config())
    assert strategy_lib.check_environment(None)["task"] == {"type": "worker", "index": 0}


# ---------------------------------------------------------------- --tpu=grpc://


def test_probe_refuses_a_closed_port():
    port = free_loopback_ports(1)[0]
    with pytest.raises(strategy_lib.StrategyError) as raised:
        strategy_lib.probe_grpc_address(f"127.0.0.1:{port}", timeout_s=5.0)
    message = str(raised.value)
    assert message.startswith(f"--tpu=grpc://127.0.0.1:{port} cannot be used")
    assert "cannot connect" in message and "within 5 s" in message


def test_probe_gives_up_on_a_silent_listener_at_its_bound():
    # The kernel completes the connection (backlog), but nothing ever answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(strategy_lib.StrategyError, match=r"no answer from 127\.0\.0\.1:\d+ "
                                                             r"within 0\.5 s"):
            strategy_lib.probe_grpc_address(f"127.0.0.1:{port}", timeout_s=0.5)


def test_probe_refuses_a_server_that_is_not_grpc():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer_in_http1():
            connection, _ = listener.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        server = threading.Thread(target=answer_in_http1, daemon=True)
        server.start()
        with pytest.raises(strategy_lib.StrategyError, match="not as a gRPC server"):
            strategy_lib.probe_grpc_address(f"127.0.0.1:{port}", timeout_s=5.0)
        server.join(5.0)


def test_probe_accepts_a_grpc_server():
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        strategy_lib.probe_grpc_address(f"127.0.0.1:{port}", timeout_s=5.0)
        strategy_lib.check_environment(f"grpc://127.0.0.1:{port}", probe_timeout_s=5.0)
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("tpu, expected", [
    ("grpc://127.0.0.1", "the address must be host:port"),
    ("grpc://127.0.0.1:8470,10.0.0.3:8470", "list every address as grpc://HOST:PORT"),
])
def test_a_malformed_tpu_address_is_refused(tpu, expected):
    with pytest.raises(strategy_lib.StrategyError, match=expected):
        strategy_lib.check_environment(tpu, probe_timeout_s=1.0)


def test_main_stops_on_an_unreachable_tpu_within_the_stated_bound(tmp_path):
    """main.py probes before TensorFlow loads; the bound is the probe's timeout plus Python's
    start-up (the subprocess timeout below, far from TensorFlow's own connection timeout)."""
    port = free_loopback_ports(1)[0]
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "main.py", "--config=configs/digits.py:tiny", f"--workdir={tmp_path}",
         f"--tpu=grpc://127.0.0.1:{port}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=strategy_lib.TPU_PROBE_TIMEOUT_S + 60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        line for line in done.stderr.splitlines() if line.startswith("error: ")], done.stderr
    assert f"--tpu=grpc://127.0.0.1:{port} cannot be used" in done.stderr
    assert f"within {strategy_lib.TPU_PROBE_TIMEOUT_S:g} s" in done.stderr
    assert not os.listdir(tmp_path)  # stopped before anything was written


# ---------------------------------------------------------------- jit_compile without host XLA


@pytest.mark.parametrize("cpu_default", [False, True])
def test_auto_leaves_xla_off_on_a_host_without_xla(monkeypatch, cpu_default):
    assert not tf.config.list_logical_devices("GPU")  # these tests are about the CPU host
    monkeypatch.setattr(host_xla, "available", lambda: False)
    monkeypatch.setattr(strategy_lib, "CPU_JIT_DEFAULT", cpu_default)
    default = tf.distribute.get_strategy()
    assert strategy_lib.resolve_jit_compile("auto", default) is False
    assert strategy_lib.resolve_jit_compile(False, default) is False


def test_auto_follows_the_cpu_default_where_the_host_has_xla(monkeypatch):
    monkeypatch.setattr(host_xla, "available", lambda: True)
    monkeypatch.setattr(strategy_lib, "CPU_JIT_DEFAULT", True)
    assert strategy_lib.resolve_jit_compile("auto", tf.distribute.get_strategy()) is True
    assert strategy_lib.resolve_jit_compile(True, tf.distribute.get_strategy()) is True


def test_jit_compile_true_is_refused_on_a_host_without_xla(monkeypatch):
    monkeypatch.setattr(host_xla, "available", lambda: False)
    with pytest.raises(ValueError, match="this TensorFlow build cannot compile XLA for the CPU"):
        strategy_lib.resolve_jit_compile(True, tf.distribute.get_strategy())
    with pytest.raises(ValueError, match="cannot compile XLA for the CPU"):
        strategy_lib.resolve_jit_compile("True", tf.distribute.get_strategy())
