"""The common corruptions of Hendrycks & Dietterich (2019), computed on the fly and seeded.

The corruptions come from the pip package imagecorruptions-imaug (import name
`imagecorruptions`), a maintained fork of `imagecorruptions` whose 1.1.2 release
breaks on current scikit-image. It takes uint8 [H, W, 3] images of at least
MIN_SIZE pixels a side; robustness.py brings smaller images up to that size first.

Seeding: the package draws from NumPy's global generator, and two corruptions
(glass_blur, impulse_noise) from a `seed` argument. Each image gets its own seed,
a function of (seed, corruption, severity, index), set both ways; NumPy's global
state is restored afterwards. A rerun therefore scores the same images.
"""

import concurrent.futures
import inspect
import multiprocessing

import numpy as np

# The 15 corruptions of the benchmark (mCE averages over these), in the paper's order.
COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
          "elastic_transform", "pixelate", "jpeg_compression")
# The 4 held out for validation in the paper; scored on request only.
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + HELD_OUT
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32
PACKAGE = "imagecorruptions-imaug"


def _library():
    try:
        import imagecorruptions
    except ImportError:
        raise ImportError(f"the corruptions need the pip package {PACKAGE} (import name "
                          f"imagecorruptions): pip install {PACKAGE}") from None
    return imagecorruptions


def check(corruption, severity):
    if corruption not in ALL:
        raise ValueError(f"corruption {corruption!r} is unknown; use one of {', '.join(ALL)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")


def image_seed(seed, corruption, severity, index):
    """The seed of one image: independent streams for every (seed, corruption, severity, index)."""
    entropy = [int(seed), ALL.index(corruption), int(severity), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def corrupt(image, corruption, severity, seed):
    """One uint8 [H, W, 3] image (H, W >= MIN_SIZE) -> the corrupted uint8 [H, W, 3]."""
    check(corruption, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"corrupt takes uint8 [H, W, 3] images; got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_SIZE:
        raise ValueError(f"image of {image.shape[0]}x{image.shape[1]} px: the corruptions need "
                         f"at least {MIN_SIZE} a side; resize it up first")
    library = _library()
    function = library.corruption_dict[corruption]
    extra = {"seed": seed} if "seed" in inspect.signature(function).parameters else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        corrupted = library.corrupt(image, severity=severity, corruption_name=corruption, **extra)
    finally:
        np.random.set_state(state)
    return np.asarray(corrupted, np.uint8).reshape(image.shape)


def corrupt_batch(images, corruption, severity, *, seed, first_index=0):
    """uint8 [N, H, W, 3] -> corrupted uint8 [N, H, W, 3]; image i is seeded by index first_index + i."""
    return np.stack([
        corrupt(image, corruption, severity, image_seed(seed, corruption, severity, first_index + i))
        for i, image in enumerate(images)])


def _corrupt_chunk(arguments):
    images, corruption, severity, seed, first_index = arguments
    return corrupt_batch(images, corruption, severity, seed=seed, first_index=first_index)


class Corrupter:
    """corrupt_batch over `workers` processes, each corrupting a contiguous chunk of the images.

    The seeds depend on the image index only, so any number of workers gives the same
    images. Workers are spawned (not forked: the parent runs TensorFlow's threads) and
    import this module alone; use as a context manager to stop them.
    """

    def __init__(self, workers=1):
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, images, corruption, severity, *, seed, first_index=0):
        if self._pool is None or len(images) < 2 * self.workers:
            return corrupt_batch(images, corruption, severity, seed=seed, first_index=first_index)
        starts = np.linspace(0, len(images), self.workers + 1).astype(int)
        chunks = [(images[a:b], corruption, severity, seed, first_index + a)
                  for a, b in zip(starts[:-1], starts[1:])]
        return np.concatenate(list(self._pool.map(_corrupt_chunk, chunks)))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._pool is not None:
            self._pool.shutdown()
