"""Input pipelines: TFDS datasets or image folders, the paper's multi-view augmentations,
per-host sharding.

Public API: dataset_info, build_train_dataset, build_eval_dataset;
check_config and check_dataset check a config's data fields (data/checks.py).
"""

from supcon_tf.data.checks import check_config, check_dataset
from supcon_tf.data.datasets import (
    CORRUPT_DATASET_MESSAGE,
    CorruptDatasetError,
    MAX_CONSECUTIVE_DECODE_FAILURES,
    DatasetInfo,
    DatasetNotPreparedError,
    build_eval_dataset,
    build_train_dataset,
    dataset_info,
    is_jpeg,
)
from supcon_tf.data.digits import Digits
from supcon_tf.data.sources import DATASETS, IMAGE_FOLDER
from supcon_tf.data.sources import check_name as check_dataset_name
from supcon_tf.data.views import AUGMENTATIONS, MIN_IMAGE_SIZE, ViewSpec
