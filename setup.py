"""Package definition for supcon_tf."""

import setuptools

setuptools.setup(
    name="supcon_tf",
    version="0.1.0",
    description="Supervised Contrastive Learning (Khosla et al., 2020) in TensorFlow 2 / Keras 3.",
    packages=setuptools.find_packages(include=["supcon_tf", "supcon_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow~=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "tensorflow-hub>=0.16.1",
        "absl-py",
        "ml-collections>=1.1.0",
        "numpy",
        # Source of the embedded digits images (no download needed).
        "scikit-learn",
        # The embedding plot of `python -m supcon_tf.analysis`, a README command.
        "matplotlib",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist>=3",
            "tf-keras~=2.21.0",
            "pillow",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
    },
)
