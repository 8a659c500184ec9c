"""What the command-line entry points share: one-line errors and a terminal that shows the run.

main.py and export_hub.py call `quiet_tensorflow_startup` before anything imports
TensorFlow, parse their flags with `parse_flags`, call `show_library_info_off` once
absl's logging is set up, and only then load TensorFlow, with
`import_tensorflow_quietly`. This module imports no TensorFlow, so a bad flag fails
in a fraction of a second. `python -m supcon_tf.analysis` loads TensorFlow quietly
before its flags parse (its module needs TensorFlow to import).

What stays off the terminal, and how to bring it back:
- TensorFlow's C++ log (CUDA stub probes, XLA service lines, CPU feature notices):
  `TF_CPP_MIN_LOG_LEVEL=0 python main.py ...` (the default here is 3; Python
  exceptions still carry TensorFlow's error messages). What TensorFlow printed
  while loading is kept in <workdir>/tensorflow_startup.log.
- Other libraries' Python INFO lines (TFDS dataset loading, checkpoint sharding):
  `python main.py ... --verbosity=1`. Warnings and errors always show.
"""

import logging
import os
import sys
import tempfile

from absl import flags
from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
STARTUP_LOG = "tensorflow_startup.log"


def quiet_tensorflow_startup():
    """Hides TensorFlow's C++ log unless TF_CPP_MIN_LOG_LEVEL is set; call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def import_tensorflow_quietly():
    """Imports TensorFlow with what it writes to stderr meanwhile captured; returns that text.

    Libraries TensorFlow loads (the CUDA stub) log through absl at load time, before
    TF_CPP_MIN_LOG_LEVEL applies, so only catching file descriptor 2 keeps them off
    the terminal. Nothing is captured when TF_CPP_MIN_LOG_LEVEL asks for TensorFlow's log.
    """
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") != "3" or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return ""
    sys.stderr.flush()
    terminal = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
        captured.seek(0)
        return captured.read().decode(errors="replace")


def save_startup_log(workdir, text):
    """Keeps import_tensorflow_quietly's text as workdir/tensorflow_startup.log."""
    if text:
        import tensorflow as tf

        with tf.io.gfile.GFile(f"{workdir.rstrip('/')}/{STARTUP_LOG}", "w") as f:
            f.write(text)


def fail(message, status):
    """One line on stderr, no traceback."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv, *, config_flags=()):
    """absl's parsing, with any bad flag, config file or config field as one line and status 2.

    config_flags (FlagHolders of ml_collections config files) are loaded here:
    config_flags defers a config file that fails to load until its value is read.
    Positional arguments are refused here too, since absl's UsageError prints the
    whole usage text.
    """
    try:
        remaining = flags.FLAGS(argv)
        for holder in config_flags:
            config = holder.value  # a file that failed to load raises on first use
            if config is not None:  # an optional --config left out
                config.keys()
    except flags.Error as error:
        # A get_config() that raised comes with its traceback; its last line says it.
        fail(f"{str(error).strip().splitlines()[-1]} (see {_program(argv)} --help)", 2)
    except (AttributeError, KeyError) as error:
        fail(f"{error} is not a field of the config; check the --config.FIELD=VALUE "
             "spelling against the config file", 2)
    except (OSError, ValueError, TypeError) as error:
        fail(f"--config: {error}", 2)
    if len(remaining) > 1:
        fail(f"unexpected arguments {' '.join(remaining[1:])}; every option is a --flag=VALUE "
             f"(see {_program(argv)} --help)", 2)
    return remaining


def _program(argv):
    return f"python {os.path.basename(argv[0])}"


class _OwnInfoOnly(logging.Filter):
    """Passes warnings and errors, and INFO lines logged by supcon_tf or the entry point."""

    def __init__(self, entry_point):
        super().__init__()
        self._own = (_PACKAGE_DIR + os.sep, os.path.abspath(entry_point))

    def filter(self, record):
        if record.levelno > logging.INFO or absl_logging.get_verbosity() > 0:
            return True
        return os.path.abspath(record.pathname).startswith(self._own)


def show_library_info_off(entry_point):
    """Keeps other libraries' INFO lines off the terminal; --verbosity=1 shows them again.

    entry_point: the running script's __file__ (its own INFO lines stay).
    """
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly(entry_point))
