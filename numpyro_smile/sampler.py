"""The functional core of the MCLMC family: ``build_kernel(config, plan) -> (init, step)``.

Pure JAX, no NumPyro: a sampler is a pair of functions over a NamedTuple state, as in BlackJAX
(``init`` and ``build_kernel``) and optax (``init``/``update``). The NumPyro kernel
(:class:`~numpyro_smile.SMILE`) and the ensemble driver are thin adapters over it; a new
kernel follows the same pattern (see the docs' Architecture page).

A sampler is composed of parts chosen once, when it is built (:mod:`numpyro_smile.adaptation`):

============  ================================  =============================================
variant       gradients                         parts
============  ================================  =============================================
pSMILE        fresh mini-batch per step,        gradient-noise model (preconditioner),
              sanitised                         energy-error tuner + reset guardrail,
                                                noise-limited step size
SMILE         same                              same, preconditioner off (the noise model
                                                only limits the step size)
MILE          full data                         MCLMC tuner (energy variance, L from variances
                                                and ESS), partial velocity refresh
naive         either                            tuner without adaptation (``adapt=False``)
============  ================================  =============================================

The target enters as a :class:`Target` of functions of flat ``(d,)`` parameters, so data can be
passed at every call (traced, never baked into the compiled step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from numpyro_smile import adaptation, batching, convergence, dynamics, pretrain, tuning
from numpyro_smile.config import SMILEConfig, energy_var_schedule

__all__ = [
    "ENERGY_ROUNDING_SHARE",
    "GRADIENT_CLIP",
    "MEMBERS_CHECK",
    "Plan",
    "SMILEKernel",
    "SMILEState",
    "Target",
    "WarmupCheck",
    "build_kernel",
    "describe",
    "expected_reset_rate",
    "make_plan",
    "preconditioned",
]

#: Gradient sanitising in mini-batch mode (as SMILE's reference code does): NaN -> 0, then clip.
GRADIENT_CLIP = 1e6
#: Full batch: dE comes from per-datum differences once the potential's float rounding
#: exceeds this share of the targeted |dE| (see ``_needs_per_datum_energy``).
ENERGY_ROUNDING_SHARE = 0.05


class SMILEState(NamedTuple):
    """State of one chain (or, in vectorized mode, of all chains: every field but ``rng_key``
    then has a leading ``(num_chains,)`` axis).

    Attributes:
        i: iteration counter; adaptation runs while ``i < num_warmup``.
        z: dict of unconstrained latent values (the sample field).
        potential_energy: -log p at ``z``; a mini-batch estimate in SMILE mode, whose noise sd
            is about N / sqrt(B) times the per-datum log-likelihood sd.
        energy_change: energy error dE of the last proposed step (0 when it was non-finite).
        step_size: step size epsilon for the next step (path length in preconditioned units).
        step_size_factor: mini-batch mode: the SMILE controller's factor f <= 1 on the
            noise-limited step size (epsilon = f * limit while adapting).
        L: momentum decoherence length (``inf``: no partial refresh, SMILE's default).
        diverging: True when the guardrail rejected the last step (a "reset").
        num_resets: resets so far (int32).
        momentum: ``(d,)`` unit velocity (redrawn uniformly after a reset).
        logdensity_grad: ``(d,)`` cached raw gradient of log p at ``z``.
        tuner: the tuner's statistics (SMILE: ``EnergyTunerState``; MILE:
            ``MCLMCTunerState``; ``None`` without adaptation in full batch).
        grad_noise: running mean/std of the raw gradient: pSMILE's preconditioner and the
            noise-limited step size (``None`` in full batch without preconditioning).
        batches: ``{plate: EpochBatchState}`` batch schedules (``None`` for full batch).
        monitor: statistics of the second half of warmup for the end-of-warmup convergence
            check (:mod:`numpyro_smile.convergence`; ``None`` when the check is off).
        rng_key: a single PRNG key (also in vectorized mode).
    """

    i: jax.Array
    z: dict
    potential_energy: jax.Array
    energy_change: jax.Array
    step_size: jax.Array
    step_size_factor: jax.Array
    L: jax.Array
    diverging: jax.Array
    num_resets: jax.Array
    momentum: jax.Array
    logdensity_grad: jax.Array
    tuner: Any
    grad_noise: tuning.GradientNoiseState | None
    batches: dict | None
    monitor: convergence.MonitorState | None
    rng_key: jax.Array


class Target(NamedTuple):
    """The distribution to sample, as functions of flat ``(d,)`` parameters.

    Attributes:
        logdensity_fn: ``(x, indices) -> log p(x)``, a scalar; ``indices`` is
            ``{plate: (B,) int32}`` (the N / B-scaled mini-batch estimate) or ``{}``.
        unravel: ``(d,)`` flat vector -> the pytree of unconstrained values (``z``).
        logdensity_terms_fn: full batch only (optional): ``x -> [per-datum log densities]``,
            whose differences give dE without the rounding of a large potential.
        prior_potential_fn: ``x -> -log prior(x)`` (optional): its curvature floors the
            gradient-noise preconditioner.
    """

    logdensity_fn: Callable
    unravel: Callable
    logdensity_terms_fn: Callable | None = None
    prior_potential_fn: Callable | None = None


class Plan(NamedTuple):
    """What a run of a config needs to know about its problem (static, hashable).

    Build it with :func:`make_plan`. Attributes: ``config`` (:class:`SMILEConfig`, with
    ``desired_energy_var`` resolved), ``plates`` (``((name, PlateInfo(N, B)), ...)``, empty
    for full batch), ``num_warmup``, ``dim`` (d, the number of flat parameters),
    ``precondition`` (resolved), ``mclmc`` (the full-batch tuner's schedule, or ``None``).
    """

    config: SMILEConfig
    plates: tuple
    num_warmup: int
    dim: int
    precondition: bool
    mclmc: tuning.MCLMCTunerConfig | None

    @property
    def variant(self) -> str:
        """``"pSMILE"``, ``"SMILE"`` (mini-batches) or ``"MILE"`` (full batch)."""
        if not self.plates:
            return "MILE"
        return "pSMILE" if self.precondition else "SMILE"

    @property
    def mode(self) -> str:
        """The variant in words, e.g. ``"pSMILE, B=256 of N=10000"``, ``"MILE, full batch"``."""
        return describe(self.config, dict(self.plates), self.precondition)

    @property
    def expected_reset_rate(self) -> float:
        """Share of steps the guardrail resets by design: ``1 - reset_quantile`` on
        mini-batches (the quantile rule), 0 in full batch (only non-finite steps reset)."""
        return expected_reset_rate(self.config, self.plates)


def preconditioned(config: SMILEConfig, plates: Any) -> bool:
    """Whether the gradient-noise preconditioner runs: ``config.precondition``, or, when it
    is ``None``, on mini-batches only (``plates`` non-empty)."""
    return bool(plates) if config.precondition is None else config.precondition


def expected_reset_rate(config: SMILEConfig, plates: Any) -> float:
    """Share of steps the guardrail resets by design: ``1 - reset_quantile`` on mini-batches
    (the quantile rule), 0 in full batch (only non-finite steps reset)."""
    return 1.0 - config.reset_quantile if plates else 0.0


def describe(config: SMILEConfig, plates: dict, precondition: bool) -> str:
    """The variant that runs, in words: ``"pSMILE, B=256 of N=10000"``, ``"SMILE-naive, ..."``,
    ``"MILE, full batch"`` or ``"MCLMC, full batch"`` (no adaptation)."""
    if not plates:
        return ("MILE" if config.adapt else "MCLMC") + ", full batch"
    name = ("pSMILE" if precondition else "SMILE") + ("" if config.adapt else "-naive")
    batches = ", ".join(f"B={p.subsample_size} of N={p.size}" for p in plates.values())
    return f"{name}, {batches}"


def make_plan(
    config: SMILEConfig,
    plates: dict | tuple,
    num_warmup: int,
    dim: int,
    default_energy_var: float | tuple[float, float] = tuning.ACCURATE_ENERGY_VAR,
) -> Plan:
    """Resolve the defaults that depend on the problem: mode, preconditioning, MILE's phases.

    Raises:
        ValueError: d < 2 (the velocity lives on the sphere S^(d-1)).
    """
    if dim < 2:
        raise ValueError(
            "MCLMC needs at least 2 latent dimensions (the velocity lives on the sphere "
            f"S^(d-1)); this model has d = {dim}."
        )
    plates = tuple(plates.items()) if isinstance(plates, dict) else tuple(plates)
    if config.desired_energy_var is None:
        config = config.replace(desired_energy_var=default_energy_var)
    precondition = preconditioned(config, plates)
    mclmc = None
    if not plates and config.adapt and num_warmup > 0:
        start, end = energy_var_schedule(config.desired_energy_var)
        mclmc = tuning.mclmc_tuner_config(
            num_warmup, dim, energy_var_start=start, energy_var_end=end, tune_L=config.L is None
        )
    return Plan(config, plates, int(num_warmup), int(dim), precondition, mclmc)


class _Parts(NamedTuple):
    """The composition of one variant (see the module docstring)."""

    sanitize: bool
    refresh: bool
    noise: adaptation.GradientNoise | None
    tuner: adaptation.Tuner
    step_size_rule: Callable | None


def _parts(plan: Plan) -> _Parts:
    return _minibatch_parts(plan) if plan.plates else _full_batch_parts(plan)


def _minibatch_parts(plan: Plan) -> _Parts:
    """SMILE (pSMILE with the preconditioner): sanitised mini-batch gradients, the
    gradient-noise model, the energy-error tuner and, when adapting, the noise-limited step
    size; partial refresh only with a fixed ``L``."""
    config = plan.config
    noise = adaptation.minibatch_noise(
        plan.plates,
        precondition=plan.precondition,
        num_warmup=plan.num_warmup,
        adapt_during_sampling=config.adapt_during_sampling,
    )
    tuner = adaptation.energy_error_tuner(
        config.energy_tuner,
        adapt=config.adapt,
        adapt_during_sampling=config.adapt_during_sampling,
        step_size=config.step_size,
        L=config.L,
    )
    rule = None
    if config.adapt:
        rule = adaptation.noise_limited_rule(
            noise,
            max_noise_angle=config.max_noise_angle,
            num_warmup=plan.num_warmup,
            adapt_during_sampling=config.adapt_during_sampling,
        )
    return _Parts(True, config.L is not None, noise, tuner, rule)


def _full_batch_parts(plan: Plan) -> _Parts:
    """MILE: full-data gradients, partial refresh, the MCLMC tuner (a fixed step size
    without adaptation or warmup), optionally the preconditioner learned in phase I."""
    config = plan.config
    noise = None
    if plan.precondition:
        learning = plan.mclmc.num_phase1 if plan.mclmc else plan.num_warmup
        noise = adaptation.full_batch_noise(learning)
    if plan.mclmc is not None:
        tuner = adaptation.mclmc_tuner(plan.mclmc, step_size=config.step_size, L=config.L)
    else:
        tuner = adaptation.fixed_tuner(step_size=config.step_size, L=config.L)
    return _Parts(False, True, noise, tuner, None)


def _sanitize(grad: jax.Array) -> jax.Array:
    """Mini-batch gradient guardrail: NaN -> 0, infinities and large values clipped."""
    return jnp.clip(
        jnp.nan_to_num(grad, nan=0.0, posinf=GRADIENT_CLIP, neginf=-GRADIENT_CLIP),
        -GRADIENT_CLIP,
        GRADIENT_CLIP,
    )


class WarmupCheck(NamedTuple):
    """The end-of-warmup convergence check (:mod:`numpyro_smile.convergence`).

    Attributes:
        chains: also compare chains (R-hat of the potential and watched coordinates) when the
            state holds several (vectorized); off for ensembles, whose members sit in
            different modes by design. The step-size climb is always checked.
        label: what a chain is called in the warning ("chains", "members").
        site_names: names of the watched flat coordinates
            (:func:`~numpyro_smile.convergence.monitored_indices`), for the warning's text.
        callback: report from inside the compiled step, through a host callback after the
            last warmup step (NumPyro's ``MCMC`` has no other hook). ``False``: the state only
            keeps the monitor, and a driver that runs warmup itself calls
            :func:`~numpyro_smile.convergence.warn_after_warmup` when it ends; compiled code
            holding a host callback cannot be stored in JAX's persistent compilation cache.
    """

    chains: bool = True
    label: str = "chains"
    site_names: tuple[str, ...] = ()
    callback: bool = True


#: An ensemble's check: members sit in different modes by design, so only the step-size climb
#: is checked, and the driver (which runs warmup as its own phase) checks on the host.
MEMBERS_CHECK = WarmupCheck(chains=False, label="members", callback=False)


class SMILEKernel(NamedTuple):
    """A built sampler: pure functions, jit- and vmap-friendly.

    Attributes:
        init: ``(position, rng_key, target) -> SMILEState`` of one chain from flat ``(d,)``
            parameters (pretraining first when the config asks for it).
        step: ``(state, target) -> SMILEState``: one transition of one chain, or of all
            chains of a vectorized state (``num_chains`` given to :func:`build_kernel`).
        value_and_grad: ``(target, indices) -> (x -> (log p, grad))`` on a batch, sanitised
            in mini-batch mode (also what pretraining descends).
        plan: the :class:`Plan` it was built for.
    """

    init: Callable[..., SMILEState]
    step: Callable[..., SMILEState]
    value_and_grad: Callable
    plan: Plan


def build_kernel(
    plan: Plan, num_chains: int | None = None, warmup_check: WarmupCheck | None = WarmupCheck()
) -> SMILEKernel:
    """The ``init``/``step`` pair of the variant ``plan`` describes.

    Args:
        plan: from :func:`make_plan`.
        num_chains: ``None``: ``step`` advances one chain; an int: a vectorized state of that
            many chains (every field batched except ``rng_key``), stepped with ``vmap``.
        warmup_check: the end-of-warmup convergence check (a host callback after the last
            warmup step that may warn; it changes no draw), or ``None`` for none. Off without
            at least 8 warmup steps.
    """
    parts = _parts(plan)
    if plan.num_warmup < 8:
        warmup_check = None
    config = plan.config
    coefficients = dynamics.INTEGRATORS[config.integrator]

    def value_and_grad(target: Target, indices: dict):
        def fn(x):
            value, grad = jax.value_and_grad(target.logdensity_fn)(x, indices)
            return value, (_sanitize(grad) if parts.sanitize else grad)

        return fn

    def init(position: jax.Array, rng_key: jax.Array, target: Target) -> SMILEState:
        key_batch, key_momentum, key_tuner, key_noise, key_pretrain = jax.random.split(rng_key, 5)
        dtype = position.dtype
        batches = batching.schedules_init(plan.plates, key_batch, config.batch_schedule)
        if config.pretrain_steps:
            position, batches = _pretrain(
                plan, value_and_grad, target, position, batches, key_pretrain
            )
        batches, indices = batching.schedules_next(plan.plates, batches, key_batch)
        logdensity, grad = value_and_grad(target, indices)(position)
        grad_noise, limit, scale = None, None, None
        if parts.noise is not None:
            grad_noise = parts.noise.init(
                position, partial(value_and_grad, target), target.prior_potential_fn, key_noise
            )
            if parts.sanitize:
                scale = parts.noise.scale(grad_noise, position)
                limit = tuning.noise_limited_step_size(grad_noise, scale, config.max_noise_angle)
        tuner_state, params = parts.tuner.init(key_tuner, plan.dim, dtype, limit)
        return SMILEState(
            i=jnp.zeros((), jnp.int32),
            z=target.unravel(position),
            potential_energy=-logdensity,
            energy_change=jnp.zeros((), dtype),
            step_size=params.step_size,
            step_size_factor=params.step_size_factor,
            L=params.L,
            diverging=jnp.zeros((), bool),
            num_resets=jnp.zeros((), jnp.int32),
            momentum=dynamics.random_unit_vector(key_momentum, plan.dim, dtype),
            logdensity_grad=grad,
            tuner=tuner_state,
            grad_noise=grad_noise,
            batches=batches,
            monitor=None if warmup_check is None else convergence.monitor_init(plan.dim, dtype),
            rng_key=rng_key,
        )

    def chain_step(state, indices, rng_key, per_datum_energy, target):
        """One transition of a single chain on the given batch (no ``lax.cond`` on per-chain
        values: this runs under ``vmap``, where a ``cond`` evaluates both branches)."""
        position, _ = ravel_pytree(state.z)
        if parts.noise is not None:
            scale = parts.noise.scale(state.grad_noise, position)
        else:
            scale = jnp.ones_like(position)
        current = dynamics.IntegratorState(
            position, state.momentum, -state.potential_energy, state.logdensity_grad
        )
        proposal, kinetic_change, energy_change = dynamics.mclmc_step(
            current,
            rng_key,
            value_and_grad(target, indices),
            state.step_size,
            state.L,
            scale,
            coefficients,
            parts.refresh,
        )
        if per_datum_energy is not None:
            energy_change = jax.lax.cond(
                per_datum_energy,
                lambda: (
                    kinetic_change
                    - _logdensity_difference(
                        target.logdensity_terms_fn, position, proposal.position
                    )
                ).astype(energy_change.dtype),
                lambda: energy_change,
            )
        finite = (
            jnp.all(jnp.isfinite(proposal.position))
            & jnp.isfinite(proposal.logdensity)
            & jnp.isfinite(energy_change)
        )
        warming_up = state.i < plan.num_warmup
        params = adaptation.StepParams(state.step_size, state.step_size_factor, state.L)
        outcome = adaptation.StepOutcome(
            energy_change, finite, position, proposal.position, scale, warming_up
        )
        tuner_state, params, reset = parts.tuner.update(state.tuner, params, outcome)

        # A reset keeps the old position; the transition then draws a fresh velocity.
        new = jax.tree.map(lambda new, old: jnp.where(reset, old, new), proposal, current)

        grad_noise = state.grad_noise
        if parts.noise is not None:
            learn = parts.noise.learning(state.i) & ~reset
            updated = tuning.gradient_noise_update(grad_noise, new.logdensity_grad)
            grad_noise = jax.tree.map(lambda a, b: jnp.where(learn, a, b), updated, grad_noise)
        if parts.step_size_rule is not None:
            params = parts.step_size_rule(params, grad_noise, position, state.i)
        monitor = state.monitor
        if monitor is not None:
            monitor = convergence.monitor_update(
                monitor, state.i, plan.num_warmup, -new.logdensity, new.position, params.step_size
            )

        return SMILEState(
            i=state.i + 1,
            z=target.unravel(new.position),
            potential_energy=-new.logdensity,
            energy_change=jnp.where(jnp.isfinite(energy_change), energy_change, 0.0),
            step_size=params.step_size,
            step_size_factor=params.step_size_factor,
            L=params.L,
            diverging=reset,
            num_resets=state.num_resets + reset.astype(jnp.int32),
            momentum=new.momentum,
            logdensity_grad=new.logdensity_grad,
            tuner=tuner_state,
            grad_noise=grad_noise,
            batches=state.batches,
            monitor=monitor,
            rng_key=state.rng_key,
        )

    def step(state: SMILEState, target: Target) -> SMILEState:
        """Work that happens rarely (fresh velocities after resets, the tuner's ``final`` at
        the end of warmup, per-datum energy errors while the potential is large) is decided
        here by a scalar ``lax.cond`` outside ``vmap``, where it is skipped when not needed."""
        key, key_batch, key_chains, key_redirect = jax.random.split(state.rng_key, 4)
        batches, indices = batching.schedules_next(
            plan.plates, state.batches, key_batch, num_chains
        )
        state = state._replace(batches=batches)
        per_datum = None
        if target.logdensity_terms_fn is not None and not plan.plates:
            per_datum = _needs_per_datum_energy(plan, state)
        one_chain = partial(chain_step, target=target)
        if num_chains is None:
            new = one_chain(state, indices, key_chains, per_datum)
        else:
            axes = SMILEState._make([0] * (len(SMILEState._fields) - 1) + [None])
            chain_keys = jax.random.split(key_chains, num_chains) if parts.refresh else None
            new = jax.vmap(
                one_chain, in_axes=(axes, 0, 0 if parts.refresh else None, None), out_axes=axes
            )(state, indices, chain_keys, per_datum)
        new = new._replace(
            momentum=_redirect_after_reset(new.momentum, new.diverging, key_redirect)
        )
        if parts.tuner.final is not None:
            new = _finalize(parts.tuner.final, plan.num_warmup, state.i, new, num_chains)
        if warmup_check is not None and warmup_check.callback:
            _check_after_warmup(warmup_check, plan.num_warmup, state.i, new)
        # Keep every leaf's dtype (a float64 potential under x64 must not promote a float32 state).
        new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, state)
        return new._replace(rng_key=key)

    return SMILEKernel(init, step, value_and_grad, plan)


def _pretrain(plan, value_and_grad, target, position, batches, rng_key):
    """Adam on the (mini-batch) potential: move a chain from its init point to a mode.

    MCLMC moves one step size per step, and with mini-batches the gradient noise keeps
    steps small, so a chain started far from the posterior crawls; the MILE/SMILE recipe
    starts from optimised points instead.
    """
    optimizer = optax.adam(plan.config.pretrain_learning_rate)

    def loss_and_grad(x, indices):
        value, grad = value_and_grad(target, indices)(x)
        return -value, -grad

    keys = jax.random.split(rng_key, plan.config.pretrain_steps)
    (position, _, batches), _ = pretrain.train_steps(
        (position, optimizer.init(position), batches),
        keys,
        loss_and_grad_fn=loss_and_grad,
        optimizer=optimizer,
        plates=plan.plates,
    )
    return position, batches


def _finalize(final, num_warmup, i, new, num_chains):
    """Apply the tuner's ``final`` after the last warmup step (decided once for all chains)."""
    if num_chains is not None:
        final = jax.vmap(final)
    params = adaptation.StepParams(new.step_size, new.step_size_factor, new.L)
    L = jax.lax.cond(
        i.reshape(-1)[0] == num_warmup - 1,
        lambda: final(new.tuner, params).L,
        lambda: new.L,
    )
    return new._replace(L=L)


def _check_after_warmup(check: WarmupCheck, num_warmup: int, i, new: SMILEState) -> None:
    """After the last warmup step, hand the monitor to the host check (which may warn)."""
    report = partial(
        convergence.warn_after_warmup,
        check_chains=check.chains,
        label=check.label,
        site_names=check.site_names,
    )
    jax.lax.cond(
        i.reshape(-1)[0] == num_warmup - 1,
        lambda monitor, step_size: jax.debug.callback(report, monitor, step_size),
        lambda monitor, step_size: None,
        new.monitor,
        new.step_size,
    )


def _logdensity_difference(terms_fn: Callable, old: jax.Array, new: jax.Array) -> jax.Array:
    """log p(new) - log p(old), summed from per-datum differences (no large-number rounding)."""
    return cast(jax.Array, sum(jnp.sum(a - b) for a, b in zip(terms_fn(new), terms_fn(old))))


def _needs_per_datum_energy(plan: Plan, state: SMILEState) -> jax.Array:
    """Full batch: whether the potential's rounding, |U| * eps, reaches ENERGY_ROUNDING_SHARE
    of the energy error the tuner aims at, sqrt(d * Var[dE] / d).

    The potential is a sum over N data points: at N = 1e6 in float32 |U| ~ 1e6 is resolved to
    ~0.1, coarser than the targeted |dE| (MILE's end target Var[dE] / d = 0.1 at d = 6: 0.8;
    BlackJAX's 5e-4: 0.05), and U(new) - U(old) then measures rounding: the step-size rule
    shrank the step 400x (float64: no change). Above the threshold, dE is summed from
    per-datum differences at the cost of two forward passes per step; below it (small data,
    float64) nothing changes. A scalar, decided for all chains at once.
    """
    energy = state.potential_energy
    target = plan.mclmc.energy_var_end if plan.mclmc is not None else 5e-4
    threshold = ENERGY_ROUNDING_SHARE * math.sqrt(plan.dim * target)
    return jnp.max(jnp.abs(energy)) * jnp.finfo(energy.dtype).eps > threshold


def _redirect_after_reset(momentum: jax.Array, reset: jax.Array, rng_key: jax.Array):
    """A uniformly random velocity for every chain that was reset, drawn only when one was.

    The reference code zeroes the velocity, so the next step starts along the (noisy)
    gradient, towards the mode: on a linear regression that shrank the posterior sd by ~7
    percent. A uniform direction is the velocity's stationary law and adds no such pull.
    """

    def redirect():
        fresh = dynamics.random_unit_vector(rng_key, momentum.shape, momentum.dtype)
        return jnp.where(reset[..., None], fresh, momentum)

    if jax.default_backend() != "cpu":
        return redirect()  # on accelerators the draw is cheap and a cond's predicate is not
    return jax.lax.cond(jnp.any(reset), redirect, lambda: momentum)
