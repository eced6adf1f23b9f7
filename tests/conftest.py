"""Shared fixtures: small models with known posteriors, compiled once per module."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_smile import models

numpyro.set_host_device_count(1)

# The drivers' persistent compilation cache is off in the suite (writing every executable to
# disk costs time, and no state may leak between tests, processes or sessions);
# tests/test_compilation_cache.py turns it on with a temporary directory of its own.
os.environ.setdefault("NUMPYRO_SMILE_CACHE_DIR", "off")

#: UCI data directory for tests that read real data (not copied into the project).
DATA_DIR = Path(
    os.environ.get("SMILE_DATA_DIR", Path(__file__).parents[1] / ".." / "shared" / "data")
).resolve()


def data_file(name: str) -> Path:
    """``DATA_DIR / name``, or skip the calling test with a reason when the file is absent (a
    fresh clone has no ``../shared/data``). With ``SMILE_REQUIRE_DATA=1`` (set by ``.ci/run``
    when the folder exists) a missing file fails the test instead, so CI cannot skip silently.
    """
    path = DATA_DIR / name
    if not path.is_file():
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # names it in -rs
        reason = (
            f"{test}: real data file {name} not found in {DATA_DIR}; set SMILE_DATA_DIR to "
            "the folder with the UCI files to run this test"
        )
        if os.environ.get("SMILE_REQUIRE_DATA", "") not in ("", "0"):
            pytest.fail(f"{reason} (SMILE_REQUIRE_DATA is set)", pytrace=False)
        pytest.skip(reason)
    return path


BLR_N, BLR_D = 10_000, 5
BLR_NOISE_SD, BLR_PRIOR_SD = 1.0, 10.0


def linear_regression(X, y=None, subsample_size=None):
    """:func:`numpyro_smile.models.linear_regression` with the tests' prior sd 10, noise sd 1
    and plate name ``"N"`` (the tests' numbers and plate assertions depend on them)."""
    models.linear_regression(
        X,
        y,
        subsample_size,
        prior_scale=BLR_PRIOR_SD,
        noise_scale=BLR_NOISE_SD,
        plate_name="N",
    )


class LinearRegressionProblem:
    """Synthetic data with an intercept column and the exact Gaussian posterior."""

    def __init__(self, seed: int = 0, n: int = BLR_N, d: int = BLR_D):
        rng = np.random.default_rng(seed)
        X = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d))], axis=1).astype(np.float32)
        beta = rng.normal(size=d + 1)
        y = (X @ beta + BLR_NOISE_SD * rng.normal(size=n)).astype(np.float32)
        X64 = X.astype(np.float64)
        precision = X64.T @ X64 / BLR_NOISE_SD**2 + np.eye(d + 1) / BLR_PRIOR_SD**2
        self.cov = np.linalg.inv(precision)
        self.mean = self.cov @ (X64.T @ y.astype(np.float64)) / BLR_NOISE_SD**2
        self.sd = np.sqrt(np.diag(self.cov))
        self.X, self.y = jnp.asarray(X), jnp.asarray(y)
        self.rng = rng

    def dispersed_init(self, num_chains: int, seed: int = 1) -> dict:
        """Chain starts drawn from the exact posterior (as if from a pretrained ensemble)."""
        rng = np.random.default_rng(seed)
        draws = rng.multivariate_normal(self.mean, self.cov, size=num_chains)
        return {"beta": jnp.asarray(draws, dtype=jnp.float32)}


def local_latent_model(y):
    """A per-datum latent inside a subsampled plate: every kernel must refuse it."""
    mu = numpyro.sample("mu", dist.Normal().expand([2]).to_event(1))
    with numpyro.plate("N", y.shape[0], subsample_size=10):
        z = numpyro.sample("z", dist.Normal(mu[0], 1))
        numpyro.sample("obs", dist.Normal(z, 1), obs=numpyro.subsample(y, event_dim=0))


def discrete_latent_model(y):
    """A discrete latent site: every kernel must refuse it."""
    numpyro.sample("mu", dist.Normal().expand([2]).to_event(1))
    k = numpyro.sample("k", dist.Poisson(3.0))
    with numpyro.plate("N", y.shape[0], subsample_size=10):
        numpyro.sample("obs", dist.Normal(k, 1), obs=numpyro.subsample(y, event_dim=0))


@pytest.fixture(scope="session")
def blr() -> LinearRegressionProblem:
    return LinearRegressionProblem()


@pytest.fixture(scope="session")
def rng_key() -> jax.Array:
    return jax.random.key(0)
