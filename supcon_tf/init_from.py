"""Starting a run from other weights (transfer, fine-tuning): config.init_from=PATH.

    adopt_architecture(config)             # config.model, data.image_size := the source's
    initialize = initializer(config, model.encoder)   # train.py calls it on a fresh start
    load_encoder(model.encoder, locate(config.init_from))   # what it does: weights by structure

PATH is one of
- a main.py workdir: W/config.json and the latest checkpoint in W/checkpoints;
- a checkpoint prefix, W/checkpoints/ckpt-N: its config.json lies next to the
  checkpoint files or, as main.py lays a workdir out, two levels up in W;
- an export_hub.py export: E (with E/export_info.json) or its encoder SavedModel E/encoder.

The architecture comes from the source's config.json (export_info.json's "config"
for an export), so the run builds the same encoder; the weights then load by
structure: a tf.train.Checkpoint of the encoder alone, or, for an export, the
SavedModel's variables matched in order and shape to the Keras encoder's. Anything
that does not match fails with one line naming the source and what differs. Only
the encoder loads: the projection head and classifier start fresh, as the new
dataset's classes are not the source's.
"""

import dataclasses
import json
import posixpath

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from supcon_tf import export, models
from supcon_tf.data import sources

KINDS = ("workdir", "checkpoint", "export")
CONFIG_FILE = "config.json"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# The config.model fields the encoder's variables and the heads' input depend on; a
# source without them cannot be rebuilt (other fields keep the run's own values).
ARCHITECTURE_FIELDS = ("name", "width_multiplier", "cifar_stem", "input_mean", "input_std",
                       "normalize_embedding")
# Datasets of grey images, which the pipeline replicates to 3 channels.
GRAYSCALE_DATASETS = ("digits", "fashion_mnist")
# How many of an image folder's training files the start-up log line reads.
SAMPLED_FILES = 8
USAGE = ("a main.py workdir (config.json, checkpoints/), a checkpoint prefix "
         "(W/checkpoints/ckpt-N) or an export_hub.py export (E or E/encoder)")


class InitFromError(ValueError):
    """PATH is not a usable source, or its weights do not fit; one line naming it."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A located source: `weights` is a checkpoint prefix, or an encoder SavedModel dir."""

    path: str
    kind: str
    config: ml_collections.ConfigDict
    config_path: str
    weights: str

    def describe(self):
        return f"{self.kind} {self.path}"


def _read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _is_checkpoint_prefix(path):
    return tf.io.gfile.exists(f"{path}.index")


def _is_saved_model(path):
    return tf.io.gfile.exists(posixpath.join(path, "saved_model.pb"))


def locate(path):
    """The Source at `path`; InitFromError if it is none of KINDS."""
    path = str(path).rstrip("/")
    if _is_checkpoint_prefix(path):
        directory = posixpath.dirname(path)
        candidates = [posixpath.join(directory, CONFIG_FILE),
                      posixpath.join(posixpath.dirname(directory), CONFIG_FILE)]
        found = [c for c in candidates if tf.io.gfile.exists(c)]
        if not found:
            raise InitFromError(f"checkpoint {path} has no {CONFIG_FILE} next to it or two "
                                f"levels up ({candidates[1]}); copy the run's {CONFIG_FILE} "
                                "beside it")
        return Source(path, "checkpoint", _source_config(found[0]), found[0], path)
    if _is_saved_model(path) or _is_saved_model(posixpath.join(path, "encoder")):
        encoder_dir = path if _is_saved_model(path) else posixpath.join(path, "encoder")
        info_path = posixpath.join(posixpath.dirname(encoder_dir), export.EXPORT_INFO_FILE)
        if not tf.io.gfile.exists(info_path):
            raise InitFromError(f"SavedModel {encoder_dir} has no {info_path}, which holds the "
                                "architecture; give an export written by export_hub.py")
        info = _read_json(info_path)
        if "config" not in info:
            raise InitFromError(f"{info_path} has no \"config\" entry; re-export the run with "
                                "export_hub.py")
        config = ml_collections.ConfigDict(info["config"])
        _check_architecture_fields(config, info_path)
        return Source(path, "export", config, info_path, encoder_dir)
    config_path = posixpath.join(path, CONFIG_FILE)
    if tf.io.gfile.exists(config_path):
        checkpoint = tf.train.latest_checkpoint(posixpath.join(path, "checkpoints"))
        if checkpoint is None:
            raise InitFromError(f"workdir {path} has no checkpoint in {path}/checkpoints; "
                                "train it first or pass a checkpoint prefix")
        return Source(path, "workdir", _source_config(config_path), config_path, checkpoint)
    what = ("does not exist" if not tf.io.gfile.exists(path) else
            f"has no {CONFIG_FILE}, no .index (checkpoint) and no saved_model.pb (export)")
    raise InitFromError(f"{path} {what}; give {USAGE}")


def _source_config(config_path):
    config = ml_collections.ConfigDict(_read_json(config_path))
    _check_architecture_fields(config, config_path)
    return config


def _check_architecture_fields(config, where):
    model = config.get("model") or {}
    missing = [f"model.{name}" for name in ARCHITECTURE_FIELDS if name not in model]
    if "data" not in config or "image_size" not in config.data:
        missing.append("data.image_size")
    if missing:
        raise InitFromError(f"{where} lacks {', '.join(missing)}, which the encoder's "
                            "architecture needs; it was not written by this version's main.py "
                            "or export_hub.py")


def with_architecture(config):
    """A copy of config with the source's architecture (for checks that must see it);
    config itself when init_from is unset."""
    if not config.get("init_from"):
        return config
    resolved = ml_collections.ConfigDict(config.to_dict())
    _adopt(resolved, locate(config.init_from))
    return resolved


def adopt_architecture(config):
    """Sets config.model (field by field) and config.data.image_size to those of the source
    config.init_from names, in place, and logs how this run's images are converted to
    what the encoder was trained on (conversion_summary); does nothing when init_from is
    unset.

    The image size is the source's too: the encoder learned at that scale (a ViT's
    position embeddings even fix it); images of any size are resized to it.
    """
    if not config.get("init_from"):
        return
    source = locate(config.init_from)
    _adopt(config, source)
    logging.info("%s", conversion_summary(config.data, source))


def _adopt(config, source):
    merged = config.model.to_dict()
    merged.update(source.config.model.to_dict())
    with config.unlocked():
        config.model = ml_collections.ConfigDict(merged)
        config.data.image_size = int(source.config.data.image_size)


def conversion_summary(data_config, source):
    """One line: the images the source encoder was trained on, what the pipeline makes of
    this run's images (views.decode_image, augment.resize) and, for an image folder, the
    sizes and channels of a few of its training files as stored."""
    trained = source.config.data
    size = int(trained.image_size)
    channels = ("grey, replicated to 3 channels" if trained.name in GRAYSCALE_DATASETS
                else "3 channels")
    line = (f"init_from: the encoder was trained on {trained.name} images of {size}x{size} "
            f"({channels}); this run decodes every image to 3 channels (a grey one "
            f"replicated, an alpha channel dropped) and resizes it to {size}x{size}, bilinear "
            "(the whole image for evaluation and the cached probe, random crops for training)")
    if data_config.name == sources.IMAGE_FOLDER:
        line += "; " + _folder_sample(data_config, size)
    return line


def _folder_sample(data_config, size):
    """The sizes and channel counts of up to SAMPLED_FILES training files, spread over
    the classes (the file list is sorted by class)."""
    paths, _ = sources.source(data_config).files(data_config.train_split)
    picked = np.unique(np.linspace(0, len(paths) - 1, min(SAMPLED_FILES, len(paths))).astype(int))
    shapes = [tuple(tf.io.decode_image(tf.io.read_file(paths[i]), expand_animations=False).shape)
              for i in picked]
    sizes = sorted({f"{h}x{w}" for h, w, _ in shapes})
    counts = {c: sum(shape[2] == c for shape in shapes) for c in sorted({s[2] for s in shapes})}
    names = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
    resized = ("kept at that size" if sizes == [f"{size}x{size}"] else
               f"so resized to {size}x{size}")
    return (f"{data_config.data_dir}/{data_config.train_split}: {len(picked)} of "
            f"{len(paths)} files read, {' and '.join(sizes)} ({resized}), "
            + ", ".join(f"{n} {names.get(c, f'{c}-channel')}" for c, n in counts.items()))


def initializer(config, encoder):
    """train.py's hook for a stage that starts without a checkpoint of its own: loads the
    source's encoder weights into `encoder`; None when config.init_from is unset."""
    if not config.get("init_from"):
        return None
    return lambda: load_encoder(encoder, locate(config.init_from))


def check_fits(config):
    """Builds the encoder config.init_from describes and loads the source into it, so that
    config_validation reports a mismatch in one line before any work starts."""
    resolved = with_architecture(config)
    with tf.device("/cpu:0"):
        model = models.build_model(resolved.model, num_classes=1,
                                   image_size=resolved.data.image_size)
        load_encoder(model.encoder, locate(config.init_from))


def load_encoder(encoder, source):
    """Assigns the source's encoder weights to `encoder` (built from adopt_architecture's
    config); InitFromError naming the source and what differs if they do not fit."""
    if source.kind == "export":
        _assign_saved_model_variables(encoder, source)
    else:
        _restore_encoder_checkpoint(encoder, source)


def _object_graph(reader):
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    return graph


def _child(graph, node_id, name):
    return next((c.node_id for c in graph.nodes[node_id].children if c.local_name == name), None)


def _variable_key(node):
    """The checkpoint key of a variable's node, None for other objects."""
    return next((a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"), None)


def _checkpointed_encoder_variables(checkpoint):
    """How many variables the checkpoint's model.encoder holds, counted through its object
    graph (each variable is stored once, under whichever path reaches it first, often
    the optimizer's); None if it has no model.encoder."""
    graph = _object_graph(tf.train.load_checkpoint(checkpoint))
    model = _child(graph, 0, "model")
    encoder = None if model is None else _child(graph, model, "encoder")
    if encoder is None:
        return None
    seen, pending = set(), [encoder]
    while pending:
        node_id = pending.pop()
        if node_id not in seen:
            seen.add(node_id)
            pending.extend(c.node_id for c in graph.nodes[node_id].children)
    return sum(_variable_key(graph.nodes[node_id]) is not None for node_id in seen)


def _restore_encoder_checkpoint(encoder, source):
    checkpoint = source.weights
    where = f"checkpoint {checkpoint}"
    saved = _checkpointed_encoder_variables(checkpoint)
    if saved is None:
        raise InitFromError(f"{where} holds no model.encoder; give a checkpoint main.py wrote "
                            "(W/checkpoints/ckpt-N)")
    built = len(encoder.variables)
    if saved != built:
        raise InitFromError(
            f"{where} holds {saved} encoder variables, the {source.config.model.name} built "
            f"from {source.config_path} has {built}; that config does not describe this "
            "checkpoint")
    try:
        status = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder)).restore(
            checkpoint)
        status.expect_partial()  # the heads and the optimizer stay behind
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        detail = " ".join(str(error).split())[:300]
        raise InitFromError(f"{where} does not fit the encoder built from "
                            f"{source.config_path}: {detail}") from error


def _assign_saved_model_variables(encoder, source):
    """The export's `variables` list (export.HubModule: the encoder's variables, in the
    Keras encoder's order), read from the SavedModel's checkpoint without loading its
    graphs, and assigned in order after checking count and shapes."""
    prefix = posixpath.join(source.weights, "variables", "variables")
    where = f"SavedModel {source.weights}"
    reader = tf.train.load_checkpoint(prefix)
    graph = _object_graph(reader)
    listed = _child(graph, 0, "variables")
    if listed is None:
        raise InitFromError(f"{where} has no `variables` list; export the encoder with "
                            "export_hub.py")
    children = sorted(graph.nodes[listed].children, key=lambda c: int(c.local_name))
    saved = [_variable_key(graph.nodes[c.node_id]) for c in children]
    shapes = reader.get_variable_to_shape_map()
    built = encoder.variables
    if len(saved) != len(built):
        raise InitFromError(
            f"{where} has {len(saved)} variables, the {source.config.model.name} built from "
            f"{source.config_path} has {len(built)}; that file does not describe this export")
    for index, (key, variable) in enumerate(zip(saved, built)):
        if key is None or tuple(shapes[key]) != tuple(variable.shape):
            found = "no variable" if key is None else f"shape {tuple(shapes[key])}"
            raise InitFromError(
                f"{where}: variable {index} has {found}, the encoder's {variable.path} has "
                f"shape {tuple(variable.shape)}; {source.config_path} does not describe this "
                "export")
    for key, variable in zip(saved, built):
        variable.assign(reader.get_tensor(key))
