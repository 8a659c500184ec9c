"""Workdir and checkpoint I/O: atomic writes, the saved config, the chief, and resuming
from the newest checkpoint that reads back."""

import json
import os
import uuid

import tensorflow as tf
from absl import logging

UNREADABLE_PREFIX = "unreadable-"


def write_atomically(path, text):
    """Writes text to path via a temporary file and a rename, so readers never see half."""
    tmp_path = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp_path, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def check_writable(workdir):
    """Creates workdir if needed and writes and removes a probe file there; raises ValueError
    with the fix when that fails, before any work starts."""
    probe = tf.io.gfile.join(workdir, f".write_probe_{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as err:
        raise ValueError(f"--workdir={workdir} is not writable ({err}); pass a directory where "
                         "files can be created") from err


def save_config(config, workdir):
    """workdir/config.json: the resolved config; export rebuilds the model from it."""
    path = os.path.join(workdir, "config.json")
    write_atomically(path, config.to_json_best_effort(indent=2, sort_keys=True))
    # One line, without the class names (thousands for some datasets): the log shows the run.
    shown = config.to_dict()
    shown.pop("class_names", None)
    logging.info("config (%s): %s", path, json.dumps(shown, sort_keys=True, default=str))


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def restore_newest_readable(checkpoint, checkpoint_dir):
    """Restores the newest checkpoint in checkpoint_dir that reads back; returns its path,
    or None when the directory has none.

    A newer one that does not read back (a truncated file, say) is logged and its files
    renamed to unreadable-<name>, so that nothing is deleted and no later save
    overwrites them; the directory's state file then lists only readable ones.
    """
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    if state is None:
        return None
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    for newest in range(len(paths) - 1, -1, -1):
        path = paths[newest]
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as error:
            logging.warning("checkpoint %s does not read back (%s); trying the one before",
                            path, " ".join(str(error).split())[:200])
            continue
        unreadable = paths[newest + 1:]
        for bad in unreadable:
            _set_aside(bad)
            logging.warning("kept the unreadable %s as %s%s.*, resuming from %s", bad,
                            UNREADABLE_PREFIX, os.path.basename(bad), path)
        if unreadable:
            tf.compat.v1.train.update_checkpoint_state(
                checkpoint_dir, path, all_model_checkpoint_paths=paths[:newest + 1])
        return path
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir} reads back (all of "
                            f"{len(paths)} failed; see the log); move them away to start again")


def _set_aside(checkpoint_path):
    """Renames checkpoint_path's files to unreadable-<name>."""
    for name in tf.io.gfile.glob(f"{checkpoint_path}.*"):
        aside = os.path.join(os.path.dirname(name), UNREADABLE_PREFIX + os.path.basename(name))
        tf.io.gfile.rename(name, aside, overwrite=True)
