"""SupCon's implicit hard mining, through supcon_loss's own gradient.

Written from the gradient of L^sup_out (Eq. 2) with z = w / ||w||, in float64
NumPy, sharing no code with supcon_tf/losses.py. For one anchor i,

    dL_i/dz_i = (1/tau) [ sum_{p in P(i)} z_p (P_ip - 1/|P(i)|) + sum_{n in N(i)} z_n P_in ]
    dL_i/dz_a = (1/tau) z_i (P_ia - [a in P(i)] / |P(i)|)        for a contrast a != i
    dL/dw_i   = (I - z_i z_i^T) / ||w_i|| . dL/dz_i

with P_ix = exp(z_i.z_x / tau) / sum_{a in A(i)} exp(z_i.z_a / tau). The part of
dL/dw_i due to one contrast x is (c_x / tau) (I - z_i z_i^T) z_x / ||w_i|| with
c_x = P_ix - [x in P(i)] / |P(i)|, of magnitude |c_x| sqrt(1 - (z_i.z_x)^2) /
(tau ||w_i||): it vanishes for an easy positive (z_i.z_p -> 1) and an easy
negative (z_i.z_n -> -1), and is large for a hard one (z_i.z_x near 0).

One anchor alone: V = 1 and a mask whose only non-zero row is the anchor's, so
every other row has no positive and is left out of the mean; the loss is then
exactly L_i, and autodiff gives both dL/dw_i and each contrast's dL/dz_x, from
which c_x = tau z_i . dL/dz_x is read without any closed form.
"""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import supcon_loss


def unit(v):
    return v / np.linalg.norm(v)


def softmax_over_contrasts(z, i, tau):
    """P_ia for every row a (0 at a = i), float64."""
    logits = z @ z[i] / tau
    logits[i] = -np.inf
    e = np.exp(logits - logits[np.isfinite(logits)].max())
    return e / e.sum()


def closed_form_gradient(w, row_labels, tau, scale):
    """dL/dw of scale * mean_i L_i over every row as an anchor (Eq. 2)."""
    w = np.asarray(w, np.float64)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    z = w / norms
    rows = len(z)
    grad_z = np.zeros_like(z)
    for i in range(rows):
        p = softmax_over_contrasts(z, i, tau)
        positives = [a for a in range(rows) if a != i and row_labels[a] == row_labels[i]]
        negatives = [a for a in range(rows) if row_labels[a] != row_labels[i]]
        # The anchor's own term, as the paper writes it.
        grad_z[i] += (sum(z[q] * (p[q] - 1 / len(positives)) for q in positives)
                      + sum(z[n] * p[n] for n in negatives)) / tau
        # Each contrast's term from the same L_i.
        for a in positives:
            grad_z[a] += z[i] * (p[a] - 1 / len(positives)) / tau
        for a in negatives:
            grad_z[a] += z[i] * p[a] / tau
    grad_z *= scale / rows
    projection = np.eye(z.shape[1])[None] - z[:, :, None] * z[:, None, :]
    return np.einsum("kij,kj->ki", projection, grad_z) / norms


@pytest.mark.parametrize("num_views,tau,base_temperature", [
    (2, 0.1, None), (3, 0.5, None), (2, 0.07, 0.07), (3, 0.2, 1.0),
])
def test_closed_form_matches_autodiff_of_supcon_loss(num_views, tau, base_temperature):
    rng = np.random.default_rng(num_views)
    batch, dim = 7, 5
    labels = np.array([0, 1, 2, 0, 1, 0, 2])
    w = rng.normal(size=(batch, num_views, dim)) * rng.uniform(0.5, 3.0, size=(batch, num_views, 1))
    w_tf = tf.constant(w, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(w_tf)
        loss = supcon_loss(tf.math.l2_normalize(w_tf, axis=-1), tf.constant(labels),
                           temperature=tau, base_temperature=base_temperature)
    autodiff = tape.gradient(loss, w_tf).numpy().reshape(batch * num_views, dim)
    scale = 1.0 if base_temperature is None else tau / base_temperature
    expected = closed_form_gradient(w.reshape(batch * num_views, dim),
                                    np.repeat(labels, num_views), tau, scale)
    np.testing.assert_allclose(autodiff, expected, rtol=2e-4, atol=2e-5 * np.abs(expected).max())


def one_anchor_gradients(w, positive_rows, tau):
    """(dL/dw [K, D], dL/dz [K, D], z [K, D]) of L_0 alone: row 0 the anchor,
    positive_rows its positives, every other row a negative."""
    rows = len(w)
    mask = np.zeros((rows, rows), np.float32)
    mask[0, positive_rows] = 1.0
    w_tf = tf.constant(w, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(w_tf)
        z = tf.math.l2_normalize(w_tf, axis=-1)
        loss = supcon_loss(z[:, None, :], mask=tf.constant(mask), temperature=tau)
    grad_w, grad_z = tape.gradient(loss, [w_tf, z])
    return grad_w.numpy().astype(np.float64), grad_z.numpy().astype(np.float64), z.numpy()


def contributions(w, positive_rows, tau):
    """Each contrast x's part of dL/dw_0, with c_x read from autodiff, and the
    autodiff dL/dw_0 they must add up to."""
    grad_w, grad_z, z = one_anchor_gradients(w, positive_rows, tau)
    z = z.astype(np.float64)
    coefficients = tau * grad_z[1:] @ z[0]  # c_x, x = 1..K-1
    projection = (np.eye(len(z[0])) - np.outer(z[0], z[0])) / np.linalg.norm(w[0])
    parts = (coefficients[:, None] / tau) * (z[1:] @ projection)
    return parts, coefficients, grad_w[0], z


def swept_batch(cosine, rng, num_positives, num_negatives, dim=6, anchor_norm=2.0):
    """Row 0 the anchor (anchor_norm e_1), row 1 the swept contrast at z_0 . z_1 =
    cosine, rows 2.. fixed: other positives first, then negatives, each at a
    random direction of the same seed for every cosine."""
    anchor = np.zeros(dim)
    anchor[0] = anchor_norm
    swept = np.zeros(dim)
    swept[0], swept[1] = cosine, np.sqrt(max(0.0, 1.0 - cosine ** 2))
    others = rng.normal(size=(num_positives + num_negatives, dim))
    # Positives moderately aligned with the anchor, negatives anywhere.
    others[:num_positives, 0] = np.abs(others[:num_positives, 0]) + 1.0
    return np.vstack([anchor, 1.5 * swept, others])


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_each_contrasts_part_is_the_closed_forms_and_they_sum_to_autodiff(tau):
    rng = np.random.default_rng(3)
    w = swept_batch(0.3, rng, num_positives=2, num_negatives=5)
    positive_rows = [1, 2, 3]
    parts, coefficients, grad_w0, z = contributions(w, positive_rows, tau)
    np.testing.assert_allclose(parts.sum(axis=0), grad_w0, rtol=1e-4, atol=1e-6)
    p = softmax_over_contrasts(z.astype(np.float64), 0, tau)[1:]
    in_p = np.isin(np.arange(1, len(w)), positive_rows)
    np.testing.assert_allclose(coefficients, p - in_p / len(positive_rows), atol=1e-5)
    # The magnitude the paper states: |c_x| sqrt(1 - (z_i.z_x)^2) / (tau ||w_i||).
    dots = z[1:] @ z[0]
    magnitudes = np.abs(coefficients) * np.sqrt(1 - dots ** 2) / (tau * np.linalg.norm(w[0]))
    np.testing.assert_allclose(np.linalg.norm(parts, axis=1), magnitudes, rtol=1e-4, atol=1e-7)


def swept_magnitudes(cosines, positive, num_others, tau=0.1):
    """|part of dL/dw_0| due to row 1 at each z_0 . z_1 in cosines; row 1 a
    positive (the only one) or a negative (next to one fixed positive)."""
    magnitudes = []
    for cosine in cosines:
        rng = np.random.default_rng(0)
        if positive:
            w = swept_batch(cosine, rng, num_positives=0, num_negatives=num_others)
            positive_rows = [1]
        else:
            w = swept_batch(cosine, rng, num_positives=1, num_negatives=num_others - 1)
            positive_rows = [2]
        parts, _, grad_w0, _ = contributions(w, positive_rows, tau)
        np.testing.assert_allclose(parts.sum(axis=0), grad_w0, rtol=1e-3, atol=1e-6)
        magnitudes.append(np.linalg.norm(parts[0]))
    return np.array(magnitudes)


@pytest.mark.parametrize("num_others", [1, 8, 64])
def test_an_easy_positives_gradient_vanishes_and_a_hard_ones_is_large(num_others):
    cosines = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.99, 0.9999])  # hard -> easy
    magnitudes = swept_magnitudes(cosines, positive=True, num_others=num_others)
    assert np.all(np.diff(magnitudes) < 0), magnitudes
    assert magnitudes[-1] < 0.01 * magnitudes[0], magnitudes


@pytest.mark.parametrize("num_others", [2, 8, 64])
def test_an_easy_negatives_gradient_vanishes_and_a_hard_ones_is_large(num_others):
    cosines = np.array([-0.9999, -0.99, -0.9, -0.6, -0.3, 0.0])  # easy -> hard
    magnitudes = swept_magnitudes(cosines, positive=False, num_others=num_others)
    assert np.all(np.diff(magnitudes) > 0), magnitudes
    assert magnitudes[0] < 0.01 * magnitudes[-1], magnitudes
    # Harder still (z_i.z_n > 0) stays well above the easy end.
    beyond = swept_magnitudes([0.5], positive=False, num_others=num_others)
    assert beyond[0] > 100 * magnitudes[0], (beyond, magnitudes)
