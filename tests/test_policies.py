"""Tests for the AutoAugment / RandAugment op set and policies.

Pixel ops are checked against Pillow (the library the AutoAugment ops were
defined with) or against NumPy, geometric ops against exact NumPy shifts and
rotations, and both policies for determinism, shape, and tf.data use.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from supcon_tf.data import policies

HEIGHT, WIDTH = 24, 32


def random_image(seed=0, shape=(HEIGHT, WIDTH, 3), low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint8)


def pil(image):
    return Image.fromarray(image, "RGB")


def max_abs_diff(a, b):
    return int(np.max(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32))))


# --- Pixel ops against Pillow / NumPy ----------------------------------------


def test_invert_matches_numpy_and_is_an_involution():
    image = random_image()
    once = policies.invert(image).numpy()
    np.testing.assert_array_equal(once, 255 - image)
    np.testing.assert_array_equal(policies.invert(once).numpy(), image)


def test_autocontrast_matches_pillow_and_spans_full_range():
    image = random_image(1, low=60, high=180)
    image[..., 2] = 77  # a flat channel must stay as it is
    out = policies.autocontrast(image).numpy()
    assert max_abs_diff(out, np.asarray(ImageOps.autocontrast(pil(image)))) <= 1
    for channel in range(2):
        assert out[..., channel].min() == 0 and out[..., channel].max() == 255
    np.testing.assert_array_equal(out[..., 2], image[..., 2])


def test_equalize_matches_pillow():
    for seed, (low, high) in enumerate([(0, 256), (90, 150), (200, 203)]):
        image = random_image(seed, low=low, high=high)
        expected = np.asarray(ImageOps.equalize(pil(image)))
        np.testing.assert_array_equal(policies.equalize(image).numpy(), expected)


def test_equalize_flattens_the_histogram():
    # A narrow bell-shaped histogram should come out close to uniform on [0, 255].
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(128, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = policies.equalize(image).numpy()
    for channel in range(3):
        values = np.sort(out[..., channel].ravel())
        cdf = np.searchsorted(values, np.arange(256), side="right") / values.size
        levels = np.unique(values)
        # At each output level the CDF sits near the uniform CDF.
        assert np.max(np.abs(cdf[levels] - (levels.astype(np.float64) + 1) / 256.0)) < 0.08
    assert out.std() > 3 * image.std()


def test_constant_image_is_left_alone_by_equalize_and_autocontrast():
    image = np.full((HEIGHT, WIDTH, 3), 91, np.uint8)
    np.testing.assert_array_equal(policies.equalize(image).numpy(), image)
    np.testing.assert_array_equal(policies.autocontrast(image).numpy(), image)


@pytest.mark.parametrize("bits", [1, 4, 6, 8])
def test_posterize_matches_pillow(bits):
    image = random_image(4)
    expected = np.asarray(ImageOps.posterize(pil(image), bits))
    np.testing.assert_array_equal(policies.posterize(image, bits).numpy(), expected)


@pytest.mark.parametrize("threshold", [0, 1, 100, 255, 256])
def test_solarize_matches_pillow(threshold):
    image = random_image(5)
    expected = np.asarray(ImageOps.solarize(pil(image), threshold))
    np.testing.assert_array_equal(policies.solarize(image, threshold).numpy(), expected)


def test_solarize_threshold_256_is_identity_and_posterize_8_bits_is_identity():
    image = random_image(6)
    np.testing.assert_array_equal(policies.solarize(image, 256).numpy(), image)
    np.testing.assert_array_equal(policies.posterize(image, 8).numpy(), image)


def test_solarize_add_matches_numpy():
    image = random_image(7)
    wide = image.astype(np.int32)
    expected = np.where(wide < 128, np.minimum(wide + 90, 255), wide)
    np.testing.assert_array_equal(policies.solarize_add(image, 90).numpy(), expected)


@pytest.mark.parametrize(
    "name, enhancer", [("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                       ("brightness", ImageEnhance.Brightness),
                       ("sharpness", ImageEnhance.Sharpness)],
)
@pytest.mark.parametrize("factor", [0.1, 0.6, 1.0, 1.9])
def test_enhance_ops_match_pillow(name, enhancer, factor):
    # Pillow truncates where we round, and its luma uses fixed-point weights.
    image = random_image(8)
    expected = np.asarray(enhancer(pil(image)).enhance(factor))
    out = getattr(policies, name)(image, factor).numpy()
    assert max_abs_diff(out, expected) <= 2


def test_enhance_factor_one_is_identity_and_color_zero_is_grayscale():
    image = random_image(9)
    for op in (policies.color, policies.contrast, policies.brightness, policies.sharpness):
        np.testing.assert_array_equal(op(image, 1.0).numpy(), image)
    gray = policies.color(image, 0.0).numpy()
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.max(np.abs(gray[..., 0] - luma)) <= 0.5 + 1e-6


# --- Geometric ops against exact NumPy shifts --------------------------------


def test_zero_geometric_transforms_are_identity():
    image = random_image(10)
    for op in (policies.rotate, policies.shear_x, policies.shear_y,
               policies.translate_x, policies.translate_y):
        np.testing.assert_array_equal(op(image, 0.0).numpy(), image)


def test_rotate_quarter_turns_match_numpy():
    square = random_image(11, shape=(17, 17, 3))
    np.testing.assert_array_equal(policies.rotate(square, 90.0).numpy(), np.rot90(square, 1))
    np.testing.assert_array_equal(policies.rotate(square, -90.0).numpy(), np.rot90(square, -1))
    image = random_image(12)
    np.testing.assert_array_equal(policies.rotate(image, 180.0).numpy(), np.rot90(image, 2))


def test_translate_matches_numpy_shift_with_gray_fill():
    image = random_image(13)
    right = np.full_like(image, 128)
    right[:, 5:] = image[:, :-5]
    np.testing.assert_array_equal(policies.translate_x(image, 5.0).numpy(), right)
    up = np.full_like(image, 128)
    up[:-3] = image[3:]
    np.testing.assert_array_equal(policies.translate_y(image, -3.0).numpy(), up)


def test_shear_matches_numpy_row_shifts():
    image = random_image(14)
    # Shear 1: output (x, y) reads input (x + y, y), gray where that falls outside.
    expected_x = np.full_like(image, 128)
    for y in range(HEIGHT):
        expected_x[y, : max(WIDTH - y, 0)] = image[y, y:]
    np.testing.assert_array_equal(policies.shear_x(image, 1.0).numpy(), expected_x)
    expected_y = np.full_like(image, 128)
    for x in range(WIDTH):
        expected_y[: max(HEIGHT - x, 0), x] = image[x:, x]
    np.testing.assert_array_equal(policies.shear_y(image, 1.0).numpy(), expected_y)


def test_cutout_paints_one_gray_rectangle_no_larger_than_size():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for seed in range(5):
        out = policies.cutout(image, 6, tf.constant([seed, 1])).numpy()
        changed = np.any(out != 0, axis=-1)
        rows, cols = np.nonzero(changed)
        assert 0 < changed.sum() <= 36
        assert np.all(out[changed] == 128)
        # The changed pixels fill their bounding box: one axis-aligned rectangle.
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == changed.sum() and np.ptp(rows) < 6 and np.ptp(cols) < 6
    np.testing.assert_array_equal(policies.cutout(image, 0, tf.constant([0, 1])).numpy(), image)


# --- Magnitude mapping (0..10 -> published ranges) ---------------------------


def apply_op(name, image, magnitude, seed=(0, 0)):
    return policies.OPS[name](tf.constant(image), float(magnitude), tf.constant(seed)).numpy()


def test_magnitude_zero_is_identity_for_strength_ops():
    image = random_image(15)
    for name in ("Rotate", "Posterize", "Solarize", "SolarizeAdd", "ShearX", "ShearY",
                 "TranslateX", "TranslateY", "Cutout"):
        np.testing.assert_array_equal(apply_op(name, image, 0), image, err_msg=name)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        # Factor 0.1 + 1.8 * m / 10 is 1.0 at m = 5.
        np.testing.assert_array_equal(apply_op(name, image, 5), image, err_msg=name)


def test_magnitude_ten_reaches_the_published_range_ends():
    image = random_image(16)
    np.testing.assert_array_equal(apply_op("Posterize", image, 10), image & 0xF0)
    np.testing.assert_array_equal(apply_op("Solarize", image, 10), 255 - image)
    np.testing.assert_array_equal(apply_op("Brightness", image, 10),
                                  policies.brightness(image, 1.9).numpy())
    np.testing.assert_array_equal(apply_op("Color", image, 0),
                                  policies.color(image, 0.1).numpy())
    np.testing.assert_array_equal(apply_op("SolarizeAdd", image, 10),
                                  policies.solarize_add(image, 110).numpy())


@pytest.mark.parametrize("name, op, extent", [
    ("Rotate", policies.rotate, 30.0),
    ("ShearX", policies.shear_x, 0.3),
    ("TranslateY", policies.translate_y, 150.0 / 331.0 * HEIGHT),
])
def test_signed_ops_use_both_signs_of_the_full_range(name, op, extent):
    image = random_image(17)
    plus, minus = op(image, extent).numpy(), op(image, -extent).numpy()
    signs = set()
    for seed in range(12):
        out = apply_op(name, image, 10, seed=(seed, 3))
        if np.array_equal(out, plus):
            signs.add(1)
        elif np.array_equal(out, minus):
            signs.add(-1)
        else:
            pytest.fail(f"{name} at magnitude 10 is neither +{extent} nor -{extent}")
    assert signs == {1, -1}


def test_every_op_runs_in_graph_mode_on_unknown_sizes_as_it_does_eagerly():
    image = random_image(21, shape=(20, 28, 3))
    seed = tf.constant([4, 2], tf.int64)
    names = sorted(policies.OPS)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def all_ops(x):
        return [policies.OPS[name](x, tf.constant(7.0), seed) for name in names]

    for name, traced in zip(names, all_ops(image)):
        eager = policies.OPS[name](tf.constant(image), tf.constant(7.0), seed)
        assert traced.dtype == tf.uint8, name
        np.testing.assert_array_equal(traced.numpy(), eager.numpy(), err_msg=name)


# --- Policies -----------------------------------------------------------------


def test_imagenet_policy_table():
    table = policies.IMAGENET_POLICY
    assert len(table) == 25
    for sub_policy in table:
        assert len(sub_policy) == 2
        for name, probability, magnitude in sub_policy:
            assert name in policies.OPS
            assert 0.0 <= probability <= 1.0
            assert 0 <= magnitude <= 10
    assert set(policies.RANDAUGMENT_OPS) <= set(policies.OPS)


POLICIES = {
    "autoaugment": policies.autoaugment_imagenet,
    "randaugment": lambda image, seed: policies.randaugment(image, seed, 2, 9),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_is_deterministic_per_seed_and_varies_across_seeds(name):
    policy = POLICIES[name]
    image = tf.constant(random_image(18))
    first = policy(image, tf.constant([5, 6])).numpy()
    np.testing.assert_array_equal(policy(image, tf.constant([5, 6])).numpy(), first)
    outputs = {policy(image, tf.constant([seed, 6])).numpy().tobytes() for seed in range(12)}
    assert len(outputs) >= 4


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_keeps_shape_and_dtype_with_static_and_dynamic_shapes(name):
    policy = POLICIES[name]
    image = tf.constant(random_image(19))
    seed = tf.constant([1, 2], tf.int32)
    eager = policy(image, seed)
    assert eager.dtype == tf.uint8 and eager.shape == (HEIGHT, WIDTH, 3)
    dynamic = tf.function(
        policy,
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)],
    )
    traced = dynamic(image, seed)
    assert traced.shape == (HEIGHT, WIDTH, 3) and traced.dtype == tf.uint8
    np.testing.assert_array_equal(traced.numpy(), eager.numpy())


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_in_tf_data_map_matches_eager(name):
    policy = POLICIES[name]
    images = np.stack([random_image(seed) for seed in range(6)])
    seeds = np.stack([[seed, 11] for seed in range(6)]).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
        policy, num_parallel_calls=2, deterministic=True
    )
    for (image, seed), out in zip(zip(images, seeds), dataset):
        assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == tf.uint8
        np.testing.assert_array_equal(out.numpy(), policy(image, seed).numpy())


def test_randaugment_applies_exactly_num_layers_ops():
    add_one = lambda image, magnitude, seed: image + 1  # noqa: E731
    add_ten = lambda image, magnitude, seed: image + 10  # noqa: E731
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    totals = set()
    for seed in range(16):
        out = policies.randaugment(image, tf.constant([seed, 0]), num_layers=3,
                                   ops=[add_one, add_ten]).numpy()
        assert np.all(out == out.flat[0])
        ones, tens = out.flat[0] % 10, out.flat[0] // 10
        assert ones + tens == 3
        totals.add(int(out.flat[0]))
    assert len(totals) >= 3  # both ops get drawn, in varying numbers
    unchanged = policies.randaugment(image, tf.constant([0, 0]), num_layers=0)
    np.testing.assert_array_equal(unchanged.numpy(), image)


def test_randaugment_passes_its_magnitude_to_every_op():
    seen = lambda image, magnitude, seed: image + tf.cast(magnitude, tf.uint8)  # noqa: E731
    out = policies.randaugment(np.zeros((4, 4, 3), np.uint8), tf.constant([0, 0]),
                               num_layers=2, magnitude=7, ops=[seen]).numpy()
    assert np.all(out == 14)


def test_bad_arguments_raise_clear_errors():
    image = random_image(20)
    with pytest.raises(ValueError, match="magnitude"):
        policies.randaugment(image, [0, 0], magnitude=11)
    with pytest.raises(ValueError, match="num_layers"):
        policies.randaugment(image, [0, 0], num_layers=-1)
    with pytest.raises(ValueError, match="uint8"):
        policies.autoaugment_imagenet(image.astype(np.float32), [0, 0])
