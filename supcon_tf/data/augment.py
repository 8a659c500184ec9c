"""The paper's augmentations as pure TensorFlow functions with stateless randomness.

Every function takes an explicit seed (int32 [2]) and draws all its random numbers
from it, so the same seed gives the same output, eagerly or inside tf.data. There
are two kinds:

* geometry on one decoded image: crop windows and their resized crops, run per
  example right after decoding (TF ops, since image sizes vary);
* photometry on a stack of images [n, H, W, 3] float32 (flips, colour jitter,
  grayscale, blur), with one set of random parameters per image. Each op works
  alone; view_photometry runs them on a batch of views as two XLA programs,
  one that fuses the flip and the colour ops into one pass over the pixels and
  one for the blur.

Keras 3's augmentation layers are not used: they draw from stateful seed
generators, so a resumed run could not replay the same augmentations;
RandomColorJitter applies its four ops always and in one fixed order, where
SimAugment applies them with p = 0.8 in a random order per image;
RandomGaussianBlur draws one sigma per batch, not per image; and they are
slower (benchmarks/augment_bench.py: their four ops cost about 85 core-ms per
224 x 224 view even under XLA, the jitter alone 2.2, against 0.8 here).
"""

import math

import numpy as np
import tensorflow as tf

# Gaussian blur support: 3 sigma of the largest sigma (2.0) on each side.
BLUR_SIGMA_RANGE = (0.1, 2.0)
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA_RANGE[1])
# Reflect padding by BLUR_RADIUS needs a larger image.
BLUR_MIN_SIZE = 2 * BLUR_RADIUS + 1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)

# Colour-jitter ops, applied in a random order per image.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
# Salts that give each op of view_photometry its own random stream.
_FLIP, _JITTER, _GRAY, _BLUR = range(4)


def fold_seed(seed, salt):
    """A new int32 [2] seed from `seed` and an integer `salt` (a stream index, a view, an op)."""
    seed = tf.cast(seed, tf.int32)
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(salt, tf.int32))


# ---------------------------------------------------------------------------- geometry


def sample_crop_windows(image_shape, seed, *, num_views, area_range,
                        aspect_ratio_range=ASPECT_RATIO_RANGE):
    """Random-resized-crop windows [num_views, 4] int32 (top, left, height, width).

    Area is a fraction of the image in `area_range`, aspect ratio (w/h) in
    `aspect_ratio_range`; after 100 failed attempts a window is the whole image.
    """
    image_shape = tf.cast(image_shape, tf.int32)
    windows = []
    for view in range(num_views):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            image_shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=fold_seed(seed, view),
            min_object_covered=0.0,
            aspect_ratio_range=aspect_ratio_range,
            area_range=area_range,
            max_attempts=100,
            use_image_if_no_bounding_boxes=True)
        windows.append(tf.stack([begin[0], begin[1], size[0], size[1]]))
    return tf.stack(windows)


def union_window(windows):
    """The smallest window [4] (top, left, height, width) holding all `windows` [V, 4]."""
    top_left = tf.reduce_min(windows[:, :2], axis=0)
    bottom_right = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
    return tf.concat([top_left, bottom_right - top_left], axis=0)


def resized_crops(image, windows, size):
    """Crops `windows` [V, 4] out of one image [H, W, C] and resizes each to size x size (bilinear).

    Returns float32 [V, size, size, C] in the input's value range (0-255 for
    uint8). Slicing then resizing costs about 0.6x of one crop_and_resize op
    for all views on the CPU.
    """
    crops = []
    for view in range(windows.shape[0]):
        top, left, height, width = (windows[view, i] for i in range(4))
        crops.append(tf.image.resize(image[top:top + height, left:left + width], [size, size]))
    return tf.stack(crops)


def random_flips(seed, num_views, probability=0.5):
    """[num_views] bool: which views to mirror left-right."""
    return tf.random.stateless_uniform([num_views], seed) < probability


def random_resized_crop_views(image, seed, *, num_views, size, area_range):
    """num_views random resized crops of one decoded image [H, W, 3].

    Returns float32 [V, size, size, 3] in the image's value range (0-255 for
    uint8); view_photometry flips and rescales them.
    """
    windows = sample_crop_windows(tf.shape(image), seed, num_views=num_views,
                                  area_range=area_range)
    return resized_crops(image, windows, size)


def decode_jpeg_crop_views(encoded, seed, *, num_views, size, area_range):
    """Random resized crops of a JPEG, decoding only the rows/columns the views use.

    The windows come from the JPEG header (extract_jpeg_shape), the image is
    decoded once with decode_and_crop_jpeg over the union of the windows, and the
    views are cut from that region. Returns float32 [V, size, size, 3] in 0-255,
    the same as random_resized_crop_views on the decoded image.
    """
    shape = tf.image.extract_jpeg_shape(encoded)
    windows = sample_crop_windows(shape, seed, num_views=num_views, area_range=area_range)
    region = union_window(windows)
    image = tf.image.decode_and_crop_jpeg(encoded, region, channels=3)
    relative = windows - tf.concat([region[:2], [0, 0]], axis=0)
    return resized_crops(image, relative, size)


def center_crop_jpeg(encoded, *, size, crop_fraction=224.0 / 256.0):
    """ImageNet eval preprocessing: a centred square of crop_fraction of the shorter side.

    Equals "resize the shorter side to 256, centre-crop 224" scaled to `size`,
    but decodes only the crop. Returns float32 [size, size, 3] in [0, 1].
    """
    shape = tf.image.extract_jpeg_shape(encoded)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32)),
                   tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    return resize(image, size)


def resize(image, size):
    """A decoded image [H, W, 3] (uint8) -> float32 [size, size, 3] in [0, 1], bilinear."""
    image = tf.cast(image, tf.float32) / 255.0
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    resized = tf.cond(same, lambda: image, lambda: tf.image.resize(image, [size, size]))
    return tf.ensure_shape(resized, [size, size, 3])


# ---------------------------------------------------------------------------- photometry


# Luma weights of tf.image.rgb_to_grayscale (ITU-R 601).
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _homogeneous(linear, bias):
    """linear [n, 3, 3] and bias [n, 3] -> [n, 4, 4] acting on (r, g, b, 1)."""
    n = tf.shape(linear)[0]
    top = tf.concat([linear, bias[:, :, None]], axis=2)
    bottom = tf.tile(tf.constant([[[0.0, 0.0, 0.0, 1.0]]]), [n, 1, 1])
    return tf.concat([top, bottom], axis=1)


def _identities(n):
    return tf.eye(4, batch_shape=[n])


def _gray_matrix(n):
    """[n, 3, 3]: every output channel is the luma of the input."""
    return tf.tile(tf.constant(np.tile(GRAY_WEIGHTS, (3, 1)))[None], [n, 1, 1])


def _blend_with_gray(factor):
    """Saturation: factor * x + (1 - factor) * gray(x), as [n, 3, 3]."""
    n = tf.shape(factor)[0]
    eye = tf.eye(3, batch_shape=[n])
    factor = factor[:, None, None]
    return factor * eye + (1.0 - factor) * _gray_matrix(n)


def _hue_rotation(delta):
    """Hue rotated by delta [n] (a fraction of the circle) in YIQ space, as [n, 3, 3]."""
    angle = 2.0 * np.pi * delta
    cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle), tf.ones_like(angle)
    rotation = tf.stack([tf.stack([one, zero, zero], -1),
                         tf.stack([zero, cos, -sin], -1),
                         tf.stack([zero, sin, cos], -1)], axis=1)
    return tf.constant(_YIQ_TO_RGB)[None] @ rotation @ tf.constant(_RGB_TO_YIQ)[None]


def color_jitter_transforms(mean_color, seed, *, strength, probability=0.8):
    """Per-image colour-jitter transforms [n, 4, 4], given each image's mean colour [n, 3].

    SimCLR colour distortion of strength s: with `probability`, brightness,
    contrast and saturation factors from [max(0, 1 - 0.8 s), 1 + 0.8 s] and a hue
    shift from [-0.2 s, 0.2 s], composed in a random order per image. Brightness
    scales, contrast blends with the mean gray level (of the image as it is at
    that point of the order), saturation blends with the gray image (torchvision
    semantics). Hue rotates the chroma plane of YIQ.

    All four are affine maps of the colour, so each image's jitter is one 4x4
    matrix, applied in a single pass by apply_color_transform. This differs from
    per-op code in two small ways, chosen for speed: hue is the YIQ rotation
    rather than an HSV shift, and values are clipped to [0, 1] once at the end
    rather than after each op.
    """
    n = tf.shape(mean_color)[0]
    apply = tf.random.stateless_uniform([n], fold_seed(seed, 0)) < probability
    low, high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
    brightness, contrast, saturation = [
        tf.random.stateless_uniform([n], fold_seed(seed, 1 + op), minval=low, maxval=high)
        for op in (_BRIGHTNESS, _CONTRAST, _SATURATION)]
    hue_delta = tf.random.stateless_uniform([n], fold_seed(seed, 4),
                                            minval=-0.2 * strength, maxval=0.2 * strength)
    order = tf.argsort(tf.random.stateless_uniform([n, 4], fold_seed(seed, 5)), axis=1)

    zero_bias = tf.zeros([n, 3])
    eye = tf.eye(3, batch_shape=[n])
    brightness_map = _homogeneous(brightness[:, None, None] * eye, zero_bias)
    saturation_map = _homogeneous(_blend_with_gray(saturation), zero_bias)
    hue_map = _homogeneous(_hue_rotation(hue_delta), zero_bias)
    mean_color = tf.concat([mean_color, tf.ones([n, 1])], axis=1)[:, :, None]   # [n, 4, 1]
    transform = _identities(n)
    for round_index in range(4):
        # Contrast depends on the mean gray level after the ops before it.
        current_mean = (transform @ mean_color)[:, :3, 0]
        mean_gray = tf.reduce_sum(current_mean * GRAY_WEIGHTS, axis=1)
        contrast_map = _homogeneous(
            contrast[:, None, None] * eye,
            tf.tile(((1.0 - contrast) * mean_gray)[:, None], [1, 3]))
        candidates = tf.stack([brightness_map, contrast_map, saturation_map, hue_map], axis=1)
        step = tf.gather(candidates, order[:, round_index], batch_dims=1)
        step = tf.where(apply[:, None, None], step, _identities(n))
        transform = step @ transform
    return transform


def grayscale_transforms(n, seed, probability=0.2):
    """Per-image transforms [n, 4, 4]: gray (3 equal channels) with `probability`, else identity."""
    to_gray = tf.random.stateless_uniform([n], seed) < probability
    gray = _homogeneous(_gray_matrix(n), tf.zeros([n, 3]))
    return tf.where(to_gray[:, None, None], gray, _identities(n))


def apply_color_transform(images, transforms):
    """images [n, H, W, 3] mapped by per-image affine transforms [n, 4, 4], clipped to [0, 1].

    Written as broadcast multiply-adds rather than a matmul with an inner
    dimension of 3: under XLA they fuse into one pass over the pixels, several
    times faster than the matmul.
    """
    linear = transforms[:, None, None, :3, :3]
    mapped = (images[..., 0, None] * linear[..., 0] + images[..., 1, None] * linear[..., 1]
              + images[..., 2, None] * linear[..., 2] + transforms[:, None, None, :3, 3])
    return tf.clip_by_value(mapped, 0.0, 1.0)


def mean_color(images):
    """[n, H, W, 3] -> [n, 3].

    Summed over rows first, as [n, H, W * 3], which the CPU kernels vectorize;
    reducing the H and W axes of [n, H, W, 3] at once runs several times slower.
    """
    n, height, width, channels = (tf.shape(images)[i] for i in range(4))
    columns = tf.reduce_sum(tf.reshape(images, [n, height, width * channels]), axis=1)
    pixels = tf.cast(height * width, images.dtype)
    return tf.reduce_sum(tf.reshape(columns, [n, width, channels]), axis=1) / pixels


def color_jitter(images, seed, *, strength, probability=0.8):
    """Colour jitter (see color_jitter_transforms) of images [n, H, W, 3] in [0, 1]."""
    transforms = color_jitter_transforms(mean_color(images), seed, strength=strength,
                                         probability=probability)
    return apply_color_transform(images, transforms)


def random_grayscale(images, seed, probability=0.2):
    """Each image of [n, H, W, 3] becomes gray (3 equal channels) with `probability`."""
    return apply_color_transform(
        images, grayscale_transforms(tf.shape(images)[0], seed, probability))


def gaussian_kernels(sigma, radius=BLUR_RADIUS):
    """Normalized 1-D Gaussian kernels [n, 2 * radius + 1] for sigma [n]."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def _weighted_shifts(rows, kernels, axis, length, stride):
    """sum over t of kernels[:, t] * rows shifted by t * stride along axis (1 or 2) of [n, A, B]."""
    total = None
    for tap in range(kernels.shape[1]):
        begin = [0, 0, 0]
        begin[axis] = tap * stride
        size = [-1, -1, -1]
        size[axis] = length
        term = kernels[:, tap, None, None] * tf.slice(rows, begin, size)
        total = term if total is None else total + term
    return total


def _pad_columns(images):
    """images [n, H, W, C] -> [n, H, W + 2 * BLUR_RADIUS, C], mirrored at the left and right edges.

    The blur's horizontal pass reads these columns. Padding here, as the end of
    an elementwise XLA program, is cheap; the same padding or border code inside
    the horizontal pass would split its rows into short runs that do not vectorize.
    """
    return tf.pad(images, [[0, 0], [0, 0], [BLUR_RADIUS, BLUR_RADIUS], [0, 0]], mode="REFLECT")


def _vertical_blur(rows, kernels):
    """Blur along the image height of rows [n, H, L], reflect padding at the top and bottom."""
    height = rows.shape[1]
    radius = (kernels.shape[1] - 1) // 2
    interior = _weighted_shifts(rows, kernels, 1, height - 2 * radius, 1)
    # Each border strip of `radius` outputs needs 2 * radius inputs, mirrored outwards.
    first = tf.pad(rows[:, :2 * radius], [[0, 0], [radius, 0], [0, 0]], mode="REFLECT")
    last = tf.pad(rows[:, height - 2 * radius:], [[0, 0], [0, radius], [0, 0]], mode="REFLECT")
    borders = [_weighted_shifts(strip, kernels, 1, radius, 1) for strip in (first, last)]
    return tf.concat([borders[0], interior, borders[1]], axis=1)


def _blur_padded(rows, seed, *, channels, probability, sigma_range):
    """Blurs each image with `probability`, sigma uniform in range; reflect padding.

    rows [n, H, (W + 2 * BLUR_RADIUS) * C]: images padded by _pad_columns, viewed
    as rows so that both passes shift along a contiguous row (by a row for the
    vertical pass, by C for the horizontal one) and every loop XLA emits runs
    over long rows. Returns rows [n, H, W * C]. All images go through the blur,
    the unselected ones with the identity kernel (exact: its other taps add
    zeros), which on the CPU costs less than blurring only the selected ones.
    """
    n = tf.shape(rows)[0]
    selected = tf.random.stateless_uniform([n], fold_seed(seed, 0)) < probability
    sigma = tf.random.stateless_uniform([n], fold_seed(seed, 1),
                                        minval=sigma_range[0], maxval=sigma_range[1])
    identity = tf.one_hot(BLUR_RADIUS, 2 * BLUR_RADIUS + 1)[None]
    kernels = tf.where(selected[:, None], gaussian_kernels(sigma), identity)
    width = rows.shape[2] // channels - 2 * BLUR_RADIUS
    return _weighted_shifts(_vertical_blur(rows, kernels), kernels, 2, width * channels, channels)


_fused_pad_columns = tf.function(_pad_columns, jit_compile=True)
# The padding runs as its own program, or at the end of the colour program: in the
# blur's program XLA would redo it in each of the vertical pass's 13 taps.
_fused_blur_padded = tf.function(_blur_padded, jit_compile=True)


def _random_blur_of_padded(padded, seed, probability, sigma_range):
    """random_gaussian_blur of images [n, H, W + 2 * BLUR_RADIUS, C] padded by _pad_columns."""
    _, height, padded_width, channels = padded.shape
    rows = tf.reshape(padded, [-1, height, padded_width * channels])
    rows = _fused_blur_padded(rows, seed, channels=channels, probability=probability,
                              sigma_range=tuple(sigma_range))
    # Back to pixels outside XLA, where a reshape is free; inside, XLA would loop over C.
    return tf.reshape(rows, [-1, height, padded_width - 2 * BLUR_RADIUS, channels])


def random_gaussian_blur(images, seed, probability=0.5, sigma_range=BLUR_SIGMA_RANGE):
    """Blurs each image of [n, H, W, 3] with `probability`, sigma uniform in `sigma_range` (pixels).

    H and W must be static and at least BLUR_MIN_SIZE. Reflect padding.
    """
    return _random_blur_of_padded(_fused_pad_columns(images), seed, probability, sigma_range)


def _view_photometry(views, mean_color, seed, *, value_range, hflip, color_strength,
                     grayscale, pad_for_blur):
    n = tf.shape(views)[0]
    if hflip:
        flip = random_flips(fold_seed(seed, _FLIP), n)
        views = tf.where(flip[:, None, None, None], tf.reverse(views, axis=[2]), views)
    scale = tf.constant([1.0 / value_range] * 3 + [1.0])
    transforms = tf.linalg.diag(tf.tile(scale[None], [n, 1]))
    if color_strength is not None:
        transforms = color_jitter_transforms(mean_color, fold_seed(seed, _JITTER),
                                             strength=color_strength) @ transforms
    if grayscale:
        transforms = grayscale_transforms(n, fold_seed(seed, _GRAY)) @ transforms
    views = apply_color_transform(views, transforms)
    return _pad_columns(views) if pad_for_blur else views


_fused_view_photometry = tf.function(_view_photometry, jit_compile=True)


def view_photometry(views, seed, *, value_range=255.0, hflip=True, color_strength=1.0,
                    grayscale=True, blur=False, blur_sigma_range=BLUR_SIGMA_RANGE):
    """SimAugment's per-view ops on a stack of views [n, S, S, 3], as XLA programs.

    In order: mirror left-right with p = 0.5 (if hflip), colour jitter of
    strength color_strength with p = 0.8 (None: no jitter), grayscale with
    p = 0.2 (if grayscale), Gaussian blur with p = 0.5 (if blur). Inputs are in
    [0, value_range] (255 for the output of the crops); outputs are float32 in
    [0, 1], each view with its own random parameters. The flip and the colour
    ops are one program, the blur a second one. Run on a whole batch, their
    fixed cost is shared by all its views.
    """
    mean = tf.zeros([tf.shape(views)[0], 3])
    if color_strength is not None:
        mean = mean_color(views) / value_range  # outside XLA, where this reduction is faster
    views = _fused_view_photometry(views, mean, seed, value_range=float(value_range), hflip=hflip,
                                   color_strength=color_strength, grayscale=grayscale,
                                   pad_for_blur=blur)
    if blur:
        views = _random_blur_of_padded(views, fold_seed(seed, _BLUR), 0.5, blur_sigma_range)
    return views


# ---------------------------------------------------------------------------- op policies


def to_uint8(images):
    """float32 in [0, 1] -> uint8 (rounded), the input type of the op policies."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)


def apply_policy(views, seed, policy):
    """Applies policy(image uint8 [H, W, 3], seed int32 [2]) to each of views [V, H, W, 3] float32.

    Returns float32 [V, H, W, 3] in [0, 1]; each view gets its own seed.
    """
    num_views = views.shape[0]
    uint8_views = to_uint8(views)
    out = [policy(uint8_views[view], fold_seed(seed, view)) for view in range(num_views)]
    return tf.cast(tf.stack(out), tf.float32) / 255.0
