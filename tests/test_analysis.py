"""Evaluation tools: kNN against a brute-force NumPy kNN, projector files, the plot, the CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import threadpoolctl

from supcon_tf import analysis, data
from test_export import REPO, shared_export

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force_knn_top1(train, train_labels, test, test_labels, k, temperature, num_classes):
    """The weighted cosine kNN written out one test point at a time."""
    hits = 0
    for point, label in zip(test, test_labels):
        similarities = [
            float(np.dot(point, other) / (np.linalg.norm(point) * np.linalg.norm(other)))
            for other in train
        ]
        nearest = sorted(range(len(train)), key=lambda j: -similarities[j])[:k]
        votes = [0.0] * num_classes
        for j in nearest:
            votes[train_labels[j]] += np.exp(similarities[j] / temperature)
        hits += int(np.argmax(votes) == label)
    return hits / len(test)


@pytest.mark.parametrize("k", [1, 7, 200])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    num_classes = 4
    train = rng.standard_normal((60, 6))
    test = rng.standard_normal((25, 6))
    train_labels = rng.integers(0, num_classes, 60)
    test_labels = rng.integers(0, num_classes, 25)
    expected = brute_force_knn_top1(train, train_labels, test, test_labels,
                                     min(k, 60), 0.07, num_classes)
    for chunk_size in (1024, 4):  # chunking must not change the result
        result = analysis.knn_accuracy(train, train_labels, test, test_labels,
                                       num_classes=num_classes, k=k, chunk_size=chunk_size)
        assert result["k"] == min(k, 60)
        assert result["top1"] == pytest.approx(expected)


def test_knn_temperature_and_separable_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    train_labels = np.repeat(np.arange(3), 20)
    test_labels = np.repeat(np.arange(3), 5)
    train = centres[train_labels] + rng.standard_normal((60, 8))
    test = centres[test_labels] + rng.standard_normal((15, 8))
    result = analysis.knn_accuracy(train, train_labels, test, test_labels, num_classes=3)
    assert result == {"top1": 1.0, "k": 60, "temperature": 0.07}
    # A large temperature makes every neighbour vote equally: with k = all, a majority vote
    # over the whole training set, i.e. always the most frequent training class.
    skewed_labels = np.r_[np.zeros(40, int), np.ones(20, int)]
    flat = analysis.knn_accuracy(train, skewed_labels, test, test_labels, num_classes=3,
                                 temperature=1e6)
    assert flat["top1"] == pytest.approx(np.mean(test_labels == 0))


def test_knn_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="same D"):
        analysis.knn_accuracy(np.zeros((4, 3)), np.zeros(4, int), np.zeros((2, 5)),
                              np.zeros(2, int), num_classes=2)


def test_projector_files_have_one_row_per_point(tmp_path):
    rng = np.random.default_rng(0)
    embeddings, labels = rng.standard_normal((30, 4)), rng.integers(0, 10, 30)
    rows = analysis.write_projector(str(tmp_path / "all"), embeddings, labels)
    assert rows == 30
    table = np.loadtxt(tmp_path / "all" / "embeddings.tsv", delimiter="\t")
    np.testing.assert_allclose(table, embeddings, rtol=1e-5)
    metadata = (tmp_path / "all" / "metadata.tsv").read_text().splitlines()
    assert [int(x) for x in metadata] == list(labels)
    config = (tmp_path / "all" / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 1
    fields = re.findall(r'^\s*(\w+): "?([^"\n]*)"?$', config, flags=re.M)
    assert sorted(fields) == sorted([
        ("tensor_name", "embedding"), ("tensor_shape", "30"), ("tensor_shape", "4"),
        ("tensor_path", "embeddings.tsv"), ("metadata_path", "metadata.tsv"),
    ])

    assert analysis.write_projector(str(tmp_path / "few"), embeddings, labels, max_points=10) == 10
    assert len((tmp_path / "few" / "embeddings.tsv").read_text().splitlines()) == 10
    assert len((tmp_path / "few" / "metadata.tsv").read_text().splitlines()) == 10


def test_pca_preserves_distances_of_planar_data():
    rng = np.random.default_rng(0)
    plane = rng.standard_normal((40, 2)) * [3.0, 1.0]
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    embedded = np.c_[plane, np.zeros((40, 4))] @ rotation + 5.0
    points = analysis.project_2d(embedded, method="pca")

    def distances(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    np.testing.assert_allclose(distances(points), distances(plane), atol=1e-8)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_is_a_valid_png(tmp_path, method):
    import matplotlib.image

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    embeddings = np.eye(4, 16)[labels] * 4 + rng.standard_normal((48, 16))
    path = str(tmp_path / f"{method}.png")
    # One OpenMP thread: scikit-learn's t-SNE crawls when its threads compete for a busy CPU.
    with threadpoolctl.threadpool_limits(1):
        analysis.plot_embeddings(embeddings, labels, path, method=method)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # something was drawn


def test_plot_rejects_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="tsne"):
        analysis.plot_embeddings(np.zeros((5, 3)), np.zeros(5), str(tmp_path / "x.png"),
                                 method="umap")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


def test_command_line_runs_everything_on_an_export(exported, tmp_path):
    config = exported["config"]
    output_dir = tmp_path / "analysis"
    result = subprocess.run(
        [sys.executable, "-m", "supcon_tf.analysis", f"--export_dir={exported['export_dir']}",
         f"--output_dir={output_dir}", "--config=configs/digits.py:tiny",
         f"--data_dir={config.data.data_dir}", "--k=50"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The summary alone: TensorFlow's start-up and the TFDS INFO lines stay off the terminal.
    assert not result.stderr.strip(), result.stderr[-3000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == summary

    info = data.dataset_info(config.data)
    assert summary["num_train"] == info.num_train_examples
    assert summary["num_eval"] == info.num_eval_examples
    assert summary["knn"]["k"] == 50
    for accuracy in (summary["knn"]["top1"], summary["linear_probe"]["top1"]):
        assert 0.0 <= accuracy <= 1.0
    assert summary["linear_probe"]["top5"] >= summary["linear_probe"]["top1"]
    projector_dir = output_dir / "projector"
    assert summary["projector_rows"] == info.num_eval_examples
    for name in ("embeddings.tsv", "metadata.tsv"):
        assert len((projector_dir / name).read_text().splitlines()) == info.num_eval_examples
    with open(summary["plot"], "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


def test_run_analysis_defaults_to_the_exports_config(exported, tmp_path, monkeypatch):
    # Stand-in embeddings keep this about the plumbing: which config, data and k it uses.
    seen = {}

    def fake_embed_splits(encoder_path, data_config, *, batch_size):
        seen.update(encoder_path=encoder_path, data_config=data_config, batch_size=batch_size)
        rng = np.random.default_rng(0)
        return {"train": (rng.standard_normal((120, 5)), np.arange(120) % 10),
                "eval": (rng.standard_normal((30, 5)), np.arange(30) % 10)}

    monkeypatch.setattr(analysis, "embed_splits", fake_embed_splits)
    summary = analysis.run_analysis(exported["export_dir"], str(tmp_path / "out"),
                                    data_dir=str(tmp_path / "elsewhere"))
    config = exported["config"]
    assert seen["encoder_path"] == os.path.join(exported["export_dir"], "encoder")
    assert seen["data_config"].name == config.data.name
    assert seen["data_config"].data_dir == str(tmp_path / "elsewhere")
    assert seen["batch_size"] == config.eval.batch_size
    assert summary["knn"]["k"] == 120  # the default 200, clipped to the train size
    assert summary["num_train"] == 120 and summary["projector_rows"] == 30
    assert (tmp_path / "out" / "embedding_pca.png").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_run_analysis_rejects_a_config_for_another_image_size(exported, tmp_path):
    config = exported["config"].copy_and_resolve_references()
    config.data.image_size *= 2
    with pytest.raises(ValueError, match="image_size"):
        analysis.run_analysis(exported["export_dir"], str(tmp_path / "out"), config=config)


def test_command_on_a_directory_that_is_not_an_export_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "supcon_tf.analysis", f"--export_dir={tmp_path}",
         f"--output_dir={tmp_path / 'out'}"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
        text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert f"error: {tmp_path}/export_info.json not found" in output
