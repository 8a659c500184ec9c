"""Multi-view assembly: one encoded image -> V augmented views on their own axis.

Work is split in two stages, so that the photometric ops run once per batch:

    example_views(encoded, seed, spec)  per example, in a parallel map: decode once,
        cut the V random resized crops (for the op policies, also flip them and
        run the policy per view) -> float32 [V, S, S, 3]
    batch_views(views, seed, spec)      per batch, after batching: SimAugment's
        photometric ops as XLA programs on the flattened [b * V, S, S, 3]
        -> float32 [b, V, S, S, 3] in [0, 1]

Views are never stacked in the channel axis.
"""

import dataclasses

import tensorflow as tf

from supcon_tf.data import augment

AUGMENTATIONS = ("simaugment", "autoaugment", "randaugment", "stacked_randaugment", "none")
# Smaller views keep too little of an image to learn from (digits, the smallest, are 8 x 8).
MIN_IMAGE_SIZE = 8

# Salts that give each stage its own random stream from the element's seed.
_CROP, _PHOTOMETRY, _POLICY = range(3)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What example_views/batch_views do; from_data_config checks every field.

    jpeg: records are JPEG photos (ImageNet): crops decode only what they need,
    and eval takes the centre 224/256 crop. Otherwise images are used whole.
    """

    augment: str
    image_size: int
    num_views: int
    crop_area_min: float = 0.08
    color_strength: float = 1.0
    hflip: bool = True
    blur: bool = False
    randaugment_layers: int = 2
    randaugment_magnitude: int = 9
    jpeg: bool = False

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"config.data.augment={self.augment!r} is unknown; "
                             f"use one of {', '.join(AUGMENTATIONS)}")
        if not isinstance(self.num_views, int) or self.num_views < 1:
            raise ValueError(f"config.data.num_views={self.num_views!r} must be an integer >= 1 "
                             "(the paper uses 2)")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"config.data.image_size={self.image_size} is too small for the "
                             f"random crops; set it to at least {MIN_IMAGE_SIZE}")
        if self.blur and self.image_size < augment.BLUR_MIN_SIZE:
            raise ValueError(f"config.data.image_size={self.image_size} is too small for the "
                             f"Gaussian blur; set it to at least {augment.BLUR_MIN_SIZE} or set "
                             "config.data.blur=False")
        if not 0.0 < self.crop_area_min <= 1.0:
            raise ValueError(f"config.data.crop_area_min={self.crop_area_min} must be in (0, 1] "
                             "(0.08 for ImageNet, 0.2 for CIFAR)")
        if self.color_strength < 0:
            raise ValueError(f"config.data.color_strength={self.color_strength} must be >= 0")
        if self.augment in ("randaugment", "stacked_randaugment") and (
                self.randaugment_layers < 0 or self.randaugment_magnitude < 0):
            raise ValueError("config.data.randaugment_layers and randaugment_magnitude must be "
                             f">= 0, got {self.randaugment_layers}, {self.randaugment_magnitude}")

    @classmethod
    def from_data_config(cls, data_config, *, jpeg):
        return cls(
            augment=data_config.augment,
            image_size=int(data_config.image_size),
            num_views=data_config.num_views,
            crop_area_min=float(data_config.crop_area_min),
            color_strength=float(data_config.color_strength),
            hflip=bool(data_config.hflip),
            blur=bool(data_config.blur),
            randaugment_layers=int(data_config.randaugment_layers),
            randaugment_magnitude=int(data_config.randaugment_magnitude),
            jpeg=jpeg)


def decode_image(encoded):
    """Any PNG/JPEG/GIF/BMP record -> uint8 [H, W, 3]."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def eval_image(encoded, spec):
    """Standard eval preprocessing -> float32 [S, S, 3] in [0, 1].

    JPEG photos (ImageNet): centre 224/256 crop resized to S. Others: the whole
    image, resized to S only if it is not S x S already.
    """
    if spec.jpeg:
        return augment.center_crop_jpeg(encoded, size=spec.image_size)
    return augment.resize(decode_image(encoded), spec.image_size)


def _crop_views(encoded, seed, spec):
    """The V random resized crops, float32 [V, S, S, 3] in 0-255."""
    options = dict(num_views=spec.num_views, size=spec.image_size,
                   area_range=(spec.crop_area_min, 1.0))
    if spec.jpeg:
        return augment.decode_jpeg_crop_views(encoded, seed, **options)
    return augment.random_resized_crop_views(decode_image(encoded), seed, **options)


def _policy(spec):
    from supcon_tf.data import policies  # written separately; only these modes need it

    if spec.augment == "autoaugment":
        return policies.autoaugment_imagenet
    return lambda image, seed: policies.randaugment(
        image, seed, spec.randaugment_layers, spec.randaugment_magnitude)


def example_views(encoded, seed, spec):
    """One encoded image and its seed int32 [2] -> float32 [V, S, S, 3].

    The image is decoded once. "none" repeats the eval image V times. The other
    modes take V random resized crops. simaugment returns them in 0-255 for
    batch_views. The policy modes flip them (stacked_randaugment also jitters
    them), run their op policy and return [0, 1].
    """
    size = spec.image_size
    if spec.augment == "none":
        views = tf.repeat(eval_image(encoded, spec)[None], spec.num_views, axis=0)
        return tf.ensure_shape(views, [spec.num_views, size, size, 3])
    views = _crop_views(encoded, augment.fold_seed(seed, _CROP), spec)
    views = tf.ensure_shape(views, [spec.num_views, size, size, 3])
    if spec.augment == "simaugment":
        return views
    jitter = spec.color_strength if spec.augment == "stacked_randaugment" else None
    views = augment.view_photometry(views, augment.fold_seed(seed, _PHOTOMETRY),
                                    hflip=spec.hflip, color_strength=jitter, grayscale=False)
    views = augment.apply_policy(views, augment.fold_seed(seed, _POLICY), _policy(spec))
    return tf.ensure_shape(views, [spec.num_views, size, size, 3])


def batch_views(views, seed, spec):
    """The batch-level stage on views float32 [b, V, S, S, 3] with one seed int32 [2] per batch.

    SimAugment: flip (if spec.hflip), colour jitter, grayscale and blur (if
    spec.blur). Stacked RandAugment: grayscale and blur, the rest having run per
    example. Each view gets its own random parameters. Returns [0, 1].
    """
    if spec.augment not in ("simaugment", "stacked_randaugment"):
        return views
    shape = tf.shape(views)
    images = tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0))
    simaugment = spec.augment == "simaugment"
    images = augment.view_photometry(
        images, seed, value_range=255.0 if simaugment else 1.0, hflip=spec.hflip and simaugment,
        color_strength=spec.color_strength if simaugment else None, blur=spec.blur)
    return tf.reshape(images, shape)
