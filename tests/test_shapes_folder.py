"""supcon_tf/data/write_shapes_folder.py: the offline folder docs/transfer.md measures on."""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.data import write_shapes_folder as shapes


def test_the_three_shapes_have_the_same_area():
    """Drawn from the same seed, so the same radius: only the shape tells them apart."""
    size = 32
    for seed in range(5):
        areas = {kind: shapes.shape_mask(kind, size, np.random.default_rng(seed)).sum()
                 for kind in shapes.CLASSES}
        radius = np.random.default_rng(seed).uniform(*shapes.RADIUS_RANGE) * size
        for kind, area in areas.items():
            assert area == pytest.approx(np.pi * radius**2, rel=0.03), kind


def test_the_folder_mixes_png_jpeg_and_grey_files(tmp_path):
    counts = shapes.write_shapes_folder(str(tmp_path), train_per_class=2, test_per_class=1,
                                        size=16)
    assert counts == {"train": 6, "test": 3}
    files = sorted(tmp_path.glob("train/*/*"))
    assert [f.parent.name for f in files] == [k for k in shapes.CLASSES for _ in range(2)]
    assert {f.suffix for f in files} == {".png", ".jpg"}
    channels = [tf.io.decode_image(tf.io.read_file(str(f))).shape[-1] for f in files]
    assert sorted(channels) == [1, 1, 3, 3, 3, 3]  # every third file written is grey
    images = [tf.io.decode_image(tf.io.read_file(str(f))).shape[:2] for f in files]
    assert all(tuple(shape) == (16, 16) for shape in images)
    again = shapes.write_shapes_folder(str(tmp_path / "again"), train_per_class=2,
                                       test_per_class=1, size=16)
    assert again == counts
    for f in files:
        np.testing.assert_array_equal(
            tf.io.read_file(str(f)).numpy(),
            tf.io.read_file(str(tmp_path / "again" / f.relative_to(tmp_path))).numpy())
