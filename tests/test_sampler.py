"""The functional core :mod:`numpyro_smile.sampler` on hand-written targets: ``make_plan`` and
``Plan``, and ``build_kernel``'s ``init``/``step`` (purity, vectorization, resets, dtypes,
tracing, and a short full-batch run against a Gaussian's moments)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size

from numpyro_smile import sampler, tuning
from numpyro_smile.batching import PlateInfo
from numpyro_smile.config import SMILEConfig
from numpyro_smile.sampler import Target

MU = jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])
SD = jnp.array([0.5, 1.0, 2.0, 1.5, 0.8])
N, B = 200, 20
PLATES = (("data", PlateInfo(N, B)),)
PRIOR_SD = 10.0
NUM_CHAINS = 4


def unravel(x):
    return {"x": x}


def gaussian_logdensity(x, indices):
    assert indices == {}  # full batch: no plate, no indices
    return -0.5 * jnp.sum(((x - MU) / SD) ** 2)


GAUSSIAN = Target(gaussian_logdensity, unravel)


def minibatch_target(data):
    """y_j ~ N(x, I) with prior N(0, 10^2 I): the N / B-scaled log density on a batch."""

    def logdensity(x, indices):
        batch = data[indices["data"]]
        prior = -jnp.sum(x**2) / (2 * PRIOR_SD**2)
        return prior - (N / B) * jnp.sum((batch - x) ** 2) / 2

    def prior_potential(x):
        return jnp.sum(x**2) / (2 * PRIOR_SD**2)

    return Target(logdensity, unravel, prior_potential_fn=prior_potential)


@pytest.fixture(scope="module")
def data():
    return jax.random.normal(jax.random.key(1), (N, 3)) + jnp.array([0.5, -1.0, 2.0])


@pytest.fixture(scope="module")
def minibatch(data):
    """A pSMILE kernel for one chain and for NUM_CHAINS, their target and jitted functions."""
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=0), PLATES, num_warmup=100, dim=3)
    target = minibatch_target(data)
    one = sampler.build_kernel(plan)
    many = sampler.build_kernel(plan, NUM_CHAINS)
    return {
        "plan": plan,
        "target": target,
        "init": jax.jit(lambda x, key: one.init(x, key, target)),
        "step": jax.jit(lambda s: one.step(s, target)),
        "step_many": jax.jit(lambda s: many.step(s, target)),
        "kernel": one,
    }


NUM_WARMUP = 1000


@pytest.fixture(scope="module")
def full_batch():
    """MILE (full batch, tuned) on the 5-d Gaussian, one chain and NUM_CHAINS: ``init`` of one
    chain, ``run(state, n)`` (n steps in a ``fori_loop``) and ``draws(states)`` (NUM_CHAINS)."""
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=0), {}, num_warmup=NUM_WARMUP, dim=5)
    kernel = sampler.build_kernel(plan)
    many = sampler.build_kernel(plan, NUM_CHAINS)

    def loop(kernel):
        return jax.jit(
            lambda s, n: jax.lax.fori_loop(0, n, lambda _, s: kernel.step(s, GAUSSIAN), s)
        )

    @jax.jit
    def draws(states):
        def draw(s, _):
            s = many.step(s, GAUSSIAN)
            return s, s.z["x"]

        return jax.lax.scan(draw, states, None, length=4000)

    return {
        "plan": plan,
        "kernel": kernel,
        "init": jax.jit(lambda x, key: kernel.init(x, key, GAUSSIAN)),
        "run": loop(kernel),
        "run_many": loop(many),
        "draws": draws,
    }


def stack(states, key):
    """NUM_CHAINS single-chain states as one vectorized state with the single key ``key``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)._replace(rng_key=key)


def assert_trees_equal(a, b, rtol=None):
    """Bit-identical leaves (``rtol=None``) or close ones; keys compared by their data."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if rtol is None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


# --------------------------------------------------------------------------------------------
# make_plan and Plan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "plates", "variant", "mode", "precondition"),
    [
        (SMILEConfig(), PLATES, "pSMILE", "pSMILE, B=20 of N=200", True),
        (SMILEConfig(precondition=False), PLATES, "SMILE", "SMILE, B=20 of N=200", False),
        (
            SMILEConfig(adapt=False, step_size=0.1),
            PLATES,
            "pSMILE",
            "pSMILE-naive, B=20 of N=200",
            True,
        ),
        (SMILEConfig(), {}, "MILE", "MILE, full batch", False),
        (SMILEConfig(precondition=True), {}, "MILE", "MILE, full batch", True),
        (SMILEConfig(adapt=False, step_size=0.1), {}, "MILE", "MCLMC, full batch", False),
    ],
)
def test_plan_mode_from_plates(config, plates, variant, mode, precondition):
    plan = sampler.make_plan(config, plates, num_warmup=100, dim=3)
    assert (plan.variant, plan.mode, plan.precondition) == (variant, mode, precondition)
    assert plan.plates == tuple(dict(plates).items())
    assert (plan.num_warmup, plan.dim) == (100, 3)


def test_plan_mode_names_every_plate():
    plates = {"a": PlateInfo(100, 10), "b": PlateInfo(50, 5)}
    plan = sampler.make_plan(SMILEConfig(), plates, num_warmup=10, dim=2)
    assert plan.mode == "pSMILE, B=10 of N=100, B=5 of N=50"
    assert plan.plates == (("a", PlateInfo(100, 10)), ("b", PlateInfo(50, 5)))


def test_plates_as_dict_or_tuple_give_the_same_hashable_plan():
    from_dict = sampler.make_plan(SMILEConfig(), dict(PLATES), 10, 3)
    from_tuple = sampler.make_plan(SMILEConfig(), PLATES, 10, 3)
    assert from_dict == from_tuple and hash(from_dict) == hash(from_tuple)


@pytest.mark.parametrize(
    ("given", "default", "stored"),
    [
        (None, tuning.ACCURATE_ENERGY_VAR, (5e-4, 5e-4)),  # SMILE's default
        (None, tuning.MILE_ENERGY_VAR, (0.5, 0.1)),  # the ensemble's recipe
        (0.01, tuning.MILE_ENERGY_VAR, (0.01, 0.01)),  # the user's value wins
    ],
)
def test_desired_energy_var_default_comes_from_the_caller(given, default, stored):
    config = SMILEConfig(desired_energy_var=given)
    plan = sampler.make_plan(config, {}, 100, 3, default_energy_var=default)
    assert plan.config.desired_energy_var == stored
    assert (plan.mclmc.energy_var_start, plan.mclmc.energy_var_end) == stored
    assert config.desired_energy_var == (None if given is None else stored)  # not mutated
    assert plan.config.replace(desired_energy_var=None) == config.replace(desired_energy_var=None)


def test_desired_energy_var_default_when_called_without_one():
    plan = sampler.make_plan(SMILEConfig(), PLATES, 100, 3)
    assert plan.config.desired_energy_var == (tuning.ACCURATE_ENERGY_VAR,) * 2


@pytest.mark.parametrize(
    ("config", "plates", "num_warmup", "has_phases"),
    [
        (SMILEConfig(), {}, 100, True),
        (SMILEConfig(), PLATES, 100, False),  # mini-batches: the energy-error tuner
        (SMILEConfig(adapt=False, step_size=0.1), {}, 100, False),
        (SMILEConfig(), {}, 0, False),  # no warmup, nothing to tune
    ],
)
def test_mile_phases_only_in_full_batch_with_adaptation_and_warmup(
    config, plates, num_warmup, has_phases
):
    plan = sampler.make_plan(config, plates, num_warmup, 3)
    assert (plan.mclmc is not None) == has_phases
    if has_phases:
        phases = (plan.mclmc.num_phase1, plan.mclmc.num_phase2, plan.mclmc.num_phase3)
        assert phases == (80, 10, 10)
        assert plan.mclmc.tune_L


def test_a_given_L_is_not_tuned():
    plan = sampler.make_plan(SMILEConfig(L=2.0), {}, 100, 3)
    assert not plan.mclmc.tune_L and plan.mclmc.num_phase3 == 0


@pytest.mark.parametrize("dim", [0, 1])
def test_make_plan_needs_two_dimensions(dim):
    with pytest.raises(ValueError, match=f"at least 2 latent dimensions.*d = {dim}"):
        sampler.make_plan(SMILEConfig(), {}, 10, dim)


@pytest.mark.parametrize(
    ("config", "plates", "rate"),
    [
        (SMILEConfig(), PLATES, 0.02),
        (SMILEConfig(reset_quantile=0.9), PLATES, 0.1),
        (SMILEConfig(reset_quantile=1.0), PLATES, 0.0),
        (SMILEConfig(reset_quantile=0.9), {}, 0.0),  # full batch: only non-finite steps
    ],
)
def test_expected_reset_rate(config, plates, rate):
    plan = sampler.make_plan(config, plates, 10, 3)
    assert plan.expected_reset_rate == pytest.approx(rate, abs=1e-12)


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------


def test_full_batch_init(full_batch):
    x0 = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    state = full_batch["init"](x0, jax.random.key(0))
    np.testing.assert_array_equal(state.z["x"], x0)  # no pretraining with pretrain_steps=0
    np.testing.assert_allclose(state.potential_energy, -gaussian_logdensity(x0, {}), rtol=1e-6)
    np.testing.assert_allclose(state.logdensity_grad, -(x0 - MU) / SD**2, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(state.momentum), 1.0, rtol=1e-6)
    assert int(state.i) == 0 and int(state.num_resets) == 0 and not bool(state.diverging)
    np.testing.assert_allclose(state.step_size, 1e-2)  # DEFAULT_STEP_SIZE_FULL_BATCH
    np.testing.assert_allclose(state.L, 15.0)  # max(sqrt(d), 15)
    assert state.grad_noise is None and state.batches is None


def test_minibatch_init_starts_at_the_capped_noise_limit(minibatch, data):
    x0 = jnp.array([0.3, -0.3, 1.0])
    state = minibatch["init"](x0, jax.random.key(0))
    plan = minibatch["plan"]
    scale = jax.jit(tuning.gradient_noise_scale)(state.grad_noise)
    limit = tuning.noise_limited_step_size(state.grad_noise, scale, plan.config.max_noise_angle)
    np.testing.assert_allclose(state.step_size, min(float(limit), 1e-3), rtol=1e-5)
    np.testing.assert_allclose(state.step_size_factor, state.step_size / limit, rtol=1e-5)
    assert float(state.L) == np.inf  # no partial refresh on mini-batches by default
    assert int(state.batches["data"].count) == 1  # the batch of the initial gradient
    # The prior's curvature in noise units floors the preconditioner: (N / B) / PRIOR_SD^2.
    np.testing.assert_allclose(state.grad_noise.floor, np.full(3, (N / B) / PRIOR_SD**2), 1e-5)


def test_pretraining_moves_the_start_towards_the_mode():
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=200, pretrain_learning_rate=0.1), {}, 10, 5)
    kernel = sampler.build_kernel(plan)
    state = jax.jit(lambda x, k: kernel.init(x, k, GAUSSIAN))(jnp.zeros(5), jax.random.key(0))
    distance = float(jnp.linalg.norm(state.z["x"] - MU))
    assert distance < 0.1 * float(jnp.linalg.norm(MU))
    np.testing.assert_allclose(
        state.potential_energy, -gaussian_logdensity(state.z["x"], {}), rtol=1e-5
    )


def test_value_and_grad_sanitises_only_minibatch_gradients(minibatch):
    def wild(x, indices):
        return jnp.sum(jnp.array([jnp.sqrt(x[0]), 1e9 * x[1], -1e9 * x[2]]))

    target = Target(wild, unravel)
    x = jnp.array([0.0, 1.0, 1.0])  # d sqrt(x) / dx = inf at 0
    _, grad = minibatch["kernel"].value_and_grad(target, {})(x)
    np.testing.assert_array_equal(grad, [sampler.GRADIENT_CLIP, 1e6, -1e6])
    full = sampler.build_kernel(sampler.make_plan(SMILEConfig(), {}, 10, 3))
    _, raw = full.value_and_grad(target, {})(x)
    np.testing.assert_array_equal(raw, [np.inf, 1e9, -1e9])


# --------------------------------------------------------------------------------------------
# step: purity, vectorization, dtypes, resets, tracing
# --------------------------------------------------------------------------------------------


def test_init_and_step_are_pure(minibatch, full_batch):
    x0 = jnp.array([0.3, -0.3, 1.0])
    first = minibatch["init"](x0, jax.random.key(2))
    assert_trees_equal(first, minibatch["init"](x0, jax.random.key(2)))
    assert_trees_equal(minibatch["step"](first), minibatch["step"](first))
    other = minibatch["init"](x0, jax.random.key(3))
    assert not np.array_equal(first.momentum, other.momentum)  # the key matters

    state = full_batch["init"](jnp.zeros(5), jax.random.key(2))
    after = full_batch["run"](state, 25)
    assert_trees_equal(after, full_batch["run"](state, 25))
    assert int(after.i) == 25 and not np.array_equal(after.z["x"], state.z["x"])


def test_vectorized_minibatch_step_equals_vmapped_single_chain_step(minibatch):
    """Without partial refresh a mini-batch step draws no random numbers (the epoch schedule
    is keyed per chain, and no chain is reset during the burn-in): the vectorized step is
    the single-chain step vmapped over the chains."""
    positions = jax.random.normal(jax.random.key(4), (NUM_CHAINS, 3))
    keys = jax.random.split(jax.random.key(5), NUM_CHAINS)
    vectorized = stack(map(minibatch["init"], positions, keys), jax.random.key(6))
    per_chain = vectorized._replace(rng_key=jax.random.split(jax.random.key(7), NUM_CHAINS))
    step_one = jax.jit(jax.vmap(minibatch["step"]))
    for _ in range(5):
        vectorized = minibatch["step_many"](vectorized)
        per_chain = step_one(per_chain)
    assert vectorized.rng_key.shape == ()  # one key for all chains
    assert int(vectorized.num_resets.sum()) == 0
    for field in sampler.SMILEState._fields:
        if field != "rng_key":
            assert_trees_equal(getattr(vectorized, field), getattr(per_chain, field), rtol=1e-5)
    assert len({tuple(np.asarray(i)) for i in vectorized.z["x"]}) == NUM_CHAINS


def test_vectorized_full_batch_step_refreshes_each_chain_with_its_own_key(full_batch):
    """In full batch the vectorized step splits ONE key into a key per chain: chains started
    from the same point with the same momentum move apart; the shapes are per chain."""
    one = full_batch["init"](jnp.zeros(5), jax.random.key(8))
    new = full_batch["run_many"](stack([one] * NUM_CHAINS, jax.random.key(9)), 1)
    for field in ("z", "potential_energy", "momentum", "step_size", "L", "tuner"):
        for leaf, ref in zip(
            jax.tree.leaves(getattr(new, field)), jax.tree.leaves(getattr(one, field))
        ):
            assert leaf.shape == (NUM_CHAINS, *ref.shape) and leaf.dtype == ref.dtype
    assert new.rng_key.shape == ()
    momenta = np.asarray(new.momentum)
    assert len({tuple(m) for m in momenta}) == NUM_CHAINS
    np.testing.assert_allclose(np.linalg.norm(momenta, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(new.i, np.ones(NUM_CHAINS))


def test_step_keeps_the_dtype_of_every_leaf():
    """A target that computes its log density in float32 from a bfloat16 position: the state
    stays in the dtypes ``init`` gave it, step after step."""

    def logdensity(x, indices):
        return -0.5 * jnp.sum(x.astype(jnp.float32) ** 2)

    target = Target(logdensity, unravel)
    # L tuned: phase III's ESS (an FFT, which XLA has for float32/64 only) runs on a float32
    # copy of the bfloat16 trace.
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=0), {}, 20, 4)
    kernel = sampler.build_kernel(plan)
    state = jax.jit(lambda x, k: kernel.init(x, k, target))(
        jnp.ones(4, jnp.bfloat16), jax.random.key(0)
    )
    assert state.z["x"].dtype == jnp.bfloat16 and state.momentum.dtype == jnp.bfloat16
    after = jax.jit(lambda s: jax.lax.fori_loop(0, 30, lambda _, s: kernel.step(s, target), s))(
        state
    )
    before_dtypes = [leaf.dtype for leaf in jax.tree.leaves(state)]
    assert [leaf.dtype for leaf in jax.tree.leaves(after)] == before_dtypes
    assert int(after.i) == 30
    assert float(after.L) != float(state.L) and np.isfinite(float(after.L))  # phase III ran


def nan_away_from(x0, logdensity):
    """A target equal to ``logdensity`` at x0 and NaN at every other point."""

    def fn(x, indices):
        return jnp.where(jnp.all(x == x0), logdensity(x, indices), jnp.nan)

    return fn


@pytest.mark.parametrize("mode", ["full batch", "mini-batch"])
def test_reset_keeps_the_position_and_redraws_the_velocity(mode, data):
    x0 = jnp.array([0.5, -0.5, 1.5])
    if mode == "full batch":
        base = Target(lambda x, i: -0.5 * jnp.sum(x**2), unravel)
        plates = {}
    else:
        base = minibatch_target(data)
        plates = PLATES
    target = base._replace(logdensity_fn=nan_away_from(x0, base.logdensity_fn))
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=0), plates, 10, 3)
    kernel = sampler.build_kernel(plan)
    state = jax.jit(lambda x, k: kernel.init(x, k, target))(x0, jax.random.key(0))
    assert np.isfinite(state.potential_energy)
    new = jax.jit(lambda s: kernel.step(s, target))(state)
    assert bool(new.diverging) and int(new.num_resets) == 1 and int(new.i) == 1
    np.testing.assert_array_equal(new.z["x"], x0)
    np.testing.assert_array_equal(new.potential_energy, state.potential_energy)
    np.testing.assert_array_equal(new.logdensity_grad, state.logdensity_grad)
    assert float(new.energy_change) == 0.0  # the non-finite dE is not kept
    np.testing.assert_allclose(jnp.linalg.norm(new.momentum), 1.0, rtol=1e-5)
    assert not np.allclose(new.momentum, state.momentum)  # a fresh uniform direction
    assert np.isfinite(new.step_size) and float(new.step_size) > 0


def test_step_is_traced_once_for_many_steps(full_batch):
    """Under ``fori_loop`` with a traced count, the step (and the target inside it) is traced
    once per compilation, whatever the number of steps."""
    kernel = full_batch["kernel"]
    traces = {"step": 0, "logdensity": 0}

    def logdensity(x, indices):
        traces["logdensity"] += 1
        return gaussian_logdensity(x, indices)

    target = Target(logdensity, unravel)

    def step(state):
        traces["step"] += 1
        return kernel.step(state, target)

    run = jax.jit(lambda s, n: jax.lax.fori_loop(0, n, lambda _, s: step(s), s))
    state = full_batch["init"](jnp.zeros(5), jax.random.key(10))
    three = run(state, 3)
    assert traces["step"] == 1 and traces["logdensity"] > 0
    traced_logdensity = traces["logdensity"]
    many = run(state, 300)
    assert traces == {"step": 1, "logdensity": traced_logdensity}
    assert int(three.i) == 3 and int(many.i) == 300

    assert_trees_equal(full_batch["run"](state, 3), three, rtol=1e-6)  # the same chain


def test_mile_sets_L_from_the_trace_after_the_last_warmup_step(full_batch):
    """The tuner's ``final`` runs once, on the step that ends warmup; afterwards step size
    and L stay fixed."""
    run = full_batch["run"]
    state = run(full_batch["init"](jnp.zeros(5), jax.random.key(14)), NUM_WARMUP - 1)
    ended = run(state, 1)
    tuner = full_batch["plan"].mclmc
    expected = tuning.mclmc_tuner_L_from_trace(ended.tuner, tuner, ended.step_size)
    np.testing.assert_allclose(ended.L, expected, rtol=1e-6)
    assert float(ended.L) != float(state.L)
    later = run(ended, 50)
    assert (float(later.L), float(later.step_size)) == (float(ended.L), float(ended.step_size))


# --------------------------------------------------------------------------------------------
# A short full-batch run against the exact moments
# --------------------------------------------------------------------------------------------


def test_mile_recovers_the_mean_and_variance_of_a_gaussian(full_batch):
    """4 chains, 1000 warmup steps and 4000 draws of MILE (BlackJAX's Var[dE] / d = 5e-4).

    Tolerances from the Monte Carlo error: the mean within 5 sd, sd = SD / sqrt(ESS(x)); the
    variance within 5 sd, sd = sqrt(2) SD^2 / sqrt(ESS((x - MU)^2)) (Gaussian fourth moment),
    plus 3 percent for the integrator's bias at this energy error.
    """
    starts = jax.random.normal(jax.random.key(11), (NUM_CHAINS, 5))
    keys = jax.random.split(jax.random.key(12), NUM_CHAINS)
    states = stack(map(full_batch["init"], starts, keys), jax.random.key(13))
    states = full_batch["run_many"](states, NUM_WARMUP)
    assert np.all(np.asarray(states.i) == NUM_WARMUP)
    final, draws = full_batch["draws"](states)
    draws = np.swapaxes(np.asarray(draws, np.float64), 0, 1)  # (chains, draws, d)
    assert int(final.num_resets.sum()) == 0
    assert np.all(np.isfinite(final.L)) and np.all(final.L != 15.0)  # L tuned in warmup

    mu, sd = np.asarray(MU), np.asarray(SD)
    ess = effective_sample_size(draws)
    assert np.all(ess > 200), ess
    mean_error = np.abs(draws.mean(axis=(0, 1)) - mu)
    assert np.all(mean_error < 5 * sd / np.sqrt(ess)), (mean_error, sd / np.sqrt(ess))

    squares = (draws - mu) ** 2
    ess_squares = effective_sample_size(squares)
    variance = squares.mean(axis=(0, 1))
    tolerance = 5 * np.sqrt(2) * sd**2 / np.sqrt(ess_squares) + 0.03 * sd**2
    assert np.all(np.abs(variance - sd**2) < tolerance), (variance / sd**2, tolerance / sd**2)
