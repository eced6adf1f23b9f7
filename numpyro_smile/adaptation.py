"""The adaptive parts a sampler is composed of: tuners and the gradient-noise model.

:mod:`numpyro_smile.tuning` holds the mathematics (pure ``init``/``update`` functions over
NamedTuple states). This module packages it into interchangeable parts with one protocol each,
so that SMILE, pSMILE, MILE and the naive variants are compositions rather than branches
(:func:`numpyro_smile.sampler.build_kernel` picks the parts once, when it is built):

* a :class:`Tuner` adapts the step parameters and decides on resets (the guardrail):
  ``init`` gives its state and the initial :class:`StepParams`, ``update`` sees one step's
  :class:`StepOutcome`, ``final`` (or ``None``) runs once when warmup ends;
  :func:`energy_error_tuner` (SMILE), :func:`mclmc_tuner` (MILE) and :func:`fixed_tuner`;
* a :class:`GradientNoise` model tracks the running mean and std of the gradient: pSMILE's
  diagonal preconditioner and the noise-limited step size (:func:`noise_limited_rule`).

Every function here works on one chain; the kernel vectorizes chains with ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_smile import tuning

__all__ = [
    "DEFAULT_STEP_SIZE_FULL_BATCH",
    "NUM_NOISE_PROBES",
    "STEP_SIZE_MINIBATCH_MAX",
    "GradientNoise",
    "StepOutcome",
    "StepParams",
    "Tuner",
    "energy_error_tuner",
    "fixed_tuner",
    "full_batch_noise",
    "mclmc_tuner",
    "minibatch_noise",
    "noise_limited_rule",
    "prior_curvature",
]

Array = jax.Array

#: Initial step size in full batch (MILE's for tabular networks); the full-batch tuner corrects
#: any start within a few steps.
DEFAULT_STEP_SIZE_FULL_BATCH = 1e-2
#: Mini-batch mode starts at the noise-limited step size (see ``max_noise_angle``), at most
#: this (the SMILE paper's initial step size for UCI networks); the controller's factor f on
#: the noise limit starts at the ratio and never exceeds 1.
STEP_SIZE_MINIBATCH_MAX = 1e-3
#: Mini-batches drawn at the initial point to estimate the gradient noise (and Hutchinson
#: probes of the prior's curvature).
NUM_NOISE_PROBES = 8


class StepParams(NamedTuple):
    """What a tuner sets for the next step (scalars, one chain).

    Attributes:
        step_size: epsilon, path length per step in preconditioned coordinates.
        step_size_factor: SMILE: the controller's factor f <= 1 on the noise-limited step
            size; 1 otherwise.
        L: momentum decoherence length (``inf``: no partial refresh).
    """

    step_size: Array
    step_size_factor: Array
    L: Array


class StepOutcome(NamedTuple):
    """What one proposed step did, as a tuner sees it.

    Attributes:
        energy_change: dE of the proposal (possibly non-finite).
        finite: whether position, log density and dE of the proposal are all finite.
        position, proposal: ``(d,)`` flat positions before and after the step.
        scale: ``(d,)`` preconditioner s of the step.
        warming_up: whether the step counter is still inside warmup.
    """

    energy_change: Array
    finite: Array
    position: Array
    proposal: Array
    scale: Array
    warming_up: Array


class Tuner(NamedTuple):
    """Step-size (and L) adaptation with its reset rule: one protocol for every variant.

    Attributes:
        init: ``(rng_key, dim, dtype, limit) -> (state, StepParams)``; ``limit`` is the
            noise-limited step size at the start (``None`` without a noise model).
        update: ``(state, params, outcome) -> (state, params, reset)``; ``reset`` True rejects
            the step (the position is kept, the velocity redrawn).
        final: ``(state, params) -> params`` once, after the last warmup step, or ``None``.
    """

    init: Callable[..., tuple[Any, StepParams]]
    update: Callable[..., tuple[Any, StepParams, Array]]
    final: Callable[..., StepParams] | None


def _params(step_size, factor, L, dtype) -> StepParams:
    return StepParams(
        jnp.asarray(step_size, dtype), jnp.asarray(factor, dtype), jnp.asarray(L, dtype)
    )


def energy_error_tuner(
    config: tuning.EnergyTunerConfig,
    *,
    adapt: bool,
    adapt_during_sampling: bool,
    step_size: float | None,
    L: float | None,
) -> Tuner:
    """SMILE's tuner: the energy-error controller on the factor f and the reset guardrail.

    The step size itself is f times the noise-limited step size (:func:`noise_limited_rule`);
    ``adapt=False`` freezes f (the naive variant) but keeps the quantile guardrail.
    """

    def init(rng_key, dim, dtype, limit):
        initial: Array | float
        if step_size is None:
            initial = jnp.minimum(limit, STEP_SIZE_MINIBATCH_MAX)
        elif adapt:  # while adapting the step never exceeds the noise limit, the first included
            initial = jnp.minimum(step_size, limit)
        else:
            initial = step_size
        factor = jnp.minimum(initial / limit, 1.0)
        return tuning.energy_tuner_init(dtype), _params(initial, factor, L or math.inf, dtype)

    def update(state, params, outcome):
        adapting = outcome.warming_up | adapt_during_sampling
        state, factor, reset = tuning.energy_tuner_update(
            state, params.step_size_factor, outcome.energy_change, adapt & adapting, config
        )
        # The tuner resets a non-finite dE; a non-finite position with a finite dE (which a
        # real step cannot produce) is reset too, as by every tuner.
        reset = reset | ~outcome.finite
        return state, params._replace(step_size_factor=jnp.minimum(factor, 1.0)), reset

    return Tuner(init, update, None)


def mclmc_tuner(
    config: tuning.MCLMCTunerConfig, *, step_size: float | None, L: float | None
) -> Tuner:
    """MILE's full-batch tuner: step size from the energy variance (phases I+II), L from the
    posterior variances (end of phase II) and, as ``final``, from the ESS of phase III.
    Resets only non-finite steps."""

    def init(rng_key, dim, dtype, limit):
        initial_L = L or max(math.sqrt(dim), 15.0)
        state = tuning.mclmc_tuner_init(config, dim, rng_key, dtype)
        return state, _params(step_size or DEFAULT_STEP_SIZE_FULL_BATCH, 1.0, initial_L, dtype)

    def update(state, params, outcome):
        reset = ~outcome.finite
        accepted = jnp.where(reset, outcome.position, outcome.proposal) / outcome.scale
        tuned = tuning.mclmc_tuner_update(
            state,
            config,
            params.step_size,
            params.L,
            outcome.energy_change,
            accepted,
            outcome.finite,
        )
        state, new_step_size, new_L = jax.tree.map(
            lambda a, b: jnp.where(outcome.warming_up, a, b),
            tuned,
            (state, params.step_size, params.L),
        )
        return state, params._replace(step_size=new_step_size, L=new_L), reset

    def final(state, params):
        L = tuning.mclmc_tuner_L_from_trace(state, config=config, step_size=params.step_size)
        return params._replace(L=L)

    return Tuner(init, update, final if config.num_phase3 > 0 else None)


def fixed_tuner(*, step_size: float | None, L: float | None) -> Tuner:
    """No adaptation (full batch with ``adapt=False`` or no warmup): resets non-finite steps."""

    def init(rng_key, dim, dtype, limit):
        return None, _params(
            step_size or DEFAULT_STEP_SIZE_FULL_BATCH, 1.0, L or math.sqrt(dim), dtype
        )

    def update(state, params, outcome):
        return state, params, ~outcome.finite

    return Tuner(init, update, None)


class GradientNoise(NamedTuple):
    """The running gradient statistics: pSMILE's preconditioner and the noise limit.

    Attributes:
        init: ``(position, value_and_grad_at, prior_curvature_fn, rng_key) ->
            GradientNoiseState``; ``value_and_grad_at(indices)`` gives ``x -> (log p, grad)``
            on a batch of indices ``{plate: (B,)}``.
        learning: ``(i) -> bool``: whether step ``i``'s gradient updates the statistics
            (a rejected step never does).
        scale: ``(state, position) -> (d,)`` diagonal preconditioner s (ones when the
            statistics only limit the step size).
    """

    init: Callable[..., tuning.GradientNoiseState]
    learning: Callable[[Array], Array]
    scale: Callable[[tuning.GradientNoiseState, Array], Array]


def _scale_fn(precondition: bool) -> Callable:
    if precondition:
        return lambda state, position: tuning.gradient_noise_scale(state)
    return lambda state, position: jnp.ones_like(position)


def prior_curvature(prior_potential_fn: Callable | None, position: Array, rng_key: Array) -> Array:
    """``(d,)`` diagonal of the log prior's negative Hessian at ``position`` (zeros without a
    prior), by Hutchinson probes: exact for priors that factorise over coordinates."""
    if prior_potential_fn is None:
        return jnp.zeros_like(position)
    probes = jax.random.rademacher(rng_key, (NUM_NOISE_PROBES, *position.shape), position.dtype)
    hessian_probes = jax.vmap(
        lambda v: jax.jvp(jax.grad(prior_potential_fn), (position,), (v,))[1]
    )(probes)
    return jnp.abs(jnp.mean(probes * hessian_probes, axis=0))


def minibatch_noise(
    plates: tuple, *, precondition: bool, num_warmup: int, adapt_during_sampling: bool
) -> GradientNoise:
    """Mini-batch statistics, started from ``NUM_NOISE_PROBES`` random batches at the start
    (not the reference code's all-ones) and learned while the tuner adapts.

    The prior's curvature in noise units, (N / B) times it, is the preconditioner's floor.
    """

    def init(position, value_and_grad_at, prior_curvature_fn, rng_key):
        key_noise, key_curvature = jax.random.split(rng_key)
        curvature = prior_curvature(prior_curvature_fn, position, key_curvature)
        keys = jax.random.split(key_noise, len(plates))
        indices = {
            name: jax.random.randint(
                key, (NUM_NOISE_PROBES, plate.subsample_size), 0, plate.size, jnp.int32
            )
            for key, (name, plate) in zip(keys, plates)
        }
        grads = jax.vmap(lambda idx: value_and_grad_at(idx)(position)[1])(indices)
        std = jnp.sqrt(jnp.maximum(jnp.var(grads, axis=0), 1e-7))
        plate = plates[0][1]
        floor = curvature * (plate.size / plate.subsample_size)
        return tuning.GradientNoiseState(grads.mean(axis=0), std, floor)

    def learning(i):
        return (i < num_warmup) | adapt_during_sampling

    return GradientNoise(init, learning, _scale_fn(precondition))


def full_batch_noise(num_learning_steps: int) -> GradientNoise:
    """Full-batch preconditioner: the gradient's spread over the first
    ``num_learning_steps`` (MILE's phase I), then frozen for tuning and sampling; its floor
    is the prior's curvature (E[g^2] = curvature)."""

    def init(position, value_and_grad_at, prior_curvature_fn, rng_key):
        _, key_curvature = jax.random.split(rng_key)
        curvature = prior_curvature(prior_curvature_fn, position, key_curvature)
        dim = position.shape[0]
        return tuning.gradient_noise_init(dim, position.dtype)._replace(floor=curvature)

    def learning(i):
        return i < num_learning_steps

    return GradientNoise(init, learning, _scale_fn(True))


def noise_limited_rule(
    noise: GradientNoise, *, max_noise_angle: float, num_warmup: int, adapt_during_sampling: bool
) -> Callable[[StepParams, tuning.GradientNoiseState, Array, Array], StepParams]:
    """SMILE's step size, epsilon = f * (noise-limited step size), while adapting.

    It follows the gradient noise as the chain moves (large far from the posterior's bulk,
    smaller near it) and the controller's factor f. Returns
    ``(params, noise_state, position, i) -> params``.
    """

    def rule(params, state, position, i):
        limit = tuning.noise_limited_step_size(state, noise.scale(state, position), max_noise_angle)
        adapting = (i < num_warmup) | adapt_during_sampling
        step_size = jnp.where(adapting, params.step_size_factor * limit, params.step_size)
        return params._replace(step_size=step_size)

    return rule
