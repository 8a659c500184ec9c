"""The linear probe on fixed features, fitted to convergence as in the literature.

    fitted = fit_probe(train_features, train_labels, num_classes=C, seed=0)
    logits = fitted.logits(test_features)

A multinomial logistic regression with an L2 penalty, minimized full-batch by L-BFGS
(scipy's L-BFGS-B) in float64. fit_logistic minimizes, for features x_i [D], labels
y_i, weights W [D, C] and bias b [C],

    L(W, b) = (1/N) sum_i [logsumexp(x_i W + b) - (x_i W + b)[y_i]] + (penalty / 2) ||W||^2

with the bias not penalized: scikit-learn's LogisticRegression(C=1 / (penalty * N),
solver="lbfgs") on the same features. fit_probe first standardizes each feature with
the training split's mean and standard deviation (scikit-learn's StandardScaler), so
that the penalty weighs every direction alike and L-BFGS meets a well-conditioned
problem: an embedding whose discriminative directions have little variance (a barely
trained encoder's) otherwise wants a penalty so weak that 1000 iterations do not
converge. It returns the classifier on the features as given (the standardization
folded into W and b).

The penalty is chosen by stratified k-fold cross-validation on the training features
alone (nothing else is passed in): each value of PENALTY_GRID, times the standardized
features' mean squared norm (D, less any constant feature), is scored by its mean
held-out top-1; the best (ties: the strongest penalty) is refitted on all of them.
Features multiplied by s, or shifted, give the same predictions. Along the grid, each
fold starts from its fit at the previous, stronger penalty, so the weak-penalty fits,
the slow ones, start close.

Sizes: the features are held in float64, standardized, and copied once per fold, about
3 x N x D x 8 bytes in all, and each L-BFGS iteration costs a pass of N x D x C multiply-adds.
fit_probe refuses more than MAX_FEATURE_BYTES of float64 features (an ImageNet
train split, 1.28M x 2048, would need 21 GB) with a one-line error: for a split that
large, train the classifier in batches (config.linear.protocol="augmented"). It is
meant for small and medium data: the digits (1,437 x 128) take seconds; a
CIFAR-sized split (50,000 x 2,048) fits in memory but takes minutes per fit on a CPU.
"""

import dataclasses

import numpy as np
import scipy.optimize
import threadpoolctl

# Penalties tried, relative to the standardized features' mean squared norm: 1e1 ...
# 1e-6, three per decade, strongest first (the order of the warm-started path).
PENALTY_GRID = tuple(10.0 ** (-np.arange(-3, 19) / 3))
CV_FOLDS = 5
MAX_ITERATIONS = 1000
# L-BFGS stops when every gradient component is below this (the objective is a mean).
GRADIENT_TOLERANCE = 1e-6
MAX_FEATURE_BYTES = 2 * 2**30


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted classifier: logits = features @ weights + bias."""

    weights: np.ndarray  # [D, C] float64
    bias: np.ndarray  # [C] float64
    penalty: float
    iterations: int
    converged: bool

    def logits(self, features):
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.weights.shape[0]:
            raise ValueError(f"the probe was fitted on {self.weights.shape[0]}-d features; "
                             f"got features of shape {features.shape}")
        return features @ self.weights + self.bias


@dataclasses.dataclass(frozen=True)
class Probe(Fit):
    """fit_probe's result: the refitted classifier and how its penalty was chosen."""

    folds: int = 0
    num_examples: int = 0
    scale: float = 1.0  # the grid's unit: the standardized features' mean squared norm
    cv_top1: tuple = ()  # mean held-out top-1 for each penalty of `penalties`
    penalties: tuple = ()

    def describe(self):
        """One line: every penalty's CV top-1, the choice, the refit's iterations."""
        grid = ", ".join(f"{p / self.scale:.2g}: {a:.4f}"
                         for p, a in zip(self.penalties, self.cv_top1))
        status = "converged" if self.converged else "NOT converged (iteration cap)"
        return (f"linear probe: {self.folds}-fold CV top-1 on {self.num_examples} "
                f"standardized training examples by L2 penalty (x {self.scale:.4g}): {grid}; "
                f"chose {self.penalty:.3g} (CV top-1 {max(self.cv_top1):.4f}); refit on all: "
                f"{self.iterations} L-BFGS iterations, {status}")


def check_size(num_examples, dim):
    """ValueError when N x D float64 features exceed MAX_FEATURE_BYTES (see the docstring)."""
    needed = int(num_examples) * int(dim) * 8
    if needed > MAX_FEATURE_BYTES:
        raise ValueError(
            f"the linear probe would hold {num_examples} x {dim} float64 features "
            f"({needed / 2**30:.1f} GiB, more than its {MAX_FEATURE_BYTES / 2**30:.0f} GiB "
            "limit); for a split this large use config.linear.protocol='augmented', which "
            "trains the classifier in batches")


def _checked(features, labels, num_classes):
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"probe features must be [N, D]; got shape {features.shape}")
    if labels.shape != (len(features),):
        raise ValueError(f"probe labels must be [N] for {len(features)} feature rows; got "
                         f"shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("the probe got no training examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"probe labels must be integer class ids; got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"probe labels must lie in [0, {num_classes}); got "
                         f"{labels.min()}..{labels.max()}")
    if not np.all(np.isfinite(features)):
        raise ValueError("probe features hold NaN or infinite values; check the encoder")
    check_size(*features.shape)
    return features, labels.astype(np.int64)


def objective(params, features, labels, penalty):
    """(L, dL/dparams) of the docstring's objective; params = [W.ravel(), b]."""
    num_examples, dim = features.shape
    num_classes = len(params) // (dim + 1)
    weights = params[:dim * num_classes].reshape(dim, num_classes)
    bias = params[dim * num_classes:]
    logits = features @ weights + bias
    top = logits.max(axis=1)
    log_norm = top + np.log(np.sum(np.exp(logits - top[:, None]), axis=1))
    rows = np.arange(num_examples)
    loss = np.mean(log_norm - logits[rows, labels]) + 0.5 * penalty * np.sum(weights**2)
    # d/dlogits of the mean cross-entropy: (softmax - one-hot) / N.
    residual = np.exp(logits - log_norm[:, None])
    residual[rows, labels] -= 1.0
    residual /= num_examples
    grad_weights = features.T @ residual + penalty * weights
    return loss, np.concatenate([grad_weights.ravel(), residual.sum(axis=0)])


def fit_logistic(features, labels, *, num_classes, penalty, max_iterations=MAX_ITERATIONS,
                 tolerance=GRADIENT_TOLERANCE, start=None):
    """Minimizes the objective at one penalty; start: a Fit to warm-start from."""
    features, labels = _checked(features, labels, num_classes)
    if not penalty >= 0:
        raise ValueError(f"the probe's L2 penalty must be >= 0; got {penalty}")
    dim = features.shape[1]
    # Solved on centred features, then the bias moved back: the same minimum (the bias
    # is not penalized), and far better conditioned when the features share a large
    # offset (an L2-normalized embedding's rows all lie near their mean).
    mean = features.mean(axis=0)
    features = features - mean
    params = (np.zeros(dim * num_classes + num_classes) if start is None else
              np.concatenate([start.weights.ravel(), start.bias + mean @ start.weights]))
    # ftol near machine precision: the gradient tolerance decides when it has converged.
    # One BLAS thread: L-BFGS's own BLAS calls are on vectors of D x C entries, where
    # OpenBLAS threads cost more than they save (fit_probe ran 6x slower with two on
    # this project's shared 2-core CI machine).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        result = scipy.optimize.minimize(
            objective, params, args=(features, labels, float(penalty)), jac=True,
            method="L-BFGS-B",
            options={"maxiter": int(max_iterations), "gtol": tolerance,
                     "ftol": 64 * np.finfo(np.float64).eps})
    weights = result.x[:dim * num_classes].reshape(dim, num_classes)
    bias = result.x[dim * num_classes:] - mean @ weights
    return Fit(weights=weights, bias=bias, penalty=float(penalty),
               iterations=int(result.nit), converged=bool(result.success))


def stratified_folds(labels, folds, seed):
    """Fold id [N] in 0..folds-1: each class's examples shuffled (seeded) and dealt round-robin."""
    fold_of = np.empty(len(labels), np.int64)
    rng = np.random.default_rng(seed)
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # The offset carries on from class to class so that small classes do not all
        # land in the first folds.
        fold_of[members] = (offset + np.arange(len(members))) % folds
        offset += len(members)
    return fold_of


def cross_validate(features, labels, *, num_classes, penalties, folds=CV_FOLDS, seed=0):
    """Mean held-out top-1 over the folds for each penalty (in the order given)."""
    features, labels = _checked(features, labels, num_classes)
    fold_of = stratified_folds(labels, folds, seed)
    accuracy = np.zeros((folds, len(penalties)))
    for fold in range(folds):
        held_out = fold_of == fold
        train_x, train_y = features[~held_out], labels[~held_out]
        fitted = None
        for index, penalty in enumerate(penalties):
            fitted = fit_logistic(train_x, train_y, num_classes=num_classes, penalty=penalty,
                                  start=fitted)
            predictions = np.argmax(fitted.logits(features[held_out]), axis=1)
            accuracy[fold, index] = np.mean(predictions == labels[held_out])
    return accuracy.mean(axis=0)


def fit_probe(features, labels, *, num_classes, seed=0, folds=CV_FOLDS,
              relative_penalties=PENALTY_GRID):
    """Chooses the penalty by cross-validation on (features, labels), refits on all of them.

    folds is reduced to the smallest class's count when that is smaller; the seed
    shuffles the folds. The result's describe() is a line for the log.
    """
    features, labels = _checked(features, labels, num_classes)
    smallest = int(np.min(np.bincount(labels)[np.unique(labels)]))
    folds = min(int(folds), smallest)
    if folds < 2:
        raise ValueError(f"the probe's cross-validation needs at least 2 training examples "
                         f"of every class; one class has {smallest}; add examples")
    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std <= 1e-12 * max(std.max(), 1e-300)] = 1.0  # a constant feature stays 0
    standardized = (features - mean) / std
    scale = float(np.mean(np.sum(standardized**2, axis=1))) or 1.0
    penalties = tuple(sorted((float(r) * scale for r in relative_penalties), reverse=True))
    cv_top1 = cross_validate(standardized, labels, num_classes=num_classes,
                             penalties=penalties, folds=folds, seed=seed)
    best = int(np.argmax(cv_top1))  # the first maximum: the strongest penalty among ties
    fitted = fit_logistic(standardized, labels, num_classes=num_classes,
                          penalty=penalties[best])
    # Back to the features as given: z W + b = x (W / std) + (b - (mean / std) W).
    fitted = dataclasses.replace(fitted, weights=fitted.weights / std[:, None],
                                 bias=fitted.bias - (mean / std) @ fitted.weights)
    return Probe(**dataclasses.asdict(fitted), folds=folds, num_examples=len(labels),
                 scale=scale, cv_top1=tuple(float(a) for a in cv_top1), penalties=penalties)
