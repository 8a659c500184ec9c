"""Each augmentation alone, eagerly and inside tf.data, against numpy references and invariants."""

import math

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.data import augment
from supcon_tf.data import views as views_lib

SEED = tf.constant([7, 11], tf.int32)


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


def test_crop_windows_follow_area_and_aspect_ranges():
    shape = tf.constant([120, 160, 3])
    areas, aspects = [], []
    for salt in range(40):
        windows = augment.sample_crop_windows(shape, augment.fold_seed(SEED, salt), num_views=2,
                                              area_range=(0.2, 1.0)).numpy()
        for top, left, height, width in windows:
            assert top >= 0 and left >= 0 and top + height <= 120 and left + width <= 160
            areas.append(height * width / (120 * 160))
            aspects.append(width / height)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.2 - 0.02 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.95 and aspects.max() <= (4 / 3) * 1.05
    assert areas.std() > 0.1  # really random, not a fixed crop


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


def test_center_crop_jpeg_takes_the_central_224_of_256():
    image = _ramp_image(64, 128)
    encoded = tf.io.encode_jpeg(image, quality=100)
    side = round(64 * 224 / 256)   # 56
    top, left = (64 - side + 1) // 2, (128 - side + 1) // 2
    expected = tf.image.resize(tf.io.decode_jpeg(encoded)[top:top + side, left:left + side],
                               [32, 32]) / 255.0
    np.testing.assert_allclose(augment.center_crop_jpeg(encoded, size=32).numpy(),
                               expected.numpy(), atol=3 / 255)  # chroma upsampling at crop edges


def test_color_jitter_identity_cases_and_gray_stays_gray():
    images = _random_images(6)
    for kwargs in (dict(strength=0.0), dict(strength=1.0, probability=0.0)):
        np.testing.assert_allclose(augment.color_jitter(images, SEED, **kwargs).numpy(),
                                   images.numpy(), atol=1e-5)
    gray = tf.repeat(images[..., :1], 3, axis=-1)
    jittered = augment.color_jitter(gray, SEED, strength=1.0, probability=1.0).numpy()
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 1], atol=1e-4)
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 2], atol=1e-4)
    assert not np.allclose(jittered, gray.numpy(), atol=1e-3)


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


def test_color_jitter_transform_of_single_ops_matches_torchvision_formulas():
    """With the other factors forced to identity, each op equals its textbook formula."""
    images = _random_images(1)
    x = images.numpy()[0]
    luma = x @ augment.GRAY_WEIGHTS
    n = tf.constant(1)
    eye = tf.eye(3, batch_shape=[n])
    saturation = augment._homogeneous(augment._blend_with_gray(tf.constant([0.4])),
                                      tf.zeros([1, 3]))
    out = augment.apply_color_transform(images, saturation).numpy()[0]
    np.testing.assert_allclose(out, np.clip(0.4 * x + 0.6 * luma[..., None], 0, 1), atol=1e-5)
    brightness = augment._homogeneous(1.5 * eye, tf.zeros([1, 3]))
    out = augment.apply_color_transform(images, brightness).numpy()[0]
    np.testing.assert_allclose(out, np.clip(1.5 * x, 0, 1), atol=1e-5)


def test_color_jitter_applies_with_probability_and_random_order_per_image():
    images = _random_images(300, size=4)
    out = augment.color_jitter(images, SEED, strength=0.5).numpy()
    changed = np.abs(out - images.numpy()).max(axis=(1, 2, 3)) > 1e-4
    assert 0.7 < changed.mean() < 0.9
    same = augment.color_jitter(images, SEED, strength=0.5).numpy()
    np.testing.assert_array_equal(out, same)
    in_dataset = _in_dataset(lambda i, s: augment.color_jitter(i, s, strength=0.5), images, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out, atol=1e-6)


def test_random_grayscale_matches_luma_with_probability():
    images = _random_images(500, size=4)
    out = augment.random_grayscale(images, SEED).numpy()
    luma = images.numpy() @ augment.GRAY_WEIGHTS
    gray_rows = np.all(np.abs(out - luma[..., None]) < 1e-5, axis=(1, 2, 3))
    unchanged = np.all(np.abs(out - images.numpy()) < 1e-6, axis=(1, 2, 3))
    assert np.all(gray_rows | unchanged)
    assert 0.15 < gray_rows.mean() < 0.25


def _numpy_blur(image, sigma):
    """Reflect-padded separable Gaussian with ceil(3 sigma) taps on each side."""
    radius = math.ceil(3 * sigma)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    height, width = image.shape[:2]
    rows = sum(k * padded[i:i + height] for i, k in enumerate(kernel))
    return sum(k * rows[:, i:i + width] for i, k in enumerate(kernel))


# Not all square, so that padding or blurring along the wrong axis shows; the sigmas
# give kernel radii 4, 6 (the largest) and 1.
@pytest.mark.parametrize("height,width,sigma", [(16, 16, 1.3), (augment.BLUR_MIN_SIZE, 40, 2.0),
                                                (16, 20, 0.3)])
def test_gaussian_blur_matches_numpy_convolution(height, width, sigma):
    images = tf.constant(np.random.default_rng(0).uniform(size=(2, height, width, 3)), tf.float32)
    out = augment.random_gaussian_blur(images, SEED, probability=1.0,
                                       sigma_range=(sigma, sigma)).numpy()
    for image, blurred in zip(images.numpy(), out):
        np.testing.assert_allclose(blurred, _numpy_blur(image, sigma), atol=1e-5)
    untouched = augment.random_gaussian_blur(images, SEED, probability=0.0,
                                             sigma_range=(sigma, sigma))
    np.testing.assert_array_equal(untouched.numpy(), images.numpy())
    in_dataset = _in_dataset(
        lambda i, s: augment.random_gaussian_blur(i, s, probability=1.0,
                                                  sigma_range=(sigma, sigma)),
        images, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out, atol=1e-6)


def test_gaussian_blur_keeps_white_images_white():
    # The kernel's weights sum to 1 only up to rounding; the output must still stay in [0, 1].
    white = tf.ones([augment.BLUR_RADIUS, 16, 16, 3])
    for salt in range(30):
        out = augment.random_gaussian_blur(white, augment.fold_seed(SEED, salt), probability=1.0)
        assert float(tf.reduce_max(out)) <= 1.0
        np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)


def test_gaussian_blur_applies_with_probability():
    images = _random_images(4, size=16)
    unchanged = []
    for salt in range(10):
        out = augment.random_gaussian_blur(images, augment.fold_seed(SEED, salt)).numpy()
        unchanged.extend(np.all(out == images.numpy(), axis=(1, 2, 3)))
    assert 0.25 < np.mean(unchanged) < 0.75


def _pixel_views(n, size=16, seed=0):
    """float32 [n, size, size, 3] in 0-255, as the crops give them."""
    return 255.0 * _random_images(n, size, seed)


def test_view_photometry_keeps_shape_range_and_is_seeded():
    views = _pixel_views(2)
    out = augment.view_photometry(views, SEED, blur=True)
    assert out.shape == (2, 16, 16, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_array_equal(out.numpy(), augment.view_photometry(views, SEED, blur=True))
    other = augment.view_photometry(views, tf.constant([1, 2]), blur=True)
    assert not np.allclose(other.numpy(), out.numpy())
    in_dataset = _in_dataset(lambda v, s: augment.view_photometry(v, s, blur=True), views, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out.numpy(), atol=1e-6)


def test_view_photometry_alone_rescales_and_flips_half_the_views():
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


def test_view_photometry_jitter_and_grayscale_follow_their_draws():
    # view_photometry draws [V, PHOTOMETRY_DRAWS] uniforms in one op under XLA, where
    # the stateless random ops give other numbers than the TF kernels: drawn the same way here.
    views = _pixel_views(2)
    scaled = views / 255.0
    draws = tf.function(lambda s: tf.random.stateless_uniform([2, augment.PHOTOMETRY_DRAWS], s),
                        jit_compile=True)(SEED)
    jittered = augment.view_photometry(views, SEED, hflip=False, grayscale=False)
    transforms = augment.color_jitter_transforms(
        augment.mean_color(scaled), draws[:, augment.JITTER_COLUMNS], strength=1.0)
    np.testing.assert_allclose(jittered.numpy(),
                               augment.apply_color_transform(scaled, transforms).numpy(), atol=1e-5)
    gray = augment.view_photometry(views, SEED, hflip=False, color_strength=None)
    transforms = augment.grayscale_transforms(draws[:, augment.GRAY_COLUMN])
    np.testing.assert_allclose(gray.numpy(),
                               augment.apply_color_transform(scaled, transforms).numpy(), atol=1e-5)


def test_view_photometry_blur_equals_numpy_blur_of_the_selected_views():
    # Not square, so that padding or blurring along the wrong axis shows.
    views = tf.constant(255.0 * np.random.default_rng(0).uniform(size=(4, 16, 24, 3)), tf.float32)
    scaled = views.numpy() / 255.0
    blurred, unchanged = [], []
    for salt in range(3):
        out = augment.view_photometry(views, augment.fold_seed(SEED, salt), hflip=False,
                                      color_strength=None, grayscale=False, blur=True,
                                      blur_sigma_range=(0.8, 0.8)).numpy()
        for o, x in zip(out, scaled):
            blurred.append(np.allclose(o, _numpy_blur(x, 0.8), atol=1e-5))
            unchanged.append(np.allclose(o, x, atol=1e-6))
    assert all(b != u for b, u in zip(blurred, unchanged))
    assert any(blurred) and any(unchanged)


def test_example_views_simaugment_keeps_shape_range_and_is_seeded():
    spec = views_lib.ViewSpec(augment="simaugment", image_size=16, num_views=2, blur=True)
    encoded = tf.io.encode_png(_ramp_image(20, 24))
    out = views_lib.example_views(encoded, SEED, spec)
    assert out.shape == (2, 16, 16, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_array_equal(out.numpy(), views_lib.example_views(encoded, SEED, spec))
    other = views_lib.example_views(encoded, tf.constant([1, 2]), spec)
    assert not np.allclose(other.numpy(), out.numpy())
    in_dataset = _in_dataset(lambda e, s: views_lib.example_views(e, s, spec), encoded, SEED)
    np.testing.assert_allclose(in_dataset.numpy(), out.numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["autoaugment", "stacked_randaugment"])
def test_policy_modes_give_views_in_range(mode):
    pytest.importorskip("supcon_tf.data.policies")
    spec = views_lib.ViewSpec(augment=mode, image_size=16, num_views=2, blur=True,
                              randaugment_layers=2, randaugment_magnitude=9)
    encoded = tf.io.encode_png(_ramp_image(20, 24))
    views = _in_dataset(lambda e, s: views_lib.example_views(e, s, spec), encoded, SEED)
    assert views.shape == (2, 16, 16, 3)
    assert float(tf.reduce_min(views)) >= 0.0 and float(tf.reduce_max(views)) <= 1.0
    assert not np.allclose(views[0].numpy(), views[1].numpy())
