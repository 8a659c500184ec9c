r"""Evaluation tools for an exported encoder: kNN, linear probe, projector files, a 2-D plot.

One command runs them all on an export directory written by export_hub.py:

    python -m supcon_tf.analysis --export_dir=E --output_dir=O \
        [--config=configs/digits.py] [--data_dir=DIR] [--k=200] [--plot_method=pca|tsne]

The dataset and image size come from --config if given, else from the training
config saved in E/export_info.json (so `--config` is only needed to evaluate on
another dataset or split).
--data_dir overrides config.data.data_dir. It embeds the train and eval splits
with E/encoder (inference mode, no augmentation) and writes

    O/summary.json            kNN and linear-probe accuracy, sizes, file paths
    O/projector/              embeddings.tsv, metadata.tsv, projector_config.pbtxt:
                              view with `tensorboard --logdir=O/projector` (Projector tab)
    O/embedding_<method>.png  2-D PCA (or t-SNE) of the eval embeddings, coloured by class

and prints the summary as one JSON line.

kNN follows the contrastive-learning papers (Wu et al. 2018; SimCLR, MoCo):
cosine similarity, the k nearest training embeddings vote for their class with
weight exp(similarity / 0.07), k = 200 (clipped to the training-set size). The
linear probe is evaluate.linear_probe: a logistic regression fitted by L-BFGS, its
L2 penalty chosen by cross-validation on the train split (probe.py).
"""

import json
import posixpath

from supcon_tf import cli

if __name__ == "__main__":  # the command: TensorFlow's start-up messages off the terminal
    cli.quiet_tensorflow_startup()
    cli.import_tensorflow_quietly()

import matplotlib  # noqa: E402
import matplotlib.figure  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from supcon_tf import data, evaluate, export  # noqa: E402

KNN_K = 200
KNN_TEMPERATURE = 0.07


def knn_accuracy(train_emb, train_labels, test_emb, test_labels, *, num_classes, k=KNN_K,
                 temperature=KNN_TEMPERATURE, chunk_size=None):
    """Top-1 accuracy of the weighted cosine kNN classifier; also returns the k used.

    Each test embedding's k most similar training embeddings (cosine) vote for
    their labels with weight exp(similarity / temperature); the class with the
    largest total wins. k is clipped to the number of training embeddings.
    Test embeddings are processed chunk_size at a time (default: as many as keep
    the [chunk, num_train] similarity matrix near 2**26 entries).
    Returns {"top1", "k", "temperature"}.
    """
    train_emb = np.asarray(train_emb, np.float32)
    test_emb = np.asarray(test_emb, np.float32)
    if train_emb.ndim != 2 or test_emb.ndim != 2 or train_emb.shape[1] != test_emb.shape[1]:
        raise ValueError(
            f"knn_accuracy needs [N, D] train and test embeddings of the same D; got "
            f"{train_emb.shape} and {test_emb.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    k = min(int(k), len(train_emb))
    chunk_size = chunk_size or max(1, min(4096, 2**26 // len(train_emb)))
    train_unit = tf.math.l2_normalize(train_emb, axis=1)
    train_labels = tf.constant(np.asarray(train_labels, np.int32))
    votes = []
    for start in range(0, len(test_emb), chunk_size):
        test_unit = tf.math.l2_normalize(test_emb[start:start + chunk_size], axis=1)
        rows = test_unit.shape[0]
        similarity = tf.matmul(test_unit, train_unit, transpose_b=True)
        top_similarity, top_index = tf.math.top_k(similarity, k=k)
        # Sum each row's weights per neighbour class: segment row * C + class.
        segments = tf.gather(train_labels, top_index) + num_classes * tf.range(rows)[:, None]
        row_votes = tf.math.unsorted_segment_sum(
            tf.exp(top_similarity / temperature), segments, rows * num_classes
        )
        votes.append(tf.reshape(row_votes, [rows, num_classes]).numpy())
    top1 = evaluate.topk_accuracy(test_labels, np.concatenate(votes), 1)
    return {"top1": top1, "k": k, "temperature": float(temperature)}


def _subsample(embeddings, labels, max_points, seed):
    """At most max_points rows, a seeded random subset (order kept)."""
    if len(embeddings) <= max_points:
        return embeddings, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_points, replace=False))
    return embeddings[keep], labels[keep]


def write_projector(output_dir, embeddings, labels, *, max_points=10000, seed=0,
                    tensor_name="embedding"):
    """Writes TensorBoard projector files for (a seeded subset of) the embeddings.

    output_dir gets embeddings.tsv (one row per point, tab-separated floats),
    metadata.tsv (the label of each row; one column, so no header) and
    projector_config.pbtxt pointing at both. Returns the number of rows written.
    """
    embeddings, labels = _subsample(
        np.asarray(embeddings, np.float32), np.asarray(labels), max_points, seed
    )
    tf.io.gfile.makedirs(output_dir)
    _write_text(
        posixpath.join(output_dir, "embeddings.tsv"),
        "".join("\t".join(f"{value:.6g}" for value in row) + "\n" for row in embeddings),
    )
    _write_text(
        posixpath.join(output_dir, "metadata.tsv"),
        "".join(f"{int(label)}\n" for label in labels),
    )
    # TensorBoard's ProjectorConfig in text format, written by hand so that
    # TensorBoard need not be installed to produce it.
    _write_text(
        posixpath.join(output_dir, "projector_config.pbtxt"),
        "embeddings {\n"
        f'  tensor_name: "{tensor_name}"\n'
        + "".join(f"  tensor_shape: {dim}\n" for dim in embeddings.shape)
        + '  tensor_path: "embeddings.tsv"\n'
        '  metadata_path: "metadata.tsv"\n'
        "}\n",
    )
    return len(embeddings)


def project_2d(embeddings, *, method="pca", seed=0):
    """[N, D] -> [N, 2] by PCA (centred SVD) or t-SNE (scikit-learn, PCA-initialized)."""
    embeddings = np.asarray(embeddings, np.float64)
    if method == "pca":
        centred = embeddings - embeddings.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        return centred @ components[:2].T
    if method == "tsne":
        from sklearn import manifold  # only t-SNE needs scikit-learn

        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        return manifold.TSNE(
            n_components=2, init="pca", perplexity=perplexity, random_state=seed
        ).fit_transform(embeddings)
    raise ValueError(f"plot method {method!r} is unknown; use 'pca' or 'tsne'")


def plot_embeddings(embeddings, labels, path, *, method="pca", max_points=5000, seed=0,
                    title=None):
    """Saves a 2-D scatter plot of the embeddings, coloured by class, as a PNG at path.

    Works headless and leaves the notebook's or the user's pyplot backend alone.
    Returns the Figure.
    """
    embeddings, labels = _subsample(
        np.asarray(embeddings), np.asarray(labels).astype(np.int64), max_points, seed
    )
    points = project_2d(embeddings, method=method, seed=seed)
    classes = np.unique(labels)
    if len(classes) <= 20:
        colors = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"].colors
    else:
        colors = matplotlib.colormaps["turbo"](np.linspace(0, 1, len(classes)))
    # A bare Figure saves through the Agg renderer without touching pyplot's backend.
    figure = matplotlib.figure.Figure(figsize=(6, 6), dpi=100)
    axes = figure.add_subplot()
    for index, label in enumerate(classes):
        rows = labels == label
        axes.scatter(points[rows, 0], points[rows, 1], s=6, color=colors[index], label=str(label))
    if len(classes) <= 20:  # A legend of hundreds of classes helps nobody.
        axes.legend(markerscale=3, fontsize="small", loc="best")
    axes.set_title(title or f"{method.upper()} of {len(labels)} embeddings")
    axes.set_xticks([])
    axes.set_yticks([])
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png")
    return figure


def _write_text(path, text):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _write_atomically(path, text):
    tmp_path = f"{path}.tmp"
    _write_text(tmp_path, text)
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def embed_splits(encoder_path, data_config, *, batch_size):
    """Embeds the train and eval splits with the SavedModel at encoder_path.

    Returns {"train": (embeddings, labels), "eval": (embeddings, labels)}.
    """
    encoder = tf.saved_model.load(encoder_path)
    splits = {"train": data_config.train_split, "eval": data_config.eval_split}
    return {
        key: evaluate.extract_embeddings(
            lambda images: encoder(images, training=False),
            data.build_eval_dataset(data_config, split=split, batch_size=batch_size),
        )
        for key, split in splits.items()
    }


def run_analysis(export_dir, output_dir, *, config=None, data_dir=None, k=KNN_K,
                 plot_method="pca"):
    """Runs kNN, the linear probe, the projector export and the plot; returns the summary.

    config is a ConfigDict with data and eval slices (e.g. configs/digits.py);
    by default the training config stored in export_dir/export_info.json.
    """
    info = export.read_export_info(export_dir)
    if config is None:
        config = ml_collections.ConfigDict(info["config"])
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    if data_dir is not None:
        data_config.data_dir = data_dir
    # The embeddings are evaluated at the training size: a ResNet export takes images
    # of any size, but its kNN and probe accuracy are the run's at that size only.
    trained_at = info.get("recommended_image_size", info["image_size"])
    if data_config.image_size != trained_at:
        raise ValueError(
            f"config.data.image_size={data_config.image_size} but the export was trained "
            f"on {trained_at}px images (export_info.json's recommended_image_size); use the "
            "config the model was trained with"
        )
    num_classes = info["num_classes"]
    embedded = embed_splits(
        posixpath.join(export_dir, "encoder"), data_config, batch_size=config.eval.batch_size
    )
    (train_emb, train_labels), (eval_emb, eval_labels) = embedded["train"], embedded["eval"]

    knn = knn_accuracy(train_emb, train_labels, eval_emb, eval_labels,
                       num_classes=num_classes, k=k)
    probe = evaluate.linear_probe(train_emb, train_labels, eval_emb, eval_labels,
                                  num_classes=num_classes, seed=config.get("seed", 0))
    tf.io.gfile.makedirs(output_dir)
    projector_dir = posixpath.join(output_dir, "projector")
    projector_rows = write_projector(projector_dir, eval_emb, eval_labels)
    plot_path = posixpath.join(output_dir, f"embedding_{plot_method}.png")
    plot_embeddings(eval_emb, eval_labels, plot_path, method=plot_method,
                    title=f"{data_config.name} {data_config.eval_split}: {plot_method.upper()}")

    summary = {
        "export_dir": export_dir,
        "dataset": data_config.name,
        "train_split": data_config.train_split,
        "eval_split": data_config.eval_split,
        "num_train": int(len(train_labels)),
        "num_eval": int(len(eval_labels)),
        "embedding_dim": int(train_emb.shape[1]),
        "knn": knn,
        "linear_probe": probe,
        "projector_dir": projector_dir,
        "projector_rows": projector_rows,
        "plot": plot_path,
    }
    _write_atomically(
        posixpath.join(output_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True)
    )
    return summary


def _main():
    """The command line (see the module docstring); flags exist only when run as a script."""
    from absl import app, flags
    from ml_collections import config_flags

    export_dir = flags.DEFINE_string("export_dir", None, "Directory written by export_hub.py.")
    output_dir = flags.DEFINE_string(
        "output_dir", None, "Where to write summary.json, projector/ and the plot."
    )
    config = config_flags.DEFINE_config_file(
        "config", None, "Config with data and eval slices; default: the export's own."
    )
    data_dir = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir.")
    k = flags.DEFINE_integer("k", KNN_K, "Neighbours for the kNN classifier.", lower_bound=1)
    plot_method = flags.DEFINE_enum("plot_method", "pca", ["pca", "tsne"], "2-D projection.")
    flags.mark_flags_as_required(["export_dir", "output_dir"])

    def run(argv):
        del argv  # cli.parse_flags refused positional arguments
        cli.show_library_info_off(__file__)
        try:
            summary = run_analysis(
                export_dir.value, output_dir.value, config=config.value,
                data_dir=data_dir.value, k=k.value, plot_method=plot_method.value,
            )
        # Not an export, data not prepared, an output_dir that cannot be written.
        except (OSError, ValueError, tf.errors.OpError) as error:
            cli.fail(error, 2)
        print(json.dumps(summary, sort_keys=True))

    app.run(run, flags_parser=lambda argv: cli.parse_flags(argv, config_flags=[config]))


if __name__ == "__main__":
    _main()
