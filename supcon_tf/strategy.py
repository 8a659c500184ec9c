"""Distribution strategy set-up in one place, and where XLA may compile the train step.

    --tpu=NAME|grpc://ADDRESS|local  -> TPUStrategy
    TF_CONFIG set                    -> MultiWorkerMirroredStrategy
    one GPU                          -> OneDeviceStrategy on it
    several GPUs                     -> MirroredStrategy over them
    otherwise                        -> the default strategy (one CPU device)

What the user controls is checked before TensorFlow sees it, and a problem is one
`StrategyError` line naming TF_CONFIG or --tpu: `check_environment(tpu)` validates
TF_CONFIG (JSON, cluster, task type and index) and probes a grpc:// TPU address
within TPU_PROBE_TIMEOUT_S. It needs no TensorFlow, so main.py runs it before
TensorFlow loads; TensorFlow is imported inside the functions that use it.
"""

import json
import os
import socket
import threading

from absl import logging

# On a CPU XLA can help or hurt (it does not speed up every large convolution step),
# while the small digits encoder's step ran 1.24x faster on idle cores
# (benchmarks/step_bench.py). So "auto" leaves XLA off on a CPU, and configs that
# measured a gain, like configs/digits.py, set train.jit_compile=True.
CPU_JIT_DEFAULT = False

# A grpc:// TPU address must answer within this many seconds, or the run stops with
# an error instead of waiting out TensorFlow's own connection timeout.
TPU_PROBE_TIMEOUT_S = 10.0
# The jobs MultiWorkerMirroredStrategy runs (no parameter servers, no evaluator).
MULTI_WORKER_JOBS = ("chief", "worker")
# HTTP/2 as a gRPC client opens it (RFC 7540 section 3.5): the connection preface and
# an empty SETTINGS frame. A gRPC server's first frame back is SETTINGS (type 0x4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_FRAME_HEADER_BYTES = 9
_HTTP2_SETTINGS = 0x4


class StrategyError(ValueError):
    """TF_CONFIG or --tpu cannot work; the message is one line naming which and why."""


# ---------------------------------------------------------------- TF_CONFIG


def _shown(text, limit=120):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_address(job, index, address):
    where = f"TF_CONFIG cluster {job!r} address {index}"
    if not isinstance(address, str):
        raise StrategyError(f"{where} is {address!r}; use a \"host:port\" string")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StrategyError(f"{where} is {address!r}; use \"host:port\" with a port in 1..65535")


def parse_tf_config(text):
    """TF_CONFIG's text -> its dict, checked as MultiWorkerMirroredStrategy needs it.

    {"cluster": {"worker": ["host:port", ...], "chief": [...]?},
     "task": {"type": "worker", "index": 0}}; other keys pass through. Raises
    StrategyError naming TF_CONFIG and what is wrong.
    """
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise StrategyError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos}): "
                            f"{_shown(text)!r}") from None
    if not isinstance(tf_config, dict):
        raise StrategyError("TF_CONFIG must be a JSON object with \"cluster\" and \"task\"; "
                            f"got {_shown(text)!r}")
    cluster = tf_config.get("cluster")
    if cluster is None:
        raise StrategyError("TF_CONFIG has no \"cluster\": add {\"cluster\": {\"worker\": "
                            "[\"host:port\", ...]}, \"task\": {...}}")
    if not isinstance(cluster, dict) or not cluster:
        raise StrategyError(f"TF_CONFIG \"cluster\" is {_shown(json.dumps(cluster))}; it must "
                            "map job names to lists of \"host:port\" addresses")
    seen = {}
    for job, addresses in cluster.items():
        if job not in MULTI_WORKER_JOBS:
            raise StrategyError(
                f"TF_CONFIG cluster has a {job!r} job; MultiWorkerMirroredStrategy runs "
                f"{' and '.join(repr(j) for j in MULTI_WORKER_JOBS)} tasks only")
        if not isinstance(addresses, list) or not addresses:
            raise StrategyError(f"TF_CONFIG cluster {job!r} is {_shown(json.dumps(addresses))}; "
                                "it must be a non-empty list of \"host:port\" addresses")
        for index, address in enumerate(addresses):
            _check_address(job, index, address)
            if address in seen:
                raise StrategyError(f"TF_CONFIG cluster lists {address} twice ({seen[address]} "
                                    f"and {job} {index}); every task needs its own port")
            seen[address] = f"{job} {index}"
    if len(cluster.get("chief", [])) > 1:
        raise StrategyError(f"TF_CONFIG cluster has {len(cluster['chief'])} \"chief\" "
                            "addresses; there is at most one chief")
    task = tf_config.get("task")
    if task is None:
        raise StrategyError("TF_CONFIG has no \"task\": add \"task\": {\"type\": \"worker\", "
                            "\"index\": N} naming this process's entry in the cluster")
    if not isinstance(task, dict):
        raise StrategyError(f"TF_CONFIG \"task\" is {_shown(json.dumps(task))}; use "
                            "{\"type\": \"worker\", \"index\": N}")
    task_type = task.get("type")
    if task_type is None:
        raise StrategyError(f"TF_CONFIG task has no \"type\" ({_shown(json.dumps(task))}); "
                            f"use one of the cluster's jobs: {', '.join(cluster)}")
    if task_type not in cluster:
        raise StrategyError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                            f"({', '.join(cluster)})")
    index = task.get("index")
    if index is None:
        raise StrategyError(f"TF_CONFIG task has no \"index\" ({_shown(json.dumps(task))}); "
                            f"use 0..{len(cluster[task_type]) - 1}, this process's place in "
                            f"cluster {task_type!r}")
    # TensorFlow reads the index with int(), so "1" works as well as 1.
    if isinstance(index, bool) or not (isinstance(index, int) or
                                       (isinstance(index, str) and index.isdigit())):
        raise StrategyError(f"TF_CONFIG task index {index!r} is not a whole number")
    if not 0 <= int(index) < len(cluster[task_type]):
        raise StrategyError(
            f"TF_CONFIG task index {int(index)} is out of range: cluster {task_type!r} has "
            f"{len(cluster[task_type])} address(es), so the index is 0.."
            f"{len(cluster[task_type]) - 1}")
    return tf_config


def tf_config_task(tf_config):
    """(type, index, address) of this process in a parse_tf_config dict."""
    task = tf_config["task"]
    index = int(task["index"])
    return task["type"], index, tf_config["cluster"][task["type"]][index]


# ---------------------------------------------------------------- --tpu=grpc://


def _answers_grpc(host, port, timeout_s):
    """Connects, sends the HTTP/2 preface and reads the first frame header. Returns an
    error text, or None when a gRPC (HTTP/2) server answered."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(_HTTP2_PREFACE)
            header = b""
            while len(header) < _HTTP2_FRAME_HEADER_BYTES:
                chunk = connection.recv(_HTTP2_FRAME_HEADER_BYTES - len(header))
                if not chunk:
                    return "it closed the connection without answering as a gRPC server"
                header += chunk
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return f"cannot connect: {error.strerror or error}"
    if header[3] != _HTTP2_SETTINGS:
        return "it answered, but not as a gRPC server (no HTTP/2 SETTINGS frame)"
    return None


def probe_grpc_address(address, timeout_s=TPU_PROBE_TIMEOUT_S):
    """Raises StrategyError unless a gRPC server answers at host:port within timeout_s.

    Name resolution, the connection and the server's first HTTP/2 frame all count
    against the bound (the probe runs in a thread that is abandoned at the deadline).
    """
    flag = f"--tpu=grpc://{address}"
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [IPv6]:port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StrategyError(f"{flag}: the address must be host:port, e.g. grpc://10.0.0.2:8470")
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_answers_grpc(host, int(port),
                                                                          timeout_s)),
                              name="tpu-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)  # the socket timeout applies per call; this bounds the whole
    problem = outcome[0] if outcome else "timeout"
    if problem == "timeout":
        raise StrategyError(f"{flag} cannot be used: no answer from {address} within "
                            f"{timeout_s:g} s; check the address, the port (8470 on a TPU "
                            "node) and the firewall, or leave --tpu out to run on the GPUs or "
                            "the CPU")
    if problem:
        raise StrategyError(f"{flag} cannot be used: {address}: {problem} (checked within "
                            f"{timeout_s:g} s); check the address and that the TPU is up, or "
                            "leave --tpu out to run on the GPUs or the CPU")


def check_environment(tpu=None, *, probe_timeout_s=TPU_PROBE_TIMEOUT_S):
    """What make_strategy will use, checked without TensorFlow; raises StrategyError.

    With --tpu=grpc://HOST:PORT[,grpc://...], each address must answer as a gRPC server
    within probe_timeout_s. Without --tpu, a set TF_CONFIG must be valid. Returns the
    parsed TF_CONFIG, or None.
    """
    if tpu:
        if tpu.startswith("grpc://"):
            addresses = tpu.split(",")
            if not all(address.startswith("grpc://") for address in addresses):
                raise StrategyError(f"--tpu={tpu}: list every address as grpc://HOST:PORT")
            for address in addresses:
                probe_grpc_address(address[len("grpc://"):], probe_timeout_s)
        return None
    text = os.environ.get("TF_CONFIG")
    return parse_tf_config(text) if text else None


# ---------------------------------------------------------------- strategies


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def make_strategy(tpu=None):
    """The strategy for this process; `tpu` as given to main.py's --tpu (None: no TPU).

    Raises StrategyError (one line naming --tpu or TF_CONFIG) when the set-up fails.
    """
    import tensorflow as tf

    tf_config = check_environment(tpu)
    failures = (OSError, ValueError, RuntimeError, tf.errors.OpError)
    if tpu:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        except failures as error:
            raise StrategyError(
                f"--tpu={tpu} cannot be used ({_first_line(error)}); check the TPU name or "
                "address, or leave --tpu out to run on the GPUs or the CPU") from error
    elif tf_config is not None:
        task_type, index, address = tf_config_task(tf_config)
        logging.info("TF_CONFIG task %s %d (%s): multi-worker mirrored", task_type, index,
                     address)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except failures as error:
            raise StrategyError(
                f"TF_CONFIG task {task_type} {index} ({address}): the multi-worker set-up "
                f"failed ({_first_line(error)}); is the port free on this host?") from error
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) == 1:
            strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
        elif gpus:
            strategy = tf.distribute.MirroredStrategy([g.name for g in gpus])
        else:
            strategy = tf.distribute.get_strategy()
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def is_tpu(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.TPUStrategy)


def resolve_jit_compile(setting, strategy):
    """Whether to wrap the per-replica step in tf.function(jit_compile=True).

    setting is config.train.jit_compile: True, False or "auto". TPUStrategy compiles
    the whole replicated step with XLA on its own, so this returns False there.
    Under (Multi)MirroredStrategy, XLA can compile neither the cross-replica
    gather nor the update of mirrored optimizer variables, so True is refused.
    On one CPU device, a TensorFlow build without XLA for the host (the TPU wheel;
    supcon_tf.host_xla) makes "auto" False and refuses True.
    """
    import tensorflow as tf

    from supcon_tf import host_xla

    # A --config.train.jit_compile=... override arrives as a string: the field holds "auto".
    if isinstance(setting, str):
        setting = {"true": True, "false": False}.get(setting.lower(), setting)
    if setting not in (True, False, "auto"):
        raise ValueError(f"train.jit_compile={setting!r}; use True, False or 'auto'")
    if is_tpu(strategy):
        return False
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    single_device = strategy.num_replicas_in_sync == 1 and not isinstance(strategy, mirrored)
    if not single_device:
        if setting is True:
            raise ValueError(
                "train.jit_compile=True needs TPUStrategy or a single device "
                "(XLA cannot compile the all-gather or the mirrored optimizer update); "
                "use 'auto' or False")
        return False
    if tf.config.list_logical_devices("GPU"):
        return setting is not False
    # The step runs on the host CPU: XLA only where this build can compile for it.
    if setting is False or (setting == "auto" and not CPU_JIT_DEFAULT):
        return False
    if not host_xla.available():
        if setting is True:
            raise ValueError(
                "train.jit_compile=True: this TensorFlow build cannot compile XLA for the CPU "
                "(the TPU wheel, tensorflow-tpu, has no host XLA); use 'auto' or False here")
        return False
    return True
