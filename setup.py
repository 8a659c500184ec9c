"""Package definition for supcon_tf.

Every TensorFlow distribution (tensorflow, tensorflow-tpu, ...) writes the same
`tensorflow/` package, so an environment must hold exactly one of them. Which one
is decided when pip builds this package's metadata:

    pip install -e .                              tensorflow 2.21 (2.20 also works)
    pip install -e ".[gpu]"                       tensorflow[and-cuda]: CUDA and cuDNN from pip
    SUPCON_TF_TARGET=tpu pip install -e ".[test]" tensorflow-tpu 2.20.0 and libtpu 0.0.17

The TPU target swaps `tensorflow` for `tensorflow-tpu` (2.20.0 is the newest TPU
build) and pins libtpu 0.0.17 (the newest libtpu that `~=0.0.14` allows aborts
`import tensorflow`). It leaves out tensorflow-hub and tf-keras, which require the
plain `tensorflow` distribution and would install a second TensorFlow beside the
TPU one; supcon_tf never imports them (the exports' consumers do, with
hub.KerasLayer, and the tests marked `tf_keras` skip without them).
"""

import os

import setuptools

TARGET_ENV = "SUPCON_TF_TARGET"
TARGETS = ("default", "tpu")
# 2.20 is the TPU build's version (CI's tpu lane runs the suite on it); pip picks the
# newest, 2.21, for the default target.
TENSORFLOW_VERSIONS = ">=2.20,<2.22"
TPU_PINS = ("tensorflow-tpu==2.20.0", "libtpu==0.0.17")

COMMON = [
    "keras>=3.10",
    "tensorflow-datasets>=4.9.10",
    "absl-py",
    "ml-collections>=1.1.0",
    "numpy",
    # Source of the embedded digits images (no download needed).
    "scikit-learn",
    # The embedding plot of `python -m supcon_tf.analysis`, a README command.
    "matplotlib",
    # The common corruptions of `python -m supcon_tf.robustness` (import name imagecorruptions;
    # the original imagecorruptions 1.1.2 breaks on current scikit-image).
    "imagecorruptions-imaug>=1.1.5",
    # The cached linear probe's L-BFGS and its single BLAS thread (supcon_tf/probe.py).
    "scipy",
    "threadpoolctl",
]
TEST = [
    "pytest",
    "pytest-xdist>=3",
    "pillow",
    "nbclient",
    "nbformat",
    "ipykernel",
    "packaging",  # tests/test_install.py reads requirements and versions with it
]
# hub.KerasLayer, the exports' consumer side (Colab, GPU, laptop): a tf_keras layer
# beside Keras 3. Both require the plain `tensorflow` distribution.
HUB = ["tensorflow-hub>=0.16.1"]
HUB_TEST = [f"tf-keras{TENSORFLOW_VERSIONS}"]


def requirements(target):
    """(install_requires, extras_require) for a target of TARGETS."""
    if target == "default":
        return ([f"tensorflow{TENSORFLOW_VERSIONS}"] + COMMON + HUB,
                {"test": TEST + HUB_TEST, "gpu": [f"tensorflow[and-cuda]{TENSORFLOW_VERSIONS}"]})
    if target == "tpu":
        return list(TPU_PINS) + COMMON, {"test": list(TEST)}
    raise ValueError(f"{TARGET_ENV}={target!r}: use one of {', '.join(TARGETS)} "
                     "(or leave it unset for the default)")


def main():
    install_requires, extras_require = requirements(os.environ.get(TARGET_ENV) or "default")
    setuptools.setup(
        name="supcon_tf",
        version="0.1.0",
        description=("Supervised Contrastive Learning (Khosla et al., 2020) "
                     "in TensorFlow 2 / Keras 3."),
        packages=setuptools.find_packages(include=["supcon_tf", "supcon_tf.*"]),
        python_requires=">=3.10",
        install_requires=install_requires,
        extras_require=extras_require,
    )


if __name__ == "__main__":  # pip's build backend and `python setup.py` run it as __main__
    main()
