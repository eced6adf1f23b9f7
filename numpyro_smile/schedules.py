"""Step-size schedules of the stochastic-gradient samplers: constant, decaying, cyclical.

Pure JAX, no NumPyro. A schedule maps the iteration count ``i`` (warmup included, counted from
0) to the step size of that step, and says whether the step explores (an optimisation step whose
draw is not a posterior draw) or samples. Every stochastic-gradient kernel
(:class:`~numpyro_smile.SGLD`, :class:`~numpyro_smile.SGHMC`,
:class:`~numpyro_smile.AdaSGHMC`) accepts a float (a constant step size) or one of these
objects as its ``step_size``. Schedules are frozen NamedTuples: hashable, so a built sampler
closes over one as a static setting and compiles once.

* :class:`ConstantSchedule`: epsilon_i = epsilon (what a float means).
* :class:`PolynomialDecay`: epsilon_i = a (b + i)^(-gamma), Welling and Teh (2011)'s SGLD
  schedule, whose decay (0.5 < gamma <= 1) removes the step-size bias in the limit.
* :class:`CyclicalSchedule`: Zhang et al. (2020)'s cyclical step size (cSGLD, cSGHMC): within
  each cycle of ``cycle_length`` steps, epsilon = epsilon_0 / 2 (cos(pi r) + 1) where r in
  [0, 1) is the position in the cycle; the first ``exploration`` share of every cycle (large
  steps) explores without injected noise, the tail samples. Only the tail's draws are kept.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ConstantSchedule",
    "CyclicalSchedule",
    "PolynomialDecay",
    "Schedule",
    "as_schedule",
    "cyclical",
]


class ConstantSchedule(NamedTuple):
    """A constant step size ``step_size`` (what a float ``step_size=`` means); never explores."""

    step_size: float

    def __call__(self, i: jax.Array) -> jax.Array:
        """The step size of iteration ``i`` (a scalar, float32)."""
        return jnp.full(jnp.shape(i), self.step_size, jnp.float32)

    def exploring(self, i: jax.Array) -> jax.Array:
        """Whether iteration ``i`` explores (never)."""
        return jnp.zeros(jnp.shape(i), bool)

    def resolve(self, num_warmup: int) -> ConstantSchedule:
        """Nothing depends on the run: itself."""
        return self

    def check(self) -> None:
        """Raise a ``ValueError`` naming the fix for a bad value."""
        _check_positive("step_size", self.step_size)


class PolynomialDecay(NamedTuple):
    """Welling and Teh (2011)'s decaying step size ``a (b + i)^(-gamma)``.

    Attributes:
        a: scale: the step size at ``i = 0`` is ``a b^(-gamma)``.
        b: offset in steps (>= 1), which delays the decay.
        gamma: decay exponent in (0, 1]; (0.5, 1] satisfies the Robbins-Monro conditions.
    """

    a: float
    b: float = 1.0
    gamma: float = 0.55

    def __call__(self, i: jax.Array) -> jax.Array:
        """The step size of iteration ``i``."""
        i = jnp.asarray(i, jnp.float32)
        return jnp.float32(self.a) * (jnp.float32(self.b) + i) ** jnp.float32(-self.gamma)

    def exploring(self, i: jax.Array) -> jax.Array:
        """Whether iteration ``i`` explores (never)."""
        return jnp.zeros(jnp.shape(i), bool)

    def resolve(self, num_warmup: int) -> PolynomialDecay:
        """Nothing depends on the run: itself."""
        return self

    def check(self) -> None:
        """Raise a ``ValueError`` naming the fix for a bad value."""
        _check_positive("PolynomialDecay.a", self.a)
        if not (_is_number(self.b) and self.b >= 1):
            raise ValueError(f"PolynomialDecay.b must be a number >= 1, got {self.b!r}.")
        if not (_is_number(self.gamma) and 0 < self.gamma <= 1):
            raise ValueError(f"PolynomialDecay.gamma must be in (0, 1], got {self.gamma!r}.")


class CyclicalSchedule(NamedTuple):
    """Zhang et al. (2020)'s cyclical cosine step size (cSGLD, cSGHMC).

    Iteration ``i`` lies at ``k = i - start`` steps into the cycles; its position in its cycle
    is ``r = (k mod cycle_length) / cycle_length`` in [0, 1), and its step size
    ``step_size / 2 (cos(pi r) + 1)``: ``step_size`` at the start of every cycle, falling to
    nearly 0 at its end. Steps with ``r < exploration`` explore: the kernels take them without
    injected noise (stochastic-gradient descent with momentum for SGHMC) and their draws are
    not posterior draws; the rest of the cycle samples. Before ``start`` (by default the end
    of warmup) the step size is ``step_size`` and every step explores.

    Build one with :func:`cyclical` (from a number of cycles over a number of steps).

    Attributes:
        step_size: epsilon_0, the largest step size (at the start of each cycle).
        cycle_length: steps per cycle (Zhang et al.'s ceil(K / M) for K steps in M cycles).
        exploration: beta in [0, 1): the share of each cycle that explores.
        start: the iteration at which the first cycle starts; ``None``: at the end of warmup.
    """

    step_size: float
    cycle_length: int
    exploration: float = 0.5
    start: int | None = None

    def _position(self, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(r, before)``: the position in the cycle and whether ``i`` precedes ``start``."""
        k = jnp.asarray(i, jnp.int32) - jnp.int32(self.start or 0)
        r = (jnp.maximum(k, 0) % self.cycle_length).astype(jnp.float32) / self.cycle_length
        return r, k < 0

    def __call__(self, i: jax.Array) -> jax.Array:
        """The step size of iteration ``i``."""
        r, before = self._position(i)
        cosine = jnp.float32(self.step_size / 2) * (jnp.cos(jnp.float32(math.pi) * r) + 1)
        return jnp.where(before, jnp.float32(self.step_size), cosine)

    def exploring(self, i: jax.Array) -> jax.Array:
        """Whether iteration ``i`` explores (before ``start``, or in a cycle's first
        ``exploration`` share)."""
        r, before = self._position(i)
        return before | (r < self.exploration)

    def resolve(self, num_warmup: int) -> CyclicalSchedule:
        """``start=None`` made the end of warmup."""
        return self if self.start is not None else self._replace(start=int(num_warmup))

    def check(self) -> None:
        """Raise a ``ValueError`` naming the fix for a bad value."""
        _check_positive("CyclicalSchedule.step_size", self.step_size)
        if not _is_int(self.cycle_length) or self.cycle_length < 1:
            raise ValueError(
                f"CyclicalSchedule.cycle_length must be an integer >= 1, got "
                f"{self.cycle_length!r}; cyclical(step_size, num_steps, num_cycles) computes it."
            )
        if not (_is_number(self.exploration) and 0 <= self.exploration < 1):
            raise ValueError(
                f"CyclicalSchedule.exploration must be in [0, 1) (the share of a cycle that "
                f"explores), got {self.exploration!r}."
            )
        if self.start is not None and (not _is_int(self.start) or self.start < 0):
            raise ValueError(
                f"CyclicalSchedule.start must be an integer >= 0 or None, got {self.start!r}."
            )

    def keep(self, iterations: Any) -> np.ndarray:
        """Boolean mask of the ``iterations`` (an array of iteration counts, e.g. the steps at
        which draws were recorded) whose draws are posterior draws (not exploring)."""
        return ~np.asarray(jax.device_get(self.exploring(jnp.asarray(iterations))))


#: What a kernel's ``step_size`` may be.
Schedule = ConstantSchedule | PolynomialDecay | CyclicalSchedule


def cyclical(
    step_size: float,
    num_steps: int,
    num_cycles: int,
    exploration: float = 0.5,
    start: int | None = None,
) -> CyclicalSchedule:
    """Zhang et al. (2020)'s schedule of ``num_cycles`` cosine cycles over ``num_steps`` steps
    (cycle length ``ceil(num_steps / num_cycles)``), e.g. the ``num_samples`` of a run.

    Args:
        step_size: epsilon_0, the step size at the start of every cycle.
        num_steps: steps the cycles cover (K); they repeat after it.
        num_cycles: M, the number of cycles in ``num_steps``.
        exploration: beta, the share of every cycle that explores (no draws kept).
        start: the iteration of the first cycle (``None``: the end of warmup).
    """
    for name, value in (("num_steps", num_steps), ("num_cycles", num_cycles)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"cyclical(...): {name} must be an integer >= 1, got {value!r}.")
    schedule = CyclicalSchedule(
        float(step_size), math.ceil(num_steps / num_cycles), exploration, start
    )
    schedule.check()
    return schedule


def as_schedule(step_size: Any, owner: str) -> Schedule:
    """``step_size`` (a positive float or a schedule) as a checked schedule.

    Raises:
        ValueError: a missing, non-positive or non-finite step size, or a bad schedule, with
            the fix (``owner`` names the kernel in the message).
    """
    if step_size is None:
        raise ValueError(
            f"{owner} needs a step_size: a positive float, or a schedule such as "
            "numpyro_smile.cyclical(...). Unlike SMILE it has no tuner; pick one on held-out "
            "data with numpyro_smile.select_step_size."
        )
    if isinstance(step_size, (ConstantSchedule, PolynomialDecay, CyclicalSchedule)):
        schedule = step_size
    elif _is_number(step_size):
        schedule = ConstantSchedule(float(step_size))
    else:
        raise TypeError(
            f"{owner}: step_size must be a positive float or a schedule "
            "(ConstantSchedule, PolynomialDecay, CyclicalSchedule), got "
            f"{type(step_size).__name__}."
        )
    try:
        schedule.check()
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None
    return schedule


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive(name: str, value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
