"""Multi-view assembly: one encoded image -> V augmented views on their own axis.

Two stages, each per example in a parallel map of its own (see
datasets.decode_and_batch):

    crop_views(encoded, seed, spec)   decode once, cut the V random resized crops
    augment_views(views, seed, spec)  flips, colour, blur, op policies -> [0, 1]

example_views runs both. Views are float32 [V, S, S, 3], never stacked in the
channel axis.
"""

import dataclasses

import tensorflow as tf

from supcon_tf.data import augment

AUGMENTATIONS = ("simaugment", "autoaugment", "randaugment", "stacked_randaugment",
                 "crop_flip", "none")
COLOR_JITTER_STYLES = augment.JITTER_STYLES
# Smaller views keep too little of an image to learn from (digits, the smallest, are 8 x 8).
MIN_IMAGE_SIZE = 8
# The modes that jitter colours, and the largest strength each style accepts: the
# official jitter raises beyond them (tf: contrast and saturation factors 1 - 0.8 s
# must stay >= 0; both: the hue shift 0.2 s must stay <= 0.5).
_JITTER_MODES = ("simaugment", "stacked_randaugment")
_MAX_COLOR_STRENGTH = {"tf": 1.25, "pytorch": 2.5}

# Seeds split from the augmentation stage's seed.
_PHOTOMETRY, _POLICY, _FINISH = range(3)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What crop_views and augment_views do; from_data_config checks every field.

    jpeg: records are JPEG photos (ImageNet): crops decode only what they need,
    and eval resizes the shorter side to 256 (for 224) and takes the centre.
    Otherwise images are used whole.
    """

    augment: str
    image_size: int
    num_views: int
    crop_area_min: float = 0.08
    color_strength: float = 1.0
    color_jitter_style: str = "tf"
    hflip: bool = True
    blur: bool = False
    blur_probability: float = 0.5
    randaugment_layers: int = 2
    randaugment_magnitude: int = 10
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
        if not 0.0 < self.crop_area_min <= 1.0:
            raise ValueError(f"config.data.crop_area_min={self.crop_area_min} must be in (0, 1] "
                             "(0.08 for ImageNet, 0.2 for CIFAR)")
        if self.color_jitter_style not in COLOR_JITTER_STYLES:
            raise ValueError(f"config.data.color_jitter_style={self.color_jitter_style!r} is "
                             f"unknown; use one of {', '.join(COLOR_JITTER_STYLES)}")
        if self.color_strength < 0:
            raise ValueError(f"config.data.color_strength={self.color_strength} must be >= 0")
        limit = _MAX_COLOR_STRENGTH[self.color_jitter_style]
        if self.augment in _JITTER_MODES and self.color_strength > limit:
            raise ValueError(
                f"config.data.color_strength={self.color_strength} is too strong for "
                f"config.data.color_jitter_style={self.color_jitter_style!r}: at most {limit}")
        if not 0.0 <= self.blur_probability <= 1.0:
            raise ValueError(f"config.data.blur_probability={self.blur_probability} must be in "
                             "[0, 1] (the paper uses 0.5)")
        if self.augment in ("randaugment", "stacked_randaugment"):
            if self.randaugment_layers < 0:
                raise ValueError(f"config.data.randaugment_layers={self.randaugment_layers} "
                                 "must be >= 0 (the official recipe uses 2)")
            if not 0 <= self.randaugment_magnitude <= 10:
                raise ValueError(f"config.data.randaugment_magnitude="
                                 f"{self.randaugment_magnitude} must be in [0, 10] (the "
                                 "official recipe uses 10)")

    @classmethod
    def from_data_config(cls, data_config, *, jpeg):
        def field(name):
            if name not in data_config:
                raise ValueError(f"config.data.{name} is missing; every config sets it")
            return data_config[name]

        return cls(
            augment=field("augment"),
            image_size=int(field("image_size")),
            num_views=field("num_views"),
            crop_area_min=float(field("crop_area_min")),
            color_strength=float(field("color_strength")),
            color_jitter_style=field("color_jitter_style"),
            hflip=bool(field("hflip")),
            blur=bool(field("blur")),
            blur_probability=float(field("blur_probability")),
            randaugment_layers=int(field("randaugment_layers")),
            randaugment_magnitude=int(field("randaugment_magnitude")),
            jpeg=jpeg)


def decode_image(encoded):
    """Any PNG/JPEG/GIF/BMP record -> uint8 [H, W, 3]."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def eval_image(encoded, spec):
    """Standard eval preprocessing -> float32 [S, S, 3] in [0, 1].

    JPEG photos (ImageNet): the shorter side resized to 256 (for S = 224,
    S + 32 otherwise), then the centre S x S. Others: the whole image,
    resized to S only if it is not S x S already.
    """
    if spec.jpeg:
        image = tf.io.decode_jpeg(encoded, channels=3)
        return augment.resize_then_center_crop(image, spec.image_size)
    return augment.resize(decode_image(encoded), spec.image_size)


def _crop_views(encoded, seed, spec):
    """The V random resized crops, float32 [V, S, S, 3] in 0-255."""
    options = dict(num_views=spec.num_views, size=spec.image_size,
                   area_range=(spec.crop_area_min, 1.0))
    if spec.jpeg:
        return augment.decode_jpeg_crop_views(encoded, seed, **options)
    return augment.random_resized_crop_views(decode_image(encoded), seed, **options)


def _policy(spec):
    from supcon_tf.data import policies  # only these modes need it

    if spec.augment == "autoaugment":
        return policies.autoaugment
    return lambda image, seed: policies.randaugment(
        image, seed, spec.randaugment_layers, spec.randaugment_magnitude)


def crop_views(encoded, seed, spec):
    """The first stage: one encoded image and a seed int32 [2] -> float32 [V, S, S, 3].

    The image is decoded once. "none" repeats the eval image V times, in [0, 1];
    the other modes take V random resized crops, in 0-255.
    """
    size = spec.image_size
    if spec.augment == "none":
        views = tf.repeat(eval_image(encoded, spec)[None], spec.num_views, axis=0)
    else:
        views = _crop_views(encoded, seed, spec)
    return tf.ensure_shape(views, [spec.num_views, size, size, 3])


def augment_views(views, seed, spec):
    """The second stage: crop_views' output and a seed int32 [2] -> float32 [V, S, S, 3] in [0, 1].

    After the crop, as the official recipes run (all flip first, if hflip):
      simaugment           colour jitter p 0.8, grayscale p 0.2, blur (if blur)
      crop_flip            nothing more (SupContrast's linear-eval and CE pipeline)
      autoaugment          AutoAugment v0 (no blur, whatever config.data.blur says)
      randaugment          RandAugment(randaugment_layers, randaugment_magnitude)
      stacked_randaugment  colour jitter p 0.8, RandAugment, grayscale p 0.2, blur (if blur)
      none                 the eval image, unchanged
    """
    if spec.augment == "none":
        return views
    seeds = augment.split_seed(seed, 3)
    jitter = dict(color_strength=spec.color_strength, color_jitter_style=spec.color_jitter_style)
    blur = dict(blur=spec.blur, blur_probability=spec.blur_probability)
    if spec.augment == "simaugment":
        return augment.view_photometry(views, seeds[_PHOTOMETRY], hflip=spec.hflip, **jitter,
                                       **blur)
    if spec.augment == "crop_flip":
        return augment.view_photometry(views, seeds[_PHOTOMETRY], hflip=spec.hflip,
                                       color_strength=None, grayscale=False)
    stacked = spec.augment == "stacked_randaugment"
    if not stacked:
        jitter = dict(color_strength=None)
    views = augment.view_photometry(views, seeds[_PHOTOMETRY], hflip=spec.hflip, **jitter,
                                    grayscale=False)
    views = augment.apply_policy(views, seeds[_POLICY], _policy(spec))
    if stacked:
        views = augment.view_photometry(views, seeds[_FINISH], value_range=1.0, hflip=False,
                                        color_strength=None, **blur)
    return tf.ensure_shape(views, [spec.num_views, spec.image_size, spec.image_size, 3])


def stage_seeds(seed):
    """The seeds of crop_views and augment_views, split from an example's seed int32 [2]."""
    crop_seed, augment_seed = tf.unstack(augment.split_seed(seed, 2))
    return crop_seed, augment_seed


def example_views(encoded, seed, spec):
    """Both stages on one encoded image and its seed int32 [2], as the training pipeline does."""
    crop_seed, augment_seed = stage_seeds(seed)
    return augment_views(crop_views(encoded, crop_seed, spec), augment_seed, spec)
