"""The evaluator job: watches a workdir and evaluates each new stage-one checkpoint.

    python main.py --config=C --workdir=W --mode=continuous_eval [--eval_with=online,knn]

The usual TPU shape: the trainer runs on the TPU and saves W/checkpoints/ckpt-<step>;
this job runs on a CPU host beside it. For every checkpoint newer than the last one
it evaluated, oldest first, it restores the stage-one model and scores the eval split

- online: the model's own classifier (the online linear classifier of supcon and
  simclr, the trained classifier of ce): top-1 and top-5;
- knn: the weighted cosine kNN of analysis.knn_accuracy on the encoder's r, with the
  train split (un-augmented) as the memory bank: top-1.

Each checkpoint gives scalars in W/eval (TensorBoard shows the run `eval` beside
`train`; the online top-1 is the tag `top1`, as the train run's) and one line in
W/eval/results.jsonl. The job stops once the final checkpoint (stage one's last
step) is evaluated, or when no new checkpoint has appeared for timeout_s seconds.

The trainer keeps only train.keep_checkpoints checkpoints, so one may vanish while
this job reads it: that is logged and the job moves on to the newest checkpoint, as
it is then behind the trainer. It never writes to W/checkpoints. A restarted job
reads results.jsonl and carries on after the last step listed there.
"""

import json
import os
import re
import time

import tensorflow as tf
from absl import logging

from supcon_tf import analysis, checkpoints, evaluate, train

EVALUATIONS = ("online", "knn")
EVAL_SUBDIR = "eval"
RESULTS_FILE = "results.jsonl"
_CHECKPOINT_NAME = re.compile(r"-(\d+)$")


def check_eval_with(eval_with):
    """Raises ValueError unless eval_with is a non-empty selection of EVALUATIONS."""
    unknown = [name for name in eval_with if name not in EVALUATIONS]
    if unknown or not eval_with:
        raise ValueError(f"--eval_with={','.join(eval_with)}: choose one or both of "
                         f"{','.join(EVALUATIONS)}")


def list_checkpoints(checkpoint_dir):
    """[(step, path)] of the checkpoints the directory's state file lists, oldest first."""
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    if state is None:
        return []
    listed = []
    for path in state.all_model_checkpoint_paths:
        match = _CHECKPOINT_NAME.search(path)
        if match:
            listed.append((int(match.group(1)), path))
    return sorted(listed)


def restore_checkpoint(checkpoint, path):
    """Restores path into checkpoint; tf.errors.OpError when it is gone or does not read,
    ValueError when it holds another model than the config builds."""
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
        raise ValueError(f"{path} does not fit the model --config builds "
                         f"({' '.join(str(error).split())[:200]}); pass the trainer's "
                         "config and overrides") from error


def read_results(path):
    """The records of results.jsonl, or [] when it does not exist yet."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def score_model(config, strategy, model, eval_with, *, num_classes):
    """The metrics of eval_with (see the module docstring) for the model as it is now."""
    def eval_fn(images):
        outputs = model(images, training=False)
        return {"embedding": outputs["embedding"], "logits": outputs["logits"]}

    outputs, labels = evaluate.split_outputs(config, strategy, eval_fn, config.data.eval_split)
    metrics = {"num_eval_examples": len(labels)}
    if "online" in eval_with:
        online = evaluate.topk(labels, outputs["logits"])
        metrics.update(online_top1=online["top1"], online_top5=online["top5"])
    if "knn" in eval_with:
        bank, bank_labels = evaluate.split_outputs(
            config, strategy, lambda images: tf.cast(model.encoder(images, training=False),
                                                     tf.float32),
            config.data.train_split)
        knn = analysis.knn_accuracy(bank, bank_labels, outputs["embedding"], labels,
                                    num_classes=num_classes)
        metrics.update(knn_top1=knn["top1"], knn_k=knn["k"])
    return metrics


# Result keys and the summary tags they are written under (the train run's names).
SUMMARY_TAGS = {"online_top1": "top1", "online_top5": "top5", "knn_top1": "knn_top1"}


def write_summaries(writer, step, record):
    with writer.as_default(step=step):
        for key, tag in SUMMARY_TAGS.items():
            if key in record:
                tf.summary.write(tag, tf.constant(record[key], tf.float32),
                                 metadata=train.SCALAR_METADATA)
    writer.flush()


def build_stage_one(config, strategy):
    """The stage-one model and checkpoint as train.run builds them (same precision policy,
    classes and architecture); returns (model, checkpoint, num_classes, final step)."""
    info = train.prepare(config)
    model, _, checkpoint, per_epoch = train.build_stage_one(
        config, strategy, num_classes=info.num_classes,
        num_train_examples=info.num_train_examples)
    final_step = train.stage_steps(config.train.epochs, per_epoch, config.train.min_steps)
    return model, checkpoint, int(info.num_classes), final_step


def run(config, workdir, strategy, *, eval_with=EVALUATIONS, timeout_s=3600.0, poll_s=30.0):
    """Evaluates workdir's stage-one checkpoints as they appear; returns every record of
    results.jsonl (earlier runs' included) when it stops."""
    check_eval_with(eval_with)
    if not config.train.epochs:
        raise ValueError("config.train.epochs=0 trains no stage one, so no checkpoint comes "
                         "to evaluate; use --mode=eval for a frozen-encoder transfer")
    model, checkpoint, num_classes, final_step = build_stage_one(config, strategy)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    eval_dir = os.path.join(workdir, EVAL_SUBDIR)
    tf.io.gfile.makedirs(eval_dir)
    results_path = os.path.join(eval_dir, RESULTS_FILE)
    records = read_results(results_path)
    evaluated = max((record["step"] for record in records), default=-1)
    seen = evaluated  # checkpoints up to here are done with: evaluated, or passed over
    if records:
        logging.info("continuous eval: %d checkpoints already in %s, the last at step %d",
                     len(records), results_path, evaluated)
    chief = checkpoints.is_chief(strategy)
    writer = tf.summary.create_file_writer(eval_dir) if chief else tf.summary.create_noop_writer()
    behind = False  # set when a checkpoint vanished: the next one is the newest
    waiting_since = None
    while evaluated < final_step:
        pending = [(step, path) for step, path in list_checkpoints(checkpoint_dir)
                   if step > seen]
        if not pending:
            if waiting_since is None:
                waiting_since = time.time()
                logging.info("continuous eval: waiting for a checkpoint %s in %s (final "
                             "step %d; stops after %.0f s without one)",
                             f"after step {seen}" if seen >= 0 else "to appear",
                             checkpoint_dir, final_step, timeout_s)
            elif time.time() - waiting_since >= timeout_s:
                logging.warning("continuous eval: no new checkpoint in %s for %.0f s "
                                "(--eval_timeout_s); stopping with step %s of %d evaluated last",
                                checkpoint_dir, timeout_s,
                                evaluated if evaluated >= 0 else "none", final_step)
                break
            time.sleep(poll_s)
            continue
        waiting_since = None
        step, path = pending[-1] if behind else pending[0]
        if behind and len(pending) > 1:
            logging.info("continuous eval: behind the trainer; passing over steps %s",
                         ", ".join(str(s) for s, _ in pending[:-1]))
        try:
            restore_checkpoint(checkpoint, path)
        except tf.errors.OpError as error:
            gone = not tf.io.gfile.glob(f"{path}.index")
            logging.warning("continuous eval: %s %s (%s); moving on to the newest checkpoint",
                            path, "disappeared while being read (the trainer's "
                            "train.keep_checkpoints retention)" if gone else "does not read back",
                            " ".join(str(error).split())[:200])
            seen, behind = step, True
            continue
        behind = False
        logging.info("continuous eval: evaluating %s (step %d of %d)", path, step, final_step)
        started = time.time()
        record = {"step": step, "checkpoint": os.path.basename(path),
                  **score_model(config, strategy, model, eval_with, num_classes=num_classes),
                  "eval_s": round(time.time() - started, 1)}
        records.append(record)
        write_summaries(writer, step, record)
        if chief:
            checkpoints.write_atomically(
                results_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        logging.info("continuous eval: step %d: %s", step, "  ".join(
            f"{key} {record[key]:.4f}" for key in SUMMARY_TAGS if key in record))
        seen = evaluated = step
    else:
        logging.info("continuous eval: the final checkpoint, step %d, is evaluated; results "
                     "in %s", final_step, results_path)
    writer.close()
    return records
