"""AutoAugment v0 and RandAugment against TF Model Garden's augment.py, written out by hand.

The tables, op lists and level-to-argument values below are transcribed from
tensorflow/models official/vision/image_classification/augment.py; the pixel ops
are checked against NumPy formulas of that file's TF code (and against Pillow
where the two agree), and the policies for their draws, determinism and tf.data use.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from supcon_tf.data import policies

HEIGHT, WIDTH = 24, 32

# TFM AutoAugment.policy_v0(), transcribed.
TFM_POLICY_V0 = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
    [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
    [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
    [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
    [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
    [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
    [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
    [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
    [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
    [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
    [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
    [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
    [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]
# TFM RandAugment.available_ops, transcribed.
TFM_RANDAUGMENT_OPS = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
]
# Arguments at RandAugment's default magnitude 10 (cutout_const 40, translate_const 100),
# worked out by hand from TFM's level_to_arg.
RANDAUGMENT_M10_ARGS = {
    "AutoContrast": 0.0, "Equalize": 0.0, "Invert": 0.0, "Rotate": 30.0, "Posterize": 4,
    "Solarize": 256, "Color": 1.9, "Contrast": 1.9, "Brightness": 1.9, "Sharpness": 1.9,
    "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 100.0, "TranslateY": 100.0, "Cutout": 40,
    "SolarizeAdd": 110,
}
AUTOAUGMENT_CONSTS = dict(cutout_const=100, translate_const=250)


def random_image(seed=0, shape=(HEIGHT, WIDTH, 3), low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint8)


def pil(image):
    return Image.fromarray(image, "RGB")


def max_abs_diff(a, b):
    return int(np.max(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32))))


def run_op(name, image, arg, seed=(0, 0)):
    return policies.OPS[name](tf.constant(image), tf.constant(arg, tf.float32),
                              tf.constant(seed, tf.int32)).numpy()


def tf_gray(image):
    """tf.image.rgb_to_grayscale on uint8, in NumPy: x / 255 weighted, times 255.5, truncated."""
    luma = (image.astype(np.float32) / np.float32(255.0)) @ np.array([0.2989, 0.587, 0.114],
                                                                     np.float32)
    return np.floor(luma * np.float32(255.5)).astype(np.float32)


def truncated_blend(degenerate, image, factor):
    out = degenerate + np.float32(factor) * (image.astype(np.float32) - degenerate)
    return np.floor(np.clip(out, 0, 255)).astype(np.uint8)


# --- The tables -------------------------------------------------------------------------


def test_policy_v0_is_tfm_policy_v0():
    assert [list(sub) for sub in policies.POLICY_V0] == TFM_POLICY_V0
    assert len(policies.POLICY_V0) == 25


def test_randaugment_has_tfm_16_ops_plus_identity():
    assert list(policies.RANDAUGMENT_OPS) == TFM_RANDAUGMENT_OPS
    assert policies.IDENTITY == 16 and set(policies.OPS) == set(TFM_RANDAUGMENT_OPS)


@pytest.mark.parametrize("name, level, expected", [
    ("Posterize", 6, 2), ("Posterize", 2, 0), ("Solarize", 3, 76), ("Solarize", 8, 204),
    ("Solarize", 10, 256), ("SolarizeAdd", 3, 33), ("SolarizeAdd", 7, 77),
    ("Color", 9, 1.72), ("Color", 0, 0.1), ("Rotate", 8, 24.0), ("Rotate", 5, 15.0),
    ("ShearY", 4, 0.12), ("ShearX", 9, 0.27), ("TranslateY", 9, 225.0), ("Cutout", 10, 100),
    ("Equalize", 8, 0.0),
])
def test_autoaugment_level_to_arg_matches_tfm(name, level, expected):
    arg = policies.level_to_arg(name, level, **AUTOAUGMENT_CONSTS)
    assert arg == pytest.approx(expected, abs=1e-9)
    assert isinstance(arg, int) == isinstance(expected, int)


def test_randaugment_magnitude_10_arguments():
    args = dict(zip(policies.RANDAUGMENT_OPS, policies.randaugment_args(10)))
    assert args == pytest.approx(RANDAUGMENT_M10_ARGS)


# --- Pixel ops at the levels the policies use, against NumPy / Pillow -------------------


@pytest.mark.parametrize("level, mask", [(6, 0xC0), (10, 0xF0), (2, 0x80)])
def test_posterize_levels_keep_tfm_bits(level, mask):
    # Level 2 gives 0 bits: TF clamps the shift of 8 to 7, which keeps the top bit.
    image = random_image(4)
    bits = policies.level_to_arg("Posterize", level, **AUTOAUGMENT_CONSTS)
    np.testing.assert_array_equal(run_op("Posterize", image, bits), image & mask)


@pytest.mark.parametrize("bits", [1, 4, 6, 8])
def test_posterize_matches_pillow(bits):
    image = random_image(4)
    expected = np.asarray(ImageOps.posterize(pil(image), bits))
    np.testing.assert_array_equal(policies.posterize(image, bits).numpy(), expected)


def test_solarize_levels_as_tfm_runs_them():
    image = random_image(5)
    threshold = policies.level_to_arg("Solarize", 3, **AUTOAUGMENT_CONSTS)   # 76
    np.testing.assert_array_equal(run_op("Solarize", image, threshold),
                                  np.where(image < 76, image, 255 - image))
    # Level 10: TF converts the threshold 256 to uint8 0, so every pixel is inverted.
    np.testing.assert_array_equal(run_op("Solarize", image, 256), 255 - image)
    np.testing.assert_array_equal(tf.constant(image) < 256, np.zeros(image.shape, bool))


def test_solarize_add_level_7():
    image = random_image(7)
    wide = image.astype(np.int32)
    expected = np.where(wide < 128, np.minimum(wide + 77, 255), wide)
    np.testing.assert_array_equal(run_op("SolarizeAdd", image, 77), expected)


def test_color_level_9_blends_with_tf_grayscale_and_truncates():
    image = random_image(8)
    factor = policies.level_to_arg("Color", 9, **AUTOAUGMENT_CONSTS)
    expected = truncated_blend(tf_gray(image)[..., None], image, factor)
    assert max_abs_diff(run_op("Color", image, factor), expected) <= 1


def test_contrast_blends_with_pixel_count_over_256_as_tfm():
    # TFM's "mean" is the histogram's total count / 256: 24 * 32 / 256 = 3 here.
    image = random_image(9)
    expected = truncated_blend(np.float32(3.0), image, 1.9)
    assert max_abs_diff(run_op("Contrast", image, 1.9), expected) <= 1
    bigger = random_image(9, shape=(64, 80, 3))   # 5120 / 256 = 20
    assert max_abs_diff(run_op("Contrast", bigger, 0.1),
                        truncated_blend(np.float32(20.0), bigger, 0.1)) <= 1


def test_brightness_and_sharpness_truncate_like_tfm():
    image = random_image(10)
    assert max_abs_diff(run_op("Brightness", image, 1.9),
                        truncated_blend(np.float32(0.0), image, 1.9)) <= 1
    x = image.astype(np.float32)
    window = sum(x[i:HEIGHT - 2 + i, j:WIDTH - 2 + j] for i in range(3) for j in range(3))
    smooth = x.copy()
    smooth[1:-1, 1:-1] = np.floor((window + 4 * x[1:-1, 1:-1]) / 13)
    assert max_abs_diff(run_op("Sharpness", image, 1.9),
                        truncated_blend(smooth, image, 1.9)) <= 1


def test_enhance_factor_one_is_identity():
    image = random_image(11)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        np.testing.assert_array_equal(run_op(name, image, 1.0), image, err_msg=name)


def test_autocontrast_matches_tfm_formula_and_pillow():
    image = random_image(1, low=60, high=180)
    image[..., 2] = 77  # a flat channel stays as it is
    x = image.astype(np.float32)
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    scale = 255 / np.maximum(high - low, 1)
    expected = np.where(high > low, np.floor(np.clip(x * scale - low * scale, 0, 255)), x)
    out = policies.autocontrast(image).numpy()
    assert max_abs_diff(out, expected) <= 1
    assert max_abs_diff(out, np.asarray(ImageOps.autocontrast(pil(image)))) <= 1
    np.testing.assert_array_equal(out[..., 2], image[..., 2])


def test_equalize_matches_pillow():
    for seed, (low, high) in enumerate([(0, 256), (90, 150), (200, 203)]):
        image = random_image(seed, low=low, high=high)
        expected = np.asarray(ImageOps.equalize(pil(image)))
        np.testing.assert_array_equal(policies.equalize(image).numpy(), expected)


def test_invert():
    image = random_image(12)
    np.testing.assert_array_equal(run_op("Invert", image, 0.0), 255 - image)


# --- Geometric ops: nearest pixel, gray 128 outside ----------------------------------------


def test_rotate_quarter_turns_match_numpy():
    square = random_image(13, shape=(17, 17, 3))
    np.testing.assert_array_equal(policies.rotate(square, 90.0).numpy(), np.rot90(square, 1))
    np.testing.assert_array_equal(policies.rotate(square, -90.0).numpy(), np.rot90(square, -1))
    image = random_image(14)
    np.testing.assert_array_equal(policies.rotate(image, 180.0).numpy(), np.rot90(image, 2))


def test_rotate_samples_nearest_pixels_and_fills_gray():
    image = random_image(15)
    out = policies.rotate(image, 24.0).numpy()
    colors = {tuple(p) for p in image.reshape(-1, 3)} | {(128, 128, 128)}
    assert all(tuple(p) in colors for p in out.reshape(-1, 3))
    assert np.all(out[0, 0] == 128) and np.all(out[-1, -1] == 128)   # corners leave the image


def test_translate_moves_content_as_tfm_with_gray_fill():
    image = random_image(16)
    left = np.full_like(image, 128)   # output x reads input x + 5
    left[:, :-5] = image[:, 5:]
    np.testing.assert_array_equal(policies.translate_x(image, 5.0).numpy(), left)
    down = np.full_like(image, 128)   # output y reads input y - 3
    down[3:] = image[:-3]
    np.testing.assert_array_equal(policies.translate_y(image, -3.0).numpy(), down)
    # TranslateY at AutoAugment level 9 moves by 225 pixels: nothing of a 24-row image is left.
    shifted = {run_op("TranslateY", image, 225.0, seed=(s, 0)).tobytes() for s in range(6)}
    assert shifted == {np.full_like(image, 128).tobytes()}


def test_shear_matches_numpy_row_shifts():
    image = random_image(17)
    expected_x = np.full_like(image, 128)   # output (x, y) reads input (x + y, y)
    for y in range(HEIGHT):
        expected_x[y, : max(WIDTH - y, 0)] = image[y, y:]
    np.testing.assert_array_equal(policies.shear_x(image, 1.0).numpy(), expected_x)
    expected_y = np.full_like(image, 128)
    for x in range(WIDTH):
        expected_y[: max(HEIGHT - x, 0), x] = image[x:, x]
    np.testing.assert_array_equal(policies.shear_y(image, 1.0).numpy(), expected_y)


def test_cutout_paints_a_gray_square_of_side_twice_the_argument():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    full = 0
    for seed in range(12):
        out = run_op("Cutout", image, 5, seed=(seed, 1))
        changed = np.any(out != 0, axis=-1)
        rows, cols = np.nonzero(changed)
        assert np.all(out[changed] == 128)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == changed.sum() and np.ptp(rows) < 10 and np.ptp(cols) < 10
        full += changed.sum() == 100
    assert full > 0   # away from the borders the square is 10 x 10
    np.testing.assert_array_equal(run_op("Cutout", image, 0), image)


@pytest.mark.parametrize("name, op", [("Rotate", policies.rotate), ("ShearX", policies.shear_x),
                                      ("TranslateY", policies.translate_y)])
def test_signed_ops_take_either_sign_with_equal_odds(name, op):
    image = random_image(18)
    arg = RANDAUGMENT_M10_ARGS[name] / (10 if name == "TranslateY" else 1)
    plus, minus = op(image, arg).numpy(), op(image, -arg).numpy()
    signs = []
    for seed in range(40):
        out = run_op(name, image, arg, seed=(seed, 3))
        assert np.array_equal(out, plus) or np.array_equal(out, minus), name
        signs.append(np.array_equal(out, plus))
    assert 0.25 < np.mean(signs) < 0.75


def test_every_op_runs_in_graph_mode_on_unknown_sizes_as_it_does_eagerly():
    image = random_image(21, shape=(20, 28, 3))
    seed = tf.constant([4, 2], tf.int32)
    args = RANDAUGMENT_M10_ARGS

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def all_ops(x):
        return [policies.OPS[name](x, tf.constant(args[name], tf.float32), seed)
                for name in TFM_RANDAUGMENT_OPS]

    for name, traced in zip(TFM_RANDAUGMENT_OPS, all_ops(image)):
        eager = policies.OPS[name](tf.constant(image), tf.constant(args[name], tf.float32), seed)
        assert traced.dtype == tf.uint8, name
        np.testing.assert_array_equal(traced.numpy(), eager.numpy(), err_msg=name)


# --- Policies -------------------------------------------------------------------------------


def test_autoaugment_applies_the_drawn_sub_policy_with_its_probabilities():
    image = random_image(22)
    chosen_seen = set()
    for salt in range(30):
        seed = tf.constant([salt, 9])
        chosen, coins, op_seeds = (t.numpy() for t in policies.autoaugment_draws(seed))
        chosen_seen.add(int(chosen))
        expected = image
        for step, (name, probability, level) in enumerate(TFM_POLICY_V0[chosen]):
            if coins[step] < probability:
                arg = policies.level_to_arg(name, level, **AUTOAUGMENT_CONSTS)
                expected = run_op(name, expected, arg, seed=tuple(op_seeds[step]))
        np.testing.assert_array_equal(policies.autoaugment(image, seed).numpy(), expected)
    assert len(chosen_seen) >= 12


def test_autoaugment_draws_sub_policies_uniformly():
    draws = tf.function(lambda s: policies.autoaugment_draws(s)[0])
    counts = np.bincount([int(draws(tf.constant([i, 1]))) for i in range(1000)], minlength=25)
    assert counts.size == 25 and counts.min() > 15 and counts.max() < 70


def test_randaugment_draws_17_choices_and_applies_the_drawn_ops_at_magnitude_10():
    indices = policies.randaugment_draws(tf.constant([0, 1]), 4000)[0].numpy()
    counts = np.bincount(indices, minlength=17)
    assert counts.size == 17 and counts.min() > 4000 / 17 * 0.75   # 16 ops and the identity
    image = random_image(23)
    for salt in range(12):
        seed = tf.constant([salt, 5])
        indices, op_seeds = (t.numpy() for t in policies.randaugment_draws(seed, 2))
        expected = image
        for index, op_seed in zip(indices, op_seeds):
            if index < 16:   # 16 is the identity; any drawn op is always applied
                name = TFM_RANDAUGMENT_OPS[index]
                expected = run_op(name, expected, RANDAUGMENT_M10_ARGS[name], tuple(op_seed))
        np.testing.assert_array_equal(policies.randaugment(image, seed).numpy(), expected)


POLICIES = {
    "autoaugment": policies.autoaugment,
    "randaugment": lambda image, seed: policies.randaugment(image, seed, 2, 10),
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
    dynamic = tf.function(policy, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                                   tf.TensorSpec([2], tf.int32)])
    traced = dynamic(image, seed)
    assert traced.shape == (HEIGHT, WIDTH, 3) and traced.dtype == tf.uint8
    np.testing.assert_array_equal(traced.numpy(), eager.numpy())


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_in_tf_data_map_matches_eager(name):
    policy = POLICIES[name]
    images = np.stack([random_image(seed) for seed in range(6)])
    seeds = np.stack([[seed, 11] for seed in range(6)]).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
        policy, num_parallel_calls=2, deterministic=True)
    for (image, seed), out in zip(zip(images, seeds), dataset):
        assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == tf.uint8
        np.testing.assert_array_equal(out.numpy(), policy(image, seed).numpy())


def test_randaugment_without_layers_is_identity():
    image = random_image(20)
    np.testing.assert_array_equal(policies.randaugment(image, [0, 0], num_layers=0).numpy(), image)


def test_bad_arguments_raise_clear_errors():
    image = random_image(20)
    with pytest.raises(ValueError, match="magnitude"):
        policies.randaugment(image, [0, 0], magnitude=11)
    with pytest.raises(ValueError, match="num_layers"):
        policies.randaugment(image, [0, 0], num_layers=-1)
    with pytest.raises(ValueError, match="uint8"):
        policies.autoaugment(image.astype(np.float32), [0, 0])
    with pytest.raises(ValueError, match="unknown augmentation op"):
        policies.level_to_arg("Mixup", 5, **AUTOAUGMENT_CONSTS)
