"""Metrics and data protocol: checked against closed forms (the chunked replay: test_replay.py)."""

from __future__ import annotations

import json

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from numpyro_smile import evaluate
from numpyro_smile.datasets import load_table, split_standardize
from numpyro_smile.evaluation import (
    brier_score,
    expected_calibration_error,
    lppd,
    predict,
    reliability_curve,
)

from .conftest import data_file


def location_model(y=None, subsample_size=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", 300 if y is None else y.shape[0], subsample_size=subsample_size):
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=target)


def softmax_model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1], 4]).to_event(2))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=X @ w), obs=y)


@pytest.fixture(scope="module")
def classification_case():
    """A softmax regression with 3 x 7 draws on 200 points and its pooled probabilities."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    w = rng.normal(size=(3, 7, 3, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=200).astype(np.int32)
    probs = np.asarray(jax.nn.softmax(np.einsum("np,kspc->ksnc", X, w), -1)).mean((0, 1))
    return softmax_model, az.from_dict(posterior={"w": w}), X, y, probs


def test_regression_metrics_of_a_known_predictive():
    """Draws of mu from N(0, 0.5^2): the predictive is N(0, 1.25) exactly (a Gaussian mixture)."""
    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 0.5, size=(4, 2000)).astype(np.float32)
    idata = az.from_dict(posterior={"mu": mu})
    y_test = rng.normal(0.0, np.sqrt(1.25), size=3000).astype(np.float32)
    metrics = evaluate(location_model, idata, y_test, subsample_size=64)
    exact_lppd = np.mean(stats.norm(0, np.sqrt(1.25)).logpdf(y_test))
    # the mixture of 8000 draws approximates the exact predictive density closely
    assert abs(metrics["lppd"] - exact_lppd) < 0.01
    assert abs(metrics["rmse"] - np.sqrt(np.mean((y_test - mu.mean()) ** 2))) < 1e-4
    for level in (50, 80, 90, 95):
        # coverage of calibrated intervals: binomial sd sqrt(p (1 - p) / 3000) <= 0.0092
        assert abs(metrics[f"coverage_{level}"] - level / 100) < 4 * 0.0092
    assert metrics["calibration_error"] < 0.03 and metrics["num_draws"] == 8000
    # a too-narrow predictive (N(0, 1) for data of sd 1.5 sqrt(1.25)) covers P(|Z| < 0.98)
    narrow = evaluate(location_model, az.from_dict(posterior={"mu": 0 * mu[:, :10]}), 1.5 * y_test)
    assert abs(narrow["coverage_90"] - 0.673) < 4 * 0.0092


def test_predict_summarises_the_known_mixture():
    """mu ~ N(0, 0.5^2) draws: every point's predictive is N(0, 1.25), with or without labels."""
    rng = np.random.default_rng(1)
    mu = rng.normal(0.0, 0.5, size=(4, 2000)).astype(np.float32)
    idata = az.from_dict(posterior={"mu": mu})
    levels = (0.05, 0.5, 0.95)
    out = predict(location_model, idata, quantiles=levels)  # y=None: 300 new points
    assert set(out) == {"mean", "sd", "quantiles"} and out["quantiles"].shape == (3, 300)
    np.testing.assert_allclose(out["mean"], mu.mean(), atol=1e-5)
    np.testing.assert_allclose(out["sd"], np.sqrt(1.0 + mu.var()), rtol=1e-4)
    # a quantile from 8000 replicates: sd sqrt(q (1 - q) / 8000) / density <= 0.027; 5 sd
    exact = stats.norm(0.0, np.sqrt(1.25)).ppf(levels)
    assert np.all(np.abs(out["quantiles"] - exact[:, None]) < 5 * 0.027)
    y_test = rng.normal(0.0, np.sqrt(1.25), size=50).astype(np.float32)
    with_labels = predict(location_model, idata, y_test)
    expected = stats.norm(0.0, np.sqrt(1.25)).logpdf(y_test)
    np.testing.assert_allclose(with_labels["log_density"], expected, atol=0.02)
    assert with_labels["log_density"].mean() == pytest.approx(
        evaluate(location_model, idata, y_test)["lppd"], abs=1e-5
    )
    with pytest.raises(ValueError, match="quantiles must lie in"):
        predict(location_model, idata, quantiles=(1.5,))


def test_predict_class_probabilities():
    def model(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=X @ w), obs=y)

    w = np.random.default_rng(2).normal(size=(2, 5, 2, 3)).astype(np.float32)
    X = np.eye(2, dtype=np.float32)
    probs = predict(model, az.from_dict(posterior={"w": w}), X)["probs"]
    expected = np.asarray(jax.nn.softmax(np.einsum("np,kspc->ksnc", X, w), -1)).mean((0, 1))
    np.testing.assert_allclose(probs, expected, rtol=1e-5)


def test_lppd_is_log_mean_exp_over_pooled_draws():
    log_lik = np.log(np.array([[[0.2, 0.5]], [[0.4, 0.1]]]))  # (K=2, S=1, n=2)
    expected = np.mean(np.log([0.3, 0.3]))
    assert lppd(log_lik) == pytest.approx(expected)


def test_expected_calibration_error():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # bins: 0.9 -> correct; 0.8 -> wrong; 0.7 -> correct; 0.55 -> correct
    expected = 0.25 * (0.1 + 0.8 + 0.3 + 0.45)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_evaluate_errors():
    idata = az.from_dict(posterior={"mu": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="no 'pretrained' group"):
        evaluate(location_model, idata, np.zeros(5, np.float32), group="pretrained")
    with pytest.raises(ValueError, match="lacks the model's latent sites"):
        evaluate(location_model, az.from_dict(posterior={"nu": np.zeros((2, 3))}), np.zeros(5))


def test_split_standardize_protocol():
    X, y = load_table(data_file("airfoil.data"))
    assert X.shape == (1503, 5) and y.shape == (1503,)
    split = split_standardize(X, y, seed=1)
    sizes = [len(part[1]) for part in split]
    assert sizes == [1052, 150, 301]
    X_all = np.concatenate([part[0] for part in split])
    y_all = np.concatenate([part[1] for part in split])
    np.testing.assert_allclose(X_all.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(X_all.std(0), 1, atol=1e-5)
    np.testing.assert_allclose([y_all.mean(), y_all.std()], [0, 1], atol=1e-5)
    other = split_standardize(X, y, seed=2)
    assert not np.array_equal(other.test[1], split.test[1])
    labels = split_standardize(X, (y > np.median(y)).astype(int), 1, classification=True)
    assert labels.train[1].dtype == np.int32 and set(np.unique(labels.train[1])) == {0, 1}


def test_brier_score_and_reliability_curve():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 1, 0])
    # sum over classes of (p_c - onehot_c)^2 = 2 (1 - p_y)^2 for two classes
    expected = np.mean(2 * np.array([0.1, 0.8, 0.3, 0.45, 0.5]) ** 2)
    assert brier_score(probs, labels) == pytest.approx(expected)
    three = np.array([[0.2, 0.5, 0.3]])
    assert brier_score(three, np.array([2])) == pytest.approx(0.2**2 + 0.5**2 + 0.7**2)
    curve = reliability_curve(probs, labels, num_bins=4)
    np.testing.assert_allclose(curve.bin_edges, [0, 0.25, 0.5, 0.75, 1])
    # confidences 0.9, 0.8 | 0.7, 0.55, 0.5 (argmax picks class 0 on the tie)
    np.testing.assert_array_equal(curve.count, [0, 0, 3, 2])
    np.testing.assert_allclose(curve.confidence[2:], [(0.7 + 0.55 + 0.5) / 3, 0.85])
    np.testing.assert_allclose(curve.accuracy[2:], [1.0, 0.5])
    assert np.all(np.isnan(curve.confidence[:2])) and np.all(np.isnan(curve.accuracy[:2]))
    # a float label (a Bernoulli observation) and a grid of points (sequences x tokens)
    grid = brier_score(probs[:4].reshape(2, 2, 2), labels[:4].reshape(2, 2).astype(np.float32))
    assert grid == pytest.approx(brier_score(probs[:4], labels[:4]))
    with pytest.raises(ValueError, match="labels' shape plus a class axis"):
        brier_score(probs, labels[:3])
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 2\)"):
        reliability_curve(probs, labels + 1)
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        reliability_curve(probs, labels, num_bins=0)


def test_ece_is_the_reliability_curves_weighted_gap():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=400)
    labels = rng.integers(0, 5, size=400)
    for num_bins in (1, 7, 15):
        curve = reliability_curve(probs, labels, num_bins)
        assert curve.count.sum() == 400
        full = curve.count > 0
        gap = curve.count[full] / 400 * np.abs(curve.accuracy[full] - curve.confidence[full])
        ece = expected_calibration_error(probs, labels, num_bins)
        assert ece == pytest.approx(gap.sum()) and ece > 0


def test_evaluate_classification_metrics(classification_case):
    model, idata, X, y, probs = classification_case
    metrics = evaluate(model, idata, X, y, reliability=True)
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == y))
    assert metrics["brier"] == pytest.approx(brier_score(probs, y), rel=1e-5)
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, y), abs=1e-6)
    curve = metrics["reliability"]
    assert set(curve) == {"bin_edges", "confidence", "accuracy", "count"}
    assert json.loads(json.dumps(curve))["count"] == reliability_curve(probs, y).count.tolist()
    with pytest.raises(ValueError, match="reliability=True needs class probabilities"):
        evaluate(
            location_model,
            az.from_dict(posterior={"mu": np.zeros((1, 2))}),
            y.astype(np.float32),
            reliability=True,
        )
