"""Input pipelines: TFDS datasets, the paper's multi-view augmentations, per-host sharding.

Public API: dataset_info, build_train_dataset,
build_eval_dataset; AUGMENTATIONS and DATASETS list the valid config names.
"""

from supcon_tf.data.datasets import (
    CORRUPT_DATASET_MESSAGE,
    CorruptDatasetError,
    DATASETS,
    MAX_CONSECUTIVE_DECODE_FAILURES,
    DatasetInfo,
    DatasetNotPreparedError,
    build_eval_dataset,
    build_train_dataset,
    dataset_info,
    is_jpeg,
)
from supcon_tf.data.digits import Digits
from supcon_tf.data.views import AUGMENTATIONS, MIN_IMAGE_SIZE, ViewSpec
