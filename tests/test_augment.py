"""Each augmentation alone, eagerly and inside tf.data, against numpy references and invariants."""

import math

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import host_xla
from supcon_tf.data import augment
from supcon_tf.data import views as views_lib

SEED = tf.constant([7, 11], tf.int32)


@pytest.fixture(params=[pytest.param(True, id="xla", marks=pytest.mark.host_xla),
                        pytest.param(False, id="graph")])
def compiled(request, monkeypatch):
    """Runs a test with the fused photometry and blur compiled by XLA, then as plain graphs.

    The XLA case (marked host_xla) skips under the TPU wheel, which has only the graph path.
    """
    monkeypatch.setattr(augment, "HOST_XLA", request.param)
    return request.param


def _ramp_image(height, width):
    """uint8 [H, W, 3] whose pixels all differ, so any crop or flip shows."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([(3 * y) % 256, (5 * x) % 256, (y + 7 * x) % 256], axis=-1).astype(np.uint8)


def _random_images(n, size=16, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(n, size, size, 3)), tf.float32)


def _in_dataset(fn, *args):
    """fn(*args) computed inside a tf.data map."""
    dataset = tf.data.Dataset.from_tensors(args).map(fn)
    return next(iter(dataset))


def test_crop_windows_follow_the_official_area_aspect_and_coverage():
    shape = tf.constant([120, 160, 3])
    areas, aspects = [], []
    for salt in range(60):
        windows = augment.sample_crop_windows(shape, augment.fold_seed(SEED, salt), num_views=2,
                                              area_range=(0.08, 1.0)).numpy()
        for top, left, height, width in windows:
            assert top >= 0 and left >= 0 and top + height <= 120 and left + width <= 160
            areas.append(height * width / (120 * 160))
            aspects.append(width / height)
    areas, aspects = np.array(areas), np.array(aspects)
    # min_object_covered 0.1 lifts the 0.08 floor to 0.1 of the image.
    assert areas.min() >= 0.1 - 0.01 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.95 and aspects.max() <= 1.33 * 1.05
    assert areas.std() > 0.1  # really random, not a fixed crop


def test_crop_window_falls_back_to_the_centred_square():
    # No window of a 1:4 image has an aspect ratio in [0.75, 1.33] and 99% of its area.
    windows = augment.sample_crop_windows(tf.constant([10, 40, 3]), SEED, num_views=2,
                                          area_range=(0.99, 1.0)).numpy()
    np.testing.assert_array_equal(windows, [[0, 15, 10, 10]] * 2)


def test_resized_crops_are_exact_slices_at_their_own_size():
    image = _ramp_image(20, 30)
    windows = tf.constant([[3, 5, 12, 12], [0, 10, 12, 12]])
    views = augment.resized_crops(image, windows, 12).numpy()
    np.testing.assert_array_equal(views[0], image[3:15, 5:17].astype(np.float32))
    np.testing.assert_array_equal(views[1], image[0:12, 10:22].astype(np.float32))
    upscaled = augment.resized_crops(image, windows[:1], 24).numpy()[0]
    expected = tf.image.resize(image[3:15, 5:17], [24, 24]).numpy()
    np.testing.assert_allclose(upscaled, expected, atol=1e-4)


def test_jpeg_partial_decode_matches_full_decode_then_crop():
    image = _ramp_image(64, 96)
    encoded = tf.io.encode_jpeg(image, quality=95)
    decoded = tf.io.decode_jpeg(encoded, channels=3)
    options = dict(num_views=3, size=16, area_range=(0.08, 1.0))
    from_jpeg = augment.decode_jpeg_crop_views(encoded, SEED, **options)
    from_pixels = augment.random_resized_crop_views(decoded, SEED, **options)
    np.testing.assert_allclose(from_jpeg.numpy(), from_pixels.numpy(), atol=3)
    in_dataset = _in_dataset(
        lambda e, s: augment.decode_jpeg_crop_views(e, s, **options), encoded, SEED)
    np.testing.assert_array_equal(in_dataset.numpy(), from_jpeg.numpy())


def _numpy_bilinear(image, height, width):
    """Bilinear resize with half-pixel centres (tf.image.resize's convention), in float64."""
    def axis_weights(size_in, size_out):
        src = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, None)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, size_in - 1), src - low

    x = image.astype(np.float64)
    top, bottom, fy = axis_weights(image.shape[0], height)
    left, right, fx = axis_weights(image.shape[1], width)
    rows = x[top] * (1 - fy)[:, None, None] + x[bottom] * fy[:, None, None]
    return rows[:, left] * (1 - fx)[None, :, None] + rows[:, right] * fx[None, :, None]


@pytest.mark.parametrize("height,width,size", [(30, 50, 21), (90, 60, 56), (12, 20, 28)])
def test_eval_resizes_the_shorter_side_then_takes_the_centre(height, width, size):
    image = _ramp_image(height, width)
    short = size + 32  # the official crop_padding
    scale = np.float32(short) / np.float32(min(height, width))
    new_h, new_w = int(scale * np.float32(height)), int(scale * np.float32(width))
    assert min(new_h, new_w) == short
    resized = _numpy_bilinear(image, new_h, new_w)
    top, left = (new_h - size + 1) // 2, (new_w - size + 1) // 2
    expected = resized[top:top + size, left:left + size] / 255.0
    out = augment.resize_then_center_crop(tf.constant(image), size).numpy()
    assert out.shape == (size, size, 3)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # Through the eval pipeline's JPEG path, decoding the whole image first.
    encoded = tf.io.encode_jpeg(image, quality=100)
    decoded = tf.io.decode_jpeg(encoded).numpy()
    spec = views_lib.ViewSpec(augment="simaugment", image_size=size, num_views=1, jpeg=True)
    from_jpeg = _numpy_bilinear(decoded, new_h, new_w)[top:top + size, left:left + size] / 255.0
    np.testing.assert_allclose(views_lib.eval_image(encoded, spec).numpy(), from_jpeg, atol=1e-4)


# ---------------------------------------------------------------------------- colour jitter


def _jitter_draws(n, *, apply=0.0, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5,
                  order=(0.1, 0.2, 0.3, 0.4)):
    """uniform [n, JITTER_DRAWS] for color_jitter_transforms; 0.5 is each op's identity."""
    columns = [apply, brightness, contrast, saturation, hue, *order]
    return tf.constant(np.broadcast_to(np.array(columns, np.float32), (n, len(columns))))


def _jitter(images, style, **draws):
    transforms = augment.color_jitter_transforms(
        augment.mean_color(images), _jitter_draws(images.shape[0], **draws), strength=0.25,
        style=style)
    return augment.apply_color_transform(images, transforms).numpy()


def _mid_images(n, seed=0):
    """Values in [0.3, 0.6], so that no op of strength 0.25 reaches 0 or 1."""
    return tf.constant(np.random.default_rng(seed).uniform(0.3, 0.6, (n, 8, 8, 3)), tf.float32)


@pytest.mark.parametrize("style", augment.JITTER_STYLES)
def test_color_jitter_identity_cases_and_gray_stays_gray(style):
    images = _random_images(6)
    for kwargs in (dict(strength=0.0), dict(strength=1.0, probability=0.0)):
        np.testing.assert_allclose(
            augment.color_jitter(images, SEED, style=style, **kwargs).numpy(), images.numpy(),
            atol=1e-5)
    gray = tf.repeat(images[..., :1], 3, axis=-1)
    jittered = augment.color_jitter(gray, SEED, strength=1.0, style=style,
                                    probability=1.0).numpy()
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 1], atol=1e-4)
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 2], atol=1e-4)
    assert not np.allclose(jittered, gray.numpy(), atol=1e-3)


def test_tf_brightness_adds_the_drawn_delta_and_pytorch_brightness_scales():
    images = _mid_images(1)
    x = images.numpy()
    for u in (0.0, 0.3, 0.9):
        # tf.image.random_brightness(max_delta=0.8 s): a delta from [-0.2, 0.2] at s = 0.25.
        delta = 0.2 * (2 * u - 1)
        out = _jitter(images, "tf", brightness=u)
        np.testing.assert_allclose(out.mean(axis=(1, 2)) - x.mean(axis=(1, 2)), delta, atol=1e-5)
        np.testing.assert_allclose(out, x + delta, atol=1e-5)
        factor = 0.8 + 0.4 * u   # [max(0, 1 - 0.2), 1.2]
        np.testing.assert_allclose(_jitter(images, "pytorch", brightness=u), factor * x,
                                   atol=1e-5)


def test_tf_contrast_pivots_on_each_channel_mean_and_pytorch_on_the_gray_mean():
    images = _mid_images(1, seed=1)
    x = images.numpy()[0]
    mean = x.mean(axis=(0, 1))
    factor = 0.8 + 0.4 * 0.9
    tf_style = _jitter(images, "tf", contrast=0.9)[0]
    np.testing.assert_allclose(tf_style, mean + factor * (x - mean), atol=1e-5)
    gray_mean = (x @ augment.GRAY_WEIGHTS).mean()
    pytorch_style = _jitter(images, "pytorch", contrast=0.9)[0]
    np.testing.assert_allclose(pytorch_style, gray_mean + factor * (x - gray_mean), atol=1e-5)
    # Contrast pivots on the mean as the ops before it left it: after or before a
    # brightness delta d, the result is mean + f (x - mean) + d either way.
    delta = 0.2 * (2 * 0.8 - 1)
    for order in ((0.1, 0.2, 0.3, 0.4), (0.2, 0.1, 0.3, 0.4)):
        both = _jitter(images, "tf", brightness=0.8, contrast=0.9, order=order)[0]
        np.testing.assert_allclose(both, mean + factor * (x - mean) + delta, atol=1e-5)


def test_hue_rotation_keeps_luma_and_chroma_and_returns_after_full_turn():
    colors = np.random.default_rng(1).uniform(size=(5, 3)).astype(np.float32)
    rotation = augment._hue_rotation(tf.constant([0.3])).numpy()[0]
    rotated = colors @ rotation.T
    yiq = augment._RGB_TO_YIQ
    before, after = colors @ yiq.T, rotated @ yiq.T
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-5)
    np.testing.assert_allclose(np.hypot(after[:, 1], after[:, 2]),
                               np.hypot(before[:, 1], before[:, 2]), atol=1e-5)
    assert not np.allclose(rotated, colors, atol=1e-3)
    np.testing.assert_allclose(augment._hue_rotation(tf.constant([1.0])).numpy()[0], np.eye(3),
                               atol=1e-5)


@pytest.mark.parametrize("style", augment.JITTER_STYLES)
def test_saturation_blends_with_the_gray_image(style):
    images = _mid_images(1, seed=2)
    x = images.numpy()[0]
    luma = x @ augment.GRAY_WEIGHTS
    factor = 0.8 + 0.4 * 0.2
    np.testing.assert_allclose(_jitter(images, style, saturation=0.2)[0],
                               factor * x + (1 - factor) * luma[..., None], atol=1e-5)


@pytest.mark.parametrize("style", augment.JITTER_STYLES)
def test_color_jitter_applies_with_probability_and_is_seeded(style):
    images = _random_images(300, size=4)
    out = augment.color_jitter(images, SEED, strength=0.5, style=style).numpy()
    changed = np.abs(out - images.numpy()).max(axis=(1, 2, 3)) > 1e-4
    assert 0.7 < changed.mean() < 0.9
    same = augment.color_jitter(images, SEED, strength=0.5, style=style).numpy()
    np.testing.assert_array_equal(out, same)
    in_dataset = _in_dataset(lambda i, s: augment.color_jitter(i, s, strength=0.5, style=style),
                             images, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out, atol=1e-6)


def test_unknown_jitter_style_raises():
    with pytest.raises(ValueError, match="hsv"):
        augment.color_jitter(_random_images(1), SEED, strength=1.0, style="hsv")


def test_random_grayscale_matches_luma_with_probability():
    images = _random_images(500, size=4)
    out = augment.random_grayscale(images, SEED).numpy()
    luma = images.numpy() @ augment.GRAY_WEIGHTS
    gray_rows = np.all(np.abs(out - luma[..., None]) < 1e-5, axis=(1, 2, 3))
    unchanged = np.all(np.abs(out - images.numpy()) < 1e-6, axis=(1, 2, 3))
    assert np.all(gray_rows | unchanged)
    assert 0.15 < gray_rows.mean() < 0.25


# ---------------------------------------------------------------------------- blur


def _numpy_blur(image, sigma):
    """Separable Gaussian, ceil(3 sigma) taps a side but at most 6 and the official
    (H // 10) // 2, reading 0.5 outside the image (zero in [-1, 1])."""
    radius = min(math.ceil(3 * sigma), 6, (image.shape[0] // 10) // 2)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], constant_values=0.5)
    height, width = image.shape[:2]
    rows = sum(k * padded[i:i + height] for i, k in enumerate(kernel))
    return sum(k * rows[:, i:i + width] for i, k in enumerate(kernel))


# Not all square, so that padding or blurring along the wrong axis shows. Radii:
# 2 (the official cap at 40 px), 6 (the largest), 1, and 1 (capped from 3 at 30 px).
@pytest.mark.parametrize("height,width,sigma", [(40, 48, 1.3), (120, 40, 2.0), (40, 40, 0.3),
                                                (30, 44, 0.8)])
def test_gaussian_blur_matches_numpy_convolution(height, width, sigma, compiled):
    images = tf.constant(np.random.default_rng(0).uniform(size=(1, height, width, 3)), tf.float32)
    out = augment.random_gaussian_blur(images, SEED, probability=1.0,
                                       sigma_range=(sigma, sigma)).numpy()
    np.testing.assert_allclose(out[0], _numpy_blur(images.numpy()[0], sigma), atol=1e-5)
    untouched = augment.random_gaussian_blur(images, SEED, probability=0.0,
                                             sigma_range=(sigma, sigma))
    np.testing.assert_array_equal(untouched.numpy(), images.numpy())
    if height == 30:  # once, inside tf.data
        in_dataset = _in_dataset(
            lambda i, s: augment.random_gaussian_blur(i, s, probability=1.0,
                                                      sigma_range=(sigma, sigma)),
            images, SEED)
        np.testing.assert_allclose(in_dataset.numpy(), out, atol=1e-6)


def test_official_kernel_sizes_and_no_blur_below_20_pixels():
    assert [augment.official_blur_radius(size) for size in (224, 32, 64, 19)] == [11, 1, 3, 0]
    images = _random_images(2, size=16)   # the official kernel has one tap at 16 px
    np.testing.assert_array_equal(
        augment.random_gaussian_blur(images, SEED, probability=1.0).numpy(), images.numpy())


def test_gaussian_blur_pads_with_mid_gray():
    gray = tf.fill([3, 40, 40, 3], 0.5)
    white = tf.ones([3, 40, 40, 3])
    for salt in range(10):
        seed = augment.fold_seed(SEED, salt)
        np.testing.assert_allclose(
            augment.random_gaussian_blur(gray, seed, probability=1.0).numpy(), 0.5, atol=1e-6)
        out = augment.random_gaussian_blur(white, seed, probability=1.0).numpy()
        assert out.max() <= 1.0   # the weights sum to 1 only up to rounding
        np.testing.assert_allclose(out[:, 2:-2, 2:-2], 1.0, atol=1e-6)
    # A corner of a white image takes in 0.5 from outside: about 0.71 at sigma 1.5.
    corner = augment.random_gaussian_blur(white, SEED, probability=1.0,
                                          sigma_range=(1.5, 1.5)).numpy()[:, 0, 0]
    expected = _numpy_blur(np.ones([40, 40, 3]), 1.5)[0, 0]
    np.testing.assert_allclose(corner, np.broadcast_to(expected, corner.shape), atol=1e-5)
    assert corner.max() < 0.8


def test_gaussian_blur_applies_with_probability():
    probability = 0.25
    images = _random_images(8, size=40)
    unchanged = []
    for salt in range(20):
        out = augment.random_gaussian_blur(images, augment.fold_seed(SEED, salt),
                                           probability=probability).numpy()
        unchanged.extend(np.all(out == images.numpy(), axis=(1, 2, 3)))
    assert abs((1 - np.mean(unchanged)) - probability) < 0.12


# ---------------------------------------------------------------------------- view photometry


def _pixel_views(n, size=16, seed=0):
    """float32 [n, size, size, 3] in 0-255, as the crops give them."""
    return 255.0 * _random_images(n, size, seed)


def test_view_photometry_keeps_shape_range_and_is_seeded(compiled):
    views = _pixel_views(2, size=24)
    out = augment.view_photometry(views, SEED, blur=True)
    assert out.shape == (2, 24, 24, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_array_equal(out.numpy(), augment.view_photometry(views, SEED, blur=True))
    other = augment.view_photometry(views, tf.constant([1, 2]), blur=True)
    assert not np.allclose(other.numpy(), out.numpy())
    in_dataset = _in_dataset(lambda v, s: augment.view_photometry(v, s, blur=True), views, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out.numpy(), atol=1e-6)


def test_view_photometry_alone_rescales_and_flips_half_the_views(compiled):
    views = _pixel_views(2)
    expected = views.numpy() / 255.0
    flipped = []
    for salt in range(30):
        out = augment.view_photometry(views, augment.fold_seed(SEED, salt), color_strength=None,
                                      grayscale=False).numpy()
        for view in range(2):
            mirrored = np.allclose(out[view], expected[view][:, ::-1], atol=1e-6)
            assert mirrored or np.allclose(out[view], expected[view], atol=1e-6)
            flipped.append(mirrored)
    assert 0.3 < np.mean(flipped) < 0.7
    kept = augment.view_photometry(views, SEED, hflip=False, color_strength=None, grayscale=False)
    np.testing.assert_allclose(kept.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("style", augment.JITTER_STYLES)
def test_view_photometry_jitter_and_grayscale_follow_their_draws(style, compiled):
    # view_photometry draws [V, PHOTOMETRY_DRAWS] uniforms in one op: the numbers of
    # stateless_uniform's TF kernel, with XLA too (whose own stateless_uniform differs).
    views = _pixel_views(2)
    scaled = views / 255.0
    draws = tf.random.stateless_uniform([2, augment.PHOTOMETRY_DRAWS], SEED)
    jittered = augment.view_photometry(views, SEED, hflip=False, grayscale=False,
                                       color_jitter_style=style)
    transforms = augment.color_jitter_transforms(
        augment.mean_color(scaled), draws[:, augment.JITTER_COLUMNS], strength=1.0, style=style)
    np.testing.assert_allclose(jittered.numpy(),
                               augment.apply_color_transform(scaled, transforms).numpy(), atol=1e-5)
    gray = augment.view_photometry(views, SEED, hflip=False, color_strength=None)
    transforms = augment.grayscale_transforms(draws[:, augment.GRAY_COLUMN])
    np.testing.assert_allclose(gray.numpy(),
                               augment.apply_color_transform(scaled, transforms).numpy(), atol=1e-5)


@pytest.mark.parametrize("probability", [0.5, 0.25])
def test_view_photometry_blur_equals_numpy_blur_of_the_selected_views(probability, compiled):
    # Not square, so that padding or blurring along the wrong axis shows.
    views = tf.constant(255.0 * np.random.default_rng(0).uniform(size=(4, 40, 48, 3)), tf.float32)
    scaled = views.numpy() / 255.0
    blurred, unchanged = [], []
    for salt in range(12):
        out = augment.view_photometry(views, augment.fold_seed(SEED, salt), hflip=False,
                                      color_strength=None, grayscale=False, blur=True,
                                      blur_probability=probability,
                                      blur_sigma_range=(0.8, 0.8)).numpy()
        for o, x in zip(out, scaled):
            blurred.append(np.allclose(o, _numpy_blur(x, 0.8), atol=1e-5))
            unchanged.append(np.allclose(o, x, atol=1e-6))
    assert all(b != u for b, u in zip(blurred, unchanged))
    assert abs(np.mean(blurred) - probability) < 0.2


# ---------------------------------------------------------------------------- with and without XLA


def test_draws_are_the_tf_kernels_with_and_without_xla():
    # Seeds with a negative half too: stateless_uniform under XLA derives another key from them.
    seeds = [augment.fold_seed(SEED, salt) for salt in range(8)]
    assert any(int(seed[0]) < 0 or int(seed[1]) < 0 for seed in seeds)
    compiled = tf.function(augment._uniform, jit_compile=host_xla.available())
    for seed in seeds:
        expected = tf.random.stateless_uniform([3, augment.PHOTOMETRY_DRAWS], seed).numpy()
        np.testing.assert_array_equal(augment._uniform([3, augment.PHOTOMETRY_DRAWS], seed),
                                      expected)
        np.testing.assert_array_equal(compiled([3, augment.PHOTOMETRY_DRAWS], seed), expected)


def _both_paths(monkeypatch, fn):
    """fn() with the fused programs compiled by XLA, then as plain graphs."""
    out = []
    for compiled in (True, False):
        monkeypatch.setattr(augment, "HOST_XLA", compiled)
        out.append(fn().numpy())
    return out


@pytest.mark.host_xla
@pytest.mark.parametrize("style", augment.JITTER_STYLES)
def test_xla_and_graph_paths_give_the_same_views(monkeypatch, style):
    views = tf.constant(255.0 * np.random.default_rng(3).uniform(size=(2, 24, 28, 3)), tf.float32)
    flips = blurs = 0
    for salt in range(10):
        seed = augment.fold_seed(SEED, salt)
        with_xla, without = _both_paths(monkeypatch, lambda: augment.view_photometry(
            views, seed, color_jitter_style=style, blur=True))
        np.testing.assert_allclose(without, with_xla, atol=2e-6)
        draws = tf.random.stateless_uniform([2, augment.PHOTOMETRY_DRAWS], seed).numpy()
        flips += np.sum(draws[:, augment.FLIP_COLUMN] < 0.5)
        blurs += np.sum(draws[:, augment.BLUR_COLUMNS][:, 0] < 0.5)
    assert 0 < flips < 20 and 0 < blurs < 20  # both branches of each compared
    blur_xla, blur_graph = _both_paths(monkeypatch, lambda: augment.random_gaussian_blur(
        views / 255.0, SEED, probability=0.7))
    np.testing.assert_allclose(blur_graph, blur_xla, atol=2e-6)


def _xla_marks(concrete):
    """Attributes asking for XLA anywhere in a traced function: its own, its nested
    functions' (the blur's conditionals) and its ops'."""
    functions = [concrete.function_def, *concrete.graph.as_graph_def().library.function]
    attrs = [(function.signature.name, function.attr) for function in functions]
    attrs += [(node.name, node.attr) for function in functions for node in function.node_def]
    return sorted({f"{name}:{key}" for name, node_attrs in attrs
                   for key, value in node_attrs.items()
                   if "xla" in key.lower() and value.WhichOneof("value") == "b" and value.b})


def test_graph_path_holds_no_xla_compilation():
    specs = (tf.TensorSpec([2, 40, 48, 3]), tf.TensorSpec([2, 3]), tf.TensorSpec([2], tf.int32))
    options = dict(value_range=255.0, hflip=True, color_strength=1.0, color_jitter_style="tf",
                   grayscale=True, blur_probability=0.5, blur_sigma_range=(0.1, 2.0))
    graph = augment._fused_photometry.graph.get_concrete_function(*specs, **options)
    assert _xla_marks(graph) == []
    blur = augment._fused_blur.graph.get_concrete_function(
        specs[0], specs[2], tf.TensorSpec([]), tf.TensorSpec([2]))
    assert _xla_marks(blur) == []
    # The inspection sees XLA where it is asked for (tracing needs no XLA).
    assert _xla_marks(augment._fused_photometry.xla.get_concrete_function(*specs, **options))


def test_the_path_follows_host_xla_asked_once_per_trace(monkeypatch):
    # tests/test_host_xla.py checks that the probe itself runs eagerly from a trace.
    asked = []

    def no_host_xla():
        asked.append(True)
        return False

    monkeypatch.setattr(augment, "HOST_XLA", None)
    monkeypatch.setattr(host_xla, "available", no_host_xla)
    views = _pixel_views(2, size=36, seed=4)  # a shape no other test traces
    xla_traces = augment._fused_photometry.xla.experimental_get_tracing_count()
    graph_traces = augment._fused_photometry.graph.experimental_get_tracing_count()
    fn = lambda v, s: augment.view_photometry(v, s, blur=True)  # noqa: E731
    in_dataset = _in_dataset(fn, views, SEED)
    assert asked == [True]  # once, for the one trace
    assert augment._fused_photometry.xla.experimental_get_tracing_count() == xla_traces
    assert augment._fused_photometry.graph.experimental_get_tracing_count() > graph_traces
    monkeypatch.setattr(augment, "HOST_XLA", False)
    np.testing.assert_array_equal(in_dataset.numpy(), fn(views, SEED).numpy())


# ---------------------------------------------------------------------------- whole views


def test_example_views_simaugment_keeps_shape_range_and_is_seeded():
    spec = views_lib.ViewSpec(augment="simaugment", image_size=24, num_views=2, blur=True)
    encoded = tf.io.encode_png(_ramp_image(30, 36))
    out = views_lib.example_views(encoded, SEED, spec)
    assert out.shape == (2, 24, 24, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_array_equal(out.numpy(), views_lib.example_views(encoded, SEED, spec))
    other = views_lib.example_views(encoded, tf.constant([1, 2]), spec)
    assert not np.allclose(other.numpy(), out.numpy())
    in_dataset = _in_dataset(lambda e, s: views_lib.example_views(e, s, spec), encoded, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out.numpy(), atol=1e-6)


def test_crop_flip_views_are_resized_crops_or_their_mirror_images():
    image = _ramp_image(30, 40)
    encoded = tf.io.encode_png(image)
    spec = views_lib.ViewSpec(augment="crop_flip", image_size=16, num_views=2, crop_area_min=0.2,
                              color_strength=1.0, blur=True)
    flipped = []
    for salt in range(10):
        seed = augment.fold_seed(SEED, salt)
        crop_seed, _ = views_lib.stage_seeds(seed)
        windows = augment.sample_crop_windows(tf.constant([30, 40, 3]), crop_seed, num_views=2,
                                              area_range=(0.2, 1.0)).numpy()
        out = views_lib.example_views(encoded, seed, spec).numpy()
        for view, (top, left, height, width) in zip(out, windows):
            crop = _numpy_bilinear(image[top:top + height, left:left + width], 16, 16) / 255.0
            mirrored = np.allclose(view, crop[:, ::-1], atol=1e-4)
            assert mirrored or np.allclose(view, crop, atol=1e-4)
            flipped.append(mirrored)
    assert 0 < np.mean(flipped) < 1
    # Colours stay as they are: a one-colour image gives views of exactly that colour.
    flat = tf.io.encode_png(np.full((30, 40, 3), [200, 30, 90], np.uint8))
    np.testing.assert_allclose(views_lib.example_views(flat, SEED, spec).numpy(),
                               np.broadcast_to(np.array([200, 30, 90]) / 255.0, (2, 16, 16, 3)),
                               atol=1e-6)


def _spy_on_view_ops(monkeypatch):
    """Records each view_photometry and apply_policy call of views.augment_views, in order."""
    calls = []
    photometry, apply_policy = augment.view_photometry, augment.apply_policy

    def spy_photometry(views, seed, **kwargs):
        calls.append(("photometry", kwargs))
        return photometry(views, seed, **kwargs)

    def spy_policy(views, seed, policy):
        calls.append(("policy", policy))
        return apply_policy(views, seed, policy)

    monkeypatch.setattr(augment, "view_photometry", spy_photometry)
    monkeypatch.setattr(augment, "apply_policy", spy_policy)
    return calls


def test_stacked_randaugment_jitters_then_randaugments_then_grays_and_blurs(monkeypatch):
    calls = _spy_on_view_ops(monkeypatch)
    spec = views_lib.ViewSpec(augment="stacked_randaugment", image_size=24, num_views=2,
                              color_strength=1.0, color_jitter_style="tf", blur=True,
                              blur_probability=0.5, randaugment_layers=2, randaugment_magnitude=10)
    views = views_lib.augment_views(_pixel_views(2, size=24), SEED, spec)
    assert views.shape == (2, 24, 24, 3)
    (first, jitter), (second, policy), (third, finish) = calls
    assert (first, second, third) == ("photometry", "policy", "photometry")
    assert jitter["color_strength"] == 1.0 and jitter["color_jitter_style"] == "tf"
    assert jitter["grayscale"] is False and not jitter.get("blur", False)
    assert finish["color_strength"] is None and finish.get("grayscale", True)
    assert finish["blur"] is True and finish["blur_probability"] == 0.5
    assert finish["hflip"] is False and finish["value_range"] == 1.0
    # The policy is RandAugment(2, 10).
    from supcon_tf.data import policies
    image = tf.constant(_ramp_image(24, 24))
    np.testing.assert_array_equal(policy(image, SEED).numpy(),
                                  policies.randaugment(image, SEED, 2, 10).numpy())


@pytest.mark.parametrize("mode", ["autoaugment", "crop_flip", "simaugment"])
def test_modes_pass_their_ops_and_only_simclr_modes_blur(monkeypatch, mode):
    calls = _spy_on_view_ops(monkeypatch)
    spec = views_lib.ViewSpec(augment=mode, image_size=24, num_views=2, blur=True,
                              blur_probability=0.3, color_jitter_style="pytorch")
    views_lib.augment_views(_pixel_views(2, size=24), SEED, spec)
    photometry = [kwargs for kind, kwargs in calls if kind == "photometry"]
    assert len(photometry) == 1
    if mode == "simaugment":
        assert photometry[0]["blur"] is True and photometry[0]["blur_probability"] == 0.3
        assert photometry[0]["color_jitter_style"] == "pytorch"
    else:
        assert not photometry[0].get("blur", False) and photometry[0]["color_strength"] is None
    assert [kind for kind, _ in calls].count("policy") == (mode == "autoaugment")


@pytest.mark.parametrize("mode", ["autoaugment", "randaugment", "stacked_randaugment",
                                  "crop_flip"])
def test_policy_modes_give_views_in_range(mode):
    spec = views_lib.ViewSpec(augment=mode, image_size=24, num_views=2, blur=True,
                              randaugment_layers=2, randaugment_magnitude=10)
    encoded = tf.io.encode_png(_ramp_image(30, 36))
    views = _in_dataset(lambda e, s: views_lib.example_views(e, s, spec), encoded, SEED)
    assert views.shape == (2, 24, 24, 3)
    assert float(tf.reduce_min(views)) >= 0.0 and float(tf.reduce_max(views)) <= 1.0
    assert not np.allclose(views[0].numpy(), views[1].numpy())
