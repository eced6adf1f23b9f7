"""Unit tests of the adapters in ``numpyro_smile.tuning``: each ``init``/``update`` alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size as numpyro_ess

from numpyro_smile import tuning


def run_energy_tuner(errors, step_size=1e-2, adapt=True, config=tuning.EnergyTunerConfig()):
    """Feed a sequence of dE values through the tuner; returns step sizes and resets."""

    def body(carry, energy_change):
        state, step = carry
        state, step, reset = tuning.energy_tuner_update(state, step, energy_change, adapt, config)
        return (state, step), (step, reset)

    init = (tuning.energy_tuner_init(), jnp.asarray(step_size, jnp.float32))
    _, (steps, resets) = jax.lax.scan(body, init, jnp.asarray(errors, jnp.float32))
    return np.asarray(steps), np.asarray(resets)


@pytest.fixture(scope="module")
def gamma_errors():
    """|dE| ~ Gamma(2, 1) with random signs: the tuner's own model of the energy error."""
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 1.0, size=20_000) * rng.choice([-1, 1], size=20_000)


def test_reset_rate_matches_quantile(gamma_errors):
    """With |dE| from a Gamma, about 1 - rho of the steps are reset.

    20,000 steps at rate 0.02 give sd 0.001; Wilson-Hilferty and the EMA fit add a small bias,
    so the rate must lie in [0.012, 0.03].
    """
    _, resets = run_energy_tuner(gamma_errors)
    assert 0.012 < resets[100:].mean() < 0.03


def test_no_reset_or_adaptation_during_burn_in():
    errors = np.r_[np.ones(5), 1e6 * np.ones(4)]  # wild errors in steps 6..9 (t < 10)
    steps, resets = run_energy_tuner(errors, step_size=0.5)
    assert not resets.any()
    np.testing.assert_allclose(steps, 0.5)


def test_large_error_shrinks_and_small_error_grows_step_size(gamma_errors):
    base = np.abs(gamma_errors[:200])
    steps, _ = run_energy_tuner(np.r_[base, 50.0], step_size=0.1)
    np.testing.assert_allclose(steps[-1] / steps[-2], 1 - 0.02, rtol=1e-5)
    steps, _ = run_energy_tuner(np.r_[base, 1e-4], step_size=0.1)
    np.testing.assert_allclose(steps[-1] / steps[-2], 1 + 0.02, rtol=1e-5)


def test_non_finite_error_resets_and_shrinks(gamma_errors):
    steps, resets = run_energy_tuner(np.r_[gamma_errors[:50], np.nan, gamma_errors[50:60]])
    assert resets[50]
    np.testing.assert_allclose(steps[50] / steps[49], 0.8, rtol=1e-5)
    assert np.isfinite(steps).all()


def test_frozen_tuner_keeps_step_size_but_still_resets(gamma_errors):
    steps, resets = run_energy_tuner(np.r_[gamma_errors[:200], 1e3], step_size=0.3, adapt=False)
    np.testing.assert_allclose(steps, 0.3)
    assert resets[-1]


def test_quantile_one_disables_resets(gamma_errors):
    config = tuning.EnergyTunerConfig(reset_quantile=1.0, adapt_tail_prob=0.0)
    steps, resets = run_energy_tuner(np.r_[gamma_errors[:100], 1e5], config=config)
    assert not resets.any()
    np.testing.assert_allclose(steps, 1e-2)


def test_gradient_noise_ema_estimates_std_and_equalises_noise():
    """For iid gradients with per-coordinate std sigma_i, s * sigma is constant (= RMS sigma)."""
    dim = 5
    sigma = jnp.array([0.1, 1.0, 10.0, 100.0, 3.0])
    grads = 2.0 + sigma * jax.random.normal(jax.random.key(0), (5000, dim))
    state, _ = jax.lax.scan(
        lambda s, g: (tuning.gradient_noise_update(s, g), None),
        tuning.gradient_noise_init(dim),
        grads,
    )
    # EMA with rate 0.01 averages ~200 effective draws: relative sd of the std ~ 5 percent.
    np.testing.assert_allclose(state.std, sigma, rtol=0.2)
    scale = tuning.gradient_noise_scale(state)
    noise = scale * jnp.clip(state.std, 1e-2, 1e4)
    np.testing.assert_allclose(noise, noise[0], rtol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean((1 / scale) ** 2)), 1.0, rtol=1e-5)


def test_noise_limited_step_size_formula():
    state = tuning.GradientNoiseState(jnp.zeros(10), jnp.full(10, 4.0), jnp.zeros(10))
    limit = tuning.noise_limited_step_size(state, 1.0, 0.2)
    np.testing.assert_allclose(limit, 0.2 * 9 / (4.0 * np.sqrt(10)), rtol=1e-6)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_effective_sample_size_matches_numpyro_and_ar1_theory(phi):
    """ESS of AR(1) chains: n (1 - phi) / (1 + phi); and equal to NumPyro's single-chain ESS."""
    n, k = 4000, 50
    noise = np.random.default_rng(1).normal(size=(n, k))
    x = np.zeros_like(noise)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    ess = np.asarray(tuning.effective_sample_size(jnp.asarray(x, jnp.float32)))
    reference = numpyro_ess(x[None])
    np.testing.assert_allclose(ess, reference, rtol=0.05)
    expected = n * (1 - phi) / (1 + phi)
    np.testing.assert_allclose(np.mean(ess), expected, rtol=0.15)


def test_mclmc_tuner_schedule_and_phases():
    config = tuning.mclmc_tuner_config(1000, dim=3)
    assert (config.num_phase1, config.num_phase2, config.num_phase3) == (800, 100, 100)
    t = jnp.arange(0, 901)
    schedule = tuning._desired_energy_var(config, t.astype(jnp.float32))
    np.testing.assert_allclose(schedule[0], 0.5)
    assert np.all(np.diff(np.asarray(schedule)) <= 0) and schedule[-1] > 0.1 - 1e-3


def test_mclmc_tuner_finds_energy_variance_step_size():
    """If Var[dE] = d * C * eps^6 exactly, the tuner converges to eps* = (V / C)^(1/6)."""
    dim, C, target = 10, 50.0, 1e-3
    config = tuning.mclmc_tuner_config(
        2000, dim, energy_var_start=target, energy_var_end=target, tune_L=False
    )
    state = tuning.mclmc_tuner_init(config, dim, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 1500)

    def body(carry, key):
        state, eps = carry
        energy = jnp.sqrt(dim * C * eps**6) * jax.random.normal(key)
        state, eps, _ = tuning.mclmc_tuner_update(
            state, config, eps, jnp.inf, energy, jnp.zeros(dim), jnp.array(True)
        )
        return (state, eps), eps

    _, eps = jax.lax.scan(body, (state, jnp.float32(1.0)), keys)
    # Averaging ~100 effective chi-square(1) draws: the estimate is within ~20 percent.
    np.testing.assert_allclose(np.mean(eps[-500:]), (target / C) ** (1 / 6), rtol=0.2)


@pytest.mark.parametrize("shape", [0.3, 0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("q", [0.05, 0.95, 0.98])
def test_gamma_quantile_close_to_exact(shape, q):
    """Thresholds from the moment fit: Wilson-Hilferty, floored in the lower tail by the
    small-x asymptote. Within 12 percent of the exact Gamma quantile (WH alone is off by
    orders of magnitude at shape <= 0.5, q = 0.05, where it goes to zero or below)."""
    from scipy.stats import gamma

    scale = 3.0
    mean = jnp.float32(shape * scale)
    std = jnp.float32(np.sqrt(shape) * scale)
    ours = float(tuning._gamma_quantile(mean, std, q))
    np.testing.assert_allclose(ours, gamma.ppf(q, shape, scale=scale), rtol=0.12)


def test_upper_thresholds_stay_above_the_mean_when_rare_huge_errors_dominate():
    """Running |dE| moments dominated by a rare jump (mean 100, std 3,000: shape k ~ 1e-3):
    Wilson-Hilferty's upper quantiles are negative there, so a typical |dE| of 5 was a reset.
    Floored at the mean, it is neither a reset nor a reason to shrink the step."""
    mean, std = jnp.float32(100.0), jnp.float32(3000.0)
    for q in (0.95, 0.98):
        assert float(tuning._gamma_quantile(mean, std, q)) >= 100.0
    state = tuning.EnergyTunerState(mean, std, jnp.int32(500))
    _, step_size, reset = tuning.energy_tuner_update(state, jnp.float32(1e-2), jnp.float32(5.0))
    assert not bool(reset) and float(step_size) == float(jnp.float32(1e-2))
    _, _, reset = tuning.energy_tuner_update(state, jnp.float32(1e-2), jnp.float32(1e6))
    assert bool(reset)  # the jump itself is still rejected


def test_heavy_tailed_errors_do_not_collapse_the_step_size():
    """|dE| ~ Gamma(0.4): both adaptation tails fire about equally (tail probability 0.05
    each), so the step size does not drift away (measured over 20,000 steps)."""
    rng = np.random.default_rng(2)
    errors = rng.gamma(0.4, 100.0, size=20_000)
    steps, _ = run_energy_tuner(errors, step_size=1e-2)
    assert 1e-3 < steps[-1] < 1e-1
