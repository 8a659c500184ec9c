"""Tests for supcon_tf.models: encoders, heads and ContrastiveModel."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy

from supcon_tf import models
from supcon_tf.models import resnet as resnet_lib

# Trainable parameters at 224x224, width 1, without classifier or projection: the
# torchvision ResNets minus their 1000-way fc (2048*1000 + 1000 or 512*1000 + 1000),
# and ViT-B/16 minus its 768*1000 + 1000 head.
EXPECTED_PARAMS_224 = {
    "resnet18": 11_689_512 - 513_000,
    "resnet50": 23_508_032,
    "resnet101": 42_500_160,
    "resnet152": 58_143_808,
    "vit_b16": 85_798_656,
}


def _num_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _small_resnet(**kwargs):
    kwargs = {"image_size": 8, "cifar_stem": True, "width_multiplier": 0.25, **kwargs}
    return models.encoder("resnet18", **kwargs)


def _images(n, size, seed=0):
    return tf.random.stateless_uniform((n, size, size, 3), seed=(seed, 1))


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------- encoders


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_224))
def test_parameter_counts_at_224(name):
    encoder = models.encoder(name, image_size=224)
    assert _num_trainable(encoder) == EXPECTED_PARAMS_224[name]
    expected_dim = {"resnet18": 512, "vit_b16": 768}.get(name, 2048)
    assert encoder.output_shape == (None, expected_dim)


def test_vit_b16_count_matches_its_formula():
    # Independent of torchvision: patch conv, class token, 197 positions, 12 blocks, final LN.
    hidden, mlp, layers, tokens = 768, 3072, 12, (224 // 16) ** 2 + 1
    block = 2 * 2 * hidden + 4 * (hidden * hidden + hidden) + 2 * hidden * mlp + mlp + hidden
    patches = 16 * 16 * 3 * hidden + hidden
    expected = patches + hidden + tokens * hidden + layers * block + 2 * hidden
    assert expected == EXPECTED_PARAMS_224["vit_b16"]


@pytest.mark.parametrize(
    "name,cifar_stem,width,dim",
    [
        ("resnet18", True, 0.25, 128),
        ("resnet34", False, 0.25, 128),
        ("resnet50", True, 0.25, 512),
        ("resnet200", False, 0.25, 512),
        ("vit_tiny", False, 1.0, 64),
        ("vit_b16", False, 1.0, 768),
    ],
)
def test_encoder_output_shapes_at_32(name, cifar_stem, width, dim):
    encoder = models.encoder(name, image_size=32, cifar_stem=cifar_stem, width_multiplier=width)
    r = encoder(_images(2, 32), training=False)
    assert r.shape == (2, dim)
    assert r.dtype == tf.float32
    assert np.all(np.isfinite(r.numpy()))


def test_resnet_stem_strides():
    # Spatial size before pooling: total stride 32 with the ImageNet stem, 8 with the CIFAR stem.
    for cifar_stem, expected in ((False, 1), (True, 4)):
        encoder = models.encoder("resnet18", image_size=32, cifar_stem=cifar_stem,
                                 width_multiplier=0.25)
        assert encoder.get_layer("stage4_block2_out").output.shape[1:3] == (expected, expected)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="resnet50.*vit_b16"):
        models.encoder("resnet51", image_size=32)
    with pytest.raises(ValueError, match="too small"):
        models.encoder("resnet50", image_size=16)
    with pytest.raises(ValueError, match="too small"):
        models.encoder("resnet18", image_size=4, cifar_stem=True)
    with pytest.raises(ValueError, match="patch size 16"):
        models.encoder("vit_b16", image_size=40)
    with pytest.raises(ValueError, match="width_multiplier"):
        models.encoder("vit_tiny", image_size=32, width_multiplier=0.5)
    with pytest.raises(ValueError, match="width_multiplier"):
        models.encoder("resnet18", image_size=32, width_multiplier=0.0)
    with pytest.raises(ValueError, match="projection_dims"):
        models.ContrastiveModel(_small_resnet(), projection_dims=(), num_classes=3)


def test_kernels_of_equal_shape_start_different():
    kernels = [layer.kernel.numpy() for layer in _small_resnet().layers
               if isinstance(layer, keras.layers.Conv2D)]
    for i, a in enumerate(kernels):
        for b in kernels[i + 1:]:
            assert a.shape != b.shape or not np.array_equal(a, b)


def test_zero_init_last_bn_makes_blocks_start_as_identity():
    encoder = _small_resnet(zero_init_last_bn=True)
    last_bns = [layer for layer in encoder.layers if layer.name.endswith("_2_bn")]
    assert len(last_bns) == sum(resnet_lib.RESNET_DEPTHS[18][1])
    assert all(np.all(layer.gamma.numpy() == 0) for layer in last_bns)
    # Stage 1 keeps the shape, so its blocks have identity shortcuts: a zero residual
    # branch makes each block output relu(input) = input (the input is already post-ReLU).
    probe = keras.Model(
        encoder.input,
        [encoder.get_layer("stem_relu").output, encoder.get_layer("stage1_block2_out").output],
    )
    stem, block_out = probe(_images(2, 8), training=False)
    np.testing.assert_allclose(block_out, stem, atol=1e-6)

    encoder = _small_resnet(zero_init_last_bn=False)
    assert all(
        np.all(layer.gamma.numpy() == 1) for layer in encoder.layers if layer.name.endswith("_bn")
    )


def test_batch_norm_training_and_inference():
    encoder = _small_resnet()
    x = _images(6, 8)
    conv = keras.Model(encoder.input, encoder.get_layer("stem_conv").output)(x).numpy()
    bn_layer = encoder.get_layer("stem_bn")
    bn = keras.Model(encoder.input, bn_layer.output)
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    eps, momentum = resnet_lib.BN_EPSILON, resnet_lib.BN_MOMENTUM

    # Training: batch statistics normalize, and the moving averages take one step.
    y_train = bn(x, training=True).numpy()
    np.testing.assert_allclose(y_train, (conv - mean) / np.sqrt(var + eps), rtol=1e-4, atol=1e-4)
    moving_mean, moving_var = (1 - momentum) * mean, momentum + (1 - momentum) * var
    np.testing.assert_allclose(bn_layer.moving_mean.numpy(), moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn_layer.moving_variance.numpy(), moving_var, rtol=1e-5)

    # Inference: moving statistics normalize, and they stay put.
    y_eval = bn(x, training=False).numpy()
    np.testing.assert_allclose(
        y_eval, (conv - moving_mean) / np.sqrt(moving_var + eps), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(bn_layer.moving_mean.numpy(), moving_mean, rtol=1e-5, atol=1e-6)

    # Whole encoder: in inference an example's r ignores the rest of the batch; in training not.
    alone_eval = encoder(x[:1], training=False).numpy()
    np.testing.assert_allclose(encoder(x, training=False)[:1], alone_eval, rtol=1e-4, atol=1e-5)
    assert not np.allclose(encoder(x, training=True)[:1], encoder(x[:2], training=True)[:1],
                           atol=1e-3)


def test_sync_bn_matches_one_device_with_the_global_batch():
    strategy = mirrored_strategy(2)
    with strategy.scope():
        synced = _small_resnet(sync_bn=True, zero_init_last_bn=False)
    reference = _small_resnet(zero_init_last_bn=False)
    reference.set_weights(synced.get_weights())

    # Two halves with very different statistics, so per-replica BN would differ visibly.
    x = tf.concat([_images(4, 8, seed=1), 0.2 * _images(4, 8, seed=2) + 0.7], axis=0)
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: x[4 * context.replica_id_in_sync_group:][:4]
    )

    @tf.function
    def replicated_forward(images):
        return strategy.run(lambda batch: synced(batch, training=True), args=(images,))

    synced_out = tf.concat(strategy.experimental_local_results(replicated_forward(halves)), 0)
    global_out = reference(x, training=True)
    np.testing.assert_allclose(synced_out, global_out, rtol=1e-3, atol=1e-4)
    # Negative control: statistics of each half alone give a different answer.
    per_half = tf.concat([reference(x[:4], training=True), reference(x[4:], training=True)], 0)
    assert not np.allclose(per_half, global_out, rtol=1e-3, atol=1e-4)

    # Moving averages after one step equal the global-batch ones (the reference took two
    # more steps on the halves, so compare against a fresh single global step).
    reference.set_weights(_initial_weights_like(synced))
    reference(x, training=True)
    for layer_name in ("stem_bn", "stage3_block1_2_bn", "stage4_block2_1_bn"):
        for stat in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                getattr(synced.get_layer(layer_name), stat).numpy(),
                getattr(reference.get_layer(layer_name), stat).numpy(),
                rtol=1e-3, atol=1e-5, err_msg=f"{layer_name}.{stat}",
            )


def _initial_weights_like(trained):
    """trained's weights with every BN moving average back at its initial value (0 and 1)."""
    weights = []
    for variable in trained.weights:
        value = variable.numpy()
        if "moving_mean" in variable.path:
            value = np.zeros_like(value)
        elif "moving_variance" in variable.path:
            value = np.ones_like(value)
        weights.append(value)
    return weights


# ---------------------------------------------------------------------- ContrastiveModel


def test_contrastive_model_outputs_follow_the_paper():
    encoder = _small_resnet()
    model = models.ContrastiveModel(encoder, projection_dims=(16, 8), num_classes=5)
    assert model.encoder is encoder
    x = _images(4, 8)
    out = model(x, training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "embedding": (4, 128), "projection": (4, 8), "logits": (4, 5)
    }
    r = encoder(x, training=False).numpy()
    np.testing.assert_allclose(out["embedding"], r, rtol=1e-5, atol=1e-6)

    # z = normalize(W2 relu(W1 normalize(r) + b1) + b2), computed here with numpy.
    (w1, b1), (w2, b2) = [layer.get_weights() for layer in model.projection_head.layers
                          if isinstance(layer, keras.layers.Dense)]
    unit_r = r / np.linalg.norm(r, axis=1, keepdims=True)
    z = np.maximum(unit_r @ w1 + b1, 0) @ w2 + b2
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(out["projection"], z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["projection"], axis=1), 1.0, rtol=1e-5)

    kernel, bias = model.classifier.get_weights()
    np.testing.assert_allclose(out["logits"], r @ kernel + bias, rtol=1e-4, atol=1e-5)


def test_projection_bn_adds_batch_norm_after_hidden_layers():
    model = models.ContrastiveModel(
        _small_resnet(), projection_dims=(32, 16, 8), num_classes=3, projection_bn=True
    )
    kinds = [type(layer).__name__ for layer in model.projection_head.layers]
    assert kinds == ["Dense", "BatchNormalization", "ReLU"] * 2 + ["Dense"]
    assert not model.projection_head.layers[0].use_bias
    z = model(_images(4, 8), training=True)["projection"]
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_classifier_loss_leaves_the_encoder_untouched():
    model = models.ContrastiveModel(_small_resnet(), projection_dims=(16, 8), num_classes=4)
    # A non-zero classifier, so that without stop_gradient the encoder would get a gradient.
    kernel = model.classifier.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, (3, 4)))
    x, labels = _images(4, 8), tf.constant([0, 1, 2, 3])
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)
        classifier_loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, out["logits"])
        )
        projection_loss = tf.reduce_sum(out["projection"] * tf.range(8, dtype=tf.float32))
    for grad in tape.gradient(classifier_loss, model.encoder.trainable_variables):
        assert grad is None or not np.any(grad.numpy())
    assert all(np.any(g.numpy()) for g in tape.gradient(classifier_loss,
                                                          model.classifier.trainable_variables))
    # The projection loss does train the encoder.
    encoder_grads = tape.gradient(projection_loss, model.encoder.trainable_variables)
    assert any(g is not None and np.any(g.numpy()) for g in encoder_grads)


def test_xla_forward_and_backward_match_eager():
    model = models.ContrastiveModel(_small_resnet(), projection_dims=(16, 8), num_classes=4)
    x = _images(4, 8)
    weights = tf.random.stateless_normal((4, 8), (5, 6))

    def loss_and_grads(images):
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            loss = tf.reduce_sum(out["projection"] * weights) + tf.reduce_sum(out["logits"])
        return loss, tape.gradient(loss, model.trainable_variables)

    xla_loss, xla_grads = tf.function(loss_and_grads, jit_compile=True)(x)
    eager_loss, eager_grads = loss_and_grads(x)
    np.testing.assert_allclose(xla_loss, eager_loss, rtol=1e-4)
    for variable, xla_grad, eager_grad in zip(model.trainable_variables, xla_grads, eager_grads):
        np.testing.assert_allclose(xla_grad, eager_grad, rtol=1e-3, atol=1e-4,
                                   err_msg=variable.path)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_mixed_bfloat16_outputs_are_float32(mixed_bfloat16, name):
    width = 0.25 if name.startswith("resnet") else 1.0
    encoder = models.encoder(name, image_size=32, width_multiplier=width)
    model = models.ContrastiveModel(encoder, projection_dims=(16, 8), num_classes=3)
    compute_dtypes = {layer.compute_dtype for layer in encoder.layers
                      if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))}
    assert compute_dtypes == {"bfloat16"}
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    x = _images(2, 32)
    out = model(x, training=True)
    assert {k: v.dtype for k, v in out.items()} == {k: tf.float32 for k in out}
    # The images reach the encoder unrounded, exactly as when calling it directly.
    np.testing.assert_array_equal(model(x, training=False)["embedding"],
                                  encoder(x, training=False))
    np.testing.assert_allclose(np.linalg.norm(out["projection"], axis=1), 1.0, rtol=1e-5)
    assert models.linear_head(3)(tf.ones((2, 4), tf.bfloat16)).dtype == tf.float32


def test_checkpoint_round_trip(tmp_path):
    def make():
        return models.ContrastiveModel(
            _small_resnet(), projection_dims=(16, 8), num_classes=3, projection_bn=True
        )

    source, target = make(), make()
    x = _images(3, 8)
    source(x, training=True)  # moves BN statistics away from their initial values
    assert not np.allclose(target(x, training=False)["embedding"],
                           source(x, training=False)["embedding"])
    path = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=target).read(path).assert_consumed()
    for key, value in source(x, training=False).items():
        np.testing.assert_allclose(target(x, training=False)[key], value, rtol=1e-5, atol=1e-6)


def test_build_model_reads_the_model_config():
    config = ml_collections.ConfigDict({
        "name": "resnet18", "width_multiplier": 0.25, "cifar_stem": True, "sync_bn": False,
        "zero_init_last_bn": False, "projection_dims": (32, 8), "projection_bn": True,
    })
    model = models.build_model(config, num_classes=7, image_size=8)
    assert model.encoder.name == "resnet18"
    assert model.encoder.output_shape == (None, 128)
    assert model.encoder.get_layer("stem_conv").kernel.shape == (3, 3, 3, 16)
    out = model(_images(2, 8), training=False)
    assert out["projection"].shape == (2, 8) and out["logits"].shape == (2, 7)
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in model.projection_head.layers)
    assert np.all(model.encoder.get_layer("stage1_block1_2_bn").gamma.numpy() == 1)
