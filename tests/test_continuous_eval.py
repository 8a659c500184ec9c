"""--mode=continuous_eval: every stage-one checkpoint evaluated once, in TensorBoard and in
results.jsonl, the same online top-1 as --mode=eval, checkpoints that vanish, resuming,
stopping at the final step or after the timeout, and beside a running trainer."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, load_config

from supcon_tf import continuous_eval, data, train

# configs/digits.py:tiny trains 11 steps (1,437 images at batch 128) and saves at 4, 8, 11.
CHECKPOINT_STEPS = [4, 8, 11]


def tiny_config(method="supcon", **train_overrides):
    config = load_config("digits.py", "tiny")
    config.method = method
    config.train.keep_checkpoints = 10
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{method: a workdir that stage one of the tiny config trained, every checkpoint kept}."""
    workdirs = {}

    def workdir(method):
        if method not in workdirs:
            path = str(tmp_path_factory.mktemp(f"trained_{method}"))
            train.run(tiny_config(method), path, tf.distribute.get_strategy(), mode="train")
            workdirs[method] = path
        return workdirs[method]
    return workdir


def copy_of(source, tmp_path):
    target = str(tmp_path / "workdir")
    shutil.copytree(source, target)
    return target


def evaluate(workdir, config=None, **kwargs):
    kwargs.setdefault("poll_s", 0.05)
    kwargs.setdefault("timeout_s", 0.5)
    return continuous_eval.run(config or tiny_config(), workdir, tf.distribute.get_strategy(),
                               **kwargs)


def results_lines(workdir):
    with open(os.path.join(workdir, "eval", "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def eval_summaries(workdir):
    """{tag: [(step, value)]} from the event files in workdir/eval."""
    found = {}
    for path in sorted(glob.glob(os.path.join(workdir, "eval", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalar = float(tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append((event.step, scalar))
    return found


def numpy_knn_top1(bank, bank_labels, queries, query_labels, *, k=200, temperature=0.07):
    """Weighted cosine kNN from its definition (Wu et al. 2018): the k most similar bank
    rows vote for their class with weight exp(cosine / temperature)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    hits = 0
    for query, label in zip(queries, query_labels):
        similarity = bank @ query
        nearest = np.argsort(-similarity)[:k]
        votes = np.zeros(bank_labels.max() + 1)
        np.add.at(votes, bank_labels[nearest], np.exp(similarity[nearest] / temperature))
        hits += int(np.argmax(votes) == label)
    return hits / len(query_labels)


def embed(encoder, config, split):
    embeddings, labels = [], []
    for batch in data.build_eval_dataset(config.data, split=split, batch_size=64):
        mask = batch["mask"].numpy().astype(bool)
        embeddings.append(encoder(batch["image"], training=False).numpy()[mask])
        labels.append(batch["label"].numpy()[mask])
    return np.concatenate(embeddings).astype(np.float64), np.concatenate(labels)


@pytest.mark.parametrize("method", ["supcon", "ce"])
def test_each_checkpoint_once_in_results_and_tensorboard_and_as_mode_eval_reads_it(
        method, trained, tmp_path):
    workdir = copy_of(trained(method), tmp_path)
    records = evaluate(workdir, tiny_config(method))

    assert [r["step"] for r in records] == CHECKPOINT_STEPS
    assert results_lines(workdir) == records
    for record in records:
        assert record["checkpoint"] == f"ckpt-{record['step']}"
        assert record["num_eval_examples"] == 360
        for key in ("online_top1", "online_top5", "knn_top1"):
            assert 0.0 <= record[key] <= 1.0
        assert record["online_top1"] <= record["online_top5"]
    summaries = eval_summaries(workdir)
    assert set(summaries) == {"top1", "top5", "knn_top1"}
    for tag, key in continuous_eval.SUMMARY_TAGS.items():
        assert [step for step, _ in summaries[key]] == CHECKPOINT_STEPS
        np.testing.assert_allclose([value for _, value in summaries[key]],
                                   [r[tag] for r in records], rtol=1e-6)

    # --mode=eval restores the newest checkpoint, the final one: the same classifier output.
    final = records[-1]
    mode_eval = train.run(tiny_config(method), workdir, tf.distribute.get_strategy(), mode="eval")
    assert mode_eval["steps"] == final["step"]
    online_key = "top1" if method == "ce" else "online_top1"  # ce's classifier is the model's
    assert mode_eval[online_key] == final["online_top1"]

    # kNN against its definition, on the final checkpoint's encoder.
    config = tiny_config(method)
    model, _ = train.restore_for_eval(config, workdir, tf.distribute.get_strategy(),
                                      num_classes=10, num_train_examples=1437)
    bank, bank_labels = embed(model.encoder, config, "train")
    queries, query_labels = embed(model.encoder, config, "test")
    expected = numpy_knn_top1(bank, bank_labels, queries, query_labels)
    assert abs(final["knn_top1"] - expected) <= 1 / 360  # one near-tie may round either way


def test_resumes_after_the_last_step_in_results_jsonl(trained, tmp_path, monkeypatch):
    workdir = copy_of(trained("supcon"), tmp_path)
    evaluate(workdir, eval_with=("online",))
    lines = results_lines(workdir)
    assert all("knn_top1" not in line for line in lines)
    results = os.path.join(workdir, "eval", "results.jsonl")
    with open(results, "w") as f:  # as if stopped before the final checkpoint
        f.writelines(json.dumps(line) + "\n" for line in lines[:1])

    records = evaluate(workdir, eval_with=("online",))
    assert [r["step"] for r in records] == CHECKPOINT_STEPS

    def without_time(lines):
        return [{k: v for k, v in line.items() if k != "eval_s"} for line in lines]
    assert records[0] == lines[0]  # kept, not evaluated again
    assert without_time(records[1:]) == without_time(lines[1:])  # the same weights, same scores

    def evaluated_again(*args, **kwargs):
        raise AssertionError("an evaluated checkpoint was evaluated again")

    monkeypatch.setattr(continuous_eval, "score_model", evaluated_again)
    assert [r["step"] for r in evaluate(workdir)] == CHECKPOINT_STEPS


@pytest.mark.parametrize("vanishing, evaluated", [(8, [4, 11]), (4, [11])])
def test_a_checkpoint_deleted_while_read_is_passed_over_for_the_newest(
        vanishing, evaluated, trained, tmp_path, monkeypatch, caplog):
    workdir = copy_of(trained("supcon"), tmp_path)
    real_restore = continuous_eval.restore_checkpoint

    def restore_after_retention(checkpoint, path):
        if path.endswith(f"ckpt-{vanishing}"):  # the trainer's retention strikes first
            for name in glob.glob(f"{path}.*"):
                os.remove(name)
        return real_restore(checkpoint, path)

    monkeypatch.setattr(continuous_eval, "restore_checkpoint", restore_after_retention)
    records = evaluate(workdir, eval_with=("online",))
    assert [r["step"] for r in records] == evaluated
    assert any(f"ckpt-{vanishing} disappeared while being read" in r.getMessage()
               for r in caplog.records)


def test_stops_at_the_final_step_and_otherwise_after_the_timeout(trained, tmp_path, caplog):
    workdir = copy_of(trained("supcon"), tmp_path)
    # Two epochs end at step 22, which never comes: the timeout stops it.
    records = evaluate(workdir, tiny_config(epochs=2), eval_with=("online",), timeout_s=0.3)
    assert [r["step"] for r in records] == CHECKPOINT_STEPS
    assert any("no new checkpoint" in r.getMessage() and "--eval_timeout_s" in r.getMessage()
               for r in caplog.records)

    empty = str(tmp_path / "not_started")
    assert evaluate(empty, timeout_s=0.2) == []
    assert not os.path.exists(os.path.join(empty, "eval", "results.jsonl"))


def test_refuses_an_unknown_evaluation_and_a_config_without_stage_one(tmp_path):
    with pytest.raises(ValueError, match=r"--eval_with=online,linear: choose one or both"):
        evaluate(str(tmp_path), eval_with=("online", "linear"))
    with pytest.raises(ValueError, match=r"--eval_with=: choose"):
        evaluate(str(tmp_path), eval_with=())
    with pytest.raises(ValueError, match=r"config.train.epochs=0 trains no stage one"):
        evaluate(str(tmp_path), tiny_config(epochs=0))


@pytest.mark.slow
def test_beside_a_running_trainer_through_main(tmp_path):
    """The two-job shape: a trainer and an evaluator, two processes on one workdir; the
    trainer keeps 2 checkpoints, so the evaluator may see some vanish."""
    workdir = str(tmp_path / "run")
    common = ["--config=configs/digits.py:tiny", f"--workdir={workdir}",
              "--config.train.checkpoint_every_steps=2", "--config.train.keep_checkpoints=2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    evaluator = subprocess.Popen(
        [sys.executable, "main.py", *common, "--mode=continuous_eval", "--eval_poll_s=0.2",
         "--eval_timeout_s=300"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    trainer = subprocess.run([sys.executable, "main.py", *common, "--mode=train"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    _, stderr = evaluator.communicate(timeout=600)
    assert evaluator.returncode == 0, stderr[-3000:]

    steps = [r["step"] for r in results_lines(workdir)]
    assert steps == sorted(set(steps)) and steps[-1] == 11, steps
    assert set(steps) <= {2, 4, 6, 8, 10, 11}
    assert "the final checkpoint, step 11, is evaluated" in stderr

    bad = subprocess.run([sys.executable, "main.py", *common, "--mode=continuous_eval",
                          "--eval_with=online,nearest"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --eval_with=online,nearest: choose one or both of online,knn")
