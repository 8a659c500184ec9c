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
# torchvision ResNets (and TF-slim's resnet_v1_200, 64,673,832) minus their 1000-way fc
# (2048*1000 + 1000 or 512*1000 + 1000), and ViT-B/16 minus its 768*1000 + 1000 head.
EXPECTED_PARAMS_224 = {
    "resnet18": 11_689_512 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    "resnet152": 60_192_808 - 2_049_000,
    "resnet200": 64_673_832 - 2_049_000,
    "vit_b16": 85_798_656,
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# TF1 truncated_normal keeps |x| < 2 sigma and divides sigma by this (scipy truncnorm std).
TRUNCATED_STD_RATIO = 0.87962566103423978


def _num_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _small_resnet(**kwargs):
    kwargs = {"image_size": 8, "cifar_stem": True, "width_multiplier": 0.25, **kwargs}
    return models.encoder("resnet18", **kwargs)


def _images(n, size, seed=0):
    return tf.random.stateless_uniform((n, size, size, 3), seed=(seed, 1))


def _model_config(**overrides):
    """A tiny config.model slice with every schema field (GR SupCon ImageNet values)."""
    fields = {
        "name": "resnet18", "width_multiplier": 0.25, "cifar_stem": True, "sync_bn": False,
        "zero_init_last_bn": True, "conv_init": "fan_in_truncated_normal",
        "input_mean": (0.5, 0.5, 0.5), "input_std": (0.5, 0.5, 0.5),
        "projection_dims": (128,), "projection_bn": False, "projection_output_bias": False,
        "head_init": "normal_0.01", "normalize_embedding": True,
        "classifier_init": "glorot_uniform",
    }
    return ml_collections.ConfigDict({**fields, **overrides})


def _dense_layers(head):
    return [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]


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


def _bottleneck_resnet_params(stage_blocks):
    """Trainable parameters of a bias-free bottleneck ResNet v1 (BN gamma + beta), by arithmetic."""
    total, channels = 7 * 7 * 3 * 64 + 2 * 64, 64
    for stage, num_blocks in enumerate(stage_blocks):
        width = 64 * 2**stage
        for block in range(num_blocks):
            total += channels * width + 2 * width  # 1x1
            total += 9 * width * width + 2 * width  # 3x3
            total += width * 4 * width + 2 * 4 * width  # 1x1 to 4x
            if block == 0:
                total += channels * 4 * width + 2 * 4 * width  # projection shortcut
            channels = 4 * width
    return total


@pytest.mark.parametrize("depth", [50, 101, 152, 200])
def test_reference_counts_match_the_bottleneck_formula(depth):
    # Checks the published numbers in EXPECTED_PARAMS_224 (ResNet-200 has no
    # keras.applications twin) against the architecture, without building anything.
    stage_blocks = resnet_lib.RESNET_DEPTHS[depth][1]
    assert _bottleneck_resnet_params(stage_blocks) == EXPECTED_PARAMS_224[f"resnet{depth}"]


def test_resnet50_matches_keras_applications_and_describe():
    # keras.applications' ResNet50 has the same convolutions and BNs, plus a bias on
    # every convolution; without those biases the counts must agree.
    reference = keras.applications.ResNet50(include_top=False, weights=None,
                                            input_shape=(224, 224, 3))
    conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in reference.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    model = models.build_model(_model_config(name="resnet50", width_multiplier=1.0,
                                             cifar_stem=False), num_classes=1000, image_size=224)
    assert _num_trainable(model.encoder) == _num_trainable(reference) - conv_biases == 23_508_032
    description = models.describe_model(model)
    assert description["encoder_params"] == 23_508_032
    assert description["params"] == 23_508_032 + 2048 * 128  # the linear projection, no bias
    assert description["projection_head"] == "128 (no bias)"


def test_bottleneck_downsamples_in_its_3x3_convolution():
    encoder = models.encoder("resnet50", image_size=32, cifar_stem=True, width_multiplier=0.25)
    for block in ("stage2_block1", "stage3_block1", "stage4_block1"):
        assert encoder.get_layer(f"{block}_1_conv").strides == (1, 1)
        assert encoder.get_layer(f"{block}_2_conv").strides == (2, 2)
        assert encoder.get_layer(f"{block}_2_conv").kernel_size == (3, 3)
        assert encoder.get_layer(f"{block}_3_conv").strides == (1, 1)
        assert encoder.get_layer(f"{block}_proj_conv").strides == (2, 2)
    strided = [layer.name for layer in encoder.layers
               if isinstance(layer, keras.layers.Conv2D) and layer.strides != (1, 1)]
    assert sorted(strided) == sorted(
        f"stage{s}_block1_{c}_conv" for s in (2, 3, 4) for c in ("2", "proj")
    )
    # The 1x1 before the stride still sees the full grid; the 3x3 halves it.
    assert encoder.get_layer("stage2_block1_1_conv").output.shape[1:3] == (32, 32)
    assert encoder.get_layer("stage2_block1_2_conv").output.shape[1:3] == (16, 16)
    assert encoder.get_layer("stage4_block3_out").output.shape[1:] == (4, 4, 512)


def test_strided_convolutions_pad_like_gr_and_max_pool_is_same():
    encoder = models.encoder("resnet18", image_size=32, width_multiplier=0.25)
    x = _images(2, 32)

    def tensors(*names):
        return keras.Model(encoder.input, [encoder.get_layer(n).output for n in names])(x)

    # GR pads (k - 1) // 2 before and the rest after, then VALID. At an even size
    # tf's SAME pads (2, 3) for the 7x7 and (0, 1) for the 3x3, so it gives other values.
    for conv_input, conv_name, pad in (("standardize", "stem_conv", 3),
                                       ("stage1_block2_out", "stage2_block1_1_conv", 1)):
        inputs, output = tensors(conv_input, conv_name)
        kernel = encoder.get_layer(conv_name).kernel
        padded = tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        np.testing.assert_allclose(output, tf.nn.conv2d(padded, kernel, 2, "VALID"),
                                   rtol=1e-5, atol=1e-5)
        assert not np.allclose(output, tf.nn.conv2d(inputs, kernel, 2, "SAME"), atol=1e-3)

    # 3x3/2 SAME max-pool (GR): at 16 -> 8 the windows are rows 2i..2i+2, cut at the edge.
    relu, pooled = (t.numpy() for t in tensors("stem_relu", "stem_pool"))
    expected = np.stack([np.stack([relu[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
                                   for j in range(8)], 1) for i in range(8)], 1)
    np.testing.assert_array_equal(pooled, expected)


@pytest.mark.parametrize("conv_init", ["fan_in_truncated_normal", "fan_out_normal"])
def test_conv_init_statistics(conv_init):
    encoder = models.encoder("resnet50", image_size=32, cifar_stem=True, width_multiplier=0.5,
                             conv_init=conv_init)
    # fan_in != fan_out for both kernels, so each check tells the two modes apart.
    for name in ("stage4_block2_1_conv", "stage4_block2_2_conv"):  # 1x1x1024x256, 3x3x256x256
        kernel = encoder.get_layer(name).kernel.numpy()
        kh, kw, fan_in_channels, out_channels = kernel.shape
        assert abs(kernel.mean()) < 1e-3
        if conv_init == "fan_in_truncated_normal":
            std = np.sqrt(1.0 / (kh * kw * fan_in_channels))  # TF1 variance_scaling default
            bound = 2 * std / TRUNCATED_STD_RATIO
            assert 0.99 * bound < np.abs(kernel).max() <= bound * (1 + 1e-6)
        else:
            std = np.sqrt(2.0 / (kh * kw * out_channels))  # kaiming_normal_, fan_out, relu
            assert np.abs(kernel).max() > 4 * std  # untruncated: 1e5+ draws reach 4 sigma
        np.testing.assert_allclose(kernel.std(), std, rtol=0.01, err_msg=name)
    with pytest.raises(ValueError, match="conv_init"):
        models.encoder("resnet18", image_size=8, cifar_stem=True, conv_init="he_normal")


@pytest.mark.parametrize("zero_init_last_bn", [True, False])
def test_last_bn_gamma_of_every_bottleneck(zero_init_last_bn):
    encoder = models.encoder("resnet50", image_size=8, cifar_stem=True, width_multiplier=0.25,
                             zero_init_last_bn=zero_init_last_bn)
    bns = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    last = [layer for layer in bns if layer.name.endswith("_3_bn")]
    assert len(last) == sum(resnet_lib.RESNET_DEPTHS[50][1])
    for layer in bns:
        expected = 0.0 if layer in last and zero_init_last_bn else 1.0
        np.testing.assert_array_equal(layer.gamma.numpy(), expected, err_msg=layer.name)
        np.testing.assert_array_equal(layer.beta.numpy(), 0.0)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_input_normalization_uses_the_given_constants(name):
    width = 0.25 if name == "resnet18" else 1.0
    x = _images(2, 32)
    mean, std = np.array(CIFAR10_MEAN, np.float32), np.array(CIFAR10_STD, np.float32)
    for kwargs, (m, s) in (({}, (0.5, 0.5)),  # default: [0, 1] -> [-1, 1]
                           ({"input_mean": CIFAR10_MEAN, "input_std": CIFAR10_STD}, (mean, std))):
        encoder = models.encoder(name, image_size=32, width_multiplier=width, **kwargs)
        standardized = keras.Model(encoder.input, encoder.get_layer("standardize").output)(x)
        np.testing.assert_allclose(standardized, (x.numpy() - m) / s, rtol=1e-6, atol=1e-6)
    if name == "resnet18":
        # An image equal to the mean standardizes to zero, so the bias-free stem conv gives 0.
        stem = keras.Model(encoder.input, encoder.get_layer("stem_conv").output)
        np.testing.assert_allclose(stem(np.broadcast_to(mean, (1, 32, 32, 3))), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="input_std"):
        models.encoder(name, image_size=32, width_multiplier=width, input_std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="input_mean"):
        models.encoder(name, image_size=32, width_multiplier=width, input_mean=(0.5, 0.5))


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


@pytest.mark.parametrize("normalize_embedding", [True, False])
def test_contrastive_model_outputs_and_head_input(normalize_embedding):
    encoder = _small_resnet()
    model = models.ContrastiveModel(
        encoder, projection_dims=(16, 8), num_classes=5, projection_output_bias=True,
        head_init="pytorch_default", normalize_embedding=normalize_embedding,
    )
    assert model.encoder is encoder
    x = _images(4, 8)
    out = model(x, training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "embedding": (4, 128), "projection": (4, 8), "logits": (4, 5)
    }
    r = encoder(x, training=False).numpy()
    np.testing.assert_allclose(out["embedding"], r, rtol=1e-5, atol=1e-6)  # always raw

    # Both heads read h = r / |r| (GR normalize_embedding) or r itself, computed here by hand.
    h = r / np.linalg.norm(r, axis=1, keepdims=True) if normalize_embedding else r
    assert not np.allclose(np.linalg.norm(r, axis=1), 1.0)  # so the two settings differ
    np.testing.assert_allclose(model.head_input(r), h, rtol=1e-5, atol=1e-6)
    (w1, b1), (w2, b2) = [layer.get_weights() for layer in _dense_layers(model.projection_head)]
    z = np.maximum(h @ w1 + b1, 0) @ w2 + b2
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(out["projection"], z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["projection"], axis=1), 1.0, rtol=1e-5)
    kernel, bias = model.classifier.get_weights()
    np.testing.assert_allclose(out["logits"], h @ kernel + bias, rtol=1e-4, atol=1e-5)


# The official layouts (docs/recipes.md "Heads", SupContrast resnet_big.py):
# (projection_dims, projection_bn, projection_output_bias) -> layer kinds, Dense biases, describe.
OFFICIAL_HEADS = {
    "gr_supcon_imagenet": (((128,), False, False), ["Dense"], [False], "128 (no bias)"),
    "gr_simclr_imagenet": (
        ((2048, 2048, 128), True, False),
        ["Dense", "BatchNormalization", "ReLU"] * 2 + ["Dense"], [False] * 3,
        "2048-BN-ReLU-2048-BN-ReLU-128 (no bias)",
    ),
    "supcontrast": (((2048, 128), False, True), ["Dense", "ReLU", "Dense"], [True, True],
                    "2048-ReLU-128 (all biases)"),
    "gr_cifar": (((2048, 128), False, False), ["Dense", "ReLU", "Dense"], [True, False],
                 "2048-ReLU-128 (biases on hidden1)"),
}


@pytest.mark.parametrize("row", sorted(OFFICIAL_HEADS))
def test_projection_head_layouts(row):
    (dims, use_bn, output_bias), kinds, biases, description = OFFICIAL_HEADS[row]
    head = models.projection_head(dims, use_bn=use_bn, output_bias=output_bias)
    head.build((None, 64))
    assert [type(layer).__name__ for layer in head.layers] == kinds
    dense = _dense_layers(head)
    assert [layer.units for layer in dense] == list(dims)
    assert [layer.use_bias for layer in dense] == biases
    assert [layer.activation.__name__ for layer in dense] == ["linear"] * len(dims)
    for layer in head.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.center and layer.scale  # beta and gamma (GR use_batch_norm_beta)
            assert (layer.momentum, layer.epsilon) == (0.9, 1e-5)
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
    assert models.heads.describe_dense_stack(head) == description


def test_head_init_normal_0_01():
    head = models.projection_head((2048, 2048, 128), output_bias=True, init="normal_0.01")
    head.build((None, 512))
    dense = _dense_layers(head)
    for layer in dense:
        kernel = layer.kernel.numpy()
        np.testing.assert_allclose(kernel.std(), 0.01, rtol=0.01)
        assert abs(kernel.mean()) < 1e-4
        assert np.abs(kernel).max() > 0.04  # untruncated: 1e5+ draws reach 4 sigma
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    # Fresh initializers per layer: equal-shaped kernels differ.
    small = models.projection_head((64, 64, 8))
    small.build((None, 64))
    first, second, _ = _dense_layers(small)
    assert not np.array_equal(first.kernel.numpy(), second.kernel.numpy())


def test_head_init_pytorch_default():
    head = models.projection_head((1024, 64), output_bias=True, init="pytorch_default")
    head.build((None, 256))
    for layer, fan_in in zip(_dense_layers(head), (256, 1024)):
        bound = 1 / np.sqrt(fan_in)  # torch.nn.Linear: kaiming_uniform_(a=sqrt(5)) = U(+-bound)
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
        assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.8 * bound
    with pytest.raises(ValueError, match="head_init"):
        models.projection_head((8,), init="glorot_uniform")


def test_classifier_inits():
    fan_in, classes = 512, 100
    heads = {init: models.linear_head(classes, init=init)
             for init in ("glorot_uniform", "zeros", "pytorch_default")}
    for head in heads.values():
        head.build((None, fan_in))
        assert head.dtype_policy.compute_dtype == "float32"
    limit = np.sqrt(6 / (fan_in + classes))
    kernel = heads["glorot_uniform"].kernel.numpy()
    assert 0.99 * limit < np.abs(kernel).max() <= limit
    np.testing.assert_array_equal(heads["glorot_uniform"].bias.numpy(), 0.0)
    np.testing.assert_array_equal(heads["zeros"].kernel.numpy(), 0.0)
    np.testing.assert_array_equal(heads["zeros"].bias.numpy(), 0.0)
    bound = 1 / np.sqrt(fan_in)
    for weight in heads["pytorch_default"].get_weights():
        assert 0.9 * bound < np.abs(weight).max() <= bound
    with pytest.raises(ValueError, match="classifier_init"):
        models.linear_head(3, init="normal_0.01")


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


@pytest.mark.host_xla
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
    config = _model_config(
        zero_init_last_bn=False, conv_init="fan_out_normal", input_mean=CIFAR10_MEAN,
        input_std=CIFAR10_STD, projection_dims=(32, 8), projection_bn=True,
        projection_output_bias=True, head_init="pytorch_default", normalize_embedding=False,
        classifier_init="zeros",
    )
    model = models.build_model(config, num_classes=7, image_size=8)
    assert model.encoder.name == "resnet18"
    assert model.encoder.output_shape == (None, 128)
    assert model.encoder.get_layer("stem_conv").kernel.shape == (3, 3, 3, 16)
    out = model(_images(2, 8), training=False)
    assert out["projection"].shape == (2, 8) and out["logits"].shape == (2, 7)
    assert np.all(model.encoder.get_layer("stage1_block1_2_bn").gamma.numpy() == 1)
    assert model.encoder.get_layer("standardize").mean == CIFAR10_MEAN
    assert model.encoder.get_layer("standardize").std == CIFAR10_STD
    assert not model.normalize_embedding
    assert all(isinstance(layer, models.heads.TorchDefaultDense)
               for layer in _dense_layers(model.projection_head))
    assert not model.projection_head.get_layer("hidden1_bn").synchronized
    synced = models.build_model(_model_config(sync_bn=True, projection_dims=(32, 8),
                                              projection_bn=True), num_classes=7, image_size=8)
    assert synced.projection_head.get_layer("hidden1_bn").synchronized  # GR: global BN here too
    assert synced.encoder.get_layer("stem_bn").synchronized
    np.testing.assert_array_equal(model.classifier.kernel.numpy(), 0.0)
    assert models.describe_model(model) == {
        "params": _num_trainable(model.encoder) + 128 * 32 + 2 * 32 + 32 * 8 + 8,
        "encoder_params": _num_trainable(model.encoder),
        "projection_params": 128 * 32 + 2 * 32 + 32 * 8 + 8,
        "classifier_params": 128 * 7 + 7,
        "embedding_dim": 128,
        "projection_head": "32-BN-ReLU-8 (biases on output)",
        "head_init": "pytorch_default",
        "normalize_embedding": False,
        "classifier": "Dense(7) on stop_gradient(raw r), zeros init",
        "conv_init": "fan_out_normal",
        "zero_init_last_bn": False,
    }
    # The kaiming fan_out init reached the encoder (std sqrt(2 / fan_out), fan_out = 3*3*128).
    stage_kernel = model.encoder.get_layer("stage4_block1_1_conv").kernel.numpy()
    np.testing.assert_allclose(stage_kernel.std(), np.sqrt(2 / (9 * 128)), rtol=0.05)
