"""The stochastic-gradient family (SGLD, SGHMC, AdaSGHMC, cyclical schedules): BlackJAX's steps,
exact-posterior moments on a Bayesian linear regression, errors, ArviZ and the ensemble."""

from __future__ import annotations

import math
from functools import partial

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC

from numpyro_smile import (
    SGHMC,
    SGLD,
    AdaSGHMC,
    ModelError,
    PolynomialDecay,
    SMILEEnsemble,
    cyclical,
    select_step_size,
    sgmcmc,
    targets,
)
from numpyro_smile.sampler import Target
from numpyro_smile.schedules import ConstantSchedule, CyclicalSchedule

from .conftest import BLR_N, discrete_latent_model, linear_regression, local_latent_model

BATCH = 256
KERNELS = {"SGLD": SGLD, "SGHMC": SGHMC, "AdaSGHMC": AdaSGHMC}
#: Small step sizes that mix on the tests' regression (N = 1e4, posterior sd ~ 0.01).
SMALL = {"SGLD": 1e-6, "SGHMC": 3e-4, "AdaSGHMC": 7e-3}


# ------------------------------------------------------------------ BlackJAX's steps


@pytest.fixture(scope="module")
def problem(blr):
    """The regression as the core's target, with N / B-scaled mini-batches of 256."""
    return targets.model_problem(
        linear_regression, blr.X, blr.y, subsample_size=BATCH, rng_key=jax.random.key(0)
    )


def _one_chain(problem, config):
    plan = sgmcmc.make_sg_plan(config, problem.plates, 0, problem.position.shape[0])
    kernel = sgmcmc.build_sg_kernel(plan)
    position = problem.position + 0.01  # off the init point: a non-trivial gradient
    state = kernel.init(position, jax.random.key(3), problem.target)
    return kernel, state, position


def _blackjax_grad(problem):
    def grad_estimator(x, indices):
        return jax.grad(problem.target.logdensity_fn)(x, indices)

    return grad_estimator


def _assert_step_equal(ours, theirs):
    # float32: the two round a few operations differently (alpha * eps vs alpha), ~1 ulp of x
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=1e-6)


def test_one_sgld_step_equals_blackjax(problem):
    import blackjax.sgmcmc.sgld as blackjax_sgld

    eps = 1e-6
    kernel, state, x = _one_chain(problem, sgmcmc.SGConfig("SGLD", ConstantSchedule(eps)))
    (batch,) = [jnp.arange(BATCH) + 7]
    batch = {"N": batch}
    key = jax.random.key(11)
    # the step moves with the cached gradient, i.e. on the batch state.logdensity_grad saw
    new = kernel.transition(state, key, batch, problem.target)
    key_move = jax.random.split(key)[0]
    theirs = blackjax_sgld.build_kernel()(
        key_move, x, _blackjax_grad(problem), _init_batch(problem, state, x), eps
    )
    _assert_step_equal(jax.flatten_util.ravel_pytree(new.z)[0], theirs)
    assert not bool(new.diverging) and int(new.i) == 1


def _init_batch(problem, state, x):
    """The batch of the state's cached gradient (the first of the epoch schedule)."""
    plates = tuple(problem.plates.items())
    schedules = jax.random.split(jax.random.key(3))[0]
    batches = targets.batching.schedules_init(plates, schedules, "epoch")
    indices = targets.batching.schedules_next(plates, batches, schedules)[1]
    grad = jax.grad(problem.target.logdensity_fn)(x, indices)
    np.testing.assert_array_equal(grad, state.logdensity_grad)  # the batch is the one
    return indices


def test_one_sghmc_step_equals_blackjax_diffusion(problem):
    from blackjax.sgmcmc.diffusions import sghmc as blackjax_sghmc

    eps, decay, beta = 1e-4, 0.1, 2.0
    config = sgmcmc.SGConfig("SGHMC", ConstantSchedule(eps), decay, noise_estimate=beta)
    kernel, state, x = _one_chain(problem, config)
    key = jax.random.key(5)
    new = kernel.transition(state, key, {"N": jnp.arange(BATCH)}, problem.target)
    key_noise = jax.random.split(jax.random.split(key)[0], 1)[0]
    grad = jax.grad(problem.target.logdensity_fn)(x, _init_batch(problem, state, x))
    position, momentum = blackjax_sghmc(alpha=decay / eps, beta=beta)(
        key_noise, x, state.momentum, grad, eps
    )
    _assert_step_equal(jax.flatten_util.ravel_pytree(new.z)[0], position)
    np.testing.assert_allclose(new.momentum, momentum, rtol=1e-5, atol=1e-5)


def test_sghmc_with_blackjax_protocol_equals_its_kernel(problem):
    """10 steps on one mini-batch from a fresh momentum: BlackJAX's sghmc kernel."""
    import blackjax.sgmcmc.sghmc as blackjax_sghmc

    eps, decay = 1e-4, 0.1
    config = sgmcmc.SGConfig(
        "SGHMC", ConstantSchedule(eps), decay, num_integration_steps=10, refresh_momentum=True
    )
    kernel, state, x = _one_chain(problem, config)
    key = jax.random.key(6)
    new = kernel.transition(state, key, {"N": jnp.arange(BATCH)}, problem.target)
    theirs = blackjax_sghmc.build_kernel(alpha=decay / eps)(
        jax.random.split(key)[0],
        x,
        _blackjax_grad(problem),
        _init_batch(problem, state, x),
        eps,
        10,
    )
    _assert_step_equal(jax.flatten_util.ravel_pytree(new.z)[0], theirs)


# ------------------------------------------------------------------ exact-posterior moments


def _run_core(problem, start, config, num_chains=8, num_warmup=500, num_samples=4000, thinning=4):
    """Draws ``(chains, draws, d)`` of the core, vectorized, from ``start`` (the posterior
    mean: as from a pretrained member; warmup then only adapts AdaSGHMC's mass)."""
    dim = problem.position.shape[0]
    plan = sgmcmc.make_sg_plan(config, problem.plates, num_warmup, dim)
    kernel = sgmcmc.build_sg_kernel(plan, num_chains)

    @jax.jit
    def run(position):
        keys = jax.random.split(jax.random.key(1), num_chains)
        state = jax.vmap(kernel.init, (None, 0, None))(position, keys, problem.target)
        state = state._replace(rng_key=jax.random.key(2))

        def steps(state, _):
            state = jax.lax.fori_loop(
                0, thinning, lambda _, s: kernel.step(s, problem.target), state
            )
            return state, (state.z["beta"], state.diverging)

        state = jax.lax.fori_loop(0, num_warmup, lambda _, s: kernel.step(s, problem.target), state)
        _, (draws, diverging) = jax.lax.scan(steps, state, length=num_samples // thinning)
        return jnp.swapaxes(draws, 0, 1), diverging

    draws, diverging = run(jnp.asarray(start, jnp.float32))
    assert not bool(diverging.any())
    return np.asarray(draws, np.float64)


def _moments(draws, blr):
    """Standardised mean errors, their Monte Carlo standard errors and the sd ratios."""
    ess = np.asarray(effective_sample_size(draws))
    z = (draws.mean((0, 1)) - blr.mean) / blr.sd
    mcse = draws.std((0, 1)) / np.sqrt(ess) / blr.sd
    return z, mcse, draws.std((0, 1)) / blr.sd, ess


@pytest.fixture(scope="module")
def small_step_runs(problem, blr):
    configs = {
        "SGLD": sgmcmc.SGConfig("SGLD", ConstantSchedule(SMALL["SGLD"])),
        "SGHMC": sgmcmc.SGConfig("SGHMC", ConstantSchedule(SMALL["SGHMC"]), 0.1),
        "AdaSGHMC": sgmcmc.SGConfig("AdaSGHMC", ConstantSchedule(SMALL["AdaSGHMC"]), 0.1),
    }
    return {name: _run_core(problem, blr.mean, config) for name, config in configs.items()}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_small_step_matches_the_exact_posterior(small_step_runs, blr, method):
    """Means within 4 Monte Carlo standard errors plus a discretisation budget of 0.05 sd
    (the gradient is linear in beta, so the stationary mean has no step-size bias; the budget
    covers float32 and the finite warmup); sds within 20 percent (the injected noise
    dominates the gradient noise at these step sizes: predicted inflation below 10 percent)."""
    z, mcse, sd_ratio, ess = _moments(small_step_runs[method], blr)
    print(method, "z", z.round(3), "mcse", mcse.round(3), "sd", sd_ratio.round(3), "ess", ess)
    assert np.all(ess > 30), ess
    assert np.all(np.abs(z) < 4 * mcse + 0.05), (z, mcse)
    assert np.all(np.abs(sd_ratio - 1) < 0.2), sd_ratio


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("SGLD", sgmcmc.SGConfig("SGLD", ConstantSchedule(1e-5))),
        ("SGHMC", sgmcmc.SGConfig("SGHMC", ConstantSchedule(2e-3), 0.1)),
    ],
)
def test_large_step_inflates_the_variance(problem, blr, method, config):
    """The known bias: at a large step the mini-batch gradient noise (variance eps^2 N^2 / B
    Var[grad log p_i] per step, above the injected 2 eps or 2 alpha) inflates the posterior
    variance; the means stay unbiased (linear gradient)."""
    draws = _run_core(problem, blr.mean, config, num_warmup=100, num_samples=4000)
    z, mcse, sd_ratio, _ = _moments(draws, blr)
    print(method, "large", z.round(3), sd_ratio.round(3))
    assert np.all(sd_ratio > 1.2), sd_ratio
    assert np.all(np.abs(z) < 4 * mcse + 0.1 * sd_ratio), (z, mcse)


@pytest.mark.parametrize("signal", [0.0, 1.0, 3.0])
def test_scale_adaptation_keeps_a_memory(signal):
    """AdaSGHMC's V from gradients N(signal, 1): near E[g^2] = signal^2 + 1 on every
    coordinate. Where the mean gradient was about its noise or more, the memory used to fall
    to tau = 1 for good (the new gradient weighted 1 / tau' = 1, so gbar^2 = V and tau' = 1
    again) and V froze as one gradient squared (here, at signal 1: every coordinate, 5
    percent below 0.01 E[g^2], masses ten times too small; on yacht's MLP: 89-99 percent of
    the coordinates after warmup)."""
    grads = signal + jax.random.normal(jax.random.key(0), (600, 2000))
    state = sgmcmc.scale_adaptation_init(grads[0])
    state, _ = jax.lax.scan(
        lambda s, g: (sgmcmc.scale_adaptation_update(s, g), None), state, grads[1:]
    )
    ratio = np.asarray(state.square) / (signal**2 + 1)
    assert np.all(np.asarray(state.tau) > 1)
    assert np.quantile(ratio, 0.05) > 0.25, np.quantile(ratio, [0.05, 0.5])
    assert abs(np.median(ratio) - 1) < 0.25, np.median(ratio)


def test_guardrail_rejects_non_finite_steps():
    """A step onto -inf log density (outside |x| < 1) is rejected, counted, never drawn."""

    def logdensity(x, indices):
        return jnp.where(jnp.all(jnp.abs(x) < 1), -0.5 * jnp.sum(x**2), -jnp.inf)

    target = Target(logdensity, lambda x: {"x": x})
    for config in (
        sgmcmc.SGConfig("SGLD", ConstantSchedule(0.5)),
        sgmcmc.SGConfig("SGHMC", ConstantSchedule(0.5), 0.1),
    ):
        kernel = sgmcmc.build_sg_kernel(sgmcmc.make_sg_plan(config, (), 0, 2))
        state = kernel.init(jnp.zeros(2), jax.random.key(0), target)

        def step(state, _, kernel=kernel):
            state = kernel.step(state, target)
            return state, (state.z["x"], state.diverging)

        state, (xs, diverging) = jax.lax.scan(step, state, length=200)
        assert np.all(np.isfinite(xs)) and np.all(np.abs(xs) < 1)
        assert 0 < int(diverging.sum()) == int(state.num_resets) < 200


# ------------------------------------------------------------------ schedules


def test_cyclical_schedule_curve_and_kept_draws():
    """Zhang et al.'s cosine: eps_0 at each cycle's start, eps_0 / 2 at its middle; the
    first ``exploration`` share of every cycle explores, as does warmup before ``start``."""
    schedule = cyclical(1.0, num_steps=40, num_cycles=4, exploration=0.5).resolve(num_warmup=5)
    assert schedule == CyclicalSchedule(1.0, 10, 0.5, 5)
    i = jnp.arange(45)
    eps = np.asarray(schedule(i))
    np.testing.assert_allclose(eps[:5], 1.0)
    cycle = eps[5:15]
    expected = 0.5 * (np.cos(np.pi * np.arange(10) / 10) + 1)
    np.testing.assert_allclose(cycle, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(eps[15:25], cycle)
    keep = schedule.keep(i)
    assert not keep[:10].any()
    assert list(keep[5:15]) == [False] * 5 + [True] * 5
    assert keep.sum() == 4 * 5
    decay = PolynomialDecay(1.0, 1.0, 0.5)
    np.testing.assert_allclose(decay(jnp.array([0, 3])), [1.0, 0.5])


# ------------------------------------------------------------------ kernels, errors, ArviZ


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SGLD(linear_regression), r"SGLD needs a step_size.*select_step_size"),
        (lambda: SGLD(linear_regression, step_size=-1.0), "positive finite"),
        (lambda: SGLD(linear_regression, step_size=math.nan), "positive finite"),
        (lambda: SGHMC(linear_regression, step_size=1e-3, momentum_decay=0.0), "momentum_decay"),
        (lambda: SGHMC(linear_regression, step_size=1e-3, noise_estimate=-1), "noise_estimate"),
        (
            lambda: SGHMC(linear_regression, step_size=1e-3, num_integration_steps=0),
            "num_integration_steps",
        ),
        (
            lambda: SGLD(linear_regression, step_size=CyclicalSchedule(1e-3, 10, 1.5)),
            r"SGLD: CyclicalSchedule.exploration must be in \[0, 1\)",
        ),
        (lambda: cyclical(1e-3, num_steps=10, num_cycles=0), "num_cycles"),
        (lambda: SGLD(linear_regression, step_size=PolynomialDecay(1.0, 0.5)), "b must be"),
        (lambda: AdaSGHMC(linear_regression, batch_schedule="x"), "batch_schedule"),
        (lambda: SGHMC(linear_regression, lambda z: 0.0, step_size=1.0), "exactly one of"),
    ],
)
def test_bad_settings_name_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_model_errors_are_smiles(blr, name):
    """The same catalogue as SMILE's, raised before anything compiles."""

    def mcmc(model):
        kernel = KERNELS[name](model, step_size=1e-6)
        return MCMC(kernel, num_warmup=5, num_samples=5, progress_bar=False)

    for model, message in [
        (local_latent_model, "inside the subsampled plate"),
        (discrete_latent_model, "discrete"),
    ]:
        with pytest.raises(ModelError, match=message):
            mcmc(model).run(jax.random.key(0), jnp.zeros(100))
    with pytest.raises(ModelError, match=r"larger than the data"):
        mcmc(linear_regression).run(jax.random.key(0), blr.X, blr.y, subsample_size=BLR_N + 1)
    with pytest.raises(ValueError, match=r"model_args\[1\] contains 1 non-finite"):
        mcmc(linear_regression).run(
            jax.random.key(0), blr.X, blr.y.at[5].set(jnp.nan), subsample_size=BATCH
        )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SGLD(linear_regression, step_size=cyclical(1e-6, 40, 2)), id="cSGLD"),
        pytest.param(lambda: SGHMC(linear_regression, step_size=3e-4), id="SGHMC"),
        pytest.param(lambda: AdaSGHMC(linear_regression, step_size=3e-3), id="AdaSGHMC"),
    ],
)
def test_mcmc_and_from_numpyro(blr, make):
    """Vectorized chains through NumPyro's MCMC; az.from_numpyro's log-likelihood over all N;
    step_size and diverging in sample_stats (and exploring with a cyclical schedule)."""
    kernel = make()
    mcmc = MCMC(
        kernel,
        num_warmup=20,
        num_samples=40,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.key(0), blr.X, blr.y, subsample_size=BATCH, init_params=blr.dispersed_init(2)
    )
    idata = az.from_numpyro(mcmc)
    assert idata.log_likelihood["obs"].shape == (2, 40, BLR_N)
    stats = set(idata.sample_stats.data_vars)
    assert {"step_size", "diverging", "lp"} <= stats
    assert ("exploring" in stats) == kernel.cyclical
    assert np.isfinite(idata.posterior["beta"].values).all()
    assert not idata.sample_stats["diverging"].values.any()
    assert kernel.mode.endswith(f"B={BATCH} of N={BLR_N}")
    if kernel.cyclical:  # the tail of each of the two 20-step cycles is kept
        assert (~idata.sample_stats["exploring"].values).sum(1).tolist() == [20, 20]


# ------------------------------------------------------------------ the ensemble


@pytest.fixture(scope="module")
def small(blr):
    """A 2000-point slice of the regression (the ensemble tests only check structure)."""
    return blr.X[:2000], blr.y[:2000]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: SGLD(m, step_size=cyclical(1e-6, 20, 2)), id="cSGLD"),
        pytest.param(lambda m: SGHMC(m, step_size=5e-4), id="SGHMC"),
        pytest.param(lambda m: AdaSGHMC(m), id="AdaSGHMC"),
    ],
)
def test_ensemble_runs_each_kernel(small, blr, make):
    model = partial(linear_regression, subsample_size=100)
    kernel = make(model)
    ensemble = SMILEEnsemble(
        model, kernel=kernel, num_members=2, num_warmup=10, num_samples=20, thinning=2,
        pretrain_epochs=0, progress_bar=False,
    )  # fmt: skip
    idata = ensemble.run(jax.random.key(0), *small, init_params=blr.dispersed_init(2))
    groups = {"posterior", "log_likelihood", "sample_stats", "observed_data", "pretrained"}
    assert set(idata.groups()) == groups  # SMILE's: the members' starting points included
    # cSGLD: the draws after steps 1, 3, ..., 9 of each 10-step cycle; r = 0.1, 0.3 explore
    draws = 6 if kernel.cyclical else 10
    assert idata.posterior["beta"].shape == (2, draws, 6)
    assert idata.log_likelihood["obs"].shape == (2, draws, 2000)
    assert set(idata.sample_stats.data_vars) == {"lp", "step_size", "diverging", "resets"}
    assert np.isfinite(idata.posterior["beta"].values).all()
    assert idata.posterior.attrs["sampler"] == ensemble.plan.variant
    assert ensemble.plan.variant == ("cSGLD" if kernel.cyclical else kernel.name)


def test_ensemble_resumes_an_sg_kernel_exactly(small, blr, tmp_path):
    """A checkpoint of AdaSGHMC chains (momentum, frozen moments, batch schedules) after warmup,
    resumed in a new ensemble, continues the draws of the uninterrupted run."""
    model = partial(linear_regression, subsample_size=100)

    def ensemble():
        return SMILEEnsemble(
            model, kernel=AdaSGHMC(model), num_members=2, num_warmup=10, num_samples=10,
            thinning=2, pretrain_epochs=0, log_likelihood=False, progress_bar=False,
        )  # fmt: skip

    uninterrupted = ensemble()
    full = uninterrupted.run(jax.random.key(0), *small, init_params=blr.dispersed_init(2))
    path = uninterrupted.save_state(tmp_path / "warm.npz", uninterrupted.post_warmup_state)
    resumed = ensemble().run(jax.random.key(1), *small, resume_from=path)
    np.testing.assert_array_equal(full.posterior["beta"].values, resumed.posterior["beta"].values)
    assert resumed.posterior.attrs["resumed_at_step"] == 10


def test_ensemble_kernel_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        SMILEEnsemble(linear_regression, kernel=numpyro_smile_smile(), config=_config())
    with pytest.raises(TypeError, match="kernel must be a kernel of numpyro_smile"):
        SMILEEnsemble(linear_regression, kernel=object())


def numpyro_smile_smile():
    from numpyro_smile import SMILE

    return SMILE(linear_regression)


def _config():
    from numpyro_smile import SMILEConfig

    return SMILEConfig()


def test_select_step_size_reports_every_point(small, blr):
    model = partial(linear_regression, subsample_size=100)
    valid = (blr.X[2000:2500], blr.y[2000:2500])
    selection = select_step_size(
        lambda s: SGLD(model, step_size=s), [1e-7, 1e-1], model, *small,
        rng_key=jax.random.key(0), validation=valid, init_params=blr.dispersed_init(2),
        num_members=2, num_warmup=10, num_samples=10, thinning=2, max_extensions=0,
    )  # fmt: skip
    assert [p.step_size for p in selection.grid] == [1e-7, 1e-1]
    assert selection.step_size == 1e-7  # 1e-1 is far beyond SGLD's stability limit (~1/N)
    assert selection.grid[1].valid_lppd < selection.grid[0].valid_lppd
    for point in selection.grid:
        assert point.wall_s > 0 and point.grad_evals == pytest.approx(2 * 20 * 100 / 2000)
    assert selection.grid_grad_evals == pytest.approx(selection.grid[1].grad_evals)


def test_select_step_size_refuses_run_away_members_and_extends_past_an_edge(small, blr):
    """From zeros, 20 steps: the larger the stable step, the nearer the posterior, so the grid's
    top edge is best and is extended; at 1e-3 (the stability limit ~1 / N) a member runs away
    with finite draws, and that point is refused although its pooled LPPD is finite."""
    model = partial(linear_regression, subsample_size=100)
    valid = (blr.X[2000:2500], blr.y[2000:2500])
    start = {"beta": jnp.zeros((2, blr.X.shape[1]), jnp.float32)}
    selection = select_step_size(
        lambda s: SGLD(model, step_size=s), [1e-6, 1e-5], model, *small,
        rng_key=jax.random.key(0), validation=valid, init_params=start,
        num_members=2, num_warmup=10, num_samples=10, thinning=2,
    )  # fmt: skip
    tried = [p.step_size for p in selection.grid]
    np.testing.assert_allclose(tried, [1e-6, 1e-5, 1e-4, 1e-3], rtol=1e-6)
    assert [p.accepted for p in selection.grid] == [True, True, True, False]
    run_away = selection.grid[3]
    assert math.isfinite(run_away.valid_lppd)
    assert run_away.valid_lppd - min(run_away.member_lppd) > 5.0
    assert selection.step_size == tried[2]
    assert all(len(p.member_lppd) == 2 for p in selection.grid)


def test_select_step_size_arguments_are_checked(small, blr):
    model = partial(linear_regression, subsample_size=100)
    valid = (blr.X[2000:2500], blr.y[2000:2500])
    for grid, extra, message in [
        ([], {}, "step_sizes is empty"),
        ([1e-6, -1.0], {}, "positive and finite"),
        ([1e-6], {"max_extensions": -1}, "max_extensions"),
        ([1e-6], {"max_member_gap": float("nan")}, "max_member_gap"),
    ]:
        with pytest.raises(ValueError, match=message):
            select_step_size(
                lambda s: SGLD(model, step_size=s), grid, model, *small,
                rng_key=jax.random.key(0), validation=valid, **extra,
            )  # fmt: skip
