"""ContrastiveModel: encoder + projection head + online linear classifier."""

import keras
import tensorflow as tf

from supcon_tf.models import heads


class ContrastiveModel(keras.Model):
    """images [N, H, W, 3] in [0, 1] -> {"embedding": r, "projection": z, "logits": logits}.

    - embedding: the encoder's pooled representation r [N, De], as it leaves the
      encoder (not normalized). This is what export and linear evaluation use.
    - projection: z = normalize(Proj(normalize(r))) [N, Dp]. As in the paper, r is
      put on the unit hypersphere before the projection head, and z is
      L2-normalized again; the contrastive loss sees only z.
    - logits: a linear classifier on tf.stop_gradient(r) [N, num_classes], so it
      trains alongside the encoder (online linear evaluation) without changing it.

    All three outputs are float32, also under keras.mixed_precision "mixed_bfloat16".
    Pass `training` as a Python bool (Keras 3 batch norm branches on it in Python).
    Every variable exists once the constructor returns, so optimizers and
    checkpoints can be built before the first step.
    """

    def __init__(self, encoder, projection_dims=(2048, 128), *, num_classes, projection_bn=False,
                 **kwargs):
        # autocast=False: under mixed precision the images reach the encoder in float32
        # (its input standardization runs in float32), not pre-rounded to bfloat16.
        super().__init__(autocast=False, **kwargs)
        self.encoder = encoder
        self.projection_head = heads.projection_head(projection_dims, use_bn=projection_bn)
        self.classifier = heads.linear_head(num_classes)
        embedding_shape = (None, encoder.output_shape[-1])
        self.projection_head.build(embedding_shape)
        self.classifier.build(embedding_shape)
        self.built = True

    def call(self, images, training=False):
        r = tf.cast(self.encoder(images, training=training), tf.float32)
        z = self.projection_head(tf.math.l2_normalize(r, axis=-1), training=training)
        z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
        logits = tf.cast(self.classifier(tf.stop_gradient(r)), tf.float32)
        return {"embedding": r, "projection": z, "logits": logits}

