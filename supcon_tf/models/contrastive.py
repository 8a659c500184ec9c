"""ContrastiveModel: encoder + projection head + online linear classifier."""

import keras
import numpy as np
import tensorflow as tf

from supcon_tf.models import heads


class ContrastiveModel(keras.Model):
    """images [N, H, W, 3] in [0, 1] -> {"embedding": r, "projection": z, "logits": logits}.

    - embedding: the encoder's pooled representation r [N, De], as it leaves the
      encoder (not normalized). This is what export and linear evaluation use.
    - projection: z = normalize(Proj(head_input(r))) [N, Dp]; the contrastive loss
      sees only z.
    - logits: classifier(stop_gradient(head_input(r))) [N, num_classes], so the
      classifier trains alongside the encoder (online linear evaluation) without
      changing it.

    head_input(r) is normalize(r) when normalize_embedding (GR: one flag for both
    heads), else r itself (SupContrast; GR's CIFAR, SimCLR and CE rows). A
    separately built stage-two classifier must read head_input(r) too.

    All three outputs are float32, also under keras.mixed_precision "mixed_bfloat16".
    Pass `training` as a Python bool (Keras 3 batch norm branches on it in Python).
    Every variable exists once the constructor returns, so optimizers and
    checkpoints can be built before the first step. sync_bn applies to the
    projection head's BN (the encoder gets its own). The defaults are GR's flag
    defaults (hparams_flags.py).
    """

    def __init__(self, encoder, projection_dims=(2048, 128), *, num_classes, projection_bn=False,
                 projection_output_bias=False, head_init="normal_0.01",
                 normalize_embedding=True, classifier_init="glorot_uniform", sync_bn=False,
                 **kwargs):
        # autocast=False: under mixed precision the images reach the encoder in float32
        # (its input standardization runs in float32), not pre-rounded to bfloat16.
        super().__init__(autocast=False, **kwargs)
        self.encoder = encoder
        self.normalize_embedding = bool(normalize_embedding)
        self.head_init = head_init
        self.classifier_init = classifier_init
        self.projection_head = heads.projection_head(
            projection_dims, use_bn=projection_bn, output_bias=projection_output_bias,
            init=head_init, sync_bn=sync_bn,
        )
        self.classifier = heads.linear_head(num_classes, init=classifier_init)
        embedding_shape = (None, encoder.output_shape[-1])
        self.projection_head.build(embedding_shape)
        self.classifier.build(embedding_shape)
        self.built = True

    def head_input(self, embedding):
        """What both heads read: L2-normalized r if normalize_embedding, else r (float32)."""
        embedding = tf.cast(embedding, tf.float32)
        if self.normalize_embedding:
            return tf.math.l2_normalize(embedding, axis=-1)
        return embedding

    def call(self, images, training=False):
        r = tf.cast(self.encoder(images, training=training), tf.float32)
        head_input = self.head_input(r)
        z = self.projection_head(head_input, training=training)
        z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
        logits = tf.cast(self.classifier(tf.stop_gradient(head_input)), tf.float32)
        return {"embedding": r, "projection": z, "logits": logits}


def _num_params(layer):
    return int(sum(np.prod(v.shape) for v in layer.trainable_variables))


def describe_model(model):
    """A ContrastiveModel's architecture as a JSON-friendly dict (for --mode=describe).

    params counts the trainable encoder and projection-head parameters (the
    paper's model, without the classifier); conv_init and zero_init_last_bn are
    None for encoders without them (ViTs).
    """
    classifier = model.classifier
    head_input = "L2-normalized r" if model.normalize_embedding else "raw r"
    return {
        "params": _num_params(model.encoder) + _num_params(model.projection_head),
        "encoder_params": _num_params(model.encoder),
        "projection_params": _num_params(model.projection_head),
        "classifier_params": _num_params(classifier),
        "embedding_dim": int(model.encoder.output_shape[-1]),
        "projection_head": heads.describe_dense_stack(model.projection_head),
        "head_init": model.head_init,
        "normalize_embedding": model.normalize_embedding,
        "classifier": (f"Dense({classifier.units}) on stop_gradient({head_input}), "
                       f"{model.classifier_init} init"),
        "conv_init": getattr(model.encoder, "conv_init", None),
        "zero_init_last_bn": getattr(model.encoder, "zero_init_last_bn", None),
    }
