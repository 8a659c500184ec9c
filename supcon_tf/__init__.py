"""supcon_tf: Supervised Contrastive Learning (Khosla et al., NeurIPS 2020) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
