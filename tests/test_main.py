"""main.py end to end, as a user runs it, on the tiny digits config."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, import_main


@pytest.mark.slow
def test_main_trains_evaluates_and_writes_results(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, "main.py", "--config=configs/digits.py:tiny",
               f"--workdir={workdir}", "--config.seed=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1")  # TensorFlow's warnings, not its info
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # TFDS's auto-cache of the small train split used to be left half-read at the end.
    assert "did not fully read the dataset being cached" not in done.stderr

    results = json.loads((workdir / "results.json").read_text())
    assert {"method", "top1", "top5", "steps", "wall_s"} <= results.keys()
    assert results["method"] == "supcon" and results["seed"] == 1
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    assert results["steps"] > 0 and results["wall_s"] > 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["num_classes"] == 10 and config["seed"] == 1
    assert os.listdir(workdir / "checkpoints") and os.listdir(workdir / "linear")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "train"))

    # Running the same command again resumes at the end and only re-evaluates.
    again = subprocess.run(command + ["--mode=eval"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text())["steps"] == results["steps"]


# What TensorFlow and other libraries print at start-up, as main.py printed it before.
START_UP_NOISE = ("absl::InitializeLog", "cudart_stub.cc", "cpu_feature_guard.cc",
                  "cuda_platform.cc", "service.cc", "dataset_info.py", "reader.py",
                  "functional_saver.py")


@pytest.mark.slow
def test_main_shows_the_run_not_tensorflows_start_up(tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # main.py's own default
    done = subprocess.run([sys.executable, "main.py", "--config=configs/digits.py:tiny",
                           f"--workdir={tmp_path}", "--mode=train"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    progress = [line for line in done.stderr.splitlines()
                if re.search(r"step \d+/\d+ .*loss .*steps/s .*ETA", line)]
    assert len(progress) >= 2, done.stderr[-3000:]
    noise = [line for line in done.stderr.splitlines() if any(n in line for n in START_UP_NOISE)]
    assert not noise, "\n".join(noise)
    # The config is one line of JSON, not a page, and without the class names.
    config_lines = [line for line in done.stderr.splitlines() if "config (" in line]
    assert len(config_lines) == 1, done.stderr[-3000:]
    logged = json.loads(config_lines[0].split("): ", 1)[1])
    assert logged["data"]["name"] == "digits" and "class_names" not in logged
    assert json.loads((tmp_path / "config.json").read_text())["class_names"] == list("0123456789")


def test_default_workdir_follows_the_config_name(monkeypatch):
    main = import_main(monkeypatch)
    assert main.default_workdir("configs/imagenet_r50.py") == os.path.join("runs", "imagenet_r50")
    assert main.default_workdir("configs/digits.py:tiny") == os.path.join("runs", "digits_tiny")


@pytest.mark.parametrize("setting, bfc_expected", [(None, True), ("false", False)])
def test_main_runs_tensorflow_on_the_bfc_host_allocator_unless_told_not_to(setting, bfc_expected):
    # Only the BFC allocator keeps statistics, so get_memory_info tells which one runs;
    # main.py must choose it before anything starts TensorFlow. With oneDNN on (CPUs with
    # AVX-512 VNNI or BF16) TensorFlow's CPU allocator keeps statistics whatever the
    # setting, so the probe turns oneDNN off.
    probe = ("import main, tensorflow as tf\n"
             "tf.ones([64, 64])\n"
             "try:\n"
             "    tf.config.experimental.get_memory_info('CPU:0')\n"
             "    print('bfc')\n"
             "except ValueError:\n"
             "    print('default')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    if setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = setting
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == ("bfc" if bfc_expected else "default")
