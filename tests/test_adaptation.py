"""The parts of :mod:`numpyro_smile.adaptation`: the three tuners' protocol, the gradient-noise
models, the prior's curvature and the noise-limited step-size rule (one chain, pure JAX)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size as numpyro_ess

from numpyro_smile import adaptation, tuning
from numpyro_smile.adaptation import StepOutcome, StepParams
from numpyro_smile.batching import PlateInfo

DIM = 4
KEY = jax.random.key(0)


def outcome(energy_change=0.1, finite=True, warming_up=True, position=None, proposal=None):
    """A :class:`StepOutcome` of one step on a ``DIM``-dimensional problem."""
    position = jnp.zeros(DIM) if position is None else position
    proposal = position + 0.1 if proposal is None else proposal
    return StepOutcome(
        jnp.asarray(energy_change, jnp.float32),
        jnp.asarray(finite),
        position,
        proposal,
        jnp.ones(DIM),
        jnp.asarray(warming_up),
    )


def energy_tuner(adapt=True, adapt_during_sampling=False, step_size=None, L=None):
    return adaptation.energy_error_tuner(
        tuning.EnergyTunerConfig(),
        adapt=adapt,
        adapt_during_sampling=adapt_during_sampling,
        step_size=step_size,
        L=L,
    )


def mclmc_tuner(num_warmup=100, step_size=None, L=None, tune_L=True):
    config = tuning.mclmc_tuner_config(num_warmup, DIM, tune_L=tune_L)
    return adaptation.mclmc_tuner(config, step_size=step_size, L=L), config


def typical(n, warming_up=True):
    """Outcomes with |dE| ~ Gamma(2, 0.05), the energy tuner's own model (fixed seed)."""
    errors = np.random.default_rng(0).gamma(2.0, 0.05, size=n)
    return [outcome(e, warming_up=warming_up) for e in errors]


def feed(tuner, state, params, outcomes):
    """Run ``tuner.update`` over a list of outcomes; returns the final state, all params, resets."""
    update = jax.jit(tuner.update)
    history, resets = [], []
    for o in outcomes:
        state, params, reset = update(state, params, o)
        history.append(params)
        resets.append(bool(reset))
    return state, history, np.array(resets)


# --------------------------------------------------------------------------------------------
# Tuner.init
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", ["energy", "mclmc", "fixed"])
def test_init_gives_scalar_params_of_the_requested_dtype(name, dtype):
    tuner = {
        "energy": energy_tuner(),
        "mclmc": mclmc_tuner()[0],
        "fixed": adaptation.fixed_tuner(step_size=None, L=None),
    }[name]
    _, params = tuner.init(KEY, DIM, dtype, jnp.asarray(0.5, dtype))
    assert isinstance(params, StepParams)
    for leaf in params:
        assert leaf.shape == () and leaf.dtype == dtype


@pytest.mark.parametrize(
    ("limit", "step_size", "expected_step", "expected_factor"),
    [
        (0.5, None, 1e-3, 1e-3 / 0.5),  # the limit is above the cap: start at 1e-3
        (2e-4, None, 2e-4, 1.0),  # below the cap: start at the limit, f = 1
        (0.5, 0.01, 0.01, 0.01 / 0.5),  # an explicit step size, f = step / limit
        (1e-3, 0.01, 1e-3, 1.0),  # capped at the limit, f = 1 (step_size=1.0: start there)
    ],
)
def test_energy_tuner_starts_at_the_capped_noise_limit(
    limit, step_size, expected_step, expected_factor
):
    state, params = energy_tuner(step_size=step_size).init(KEY, DIM, jnp.float32, limit)
    np.testing.assert_allclose(params.step_size, expected_step, rtol=1e-6)
    np.testing.assert_allclose(params.step_size_factor, expected_factor, rtol=1e-6)
    assert float(params.L) == math.inf  # no partial refresh without an L
    assert int(state.count) == 1


def test_energy_tuner_without_adaptation_keeps_a_given_step_above_the_limit():
    tuner = adaptation.energy_error_tuner(
        tuning.EnergyTunerConfig(), adapt=False, adapt_during_sampling=False, step_size=0.01, L=None
    )
    _, params = tuner.init(KEY, DIM, jnp.float32, 1e-3)
    np.testing.assert_allclose(params.step_size, 0.01, rtol=1e-6)


def test_energy_tuner_keeps_a_given_L():
    _, params = energy_tuner(L=3.0).init(KEY, DIM, jnp.float32, 0.5)
    assert float(params.L) == 3.0


@pytest.mark.parametrize(
    ("dim", "L", "expected_L"), [(4, None, 15.0), (400, None, 20.0), (4, 2.5, 2.5)]
)
def test_mclmc_tuner_init(dim, L, expected_L):
    config = tuning.mclmc_tuner_config(100, dim)
    tuner = adaptation.mclmc_tuner(config, step_size=None, L=L)
    state, params = tuner.init(KEY, dim, jnp.float32, None)
    np.testing.assert_allclose(params.step_size, adaptation.DEFAULT_STEP_SIZE_FULL_BATCH)
    np.testing.assert_allclose(params.L, expected_L, rtol=1e-6)  # max(sqrt(d), 15) by default
    assert float(params.step_size_factor) == 1.0
    assert state.trace.shape == (config.trace_length, config.trace_dims)


def test_fixed_tuner_init():
    _, params = adaptation.fixed_tuner(step_size=None, L=None).init(KEY, 9, jnp.float32, None)
    np.testing.assert_allclose(params, [adaptation.DEFAULT_STEP_SIZE_FULL_BATCH, 1.0, 3.0])
    _, params = adaptation.fixed_tuner(step_size=0.3, L=2.0).init(KEY, 9, jnp.float32, None)
    np.testing.assert_allclose(params, [0.3, 1.0, 2.0])


# --------------------------------------------------------------------------------------------
# Tuner.update
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["energy", "mclmc", "fixed"])
@pytest.mark.parametrize("warming_up", [True, False])
def test_non_finite_outcome_resets_for_every_tuner(name, warming_up):
    tuner = {
        "energy": energy_tuner(),
        "mclmc": mclmc_tuner()[0],
        "fixed": adaptation.fixed_tuner(step_size=0.1, L=1.0),
    }[name]
    state, params = tuner.init(KEY, DIM, jnp.float32, jnp.asarray(0.5))
    bad = outcome(jnp.nan, finite=False, warming_up=warming_up, proposal=jnp.full(DIM, jnp.nan))
    state, new_params, reset = tuner.update(state, params, bad)
    assert bool(reset)
    assert all(bool(jnp.isfinite(leaf)) or float(leaf) == math.inf for leaf in new_params)
    _, _, reset = tuner.update(state, new_params, outcome(0.01, warming_up=warming_up))
    assert not bool(reset)  # a finite, small step right after is accepted
    # a non-finite position with a finite dE (no real step gives one) is reset as well
    odd = outcome(0.01, finite=False, warming_up=warming_up, proposal=jnp.full(DIM, jnp.inf))
    assert bool(tuner.update(state, new_params, odd)[2])


def test_fixed_tuner_never_changes_params():
    tuner = adaptation.fixed_tuner(step_size=0.2, L=1.5)
    state, params = tuner.init(KEY, DIM, jnp.float32, None)
    for o in [outcome(0.01), outcome(1e4), outcome(-3.0, warming_up=False), outcome(0.0)]:
        state, new_params, reset = tuner.update(state, params, o)
        assert state is None and not bool(reset)
        for new, old in zip(new_params, params):
            assert new is old  # the very same arrays


def test_energy_tuner_adapts_the_factor_after_burn_in():
    """With ``adapt=True`` an atypically large |dE| after the burn-in shrinks f by delta."""
    tuner = energy_tuner()
    state, params = tuner.init(KEY, DIM, jnp.float32, 0.5)
    state, history, _ = feed(tuner, state, params, typical(100))
    _, after, _ = feed(tuner, state, history[-1], [outcome(5.0)])  # 50 mean |dE|
    ratio = float(after[0].step_size_factor / history[-1].step_size_factor)
    np.testing.assert_allclose(ratio, 1 - tuning.EnergyTunerConfig().adapt_rate, rtol=1e-5)
    assert float(after[0].step_size) == float(params.step_size)  # the rule sets step_size


def test_energy_tuner_factor_is_capped_at_one():
    tuner = energy_tuner()
    state, params = tuner.init(KEY, DIM, jnp.float32, 1e-4)  # f = 1 from the start
    state, history, _ = feed(tuner, state, params, typical(100))
    _, after, _ = feed(tuner, state, history[-1], [outcome(1e-6)] * 30)  # grow 30 times
    factors = [float(p.step_size_factor) for p in [*history, *after]]
    assert max(factors) == 1.0  # 1.02^30 = 1.8 without the cap
    assert factors[-5:] == [1.0] * 5


@pytest.mark.parametrize(
    ("adapt", "adapt_during_sampling", "warming_up", "changes"),
    [
        (False, False, True, False),  # the naive variant: f frozen
        (False, True, False, False),
        (True, False, False, False),  # after warmup without adapt_during_sampling: frozen
        (True, True, False, True),  # the paper's: keeps adapting
        (True, False, True, True),
    ],
)
def test_energy_tuner_freezes_f_but_keeps_the_guardrail(
    adapt, adapt_during_sampling, warming_up, changes
):
    """Whether f changes follows (adapt, adapt_during_sampling, warming_up); the quantile
    guardrail resets an extreme |dE| after the burn-in in every case, and never during it."""
    tuner = energy_tuner(adapt=adapt, adapt_during_sampling=adapt_during_sampling)
    state, params = tuner.init(KEY, DIM, jnp.float32, 0.5)
    burn_in = tuning.EnergyTunerConfig().burn_in
    early = [outcome(0.1)] * (burn_in - 2) + [outcome(1e3, warming_up=warming_up)]
    _, _, resets = feed(tuner, state, params, early)
    assert not resets.any()  # an extreme |dE| inside the burn-in is accepted
    state, history, resets = feed(tuner, state, params, typical(100, warming_up))
    assert resets.mean() < 0.1  # about 1 - 0.98 of typical steps
    _, after, resets_after = feed(tuner, state, history[-1], [outcome(1e3, warming_up=warming_up)])
    assert resets_after[0]
    factors = [float(p.step_size_factor) for p in [params, *history, *after]]
    assert (len(set(factors)) > 1) == changes
    if not changes:
        assert set(factors) == {float(params.step_size_factor)}


def test_mclmc_tuner_tunes_during_warmup_only():
    tuner, _ = mclmc_tuner(num_warmup=100)
    state, params = tuner.init(KEY, DIM, jnp.float32, None)
    big = outcome(5.0, warming_up=True)
    new_state, new_params, reset = tuner.update(state, params, big)
    assert not bool(reset)
    assert float(new_params.step_size) < float(params.step_size)  # dE^2 / d >> 5e-1
    assert int(new_state.count) == 1
    frozen_state, frozen_params, _ = tuner.update(state, params, outcome(5.0, warming_up=False))
    jax.tree.map(np.testing.assert_array_equal, frozen_state, state)
    jax.tree.map(np.testing.assert_array_equal, frozen_params, params)


def test_mclmc_tuner_non_finite_step_caps_the_step_size():
    tuner, _ = mclmc_tuner(num_warmup=100)
    state, params = tuner.init(KEY, DIM, jnp.float32, None)
    bad = outcome(jnp.nan, finite=False, proposal=jnp.full(DIM, jnp.nan))
    state, new_params, reset = tuner.update(state, params, bad)
    assert bool(reset)
    assert float(new_params.step_size) <= 0.8 * float(params.step_size) * (1 + 1e-6)
    assert np.isfinite(state.moment_x).all() and np.isfinite(state.trace).all()


@pytest.mark.parametrize(
    ("num_warmup", "tune_L", "has_final"),
    [(100, True, True), (5, True, True), (100, False, False), (1, True, True)],
)
def test_mclmc_final_exists_only_with_phase_three(num_warmup, tune_L, has_final):
    tuner, config = mclmc_tuner(num_warmup=num_warmup, tune_L=tune_L)
    assert (config.num_phase3 > 0) == has_final
    assert (tuner.final is not None) == has_final


def test_mclmc_final_sets_L_from_the_phase_three_trace():
    """After a whole warmup, ``final`` sets L = 0.4 * eps * mean_i(n3 / ESS_i) from the
    positions the tuner saw in phase III (iid here, so ESS ~ n3), and nothing else."""
    num_warmup = 500  # phases 400 / 50 / 50
    tuner, config = mclmc_tuner(num_warmup=num_warmup)
    state, params = tuner.init(KEY, DIM, jnp.float32, None)
    positions = jax.random.normal(jax.random.key(1), (num_warmup, DIM))

    def body(carry, x):
        state, params = carry
        o = outcome(0.01, position=jnp.zeros(DIM), proposal=x)
        state, params, _ = tuner.update(state, params, o)
        return (state, params), None

    (state, params), _ = jax.lax.scan(body, (state, params), positions)
    final = tuner.final(state, params)
    phase3 = np.asarray(positions[config.num_phase1 + config.num_phase2 :])
    assert config.trace_stride == 1
    np.testing.assert_array_equal(np.asarray(state.trace), phase3)
    ess = numpyro_ess(phase3[None])  # NumPyro's estimator; the tuner's agrees within 5 percent
    expected = 0.4 * float(params.step_size) * np.mean(config.num_phase3 / ess)
    np.testing.assert_allclose(float(final.L), expected, rtol=0.05)
    assert float(final.L) != float(params.L)
    assert float(final.step_size) == float(params.step_size)
    assert float(final.step_size_factor) == float(params.step_size_factor)


# --------------------------------------------------------------------------------------------
# Gradient noise and the prior's curvature
# --------------------------------------------------------------------------------------------


def test_prior_curvature_is_exact_for_a_factorised_gaussian_prior():
    scales = jnp.array([0.1, 0.5, 1.0, 2.0, 30.0])

    def prior_potential(x):
        return jnp.sum(x**2 / (2 * scales**2))

    position = jax.random.normal(jax.random.key(3), (5,))
    curvature = adaptation.prior_curvature(prior_potential, position, jax.random.key(4))
    np.testing.assert_allclose(curvature, 1 / scales**2, rtol=1e-5)


def test_prior_curvature_follows_the_position_for_a_non_gaussian_prior():
    """sum x^4 / 4 has Hessian diag(3 x^2): the probes are exact for any factorised prior."""
    position = jnp.array([0.5, -1.0, 2.0])
    curvature = adaptation.prior_curvature(lambda x: jnp.sum(x**4) / 4, position, jax.random.key(5))
    np.testing.assert_allclose(curvature, 3 * position**2, rtol=1e-5)


def test_prior_curvature_without_a_prior_is_zero():
    position = jnp.ones(3, jnp.float16)
    curvature = adaptation.prior_curvature(None, position, KEY)
    assert curvature.dtype == jnp.float16
    np.testing.assert_array_equal(curvature, np.zeros(3))


@pytest.mark.parametrize(
    ("num_warmup", "adapt_during_sampling", "learns"),
    [(10, False, [True, True, False, False]), (10, True, [True, True, True, True])],
)
def test_minibatch_noise_learns_while_the_tuner_adapts(num_warmup, adapt_during_sampling, learns):
    noise = adaptation.minibatch_noise(
        (("data", PlateInfo(100, 10)),),
        precondition=True,
        num_warmup=num_warmup,
        adapt_during_sampling=adapt_during_sampling,
    )
    steps = jnp.array([0, 9, 10, 1000])
    assert [bool(noise.learning(i)) for i in steps] == learns


def test_full_batch_noise_learns_for_its_window_only():
    noise = adaptation.full_batch_noise(num_learning_steps=8)
    assert [bool(noise.learning(i)) for i in jnp.array([0, 7, 8, 100])] == [
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize("precondition", [True, False])
def test_noise_scale_is_the_preconditioner_or_ones(precondition):
    noise = adaptation.minibatch_noise(
        (("data", PlateInfo(100, 10)),),
        precondition=precondition,
        num_warmup=10,
        adapt_during_sampling=False,
    )
    state = tuning.GradientNoiseState(jnp.zeros(3), jnp.array([1.0, 2.0, 4.0]), jnp.zeros(3))
    scale = noise.scale(state, jnp.zeros(3))
    expected = tuning.gradient_noise_scale(state) if precondition else np.ones(3)
    np.testing.assert_allclose(scale, expected)
    assert precondition == (not np.allclose(scale, 1.0))


N, B = 50, 5


@pytest.fixture(scope="module")
def data():
    return jax.random.normal(jax.random.key(6), (N, 3)) * jnp.array([1.0, 3.0, 0.1])


def test_minibatch_noise_init_from_random_batches(data):
    """Mean and std of the gradient over ``NUM_NOISE_PROBES`` batches; floor = (N / B) times
    the prior's curvature. The batches are those the documented key derivation draws."""
    plates = (("data", PlateInfo(N, B)),)
    noise = adaptation.minibatch_noise(
        plates, precondition=True, num_warmup=10, adapt_during_sampling=False
    )
    position = jnp.array([0.3, -0.2, 1.0])

    def value_and_grad_at(indices):
        def loglik(x):
            return -(N / B) * jnp.sum((data[indices["data"]] - x) ** 2) / 2

        return jax.value_and_grad(loglik)

    def prior_potential(x):
        return jnp.sum(x**2) / (2 * 4.0)

    key = jax.random.key(7)
    state = noise.init(position, value_and_grad_at, prior_potential, key)

    key_noise, _ = jax.random.split(key)
    (key_plate,) = jax.random.split(key_noise, 1)
    idx = jax.random.randint(key_plate, (adaptation.NUM_NOISE_PROBES, B), 0, N, jnp.int32)
    grads = np.stack([(N / B) * np.sum(data[i] - position, axis=0) for i in np.asarray(idx)])
    np.testing.assert_allclose(state.mean, grads.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.std, grads.std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(state.floor, np.full(3, (N / B) / 4.0), rtol=1e-5)


def test_minibatch_noise_init_without_noise_hits_the_variance_floor():
    """A batch-independent gradient has no noise: std is the 1e-7 variance floor's root."""
    noise = adaptation.minibatch_noise(
        (("data", PlateInfo(N, B)),), precondition=False, num_warmup=1, adapt_during_sampling=False
    )
    position = jnp.array([1.0, 2.0])

    def value_and_grad_at(indices):
        return jax.value_and_grad(lambda x: -jnp.sum(x**2) / 2)

    state = noise.init(position, value_and_grad_at, None, KEY)
    np.testing.assert_allclose(state.mean, -position, rtol=1e-6)
    np.testing.assert_allclose(state.std, np.sqrt(1e-7), rtol=1e-3)
    np.testing.assert_array_equal(state.floor, np.zeros(2))


def test_full_batch_noise_init_starts_at_ones_with_the_prior_floor():
    noise = adaptation.full_batch_noise(num_learning_steps=5)
    position = jnp.array([1.0, 2.0, 3.0])
    state = noise.init(position, None, lambda x: jnp.sum(x**2) / (2 * 0.25), KEY)
    np.testing.assert_array_equal(state.mean, np.ones(3))
    np.testing.assert_array_equal(state.std, np.ones(3))
    np.testing.assert_allclose(state.floor, np.full(3, 4.0), rtol=1e-5)


@pytest.mark.parametrize(
    ("adapt_during_sampling", "i", "changes"),
    [
        (False, 0, True),
        (False, 9, True),
        (False, 10, False),
        (False, 500, False),
        (True, 500, True),
    ],
)
def test_noise_limited_rule_sets_the_step_size_only_while_adapting(
    adapt_during_sampling, i, changes
):
    noise = adaptation.minibatch_noise(
        (("data", PlateInfo(N, B)),),
        precondition=False,
        num_warmup=10,
        adapt_during_sampling=adapt_during_sampling,
    )
    rule = adaptation.noise_limited_rule(
        noise, max_noise_angle=0.2, num_warmup=10, adapt_during_sampling=adapt_during_sampling
    )
    state = tuning.GradientNoiseState(jnp.zeros(DIM), jnp.full(DIM, 2.0), jnp.zeros(DIM))
    params = StepParams(jnp.asarray(0.123), jnp.asarray(0.5), jnp.asarray(7.0))
    new = rule(params, state, jnp.zeros(DIM), jnp.asarray(i))
    limit = 0.2 * (DIM - 1) / (2.0 * math.sqrt(DIM))  # max_angle (d - 1) / |s sigma|
    expected = 0.5 * limit if changes else 0.123
    np.testing.assert_allclose(new.step_size, expected, rtol=1e-6)
    assert float(new.step_size_factor) == 0.5 and float(new.L) == 7.0
