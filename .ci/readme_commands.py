"""Runs the commands of README.md and docs/*.md in a fresh venv after the README's install line.

    python .ci/readme_commands.py [--lane=default|tpu] [--list | --test-command]

The commands are read from the indented code lines of README.md and then of every
docs/*.md page in sorted order (pages()), so what is checked is what the documentation
says, wherever a command lives: the install-and-train line (`pip install -e . && python
main.py ...`), every `python main.py` line on a config that trains on the embedded
digits (DIGITS_CONFIGS) or with --mode=describe (the paper rows need their datasets
and accelerators), `python export_hub.py`, `python -m supcon_tf.analysis` and
`python -m supcon_tf.data.write_digits_folder` and `write_shapes_folder`. Usage lines with
[optional] parts are not commands. Each command runs once, in page order, from
the repository root, with PATH leading to the venv; `/tmp/` in a command becomes a
fresh scratch directory so that earlier runs cannot satisfy it. Any non-zero exit
fails the check. The install lines themselves (the test command, the Cloud TPU line)
are read from README.md alone, where the set-up is.

Lanes: `default` installs with the README's plain `pip install -e .`; `tpu` with the
README's Cloud TPU line (`SUPCON_TF_TARGET=tpu pip install ...`: the TPU wheel,
tensorflow-tpu) in its place, and TPU_SKIP_MDS_QUERY=1 so that TensorFlow starts
without a TPU attached instead of waiting minutes on metadata queries; the other
commands are the same offline ones. --list prints the lane's commands without
running them; --test-command prints the lane's install-and-test line (the README's
`pip install -e ".[test]" && pytest`, or its TPU line followed by `&& pytest`),
which .ci/run runs.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "pip install -e ."
COMMAND_STARTS = (f"{INSTALL} &&", "python main.py ", "python export_hub.py ",
                  "python -m supcon_tf.analysis ", "python -m supcon_tf.data.write_digits_folder ",
                  "python -m supcon_tf.data.write_shapes_folder ")
# Configs whose default data is the embedded digits, so they run anywhere.
DIGITS_CONFIGS = ("configs/digits.py", "configs/digits_ce.py", "configs/digits_small_batch.py",
                  "configs/transfer.py")
LANES = ("default", "tpu")
# The README's Cloud TPU install line starts so; setup.py reads the variable.
TPU_INSTALL_START = "SUPCON_TF_TARGET=tpu pip install "
TEST_END = " && pytest"
# Each kind the pages document must be found, or the parsing has drifted from them.
REQUIRED = (f"{INSTALL} && python main.py --config=configs/digits.py", "python export_hub.py",
            "python -m supcon_tf.analysis", "--mode=describe")


def pages():
    """(path, text) of README.md, then of each docs/*.md in sorted order: the pages whose
    commands are checked, README's first."""
    docs = os.path.join(REPO, "docs")
    names = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(docs)
                                   if name.endswith(".md"))
    result = []
    for name in names:
        with open(os.path.join(REPO, name)) as f:
            result.append((name, f.read()))
    return result


def code_lines(text):
    """A page's indented code lines, without trailing comments."""
    return [match.group(1).split("  #")[0].strip() for match in
            (re.match(r"^ {4}(\S.*)$", line) for line in text.splitlines()) if match]


def _only(lines, what):
    if len(lines) != 1:
        sys.exit(f"README.md has {len(lines)} {what} {lines}, not one; "
                 "update README.md or .ci/readme_commands.py")
    return lines[0]


def install_line(text, lane):
    """The README's install command for a lane: its plain one, or its Cloud TPU line."""
    if lane == "default":
        return INSTALL
    return _only([line for line in code_lines(text) if line.startswith(TPU_INSTALL_START)],
                 f"lines starting {TPU_INSTALL_START!r}")


def test_command(text, lane):
    """The README's install-and-test line; for the tpu lane, its TPU install line instead."""
    if lane == "tpu":
        return install_line(text, lane) + TEST_END
    return _only([line for line in code_lines(text)
                  if line.startswith("pip install -e ") and line.endswith(TEST_END)],
                 f"lines `pip install -e ...{TEST_END}`")


def readme_commands(texts, lane="default"):
    """The runnable commands of the pages' texts (README.md's first) for a lane, split at
    && and without repeats, in order; the tpu lane installs with the README's TPU line."""
    lines = [line for text in texts for line in code_lines(text)
             if line.startswith(COMMAND_STARTS) and "[" not in line]
    missing = [kind for kind in REQUIRED if not any(kind in line for line in lines)]
    if missing or not lines or not lines[0].startswith(f"{INSTALL} &&"):
        sys.exit(f"the commands of README.md and docs/*.md {lines} lack one like "
                 f"{missing or INSTALL} (first, in README.md); "
                 "update the pages or .ci/readme_commands.py")
    commands = []
    for part in (part.strip() for line in lines for part in line.split("&&")):
        config = re.search(r"--config=([^\s:]+)", part)
        if part.startswith("python main.py") and not (
                (config and config.group(1) in DIGITS_CONFIGS) or "--mode=describe" in part):
            print(f"skipped (needs its dataset or accelerator): {part}")
        elif part not in commands:
            commands.append(part)
    commands[0] = install_line(texts[0], lane)  # README's `pip install -e .`, or its TPU line
    return commands


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lane", choices=LANES, default="default")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--list", action="store_true", help="print the commands, run nothing")
    show.add_argument("--test-command", action="store_true",
                      help="print the lane's install-and-test line, run nothing")
    args = parser.parse_args()
    texts = [text for _, text in pages()]
    if args.test_command:
        print(test_command(texts[0], args.lane))
        return
    commands = readme_commands(texts, args.lane)
    if args.list:
        print("\n".join(commands))
        return
    print(f"commands of README.md and docs/*.md, {args.lane} lane: installed with "
          f"`{commands[0]}`", flush=True)
    with tempfile.TemporaryDirectory(prefix="readme_commands_") as scratch:
        venv = os.path.join(scratch, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        env = dict(os.environ, VIRTUAL_ENV=venv,
                   PATH=os.path.join(venv, "bin") + os.pathsep + os.environ["PATH"])
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        if args.lane == "tpu":
            env["TPU_SKIP_MDS_QUERY"] = "1"
        for command in commands:
            command = command.replace("/tmp/", f"{scratch}/")
            print(f"$ {command}", flush=True)
            start = time.time()
            done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env)
            print(f"exit {done.returncode} after {time.time() - start:.0f} s", flush=True)
            if done.returncode:
                sys.exit(f"documented command failed with exit status {done.returncode}: "
                         f"{shlex.quote(command)}")
    print(f"all {len(commands)} commands of README.md and docs/*.md passed ({args.lane} lane) "
          f"after `{commands[0]}` in a fresh venv")


if __name__ == "__main__":
    main()
