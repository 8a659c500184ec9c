"""The paper's augmentations as pure TensorFlow functions with stateless randomness.

Every function takes an explicit seed (int32 [2]) and draws all its random numbers
from it, so the same seed gives the same output, eagerly or inside tf.data. There
are two kinds:

* geometry on one decoded image: crop windows and their resized crops, run per
  example right after decoding (TF ops, since image sizes vary), and the ImageNet
  eval preprocessing;
* photometry on a stack of images [n, H, W, 3] float32 (flips, colour jitter,
  grayscale, blur), with one set of random parameters per image. Each op works
  alone; view_photometry runs them all on the views of one example as one XLA
  program: the flip and the colour ops in one pass over the pixels, then a
  conditional per view that blurs it or not.

XLA is used only where this TensorFlow build compiles it for the host CPU
(supcon_tf.host_xla): the TPU wheel cannot, and on a TPU VM the input pipeline
runs on that host. There the same functions run as plain TensorFlow graphs,
drawing the same random numbers (_uniform), so a seed gives the same views
either way, up to float rounding.

They follow google-research supcon/preprocessing.py (the authors' TF code); where
they differ from it for speed, the function's docstring says how.

Keras 3's augmentation layers are not used: they draw from stateful seed
generators, so a resumed run could not replay the same augmentations;
RandomColorJitter applies its four ops always and in one fixed order, where
SimAugment applies them with p = 0.8 in a random order per image;
RandomGaussianBlur draws one sigma per batch, not per image; and they are
slower (benchmarks/augment_bench.py: their four ops cost about 4 core-ms per
224 x 224 view at best, the jitter alone 0.9 under XLA, against 0.3 here).
"""

import functools
import math

import numpy as np
import tensorflow as tf

from supcon_tf import host_xla

# Gaussian blur: sigma uniform in BLUR_SIGMA_RANGE (pixels); each kernel reaches
# ceil(3 sigma) taps on each side, at most BLUR_RADIUS, and at most the official
# kernel's radius (official_blur_radius). Outside the image it reads BLUR_PAD_VALUE:
# the official blur zero-pads images in [-1, 1], and 0 there is 0.5 in [0, 1].
BLUR_SIGMA_RANGE = (0.1, 2.0)
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA_RANGE[1])
BLUR_PAD_VALUE = 0.5
# Training crops as the official _distorted_crop_window samples them.
ASPECT_RATIO_RANGE = (0.75, 1.33)
MIN_OBJECT_COVERED = 0.1
# ImageNet eval: the shorter side resized to size + 32 (256 for 224; the official
# crop_padding), then the centre.
EVAL_CROP_PADDING = 32
JITTER_STYLES = ("tf", "pytorch")

# Colour-jitter ops, applied in a random order per image.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
# view_photometry draws [n, PHOTOMETRY_DRAWS] uniforms in one op (each random op costs
# a fixed amount under XLA, and it runs per example); these are each op's columns.
JITTER_DRAWS = 9  # apply, brightness, contrast, saturation, hue, then 4 for the order
BLUR_DRAWS = 2  # apply, sigma
FLIP_COLUMN = 0
JITTER_COLUMNS = slice(FLIP_COLUMN + 1, FLIP_COLUMN + 1 + JITTER_DRAWS)
GRAY_COLUMN = JITTER_COLUMNS.stop
BLUR_COLUMNS = slice(GRAY_COLUMN + 1, GRAY_COLUMN + 1 + BLUR_DRAWS)
PHOTOMETRY_DRAWS = BLUR_COLUMNS.stop

# Whether the fused photometry and blur compile with XLA: None asks
# host_xla.available() (probed once per process); True or False forces one path
# (tests and benchmarks set it). Read when a function is traced, not per example.
HOST_XLA = None


def use_host_xla():
    """Whether the fused photometry and blur run as XLA programs (see HOST_XLA)."""
    if HOST_XLA is not None:
        return bool(HOST_XLA)
    return host_xla.available()


def _host_program(fn):
    """fn(..., xla=True) as one XLA program where this build compiles XLA for the host,
    else fn(..., xla=False) as a plain graph.

    fn takes the keyword `xla` to write its pixel passes for the one or the
    other. Two tf.functions, each with its own traces; a call goes to the one
    use_host_xla() picks. Both are kept as attributes: .xla and .graph.
    """
    compiled = tf.function(functools.partial(fn, xla=True), jit_compile=True)
    graph = tf.function(functools.partial(fn, xla=False), jit_compile=False)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (compiled if use_host_xla() else graph)(*args, **kwargs)

    call.xla, call.graph = compiled, graph
    return call


def _uniform(shape, seed):
    """float32 draws from U[0, 1) of `shape`, the same numbers with and without XLA.

    They are those of tf.random.stateless_uniform(shape, seed) run by its TF
    kernel on the CPU. Under XLA that op gives other numbers: it makes each
    float of the high 23 of the 32 Philox bits where the kernel takes the low
    23, and by default it derives another Philox key from seeds with a negative
    half. So the bits are drawn as uint32 with the Philox algorithm named (the
    same bits either way) and made floats here, as the kernel does.
    """
    bits = tf.random.stateless_uniform(shape, tf.cast(seed, tf.int32), minval=None, maxval=None,
                                       dtype=tf.uint32, alg="philox")
    return tf.cast(tf.bitwise.bitwise_and(bits, 0x7FFFFF), tf.float32) * (2.0 ** -23)


def fold_seed(seed, salt):
    """A new int32 [2] seed from `seed` and an integer `salt` (a stream index, a view, an op)."""
    seed = tf.cast(seed, tf.int32)
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(salt, tf.int32))


def split_seed(seed, num):
    """num independent int32 [2] seeds from `seed`, as [num, 2], in one random op."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), num)


# ---------------------------------------------------------------------------- geometry


def sample_crop_windows(image_shape, seed, *, num_views, area_range,
                        aspect_ratio_range=ASPECT_RATIO_RANGE,
                        min_object_covered=MIN_OBJECT_COVERED):
    """Random-resized-crop windows [num_views, 4] int32 (top, left, height, width).

    As the official _distorted_crop_window: area a fraction of the image in
    `area_range`, aspect ratio (w/h) in `aspect_ratio_range`, covering at least
    `min_object_covered` of the image (0.1 raises ImageNet's 0.08 floor to 0.1),
    100 attempts. A draw that returns the whole image (the sampler's answer when
    every attempt fails) becomes the centred square of the shorter side.
    """
    image_shape = tf.cast(image_shape, tf.int32)
    height, width = image_shape[0], image_shape[1]
    side = tf.minimum(height, width)
    center_square = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    seeds = split_seed(seed, num_views)
    windows = []
    for view in range(num_views):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            image_shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=seeds[view],
            min_object_covered=min_object_covered,
            aspect_ratio_range=aspect_ratio_range,
            area_range=area_range,
            max_attempts=100,
            use_image_if_no_bounding_boxes=True)
        whole = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
        window = tf.concat([begin[:2], size[:2]], axis=0)
        windows.append(tf.where(whole, center_square, window))
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
    for all views on the CPU. Each crop is cast to float32 first: the bilinear
    kernel loads float pixels with vector loads but converts uint8 ones one
    channel at a time, and the cast costs less than the difference.
    """
    crops = []
    for view in range(windows.shape[0]):
        window = windows[view]
        crop = tf.slice(image, tf.concat([window[:2], [0]], axis=0),
                        tf.concat([window[2:], [-1]], axis=0))
        crops.append(tf.image.resize(tf.cast(crop, tf.float32), [size, size]))
    return tf.stack(crops)


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


def eval_resize_size(size):
    """The shorter side before the eval centre crop: size + 32, 256 for 224."""
    return size + EVAL_CROP_PADDING


def resize_then_center_crop(image, size):
    """ImageNet eval preprocessing: uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1].

    As the official RESIZE_THEN_CROP: the image is resized (bilinear) so that its
    shorter side is eval_resize_size(size), each side truncated as
    int(scale * side) in float32, then the centred size x size window is cut,
    at offset (side - size + 1) // 2. The official code casts the resized image
    to uint8 before cropping; here it stays float.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(eval_resize_size(size)) / tf.reduce_min(shape)
    resized_shape = tf.cast(scale * shape, tf.int32)
    resized = tf.image.resize(tf.cast(image, tf.float32), resized_shape)
    top = (resized_shape[0] - size + 1) // 2
    left = (resized_shape[1] - size + 1) // 2
    crop = tf.slice(resized, tf.stack([top, left, 0]), [size, size, 3])
    return tf.ensure_shape(crop / 255.0, [size, size, 3])


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


def color_jitter_transforms(mean_color, uniform, *, strength, style="tf", probability=0.8):
    """Per-image colour-jitter transforms [n, 4, 4], given each image's mean colour [n, 3].

    uniform [n, JITTER_DRAWS]: the image's draws from U[0, 1), which decide
    everything below.

    SimCLR colour distortion of strength s, as the official _jitter_colors: with
    `probability`, four ops in a random order per image, with s' = 0.8 s:

      style "tf" (tf.image.random_*, the official default):
        brightness  adds a delta from [-s', s']
        contrast    factor f from [1 - s', 1 + s']: x -> mean + f (x - mean), with
                    each channel's own mean over the image
        saturation  factor from [1 - s', 1 + s']
        hue         shift from [-0.2 s, 0.2 s] of the circle
      style "pytorch" (use_pytorch_color_jitter, torchvision semantics):
        brightness  scales by a factor from [max(0, 1 - s'), 1 + s']
        contrast    factor from the same range, blending with the mean gray level
        saturation  factor from the same range, blending with the gray image
        hue         shift from [-0.2 s, 0.2 s] of the circle

    The means are those of the image as it is at that point of the order. All
    four ops are affine maps of the colour here, so each image's jitter is one
    4x4 matrix, applied in a single pass by apply_color_transform. For that
    speed this differs from the official ops in three ways: hue rotates the
    chroma plane of YIQ instead of shifting the HSV hue; "tf" saturation blends
    with the gray (luma) image, as "pytorch" does, where tf.image scales the HSV
    saturation (a blend with each pixel's largest channel, then clipped); and
    values are clipped to [0, 1] once at the end instead of after each op, so a
    contrast step also sees the values an earlier step pushed past 0 or 1.
    """
    if style not in JITTER_STYLES:
        raise ValueError(f"colour jitter style {style!r} is unknown; use one of "
                         f"{', '.join(JITTER_STYLES)}")
    n = tf.shape(mean_color)[0]
    apply = uniform[:, 0] < probability
    spread = 0.8 * strength
    low = max(0.0, 1.0 - spread) if style == "pytorch" else 1.0 - spread
    high = 1.0 + spread
    brightness, contrast, saturation = [low + (high - low) * uniform[:, 1 + op]
                                        for op in (_BRIGHTNESS, _CONTRAST, _SATURATION)]
    if style == "tf":  # an additive delta instead of a factor
        brightness = spread * (2.0 * uniform[:, 1 + _BRIGHTNESS] - 1.0)
    hue_delta = 0.2 * strength * (2.0 * uniform[:, 1 + _HUE] - 1.0)
    order = tf.argsort(uniform[:, 5:], axis=1)

    zero_bias = tf.zeros([n, 3])
    eye = tf.eye(3, batch_shape=[n])
    if style == "pytorch":
        brightness_map = _homogeneous(brightness[:, None, None] * eye, zero_bias)
    else:
        brightness_map = _homogeneous(eye, tf.tile(brightness[:, None], [1, 3]))
    saturation_map = _homogeneous(_blend_with_gray(saturation), zero_bias)
    hue_map = _homogeneous(_hue_rotation(hue_delta), zero_bias)
    mean_color = tf.concat([mean_color, tf.ones([n, 1])], axis=1)[:, :, None]   # [n, 4, 1]
    transform = _identities(n)
    for round_index in range(4):
        # Contrast pivots on the mean after the ops before it.
        current_mean = (transform @ mean_color)[:, :3, 0]
        if style == "pytorch":
            pivot = tf.tile(tf.reduce_sum(current_mean * GRAY_WEIGHTS, axis=1)[:, None], [1, 3])
        else:
            pivot = current_mean
        contrast_map = _homogeneous(contrast[:, None, None] * eye,
                                    (1.0 - contrast)[:, None] * pivot)
        candidates = tf.stack([brightness_map, contrast_map, saturation_map, hue_map], axis=1)
        step = tf.gather(candidates, order[:, round_index], batch_dims=1)
        step = tf.where(apply[:, None, None], step, _identities(n))
        transform = step @ transform
    return transform


def grayscale_transforms(uniform, probability=0.2):
    """Per-image transforms [n, 4, 4] for draws uniform [n]: gray with `probability`."""
    n = tf.shape(uniform)[0]
    to_gray = uniform < probability
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


def color_jitter(images, seed, *, strength, style="tf", probability=0.8):
    """Colour jitter (see color_jitter_transforms) of images [n, H, W, 3] in [0, 1]."""
    uniform = tf.random.stateless_uniform([tf.shape(images)[0], JITTER_DRAWS], seed)
    transforms = color_jitter_transforms(mean_color(images), uniform, strength=strength,
                                         style=style, probability=probability)
    return apply_color_transform(images, transforms)


def random_grayscale(images, seed, probability=0.2):
    """Each image of [n, H, W, 3] becomes gray (3 equal channels) with `probability`."""
    return apply_color_transform(
        images,
        grayscale_transforms(tf.random.stateless_uniform([tf.shape(images)[0]], seed), probability))


def official_blur_radius(size):
    """Taps on each side of the official kernel for images of side `size`: 11 at 224.

    The official _gaussian_blur uses 2 * floor(floor(size / 10) / 2) + 1 taps.
    """
    return (size // 10) // 2


def max_blur_radius(size):
    """The widest kernel used here on images of side `size`: BLUR_RADIUS or the official one."""
    return min(BLUR_RADIUS, official_blur_radius(size))


def blur_radius(sigma, max_radius=BLUR_RADIUS):
    """Taps on each side of the kernel of each sigma [n]: ceil(3 sigma), in [1, max_radius]."""
    return tf.clip_by_value(tf.cast(tf.math.ceil(3.0 * sigma), tf.int32), 1, max_radius)


def gaussian_kernel(sigma, radius):
    """Normalized 1-D Gaussian [2 * radius + 1] for a scalar sigma; radius is a Python int."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-tf.square(taps) / (2.0 * tf.square(sigma)))
    return weights / tf.reduce_sum(weights)


def _weighted_shifts(rows, kernel, axis, length, stride, offset=0):
    """Sum over t of kernel[t] * rows [A, B] shifted by offset + t * stride along axis (0 or 1)."""
    total = None
    for tap in range(kernel.shape[0]):
        begin = [0, 0]
        begin[axis] = offset + tap * stride
        size = [-1, -1]
        size[axis] = length
        term = kernel[tap] * tf.slice(rows, begin, size)
        total = term if total is None else total + term
    return total


def _pad_columns(images, pad):
    """images [n, H, W, C] -> [n, H, W + 2 * pad, C], BLUR_PAD_VALUE at the left and right.

    The blur's horizontal pass reads these columns. Padding here, as the end of
    an elementwise XLA program, is cheap; the same padding or border code inside
    the horizontal pass would split its rows into short runs that do not vectorize.
    A concatenation with constant columns, not tf.pad: XLA's constant pad made
    the whole blurred view program 2.7x slower (0.89 against 0.33 core-ms a view).
    """
    n, height, _, channels = images.shape
    fill = tf.fill([n, height, pad, channels], BLUR_PAD_VALUE)
    return tf.concat([fill, images, fill], axis=2)


def _vertical_blur(rows, kernel):
    """Blur along the height of rows [H, L], reading BLUR_PAD_VALUE above and below."""
    height = rows.shape[0]
    radius = (kernel.shape[0] - 1) // 2
    interior = _weighted_shifts(rows, kernel, 0, height - 2 * radius, 1)
    # Each border strip of `radius` outputs needs 2 * radius inputs and `radius`
    # pad rows (concatenated, as in _pad_columns).
    fill = tf.fill([radius, rows.shape[1]], BLUR_PAD_VALUE)
    first = tf.concat([fill, rows[:2 * radius]], axis=0)
    last = tf.concat([rows[height - 2 * radius:], fill], axis=0)
    borders = [_weighted_shifts(strip, kernel, 0, radius, 1) for strip in (first, last)]
    return tf.concat([borders[0], interior, borders[1]], axis=0)


def _blur_rows(rows, sigma, radius, channels, pad):
    """One image as rows [H, (W + 2 * pad) * C] padded by _pad_columns -> rows [H, W * C].

    The kernel has `radius` <= pad taps on each side. Rows keep every pass a
    loop along a whole row (the horizontal taps shift by C), which XLA
    vectorizes; a loop whose innermost axis is the C channels does not.
    """
    kernel = gaussian_kernel(sigma, radius)
    width = rows.shape[1] // channels - 2 * pad
    blurred = _weighted_shifts(_vertical_blur(rows, kernel), kernel, 1, width * channels,
                               channels, offset=(pad - radius) * channels)
    # The weights sum to 1 only up to rounding, which can push a white pixel past 1.
    return tf.clip_by_value(blurred, 0.0, 1.0)


def _blur_some(images, uniform, probability, sigma_range):
    """Blurs each image of [n, H, W, C] with `probability` -> [n, H, W * C].

    uniform [n, BLUR_DRAWS] decides which images and their sigma, uniform in
    sigma_range; each kernel is cut at blur_radius(sigma, max_blur_radius(H))
    taps. Every image has its own conditional over the radius, so an image left
    sharp costs one copy and a small sigma few taps; n, H and W must be static.
    """
    n, height, width, channels = images.shape
    pad = max_blur_radius(height)
    if pad == 0:  # the official kernel has one tap: no blur
        return tf.reshape(images, [n, height, width * channels])
    selected = uniform[:, 0] < probability
    sigma = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * uniform[:, 1]
    branch = tf.where(selected, blur_radius(sigma, pad), 0)
    rows = tf.reshape(_pad_columns(images, pad), [n, height, (width + 2 * pad) * channels])
    out = []
    for i in range(n):
        sharp = functools.partial(tf.slice, rows[i], [0, pad * channels],
                                  [height, width * channels])
        blurred = [functools.partial(_blur_rows, rows[i], sigma[i], radius, channels, pad)
                   for radius in range(1, pad + 1)]
        out.append(tf.switch_case(branch[i], [sharp] + blurred))
    return tf.stack(out)


@_host_program
def _fused_blur(images, seed, probability, sigma_range, *, xla):
    del xla  # the blur is written the same way for both
    uniform = _uniform([images.shape[0], BLUR_DRAWS], seed)
    return _blur_some(images, uniform, probability, sigma_range)


def random_gaussian_blur(images, seed, probability=0.5, sigma_range=BLUR_SIGMA_RANGE):
    """Blurs each image of [n, H, W, 3] with `probability`, sigma uniform in `sigma_range` (pixels).

    The official blur with two differences. Its kernel always has
    official_blur_radius(H) taps on each side; here it is cut at ceil(3 sigma)
    taps, at most BLUR_RADIUS (so at 224 px 1 to 6 taps instead of 11: the cut
    tails hold at most 0.1% of the kernel's weight, and a blurred pixel in
    [0, 1] moves by at most 0.004, one uint8 level). And it draws one sigma for
    the whole batch of a core; here each image draws its own. Outside the image
    the kernel reads BLUR_PAD_VALUE, as the official zero padding of [-1, 1]
    images does. n, H and W must be static.
    """
    rows = _fused_blur(images, seed, tf.constant(probability, tf.float32),
                       tf.constant(sigma_range, tf.float32))
    # Back to pixels outside the program, where a reshape is free.
    return tf.reshape(rows, tf.shape(images))


def _color_then_flip(views, transforms, flip):
    """apply_color_transform(views, transforms), then view i mirrored where flip[i] (or None).

    The same pixels as flipping first, written for TF kernels: a matmul per
    view instead of broadcast multiply-adds, and a conditional per view instead
    of a select between the views and their mirror images. Broadcasting
    kernels are slow outside XLA; this runs the pass several times faster.
    """
    n, height, width, channels = views.shape
    out = []
    for i in range(n):
        pixels = tf.reshape(views[i], [height * width, channels])
        mapped = tf.nn.bias_add(tf.matmul(pixels, transforms[i, :3, :3], transpose_b=True),
                                transforms[i, :3, 3])
        image = tf.reshape(tf.clip_by_value(mapped, 0.0, 1.0), [height, width, channels])
        if flip is not None:
            image = tf.cond(flip[i], lambda image=image: tf.reverse(image, axis=[1]),
                            lambda image=image: image)
        out.append(image)
    return tf.stack(out)


def _photometry(views, mean_color, seed, *, value_range, hflip, color_strength,
                color_jitter_style, grayscale, blur_probability, blur_sigma_range, xla):
    n = views.shape[0]
    uniform = _uniform([n, PHOTOMETRY_DRAWS], seed)
    flip = uniform[:, FLIP_COLUMN] < 0.5 if hflip else None
    if xla and hflip:
        views = tf.where(flip[:, None, None, None], tf.reverse(views, axis=[2]), views)
    scale = tf.constant([1.0 / value_range] * 3 + [1.0])
    transforms = tf.linalg.diag(tf.tile(scale[None], [n, 1]))
    if color_strength is not None:
        transforms = color_jitter_transforms(mean_color, uniform[:, JITTER_COLUMNS],
                                             strength=color_strength,
                                             style=color_jitter_style) @ transforms
    if grayscale:
        transforms = grayscale_transforms(uniform[:, GRAY_COLUMN]) @ transforms
    if xla:
        views = apply_color_transform(views, transforms)
    else:
        views = _color_then_flip(views, transforms, flip)
    if blur_sigma_range is None:
        return views
    return _blur_some(views, uniform[:, BLUR_COLUMNS], blur_probability, blur_sigma_range)


_fused_photometry = _host_program(_photometry)


def view_photometry(views, seed, *, value_range=255.0, hflip=True, color_strength=1.0,
                    color_jitter_style="tf", grayscale=True, blur=False, blur_probability=0.5,
                    blur_sigma_range=BLUR_SIGMA_RANGE):
    """SimAugment's per-view ops on the views of one example [V, H, W, 3], as one program.

    In order, as the official _simclr_augment after the flip: mirror left-right
    with p = 0.5 (if hflip), colour jitter of strength color_strength and style
    color_jitter_style with p = 0.8 (None: no jitter; color_jitter_transforms),
    grayscale with p = 0.2 (if grayscale), Gaussian blur with p =
    blur_probability (if blur; random_gaussian_blur). Inputs are in [0,
    value_range] (255 for the output of the crops); outputs are float32 in
    [0, 1], each view with its own random parameters. V, H and W must be static.

    It runs per example: the views are small enough to stay in cache between
    the passes, and each view is blurred or not in its own conditional. On a
    batch each pass would stream the whole batch through memory. The program
    is compiled with XLA where the host has it (use_host_xla), else a graph.
    """
    mean = tf.zeros([tf.shape(views)[0], 3])
    if color_strength is not None:
        mean = mean_color(views) / value_range  # outside XLA, where this reduction is faster
    out = _fused_photometry(views, mean, seed, value_range=float(value_range), hflip=hflip,
                            color_strength=color_strength, color_jitter_style=color_jitter_style,
                            grayscale=grayscale, blur_probability=float(blur_probability),
                            blur_sigma_range=tuple(blur_sigma_range) if blur else None)
    return tf.reshape(out, tf.shape(views))


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
    seeds = split_seed(seed, num_views)
    out = [policy(uint8_views[view], seeds[view]) for view in range(num_views)]
    return tf.cast(tf.stack(out), tf.float32) / 255.0
