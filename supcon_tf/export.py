"""Exports a trained SupCon model as TF Hub Reusable SavedModels.

`export_from_workdir(workdir, export_dir)` rebuilds the model from
workdir/config.json, restores its latest checkpoint (plus the stage-two linear
head from workdir/linear if one was trained) and writes

    export_dir/encoder/      images -> embedding r (the representation to reuse)
    export_dir/projection/   images -> L2-normalized projection z
    export_dir/classifier/   images -> logits (stage-two linear head if trained,
                             else the online classifier trained beside the encoder)
    export_dir/export_info.json   the config and checkpoints the export came from

Every SavedModel follows TF Hub's Reusable SavedModel API: `__call__(images,
training=False)` traced for both values of `training`, `variables`,
`trainable_variables`, `regularization_losses`, and a `serving_default`
signature (also exposed as the `serve` function, Keras' `TFSMLayer` default)
that returns {"embedding", "projection", "logits"}. Images are float32
[batch, H, W, 3] in [0, 1], any batch size.

Image size: the ResNet encoders are convolutions followed by global average
pooling, so their exports take any H and W (the signature's shape is
[None, None, None, 3], as TF-Hub image feature vectors); H = W =
config.data.image_size, the size they were trained at, is recommended and is
export_info.json's "recommended_image_size". A ViT's learned position
embeddings fix its number of patches, so a ViT export keeps
[None, S, S, 3] with S = config.data.image_size, and other sizes fail: an
eager call finds no matching function, and a graph whose H and W were unknown
when it was traced (a signature called directly, a Keras model on
Input((None, None, 3))) stops at a check that names the size to resize to. The
check matters for an image with as many patches as S x S (S/2 x 2S): it would
otherwise run, with the position embeddings of other patches. export_info.json
says so in "input_shape" and "image_size_note". For a ResNet, images of the
recommended size give results like the training run's.

The models are rebuilt in float32 even if training used mixed_bfloat16: the
checkpointed variables are float32 either way and float32 is what TF Hub
consumers expect.
"""

import json
import posixpath
import uuid

import ml_collections
import tensorflow as tf

from supcon_tf import models

EXPORT_NAMES = ("encoder", "projection", "classifier")
EXPORT_INFO_FILE = "export_info.json"


class ForwardPasses:
    """The model's forward passes as tf.functions, shared by the three exports.

    Keras 3 BatchNormalization branches on a Python bool, so each value of
    `training` gets its own function with a fixed input signature, and callers
    dispatch on the bool. Sharing them means each large graph is traced once per
    tracing context instead of once per export and entry point (tf.saved_model.save
    retraces every function it saves, but reuses these nested traces).

    For a ResNet the functions are traced with H and W unknown (`input_shape`). The
    Keras encoder was built on a fixed-size Input, but Keras checks only the known
    dimensions of its inputs and no layer of a ResNet uses the static H or W, so the
    traced graph runs at any size with the same weights.
    """

    def __init__(self, model, *, image_size, linear_head=None):
        self.model = model
        self.linear_head = linear_head
        shape = input_shape(model.encoder, image_size)
        self.image_spec = tf.TensorSpec(shape, tf.float32, "images")
        self.fixed_size = shape[1]  # None: any size
        self.embedding = {
            training: self._traced(model.encoder, training) for training in (False, True)
        }
        self.outputs = {training: self._traced(model, training) for training in (False, True)}

    def _traced(self, layer, training):
        def forward(images):
            if self.fixed_size is not None:
                images = self._checked_size(images)
            return layer(images, training=training)
        return tf.function(forward, input_signature=[self.image_spec])

    def _checked_size(self, images):
        """images, after a run-time check of H and W for a fixed-size encoder: a caller
        whose graph has unknown H and W can reach the traced function with any size."""
        size = self.fixed_size
        check = tf.debugging.assert_equal(
            tf.shape(images)[1:3], tf.constant([size, size]),
            message=(f"this export takes {size}x{size} images only (a ViT: its position "
                     f"embeddings fix the number of patches); resize the images to {size}"),
        )
        with tf.control_dependencies([check]):
            return tf.identity(images)

    def logits(self, embedding, training):
        features = self.model.head_input(embedding)
        if self.linear_head is not None:
            return self.linear_head(features, training=training)
        # The online head's weights, without the model's stop_gradient, so that
        # fine-tuning the classifier export also trains the encoder.
        return self.model.classifier(features, training=training)

    def used_layers(self, output):
        """The layers whose variables the export returning `output` uses."""
        classifier = self.linear_head if self.linear_head is not None else self.model.classifier
        return {
            "embedding": [self.model.encoder],
            "projection": [self.model.encoder, self.model.projection_head],
            "logits": [self.model.encoder, classifier],
        }[output]


def takes_any_image_size(encoder):
    """True for a ResNet encoder (fully convolutional, then global average pooling),
    False for a ViT, whose learned position embeddings fix the number of patches."""
    return encoder.name not in models.VIT_CONFIGS


def input_shape(encoder, image_size):
    """The exported images' shape: [None, None, None, 3] (any batch, H and W) where the
    encoder takes any size, else [None, image_size, image_size, 3]."""
    side = None if takes_any_image_size(encoder) else int(image_size)
    return [None, side, side, 3]


def image_size_info(encoder, image_size):
    """export_info.json's entries on the input size (see the module docstring)."""
    shape = input_shape(encoder, image_size)
    if shape[1] is None:
        note = (f"any H and W: the encoder is fully convolutional; it was trained on "
                f"{image_size}x{image_size} images, the recommended size")
    else:
        note = (f"H = W = {image_size} only: the ViT's position embeddings fix the number "
                "of patches; resize images to this size")
    return {"recommended_image_size": int(image_size), "input_shape": shape,
            "image_size_note": note}


class HubModule(tf.Module):
    """One Reusable SavedModel: `__call__` returns output ("embedding", "projection"
    or "logits") and `serve` returns all three."""

    # tf.Module computes these as properties; the Reusable SavedModel API needs them
    # as saved attributes listing exactly the variables __call__ uses.
    variables = None
    trainable_variables = None

    def __init__(self, forward_passes, output):
        super().__init__(name=f"supcon_{output}")
        if output not in ("embedding", "projection", "logits"):
            raise ValueError(f"output={output!r}: must be 'embedding', 'projection' or 'logits'")
        self._forward = forward_passes
        self._output = output
        used_layers = forward_passes.used_layers(output)
        # TF Hub consumers (tf_keras) need the tf.Variables, not Keras 3's wrappers.
        self.variables = [v.value for layer in used_layers for v in layer.variables]
        self.trainable_variables = [
            v.value for layer in used_layers for v in layer.trainable_variables
        ]
        # Weight decay lives in the optimizer, so the model has no loss terms to export.
        self.regularization_losses = []
        # `serve` reads every variable, and saving needs them all tracked.
        serving_layers = [forward_passes.model] + (
            [forward_passes.linear_head] if forward_passes.linear_head is not None else []
        )
        self._serving_variables = [v.value for layer in serving_layers for v in layer.variables]

    @tf.function
    def __call__(self, images, training=False):
        if not isinstance(training, bool):
            raise TypeError(
                f"training must be a Python bool, got {training!r}; "
                "use tf.cond or smart_cond to pick between the two traced calls"
            )
        forward = self._forward
        if self._output == "embedding":
            return forward.embedding[training](images)
        if self._output == "projection":
            return forward.outputs[training](images)["projection"]
        return forward.logits(forward.embedding[training](images), training)

    @tf.function
    def serve(self, images):
        outputs = self._forward.outputs[False](images)
        if self._forward.linear_head is not None:
            outputs = dict(outputs, logits=self._forward.logits(outputs["embedding"], False))
        return {key: outputs[key] for key in ("embedding", "projection", "logits")}

    def traced_functions(self):
        """Traces `__call__` for both training values and returns the serving signature."""
        image_spec = self._forward.image_spec
        for training in (False, True):
            self.__call__.get_concrete_function(image_spec, training=training)
        return self.serve.get_concrete_function(image_spec)


def save_hub_module(module, path):
    """Writes one HubModule to path as a SavedModel (no atomicity: see export_models)."""
    serving = module.traced_functions()
    tf.saved_model.save(module, path, signatures={"serving_default": serving})


def export_models(model, export_dir, *, image_size, linear_head=None, overwrite=False, info=None):
    """Writes encoder/, projection/ and classifier/ SavedModels into export_dir atomically.

    Everything is written to a temporary sibling directory which is then renamed
    to export_dir, so readers never see a half-written export. An existing,
    non-empty export_dir is only replaced when overwrite=True. info, if given,
    is written as export_dir/export_info.json.
    """
    export_dir = export_dir.rstrip("/")
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir) and not overwrite:
        raise FileExistsError(
            f"export_dir {export_dir} already exists and is not empty; "
            "pass overwrite=True (--overwrite) to replace it"
        )
    outputs = {"encoder": "embedding", "projection": "projection", "classifier": "logits"}
    forward_passes = ForwardPasses(model, image_size=image_size, linear_head=linear_head)
    tmp_dir = f"{export_dir}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        tf.io.gfile.makedirs(tmp_dir)
        for name in EXPORT_NAMES:
            save_hub_module(
                HubModule(forward_passes, outputs[name]), posixpath.join(tmp_dir, name)
            )
        if info is not None:
            with tf.io.gfile.GFile(posixpath.join(tmp_dir, EXPORT_INFO_FILE), "w") as f:
                json.dump(info, f, indent=2, sort_keys=True)
        _replace_dir(tmp_dir, export_dir)
    finally:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
    return export_dir


def _replace_dir(new_dir, target_dir):
    """Moves new_dir to target_dir, removing whatever was at target_dir."""
    if not tf.io.gfile.exists(target_dir):
        tf.io.gfile.rename(new_dir, target_dir)
        return
    # Move the old export aside first so a failure never leaves target_dir missing
    # both the old and the new export.
    old_dir = f"{target_dir}.old-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.rename(target_dir, old_dir)
    tf.io.gfile.rename(new_dir, target_dir)
    tf.io.gfile.rmtree(old_dir)


def read_workdir_config(workdir):
    """Loads workdir/config.json as a ConfigDict (with top-level num_classes)."""
    path = posixpath.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: --workdir must be a training workdir written by main.py"
        )
    with tf.io.gfile.GFile(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "num_classes" not in config:
        raise ValueError(
            f"{path} has no top-level num_classes; it is written by training, "
            "so re-run main.py or add num_classes to the file"
        )
    return config


def build_from_config(config):
    """Builds the ContrastiveModel described by a workdir config, with its variables created."""
    image_size = config.data.image_size
    model = models.build_model(
        config.model, num_classes=config.num_classes, image_size=image_size
    )
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
    return model


def restore(checkpoint_path, *, what, **objects):
    """Restores objects from checkpoint_path, failing clearly if they do not match it."""
    try:
        status = tf.train.Checkpoint(**objects).restore(checkpoint_path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # The optimizer and other training state are not needed.
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(
            f"checkpoint {checkpoint_path} does not match the {what} ({detail})"
        ) from e


def latest_checkpoint(directory, *, what):
    """The newest checkpoint in directory, or a clear error if there is none."""
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {directory}: {what}")
    return path


def restore_from_workdir(workdir, *, checkpoint=None):
    """The trained model of a workdir: (config, model, its checkpoint, stage two's linear
    head or None, that head's checkpoint or None).

    checkpoint defaults to the latest one in workdir/checkpoints; stage two ran if it
    left a checkpoint, and its head then gives the logits.
    """
    config = read_workdir_config(workdir)
    if checkpoint is None:
        checkpoint = latest_checkpoint(
            posixpath.join(workdir, "checkpoints"),
            what="train first (python main.py --workdir=...) or pass --checkpoint",
        )
    elif not tf.io.gfile.exists(f"{checkpoint}.index"):
        raise FileNotFoundError(
            f"--checkpoint {checkpoint} not found: give a prefix like {workdir}/checkpoints/ckpt-N"
        )
    model = build_from_config(config)
    restore(checkpoint, what=f"model built from {workdir}/config.json", model=model)
    linear_checkpoint = tf.train.latest_checkpoint(posixpath.join(workdir, "linear"))
    linear_head = None
    if linear_checkpoint is not None:
        linear_head = models.linear_head(config.num_classes, init=config.model.classifier_init)
        linear_head.build((None, model.encoder.output_shape[-1]))
        restore(
            linear_checkpoint, what=f"linear head for num_classes={config.num_classes}",
            head=linear_head,
        )
    return config, model, checkpoint, linear_head, linear_checkpoint


def export_from_workdir(workdir, export_dir, *, checkpoint=None, overwrite=False):
    """Restores the trained model in workdir and exports it to export_dir.

    checkpoint defaults to the latest one in workdir/checkpoints. Returns the
    export info dict (also written to export_dir/export_info.json).
    """
    config, model, checkpoint, linear_head, linear_checkpoint = restore_from_workdir(
        workdir, checkpoint=checkpoint)
    info = {
        "config": config.to_dict(),
        "checkpoint": checkpoint,
        "classifier_head": "linear" if linear_head is not None else "online",
        "linear_checkpoint": linear_checkpoint,
        "image_size": config.data.image_size,  # the training size
        **image_size_info(model.encoder, config.data.image_size),
        "num_classes": config.num_classes,
        "class_names": list(config.get("class_names", [])),
        "exports": list(EXPORT_NAMES),
    }
    export_models(
        model, export_dir, image_size=config.data.image_size,
        linear_head=linear_head, overwrite=overwrite, info=info,
    )
    return info


def read_export_info(export_dir):
    """The export_info.json that export_from_workdir wrote into export_dir."""
    path = posixpath.join(export_dir, EXPORT_INFO_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: export_dir must come from export_hub.py"
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
