"""supcon_tf.study: the tiny study end to end (with an interrupt and a resume), --list,
shared points, the figure, and one-line errors for bad study files."""

import csv
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from supcon_tf import study as study_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "studies", "tiny.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def runner(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "supcon_tf.study", *args], cwd=REPO,
                          capture_output=True, text=True, **kwargs)


def write_study(tmp_path, body, name="study.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def tiny_points(root):
    rows = study_lib.study_rows(study_lib.load_study(TINY), root)
    return rows, study_lib.unique_points(rows)


def test_list_prints_one_main_py_command_per_point(tmp_path):
    result = runner(f"--study={TINY}", f"--root={tmp_path}", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    seen = set()
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["python", "main.py"]
        flags = dict(word.split("=", 1) for word in words[2:])
        assert flags["--config.seed"] == "0" and flags["--config.linear.epochs"] == "1"
        workdir = flags["--workdir"]
        assert os.path.dirname(workdir) == os.path.join(str(tmp_path), "tiny")
        # configs/digits.py's learning rate is 0.3: that point needs no override.
        lr = flags.get("--config.optim.base_lr", "0.3")
        seen.add((flags["--config"], lr))
        assert workdir.endswith("-base-s0") == ("--config.optim.base_lr" not in flags)
    assert seen == {(c, lr) for c in ("configs/digits.py:tiny", "configs/digits_ce.py:tiny")
                    for lr in ("0.1", "0.3")}
    assert not os.path.exists(tmp_path / "tiny"), "--list ran something"


def wait_for(predicate, process, timeout_s, what):
    deadline = time.time() + timeout_s
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the runner ended (status {process.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow
def test_tiny_study_end_to_end_with_an_interrupt_and_a_resume(tmp_path):
    root = str(tmp_path)
    rows, points = tiny_points(root)
    first, second = points[0], points[1]
    command = [sys.executable, "-m", "supcon_tf.study", f"--study={TINY}", f"--root={root}"]
    with open(tmp_path / "runner1.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            second_log = os.path.join(second.workdir, "main.log")
            wait_for(lambda: os.path.exists(second_log)
                     and b"stage one: step" in read(second_log), process, 400,
                     "training of the second point")
            process.send_signal(signal.SIGTERM)  # the runner passes it on to main.py
            status = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    runner_log = (tmp_path / "runner1.log").read_text()
    assert status == study_lib.INTERRUPTED_STATUS, runner_log
    assert "rerun the same command" in runner_log
    assert os.path.exists(first.results_path)
    assert not os.path.exists(second.results_path), "the second point finished before SIGTERM"
    first_results = read(first.results_path)
    first_mtime = os.stat(first.results_path).st_mtime_ns
    first_log = read(os.path.join(first.workdir, "main.log"))
    with open(tmp_path / "tiny" / "results.json") as f:
        assert json.load(f)["finished"] == 1  # the table is written as points finish

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{first.name}: finished before (results.json), skipped" in result.stderr
    # The finished point was not run again; the interrupted one resumed its checkpoint.
    assert read(first.results_path) == first_results
    assert os.stat(first.results_path).st_mtime_ns == first_mtime
    assert read(os.path.join(first.workdir, "main.log")) == first_log
    assert b"resumed from" in read(os.path.join(second.workdir, "main.log"))

    directory = tmp_path / "tiny"
    with open(directory / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [tuple(r) for r in table] == [study_lib.TABLE_COLUMNS] * 4
    assert {(r["method"], r["axis"], r["value"], r["seed"]) for r in table} == {
        (m, "learning_rate", v, "0") for m in ("supcon", "ce") for v in ("0.1", "0.3")}
    for record in table:
        with open(os.path.join(record["workdir"], "results.json")) as f:
            results = json.load(f)
        assert float(record["top1"]) == results["top1"] and 0 <= results["top1"] <= 1
        assert float(record["wall_s"]) == results["wall_s"] > 0
        assert results["method"] == record["method"]
    with open(directory / "results.json") as f:
        saved = json.load(f)
    assert saved["finished"] == saved["rows"] == 4
    assert [{k: str(v) for k, v in r.items()} for r in saved["table"]] == table
    assert read(directory / "tiny.png").startswith(PNG_MAGIC)
    assert not [n for n in os.listdir(directory) if ".tmp" in n]


def test_a_failing_point_is_named_and_left_out_of_the_table(tmp_path):
    path = write_study(tmp_path, """
        def get_study():
            return {"methods": {"supcon": "configs/digits.py:tiny"},
                    "axes": [{"name": "epochs", "values": [{"train.epochs": "many"}]}],
                    "seeds": [0], "plot": {"kind": "box"}}
    """)
    result = runner(f"--study={path}", f"--root={tmp_path}", timeout=300)
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "study" / "supcon-train.epochs=many-s0"
    assert f"see {workdir / 'main.log'}" in result.stderr
    assert b"train.epochs" in read(workdir / "main.log")  # main.py's own error line
    with open(tmp_path / "study" / "results.csv") as f:
        assert list(csv.DictReader(f)) == []
    assert read(tmp_path / "study" / "study.png").startswith(PNG_MAGIC)


STABILITY_LIKE = """
    def get_study():
        return {
            "methods": {"supcon": "configs/digits.py", "ce": "configs/digits_ce.py"},
            "axes": [
                {"name": "augmentation", "values": [
                    {"data.augment": "simaugment"}, {"data.augment": "autoaugment"}]},
                {"name": "optimizer", "values": [
                    {"optim.name": "sgd"},
                    {"label": "rmsprop", "overrides": {"optim.name": "rmsprop",
                                                       "optim.base_lr": 0.01}}]},
            ],
            "seeds": [0, 1],
            "plot": {"kind": "box"},
        }
"""


def test_the_base_value_of_two_axes_is_one_point(tmp_path):
    study = study_lib.load_study(write_study(tmp_path, STABILITY_LIKE))
    rows = study_lib.study_rows(study, str(tmp_path))
    points = study_lib.unique_points(rows)
    assert len(rows) == 2 * 2 * 2 * 2
    # Per method and seed: the base (simaugment = sgd), autoaugment, rmsprop.
    assert len(points) == 2 * 2 * 3
    base = [r for r in rows if r.point.name == "supcon-base-s1"]
    assert {(r.axis, r.value) for r in base} == {("augmentation", "simaugment"),
                                                 ("optimizer", "sgd")}
    rmsprop = next(r for r in rows if r.value == "rmsprop" and r.method == "ce")
    assert rmsprop.point.overrides == (("optim.name", "rmsprop"), ("optim.base_lr", 0.01))


def test_a_configdict_study_is_the_same_study(tmp_path):
    as_dict = study_lib.load_study(write_study(tmp_path, STABILITY_LIKE, "stability.py"))
    as_config = study_lib.load_study(write_study(tmp_path, STABILITY_LIKE.replace(
        "return {", "import ml_collections\n        return ml_collections.ConfigDict({", 1
    ).rstrip() + ")\n", "stability_configdict.py"))
    assert dataclasses.replace(as_config, name="stability") == as_dict


def test_the_box_figure_has_a_panel_per_axis(tmp_path):
    study = study_lib.load_study(write_study(tmp_path, STABILITY_LIKE))
    rows = study_lib.study_rows(study, str(tmp_path))
    pairs = [(row, {"top1": 0.9 + 0.01 * i}) for i, row in enumerate(rows)]
    path = study_lib.draw(study, pairs, str(tmp_path / "figure.png"))
    assert read(path).startswith(PNG_MAGIC)
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1.5 * height  # two panels side by side


def test_a_grid_runs_every_combination_and_draws_a_line_per_other_value(tmp_path):
    study = study_lib.load_study(write_study(tmp_path, """
        def get_study():
            return {"methods": {"supcon": "configs/digits_small_batch.py"}, "grid": True,
                    "axes": [{"name": "momentum", "values": [{"model.momentum": 0.5},
                                                             {"model.momentum": 0.9}]},
                             {"name": "queue", "values": [{"loss.queue_size": 256},
                                                          {"loss.queue_size": 512},
                                                          {"loss.queue_size": 1024}]}],
                    "seeds": [3], "plot": {"kind": "line", "x": "queue"}}
    """))
    rows = study_lib.study_rows(study, str(tmp_path))
    assert len(rows) == len(study_lib.unique_points(rows)) == 6
    assert {(r.axis, r.value) for r in rows} == {
        ("momentum*queue", f"{m},{q}") for m in ("0.5", "0.9") for q in ("256", "512", "1024")}
    # The config's own values (momentum 0.9, 1024 keys) are the base: no override.
    assert [r.point.name for r in rows].count("supcon-base-s3") == 1
    pairs = [(row, {"top1": 0.5}) for row in rows]
    path = study_lib.draw(study, pairs, str(tmp_path / "grid.png"))
    assert read(path).startswith(PNG_MAGIC)


def test_a_workdir_made_by_another_command_is_refused(tmp_path):
    rows, points = tiny_points(str(tmp_path))
    os.makedirs(points[0].workdir)
    with open(os.path.join(points[0].workdir, "command.txt"), "w") as f:
        f.write("python main.py --config=configs/other.py\n")
    with pytest.raises(study_lib.StudyError, match="made by another command"):
        study_lib.run_study(study_lib.load_study(TINY), rows, str(tmp_path))


GOOD = {"methods": '{"supcon": "configs/digits.py"}',
        "axes": '[{"name": "lr", "values": [{"optim.base_lr": 0.1}]}]',
        "seeds": "[0]", "plot": '{"kind": "line"}'}


def study_text(**changes):
    fields = dict(GOOD, **changes)
    body = ", ".join(f'"{key}": {value}' for key, value in fields.items() if value is not None)
    return f"def get_study():\n    return {{{body}}}\n"


BAD_STUDIES = [
    (study_text(seeds=None), "lacks seeds"),
    (study_text(axis="[]"), "unknown keys axis"),
    (study_text(methods='{"supcon": "configs/nope.py"}'), "unknown config path 'configs/nope.py'"),
    (study_text(methods='{"supcon": "configs/digits.py:huge"}'), "does not load"),
    (study_text(axes='[{"name": "lr", "values": []}]'), "axis 'lr' has no values"),
    (study_text(axes='[]'), "axes must be a non-empty list"),
    (study_text(axes='[{"name": "lr", "values": [{"optim.base_rate": 0.1}]}]'),
     "'optim.base_rate' is not a field of configs/digits.py"),
    (study_text(axes='[{"name": "aug", "values": [{"data.augment": "autoaugment"}]}]'),
     "values ['autoaugment'] are none; give each an 'x'"),
    (study_text(plot='{"kind": "violin"}'), "plot kind='violin' must be one of"),
    (study_text(seeds="[]"), "seeds=[] must be a non-empty list of ints"),
    ("x = 1\n", "has no get_study()"),
    ("def get_study():\n    return [1]\n", "returned list"),
    ("def get_study():\n    return 1 / 0\n", "get_study() raised ZeroDivisionError"),
]


@pytest.mark.parametrize("text,message", BAD_STUDIES, ids=[m for _, m in BAD_STUDIES])
def test_a_bad_study_file_is_one_line_naming_the_problem(tmp_path, text, message):
    path = write_study(tmp_path, text)
    with pytest.raises(study_lib.StudyError) as error:
        study_lib.load_study(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_command_reports_a_bad_study_on_one_line(tmp_path):
    path = write_study(tmp_path, study_text(axes='[{"name": "lr", "values": []}]'))
    result = runner(f"--study={path}", "--list")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "axis 'lr' has no values" in result.stderr
    missing = runner("--study=configs/studies/none.py", "--list")
    assert missing.returncode == 2 and "no such file" in missing.stderr
