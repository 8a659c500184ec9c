r"""Robustness to common corruptions: errors, CE, mCE and relative mCE (Hendrycks & Dietterich 2019).

    python -m supcon_tf.robustness --workdir=W [--baseline=W_CE] [--severities=1,2,3,4,5]
        [--held_out] [--max_examples=N] [--corrupted=cifar10_corrupted] [--data_dir=DIR]
        [--seed=0] [--output_dir=O] [--workers=N]
    python -m supcon_tf.robustness --export=E ...        (an export_hub.py directory)

The model is a training workdir (its checkpoint, and stage two's classifier when
one was trained) or an export (its classifier SavedModel); --baseline takes either.
The images, two ways:
- on the fly (default), for any dataset: the eval split's images as the model
  sees them at evaluation (config.data.image_size), each corrupted with the 15
  common corruptions (plus the 4 held-out ones with --held_out) at each severity,
  seeded per image (corruptions.py). The corruptions need 32 px a side, so a
  smaller view is resized up to 32 (bilinear) before corrupting and back to the
  model's size after; the clean error goes through the same two resizes.
- --corrupted=cifar10_corrupted or imagenet2012_corrupted: TFDS's prepared
  datasets, config <corruption>_<severity>, used whole (they are the corrupted
  eval crops already), resized only if not at the model's size. The clean error
  is the model's standard evaluation on its own eval split.

Metrics, E_{s,c} the top-1 error at severity s of corruption c (f the model, b the baseline):
    CE_c          = sum_s E_{s,c}(f) / sum_s E_{s,c}(b)
    relative CE_c = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(b) - E_clean(b))
    mCE, relative mCE: their means over the 15 common corruptions (held-out ones apart)
CE values are percentages (100: as robust as the baseline), errors fractions. The
baseline is --baseline (scored on the same images, or read from its own
robustness.json when that was made with the same settings); for ImageNet without
--baseline, AlexNet's published errors (ALEXNET_ERRORS), which makes the mCE
comparable to the paper's 67.2 (SupCon) and 68.6 (cross-entropy), ResNet-50.

Writes O/robustness.json (O: --output_dir, default the model's directory) and
O/robustness_heatmap.png (error by corruption and severity), and prints the JSON
as the last stdout line.
"""

import io
import json
import os
import posixpath
import time

from supcon_tf import cli

if __name__ == "__main__":  # the command: TensorFlow's start-up messages off the terminal
    cli.quiet_tensorflow_startup()
    cli.import_tensorflow_quietly()

import matplotlib  # noqa: E402
import matplotlib.figure  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from supcon_tf import checkpoints, corruptions, data, evaluate, export  # noqa: E402
from supcon_tf.data import augment, sources, views  # noqa: E402

RESULTS_FILE = "robustness.json"
HEATMAP_FILE = "robustness_heatmap.png"
# The TFDS corrupted datasets and the split each holds.
CORRUPTED_SPLITS = {"cifar10_corrupted": "test", "imagenet2012_corrupted": "validation"}
# Where TFDS's config names differ from the benchmark's corruption names.
TFDS_CORRUPTION_NAMES = {"cifar10_corrupted": {"glass_blur": "frosted_glass_blur",
                                               "elastic_transform": "elastic"}}

# AlexNet's ImageNet-C top-1 errors, severities 1-5, as Hendrycks & Dietterich
# published them for the mCE's normalization. Source: the per-severity table of
# timm (huggingface/pytorch-image-models, timm/utils, imagenetc_alexnet_error_rates_list);
# each row's mean equals the per-corruption AlexNet error of google-research/augmix
# (imagenet.py, ALEXNET_ERR, "taken from https://github.com/hendrycks/robustness").
ALEXNET_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
# AlexNet's clean top-1 error on the ImageNet validation set: torchvision's published
# 56.522 % top-1 for alexnet-owt-4df8aa71, the checkpoint ImageNet-C/test.py of
# hendrycks/robustness evaluates (43.5 % in the paper's tables).
ALEXNET_CLEAN_ERROR = 0.43478
ALEXNET = "alexnet (published ImageNet-C errors)"


# ---------------------------------------------------------------------------- metrics


def _ratio(numerator, denominator):
    return None if denominator <= 0 else 100.0 * numerator / denominator


def corruption_error(errors, baseline_errors):
    """CE_c in percent: sum over severities of the model's errors over the baseline's."""
    return _ratio(float(np.sum(errors)), float(np.sum(baseline_errors)))


def relative_corruption_error(errors, clean_error, baseline_errors, baseline_clean_error):
    """Relative CE_c in percent: the errors' rise above each model's clean error, summed over
    severities, model over baseline; None when the baseline's errors do not rise at all."""
    rise = np.sum(np.asarray(errors, np.float64) - clean_error)
    baseline_rise = np.sum(np.asarray(baseline_errors, np.float64) - baseline_clean_error)
    return _ratio(float(rise), float(baseline_rise))


def _mean(values):
    """The mean, or None when a value is undefined (a mean over fewer corruptions would mislead)."""
    values = list(values)
    return None if not values or None in values else float(np.mean(values))


def summarize(errors, clean_error, baseline_errors, baseline_clean_error):
    """{c: [E_s]} for model and baseline (same corruptions and severities) -> CE, relative CE
    per corruption and their means: mCE over the common corruptions, held-out ones apart."""
    ce = {c: corruption_error(errors[c], baseline_errors[c]) for c in errors}
    relative = {c: relative_corruption_error(errors[c], clean_error, baseline_errors[c],
                                             baseline_clean_error) for c in errors}
    common = [c for c in errors if c in corruptions.COMMON]
    held_out = [c for c in errors if c in corruptions.HELD_OUT]
    summary = {"ce": ce, "relative_ce": relative,
               "mce": _mean(ce[c] for c in common),
               "relative_mce": _mean(relative[c] for c in common)}
    if held_out:
        summary["held_out_mce"] = _mean(ce[c] for c in held_out)
        summary["held_out_relative_mce"] = _mean(relative[c] for c in held_out)
    return summary


# ---------------------------------------------------------------------------- models


class Classifier:
    """A trained model's logits on float32 [b, S, S, 3] images in [0, 1], in fixed batches."""

    def __init__(self, path, logits_fn, config):
        self.path = path
        self.config = config
        self.image_size = int(config.data.image_size)
        self.batch_size = int(config.get("eval", {}).get("batch_size", 256))
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
        self._logits = tf.function(logits_fn, input_signature=[spec])

    def error(self, images, labels):
        """Top-1 error on float32 images [N, S, S, 3] with int labels [N]."""
        logits = [self._logits(tf.constant(images[start:start + self.batch_size])).numpy()
                  for start in range(0, len(images), self.batch_size)]
        return 1.0 - evaluate.topk_accuracy(labels, np.concatenate(logits), 1)


def _from_workdir(workdir):
    # Stage two's classifier when it was trained, else the model's own, as evaluation reads.
    config, model, _, head, _ = export.restore_from_workdir(workdir)
    forward = export.ForwardPasses(model, image_size=config.data.image_size, linear_head=head)
    return Classifier(workdir, lambda x: forward.logits(forward.embedding[False](x), False),
                      config)


def _from_export(export_dir):
    info = export.read_export_info(export_dir)
    module = tf.saved_model.load(posixpath.join(export_dir, "classifier"))
    config = ml_collections.ConfigDict(info["config"])
    with config.unlocked():
        config.data.image_size = info.get("recommended_image_size", info["image_size"])
    return Classifier(export_dir, lambda x: module(x, training=False), config)


def load_classifier(path):
    """A workdir (config.json) or an export (export_info.json) as a Classifier."""
    if tf.io.gfile.exists(posixpath.join(path, export.EXPORT_INFO_FILE)):
        return _from_export(path)
    if tf.io.gfile.exists(posixpath.join(path, "config.json")):
        return _from_workdir(path)
    raise FileNotFoundError(f"{path} is neither a training workdir (config.json) nor an "
                            f"export ({export.EXPORT_INFO_FILE}); pass one of those")


# ---------------------------------------------------------------------------- images


def _to_uint8(images):
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def _resize(images_uint8, size):
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3], bilinear (unchanged at that size)."""
    if images_uint8.shape[1:3] == (size, size):
        return images_uint8
    resized = tf.image.resize(tf.cast(images_uint8, tf.float32), [size, size])
    return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


def _first(dataset, max_examples):
    """(images float32 [N, S, S, 3], labels [N]) of the first max_examples unmasked rows."""
    images, labels, count = [], [], 0
    for batch in dataset:
        mask = batch["mask"].numpy().astype(bool) if "mask" in batch else None
        image, label = batch["image"].numpy(), batch["label"].numpy()
        if mask is not None:
            image, label = image[mask], label[mask]
        images.append(image)
        labels.append(label)
        count += len(label)
        if max_examples and count >= max_examples:
            break
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    return (images[:max_examples], labels[:max_examples]) if max_examples else (images, labels)


def eval_views(data_config, max_examples, batch_size):
    """The eval split as evaluation sees it: (float32 [N, S, S, 3], labels)."""
    dataset = data.build_eval_dataset(data_config, split=data_config.eval_split,
                                      batch_size=batch_size)
    return _first(dataset, max_examples)


def prepared_corrupted(name, corruption, severity, *, data_dir, image_size, max_examples,
                       batch_size):
    """One config of a TFDS corrupted dataset, each image used whole at image_size."""
    config_name = TFDS_CORRUPTION_NAMES.get(name, {}).get(corruption, corruption)
    data_config = ml_collections.ConfigDict({
        "name": f"{name}/{config_name}_{severity}", "data_dir": data_dir,
        "train_split": CORRUPTED_SPLITS[name], "eval_split": CORRUPTED_SPLITS[name]})
    source = sources.source(data_config)

    def decode(record):
        image = views.decode_image(source.read(record["image"]))
        return {"image": augment.resize(image, image_size), "label": record["label"]}

    records = source.records(data_config.eval_split)
    return _first(records.map(decode).batch(batch_size), max_examples)


class OnTheFly:
    """The eval views corrupted here: uint8 at the corruption size, per (corruption, severity)."""

    # Images corrupted between two progress checks (a cell of 10,000 can take minutes).
    CHUNK = 500
    LOG_EVERY_S = 20.0

    def __init__(self, views_float, *, seed, corrupter):
        self.image_size = views_float.shape[1]
        self.seed = seed
        self.corrupter = corrupter
        self.corruption_size = max(self.image_size, corruptions.MIN_SIZE)
        self.clean = _resize(_to_uint8(views_float), self.corruption_size)
        if self.corruption_size != self.image_size:
            logging.info("the %d px images are smaller than the %d px the corruptions need: each "
                         "is resized up to %d px (bilinear) before corrupting and back to %d px "
                         "after, clean images too", self.image_size, corruptions.MIN_SIZE,
                         self.corruption_size, self.image_size)

    def at_model_size(self, images_uint8):
        return _resize(images_uint8, self.image_size).astype(np.float32) / 255.0

    def corrupted(self, corruption, severity):
        chunks, last_log = [], time.time()
        for start in range(0, len(self.clean), self.CHUNK):
            chunk = self.clean[start:start + self.CHUNK]
            chunks.append(self.corrupter(chunk, corruption, severity, seed=self.seed,
                                         first_index=start))
            if time.time() - last_log > self.LOG_EVERY_S:
                logging.info("%s severity %d: %d/%d images corrupted", corruption, severity,
                             start + len(chunk), len(self.clean))
                last_log = time.time()
        return self.at_model_size(np.concatenate(chunks))


# ---------------------------------------------------------------------------- the evaluation


def _settings(classifier, args):
    return {"dataset": classifier.config.data.name, "eval_split": classifier.config.data.eval_split,
            "image_size": classifier.image_size, "corrupted": args["corrupted"],
            "max_examples": args["max_examples"], "seed": args["seed"],
            "severities": list(args["severities"]), "corruptions": list(args["corruptions"])}


def _stored_errors(path, settings):
    """A baseline's robustness.json errors when made with the same settings, else None."""
    stored = posixpath.join(path, RESULTS_FILE)
    if not tf.io.gfile.exists(stored):
        return None
    with tf.io.gfile.GFile(stored) as f:
        results = json.load(f)
    if results.get("settings") != settings:
        logging.info("%s was made with other settings; scoring the baseline again", stored)
        return None
    logging.info("baseline errors read from %s", stored)
    return results["clean_error"], results["errors"]


def _check_same_task(model, baseline):
    for field in ("name", "image_size"):
        mine, theirs = model.config.data[field], baseline.config.data[field]
        if mine != theirs:
            raise ValueError(f"the baseline {baseline.path} has data.{field}={theirs!r} and the "
                             f"model data.{field}={mine!r}; compare models of one dataset and size")


def evaluate_robustness(model_path, *, baseline_path=None, severities=corruptions.SEVERITIES,
                        held_out=False, max_examples=None, corrupted=None, data_dir=None, seed=0,
                        output_dir=None, workers=1):
    """Scores the model (and the baseline) on every corruption and severity; writes and returns
    the results (see the module docstring)."""
    start = time.time()
    severities = tuple(int(s) for s in severities)
    for severity in severities:
        corruptions.check(corruptions.COMMON[0], severity)
    if corrupted is not None and corrupted not in CORRUPTED_SPLITS:
        raise ValueError(f"--corrupted={corrupted!r} is unknown; use one of "
                         f"{', '.join(CORRUPTED_SPLITS)} (or leave it out to corrupt on the fly)")
    model = load_classifier(model_path)
    if data_dir is not None:
        with model.config.unlocked():
            model.config.data.data_dir = data_dir
    data_config = model.config.data
    alexnet = baseline_path is None and "imagenet2012" in (
        data_config.name, corrupted and corrupted.split("_")[0])
    names = corruptions.COMMON + (corruptions.HELD_OUT if held_out and not alexnet else ())
    if held_out and alexnet:
        logging.warning("AlexNet's published errors cover the 15 common corruptions only: "
                        "--held_out is ignored without --baseline")
    args = dict(corrupted=corrupted, max_examples=max_examples, seed=seed,
                severities=severities, corruptions=names)
    settings = _settings(model, args)

    baseline, baseline_name, baseline_results = None, None, None
    if baseline_path is not None:
        baseline = load_classifier(baseline_path)
        _check_same_task(model, baseline)
        baseline_name = baseline_path
        baseline_results = _stored_errors(baseline_path, settings)
        if baseline_results is not None:
            baseline = None  # nothing left to score
    elif alexnet:  # published errors for the common corruptions only
        baseline_name = ALEXNET
        index = [s - 1 for s in severities]
        baseline_results = (ALEXNET_CLEAN_ERROR,
                            {c: [ALEXNET_ERRORS[c][i] for i in index] for c in names})
    else:
        logging.info("no --baseline: errors only; mCE needs a baseline (e.g. the cross-entropy run)")
    scored = [model] + ([baseline] if baseline is not None else [])

    clean_views, labels = eval_views(data_config, max_examples, model.batch_size)
    with corruptions.Corrupter(workers if corrupted is None else 1) as corrupter:
        if corrupted is None:
            on_the_fly = OnTheFly(clean_views, seed=seed, corrupter=corrupter)
            clean = on_the_fly.at_model_size(on_the_fly.clean)

            def cell(corruption, severity):
                return on_the_fly.corrupted(corruption, severity), labels
        else:
            clean = clean_views

            def cell(corruption, severity):
                return prepared_corrupted(
                    corrupted, corruption, severity, data_dir=data_config.data_dir,
                    image_size=model.image_size, max_examples=max_examples,
                    batch_size=model.batch_size)
        clean_errors = [m.error(clean, labels) for m in scored]
        logging.info("clean error %.4f on %d images", clean_errors[0], len(labels))
        errors = _score_cells(scored, names, severities, cell)

    results = {"model": model_path, "settings": settings, "num_examples": int(len(labels)),
               "corruption_size": on_the_fly.corruption_size if corrupted is None else None,
               "clean_error": clean_errors[0], "errors": errors[0], "baseline": None}
    if baseline is not None:
        baseline_results = (clean_errors[1], errors[1])
    if baseline_results is not None:
        baseline_clean, baseline_errors = baseline_results
        results["baseline"] = {"name": baseline_name, "clean_error": baseline_clean,
                               "errors": {c: baseline_errors[c] for c in names}}
        results.update(summarize(errors[0], clean_errors[0],
                                 results["baseline"]["errors"], baseline_clean))
    output_dir = output_dir or model_path
    tf.io.gfile.makedirs(output_dir)
    results["heatmap"] = posixpath.join(output_dir, HEATMAP_FILE)
    results["wall_s"] = round(time.time() - start, 1)
    write_heatmap(results["heatmap"], errors[0], severities,
                  title=f"{data_config.name}: top-1 error ({results['num_examples']} images)")
    checkpoints.write_atomically(posixpath.join(output_dir, RESULTS_FILE),
                                 json.dumps(results, sort_keys=True))
    return results


def _score_cells(scored, names, severities, cell):
    """[{corruption: [error at each severity]}] of each model; cell(c, s) gives (images, labels)."""
    start = time.time()
    errors = [{c: [] for c in names} for _ in scored]
    cells = [(c, s) for c in names for s in severities]
    for done, (corruption, severity) in enumerate(cells, 1):
        cell_start = time.time()
        images, labels = cell(corruption, severity)
        for model_errors, model in zip(errors, scored):
            model_errors[corruption].append(model.error(images, labels))
        elapsed = time.time() - start
        logging.info("%s severity %d: error %.4f (%d images, %.1f s); %d/%d done, ETA %.1f min",
                     corruption, severity, errors[0][corruption][-1], len(labels),
                     time.time() - cell_start, done, len(cells),
                     elapsed / done * (len(cells) - done) / 60)
    return errors


def write_heatmap(path, errors, severities, *, title):
    """A PNG of errors {corruption: [E_s]}: corruptions down, severities across, values shown."""
    names = list(errors)
    table = np.array([errors[c] for c in names], np.float64)
    figure = matplotlib.figure.Figure(figsize=(1.2 * len(severities) + 3, 0.32 * len(names) + 1.5),
                                      dpi=100)
    axes = figure.add_subplot()
    shown = axes.imshow(table, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for row, col in np.ndindex(table.shape):
        axes.text(col, row, f"{table[row, col]:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if table[row, col] < 0.6 else "black")
    axes.set_xticks(range(len(severities)), [str(s) for s in severities])
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("severity")
    axes.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axes, label="top-1 error")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    tmp_path = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp_path, "wb") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def _main():
    """The command line (see the module docstring); flags exist only when run as a script."""
    from absl import app, flags

    workdir = flags.DEFINE_string("workdir", None, "Training workdir of the model to score.")
    export_dir = flags.DEFINE_string("export", None, "Or: an export_hub.py directory.")
    baseline = flags.DEFINE_string("baseline", None,
                                   "Workdir or export of the baseline (e.g. the cross-entropy run).")
    severities = flags.DEFINE_list("severities", "1,2,3,4,5", "Severities to score (1-5).")
    held_out = flags.DEFINE_bool("held_out", False, "Also the 4 held-out corruptions.")
    max_examples = flags.DEFINE_integer("max_examples", None, "Score the first N eval images only.",
                                        lower_bound=1)
    corrupted = flags.DEFINE_enum("corrupted", None, list(CORRUPTED_SPLITS),
                                  "A prepared TFDS corrupted dataset instead of on-the-fly ones.")
    data_dir = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir.")
    seed = flags.DEFINE_integer("seed", 0, "Seed of the on-the-fly corruptions.")
    output_dir = flags.DEFINE_string("output_dir", None, "Default: the model's directory.")
    workers = flags.DEFINE_integer("workers", os.cpu_count() or 1,
                                   "Processes that corrupt images (default: one per core).",
                                   lower_bound=1)

    def run(argv):
        del argv  # cli.parse_flags refused positional arguments
        cli.show_library_info_off(__file__)
        if (workdir.value is None) == (export_dir.value is None):
            cli.fail(ValueError("pass exactly one of --workdir=W and --export=E"), 2)
        try:
            severity_values = [int(s) for s in severities.value]
        except ValueError:
            cli.fail(ValueError(f"--severities={','.join(severities.value)}: integers 1-5 "
                                "separated by commas"), 2)
        try:
            results = evaluate_robustness(
                workdir.value or export_dir.value, baseline_path=baseline.value,
                severities=severity_values, held_out=held_out.value,
                max_examples=max_examples.value, corrupted=corrupted.value,
                data_dir=data_dir.value, seed=seed.value, output_dir=output_dir.value,
                workers=workers.value)
        except (OSError, ValueError, ImportError, tf.errors.OpError) as error:
            cli.fail(error, 2)
        print(json.dumps(results, sort_keys=True))

    app.run(run, flags_parser=lambda argv: cli.parse_flags(argv))


if __name__ == "__main__":
    _main()
