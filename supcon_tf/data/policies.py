"""AutoAugment (ImageNet policy) and RandAugment(N, M) as stateless TensorFlow ops.

The paper's ImageNet recipes augment with AutoAugment (ResNet-50) and with a
"stacked" RandAugment (ResNet-200). Both policies draw from one op set, written
here in plain TF on uint8 [H, W, 3] images, following the PIL semantics of the
AutoAugment code: AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize,
SolarizeAdd, Color, Contrast, Brightness, Sharpness, ShearX/Y, TranslateX/Y and
Cutout. Geometric ops fill with gray 128.

Magnitude m on the 0..10 scale maps linearly onto the ranges published in the
AutoAugment paper's appendix (Cubuk et al., CVPR 2019); 10 is the far end:

    Rotate              +-30 * m/10 degrees (random sign)
    ShearX, ShearY      +-0.3 * m/10 (random sign)
    TranslateX, Y       +-(150/331) * m/10 of the image width/height (random sign);
                        the paper's 150 px on 331 px images, scaled to the image
    Solarize            invert pixels >= 256 - 256 * m/10
    SolarizeAdd         add 110 * m/10 to pixels < 128
    Posterize           keep 8 - floor(4 * m/10) bits
    Color, Contrast,
    Brightness,
    Sharpness           blend factor 0.1 + 1.8 * m/10 (1.0 is the identity, at m=5)
    Cutout              gray square of side (60/331) * m/10 of the shorter side
    AutoContrast, Equalize, Invert: no magnitude.

AutoAugment uses the 25 ImageNet sub-policies published in the AutoAugment paper
(the `IMAGENET_POLICY` table); one is drawn uniformly per image and each of its
two ops is applied with its probability. (The SupCon authors' TF code called TF
Model Garden's AutoAugment, whose default is a different 25-entry table, "v0".)
RandAugment applies `num_layers` ops, each drawn uniformly with replacement from
`RANDAUGMENT_OPS` (the op list of the RandAugment authors' TF release) at the
shared magnitude, every drawn op always applied, as in the RandAugment paper.

Randomness comes only from the `seed` argument (int32 [2], stateless ops), so a
given seed gives the same image eagerly and inside `tf.data`; ops are chosen with
`tf.switch_case`, so each policy traces into one graph.

Why not Keras 3's layers: keras.layers.RandAugment (like Solarization,
Equalization, AutoContrast) draws from a layer-owned SeedGenerator and takes no
per-call stateless seed, so it cannot be made deterministic per element in
tf.data, and Keras has no AutoAugment. It is also far slower: on 224x224 images
in tf.data (one map thread, same run) it gave 2 images/s against 30 for
`randaugment` and 60 for `autoaugment_imagenet` on the shared 2-core machine.
"""

import functools
import math

import tensorflow as tf

_MAX_LEVEL = 10.0
_FILL_GRAY = 128.0
# The paper's translation and cutout ranges are in pixels of 331 px images.
_TRANSLATE_FRACTION = 150.0 / 331.0
_CUTOUT_FRACTION = 60.0 / 331.0


# ---------------------------------------------------------------------------
# Pixel ops with explicit arguments (uint8 [H, W, 3] in, uint8 out).
# ---------------------------------------------------------------------------


def _to_uint8(image):
    """Rounds a float image to the nearest uint8, clipping to [0, 255]."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _blend(degenerate, image, factor):
    """PIL ImageEnhance: degenerate + factor * (image - degenerate), in uint8."""
    degenerate = tf.cast(degenerate, tf.float32)
    image = tf.cast(image, tf.float32)
    return _to_uint8(degenerate + factor * (image - degenerate))


def _grayscale(image):
    """ITU-R 601-2 luma (PIL's convert("L")) as float [H, W, 1], rounded."""
    weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
    luma = tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True)
    return tf.round(luma)


def invert(image):
    return 255 - tf.convert_to_tensor(image)


def autocontrast(image):
    """Stretches each channel linearly so that its min goes to 0 and its max to 255."""
    pixels = tf.cast(image, tf.float32)
    low = tf.reduce_min(pixels, axis=[0, 1])
    high = tf.reduce_max(pixels, axis=[0, 1])
    # A flat channel has nothing to stretch and is kept as it is.
    flat = high <= low
    scale = tf.where(flat, 1.0, 255.0 / tf.maximum(high - low, 1.0))
    offset = tf.where(flat, 0.0, low)
    return _to_uint8((pixels - offset) * scale)


def equalize(image):
    """Per-channel histogram equalization with PIL's lookup-table rule."""
    num_pixels = tf.shape(image)[0] * tf.shape(image)[1]
    pixels = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
    # One histogram for the three channels: channel c uses bins [256c, 256c + 256).
    binned = pixels + tf.constant([0, 256, 512], tf.int32)
    # Unit-width bins over [0, 768); faster here than tf.math.bincount.
    hist = tf.histogram_fixed_width(binned, [0, 768], nbins=768)
    hist = tf.reshape(hist, [3, 256])
    # PIL leaves out the count of the brightest value when sizing the bins.
    count_of_max = tf.gather(hist, tf.reduce_max(pixels, axis=0), batch_dims=1)
    step = (num_pixels - count_of_max) // 255
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    lut = (safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    lut = tf.clip_by_value(lut, 0, 255)
    equalized = tf.gather(tf.reshape(lut, [-1]), binned)
    # A channel with (almost) one value has step 0 and stays unchanged.
    out = tf.where(step > 0, equalized, pixels)
    return tf.cast(tf.reshape(out, tf.shape(image)), tf.uint8)


def posterize(image, bits):
    """Keeps the `bits` most significant bits of each pixel (bits in 0..8)."""
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
    """Inverts every pixel >= threshold; threshold 256 is the identity."""
    threshold = tf.cast(threshold, tf.float32)
    return tf.where(tf.cast(image, tf.float32) >= threshold, 255 - image, image)


def solarize_add(image, addition, threshold=128):
    """Adds `addition` (clipped to [0, 255]) to every pixel below threshold."""
    pixels = tf.cast(image, tf.float32)
    added = _to_uint8(pixels + tf.cast(addition, tf.float32))
    return tf.where(pixels < tf.cast(threshold, tf.float32), added, image)


def color(image, factor):
    """Blends with the grayscale image: 0 gives grayscale, 1 the identity."""
    return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image, factor):
    """Blends with the uniform image at the mean gray level."""
    mean = tf.round(tf.reduce_mean(_grayscale(image)))
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    """Blends with black: scales every pixel by factor."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blends with PIL's SMOOTH-filtered image (3x3, centre 5, others 1, / 13)."""
    pixels = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Nine shifted slices sum the 3x3 window; much faster than a depthwise conv on CPU.
    window_sum = tf.add_n(
        [pixels[i : height - 2 + i, j : width - 2 + j] for i in range(3) for j in range(3)]
    )
    smoothed = tf.round((window_sum + 4.0 * pixels[1:-1, 1:-1]) / 13.0)
    # The filter leaves the one-pixel border untouched, as PIL does.
    paddings = [[1, 1], [1, 1], [0, 0]]
    interior = tf.pad(tf.ones_like(smoothed, tf.bool), paddings)
    degenerate = tf.where(interior, tf.pad(smoothed, paddings), pixels)
    return _blend(degenerate, image, factor)


def _transform(image, transform):
    """Applies a projective transform (output -> input map of 8 floats), gray fill."""
    pixels = tf.cast(image, tf.float32)[tf.newaxis]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels,
        transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2],
        fill_value=_FILL_GRAY,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return _to_uint8(out[0])


def rotate(image, degrees):
    """Rotates counter-clockwise about the image centre (PIL's convention)."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    center_x, center_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Input point = R(angle) (output point - centre) + centre, with y pointing down.
    transform = [
        cos, -sin, center_x - cos * center_x + sin * center_y,
        sin, cos, center_y - sin * center_x - cos * center_y,
        0.0, 0.0,
    ]
    return _transform(image, tf.stack(transform))


def shear_x(image, shear):
    """Output (x, y) takes input (x + shear * y, y), as PIL's affine transform."""
    shear = tf.cast(shear, tf.float32)
    return _transform(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, shear):
    """Output (x, y) takes input (x, y + shear * x)."""
    shear = tf.cast(shear, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
    """Moves the content right by `pixels` (left when negative)."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
    """Moves the content down by `pixels` (up when negative)."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0]))


def cutout(image, size, seed):
    """Fills a size x size square (clipped at the borders) at a random centre with gray."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    size = tf.cast(size, tf.int32)
    center = tf.random.stateless_uniform(
        [2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32
    ) % tf.stack([height, width])
    top, left = center[0] - size // 2, center[1] - size // 2
    rows = tf.range(height)[:, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    gray = tf.constant(int(_FILL_GRAY), tf.uint8)
    return tf.where(inside[:, :, tf.newaxis], gray, image)


# ---------------------------------------------------------------------------
# Magnitude (0..10) to op arguments. Each entry: (image, magnitude, seed) -> image.
# ---------------------------------------------------------------------------


def _fraction(magnitude):
    return tf.cast(magnitude, tf.float32) / _MAX_LEVEL


def _random_sign(seed):
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


def _enhance_factor(magnitude):
    return 0.1 + 1.8 * _fraction(magnitude)


def _translate_pixels(image, magnitude, seed, axis):
    extent = tf.cast(tf.shape(image)[axis], tf.float32)
    return _random_sign(seed) * _TRANSLATE_FRACTION * _fraction(magnitude) * extent


def _cutout_size(image, magnitude):
    shorter = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
    return tf.round(_CUTOUT_FRACTION * _fraction(magnitude) * shorter)


OPS = {
    "Identity": lambda image, magnitude, seed: image,
    "AutoContrast": lambda image, magnitude, seed: autocontrast(image),
    "Equalize": lambda image, magnitude, seed: equalize(image),
    "Invert": lambda image, magnitude, seed: invert(image),
    "Rotate": lambda image, magnitude, seed: rotate(
        image, _random_sign(seed) * 30.0 * _fraction(magnitude)
    ),
    "Posterize": lambda image, magnitude, seed: posterize(
        image, 8 - tf.cast(tf.floor(4.0 * _fraction(magnitude)), tf.int32)
    ),
    "Solarize": lambda image, magnitude, seed: solarize(
        image, 256.0 - 256.0 * _fraction(magnitude)
    ),
    "SolarizeAdd": lambda image, magnitude, seed: solarize_add(
        image, tf.floor(110.0 * _fraction(magnitude))
    ),
    "Color": lambda image, magnitude, seed: color(image, _enhance_factor(magnitude)),
    "Contrast": lambda image, magnitude, seed: contrast(image, _enhance_factor(magnitude)),
    "Brightness": lambda image, magnitude, seed: brightness(
        image, _enhance_factor(magnitude)
    ),
    "Sharpness": lambda image, magnitude, seed: sharpness(
        image, _enhance_factor(magnitude)
    ),
    "ShearX": lambda image, magnitude, seed: shear_x(
        image, _random_sign(seed) * 0.3 * _fraction(magnitude)
    ),
    "ShearY": lambda image, magnitude, seed: shear_y(
        image, _random_sign(seed) * 0.3 * _fraction(magnitude)
    ),
    "TranslateX": lambda image, magnitude, seed: translate_x(
        image, _translate_pixels(image, magnitude, seed, axis=1)
    ),
    "TranslateY": lambda image, magnitude, seed: translate_y(
        image, _translate_pixels(image, magnitude, seed, axis=0)
    ),
    "Cutout": lambda image, magnitude, seed: cutout(
        image, _cutout_size(image, magnitude), seed
    ),
}

# AutoAugment paper, ImageNet policy: 25 sub-policies of (op, probability, magnitude).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)

RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)


# ---------------------------------------------------------------------------
# Policies.
# ---------------------------------------------------------------------------


def _check_image(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(
            f"image must be uint8 [H, W, 3], got {image.dtype.name} {image.shape}"
        )
    return image


@functools.lru_cache(maxsize=None)
def _op_switch(ops):
    """A tf.function running ops[index](image, magnitude, seed), chosen at run time.

    Cached per op tuple and traced once for any image size, so the layers of a
    policy and every pipeline that uses it share one graph of all the branches
    instead of tracing them again (tracing, not running, is the slow part).
    """

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([2], tf.int64),
        ],
    )
    def apply(image, index, magnitude, seed):
        return tf.switch_case(index, [lambda op=op: op(image, magnitude, seed) for op in ops])

    return apply


def _apply_one_of(ops, index, image, magnitude, seed):
    out = _op_switch(tuple(ops))(
        image, index, tf.cast(magnitude, tf.float32), tf.cast(seed, tf.int64)
    )
    out.set_shape(image.shape)
    return out


# No tensor-dependent Python control flow below, so AutoGraph (which tf.data.map
# and tf.function apply by default) has nothing to convert; skipping it makes
# tracing several times faster.
@tf.autograph.experimental.do_not_convert
def autoaugment_imagenet(image, seed):
    """AutoAugment with the paper's ImageNet policy: uint8 [H, W, 3] -> same.

    One of the 25 sub-policies is drawn uniformly; each of its two ops is then
    applied with its own probability. `seed` is an int32 [2] stateless seed.
    """
    image = _check_image(image)
    names = sorted({name for sub in IMAGENET_POLICY for name, _, _ in sub})
    identity = len(names)
    ops = [OPS[name] for name in names] + [OPS["Identity"]]
    op_ids = tf.constant([[names.index(n) for n, _, _ in sub] for sub in IMAGENET_POLICY])
    probs = tf.constant([[p for _, p, _ in sub] for sub in IMAGENET_POLICY], tf.float32)
    magnitudes = tf.constant([[m for _, _, m in sub] for sub in IMAGENET_POLICY], tf.float32)

    choice_seed, *step_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    chosen = tf.random.stateless_uniform(
        [], choice_seed, minval=0, maxval=len(IMAGENET_POLICY), dtype=tf.int32
    )
    for step in range(2):
        coin_seed, op_seed = step_seeds[2 * step], step_seeds[2 * step + 1]
        applied = tf.random.stateless_uniform([], coin_seed) < probs[chosen, step]
        index = tf.where(applied, op_ids[chosen, step], identity)
        image = _apply_one_of(ops, index, image, magnitudes[chosen, step], op_seed)
    return image


@tf.autograph.experimental.do_not_convert
def randaugment(image, seed, num_layers=2, magnitude=10, ops=None):
    """RandAugment(N=num_layers, M=magnitude): uint8 [H, W, 3] -> same.

    Applies exactly `num_layers` ops, each drawn uniformly (with replacement)
    from `ops`, all at `magnitude` on the 0..10 scale. `ops` defaults to the
    RandAugment op set (`RANDAUGMENT_OPS`); it may be any sequence of
    (image, magnitude, seed) -> image callables. `seed` is an int32 [2].
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(
            f"randaugment num_layers (config.data.randaugment_layers) must be an int >= 0, "
            f"got {num_layers!r}"
        )
    if not 0 <= magnitude <= _MAX_LEVEL:
        raise ValueError(
            f"randaugment magnitude (config.data.randaugment_magnitude) must be in "
            f"[0, {_MAX_LEVEL:g}], got {magnitude!r}"
        )
    image = _check_image(image)
    ops = [OPS[name] for name in RANDAUGMENT_OPS] if ops is None else list(ops)
    if not ops:
        raise ValueError("randaugment ops must not be empty")
    magnitude = tf.constant(magnitude, tf.float32)
    for layer in range(num_layers):
        layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
        index = tf.random.stateless_uniform(
            [], choice_seed, minval=0, maxval=len(ops), dtype=tf.int32
        )
        image = _apply_one_of(ops, index, image, magnitude, op_seed)
    return image
