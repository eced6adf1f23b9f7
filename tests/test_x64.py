"""The statistical tests again in float64 (``jax.enable_x64``), with the float32 tolerances.

x64 is switched on by a context manager around each test body only (the ``x64`` fixture), so
it cannot leak into other tests; the fixture checks on exit that the default dtype is float32
again. Samples must come back as float64 (a float32 leaf would mean a silent downcast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC

from numpyro_smile import SMILE

from .conftest import LinearRegressionProblem, linear_regression
from .test_kernel import (
    GAUSS_DIM,
    NUM_CHAINS,
    assert_blr_posterior,
    gaussian_z_scores,
    run_blr,
    run_gaussian,
)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        assert jnp.asarray(1.0).dtype == jnp.float64
        yield
    assert jnp.asarray(1.0).dtype == jnp.float32, "x64 leaked out of the test"


class Float64Problem:
    """A view of a :class:`LinearRegressionProblem` with float64 data and chain starts (build
    it under x64). The exact posterior is the float32 problem's: it was computed in float64
    from the same (float32-representable) data."""

    def __init__(self, problem: LinearRegressionProblem):
        self._problem = problem
        self.mean, self.cov, self.sd = problem.mean, problem.cov, problem.sd
        self.X = jnp.asarray(np.asarray(problem.X), jnp.float64)
        self.y = jnp.asarray(np.asarray(problem.y), jnp.float64)

    def dispersed_init(self, num_chains: int, seed: int = 1) -> dict:
        init = self._problem.dispersed_init(num_chains, seed)
        return {k: jnp.asarray(np.asarray(v), jnp.float64) for k, v in init.items()}


@pytest.mark.slow
def test_gaussian_moments_x64(x64):
    """``test_kernel.test_gaussian_moments[full-batch]`` in float64, same tolerances (see
    there); its tight energy target (Var[dE] / d = 1e-5) is the one most exposed to rounding."""
    mcmc = run_gaussian(precondition=False, desired_energy_var=1e-5)
    x = mcmc.get_samples()["x"]
    assert x.dtype == jnp.float64 and x.shape[-1] == GAUSS_DIM
    assert mcmc.get_extra_fields()["energy_change"].dtype == jnp.float64
    z_mean, rel_var_error, var_se = gaussian_z_scores(mcmc)
    assert np.max(np.abs(z_mean)) < 4.5
    assert np.all(np.abs(rel_var_error) < 4.5 * var_se + 0.03)


@pytest.mark.slow
def test_blr_minibatch_x64_matches_exact_posterior(x64, blr):
    """``test_kernel.test_blr_vectorized_matches_exact_posterior`` (pSMILE, B = 256) in
    float64, same acceptance bounds."""
    mcmc = run_blr(Float64Problem(blr))
    samples = mcmc.get_samples()
    assert samples["beta"].dtype == jnp.float64
    assert_blr_posterior(samples, blr)
    stats = mcmc.get_extra_fields()
    assert stats["step_size"].dtype == stats["energy_change"].dtype == jnp.float64
    assert 0.0 < float(np.mean(stats["diverging"])) < 0.05


def run_blr_full_batch(problem, num_warmup=500, num_samples=1000):
    """MILE: the same regression without a subsample plate (full-data gradients). Its draws
    are nearly independent (pooled ESS ~6000 per 4 x 1000 draws, measured), so short runs do."""
    mcmc = MCMC(
        SMILE(linear_regression),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.key(0), problem.X, problem.y, init_params=problem.dispersed_init(NUM_CHAINS)
    )
    return mcmc


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blr_full_batch_mile_matches_exact_posterior(dtype, blr):
    """Full-batch MILE on the regression, in float32 and in float64: the bounds of
    ``test_kernel.assert_blr_posterior`` (mean within 0.3 sd, sd ratio in [0.8, 1.25]; MILE's
    default energy target costs ~3 percent of sd)."""
    if dtype == "float64":
        with jax.enable_x64(True):
            mcmc = run_blr_full_batch(Float64Problem(blr))
            samples = mcmc.get_samples()
    else:
        mcmc = run_blr_full_batch(blr)
        samples = mcmc.get_samples()
    assert samples["beta"].dtype == np.dtype(dtype)
    assert mcmc.sampler.subsample_plates == {}
    assert_blr_posterior(samples, blr)
    stats = mcmc.get_extra_fields(group_by_chain=True)
    assert np.all(np.isfinite(np.asarray(stats["L"]))) and not np.any(stats["diverging"])
