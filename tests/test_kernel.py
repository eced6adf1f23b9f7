"""The SMILE kernel under ``numpyro.infer.MCMC``: statistics against known posteriors,
chain methods, ArviZ, guardrails, compilation count and input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC

from numpyro_smile import SMILE, ModelError, sampler

from .conftest import BLR_N, discrete_latent_model, linear_regression, local_latent_model

BATCH = 256
NUM_CHAINS = 4


# ------------------------------------------------------------------ known Gaussian, d = 100

GAUSS_DIM = 100
GAUSS_VAR = jnp.logspace(-2, 0, GAUSS_DIM)  # condition number 100
GAUSS_MEAN = jnp.linspace(-1, 1, GAUSS_DIM)


def gaussian_potential(z):
    return 0.5 * jnp.sum((z["x"] - GAUSS_MEAN) ** 2 / GAUSS_VAR)


def run_gaussian(num_samples=4000, **kernel_kwargs):
    mcmc = MCMC(
        SMILE(potential_fn=gaussian_potential, **kernel_kwargs),
        num_warmup=2000,
        num_samples=num_samples,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    init = {"x": jax.random.normal(jax.random.key(1), (NUM_CHAINS, GAUSS_DIM))}
    mcmc.run(jax.random.key(0), init_params=init)
    return mcmc


def gaussian_z_scores(mcmc):
    """Per-coordinate z-scores of the mean and of the variance, from each coordinate's ESS.

    Monte Carlo standard errors: sd / sqrt(ESS) for the mean, var * sqrt(2 / ESS) for the
    variance (Gaussian). ESS is capped at the number of draws (MCLMC can be antithetic).
    """
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"], np.float64)
    ess = np.clip(effective_sample_size(x), 10, x.shape[0] * x.shape[1])
    flat = x.reshape(-1, GAUSS_DIM)
    var = np.asarray(GAUSS_VAR, np.float64)
    z_mean = (flat.mean(0) - np.asarray(GAUSS_MEAN)) / np.sqrt(var / ess)
    rel_var_error = flat.var(0) / var - 1
    return z_mean, rel_var_error, np.sqrt(2 / ess)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        # Full batch, no preconditioner: the stiff coordinates need a tight energy target.
        {"precondition": False, "desired_energy_var": 1e-5},
        # Full batch with pSMILE's gradient-noise preconditioner (learned in warmup phase I).
        {"precondition": True, "desired_energy_var": 5e-4},
    ],
    ids=["full-batch", "preconditioned"],
)
def test_gaussian_moments(kwargs):
    """Means and variances of a d=100 Gaussian (condition number 100).

    Tolerance: every coordinate's mean within 4.5 Monte Carlo standard errors (100 coordinates:
    a false alarm has probability ~1e-3); every variance within 4.5 standard errors plus a 3
    percent budget for MCLMC's discretisation bias (bias^2 ~ Var[dE] / d, here <= 2.2 percent).
    """
    z_mean, rel_var_error, var_se = gaussian_z_scores(run_gaussian(**kwargs))
    assert np.max(np.abs(z_mean)) < 4.5
    assert np.all(np.abs(rel_var_error) < 4.5 * var_se + 0.03)


@pytest.mark.slow
def test_gaussian_default_mile_schedule_trades_little_bias():
    """MILE's default target (Var[dE]/d from 0.5 to 0.1) buys large steps with a small bias:
    the average variance is within 12 percent (measured: about 7 percent low)."""
    _, rel_var_error, _ = gaussian_z_scores(run_gaussian())
    assert -0.12 < np.mean(rel_var_error) < 0.03


# ------------------------------------------------------------------ Bayesian linear regression


def run_blr(
    problem,
    *,
    num_warmup=2000,
    num_samples=8000,
    num_chains=NUM_CHAINS,
    chain_method="vectorized",
    seed=0,
    **kernel_kwargs,
):
    mcmc = MCMC(
        SMILE(linear_regression, **kernel_kwargs),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    init = problem.dispersed_init(num_chains)
    if num_chains == 1:
        init = jax.tree.map(lambda a: a[0], init)
    mcmc.run(jax.random.key(seed), problem.X, problem.y, subsample_size=BATCH, init_params=init)
    return mcmc


def assert_blr_posterior(samples, problem):
    """Acceptance bounds: |mean error| < 0.3 exact posterior sd, sd ratio in [0.8, 1.25].

    Pooled ESS is about 200 for these runs, so the mean's Monte Carlo error is ~0.07 sd
    (0.3 = 4 standard errors) and the sd ratio's ~0.05; the measured SG-MCLMC bias of the sd at
    the default noise angle is -5 to -10 percent.
    """
    beta = np.asarray(samples["beta"], np.float64)
    mean_error = (beta.mean(0) - problem.mean) / problem.sd
    sd_ratio = beta.std(0) / problem.sd
    assert np.all(np.abs(mean_error) < 0.3), mean_error
    assert np.all((sd_ratio > 0.8) & (sd_ratio < 1.25)), sd_ratio


@pytest.fixture(scope="module", params=[True, False], ids=["pSMILE", "SMILE"])
def blr_run(request, blr):
    return run_blr(blr, precondition=request.param)


@pytest.mark.slow
def test_blr_vectorized_matches_exact_posterior(blr_run, blr):
    assert_blr_posterior(blr_run.get_samples(), blr)
    stats = blr_run.get_extra_fields()
    assert stats["step_size"].shape == (NUM_CHAINS * 8000,)
    assert np.isinf(stats["L"]).all()  # mini-batch mode: no partial refresh by default
    resets = float(np.mean(stats["diverging"]))
    assert 0.0 < resets < 0.05  # the reset guardrail fires on ~2 percent of steps


@pytest.mark.slow
def test_blr_sequential(blr):
    mcmc = run_blr(blr, num_chains=2, num_samples=12000, chain_method="sequential")
    assert_blr_posterior(mcmc.get_samples(), blr)


PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    import jax, numpy as np
    assert jax.local_device_count() == 2, jax.devices()
    from tests.conftest import LinearRegressionProblem
    from tests.test_kernel import run_blr
    problem = LinearRegressionProblem()
    mcmc = run_blr(problem, num_chains=2, num_samples=12000, chain_method="parallel")
    beta = np.asarray(mcmc.get_samples()["beta"], np.float64)
    # same key: parallel (pmap) and sequential chains draw the same per-chain key streams
    short = dict(num_warmup=200, num_samples=300, num_chains=2)
    draws = [
        np.asarray(run_blr(problem, chain_method=method, **short).get_samples(True)["beta"])
        for method in ("parallel", "sequential")
    ]
    print(json.dumps({{
        "mean_error": ((beta.mean(0) - problem.mean) / problem.sd).tolist(),
        "sd_ratio": (beta.std(0) / problem.sd).tolist(),
        "parallel_minus_sequential": float(np.abs(draws[0] - draws[1]).max()),
    }}))
    """
)


@pytest.mark.slow
def test_blr_parallel_on_two_cpu_devices():
    """chain_method="parallel" (pmap) on 2 host devices, in a subprocess (XLA flags must be set
    before JAX starts)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = PARALLEL_SCRIPT.format(root=str(Path(__file__).parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.all(np.abs(result["mean_error"]) < 0.3), result
    assert np.all((np.array(result["sd_ratio"]) > 0.8) & (np.array(result["sd_ratio"]) < 1.25))
    assert result["parallel_minus_sequential"] == 0.0


def test_same_key_gives_identical_draws(blr):
    """Reproducibility: the same key gives bit-identical draws for a chain method (parallel
    equals sequential: see the two-device test). Vectorized chains share one key stream, so
    their draws differ from sequential ones (equally valid)."""
    short = dict(num_warmup=100, num_samples=100, num_chains=2, chain_method="vectorized")
    first, again, other = (
        np.asarray(run_blr(blr, seed=seed, **short).get_samples(True)["beta"]) for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# ------------------------------------------------------------------ ArviZ and NumPyro integration


@pytest.fixture(scope="module")
def short_run(blr):
    return run_blr(blr, num_warmup=200, num_samples=100)


def test_arviz_log_likelihood_covers_all_data(short_run):
    idata = az.from_numpyro(short_run)
    assert idata.log_likelihood["obs"].shape == (NUM_CHAINS, 100, BLR_N)
    assert idata.observed_data["obs"].shape == (BLR_N,)
    assert idata.posterior["beta"].shape == (NUM_CHAINS, 100, 6)
    for name in ("step_size", "energy_change", "diverging", "lp", "L"):
        assert name in idata.sample_stats, name
    assert "energy" not in idata.sample_stats  # would feed ArviZ's HMC-only BFMI
    summary = az.summary(idata, var_names=["beta"])
    assert summary.index[0] == "beta[0]" and np.isfinite(summary["mean"]).all()


def test_print_summary_and_diagnostics(short_run, capsys):
    short_run.print_summary()
    out = capsys.readouterr().out
    assert "beta[0]" in out and "Number of divergences" in out
    text = short_run.sampler.get_diagnostics_str(short_run.last_state)
    # the variant and the resets against what the guardrail resets by design
    assert text.startswith(f"pSMILE, B={BATCH} of N={BLR_N} | step size "), text
    assert text.endswith("% (2% by design)"), text


def test_kernel_model_is_full_data_view(short_run, blr):
    from numpyro.infer import Predictive

    predictive = Predictive(short_run.sampler.model, short_run.get_samples())
    draws = predictive(jax.random.key(0), blr.X, subsample_size=BATCH)
    assert draws["obs"].shape == (NUM_CHAINS * 100, BLR_N)
    assert short_run.sampler.subsample_plates == {"N": (BLR_N, BATCH)}


def test_resume_from_post_warmup_state(blr):
    """warmup() then run() continues the chain with the tuner state; adaptation stays frozen."""
    mcmc = MCMC(
        SMILE(linear_regression),
        num_warmup=300,
        num_samples=50,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    args = (blr.X, blr.y)
    mcmc.warmup(jax.random.key(0), *args, subsample_size=BATCH, init_params=blr.dispersed_init(2))
    warm = mcmc.post_warmup_state
    assert int(warm.i[0]) == 300 and warm.tuner.count[0] == 301
    mcmc.run(jax.random.key(1), *args, subsample_size=BATCH)
    steps = mcmc.get_extra_fields()["step_size"].reshape(2, 50)
    np.testing.assert_allclose(steps, np.broadcast_to(warm.step_size[:, None], (2, 50)))
    assert int(mcmc.last_state.i[0]) == 350


def test_adaptation_during_sampling_is_optional(blr):
    mcmc = run_blr(blr, num_warmup=100, num_samples=400, num_chains=2, adapt_during_sampling=True)
    steps = mcmc.get_extra_fields(group_by_chain=True)["step_size"]
    assert np.unique(np.asarray(steps[0])).size > 1


def test_sampling_loop_is_traced_once_per_run(blr, monkeypatch):
    """The core's public step is traced exactly once per MCMC.run, whatever the number of
    steps (a Python call of ``step`` happens only while JAX traces it)."""
    traces = []
    build_kernel = sampler.build_kernel

    def counting_build_kernel(*args, **kwargs):
        core = build_kernel(*args, **kwargs)

        def step(*step_args):
            traces.append(1)
            return core.step(*step_args)

        return core._replace(step=step)

    monkeypatch.setattr(sampler, "build_kernel", counting_build_kernel)
    for num_samples in (20, 200):
        traces.clear()
        run_blr(blr, num_warmup=50, num_samples=num_samples, num_chains=2)
        assert len(traces) == 1


def test_full_batch_mode_tunes_L_and_step_size():
    mcmc = run_gaussian(num_samples=200)
    stats = mcmc.get_extra_fields(group_by_chain=True)
    L, step = np.asarray(stats["L"][:, -1]), np.asarray(stats["step_size"][:, -1])
    assert np.all(np.isfinite(L)) and np.all(L > 0) and np.all(step > 0)
    # moved away from its initial value, max(sqrt(d), 15), by phases II and III
    assert np.all(L != max(np.sqrt(GAUSS_DIM), 15.0))
    # Frozen after warmup: every sampling step uses the tuned values.
    assert np.all(np.asarray(stats["step_size"]) == step[:, None])
    text = mcmc.sampler.get_diagnostics_str(mcmc.last_state)
    assert text.startswith("MILE, full batch | step size ") and text.endswith("(none expected)")


# ------------------------------------------------------------------ guardrails under stress


def test_minibatch_step_100x_too_large_is_contained(blr):
    mcmc = run_blr(blr, num_warmup=300, num_samples=300, num_chains=2, step_size=0.05)
    beta, stats = np.asarray(mcmc.get_samples()["beta"]), mcmc.get_extra_fields()
    assert np.isfinite(beta).all() and np.isfinite(np.asarray(stats["potential_energy"])).all()
    assert int(np.sum(stats["diverging"])) > 0


# ------------------------------------------------------------------ clear errors


def test_model_xor_potential_fn():
    with pytest.raises(ValueError, match=r"exactly one of `model`.*got both"):
        SMILE(linear_regression, potential_fn=gaussian_potential)
    with pytest.raises(ValueError, match="got neither"):
        SMILE()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_size": -1.0}, "step_size must be a positive"),
        ({"step_size": 0.0}, "step_size must be a positive"),
        ({"L": 0.0}, "L must be positive"),
        ({"adapt": False}, "adapt=False needs an explicit step_size"),
        ({"integrator": "yoshida"}, "integrator must be one of"),
        ({"batch_schedule": "random"}, "batch_schedule must be one of"),
        ({"reset_quantile": 1.5}, "reset_quantile must be in"),
        ({"desired_energy_var": -1.0}, "desired_energy_var must be a positive number"),
        ({"desired_energy_var": (0.5,)}, r"or a \(start, end\) pair"),
        # the mini-batch size of a model lives in its plate
        ({"subsample_size": 64}, r"declares its mini-batch size in its plate"),
        ({"data_size": 100, "subsample_size": 10}, r"for potential_fn only"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SMILE(linear_regression, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precondition": "yes"}, "precondition must be True or False, got 'yes'"),
        ({"adapt": 1}, "adapt must be True or False"),
        ({"step_size": "1e-3"}, "step_size must be a number"),
        ({"max_noise_angle": True}, "max_noise_angle must be a number"),
        ({"pretrain_steps": 10.5}, "pretrain_steps must be an int"),
    ],
)
def test_options_of_the_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=message):
        SMILE(linear_regression, **kwargs)


def sliced_by_hand(X, y, subsample_size=None):
    """Slices the data with the plate's indices instead of numpyro.subsample."""
    beta = numpyro.sample("beta", dist.Normal(0, 10.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("N", X.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("obs", dist.Normal(X[idx] @ beta, 1.0), obs=y[idx])


def test_numpy_data_sliced_by_hand_is_named_before_compiling(blr):
    """X[idx] on NumPy arrays fails only once the indices are traced: the error names
    numpyro.subsample; on JAX arrays the same model samples."""
    X, y = np.asarray(blr.X), np.asarray(blr.y)
    mcmc = MCMC(SMILE(sliced_by_hand), num_warmup=5, num_samples=5, progress_bar=False)
    with pytest.raises(ModelError, match=r"X\[idx\] on a NumPy array.*numpyro.subsample"):
        mcmc.run(jax.random.key(0), X, y, subsample_size=100)
    mcmc.run(jax.random.key(0), blr.X, blr.y, subsample_size=100)
    assert np.isfinite(np.asarray(mcmc.get_samples()["beta"])).all()


def test_bad_model_inputs_raise_at_run(blr):
    mcmc = MCMC(SMILE(linear_regression), num_warmup=5, num_samples=5, progress_bar=False)
    with pytest.raises(ModelError, match=r"larger than the data"):
        mcmc.run(jax.random.key(0), blr.X, blr.y, subsample_size=BLR_N + 1)
    with pytest.raises(ValueError, match=r"model_args\[1\] contains 1 non-finite"):
        mcmc.run(jax.random.key(0), blr.X, blr.y.at[5].set(jnp.nan), subsample_size=BATCH)
    with pytest.raises(ValueError, match=r"init_params must be a dict .* latent sites \['beta'\]"):
        mcmc.run(
            jax.random.key(0), blr.X, blr.y, subsample_size=BATCH, init_params={"b": jnp.zeros(6)}
        )
    with pytest.raises(
        ValueError, match=r"init_params\['beta'\] has shape \(3,\), expected \(6,\)"
    ):
        mcmc.run(
            jax.random.key(0),
            blr.X,
            blr.y,
            subsample_size=BATCH,
            init_params={"beta": jnp.zeros(3)},
        )


def test_data_changing_shape_between_warmup_and_run_is_rejected(blr):
    mcmc = MCMC(SMILE(linear_regression), num_warmup=5, num_samples=5, progress_bar=False)
    mcmc.warmup(jax.random.key(0), blr.X, blr.y, subsample_size=BATCH)
    half = BLR_N // 2
    with pytest.raises(ValueError, match=rf"changed shape.*model_args\[1\]: \({BLR_N},\) -> "):
        mcmc.run(jax.random.key(1), blr.X[:half], blr.y[:half], subsample_size=BATCH)


def test_potential_fn_needs_init_params():
    mcmc = MCMC(
        SMILE(potential_fn=gaussian_potential), num_warmup=5, num_samples=5, progress_bar=False
    )
    with pytest.raises(ValueError, match="needs init_params"):
        mcmc.run(jax.random.key(0))


def one_dimensional_model():
    numpyro.sample("x", dist.Normal(1.0, 2.0))


def one_dimensional_mean(y, subsample_size=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("N", y.shape[0], subsample_size=subsample_size):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=numpyro.subsample(y, event_dim=0))


def _one_dimensional_z(draws, truth_mean, truth_sd):
    """z-scores of the mean (from the ESS) and the relative sd error of 1-D draws."""
    ess = float(effective_sample_size(np.asarray(draws)[None]))
    mean_z = (float(np.mean(draws)) - truth_mean) / (truth_sd / np.sqrt(ess))
    return mean_z, float(np.std(draws)) / truth_sd - 1.0, ess


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "potential_fn", "minibatch"])
def test_one_dimensional_targets_sample_with_an_auxiliary_coordinate(kind):
    """MCLMC's velocity needs d >= 2: a 1-D target gets an independent N(0, 1) coordinate,
    carried along and dropped from the output; the target's marginal stays exact."""
    args, kwargs, init = (), {}, None
    if kind == "model":
        kernel, name, truth = SMILE(one_dimensional_model), "x", (1.0, 2.0)
    elif kind == "potential_fn":
        kernel, name, truth = (
            SMILE(potential_fn=lambda z: 0.125 * (z["t"] - 3.0) ** 2),
            "t",
            (3.0, 2.0),
        )
        init = {"t": jnp.zeros(4)}
    else:
        y = jax.random.normal(jax.random.key(3), (5000,)) + 0.5
        precision = 5000 + 1 / 100
        kernel, name = SMILE(one_dimensional_mean), "mu"
        truth = (float(jnp.sum(y)) / precision, 1 / np.sqrt(precision))
        args, kwargs = (y,), {"subsample_size": 250}
    mcmc = MCMC(
        kernel,
        num_warmup=1000,
        num_samples=4000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), *args, init_params=init, **kwargs)
    samples = mcmc.get_samples()
    assert set(samples) == {name}  # the auxiliary site is not part of the output
    assert set(az.from_numpyro(mcmc).posterior.data_vars) == {name}
    mean_z, sd_error, ess = _one_dimensional_z(samples[name], *truth)
    assert abs(mean_z) < 4, (mean_z, ess)
    # sd: Monte Carlo error sqrt(1 / (2 ESS)) ~ 2 percent at ESS >= 1000 (full batch); the
    # mini-batch variant adds its gradient-noise bias (measured 10 percent low at B = N / 20).
    assert abs(sd_error) < (0.08 if kind != "minibatch" else 0.2), (sd_error, ess)


def test_minibatch_potential_fn(blr):
    """``potential_fn(z, batch_indices)`` with data_size / subsample_size: SMILE without a model."""
    X, y = blr.X, blr.y

    def potential(z, idx):
        resid = y[idx] - X[idx] @ z["beta"]
        return 0.5 * BLR_N / idx.shape[0] * jnp.sum(resid**2) + 0.5 * jnp.sum(z["beta"] ** 2) / 100

    mcmc = MCMC(
        SMILE(potential_fn=potential, data_size=BLR_N, subsample_size=BATCH),
        num_warmup=1000,
        num_samples=4000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), init_params=blr.dispersed_init(4))
    beta = np.asarray(mcmc.get_samples()["beta"], np.float64)
    # Pooled ESS ~100 here: the mean's Monte Carlo error is ~0.1 sd, so allow 0.5 sd.
    assert np.all(np.abs(beta.mean(0) - blr.mean) / blr.sd < 0.5)


def test_two_subsample_plates_side_by_side():
    """Two data sets sharing a parameter, each in its own subsample plate: each plate gets its
    own batch schedule and N/B scaling; the posterior mean of the shared mean is exact."""
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.normal(1.0, 1.0, size=3000), jnp.float32)
    b = jnp.asarray(rng.normal(1.0, 2.0, size=500), jnp.float32)

    def model(a, b):
        mu = numpyro.sample("mu", dist.Normal(0, 10).expand([2]).to_event(1))
        with numpyro.plate("A", a.shape[0], subsample_size=100):
            numpyro.sample("a", dist.Normal(mu[0], 1.0), obs=numpyro.subsample(a, event_dim=0))
        with numpyro.plate("B", b.shape[0], subsample_size=50):
            numpyro.sample("b", dist.Normal(mu[1], 2.0), obs=numpyro.subsample(b, event_dim=0))

    kernel = SMILE(model)
    mcmc = MCMC(
        kernel,
        num_warmup=1000,
        num_samples=4000,
        num_chains=2,
        progress_bar=False,
        chain_method="vectorized",
    )
    mcmc.run(jax.random.key(0), a, b)
    assert kernel.subsample_plates == {"A": (3000, 100), "B": (500, 50)}
    mu = np.asarray(mcmc.get_samples()["mu"], np.float64)
    exact_mean = np.array([a.mean(), b.mean()])  # prior sd 10: negligible shrinkage
    exact_sd = np.array([1.0 / np.sqrt(3000), 2.0 / np.sqrt(500)])
    # Pooled ESS ~100 or more: the mean's Monte Carlo error is <= 0.1 sd; allow 0.4 sd.
    assert np.all(np.abs(mu.mean(0) - exact_mean) / exact_sd < 0.4)
    log_lik = az.from_numpyro(mcmc).log_likelihood
    assert log_lik["a"].shape[-1] == 3000 and log_lik["b"].shape[-1] == 500


def test_model_errors_surface_through_mcmc_run():
    for model, message in [
        (local_latent_model, "inside the subsampled plate"),
        (discrete_latent_model, "discrete"),
    ]:
        mcmc = MCMC(SMILE(model), num_warmup=5, num_samples=5, progress_bar=False)
        with pytest.raises(ModelError, match=message):
            mcmc.run(jax.random.key(0), jnp.zeros(100))


# ------------------------------------------------------------------ improper and masked priors


def flat_prior_means(ya, yb, prior="improper"):
    """Two means under a flat prior: the posterior is N(mean(ya), 1 / n) x N(mean(yb), 4 / n)."""
    if prior == "improper":
        mu = numpyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), (2,)))
    else:  # a proper prior switched off: NumPyro's mask(False), a flat log density
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).mask(False).to_event(1))
    with numpyro.plate("a", ya.shape[0]):
        numpyro.sample("ya", dist.Normal(mu[0], 1.0), obs=ya)
    with numpyro.plate("b", yb.shape[0]):
        numpyro.sample("yb", dist.Normal(mu[1], 2.0), obs=yb)


@pytest.mark.parametrize("prior", ["improper", "masked"])
def test_improper_and_masked_priors_sample_the_exact_posterior(prior):
    """NUTS samples flat priors (ImproperUniform, or a prior masked off); so must SMILE."""
    rng = np.random.default_rng(3)
    n = 50
    ya = rng.normal(1.0, 1.0, n).astype(np.float32)
    yb = rng.normal(-2.0, 2.0, n).astype(np.float32)
    mcmc = MCMC(
        SMILE(flat_prior_means),
        num_warmup=1000,
        num_samples=2000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), ya, yb, prior=prior)
    mu = np.asarray(mcmc.get_samples(group_by_chain=True)["mu"], np.float64)
    exact_mean = np.array([ya.mean(), yb.mean()])
    exact_sd = np.array([1.0, 2.0]) / np.sqrt(n)
    ess = az.ess(az.from_dict(posterior={"mu": mu}))["mu"].values
    z = (mu.mean((0, 1)) - exact_mean) / (exact_sd / np.sqrt(ess))
    assert np.all(np.abs(z) < 4), (mu.mean((0, 1)), exact_mean, ess)
    # sd: relative Monte Carlo error ~ 1 / sqrt(2 ESS) for a Gaussian marginal; 4 of those
    assert np.all(np.abs(mu.std((0, 1)) / exact_sd - 1) < 4 / np.sqrt(2 * ess)), ess


def test_ensemble_and_evaluate_accept_an_improper_prior():
    """The ensemble's InferenceData and evaluate read the model's structure without drawing
    from its priors, which an ImproperUniform cannot do."""
    from numpyro_smile import SMILEEnsemble, evaluate

    rng = np.random.default_rng(3)
    ya = rng.normal(1.0, 1.0, 50).astype(np.float32)
    yb = rng.normal(-2.0, 2.0, 50).astype(np.float32)
    ensemble = SMILEEnsemble(
        flat_prior_means,
        num_members=2,
        num_warmup=500,
        num_samples=1000,
        thinning=1,
        pretrain_epochs=5,
    )
    idata = ensemble.run(jax.random.key(0), ya, yb)
    mean = idata.posterior["mu"].mean(("chain", "draw")).values
    sd = np.array([1.0, 2.0]) / np.sqrt(50)
    # 2,000 draws, ESS at least a few hundred: the mean is within a fifth of an sd
    np.testing.assert_array_less(np.abs(mean - [ya.mean(), yb.mean()]), 0.2 * sd)
    assert idata.log_likelihood["ya"].shape == (2, 1000, 50)
    assert np.isfinite(evaluate(flat_prior_means, idata, ya, yb, site="ya")["lppd"])
