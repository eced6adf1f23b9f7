"""The first hour's diagnostics: the end-of-warmup convergence check and the start check.

A run that should warn does, a healthy run does not (pytest turns any stray warning into an
error, except the two classes here, which tests/ ignore globally and check only in this file).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from numpyro_smile import (
    SMILE,
    ConvergenceWarning,
    NonSmoothWarning,
    SMILEConfig,
    SMILEEnsemble,
    StartWarning,
    convergence,
)


def rhat_reference(chains: np.ndarray) -> float:
    """Gelman and Rubin's classic R-hat of ``(C, n)`` draws, computed directly."""
    n = chains.shape[1]
    within = chains.var(axis=1, ddof=1).mean()
    between = n * chains.mean(axis=1).var(ddof=1)
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def welford(chains: np.ndarray) -> convergence.MonitorState:
    count = np.full(chains.shape[0], float(chains.shape[1]))
    mean = chains.mean(axis=1)[:, None]
    m2 = ((chains - chains.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)[:, None]
    return convergence.MonitorState(count, mean, m2, np.full(chains.shape[0], np.nan))


@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_rhat_from_welford_sums_matches_the_formula(shift):
    rng = np.random.default_rng(0)
    chains = rng.normal(size=(4, 500)) + shift * np.arange(4)[:, None]
    monitor = welford(chains)
    value = convergence.rhat(monitor.steps, monitor.mean, monitor.m2)[0]
    assert value == pytest.approx(rhat_reference(chains), rel=1e-10)
    assert (value > convergence.RHAT_THRESHOLD) == (shift > 0)


def test_monitor_update_matches_numpy_over_the_second_half_of_warmup():
    rng = np.random.default_rng(1)
    num_warmup, dim = 40, 3
    positions = rng.normal(size=(60, dim)).astype(np.float32)
    potentials = rng.normal(size=60).astype(np.float32)
    state = convergence.monitor_init(dim, jnp.float32)
    for i in range(60):
        state = convergence.monitor_update(
            state, jnp.int32(i), num_warmup, potentials[i], positions[i], jnp.float32(i)
        )
    inside = slice(num_warmup // 2, num_warmup)
    values = np.c_[potentials[inside], positions[inside]]
    np.testing.assert_allclose(state.mean, values.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.m2, ((values - values.mean(0)) ** 2).sum(0), rtol=1e-4)
    assert float(state.steps) == num_warmup // 2
    assert float(state.step_size_mark) == 3 * num_warmup // 4


def test_report_names_a_climbing_step_size_and_is_quiet_when_settled():
    chains = np.random.default_rng(2).normal(size=(4, 200))
    monitor = welford(chains)
    settled = monitor._replace(step_size_mark=np.full(4, 0.01))
    assert convergence.warmup_report(settled, np.full(4, 0.011), check_chains=True) is None
    message = convergence.warmup_report(settled, np.full(4, 0.05), check_chains=True)
    assert "still climbing (5.0x" in message


# ------------------------------------------------------------------ through MCMC


def two_means(X, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 10).expand([2]).to_event(1))
    with numpyro.plate("N", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu[0] + mu[1] * X, 1.0), obs=y)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=200).astype(np.float32)
    return X, (1.0 + 2.0 * X + rng.normal(size=200)).astype(np.float32)


def run(data, init_params, num_warmup=200, **kwargs):
    mcmc = MCMC(
        SMILE(two_means, **kwargs),
        num_warmup=num_warmup,
        num_samples=50,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), *data, init_params=init_params)
    return mcmc


def test_chains_that_disagree_at_the_end_of_warmup_warn(data):
    # A fixed tiny step (no adaptation): chains started 50 apart cannot meet in 200 steps.
    far_apart = {"mu": jnp.array([[1.0, 2.0], [-49.0, 2.0]])}
    with pytest.warns(ConvergenceWarning, match=r"chains disagree: R-hat .* on mu\[0\]"):
        run(data, far_apart, adapt=False, step_size=1e-3)


def test_a_healthy_run_does_not_warn(data):
    near = {"mu": jnp.array([[1.0, 2.0], [1.1, 1.9]])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mcmc = run(data, near)
    assert np.all(np.isfinite(mcmc.get_samples()["mu"]))


def test_a_non_finite_start_is_an_error_naming_unconstrained_values(data):
    def positive_scale(X, y=None):
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("N", X.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    mcmc = MCMC(SMILE(positive_scale), num_warmup=10, num_samples=10, progress_bar=False)
    # sigma = 200 passed as if constrained: exp(200) overflows float32.
    with pytest.raises(ValueError, match=r"not finite.*unconstrained values"):
        mcmc.run(jax.random.key(0), *data, init_params={"sigma": 200.0, "mu": 0.0})


def test_a_far_start_warns_with_the_site(data):
    far = {"mu": jnp.array([[1.0, 2.0], [1.0, 400.0]])}
    with (
        pytest.warns(StartWarning, match=r"'mu' \(chain 1: 400"),
        pytest.warns(ConvergenceWarning),
    ):
        run(data, far)


def test_a_likelihood_that_moves_a_site_only_by_steps_is_named():
    """A change-point model: the switch time enters through jnp.where, so its likelihood
    gradient is zero and SMILE (no accept/reject step) cannot feel the data there."""
    years = np.arange(60.0, dtype=np.float32)
    counts = np.r_[np.full(25, 3.0), np.full(35, 1.0)].astype(np.float32)

    def change_point(years, counts=None):
        switch = numpyro.sample("switch", dist.Uniform(0, 60))
        early = numpyro.sample("early", dist.Exponential(1.0))
        late = numpyro.sample("late", dist.Exponential(1.0))
        with numpyro.plate("t", years.shape[0]):
            numpyro.sample("obs", dist.Poisson(jnp.where(years < switch, early, late)), obs=counts)

    mcmc = MCMC(SMILE(change_point), num_warmup=10, num_samples=5, progress_bar=False)
    with pytest.warns(NonSmoothWarning, match="depends on 'switch' only through steps"):
        mcmc.run(jax.random.key(0), years, counts)


# ------------------------------------------------------------------ through the ensemble


def two_means_minibatch(X, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 10).expand([2]).to_event(1))
    with numpyro.plate("N", X.shape[0], subsample_size=50):
        x = numpyro.subsample(X, event_dim=0)
        y = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(mu[0] + mu[1] * x, 1.0), obs=y)


def test_an_ensemble_reports_a_climb_on_the_host_and_not_its_members_disagreeing(data):
    """Members far apart disagree by design (no R-hat warning); a step size started at 1e-6
    on mini-batches is still climbing (1.9x over the last quarter) after 3,000 warmup steps.
    The check runs on the host after the warmup phase, so that the compiled loops hold no host
    callback (JAX's persistent cache cannot store one that does)."""
    far_apart = {"mu": jnp.array([[1.0, 2.0], [-49.0, 2.0]])}
    ensemble = SMILEEnsemble(
        two_means_minibatch, num_members=2, num_warmup=3000, num_samples=10, thinning=1,
        config=SMILEConfig(step_size=1e-6), log_likelihood=False, progress_bar=False,
    )  # fmt: skip
    with pytest.warns(ConvergenceWarning, match="still climbing") as caught:
        ensemble.run(jax.random.key(0), *data, init_params=far_apart)
    assert all("R-hat" not in str(w.message) for w in caught)
