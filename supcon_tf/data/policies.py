"""AutoAugment (policy "v0") and RandAugment as the official SupCon code runs them.

The SupCon authors' TF code (google-research supcon/preprocessing.py) augments
with TF Model Garden's official/vision/image_classification/augment.py:
`AutoAugment().distort` (ResNet-50, ResNet-101) and `RandAugment().distort`
inside the "stacked" recipe (ResNet-200). This module re-implements that file's
behaviour, with stateless seeds, on uint8 [H, W, 3] images:

* AutoAugment, its defaults: policy "v0" (POLICY_V0, 25 sub-policies of two
  (op, probability, level) steps), cutout_const 100, translate_const 250 (pixels).
  One sub-policy is drawn uniformly per image; each of its two ops is then
  applied with its own probability.
* RandAugment, its defaults: num_layers 2, magnitude 10, cutout_const 40,
  translate_const 100. Each layer draws one of 17 choices uniformly: the 16 ops
  of RANDAUGMENT_OPS or the identity. The drawn op is always applied: TFM draws a
  probability in [0.2, 0.8] per op and then discards it.

Levels (0..10) become op arguments as TFM's level_to_arg computes them, in
Python float arithmetic (see `level_to_arg`). Rotate, ShearX/Y and TranslateX/Y
flip the sign of their argument with probability 1/2 per call.

The ops follow TFM's TF code, not PIL, where the two differ:

* Blends (Color, Contrast, Brightness, Sharpness) truncate to uint8 (TFM casts),
  and so do AutoContrast and Sharpness's smoothing.
* Color blends with tf.image.rgb_to_grayscale (weights 0.2989, 0.587, 0.114).
* Contrast blends with a uniform image at TFM's "mean", which is the pixel count
  over 256 (TFM sums the histogram's counts, not the pixel values): 196 for
  224 x 224 images, not the mean gray level.
* Solarize compares the uint8 image with the threshold converted to uint8, so
  the threshold 256 of level 10 wraps to 0 and inverts every pixel.
* Posterize keeps int(level / 10 * 4) bits; TF's bit shifts clamp a shift of 8
  to 7, so 0 bits (level < 2.5) keeps the top bit (0 or 128).
* Geometric ops sample nearest-neighbour and fill uncovered pixels with gray 128,
  as TFM's wrap/unwrap intends (with TensorFlow <= 2.2; on TF >= 2.3 Keras's
  `transform`, which TFM calls without a fill_mode, reflects by default and the
  128 never appears). Cutout fills a square of side 2 * argument with 128.

Randomness comes only from the `seed` argument (int32 [2], stateless ops), so a
given seed gives the same image eagerly and inside tf.data; the op is chosen with
`tf.switch_case` in one cached graph shared by both policies.

Why not Keras 3's layers: keras.layers.RandAugment draws from a layer-owned
SeedGenerator, so it cannot be made deterministic per element in tf.data; Keras
has no AutoAugment; and on 224 x 224 images in a tf.data map with one private
thread on the 2-core machine it ran 20 images/s against 375 for this RandAugment
(2 layers, magnitude 10) and 500 for this AutoAugment.
"""

import functools
import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
# TFM's AutoAugment and RandAugment defaults (pixels).
AUTOAUGMENT_CUTOUT_CONST, AUTOAUGMENT_TRANSLATE_CONST = 100.0, 250.0
RANDAUGMENT_CUTOUT_CONST, RANDAUGMENT_TRANSLATE_CONST = 40.0, 100.0
RANDAUGMENT_LAYERS, RANDAUGMENT_MAGNITUDE = 2, 10.0

# TFM AutoAugment.policy_v0(): (op, probability, level) per step.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# TFM RandAugment.available_ops, in its order; choice len(RANDAUGMENT_OPS) is the identity.
RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)
IDENTITY = len(RANDAUGMENT_OPS)


# ---------------------------------------------------------------------------
# Pixel ops with explicit arguments (uint8 [H, W, 3] in, uint8 out).
# ---------------------------------------------------------------------------


def _truncate(pixels):
    """float -> uint8 as TFM casts: clipped to [0, 255], then truncated."""
    return tf.cast(tf.clip_by_value(pixels, 0.0, 255.0), tf.uint8)


def blend(degenerate, image, factor):
    """TFM blend: degenerate + factor * (image - degenerate), truncated to uint8.

    factor 0 gives degenerate, 1 the image; TFM clips only when extrapolating,
    which gives the same values since an interpolation stays in [0, 255].
    """
    degenerate = tf.cast(degenerate, tf.float32)
    image = tf.cast(image, tf.float32)
    return _truncate(degenerate + tf.cast(factor, tf.float32) * (image - degenerate))


def invert(image):
    return 255 - tf.convert_to_tensor(image)


def autocontrast(image):
    """Per channel: min -> 0, max -> 255 linearly, truncated; a flat channel stays as it is."""
    image = tf.convert_to_tensor(image)
    pixels = tf.cast(image, tf.float32)
    low = tf.reduce_min(pixels, axis=[0, 1])
    high = tf.reduce_max(pixels, axis=[0, 1])
    scale = 255.0 / tf.maximum(high - low, 1.0)
    stretched = _truncate(pixels * scale + (-low * scale))
    return tf.where(high > low, stretched, image)


def equalize(image):
    """Per-channel histogram equalization with TFM's (and PIL's) lookup-table rule."""
    num_pixels = tf.shape(image)[0] * tf.shape(image)[1]
    pixels = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
    # One histogram for the three channels: channel c uses bins [256c, 256c + 256).
    binned = pixels + tf.constant([0, 256, 512], tf.int32)
    hist = tf.reshape(tf.histogram_fixed_width(binned, [0, 768], nbins=768), [3, 256])
    # The count of the brightest value present is left out when sizing the bins.
    count_of_max = tf.gather(hist, tf.reduce_max(pixels, axis=0), batch_dims=1)
    step = (num_pixels - count_of_max) // 255
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    lut = tf.clip_by_value((safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step,
                           0, 255)
    equalized = tf.gather(tf.reshape(lut, [-1]), binned)
    # A channel with (almost) one value has step 0 and stays unchanged.
    out = tf.where(step > 0, equalized, pixels)
    return tf.cast(tf.reshape(out, tf.shape(image)), tf.uint8)


def posterize(image, bits):
    """Shifts right then left by 8 - bits; TF clamps a shift of 8 to 7 (bits 0 keeps 1 bit)."""
    shift = tf.cast(8 - tf.cast(bits, tf.int32), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
    """Inverts every pixel >= threshold, taken modulo 256 as TF's conversion to uint8 does."""
    threshold = tf.cast(tf.math.floormod(tf.cast(threshold, tf.int32), 256), tf.uint8)
    return tf.where(image < threshold, image, 255 - image)


def solarize_add(image, addition, threshold=128):
    """Adds `addition` (then clips to [0, 255]) to every pixel below threshold."""
    added = tf.cast(image, tf.int32) + tf.cast(addition, tf.int32)
    added = tf.cast(tf.clip_by_value(added, 0, 255), tf.uint8)
    return tf.where(image < threshold, added, image)


def color(image, factor):
    """Blends with the tf.image.rgb_to_grayscale image: 0 gives gray, 1 the identity."""
    gray = tf.image.rgb_to_grayscale(image)
    return blend(tf.broadcast_to(gray, tf.shape(image)), image, factor)


def contrast(image, factor):
    """Blends with a uniform image at TFM's "mean": the pixel count over 256, truncated."""
    count = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
    degenerate = tf.cast(_truncate(count / 256.0), tf.float32)
    return blend(tf.fill(tf.shape(image), degenerate), image, factor)


def brightness(image, factor):
    """Blends with black: every pixel times factor, truncated."""
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blends with the 3x3 smoothed image (centre 5, others 1, / 13, truncated); borders kept."""
    pixels = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Nine shifted slices sum the window; much faster than a depthwise conv on the CPU.
    window = tf.add_n([pixels[i:height - 2 + i, j:width - 2 + j]
                       for i in range(3) for j in range(3)])
    smoothed = tf.cast(_truncate((window + 4.0 * pixels[1:-1, 1:-1]) / 13.0), tf.float32)
    paddings = [[1, 1], [1, 1], [0, 0]]
    interior = tf.pad(tf.ones_like(smoothed, tf.bool), paddings)
    degenerate = tf.where(interior, tf.pad(smoothed, paddings), pixels)
    return blend(degenerate, image, factor)


def _transform(image, transform):
    """Projective transform (output -> input map of 8 floats), nearest pixel, gray outside."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(image)[tf.newaxis],
        transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2],
        fill_value=float(FILL_VALUE),
        interpolation="NEAREST",
        fill_mode="CONSTANT")
    return out[0]


def rotate(image, degrees):
    """Rotates about the image centre by `degrees`, with TFM's transform (+90 is np.rot90)."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return _transform(image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))


def shear_x(image, level):
    """Output (x, y) takes input (x + level * y, y)."""
    level = tf.cast(level, tf.float32)
    return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
    """Output (x, y) takes input (x, y + level * x)."""
    level = tf.cast(level, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
    """Output (x, y) takes input (x + pixels, y): the content moves left by `pixels`."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
    """Output (x, y) takes input (x, y + pixels): the content moves up by `pixels`."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))


def cutout(image, pad_size, seed):
    """Gray square of rows and columns [c - pad_size, c + pad_size) about a uniform random c."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pad_size = tf.cast(pad_size, tf.int32)
    extent = tf.stack([height, width])
    center = tf.cast(tf.random.stateless_uniform([2], seed) * tf.cast(extent, tf.float32),
                     tf.int32)
    center = tf.minimum(center, extent - 1)
    rows = tf.range(height)[:, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, :]
    inside = ((rows >= center[0] - pad_size) & (rows < center[0] + pad_size)
              & (cols >= center[1] - pad_size) & (cols < center[1] + pad_size))
    return tf.where(inside[:, :, tf.newaxis], tf.constant(FILL_VALUE, tf.uint8), image)


# ---------------------------------------------------------------------------
# Levels to arguments, and the op table: (image, argument, seed) -> image.
# ---------------------------------------------------------------------------


def level_to_arg(name, level, *, cutout_const, translate_const):
    """TFM's argument of op `name` at `level` (0..10), before any random sign; a Python number.

    Computed in Python floats exactly as TFM's level_to_arg: int() where TFM
    truncates (Posterize bits, Solarize threshold, SolarizeAdd addition, Cutout
    half-side), floats elsewhere (Rotate degrees, Shear level, Translate pixels,
    enhance factors 0.1 + 1.8 * level / 10). AutoContrast, Equalize and Invert
    take no argument (0.0 here).
    """
    fraction = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return 0.0
    if name == "Rotate":
        return fraction * 30.0
    if name in ("ShearX", "ShearY"):
        return fraction * 0.3
    if name in ("TranslateX", "TranslateY"):
        return fraction * float(translate_const)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return fraction * 1.8 + 0.1
    multipliers = {"Posterize": 4, "Solarize": 256, "SolarizeAdd": 110, "Cutout": cutout_const}
    if name in multipliers:
        return int(fraction * multipliers[name])
    raise ValueError(f"unknown augmentation op {name!r}")


def random_sign(value, seed):
    """value or -value, each with probability 1/2 (TFM's _randomly_negate_tensor)."""
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -value, value)


OPS = {
    "AutoContrast": lambda image, arg, seed: autocontrast(image),
    "Equalize": lambda image, arg, seed: equalize(image),
    "Invert": lambda image, arg, seed: invert(image),
    "Rotate": lambda image, arg, seed: rotate(image, random_sign(arg, seed)),
    "Posterize": lambda image, arg, seed: posterize(image, arg),
    "Solarize": lambda image, arg, seed: solarize(image, arg),
    "Color": lambda image, arg, seed: color(image, arg),
    "Contrast": lambda image, arg, seed: contrast(image, arg),
    "Brightness": lambda image, arg, seed: brightness(image, arg),
    "Sharpness": lambda image, arg, seed: sharpness(image, arg),
    "ShearX": lambda image, arg, seed: shear_x(image, random_sign(arg, seed)),
    "ShearY": lambda image, arg, seed: shear_y(image, random_sign(arg, seed)),
    "TranslateX": lambda image, arg, seed: translate_x(image, random_sign(arg, seed)),
    "TranslateY": lambda image, arg, seed: translate_y(image, random_sign(arg, seed)),
    "Cutout": lambda image, arg, seed: cutout(image, arg, seed),
    "SolarizeAdd": lambda image, arg, seed: solarize_add(image, arg),
}


@functools.lru_cache(maxsize=None)
def _op_switch():
    """A tf.function running op `index` of RANDAUGMENT_OPS (IDENTITY: none) on one image.

    Traced once for any image size and shared by both policies and every
    pipeline: tracing the branches, not running them, is the slow part.
    """
    branches = [OPS[name] for name in RANDAUGMENT_OPS] + [lambda image, arg, seed: image]

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int32)])
    def apply(image, index, arg, seed):
        return tf.switch_case(index, [lambda op=op: op(image, arg, seed) for op in branches])

    return apply


def apply_op(index, image, arg, seed):
    """Op `index` of RANDAUGMENT_OPS (IDENTITY: none) with argument `arg` on uint8 [H, W, 3]."""
    image = tf.convert_to_tensor(image)
    out = _op_switch()(image, tf.cast(index, tf.int32), tf.cast(arg, tf.float32),
                       tf.cast(seed, tf.int32))
    out.set_shape(image.shape)
    return out


# ---------------------------------------------------------------------------
# Policies.
# ---------------------------------------------------------------------------


def _check_image(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype.name} {image.shape}")
    return image


def _v0_tables():
    """POLICY_V0 as tensors [25, 2]: op index, probability, argument (AutoAugment's constants)."""
    ids = [[RANDAUGMENT_OPS.index(name) for name, _, _ in sub] for sub in POLICY_V0]
    probabilities = [[p for _, p, _ in sub] for sub in POLICY_V0]
    args = [[level_to_arg(name, level, cutout_const=AUTOAUGMENT_CUTOUT_CONST,
                          translate_const=AUTOAUGMENT_TRANSLATE_CONST)
             for name, _, level in sub] for sub in POLICY_V0]
    return (tf.constant(ids, tf.int32), tf.constant(probabilities, tf.float32),
            tf.constant(args, tf.float32))


def autoaugment_draws(seed):
    """AutoAugment's random choices for one image: (sub-policy index, coins [2], op seeds [2, 2]).

    Step k of the sub-policy runs when coins[k] < its probability.
    """
    choice_seed, coin_seed, *op_seeds = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 4))
    chosen = tf.random.stateless_uniform([], choice_seed, minval=0, maxval=len(POLICY_V0),
                                         dtype=tf.int32)
    return chosen, tf.random.stateless_uniform([2], coin_seed), tf.stack(op_seeds)


# No tensor-dependent Python control flow below, so AutoGraph (which tf.data.map
# and tf.function apply by default) has nothing to convert; skipping it makes
# tracing several times faster.
@tf.autograph.experimental.do_not_convert
def autoaugment(image, seed):
    """TFM AutoAugment with policy v0: uint8 [H, W, 3] -> same; `seed` int32 [2]."""
    image = _check_image(image)
    ids, probabilities, args = _v0_tables()
    chosen, coins, op_seeds = autoaugment_draws(seed)
    for step in range(2):
        index = tf.where(coins[step] < probabilities[chosen, step], ids[chosen, step], IDENTITY)
        image = apply_op(index, image, args[chosen, step], op_seeds[step])
    return image


def randaugment_draws(seed, num_layers):
    """RandAugment's choices: op indices [num_layers] in [0, IDENTITY], op seeds [num_layers, 2]."""
    choice_seed, op_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2))
    indices = tf.random.stateless_uniform([num_layers], choice_seed, minval=0,
                                          maxval=IDENTITY + 1, dtype=tf.int32)
    return indices, tf.random.experimental.stateless_split(op_seed, max(num_layers, 1))


def randaugment_args(magnitude):
    """The argument of each op of RANDAUGMENT_OPS at `magnitude` (RandAugment's constants)."""
    return [level_to_arg(name, float(magnitude), cutout_const=RANDAUGMENT_CUTOUT_CONST,
                         translate_const=RANDAUGMENT_TRANSLATE_CONST) for name in RANDAUGMENT_OPS]


@tf.autograph.experimental.do_not_convert
def randaugment(image, seed, num_layers=RANDAUGMENT_LAYERS, magnitude=RANDAUGMENT_MAGNITUDE):
    """TFM RandAugment(num_layers, magnitude): uint8 [H, W, 3] -> same; `seed` int32 [2].

    Each layer applies one of the 16 ops at `magnitude`, or nothing, each of the
    17 choices with probability 1/17.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError("randaugment num_layers (config.data.randaugment_layers) must be an "
                         f"int >= 0, got {num_layers!r}")
    if not 0 <= magnitude <= MAX_LEVEL:
        raise ValueError("randaugment magnitude (config.data.randaugment_magnitude) must be in "
                         f"[0, {MAX_LEVEL:g}], got {magnitude!r}")
    image = _check_image(image)
    args = tf.constant(randaugment_args(magnitude) + [0.0], tf.float32)
    indices, op_seeds = randaugment_draws(seed, num_layers)
    for layer in range(num_layers):
        image = apply_op(indices[layer], image, args[indices[layer]], op_seeds[layer])
    return image
