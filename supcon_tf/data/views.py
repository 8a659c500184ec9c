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

AUGMENTATIONS = ("simaugment", "autoaugment", "randaugment", "stacked_randaugment", "none")
# Smaller views keep too little of an image to learn from (digits, the smallest, are 8 x 8).
MIN_IMAGE_SIZE = 8

# Seeds split from the augmentation stage's seed.
_PHOTOMETRY, _POLICY, _FINISH = range(3)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What crop_views and augment_views do; from_data_config checks every field.

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

    simaugment flips, jitters, grays and blurs the views (augment.view_photometry);
    autoaugment and randaugment flip them and run their op policy per view;
    stacked_randaugment flips and jitters them, runs RandAugment, then grays and
    blurs them; "none" leaves them as they are.
    """
    if spec.augment == "none":
        return views
    seeds = augment.split_seed(seed, 3)
    if spec.augment == "simaugment":
        return augment.view_photometry(views, seeds[_PHOTOMETRY], hflip=spec.hflip,
                                       color_strength=spec.color_strength, blur=spec.blur)
    stacked = spec.augment == "stacked_randaugment"
    views = augment.view_photometry(views, seeds[_PHOTOMETRY], hflip=spec.hflip,
                                    color_strength=spec.color_strength if stacked else None,
                                    grayscale=False)
    views = augment.apply_policy(views, seeds[_POLICY], _policy(spec))
    if stacked:
        views = augment.view_photometry(views, seeds[_FINISH], value_range=1.0, hflip=False,
                                        color_strength=None, blur=spec.blur)
    return tf.ensure_shape(views, [spec.num_views, spec.image_size, spec.image_size, 3])


def stage_seeds(seed):
    """The seeds of crop_views and augment_views, split from an example's seed int32 [2]."""
    crop_seed, augment_seed = tf.unstack(augment.split_seed(seed, 2))
    return crop_seed, augment_seed


def example_views(encoded, seed, spec):
    """Both stages on one encoded image and its seed int32 [2], as the training pipeline does."""
    crop_seed, augment_seed = stage_seeds(seed)
    return augment_views(crop_views(encoded, crop_seed, spec), augment_seed, spec)
