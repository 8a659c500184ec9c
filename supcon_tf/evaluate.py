"""Evaluation: top-k accuracy on a full split, embedding extraction, the linear probe,
and a trained model's results (evaluate_model).

The paper rows' stage two trains its classifier through the frozen encoder on
augmented views (train.py, config.linear.protocol="augmented"). linear_probe is the
"cached" protocol and the analysis tools' probe: the encoder runs once, in inference
mode and without augmentation, and a logistic regression is fitted to convergence on
those fixed embeddings by L-BFGS, its L2 penalty chosen by cross-validation on the
training split (probe.py), as linear probes are fitted in the transfer literature.
config.linear's optimizer, epochs and batch size belong to the "augmented" protocol
and play no part here. Nothing is selected on the eval split.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from supcon_tf import checkpoints, constants, data, models, probe


def topk_accuracy(labels, logits, k, mask=None):
    """Fraction of rows whose label is among the k largest logits (ties count as hits).

    labels int [N], logits [N, C], mask bool [N] (False rows, e.g. padding, are ignored).
    """
    labels = np.asarray(labels).astype(np.int64)
    logits = np.asarray(logits, np.float64)
    if mask is not None:
        mask = np.asarray(mask, bool)
        labels, logits = labels[mask], logits[mask]
    if len(labels) == 0:
        raise ValueError("topk_accuracy got no unmasked rows")
    true_logit = logits[np.arange(len(labels)), labels]
    rank = (logits > true_logit[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def extract_embeddings(embed_fn, eval_dataset, *, strategy=None):
    """Runs embed_fn over a finite eval dataset and keeps the unmasked rows.

    embed_fn maps images [b, H, W, 3] to a tensor [b, ...] or a dict of them; the
    batches are {"image", "label", "mask"} as build_eval_dataset yields them.
    With a strategy, eval_dataset must come from strategy.experimental_distribute_dataset
    (or distribute_datasets_from_function): outputs are all-gathered across replicas, so
    every host ends up with the whole split.

    Returns (outputs as numpy, same structure as embed_fn's result, labels int64 [N]).
    """
    def replica_fn(batch):
        # all_gather takes no bools, hence the int mask.
        outputs = (embed_fn(batch["image"]), batch["label"], tf.cast(batch["mask"], tf.int32))
        if strategy is None or strategy.num_replicas_in_sync == 1:
            return outputs
        context = tf.distribute.get_replica_context()
        return tf.nest.map_structure(lambda t: context.all_gather(t, axis=0), outputs)

    @tf.function
    def step(batch):
        if strategy is None:
            return replica_fn(batch)
        return tf.nest.map_structure(lambda t: strategy.experimental_local_results(t)[0],
                                     strategy.run(replica_fn, args=(batch,)))

    chunks, labels = [], []
    for batch in eval_dataset:
        outputs, batch_labels, mask = step(batch)
        mask = mask.numpy().astype(bool)
        chunks.append(tf.nest.map_structure(lambda t: t.numpy()[mask], outputs))
        labels.append(batch_labels.numpy()[mask])
    if not chunks:
        raise ValueError("extract_embeddings got an empty dataset")
    outputs = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *chunks)
    return outputs, np.concatenate(labels).astype(np.int64)


def linear_probe(train_emb, train_labels, test_emb, test_labels, *, num_classes, seed=0,
                 head=None, log=False):
    """Fits probe.fit_probe on the train embeddings alone and scores it on the test ones.

    The seed shuffles the cross-validation folds. Pass `head` (a models.linear_head) to
    receive the fitted weights, e.g. to checkpoint it; log=True logs the grid's CV
    top-1, the chosen penalty and the refit's iterations. Returns {"top1", "top5",
    "train_top1", "l2", "cv_top1", "iterations", "converged"}: l2 is the chosen penalty,
    cv_top1 its mean held-out top-1 on the training split.
    """
    train_emb = np.asarray(train_emb, np.float64)
    test_emb = np.asarray(test_emb, np.float64)
    if train_emb.ndim != 2 or test_emb.ndim != 2 or test_emb.shape[1] != train_emb.shape[1]:
        raise ValueError(f"linear_probe needs train and test embeddings [N, D] of the same D; "
                         f"got shapes {train_emb.shape} and {test_emb.shape}")
    if np.shape(test_labels) != (len(test_emb),):
        raise ValueError(f"linear_probe needs {len(test_emb)} test labels; got shape "
                         f"{np.shape(test_labels)}")
    fitted = probe.fit_probe(train_emb, train_labels, num_classes=num_classes, seed=seed)
    if log:
        logging.info("%s", fitted.describe())
    if head is not None:
        head.build((None, train_emb.shape[1]))
        head.kernel.assign(fitted.weights.astype(np.float32))
        head.bias.assign(fitted.bias.astype(np.float32))
    test_logits = fitted.logits(test_emb)
    return {"top1": topk_accuracy(test_labels, test_logits, 1),
            "top5": topk_accuracy(test_labels, test_logits, 5),
            "train_top1": topk_accuracy(train_labels, fitted.logits(train_emb), 1),
            "l2": fitted.penalty, "cv_top1": max(fitted.cv_top1),
            "iterations": fitted.iterations, "converged": fitted.converged}


# ---------------------------------------------------------------- a trained model


def split_outputs(config, strategy, embed_fn, split):
    eval_batch = config.eval.batch_size
    if eval_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"eval.batch_size={eval_batch} must divide evenly over "
                         f"{strategy.num_replicas_in_sync} replicas")
    dataset = data.build_eval_dataset(config.data, split=split, batch_size=eval_batch)
    return extract_embeddings(
        embed_fn, strategy.experimental_distribute_dataset(dataset), strategy=strategy)


def topk(labels, logits):
    return {"top1": topk_accuracy(labels, logits, 1), "top5": topk_accuracy(labels, logits, 5)}


def cached_probe(config, workdir, strategy, model, eval_features, eval_labels, *, num_classes,
                 num_train_examples):
    """The "cached" protocol: a classifier fitted on un-augmented embeddings computed once;
    its head is checkpointed in workdir/linear (export_hub.py's classifier)."""
    probe.check_size(num_train_examples, np.shape(eval_features)[1])  # before embedding

    def features_fn(images):
        return model.head_input(tf.cast(model.encoder(images, training=False), tf.float32))

    train_features, train_labels = split_outputs(config, strategy, features_fn,
                                                 config.data.train_split)
    head = models.linear_head(num_classes, init=config.model.classifier_init)
    fitted = linear_probe(train_features, train_labels, eval_features, eval_labels,
                          num_classes=num_classes, seed=config.seed, head=head, log=True)
    if checkpoints.is_chief(strategy):
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(head=head),
                                             os.path.join(workdir, "linear"), max_to_keep=1)
        manager.save(checkpoint_number=0)  # a probe has no steps; a re-evaluation refits
    return {"top1": fitted["top1"], "top5": fitted["top5"],
            "linear_train_top1": fitted["train_top1"],
            **{f"linear_{key}": fitted[key] for key in ("l2", "cv_top1", "iterations",
                                                        "converged")}}


def evaluate_model(config, workdir, strategy, model, *, num_classes, num_train_examples,
                   train_classifier):
    """Top-1/top-5 on config.data.eval_split after the last stage (stage two for supcon/simclr).

    train_classifier is train.train_stage_two (passed in: train.py imports this module),
    called as (config, workdir, strategy, model, num_classes=, num_train_examples=) for
    the "augmented" protocol; it returns the trained classifier.
    """
    if not constants.stage_two_runs(config):  # ce reports its own classifier
        logits, labels = split_outputs(
            config, strategy,
            lambda x: model.classifier(model.head_input(model.encoder(x, training=False))),
            config.data.eval_split)
        return {**topk(labels, logits), "num_eval_examples": len(labels)}

    def eval_fn(images):
        outputs = model(images, training=False)
        return {"features": model.head_input(outputs["embedding"]), "logits": outputs["logits"]}

    eval_outputs, eval_labels = split_outputs(config, strategy, eval_fn, config.data.eval_split)
    results = {"num_eval_examples": len(eval_labels), "linear_protocol": config.linear.protocol}
    if config.train.epochs:  # a frozen-encoder transfer trains no online classifier
        results["online_top1"] = topk_accuracy(eval_labels, eval_outputs["logits"], 1)
    if config.linear.protocol == "cached":
        results.update(cached_probe(config, workdir, strategy, model, eval_outputs["features"],
                                    eval_labels, num_classes=num_classes,
                                    num_train_examples=num_train_examples))
        return results
    head = train_classifier(config, workdir, strategy, model, num_classes=num_classes,
                            num_train_examples=num_train_examples)
    results.update(topk(eval_labels, head(eval_outputs["features"]).numpy()))
    return results
