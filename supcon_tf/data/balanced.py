"""Class-balanced sampling: each step draws K classes and M images of each.

With many classes or a skewed distribution, a uniformly drawn batch gives each
anchor few positives (SupContrast issues #156 and #19); config.data.samples_per_class=M
makes every input pipeline's batch of E examples hold K = E / M classes with M
images each, grouped class by class. The draw of a step is a pure function of
(seed, step), so a stream resumes at any step without replaying earlier ones.

Within a class the M images are distinct: the class's images, rotated by a
random offset, are cut into M equal strata and one image is drawn from each,
so every image is equally likely. A class with fewer than M images repeats
some of them (each copy gets its own augmentations).
"""

import numpy as np
import tensorflow as tf

from supcon_tf.data import augment


def check_samples_per_class(samples_per_class, examples_per_step):
    """Raises ValueError unless M divides the per-pipeline batch; returns K = E / M."""
    if samples_per_class < 1 or examples_per_step % samples_per_class:
        raise ValueError(
            f"config.data.samples_per_class={samples_per_class} must divide the "
            f"{examples_per_step} examples each input pipeline draws per step (the global "
            "batch over the hosts); set it to a divisor such as 2 or 4, or None for "
            "uniform batches")
    return examples_per_step // samples_per_class


class ClassBalancedSampler:
    """Draws, per step, positions [K, M] into `labels` (int [N]): K classes, M positions each."""

    def __init__(self, labels, *, samples_per_class, classes_per_step):
        labels = np.asarray(labels, np.int64)
        classes, starts, counts = np.unique(np.sort(labels), return_index=True,
                                            return_counts=True)
        if len(classes) < classes_per_step:
            raise ValueError(
                f"config.data.samples_per_class={samples_per_class} puts {classes_per_step} "
                f"classes in each batch, but this input pipeline's part of the training split "
                f"has only {len(classes)}; lower the batch or raise samples_per_class")
        self.samples_per_class = samples_per_class
        self.classes_per_step = classes_per_step
        self._by_class = tf.constant(np.argsort(labels, kind="stable"), tf.int64)
        self._starts = tf.constant(starts, tf.int64)
        self._counts = tf.constant(counts, tf.int64)

    def positions(self, seed, step):
        """int64 [K, M]: row k holds M positions of one class; K distinct classes."""
        k, m = self.classes_per_step, self.samples_per_class
        class_seed, offset_seed, stratum_seed = tf.unstack(
            augment.split_seed(augment.fold_seed(seed, step), 3))
        scores = tf.random.stateless_uniform(tf.shape(self._counts), class_seed)
        chosen = tf.math.top_k(scores, k).indices
        count = tf.gather(self._counts, chosen)[:, None]  # [K, 1]
        start = tf.gather(self._starts, chosen)[:, None]
        offset = self._uniform_below(count, [k, 1], offset_seed)
        j = tf.range(m, dtype=tf.int64)[None]
        low, high = j * count // m, (j + 1) * count // m
        within = low + self._uniform_below(high - low, [k, m], stratum_seed)
        within = tf.where(count >= m, within, j % count)
        return tf.gather(self._by_class, start + (offset + within) % count)

    @staticmethod
    def _uniform_below(limit, shape, seed):
        """Integers uniform in [0, limit) (limit >= 1, broadcast to shape)."""
        uniform = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
        drawn = tf.cast(tf.floor(uniform * tf.cast(limit, tf.float64)), tf.int64)
        return tf.minimum(drawn, limit - 1)
