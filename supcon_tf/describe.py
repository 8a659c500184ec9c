"""`python main.py --config=C --mode=describe`: the effective recipe as one JSON object.

Nothing is read or trained: the model is built (for its parameter count and head
layout) and each stage's optimizer and schedule are evaluated. Split sizes come from
the prepared dataset, or, where it is not prepared, from the published sizes below.
"""

import dataclasses

import keras
import tensorflow as tf

from supcon_tf import data, models, optim, probe, train

# Published split sizes (train, eval) and classes, for datasets not prepared here.
PUBLISHED_SPLITS = {
    "imagenet2012": {"num_classes": 1000, "train": 1_281_167, "validation": 50_000},
    "cifar10": {"num_classes": 10, "train": 50_000, "test": 10_000},
    "cifar100": {"num_classes": 100, "train": 50_000, "test": 10_000},
}


def dataset_sizes(data_config):
    """(num_classes, num_train_examples, where the sizes come from)."""
    try:
        info = data.dataset_info(data_config)
        return info.num_classes, info.num_train_examples, "prepared dataset"
    except data.DatasetNotPreparedError:
        published = PUBLISHED_SPLITS.get(data_config.name)
        if published is None or data_config.train_split not in published:
            raise
        return published["num_classes"], published[data_config.train_split], "published sizes"


def _stage(optim_config, *, epochs, min_steps, global_batch_size, num_train_examples, variables,
           batch_norm_variables=(), exempt_variables=()):
    per_epoch = train.steps_per_epoch(num_train_examples, global_batch_size)
    total_steps = train.stage_steps(epochs, per_epoch, min_steps)
    decayed = optim.decayed_variables(optim_config, variables,
                                      batch_norm_variables=batch_norm_variables,
                                      exempt_variables=exempt_variables)
    summary = {
        "optimizer": optim_config.name,
        "momentum": optim_config.momentum,
        "epochs": epochs,
        "global_batch_size": global_batch_size,
        "steps_per_epoch": round(per_epoch, 3),
        "total_steps": total_steps,
        "weight_decay": optim_config.weight_decay,
        "weight_decay_form": "lars" if optim_config.name == "lars" else
                             optim_config.weight_decay_form,
        "decay_batch_norm": optim_config.decay_batch_norm,
        "trained_variables": len(variables),
        "decayed_variables": len(decayed) if optim_config.weight_decay else 0,
    }
    if optim_config.name == "rmsprop":
        summary.update(rho=optim_config.rho, epsilon=optim_config.epsilon)
    summary.update(optim.describe_schedule(optim_config, global_batch_size=global_batch_size,
                                           steps_per_epoch=per_epoch, total_steps=total_steps))
    return summary


def _augmentation(data_config):
    spec = data.ViewSpec.from_data_config(data_config, jpeg=data.is_jpeg(data_config))
    return _json_ready(dataclasses.asdict(spec))


def _json_ready(fields):
    """Tuples as lists, so the dict equals its own JSON round trip."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in fields.items()}


def describe(config):
    """The recipe of `config` as a JSON-serializable dict."""
    num_classes, num_train, sizes_from = dataset_sizes(config.data)
    keras.utils.set_random_seed(config.seed)
    with tf.device("/cpu:0"):
        model = models.build_model(config.model, num_classes=num_classes,
                                   image_size=config.data.image_size)
    method = config.method
    stages = {"stage_one": _stage(
        config.optim, epochs=config.train.epochs, min_steps=config.train.min_steps,
        global_batch_size=config.train.global_batch_size, num_train_examples=num_train,
        variables=train.trained_variables(model, method),
        batch_norm_variables=optim.batch_norm_variables(model),
        exempt_variables=train.decay_exempt_variables(model, method))}
    loss = config.loss
    if method == "ce":
        loss_summary = {"kind": "cross_entropy", "label_smoothing": loss.label_smoothing,
                        "views": loss.cross_entropy_views}
    else:
        head = models.linear_head(num_classes, init=config.model.classifier_init)
        head.build((None, model.encoder.output_shape[-1]))
        if config.linear.protocol == "cached":
            stages["stage_two"] = {
                "protocol": "cached", "bn_mode": config.linear.bn_mode,
                "classifier": "multinomial logistic regression on standardized un-augmented "
                              "embeddings, full-batch L-BFGS",
                "l2_penalty": f"chosen by {probe.CV_FOLDS}-fold cross-validation on the "
                              f"training split, {len(probe.PENALTY_GRID)} values"}
        else:
            stages["stage_two"] = _stage(
                config.linear.optim, epochs=config.linear.epochs,
                min_steps=config.linear.min_steps,
                global_batch_size=config.linear.global_batch_size, num_train_examples=num_train,
                variables=head.trainable_variables)
            stages["stage_two"].update(
                protocol=config.linear.protocol, bn_mode=config.linear.bn_mode,
                label_smoothing=config.linear.label_smoothing,
                augmentation=_augmentation(train.stage_two_data_config(config)))
        scale = (loss.temperature / loss.base_temperature if loss.base_temperature is not None
                 else 1.0)
        loss_summary = {
            "kind": "supcon" if method == "supcon" else "simclr",
            "labels": method == "supcon", "temperature": loss.temperature,
            "base_temperature": loss.base_temperature, "scale": scale,
            "variant": loss.variant, "contrast_mode": loss.contrast_mode,
            "denominator_mode": loss.denominator_mode, "positives_cap": loss.positives_cap,
            "block_size": loss.block_size, "queue_size": loss.queue_size,
            "key_momentum": config.model.momentum if loss.queue_size else None,
            "cross_entropy_weight": loss.cross_entropy_weight}
    return {
        "method": method,
        "dataset": {"name": config.data.name, "num_classes": num_classes,
                    "num_train_examples": num_train, "sizes_from": sizes_from},
        "stages": stages,
        "loss": loss_summary,
        "model": {**_json_ready(config.model.to_dict()), **models.describe_model(model)},
        "augmentation": _augmentation(config.data),
        "mixed_precision": config.train.mixed_precision,
    }
