"""Robustness evaluation: the metrics by hand, the corruptions, the TFDS path, a tiny run.

The metric cases are small tables whose CE and relative CE are worked out in the
comments from the definitions of Hendrycks & Dietterich (2019). The model runs use
test_export's tiny workdir (random weights) and compare a model with itself as the
baseline: on the same images every CE and relative CE must then be exactly 100.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from supcon_tf import corruptions, robustness
import test_export
from test_export import REPO, make_workdir, tiny_config

# The per-corruption AlexNet errors (mean over severities) as google-research/augmix
# lists them (ALEXNET_ERR): a second source for robustness.ALEXNET_ERRORS.
AUGMIX_ALEXNET_MEANS = (0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
                        0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840,
                        0.606500)


# ---------------------------------------------------------------- metrics


def test_corruption_errors_by_hand():
    model = {"gaussian_noise": [0.2, 0.4], "fog": [0.1, 0.3]}
    baseline = {"gaussian_noise": [0.4, 0.6], "fog": [0.3, 0.5]}
    summary = robustness.summarize(model, 0.1, baseline, 0.2)
    # CE: (0.2 + 0.4) / (0.4 + 0.6) = 60 %; (0.1 + 0.3) / (0.3 + 0.5) = 50 %; mean 55.
    assert summary["ce"]["gaussian_noise"] == pytest.approx(60.0)
    assert summary["ce"]["fog"] == pytest.approx(50.0)
    assert summary["mce"] == pytest.approx(55.0)
    # Relative: (0.1 + 0.3) / (0.2 + 0.4) = 66.67 %; (0.0 + 0.2) / (0.1 + 0.3) = 50 %.
    assert summary["relative_ce"]["gaussian_noise"] == pytest.approx(200.0 / 3)
    assert summary["relative_ce"]["fog"] == pytest.approx(50.0)
    assert summary["relative_mce"] == pytest.approx((200.0 / 3 + 50.0) / 2)
    assert "held_out_mce" not in summary


def test_relative_error_undefined_when_the_baseline_does_not_degrade():
    # The baseline's corrupted errors equal its clean error: the rise is 0, relative CE undefined.
    summary = robustness.summarize({"snow": [0.5]}, 0.1, {"snow": [0.3]}, 0.3)
    assert summary["ce"]["snow"] == pytest.approx(500.0 / 3)
    assert summary["relative_ce"]["snow"] is None and summary["relative_mce"] is None


def test_held_out_corruptions_stay_out_of_the_mce():
    model = {"contrast": [0.2], "saturate": [0.9]}
    baseline = {"contrast": [0.4], "saturate": [0.3]}
    summary = robustness.summarize(model, 0.0, baseline, 0.0)
    assert summary["mce"] == pytest.approx(50.0)  # contrast only
    assert summary["held_out_mce"] == pytest.approx(300.0)


def test_alexnet_table():
    assert tuple(robustness.ALEXNET_ERRORS) == corruptions.COMMON
    means = [np.mean(row) for row in robustness.ALEXNET_ERRORS.values()]
    np.testing.assert_allclose(means, AUGMIX_ALEXNET_MEANS, atol=5e-7)
    half = {c: [e / 2 for e in row] for c, row in robustness.ALEXNET_ERRORS.items()}
    summary = robustness.summarize(half, 0.2, robustness.ALEXNET_ERRORS,
                                   robustness.ALEXNET_CLEAN_ERROR)
    assert summary["mce"] == pytest.approx(50.0)


# ---------------------------------------------------------------- corruptions


def textured_image(size=32, seed=0):
    """Smooth gradients plus noise: every corruption has something to change."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    base = np.stack([rows, cols, (rows + cols) / 2], axis=-1) * 180 + 40
    noise = np.random.default_rng(seed).normal(0, 20, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("corruption", corruptions.ALL)
def test_every_corruption_changes_the_image_and_keeps_shape_and_dtype(corruption):
    image = textured_image()
    for severity in (1, 5):
        corrupted = corruptions.corrupt(image, corruption, severity, seed=3)
        assert corrupted.shape == image.shape and corrupted.dtype == np.uint8
        assert np.any(corrupted != image), (corruption, severity)


@pytest.mark.parametrize("corruption", ["gaussian_noise", "impulse_noise", "glass_blur", "frost",
                                        "elastic_transform", "snow", "spatter"])
def test_seeding_reproduces_and_leaves_numpy_alone(corruption):
    images = np.stack([textured_image(seed=i) for i in range(3)])
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = corruptions.corrupt_batch(images, corruption, 4, seed=7)
    assert np.random.rand() == expected_draw  # the global generator is untouched
    np.testing.assert_array_equal(first, corruptions.corrupt_batch(images, corruption, 4, seed=7))
    other = corruptions.corrupt_batch(images, corruption, 4, seed=8)
    assert np.any(first != other)


def test_worker_processes_corrupt_the_same_images():
    images = np.stack([textured_image(seed=i) for i in range(6)])
    with corruptions.Corrupter(workers=2) as corrupter:
        parallel = corrupter(images, "impulse_noise", 3, seed=5, first_index=10)
    np.testing.assert_array_equal(
        parallel, corruptions.corrupt_batch(images, "impulse_noise", 3, seed=5, first_index=10))


def test_small_images_and_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="at least 32"):
        corruptions.corrupt(textured_image(28), "fog", 1, seed=0)
    with pytest.raises(ValueError, match="unknown"):
        corruptions.corrupt(textured_image(), "rain", 1, seed=0)
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(textured_image(), "fog", 6, seed=0)


# ---------------------------------------------------------------- runs


def tiny_workdir(root, **changes):
    config = tiny_config(root / "tfds")
    for field, value in changes.items():
        section, name = field.split(".")
        config[section][name] = value
    workdir = str(root / "workdir")
    make_workdir(workdir, config)
    return workdir


def assert_self_baseline(results, names, severities):
    assert list(results["errors"]) == list(names)
    for name in names:
        assert len(results["errors"][name]) == len(severities)
        assert all(0.0 <= e <= 1.0 for e in results["errors"][name])
        assert results["baseline"]["errors"][name] == results["errors"][name]
        assert results["ce"][name] == pytest.approx(100.0)
        relative = results["relative_ce"][name]
        assert relative is None or relative == pytest.approx(100.0)
    assert results["mce"] == pytest.approx(100.0)


def test_on_the_fly_run_on_tiny_digits(tmp_path):
    workdir = tiny_workdir(tmp_path)
    results = robustness.evaluate_robustness(workdir, baseline_path=workdir, severities=[3],
                                             max_examples=6, output_dir=str(tmp_path / "out"))
    assert results["num_examples"] == 6 and results["corruption_size"] == 32
    assert_self_baseline(results, corruptions.COMMON, [3])
    with open(tmp_path / "out" / robustness.RESULTS_FILE) as f:
        assert json.load(f) == results
    with open(results["heatmap"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # A rerun scores the same corrupted images: the same errors.
    again = robustness.evaluate_robustness(workdir, severities=[3], max_examples=6,
                                           output_dir=str(tmp_path / "again"))
    assert again["errors"] == results["errors"] and again["baseline"] is None
    assert "mce" not in again


def test_baseline_errors_read_back_from_its_robustness_json(tmp_path, monkeypatch):
    workdir = tiny_workdir(tmp_path)
    settings = dict(severities=[1], max_examples=4)
    robustness.evaluate_robustness(workdir, **settings)  # writes workdir/robustness.json
    scored = []
    real_error = robustness.Classifier.error
    monkeypatch.setattr(robustness.Classifier, "error",
                        lambda self, *a: scored.append(self.path) or real_error(self, *a))
    results = robustness.evaluate_robustness(workdir, baseline_path=workdir, **settings,
                                             output_dir=str(tmp_path / "out"))
    assert scored and set(scored) == {workdir}  # the model only: one score per cell + clean
    assert len(scored) == len(corruptions.COMMON) + 1
    assert results["mce"] == pytest.approx(100.0)


def test_prepared_tfds_corrupted_dataset_under_mock_data(tmp_path):
    workdir = tiny_workdir(tmp_path, **{"data.name": "cifar10", "data.image_size": 16})
    with tfds.testing.mock_data(num_examples=8):
        results = robustness.evaluate_robustness(
            workdir, baseline_path=workdir, corrupted="cifar10_corrupted", severities=[2, 5],
            held_out=True, max_examples=5, output_dir=str(tmp_path / "out"))
    assert results["num_examples"] == 5 and results["corruption_size"] is None
    assert_self_baseline(results, corruptions.ALL, [2, 5])
    assert results["held_out_mce"] == pytest.approx(100.0)


def test_imagenet_without_baseline_uses_alexnet(tmp_path, monkeypatch):
    monkeypatch.setattr(test_export, "NUM_CLASSES", 1000)
    workdir = tiny_workdir(tmp_path, **{"data.name": "imagenet2012", "data.image_size": 16})
    with tfds.testing.mock_data(num_examples=4):
        results = robustness.evaluate_robustness(
            workdir, corrupted="imagenet2012_corrupted", severities=[1], max_examples=3,
            output_dir=str(tmp_path / "out"))
    assert results["baseline"]["name"] == robustness.ALEXNET
    # By the definition, from the stored errors and AlexNet's severity-1 error.
    expected = [100.0 * results["errors"][c][0] / robustness.ALEXNET_ERRORS[c][0]
                for c in corruptions.COMMON]
    assert results["mce"] == pytest.approx(np.mean(expected))


@pytest.mark.slow  # a full TensorFlow start-up in a subprocess: 37-55 s on the shared machine
def test_command_line_prints_the_results_last(tmp_path):
    workdir = tiny_workdir(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "supcon_tf.robustness", f"--workdir={workdir}",
         "--severities=5", "--max_examples=3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    with open(os.path.join(workdir, robustness.RESULTS_FILE)) as f:
        assert json.load(f) == printed
    assert "resized up to 32" in result.stderr


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "supcon_tf.robustness", f"--workdir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "neither a training workdir" in result.stderr
