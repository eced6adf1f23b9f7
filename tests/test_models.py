"""numpyro_smile.models: site shapes, the subsample plate, and the densities by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import stats

from numpyro_smile import models

N, P, B = 200, 3, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, P)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=N)).astype(np.float32)
    labels = (rng.random(N) < 0.5).astype(np.float32)
    classes = rng.integers(0, 3, size=N).astype(np.int32)
    return jnp.asarray(X), jnp.asarray(y), jnp.asarray(labels), jnp.asarray(classes)


def trace(model, *args, seed=0, **kwargs):
    return handlers.trace(handlers.seed(model, seed)).get_trace(*args, **kwargs)


def site_shapes(tr) -> dict:
    return {
        name: tuple(site["value"].shape) for name, site in tr.items() if site["type"] != "plate"
    }


# ------------------------------------------------------------------ site shapes


@pytest.mark.parametrize("subsample_size", [None, B])
def test_linear_and_logistic_sites(data, subsample_size):
    X, y, labels, _ = data
    rows = subsample_size or N
    for model, target in ((models.linear_regression, y), (models.logistic_regression, labels)):
        tr = trace(model, X, target, subsample_size)
        assert site_shapes(tr) == {"beta": (P,), "obs": (rows,)}, model.__name__
        assert tr["obs"]["is_observed"] and not tr["beta"]["is_observed"]
        assert tr["data"]["args"] == (N, subsample_size) and tr["data"]["value"].shape == (rows,)


def test_plate_name_and_scales_are_passed_through(data):
    X, y, _, _ = data
    tr = trace(models.linear_regression, X, y, prior_scale=10.0, noise_scale=0.5, plate_name="N")
    assert "N" in tr and "data" not in tr
    prior_at_zero = float(tr["beta"]["fn"].log_prob(jnp.zeros(P)))
    np.testing.assert_allclose(prior_at_zero, P * stats.norm(0, 10.0).logpdf(0.0), rtol=1e-6)
    assert np.all(np.asarray(tr["obs"]["fn"].scale) == 0.5)
    tr = trace(models.logistic_regression, X, data[2], prior_scale=2.5, plate_name="rows")
    assert "rows" in tr and "data" not in tr
    prior_at_zero = float(tr["beta"]["fn"].log_prob(jnp.zeros(P)))
    np.testing.assert_allclose(prior_at_zero, P * stats.norm(0, 2.5).logpdf(0.0), rtol=1e-6)


@pytest.mark.parametrize("subsample_size", [None, B])
def test_mlp_regression_sites(data, subsample_size):
    X, y, _, _ = data
    tr = trace(models.mlp_regression, X, y, subsample_size, hidden=(8, 4))
    rows = subsample_size or N
    assert site_shapes(tr) == {
        "w0": (P, 8), "b0": (8,), "w1": (8, 4), "b1": (4,), "w2": (4, 1), "b2": (1,),
        "log_sigma": (), "y": (rows,),
    }  # fmt: skip
    assert tr["data"]["args"] == (N, subsample_size) and tr["data"]["value"].shape == (rows,)


def test_mlp_classification_sites(data):
    X, _, _, classes = data
    tr = trace(models.mlp_classification, X, classes, B, num_classes=3, hidden=(5,))
    assert site_shapes(tr) == {"w0": (P, 5), "b0": (5,), "w1": (5, 3), "b1": (3,), "y": (B,)}
    assert tr["y"]["fn"].probs.shape == (B, 3)
    # without targets the model draws labels in [0, num_classes)
    drawn = trace(models.mlp_classification, X, None, num_classes=3, hidden=(5,))["y"]["value"]
    assert drawn.shape == (N,) and set(np.unique(drawn)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        trace(models.mlp_classification, X, classes, num_classes=1)


def test_sampling_targets_without_y(data):
    X = data[0]
    for model in (models.linear_regression, models.logistic_regression, models.mlp_regression):
        tr = trace(model, X)
        assert not tr["obs" if "obs" in tr else "y"]["is_observed"]
        assert site_shapes(tr)["obs" if "obs" in tr else "y"] == (N,)


# ------------------------------------------------------------------ the subsample plate


@pytest.mark.parametrize(
    "model, site, target",
    [
        (models.linear_regression, "obs", 1),
        (models.logistic_regression, "obs", 2),
        (models.mlp_regression, "y", 1),
        (models.mlp_classification, "y", 3),
    ],
)
def test_inputs_and_targets_are_the_same_rows_of_the_batch(data, model, site, target):
    """The plate's B indices pick the observed values and the inputs the likelihood sees:
    recomputing the site's distribution from X[idx] gives the same parameters."""
    X = data[0]
    y = data[target]
    kwargs = {"num_classes": 3} if model is models.mlp_classification else {}
    tr = trace(model, X, y, B, seed=3, **kwargs)
    idx = np.asarray(tr["data"]["value"])
    assert idx.shape == (B,) and len(np.unique(idx)) == B and idx.max() < N
    np.testing.assert_array_equal(tr[site]["value"], np.asarray(y)[idx])
    # the same indices, now on the rows of X alone: the model's likelihood parameters match
    rows = trace(model, X[idx], y[idx], seed=3, **kwargs)
    fn, fn_rows = tr[site]["fn"], rows[site]["fn"]
    for name in ("loc", "logits"):
        if hasattr(fn, name):
            np.testing.assert_allclose(getattr(fn, name), getattr(fn_rows, name), rtol=1e-6)


def test_minibatch_log_density_scales_the_likelihood_by_n_over_b(data):
    X, y, _, _ = data
    params = {"beta": jnp.array([0.3, -1.0, 0.2])}
    joint, tr = log_density(handlers.seed(models.linear_regression, 5), (X, y, B), {}, params)
    idx = np.asarray(tr["data"]["value"])
    beta = np.asarray(params["beta"], np.float64)
    prior = stats.norm(0, 1).logpdf(beta).sum()
    resid = np.asarray(y, np.float64)[idx] - np.asarray(X, np.float64)[idx] @ beta
    likelihood = stats.norm(0, 1).logpdf(resid).sum()
    np.testing.assert_allclose(joint, prior + N / B * likelihood, rtol=1e-5)


# ------------------------------------------------------------------ densities by hand


@pytest.mark.parametrize("prior_scale, noise_scale", [(1.0, 1.0), (10.0, 1.0), (0.5, 2.0)])
def test_linear_regression_posterior_is_the_documented_gaussian(data, prior_scale, noise_scale):
    """The docstring's posterior: N(m, S), S = (X^T X / s^2 + I / s0^2)^-1, m = S X^T y / s^2.
    log p(beta, y) - log N(beta; m, S) is the log evidence, the same at every beta."""
    X, y, _, _ = data
    X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)
    S = np.linalg.inv(X64.T @ X64 / noise_scale**2 + np.eye(P) / prior_scale**2)
    m = S @ X64.T @ y64 / noise_scale**2
    posterior = stats.multivariate_normal(m, S)
    rng = np.random.default_rng(1)
    points = [m, m + rng.normal(size=P) * 0.1, m + rng.normal(size=P), rng.normal(size=P) * 3]
    gaps = []
    with jax.enable_x64(True):
        for beta in points:
            joint, _ = log_density(
                models.linear_regression,
                (jnp.asarray(X64), jnp.asarray(y64)),
                {"prior_scale": prior_scale, "noise_scale": noise_scale},
                {"beta": jnp.asarray(beta)},
            )
            # the joint by hand: prior plus Gaussian likelihood
            by_hand = stats.norm(0, prior_scale).logpdf(beta).sum()
            by_hand += stats.norm(X64 @ beta, noise_scale).logpdf(y64).sum()
            np.testing.assert_allclose(float(joint), by_hand, rtol=1e-10)
            gaps.append(float(joint) - posterior.logpdf(beta))
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-7)


def test_logistic_regression_log_density_by_hand(data):
    X, _, labels, _ = data
    beta = np.array([0.5, -0.25, 1.0])
    with jax.enable_x64(True):
        joint, _ = log_density(
            models.logistic_regression,
            (jnp.asarray(X, jnp.float64), jnp.asarray(labels, jnp.float64)),
            {"prior_scale": 2.0},
            {"beta": jnp.asarray(beta)},
        )
    logits = np.asarray(X, np.float64) @ beta
    y = np.asarray(labels, np.float64)
    likelihood = np.sum(y * logits - np.logaddexp(0.0, logits))
    np.testing.assert_allclose(
        float(joint), stats.norm(0, 2.0).logpdf(beta).sum() + likelihood, rtol=1e-10
    )
