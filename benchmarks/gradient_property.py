r"""How much one positive or negative contributes to SupCon's gradient on its anchor.

For L^sup_out with z = w / ||w||, the part of dL/dw_i due to a contrast x is
(c_x / tau) (I - z_i z_i^T) z_x / ||w_i||, with c_x = P_ix - 1/|P(i)| for a
positive and P_ix for a negative: its magnitude is |c_x| sqrt(1 - (z_i.z_x)^2) /
(tau ||w_i||). This sweeps one contrast's cosine z_i.z_x to a unit anchor and
plots that magnitude, read from supcon_loss's own gradient (autodiff), against
the cosine, for a few numbers of negatives in the softmax denominator:

  positives  the swept sample is the anchor's only positive; the negatives are
             random directions in D dimensions (cosines near 0)
  negatives  the swept sample is one of the negatives, next to one positive at
             cosine --positive_cosine and the other random negatives

The anchor is the only row with a positive (V = 1 and a mask), so the loss is
L_i alone, and c_x = tau z_i . dL/dz_x comes from autodiff too. The closed form
of c_x (the softmax above) is drawn dashed over it.

Run: python benchmarks/gradient_property.py [--out docs/gradient_property.png]
The last line is one JSON object: for each panel and number of negatives, the
peak magnitude and its cosine, the magnitude at the easy end (cosine 0.999 for a
positive, -0.999 for a negative) and at the hard cosine 0, and the largest gap
between autodiff and the closed form.
"""

import argparse
import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from supcon_tf.losses import supcon_loss  # noqa: E402

EASY_COSINE = 0.999


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
        "gradient_property.png"))
    parser.add_argument("--negatives", default="1,16,256",
                        help="comma-separated numbers of negatives in the denominator")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--points", type=int, default=101)
    parser.add_argument("--positive_cosine", type=float, default=0.5)
    return parser.parse_args()


def batch_for(cosine, role, num_negatives, dim, positive_cosine, rng_seed=0):
    """Rows: 0 the anchor e_1, 1 the swept contrast, then (for role "negative")
    the fixed positive, then random negatives, the same for every cosine."""
    rng = np.random.default_rng(rng_seed)
    anchor = np.eye(dim)[0]
    swept = np.sqrt(1 - cosine ** 2) * np.eye(dim)[1] + cosine * anchor
    fixed = []
    if role == "negative":
        fixed.append(positive_cosine * anchor
                     + np.sqrt(1 - positive_cosine ** 2) * np.eye(dim)[2])
        num_negatives -= 1
    fixed.extend(rng.normal(size=(num_negatives, dim)))
    rows = np.vstack([anchor, swept, *fixed]) if fixed else np.vstack([anchor, swept])
    positives = [1] if role == "positive" else [2]
    return rows, positives


def swept_contribution(rows, positives, tau):
    """(|part of dL/dw_0 due to row 1| from autodiff, the closed form's, row 1's cosine)."""
    count = len(rows)
    mask = np.zeros((count, count), np.float32)
    mask[0, positives] = 1.0
    w = tf.constant(rows, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(w)
        z = tf.math.l2_normalize(w, axis=-1)
        loss = supcon_loss(z[:, None, :], mask=tf.constant(mask), temperature=tau)
    grad_z = tape.gradient(loss, z).numpy().astype(np.float64)
    z = z.numpy().astype(np.float64)
    cosine = float(z[1] @ z[0])
    sine = np.sqrt(max(0.0, 1 - cosine ** 2))
    coefficient = tau * grad_z[1] @ z[0]
    # The closed form of the same coefficient: P_i1 - [1 in P(i)] / |P(i)|.
    logits = z[1:] @ z[0] / tau
    softmax = np.exp(logits - logits.max())
    softmax /= softmax.sum()
    closed = softmax[0] - (1.0 / len(positives) if 1 in positives else 0.0)
    # ||w_0|| = 1, so the magnitude is |c| sin / tau.
    return abs(coefficient) * sine / tau, abs(closed) * sine / tau, cosine


def sweep(role, num_negatives, args):
    cosines = np.linspace(-1.0, 1.0, args.points)
    autodiff, closed = [], []
    for cosine in cosines:
        rows, positives = batch_for(cosine, role, num_negatives, args.dim, args.positive_cosine)
        a, c, _ = swept_contribution(rows, positives, args.temperature)
        autodiff.append(a)
        closed.append(c)
    return cosines, np.array(autodiff), np.array(closed)


def summary(role, cosines, autodiff, closed, args, num_negatives):
    easy = EASY_COSINE if role == "positive" else -EASY_COSINE
    at = {}
    for name, cosine in (("easy", easy), ("hard", 0.0)):
        rows, positives = batch_for(cosine, role, num_negatives, args.dim, args.positive_cosine)
        at[name] = swept_contribution(rows, positives, args.temperature)[0]
    peak = int(np.argmax(autodiff))
    return {"peak": round(float(autodiff[peak]), 4), "peak_cosine": round(float(cosines[peak]), 3),
            f"at_{easy}": float(f"{at['easy']:.3g}"), "at_0": round(at["hard"], 4),
            "easy_over_peak": float(f"{at['easy'] / autodiff[peak]:.3g}"),
            "max_gap_autodiff_closed_form": float(f"{np.abs(autodiff - closed).max():.2g}")}


def main(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    negatives = [int(n) for n in args.negatives.split(",")]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    results = {}
    for axis, role in zip(axes, ("positive", "negative")):
        results[role] = {}
        for color, count in zip(("C0", "C1", "C2", "C3", "C4"), negatives):
            cosines, autodiff, closed = sweep(role, count, args)
            results[role][str(count)] = summary(role, cosines, autodiff, closed, args, count)
            plural = "s" if count > 1 else ""
            axis.plot(cosines, autodiff, color=color, label=f"{count} negative{plural} (autodiff)")
            axis.plot(cosines, closed, color="black", linestyle=":", linewidth=1)
        symbol = "p" if role == "positive" else "n"
        axis.set_xlabel(f"$z_i \\cdot z_{symbol}$")
        axis.set_ylabel(f"$|\\partial L / \\partial w_i|$ due to {role} {symbol}")
        easy = "easy at the right (1)" if role == "positive" else "easy at the left (-1)"
        axis.set_title(f"one {role}, tau={args.temperature}, {easy}", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("SupCon L_out: one contrast's share of the anchor's gradient "
                    "(dotted: closed form)", fontsize=11)
    figure.tight_layout()
    tmp_path = f"{args.out}.tmp-{os.getpid()}.png"
    figure.savefig(tmp_path, dpi=110)
    os.replace(tmp_path, args.out)
    print(json.dumps({"benchmark": "gradient_property", "temperature": args.temperature,
                      "dim": args.dim, "positive_cosine_in_negative_panel": args.positive_cosine,
                      "plot": args.out, **results}))


if __name__ == "__main__":
    main(parse_args())
