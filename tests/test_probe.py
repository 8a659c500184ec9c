"""supcon_tf/probe.py and evaluate.linear_probe: the L-BFGS logistic-regression probe.

The reference is scikit-learn's LogisticRegression (its own lbfgs solver and loss
code): the same penalty must give the same classifier, and fit_probe (standardized
features, cross-validation on the training split alone) must land within a point of
StandardScaler + LogisticRegressionCV's test top-1.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from supcon_tf import evaluate, probe

NUM_CLASSES = 3


def overlapping_classes(num_examples, seed, dim=12):
    """Three Gaussian classes whose means differ in 3 of `dim` dimensions, overlapping
    enough that no linear classifier is near 100% (the Bayes top-1 is about 0.8)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_examples)
    means = np.zeros((NUM_CLASSES, dim))
    means[:, :NUM_CLASSES] = 1.2 * np.eye(NUM_CLASSES)
    features = means[labels] + rng.normal(size=(num_examples, dim)) * 0.6
    features[:, NUM_CLASSES:] *= 3.0  # noise dimensions of a larger scale
    return features, labels


def sklearn_fit(features, labels, penalty):
    """LogisticRegression's objective is C * sum(loss) + |W|^2 / 2, i.e. ours / (C N)."""
    return LogisticRegression(C=1.0 / (penalty * len(labels)), tol=1e-10,
                              max_iter=100000).fit(features, labels)


def centred(bias):
    return bias - bias.mean()  # softmax ignores a shift common to all classes


def test_objective_gradient_matches_finite_differences():
    features, labels = overlapping_classes(40, seed=1, dim=5)
    params = np.random.default_rng(2).normal(size=5 * NUM_CLASSES + NUM_CLASSES)
    _, gradient = probe.objective(params, features, labels, 0.3)
    step = 1e-6
    numeric = [(probe.objective(params + step * e, features, labels, 0.3)[0]
                - probe.objective(params - step * e, features, labels, 0.3)[0]) / (2 * step)
               for e in np.eye(len(params))]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)


def test_objective_is_the_mean_cross_entropy_plus_half_the_penalty():
    features, labels = overlapping_classes(30, seed=3, dim=4)
    rng = np.random.default_rng(4)
    weights, bias = rng.normal(size=(4, NUM_CLASSES)), rng.normal(size=NUM_CLASSES)
    logits = features @ weights + bias
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = (-np.mean(np.log(probabilities[np.arange(30), labels]))
                + 0.5 * 0.2 * np.sum(weights**2))
    loss, _ = probe.objective(np.concatenate([weights.ravel(), bias]), features, labels, 0.2)
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("penalty", [1e-3, 1e-1])
def test_one_penalty_gives_sklearns_classifier(penalty):
    features, labels = overlapping_classes(240, seed=0)
    fitted = probe.fit_logistic(features, labels, num_classes=NUM_CLASSES, penalty=penalty,
                                tolerance=1e-10, max_iterations=10000)
    reference = sklearn_fit(features, labels, penalty)
    assert fitted.converged
    np.testing.assert_allclose(fitted.weights, reference.coef_.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centred(fitted.bias), centred(reference.intercept_),
                               rtol=1e-5, atol=1e-6)
    test_features, _ = overlapping_classes(500, seed=5)
    logits = fitted.logits(test_features)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, reference.predict_proba(test_features),
                               atol=1e-6)
    np.testing.assert_array_equal(np.argmax(logits, axis=1), reference.predict(test_features))


def test_cross_validated_probe_is_within_a_point_of_logistic_regression_cv():
    features, labels = overlapping_classes(240, seed=0)
    test_features, test_labels = overlapping_classes(5000, seed=6)
    result = evaluate.linear_probe(features, labels, test_features, test_labels,
                                   num_classes=NUM_CLASSES)
    # sklearn's own grid (C, 4 per decade) and stratified 5-fold CV, scored by accuracy,
    # on features standardized with the training split's statistics.
    reference = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=np.logspace(-4, 4, 33), cv=5, scoring="accuracy", max_iter=100000))
    reference_top1 = reference.fit(features, labels).score(test_features, test_labels)
    assert 0.6 < reference_top1 < 0.9  # neither trivial nor hopeless
    assert abs(result["top1"] - reference_top1) <= 0.01
    assert result["converged"] and result["train_top1"] > 0.6
    # The chosen penalty lies inside the grid, not at an end (the grid covers the optimum).
    relative = result["l2"] / features.shape[1]  # standardized: mean squared norm D
    assert min(probe.PENALTY_GRID) < relative < max(probe.PENALTY_GRID)


def test_cross_validation_never_touches_the_eval_split(monkeypatch):
    features, labels = overlapping_classes(240, seed=0)
    test_features, test_labels = overlapping_classes(100, seed=7)
    # fit_probe fits standardized features: the training rows, standardized by their own
    # statistics, are the only rows any fit may see.
    train_rows = (features - features.mean(axis=0)) / features.std(axis=0)
    fitted_on = []
    fit_logistic = probe.fit_logistic

    def spy(rows, *args, **kwargs):
        fitted_on.append(np.asarray(rows))
        return fit_logistic(rows, *args, **kwargs)

    monkeypatch.setattr(probe, "fit_logistic", spy)
    clean = evaluate.linear_probe(features, labels, test_features, test_labels,
                                  num_classes=NUM_CLASSES)
    # Each fit saw training rows only: 4/5 of them for a fold, all of them for the refit.
    assert len(fitted_on) == probe.CV_FOLDS * len(probe.PENALTY_GRID) + 1
    for rows in fitted_on:
        distance = np.abs(rows[:, None, :] - train_rows[None, :, :]).max(axis=2)
        assert distance.min(axis=1).max() < 1e-9
    assert len(fitted_on[-1]) == 240
    # NaN eval features and shuffled eval labels change no choice.
    poisoned = evaluate.linear_probe(features, labels, np.full_like(test_features, np.nan),
                                     np.roll(test_labels, 1), num_classes=NUM_CLASSES)
    for key in ("l2", "cv_top1", "iterations", "train_top1"):
        assert poisoned[key] == clean[key]


def test_rescaled_and_shifted_features_give_the_same_predictions():
    """fit_probe standardizes with the training statistics: scale and offset cannot move it."""
    features, labels = overlapping_classes(240, seed=0)
    test_features, _ = overlapping_classes(300, seed=8)
    plain = probe.fit_probe(features, labels, num_classes=NUM_CLASSES)
    moved = probe.fit_probe(features * 50.0 + 7.0, labels, num_classes=NUM_CLASSES)
    assert moved.cv_top1 == pytest.approx(plain.cv_top1, abs=1e-12)
    assert moved.penalty == pytest.approx(plain.penalty, rel=1e-9)
    np.testing.assert_allclose(moved.logits(test_features * 50.0 + 7.0),
                               plain.logits(test_features), rtol=1e-5, atol=1e-5)


def test_fit_probe_is_a_logistic_regression_on_standardized_features():
    """Its refit, folded back onto the raw features, is sklearn's StandardScaler +
    LogisticRegression at the penalty it chose."""
    features, labels = overlapping_classes(240, seed=0)
    fitted = probe.fit_probe(features, labels, num_classes=NUM_CLASSES)
    reference = make_pipeline(StandardScaler(), LogisticRegression(
        C=1.0 / (fitted.penalty * len(labels)), tol=1e-10, max_iter=100000))
    reference.fit(features, labels)
    test_features, _ = overlapping_classes(500, seed=9)
    logits = fitted.logits(test_features)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, reference.predict_proba(test_features),
                               atol=1e-4)


def test_folds_are_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 31, 9])
    folds = probe.stratified_folds(labels, 5, seed=0)
    for label in range(3):
        counts = np.bincount(folds[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, probe.stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(folds, probe.stratified_folds(labels, 5, seed=1))


def test_an_iteration_cap_is_reported_as_not_converged():
    features, labels = overlapping_classes(240, seed=0)
    fitted = probe.fit_logistic(features, labels, num_classes=NUM_CLASSES, penalty=1e-4,
                                max_iterations=2)
    assert fitted.iterations == 2 and not fitted.converged


@pytest.mark.parametrize("train,labels,test,match", [
    (np.zeros((10, 4)), np.zeros(9, int), np.zeros((5, 4)), r"labels must be \[N\] for 10"),
    (np.zeros((10, 4)), np.zeros(10, int), np.zeros((5, 3)),
     r"same D; got shapes \(10, 4\) and \(5, 3\)"),
    (np.zeros(10), np.zeros(10, int), np.zeros((5, 4)), r"same D; got shapes \(10,\) and"),
    (np.zeros((10, 4)), np.full(10, 3), np.zeros((5, 4)), r"labels must lie in \[0, 3\)"),
    (np.zeros((10, 4)), np.zeros(10), np.zeros((5, 4)), "must be integer class ids"),
    (np.full((10, 4), np.nan), np.zeros(10, int), np.zeros((5, 4)), "NaN or infinite"),
    (np.zeros((10, 4)), np.array([0] * 9 + [1]), np.zeros((5, 4)),
     "at least 2 training examples of every class; one class has 1"),
])
def test_bad_input_is_one_line_naming_it(train, labels, test, match):
    with pytest.raises(ValueError, match=match) as error:
        evaluate.linear_probe(train, labels, test, np.zeros(len(test), int),
                              num_classes=NUM_CLASSES)
    assert "\n" not in str(error.value)


def test_a_split_too_large_for_memory_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"1281167 x 2048 float64 features \(19.5 GiB.*"
                                         r"linear.protocol='augmented'"):
        probe.check_size(1281167, 2048)
    probe.check_size(50000, 2048)  # CIFAR-sized: allowed


def test_the_log_line_gives_every_penalty_the_choice_and_convergence():
    features, labels = overlapping_classes(240, seed=0)
    fitted = probe.fit_probe(features, labels, num_classes=NUM_CLASSES)
    line = fitted.describe()
    grid = line.split("): ", 1)[1].split("; chose")[0].split(", ")
    assert len(grid) == len(probe.PENALTY_GRID) == len(fitted.cv_top1)
    assert [float(entry.split(": ")[1]) for entry in grid] == pytest.approx(
        fitted.cv_top1, abs=5e-5)
    assert f"chose {fitted.penalty:.3g}" in line and "converged" in line and "\n" not in line
