"""Runs the README's commands in a fresh venv after its plain install, `pip install -e .`.

    python .ci/readme_commands.py [--list]

The commands are read from README.md's indented code lines, so what is checked is
what the README says: the install-and-train line (`pip install -e . && python
main.py ...`), every `python main.py` line on a config that trains on the embedded
digits (DIGITS_CONFIGS) or with --mode=describe (the paper rows need their datasets
and accelerators), `python export_hub.py`, `python -m supcon_tf.analysis` and
`python -m supcon_tf.data.write_digits_folder`. Usage lines with
[optional] parts are not commands. Each command runs once, in README order, from
the repository root, with PATH leading to the venv; `/tmp/` in a command becomes a
fresh scratch directory so that earlier runs cannot satisfy it. Any non-zero exit
fails the check. --list prints the commands without running them.
"""

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
                  "python -m supcon_tf.analysis ", "python -m supcon_tf.data.write_digits_folder ")
# Configs whose default data is the embedded digits, so they run anywhere.
DIGITS_CONFIGS = ("configs/digits.py", "configs/digits_ce.py", "configs/digits_small_batch.py",
                  "configs/transfer.py")
# Each kind the README documents must be found, or the parsing has drifted from it.
REQUIRED = (f"{INSTALL} && python main.py --config=configs/digits.py", "python export_hub.py",
            "python -m supcon_tf.analysis", "--mode=describe")


def readme_commands(text):
    """The README's runnable commands, split at && and without repeats, in order."""
    lines = []
    for line in text.splitlines():
        match = re.match(r"^ {4}(\S.*)$", line)
        if match and match.group(1).startswith(COMMAND_STARTS) and "[" not in line:
            lines.append(match.group(1).split("  #")[0].strip())
    missing = [kind for kind in REQUIRED if not any(kind in line for line in lines)]
    if missing or not lines[0].startswith(f"{INSTALL} &&"):
        sys.exit(f"README.md's commands {lines} lack one like {missing or INSTALL} (first); "
                 "update README.md or .ci/readme_commands.py")
    commands = []
    for part in (part.strip() for line in lines for part in line.split("&&")):
        config = re.search(r"--config=([^\s:]+)", part)
        if part.startswith("python main.py") and not (
                (config and config.group(1) in DIGITS_CONFIGS) or "--mode=describe" in part):
            print(f"skipped (needs its dataset or accelerator): {part}")
        elif part not in commands:
            commands.append(part)
    return commands


def main():
    with open(os.path.join(REPO, "README.md")) as f:
        commands = readme_commands(f.read())
    if sys.argv[1:] == ["--list"]:
        print("\n".join(commands))
        return
    with tempfile.TemporaryDirectory(prefix="readme_commands_") as scratch:
        venv = os.path.join(scratch, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        env = dict(os.environ, VIRTUAL_ENV=venv,
                   PATH=os.path.join(venv, "bin") + os.pathsep + os.environ["PATH"])
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        for command in commands:
            command = command.replace("/tmp/", f"{scratch}/")
            print(f"$ {command}", flush=True)
            start = time.time()
            done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env)
            print(f"exit {done.returncode} after {time.time() - start:.0f} s", flush=True)
            if done.returncode:
                sys.exit(f"README command failed with exit status {done.returncode}: "
                         f"{shlex.quote(command)}")
    print(f"all {len(commands)} README commands passed after `{INSTALL}` in a fresh venv")


if __name__ == "__main__":
    main()
