"""The functional core of the stochastic-gradient MCMC family: SGLD, SGHMC, AdaSGHMC.

Pure JAX, no NumPyro, on the same pieces as the MCLMC core (:mod:`numpyro_smile.sampler`): a
:class:`~numpyro_smile.sampler.Target` of flat ``(d,)`` parameters, the O(B) batch schedules of
:mod:`numpyro_smile.batching`, and a step-size schedule (:mod:`numpyro_smile.schedules`).
``build_sg_kernel(plan, num_chains) -> SGKernel(init, step, ...)`` as ``build_kernel`` does for
SMILE; the NumPyro kernels (:class:`~numpyro_smile.SGLD`, :class:`~numpyro_smile.SGHMC`,
:class:`~numpyro_smile.AdaSGHMC`) and the ensemble driver are adapters over it.

Notation: x the position (unconstrained parameters), g = grad log p(x) the N / B-scaled
mini-batch estimate of the full-data gradient, epsilon the step size, xi ~ N(0, I).

* **SGLD** (Welling and Teh, 2011): x' = x + epsilon g + sqrt(2 epsilon) xi, the Euler-Maruyama
  step of the overdamped Langevin diffusion; epsilon is a variance (units of x squared).
* **SGHMC** (Chen et al., 2014) with momentum p ~ N(0, M) kept across steps (diagonal mass M,
  1 for SGHMC), friction C = alpha M / epsilon and gradient-noise estimate beta (B-hat):

      x' = x + epsilon M^-1 p
      p' = (1 - alpha) p + epsilon g + sqrt(2 alpha M - epsilon^2 beta) xi

  alpha = ``momentum_decay`` is the share of momentum lost per step (Chen et al.'s alpha;
  friction per unit time alpha / epsilon). With M = 1 this is BlackJAX's ``sghmc`` diffusion
  (Ma et al. 2015's scaling) with ``alpha = momentum_decay / step_size``, step for step. In
  Chen et al.'s "SGD with momentum" variables v = epsilon p: learning rate eta = epsilon^2,
  momentum decay alpha. One fresh mini-batch per step by default; ``num_integration_steps=k``
  with ``refresh_momentum=True`` is BlackJAX's ``sghmc`` kernel (k steps on one mini-batch from
  a fresh momentum each call).
* **AdaSGHMC** (scale-adapted SGHMC, Springenberg et al., 2016): the SGHMC step with the
  diagonal mass M = V^(1/2), V the running uncentred second moment of the gradient, and
  beta = V (their noise term, epsilon^4 I in v = epsilon M^-1 p): in v,

      v' = (1 - alpha) v - epsilon^2 V^(-1/2) grad U
           + N(0, 2 alpha epsilon^2 V^(-1/2) - epsilon^4 I)

  V is an exponential moving average whose memory tau adapts per coordinate (Schaul et al.
  2013's rule: tau' = tau (1 - gbar^2 / V) + 1, the new gradient weighted 1 / (tau + 1): long
  memory where the gradient is noisy), updated during warmup and frozen after. epsilon =
  lr / sqrt(N) in their learning-rate units (default lr = 0.01).

Guardrail (all three): a step whose new position, log density, gradient or momentum is not
finite is rejected: the chain keeps its old position and gradient, redraws the momentum, and the
step counts in ``diverging`` and ``num_resets``. Draws are never NaN.

Cyclical schedules (:class:`~numpyro_smile.schedules.CyclicalSchedule`): on exploring steps the
injected noise is switched off (SGD, with momentum for SGHMC), as in Zhang et al. (2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from numpyro_smile import batching
from numpyro_smile.sampler import Target
from numpyro_smile.schedules import ConstantSchedule, CyclicalSchedule, Schedule

__all__ = [
    "METHODS",
    "SGConfig",
    "SGKernel",
    "SGPlan",
    "SGState",
    "ScaleAdaptationState",
    "build_sg_kernel",
    "langevin_move",
    "make_sg_plan",
    "scale_adaptation_init",
    "scale_adaptation_update",
    "sghmc_move",
    "sghmc_update",
]

#: The family members, by the name a user knows them by.
METHODS = ("SGLD", "SGHMC", "AdaSGHMC")
#: AdaSGHMC: floor of the second-moment estimate, as a share of its mean over coordinates
#: (a coordinate whose gradient is always 0 would otherwise get a zero mass, an infinite step).
MOMENT_FLOOR = 1e-8


class SGConfig(NamedTuple):
    """Settings of one family member (static, hashable; checked by the kernels).

    Attributes:
        method: ``"SGLD"``, ``"SGHMC"`` or ``"AdaSGHMC"``.
        schedule: the step size (:mod:`numpyro_smile.schedules`; AdaSGHMC: ``None`` for
            0.01 / sqrt(N)).
        momentum_decay: SGHMC/AdaSGHMC: alpha in (0, 1], the share of momentum lost per step.
        noise_estimate: SGHMC: beta >= 0, the gradient-noise estimate B-hat (BlackJAX's beta).
        num_integration_steps: SGHMC/AdaSGHMC: steps per mini-batch (k gradients per call).
        refresh_momentum: SGHMC/AdaSGHMC: draw a fresh momentum at every call (BlackJAX).
        batch_schedule: ``"epoch"`` or ``"with_replacement"`` (:mod:`numpyro_smile.batching`).
    """

    method: str
    schedule: Schedule | None
    momentum_decay: float = 0.05
    noise_estimate: float = 0.0
    num_integration_steps: int = 1
    refresh_momentum: bool = False
    batch_schedule: str = "epoch"


class SGPlan(NamedTuple):
    """A config resolved for its problem (static): ``config`` (the schedule resolved for
    ``num_warmup``), ``plates`` (``((name, PlateInfo), ...)``), ``num_warmup``, ``dim``."""

    config: SGConfig
    plates: tuple
    num_warmup: int
    dim: int

    @property
    def variant(self) -> str:
        """The family member, e.g. ``"SGHMC"`` (``"cSGLD"`` with a cyclical schedule)."""
        cyclic = isinstance(self.config.schedule, CyclicalSchedule)
        return ("c" if cyclic else "") + self.config.method

    @property
    def mode(self) -> str:
        """In words, e.g. ``"SGLD, B=256 of N=10000"`` or ``"SGHMC, full batch"``."""
        if not self.plates:
            return f"{self.variant}, full batch"
        batches = ", ".join(f"B={p.subsample_size} of N={p.size}" for _, p in self.plates)
        return f"{self.variant}, {batches}"

    @property
    def expected_reset_rate(self) -> float:
        """The guardrail rejects only non-finite steps: none by design."""
        return 0.0

    @property
    def cyclical(self) -> bool:
        """Whether some steps explore (their draws are not kept by the ensemble)."""
        return isinstance(self.config.schedule, CyclicalSchedule)


def make_sg_plan(config: SGConfig, plates: dict | tuple, num_warmup: int, dim: int) -> SGPlan:
    """Resolve what depends on the problem: the schedule's start, AdaSGHMC's default step
    size 0.01 / sqrt(N) (N the data size of the first subsample plate).

    Raises:
        ValueError: AdaSGHMC without a step size on a model without a subsample plate.
    """
    plates = tuple(plates.items()) if isinstance(plates, dict) else tuple(plates)
    schedule = config.schedule
    if schedule is None:
        if not plates:
            raise ValueError(
                "AdaSGHMC's default step size is 0.01 / sqrt(N) for a model with a subsample "
                "plate; this model has none (full batch): pass step_size=..."
            )
        schedule = ConstantSchedule(0.01 / math.sqrt(plates[0][1].size))
    config = config._replace(schedule=schedule.resolve(num_warmup))
    return SGPlan(config, plates, int(num_warmup), int(dim))


class ScaleAdaptationState(NamedTuple):
    """AdaSGHMC's running gradient moments, per coordinate ``(d,)``.

    Attributes:
        tau: the memory (in steps) of the moving averages.
        mean: gbar, the running mean of the gradient.
        square: V, the running uncentred second moment of the gradient (the mass is V^(1/2)).
    """

    tau: jax.Array
    mean: jax.Array
    square: jax.Array


def scale_adaptation_init(grad: jax.Array) -> ScaleAdaptationState:
    """Moments from the first gradient: V = g^2 and a mean of 0 (memory one step). A mean of
    g would read as pure signal (gbar^2 / V = 1) and keep the memory at one step for ever."""
    return ScaleAdaptationState(jnp.ones_like(grad), jnp.zeros_like(grad), grad**2)


def scale_adaptation_update(state: ScaleAdaptationState, grad: jax.Array) -> ScaleAdaptationState:
    """One update with the gradient ``grad``: the memory tau grows where the mean gradient is
    small next to its second moment (noise dominates) and stays short where it is not.

    The averages take ``grad`` with weight 1 / (tau + 1) (tau steps of memory plus the new
    one), then tau' = tau (1 - gbar'^2 / V') + 1. The weight is at most 1/2, so the averages
    never forget all but the last gradient. (With the weight 1 / tau', tau = 1 was absorbing:
    weight 1 gives gbar^2 = V, hence tau' = 1 again, and V froze as one mini-batch's g^2;
    every coordinate whose gradient has a mean of about its noise or more fell into it.)"""
    weight = 1 / (state.tau + 1)
    mean = (1 - weight) * state.mean + weight * grad
    square = (1 - weight) * state.square + weight * grad**2
    signal = mean**2 / jnp.maximum(square, jnp.finfo(grad.dtype).tiny)
    tau = state.tau * (1 - jnp.minimum(signal, 1)) + 1
    return ScaleAdaptationState(tau, mean, square)


def adapted_moment(state: ScaleAdaptationState) -> jax.Array:
    """V, floored at ``MOMENT_FLOOR`` times its mean over coordinates (and the float tiny)."""
    floor = MOMENT_FLOOR * jnp.mean(state.square) + jnp.finfo(state.square.dtype).tiny
    return jnp.maximum(state.square, floor)


def langevin_move(
    rng_key: jax.Array,
    position: jax.Array,
    grad: jax.Array,
    step_size: jax.Array,
    noise_scale: jax.Array | float = 1.0,
) -> jax.Array:
    """SGLD: ``x + epsilon g + sqrt(2 epsilon) xi`` with ``xi = normal(rng_key)``
    (``noise_scale`` 0: a gradient step, as on a cyclical schedule's exploring steps)."""
    noise = jax.random.normal(rng_key, position.shape, position.dtype)
    return position + step_size * grad + noise_scale * jnp.sqrt(2 * step_size) * noise


def sghmc_update(
    rng_key: jax.Array,
    position: jax.Array,
    momentum: jax.Array,
    grad: jax.Array,
    step_size: jax.Array,
    momentum_decay: float,
    mass: jax.Array | float = 1.0,
    noise_estimate: jax.Array | float = 0.0,
    noise_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """One SGHMC update (see the module docstring): ``(x', p')`` from the gradient at ``x``.

    Args:
        mass: the diagonal mass M, a scalar or ``(d,)``.
        noise_estimate: beta, scalar or ``(d,)``; the injected variance ``2 alpha M -
            epsilon^2 beta`` is floored at 0.
        noise_scale: 0 switches the injected noise off (exploring steps).
    """
    noise = jax.random.normal(rng_key, position.shape, position.dtype)
    new_position = position + step_size * momentum / mass
    variance = jnp.maximum(2 * momentum_decay * mass - step_size**2 * noise_estimate, 0.0)
    new_momentum = (
        (1 - momentum_decay) * momentum
        + step_size * grad
        + noise_scale * jnp.sqrt(variance) * noise
    )
    return new_position, new_momentum


def sghmc_move(
    rng_key: jax.Array,
    position: jax.Array,
    momentum: jax.Array,
    grad: jax.Array,
    grad_fn: Callable[[jax.Array], jax.Array],
    step_size: jax.Array,
    momentum_decay: float,
    *,
    num_integration_steps: int = 1,
    refresh_momentum: bool = False,
    mass: jax.Array | float = 1.0,
    noise_estimate: jax.Array | float = 0.0,
    noise_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """``num_integration_steps`` SGHMC updates on one mini-batch: ``(x', p')``.

    ``grad`` is the gradient at ``position`` and ``grad_fn`` gives it elsewhere on the same
    mini-batch (called ``num_integration_steps - 1`` times). With ``refresh_momentum`` the
    momentum is first redrawn from N(0, M) with ``rng_key``, and the updates use
    ``split(rng_key, k)``: BlackJAX's ``sghmc`` kernel, key for key.
    """
    if refresh_momentum:
        momentum = jnp.sqrt(mass) * jax.random.normal(rng_key, position.shape, position.dtype)
    keys = jax.random.split(rng_key, num_integration_steps)
    update = partial(
        sghmc_update,
        step_size=step_size,
        momentum_decay=momentum_decay,
        mass=mass,
        noise_estimate=noise_estimate,
        noise_scale=noise_scale,
    )
    position, momentum = update(keys[0], position, momentum, grad)
    if num_integration_steps > 1:

        def inner(carry, key):
            x, p = carry
            return update(key, x, p, grad_fn(x)), None

        (position, momentum), _ = jax.lax.scan(inner, (position, momentum), keys[1:])
    return position, momentum


class SGState(NamedTuple):
    """State of one chain (vectorized: every field but ``rng_key`` has a leading
    ``(num_chains,)`` axis).

    Attributes:
        i: iteration counter (warmup included).
        z: dict of unconstrained latent values (the sample field).
        potential_energy: -log p at ``z`` on the mini-batch of ``logdensity_grad`` (an
            N / B-scaled estimate).
        step_size: the step size of the step that led here (the schedule's value).
        exploring: whether that step explored (cyclical schedules; its draw is not kept).
        diverging: True when the guardrail rejected that step (non-finite).
        num_resets: rejected steps so far (int32).
        momentum: ``(d,)`` SGHMC/AdaSGHMC momentum p (``None`` for SGLD).
        logdensity_grad: ``(d,)`` gradient of log p at ``z`` on the current mini-batch.
        indices: ``{plate: (B,)}`` that mini-batch, kept when it is reused for several
            integration steps (else ``None``).
        adaptation: AdaSGHMC's :class:`ScaleAdaptationState` (else ``None``).
        batches: ``{plate: EpochBatchState}`` batch schedules (``None`` for full batch).
        rng_key: a single PRNG key.
    """

    i: jax.Array
    z: dict
    potential_energy: jax.Array
    step_size: jax.Array
    exploring: jax.Array
    diverging: jax.Array
    num_resets: jax.Array
    momentum: jax.Array | None
    logdensity_grad: jax.Array
    indices: dict | None
    adaptation: ScaleAdaptationState | None
    batches: dict | None
    rng_key: jax.Array


class SGKernel(NamedTuple):
    """A built sampler of the family (pure functions), as :class:`~numpyro_smile.sampler.
    SMILEKernel`.

    Attributes:
        init: ``(position, rng_key, target) -> SGState`` of one chain.
        step: ``(state, target) -> SGState``: one step of one chain, or of all chains.
        transition: ``(state, rng_key, indices, target) -> SGState``: one chain's step with
            the given key and next mini-batch (what ``step`` maps over the chains).
        record: ``(state, resets) -> {"z", "stats"}``: what an ensemble draw keeps.
        plan: the :class:`SGPlan`.
    """

    init: Callable[..., SGState]
    step: Callable[..., SGState]
    transition: Callable[..., SGState]
    record: Callable[..., dict]
    plan: SGPlan


def _value_and_grad(target: Target, indices: dict) -> Callable:
    return partial(jax.value_and_grad(target.logdensity_fn), indices=indices)


def build_sg_kernel(plan: SGPlan, num_chains: int | None = None) -> SGKernel:
    """The ``init``/``step`` pair of ``plan``'s family member.

    Args:
        plan: from :func:`make_sg_plan`.
        num_chains: ``None``: ``step`` advances one chain; an int: a vectorized state of that
            many chains (every field batched except ``rng_key``).
    """
    config = plan.config
    schedule = config.schedule
    assert schedule is not None
    langevin = config.method == "SGLD"
    adaptive = config.method == "AdaSGHMC"
    keep_indices = not langevin and config.num_integration_steps > 1

    def mass_and_noise(state_adaptation, dtype):
        if not adaptive:
            return jnp.ones((), dtype), jnp.asarray(config.noise_estimate, dtype)
        moment = adapted_moment(state_adaptation)
        return jnp.sqrt(moment), moment

    def init(position: jax.Array, rng_key: jax.Array, target: Target) -> SGState:
        key_batch, key_momentum = jax.random.split(rng_key)
        dtype = position.dtype
        batches = batching.schedules_init(plan.plates, key_batch, config.batch_schedule)
        batches, indices = batching.schedules_next(plan.plates, batches, key_batch)
        logdensity, grad = _value_and_grad(target, indices)(position)
        adaptation = scale_adaptation_init(grad) if adaptive else None
        momentum = None
        if not langevin:
            mass = mass_and_noise(adaptation, dtype)[0]
            momentum = jnp.sqrt(mass) * jax.random.normal(key_momentum, position.shape, dtype)
        return SGState(
            i=jnp.zeros((), jnp.int32),
            z=target.unravel(position),
            potential_energy=-logdensity,
            step_size=schedule(jnp.zeros((), jnp.int32)).astype(dtype),
            exploring=jnp.zeros((), bool),
            diverging=jnp.zeros((), bool),
            num_resets=jnp.zeros((), jnp.int32),
            momentum=momentum,
            logdensity_grad=grad,
            indices=indices if keep_indices else None,
            adaptation=adaptation,
            batches=batches,
            rng_key=rng_key,
        )

    def transition(state: SGState, rng_key: jax.Array, indices: dict, target: Target) -> SGState:
        """One step of one chain: move with the cached gradient, then the gradient at the new
        point on ``indices`` (the next mini-batch); reject a non-finite result."""
        key_move, key_reset = jax.random.split(rng_key)
        position, _ = ravel_pytree(state.z)
        dtype = position.dtype
        step_size = schedule(state.i).astype(dtype)
        exploring = schedule.exploring(state.i)
        noise_scale = jnp.where(exploring, 0.0, 1.0).astype(dtype)
        mass, noise_estimate = mass_and_noise(state.adaptation, dtype)
        momentum = state.momentum
        if langevin:
            new_position = langevin_move(
                key_move, position, state.logdensity_grad, step_size, noise_scale
            )
        else:
            current = state.indices if state.indices is not None else indices
            assert state.momentum is not None

            def grad_fn(x):
                return _value_and_grad(target, current)(x)[1]

            new_position, momentum = sghmc_move(
                key_move,
                position,
                state.momentum,
                state.logdensity_grad,
                grad_fn,
                step_size,
                config.momentum_decay,
                num_integration_steps=config.num_integration_steps,
                refresh_momentum=config.refresh_momentum,
                mass=mass,
                noise_estimate=noise_estimate,
                noise_scale=noise_scale,
            )
        logdensity, grad = _value_and_grad(target, indices)(new_position)
        finite = (
            jnp.all(jnp.isfinite(new_position))
            & jnp.isfinite(logdensity)
            & jnp.all(jnp.isfinite(grad))
        )
        if momentum is not None:
            finite = finite & jnp.all(jnp.isfinite(momentum))
            fresh = jnp.sqrt(mass) * jax.random.normal(key_reset, position.shape, dtype)
            momentum = jnp.where(finite, momentum, fresh)
        adaptation = state.adaptation
        if adaptation is not None:
            learn = finite & (state.i < plan.num_warmup)
            updated = scale_adaptation_update(adaptation, grad)
            adaptation = jax.tree.map(
                lambda new, old: jnp.where(learn, new, old), updated, adaptation
            )

        def keep(new: Any, old: Any) -> jax.Array:
            return jnp.where(finite, new, old)

        new_indices = None
        if keep_indices:
            new_indices = jax.tree.map(keep, indices, state.indices)
        return SGState(
            i=state.i + 1,
            z=target.unravel(keep(new_position, position)),
            potential_energy=keep(-logdensity, state.potential_energy).astype(dtype),
            step_size=step_size,
            exploring=exploring,
            diverging=~finite,
            num_resets=state.num_resets + (~finite).astype(jnp.int32),
            momentum=momentum,
            logdensity_grad=keep(grad, state.logdensity_grad),
            indices=new_indices,
            adaptation=adaptation,
            batches=state.batches,
            rng_key=state.rng_key,
        )

    def step(state: SGState, target: Target) -> SGState:
        key, key_batch, key_chains = jax.random.split(state.rng_key, 3)
        batches, indices = batching.schedules_next(
            plan.plates, state.batches, key_batch, num_chains
        )
        state = state._replace(batches=batches)
        one_chain = partial(transition, target=target)
        if num_chains is None:
            new = one_chain(state, key_chains, indices)
        else:
            axes = SGState._make([0] * (len(SGState._fields) - 1) + [None])
            keys = jax.random.split(key_chains, num_chains)
            new = jax.vmap(one_chain, in_axes=(axes, 0, 0), out_axes=axes)(state, keys, indices)
        new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, state)
        return new._replace(rng_key=key)

    def record(state: SGState, resets: jax.Array) -> dict[str, Any]:
        stats = {
            "lp": -state.potential_energy,
            "step_size": state.step_size,
            "diverging": resets > 0,
            "resets": resets,
        }
        if plan.cyclical:
            stats["exploring"] = state.exploring
        return {"z": state.z, "stats": stats}

    return SGKernel(init, step, transition, record, plan)
