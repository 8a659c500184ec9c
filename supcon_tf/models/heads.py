"""Projection head (stage one) and linear classification head (online and stage-two eval)."""

import keras


def projection_head(projection_dims=(2048, 128), *, use_bn=False, name="projection_head"):
    """MLP Dense -> [BN] -> ReLU -> ... -> Dense(projection_dims[-1]).

    projection_dims lists the hidden widths then the output width; a single entry
    gives the paper's linear projection. BN, when on, follows each hidden Dense
    (whose bias it makes redundant). The caller L2-normalizes the output.
    """
    projection_dims = tuple(projection_dims)
    if not projection_dims or any(int(d) != d or d < 1 for d in projection_dims):
        raise ValueError(
            "model.projection_dims must be a non-empty sequence of positive ints "
            f"(hidden widths..., output width); got {projection_dims}."
        )
    head = keras.Sequential(name=name)
    for index, width in enumerate(projection_dims[:-1]):
        head.add(keras.layers.Dense(int(width), use_bias=not use_bn, name=f"hidden{index + 1}"))
        if use_bn:
            head.add(keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, name=f"hidden{index + 1}_bn"
            ))
        head.add(keras.layers.ReLU(name=f"hidden{index + 1}_relu"))
    head.add(keras.layers.Dense(int(projection_dims[-1]), name="output"))
    return head


def linear_head(num_classes, *, name="linear_head"):
    """A Dense layer to num_classes logits, computed in float32 even under mixed precision.

    Zero-initialized, so training starts from uniform predictions (as in linear
    evaluation protocols); the zero start does not slow a convex linear probe.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")
    return keras.layers.Dense(
        int(num_classes), kernel_initializer="zeros", dtype="float32", name=name
    )
