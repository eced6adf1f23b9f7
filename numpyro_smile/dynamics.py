"""Isokinetic (microcanonical) Langevin dynamics on flat parameter vectors.

This module is the mathematical core of MCLMC and SG-MCLMC. Everything here is a pure
function of flat ``(d,)`` arrays; no NumPyro, no tuning. The kernel ravels the model's
unconstrained parameters with :func:`jax.flatten_util.ravel_pytree` before calling in.

Notation (the docs page "MCLMC in one page" explains the dynamics):

* ``position`` x in R^d, ``momentum`` u on the unit sphere (SMILE also allows u = 0 at the
  start and after a reset: the first velocity update then points u along the gradient);
* ``scale`` s in R^d_{>0}: a diagonal preconditioner. The dynamics run in z = x / s, so the
  gradient fed to the velocity update is s * grad log p and the position moves by s * u;
* ``step_size`` epsilon, in units of path length in z-space (||u|| = 1, so time = distance);
* ``L``: the momentum decoherence length; ``L = inf`` switches the partial refresh off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "INTEGRATORS",
    "MCLACHLAN_B1",
    "IntegratorState",
    "esh_velocity_update",
    "isokinetic_step",
    "mclmc_step",
    "partial_refresh",
    "position_update",
    "random_unit_vector",
]

Array = jax.Array
LogDensityAndGrad = Callable[[Array], tuple[Array, Array]]

#: McLachlan's minimal-norm coefficient (McLachlan 1995), as in BlackJAX.
MCLACHLAN_B1 = 0.1931833275037836

#: Palindromic coefficient lists, alternating velocity (even index) and position (odd index)
#: updates. McLachlan costs 2 gradient evaluations per step and is the papers' default;
#: leapfrog (velocity Verlet) costs 1.
INTEGRATORS: dict[str, tuple[float, ...]] = {
    "mclachlan": (MCLACHLAN_B1, 0.5, 1.0 - 2.0 * MCLACHLAN_B1, 0.5, MCLACHLAN_B1),
    "leapfrog": (0.5, 1.0, 0.5),
}

_NORM_TOLERANCE = 1e-13


class IntegratorState(NamedTuple):
    """Position and velocity of one chain, with the log density cached at the position.

    Attributes:
        position: ``(d,)`` point in (unconstrained) parameter space.
        momentum: ``(d,)`` unit-norm velocity in preconditioned coordinates (or zeros).
        logdensity: ``()`` log density at ``position`` (a mini-batch estimate for SMILE).
        logdensity_grad: ``(d,)`` raw, un-preconditioned gradient of ``logdensity``.
    """

    position: Array
    momentum: Array
    logdensity: Array
    logdensity_grad: Array


def _normalize(x: Array) -> tuple[Array, Array]:
    """Return ``x / ||x||`` (or ``x`` itself when its norm is ~0) and ``||x||``."""
    norm = jnp.linalg.norm(x)
    return jnp.where(norm > _NORM_TOLERANCE, x / norm, x), norm


def random_unit_vector(rng_key: Array, shape: int | tuple[int, ...], dtype=jnp.float32) -> Array:
    """Uniformly random points on the unit sphere S^{d-1}, one per leading index.

    ``shape`` is ``d`` or ``(..., d)``; the result has that shape, unit norm along the last axis.
    """
    z = jax.random.normal(rng_key, (shape,) if isinstance(shape, int) else shape, dtype=dtype)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def esh_velocity_update(
    momentum: Array,
    logdensity_grad: Array,
    step_size: Array,
    coef: float,
    scale: Array | float = 1.0,
) -> tuple[Array, Array]:
    """Exact isokinetic (ESH) velocity update for a gradient held fixed over ``coef * step_size``.

    Solves du/dt = (I - u u^T) g / (d - 1) in closed form with g = scale * logdensity_grad.
    The form uses zeta = exp(-delta), which never overflows for large gradients.

    Args:
        momentum: ``(d,)`` unit velocity (zeros allowed: the result is then g / |g|).
        logdensity_grad: ``(d,)`` raw gradient of the log density.
        step_size: scalar step size epsilon.
        coef: integrator coefficient of this sub-step.
        scale: ``(d,)`` or scalar diagonal preconditioner s.

    Returns:
        The new unit velocity ``(d,)`` and the kinetic-energy change of the sub-step, a scalar
        equal to (d - 1) * log(cosh(delta) + p sinh(delta)).
    """
    dim = momentum.shape[0]
    unit_grad, grad_norm = _normalize(scale * logdensity_grad)
    projection = jnp.dot(momentum, unit_grad)
    delta = coef * step_size * grad_norm / (dim - 1)
    zeta = jnp.exp(-delta)
    raw = unit_grad * (1 - zeta) * (1 + zeta + projection * (1 - zeta)) + 2 * zeta * momentum
    new_momentum, _ = _normalize(raw)
    kinetic_change = (dim - 1) * (
        delta - jnp.log(2.0) + jnp.log(1 + projection + (1 - projection) * zeta**2)
    )
    return new_momentum, kinetic_change


def position_update(
    position: Array, momentum: Array, step_size: Array, coef: float, scale: Array | float = 1.0
) -> Array:
    """Drift: x <- x + coef * step_size * (scale * u). Units: path length times s."""
    return position + coef * step_size * scale * momentum


def isokinetic_step(
    state: IntegratorState,
    logdensity_and_grad_fn: LogDensityAndGrad,
    step_size: Array,
    scale: Array | float = 1.0,
    coefficients: Sequence[float] = INTEGRATORS["mclachlan"],
) -> tuple[IntegratorState, Array]:
    """One deterministic step of a palindromic isokinetic splitting integrator.

    The coefficient list alternates velocity and position sub-steps, beginning and ending with
    a velocity sub-step; the gradient at the end of the step is cached in the returned state
    and reused by the first velocity sub-step of the next step. The log density is evaluated
    once per position sub-step (twice per McLachlan step).

    Returns:
        The new state and the total kinetic-energy change of the step (a scalar).
    """
    position, momentum, logdensity, grad = state
    kinetic_change = jnp.zeros((), dtype=position.dtype)
    for index, coef in enumerate(coefficients):
        if index % 2 == 0:
            momentum, change = esh_velocity_update(momentum, grad, step_size, coef, scale)
            kinetic_change = kinetic_change + change
        else:
            position = position_update(position, momentum, step_size, coef, scale)
            logdensity, grad = logdensity_and_grad_fn(position)
    return IntegratorState(position, momentum, logdensity, grad), kinetic_change


def partial_refresh(momentum: Array, rng_key: Array, step_size: Array, L: Array) -> Array:
    """Partial velocity refresh over time ``step_size`` with decoherence length ``L``.

    u <- (u + nu z) / ||u + nu z|| with nu = sqrt((exp(2 step_size / L) - 1) / d) and
    z ~ N(0, I_d), so that E[u(t) . u(0)] ~ exp(-t / L). ``L = inf`` leaves u unchanged.
    A zero velocity (SMILE after a reset) becomes a uniformly random direction.
    """
    dim = momentum.shape[0]
    nu = jnp.sqrt(jnp.expm1(2 * step_size / L) / dim)
    noise = nu * jax.random.normal(rng_key, momentum.shape, dtype=momentum.dtype)
    refreshed, _ = _normalize(momentum + noise)
    return jnp.where(jnp.isinf(L), momentum, refreshed)


def mclmc_step(
    state: IntegratorState,
    rng_key: Array,
    logdensity_and_grad_fn: LogDensityAndGrad,
    step_size: Array,
    L: Array,
    scale: Array | float = 1.0,
    coefficients: Sequence[float] = INTEGRATORS["mclachlan"],
    refresh: bool = True,
) -> tuple[IntegratorState, Array, Array]:
    """One MCLMC step: half refresh, one integrator step, half refresh.

    This is BlackJAX's ``mclmc`` transition (``with_isokinetic_maruyama`` around an isokinetic
    integrator) on flat arrays; for the same inputs and refresh key it gives the same state.

    Args:
        state: current :class:`IntegratorState` (gradient cached at the position).
        rng_key: key for the two partial refreshes (unused, may be None, without refresh).
        logdensity_and_grad_fn: ``x -> (log p(x), grad log p(x))``; a mini-batch estimate is
            allowed, in which case both evaluations of the step use the same batch.
        step_size: epsilon.
        L: decoherence length (``inf`` = no refresh).
        scale: diagonal preconditioner s.
        coefficients: see :data:`INTEGRATORS`.
        refresh: static switch; False skips both refreshes (and their random draws), which is
            what ``L = inf`` does, without paying for the draws.

    Returns:
        ``(new_state, kinetic_change, energy_change)`` where
        energy_change = kinetic_change - log p(x_new) + log p(x_old).
    """
    if refresh:
        key_before, key_after = jax.random.split(rng_key)
        momentum = partial_refresh(state.momentum, key_before, step_size / 2, L)
        state = state._replace(momentum=momentum)
    new_state, kinetic_change = isokinetic_step(
        state, logdensity_and_grad_fn, step_size, scale, coefficients
    )
    if refresh:
        momentum = partial_refresh(new_state.momentum, key_after, step_size / 2, L)
        new_state = new_state._replace(momentum=momentum)
    energy_change = kinetic_change - new_state.logdensity + state.logdensity
    return new_state, kinetic_change, energy_change
