"""The bridge from NumPyro models (and potentials) to the core's ``Target``
(:mod:`numpyro_smile.targets`), checked against log densities computed by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from numpyro_smile import models, targets
from numpyro_smile.batching import PlateInfo

N, P, B = 50, 3, 10
PRIOR_SD, NOISE_SD = 2.0, 0.5
OPTIONS = {"prior_scale": PRIOR_SD, "noise_scale": NOISE_SD}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, P)).astype(np.float32)
    y = (X @ np.array([1.0, -0.5, 2.0]) + NOISE_SD * rng.normal(size=N)).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y)


@pytest.fixture(scope="module")
def minibatch_problem(data):
    X, y = data
    return targets.model_problem(
        models.linear_regression, X, y, B, rng_key=jax.random.key(0), **OPTIONS
    )


@pytest.fixture(scope="module")
def full_problem(data):
    X, y = data
    return targets.model_problem(
        models.linear_regression, X, y, None, rng_key=jax.random.key(0), **OPTIONS
    )


def log_prior(beta):
    return stats.norm.logpdf(beta, 0.0, PRIOR_SD).sum()


def log_likelihood(beta, X, y):
    """Per-datum log-likelihoods of the linear regression, in float64."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    return stats.norm.logpdf(y, X @ beta, NOISE_SD)


BETA = np.array([0.4, -1.2, 0.7])


def test_model_problem_reads_plates_and_starts_inside_the_init_radius(minibatch_problem):
    assert minibatch_problem.plates == {"data": PlateInfo(N, B)}
    assert minibatch_problem.position.shape == (P,)
    assert np.all(np.abs(np.asarray(minibatch_problem.position)) <= 0.5)  # init_to_uniform(0.5)
    z = minibatch_problem.target.unravel(jnp.asarray(BETA, jnp.float32))
    assert set(z) == {"beta"}
    np.testing.assert_array_equal(z["beta"], BETA.astype(np.float32))


def test_full_batch_model_has_no_plates(full_problem):
    assert full_problem.plates == {}
    assert full_problem.position.shape == (P,)


@pytest.mark.parametrize("indices", [np.arange(B), np.array([3, 3, 49, 0, 7, 21, 8, 9, 1, 40])])
def test_minibatch_log_density_is_prior_plus_scaled_batch_likelihood(
    minibatch_problem, data, indices
):
    X, y = data
    target = minibatch_problem.target
    value = target.logdensity_fn(jnp.asarray(BETA, jnp.float32), {"data": jnp.asarray(indices)})
    expected = log_prior(BETA) + (N / B) * log_likelihood(BETA, X[indices], y[indices]).sum()
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_minibatch_log_density_on_all_points_is_the_full_one(minibatch_problem, data):
    X, y = data
    value = minibatch_problem.target.logdensity_fn(
        jnp.asarray(BETA, jnp.float32), {"data": jnp.arange(N)}
    )
    np.testing.assert_allclose(value, log_prior(BETA) + log_likelihood(BETA, X, y).sum(), 1e-5)


def test_minibatch_target_is_differentiable_and_jittable(minibatch_problem, data):
    X, y = data
    idx = jnp.arange(5, 5 + B)
    fn = jax.jit(jax.grad(minibatch_problem.target.logdensity_fn))
    grad = fn(jnp.asarray(BETA, jnp.float32), {"data": idx})
    Xb, yb = np.asarray(X[idx], np.float64), np.asarray(y[idx], np.float64)
    expected = -BETA / PRIOR_SD**2 + (N / B) * Xb.T @ (yb - Xb @ BETA) / NOISE_SD**2
    np.testing.assert_allclose(grad, expected, rtol=1e-4)


def test_full_batch_terms_sum_to_the_log_density(full_problem, data):
    X, y = data
    target = full_problem.target
    x = jnp.asarray(BETA, jnp.float32)
    value = target.logdensity_fn(x, {})
    expected = log_prior(BETA) + log_likelihood(BETA, X, y).sum()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    terms = target.logdensity_terms_fn(x)
    np.testing.assert_allclose(sum(float(jnp.sum(t)) for t in terms), value, rtol=1e-5)
    per_datum = [t for t in terms if t.shape == (N,)]
    assert len(per_datum) == 1  # the observations, one term per data point
    np.testing.assert_allclose(per_datum[0], log_likelihood(BETA, X, y), rtol=1e-5, atol=1e-5)


def test_minibatch_target_has_no_terms(minibatch_problem):
    assert minibatch_problem.target.logdensity_terms_fn is None


@pytest.mark.parametrize("problem", ["minibatch_problem", "full_problem"])
def test_prior_potential_is_the_negative_log_prior(problem, request):
    target = request.getfixturevalue(problem).target
    value = target.prior_potential_fn(jnp.asarray(BETA, jnp.float32))
    np.testing.assert_allclose(value, -log_prior(BETA), rtol=1e-5)


def scale_model(X, y=None, subsample_size=None):
    """A regression with a positive noise scale (an exp transform) and a deterministic site
    inside the plate."""
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        xb = numpyro.subsample(X, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0)
        mean = numpyro.deterministic("mean", xb @ beta)
        numpyro.sample("obs", dist.Normal(mean, sigma), obs=yb)


@pytest.fixture(scope="module")
def scale_problem(data):
    X, y = data
    return targets.model_problem(scale_model, X, y, B, rng_key=jax.random.key(1))


def test_constrain_maps_to_constrained_and_deterministic_sites(scale_problem, data):
    X, _ = data
    x = jnp.array([0.4, -1.2, 0.7, -0.3])  # beta (3), then log sigma (sites in sorted order)
    z = scale_problem.target.unravel(x)
    np.testing.assert_array_equal(z["beta"], x[:3])
    np.testing.assert_array_equal(z["sigma"], x[3])
    sites = scale_problem.constrain(x)
    assert set(sites) == {"beta", "sigma", "mean"}
    np.testing.assert_allclose(sites["sigma"], np.exp(-0.3), rtol=1e-6)
    np.testing.assert_allclose(sites["beta"], x[:3])
    assert sites["mean"].shape == (N,)  # over all N points, not a batch
    np.testing.assert_allclose(sites["mean"], np.asarray(X) @ np.asarray(x[:3]), rtol=1e-5)


def test_log_density_includes_the_jacobian_of_the_constraint(scale_problem, data):
    X, y = data
    x = jnp.array([0.4, -1.2, 0.7, -0.3])
    idx = np.arange(20, 20 + B)
    beta, u = np.asarray(x[:3], np.float64), -0.3
    sigma = np.exp(u)
    prior = stats.norm.logpdf(beta).sum() + stats.halfnorm.logpdf(sigma) + u  # + log|dsigma/du|
    Xb, yb = np.asarray(X[idx], np.float64), np.asarray(y[idx], np.float64)
    likelihood = stats.norm.logpdf(yb, Xb @ beta, sigma).sum()
    target = scale_problem.target
    value = target.logdensity_fn(x, {"data": jnp.asarray(idx)})
    np.testing.assert_allclose(value, prior + (N / B) * likelihood, rtol=1e-5)


@pytest.mark.parametrize("plates", [{}, {"data": PlateInfo(N, B)}])
def test_potential_target(plates):
    _, unravel = ravel_pytree({"a": jnp.zeros(2), "b": jnp.zeros(())})
    weights = jnp.arange(N, dtype=jnp.float32)

    def potential_fn(z, batch=None):
        value = jnp.sum(z["a"] ** 2) + 3.0 * z["b"]
        if batch is None:
            return value
        return value + jnp.sum(weights[batch])

    target = targets.potential_target(potential_fn, plates, unravel)
    x = jnp.array([1.0, 2.0, -1.0])
    if plates:
        idx = jnp.array([1, 5, 9])
        np.testing.assert_allclose(target.logdensity_fn(x, {"data": idx}), -(5.0 - 3.0 + 15.0))
    else:
        np.testing.assert_allclose(target.logdensity_fn(x, {}), -(5.0 - 3.0))
    assert target.unravel is unravel
    assert target.logdensity_terms_fn is None and target.prior_potential_fn is None


def test_argument_shapes_names_every_array_argument():
    X, y = np.zeros((4, 2)), jnp.zeros(4)
    shapes = targets.argument_shapes(
        (X, y, 3), {"Z": jnp.ones((2, 5)), "opts": {"w": np.ones(7)}, "k": None}
    )
    assert shapes == {
        "model_args[0]": (4, 2),
        "model_args[1]": (4,),
        "model_kwargs['Z']": (2, 5),
        "model_kwargs['opts']['w']": (7,),
    }


def test_check_same_shapes():
    before = {"model_args[0]": (50, 3), "model_args[1]": (50,)}
    targets.check_same_shapes(before, dict(before))  # no change, no error
    now = {"model_args[0]": (40, 3), "model_args[1]": (50,), "model_kwargs['Z']": (2,)}
    with pytest.raises(ValueError, match="changed shape") as error:
        targets.check_same_shapes(before, now)
    message = str(error.value)
    assert "model_args[0]: (50, 3) -> (40, 3)" in message
    assert "model_kwargs['Z']" in message
    assert "model_args[1]:" not in message  # unchanged arguments are not listed


def test_check_init_params_accepts_matching_values():
    expected = {"beta": jnp.zeros(3), "sigma": jnp.zeros(())}
    targets.check_init_params({"beta": np.ones(3), "sigma": 1.0}, expected, None)
    targets.check_init_params({"beta": np.ones((4, 3)), "sigma": np.ones(4)}, expected, 4)


@pytest.mark.parametrize(
    ("init_params", "num_chains", "message"),
    [
        ([1.0, 2.0], None, "latent sites ['beta', 'sigma']; got list"),
        ({"beta": np.ones(3)}, None, "got ['beta']"),
        ({"beta": np.ones(3), "sigma": 1.0, "tau": 1.0}, None, "got ['beta', 'sigma', 'tau']"),
        (
            {"beta": np.ones(2), "sigma": 1.0},
            None,
            "init_params['beta'] has shape (2,), expected (3,)",
        ),
        (
            {"beta": np.ones(3), "sigma": np.ones(4)},
            4,
            "init_params['beta'] has shape (3,), expected (num_chains,) + (3,) = (4, 3)",
        ),
        ({"beta": np.ones((4, 3)), "sigma": 1.0}, 4, "init_params['sigma'] has shape ()"),
        ({"beta": np.ones(3)}, 2, "each with a leading (num_chains,) axis"),
    ],
)
def test_check_init_params_errors(init_params, num_chains, message):
    expected = {"beta": jnp.zeros(3), "sigma": jnp.zeros(())}
    with pytest.raises(ValueError) as error:
        targets.check_init_params(init_params, expected, num_chains)
    assert message in str(error.value)


@pytest.mark.parametrize("num_val", [7, 3])  # more and fewer held-out points than B = 4
def test_validation_loss_is_the_mean_nll_per_held_out_point(full_problem, num_val):
    rng = np.random.default_rng(num_val)
    X_val = jnp.asarray(rng.normal(size=(num_val, P)), jnp.float32)
    y_val = jnp.asarray(rng.normal(size=num_val), jnp.float32)
    kwargs = {"subsample_size": 4, **OPTIONS}
    loss, arrays = targets.validation_loss(models.linear_regression, (X_val, y_val), kwargs)
    unravel = full_problem.target.unravel
    value = jax.jit(loss, static_argnums=1)(jnp.asarray(BETA, jnp.float32), unravel, arrays)
    expected = -log_likelihood(BETA, X_val, y_val).mean()  # all points, no N / B scaling
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    other = loss(jnp.zeros(P), unravel, arrays)
    np.testing.assert_allclose(other, -log_likelihood(np.zeros(P), X_val, y_val).mean(), 1e-5)


def test_validation_loss_accepts_a_list_and_rejects_a_non_tuple(data):
    X, y = data
    _, arrays = targets.validation_loss(models.linear_regression, [X, y], OPTIONS)
    assert len(arrays) == 2
    for validation in (X, {"X": X, "y": y}):
        with pytest.raises(TypeError, match="validation must be a tuple"):
            targets.validation_loss(models.linear_regression, validation, OPTIONS)


def test_validation_loss_rejects_non_finite_data(data):
    X, y = data
    with pytest.raises(ValueError, match="non-finite"):
        targets.validation_loss(models.linear_regression, (X, y.at[0].set(jnp.nan)), OPTIONS)
