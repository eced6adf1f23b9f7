"""The end-of-warmup convergence check: did warmup end where sampling can start?

A run whose warmup is too short for its problem used to finish silently: the step size was
still climbing towards its working range, or the chains had not yet found the same region, and
the draws were wrong without a word. The kernel now watches the second half of warmup at no
extra gradient cost and, after the last warmup step, warns (:class:`ConvergenceWarning`) when

* **the step size is still climbing**: it grew by more than ``CLIMB_RATIO`` over the last
  quarter of warmup (geometric mean over chains), so adaptation had not settled; or
* **the chains disagree**: the potential-scale reduction factor R-hat (Gelman and Rubin, the
  classic between/within-chain form) of the potential energy or of a few coordinates, over
  the second half of warmup, exceeds ``RHAT_THRESHOLD``. This needs several chains in one
  state (``chain_method="vectorized"``, or the ensemble's members when asked).

The statistics are Welford sums of ``MONITORED_COORDINATES`` or fewer flat coordinates, spread
evenly over the parameter vector, and of the potential: O(1) memory per chain. The check runs
once, in Python: under NumPyro's ``MCMC`` (which has no end-of-warmup hook for kernels)
through a host callback from the compiled step; in
:class:`~numpyro_smile.SMILEEnsemble`, which runs warmup as its own phase, on the host after
it, so that the compiled loops hold no callback and JAX's persistent compilation cache can
store them. It never changes a draw.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CLIMB_RATIO",
    "MONITORED_COORDINATES",
    "RHAT_THRESHOLD",
    "ConvergenceWarning",
    "MonitorState",
    "monitor_init",
    "monitor_update",
    "monitored_indices",
    "rhat",
    "warmup_report",
]

#: At most this many flat coordinates (evenly spaced over the parameter vector) are watched.
MONITORED_COORDINATES = 16
#: R-hat above this (any watched scalar) after the second half of warmup: chains disagree.
#: Gelman and Rubin's classic 1.1; the stricter 1.01 is for the draws, not for warmup.
RHAT_THRESHOLD = 1.1
#: Step-size growth over the last quarter of warmup above this: still climbing.
CLIMB_RATIO = 1.5


class ConvergenceWarning(UserWarning):
    """Warmup ended before the sampler settled: the step size was still climbing or the
    chains disagreed. The draws that follow are not yet from the posterior."""


class MonitorState(NamedTuple):
    """Statistics of one chain over the second half of warmup.

    Attributes:
        steps: steps accumulated (float scalar).
        mean: ``(K,)`` running means of the watched scalars (potential first).
        m2: ``(K,)`` running sums of squared deviations (Welford).
        step_size_mark: the step size when three quarters of warmup had run (NaN before).
    """

    steps: jax.Array
    mean: jax.Array
    m2: jax.Array
    step_size_mark: jax.Array


def monitored_indices(dim: int) -> np.ndarray:
    """The flat coordinates watched: all when ``dim <= MONITORED_COORDINATES``, else that
    many spread evenly from the first to the last."""
    count = min(dim, MONITORED_COORDINATES)
    return np.unique(np.linspace(0, dim - 1, count).round().astype(np.int64))


def monitor_init(dim: int, dtype) -> MonitorState:
    size = 1 + len(monitored_indices(dim))
    zeros = jnp.zeros((size,), dtype)
    return MonitorState(jnp.zeros((), dtype), zeros, zeros, jnp.full((), jnp.nan, dtype))


def monitor_update(
    state: MonitorState,
    i: jax.Array,
    num_warmup: int,
    potential: jax.Array,
    position: jax.Array,
    step_size: jax.Array,
) -> MonitorState:
    """Fold in step ``i``'s state (after the step) while ``num_warmup // 2 <= i < num_warmup``;
    record the step size at ``i == 3 * num_warmup // 4``. Branch-free (runs under ``vmap``)."""
    values = jnp.concatenate(
        [potential[None], position[monitored_indices(position.shape[0])]]
    ).astype(state.mean.dtype)
    inside = (i >= num_warmup // 2) & (i < num_warmup) & jnp.all(jnp.isfinite(values))
    count = state.steps + 1
    delta = values - state.mean
    mean = state.mean + delta / count
    m2 = state.m2 + delta * (values - mean)
    mark = jnp.where(i == (3 * num_warmup) // 4, step_size, state.step_size_mark)
    return MonitorState(
        jnp.where(inside, count, state.steps),
        jnp.where(inside, mean, state.mean),
        jnp.where(inside, m2, state.m2),
        mark.astype(state.step_size_mark.dtype),
    )


def rhat(count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Classic R-hat from per-chain Welford sums: ``(C,)`` counts, ``(C, K)`` means and sums of
    squares -> ``(K,)``. ``sqrt(((n - 1) / n W + B / n) / W)`` with W the mean within-chain
    variance and B / n the variance of the chain means; 1 for a scalar that does not move."""
    n = float(np.min(count))
    within = np.mean(m2 / np.maximum(count[:, None] - 1, 1), axis=0)
    between = np.var(mean, axis=0, ddof=1)
    pooled = (n - 1) / n * within + between
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.sqrt(pooled / within)
    constant = (within <= 0) & (between <= 0)
    return np.where(constant, 1.0, np.where(within > 0, value, np.inf))


def warmup_report(
    monitor: MonitorState,
    step_size: np.ndarray,
    *,
    check_chains: bool,
    label: str = "chains",
    site_names: tuple[str, ...] = (),
) -> str | None:
    """The warning's text after the last warmup step, or ``None`` when warmup settled.

    Args:
        monitor: the chains' :class:`MonitorState` (leading ``(C,)`` axis, or none for one).
        step_size: ``(C,)`` (or scalar) step size at the end of warmup.
        check_chains: compare chains (R-hat) as well as the step-size climb.
        label: what a chain is called ("chains" or "members").
        site_names: names of the watched scalars after the potential (for the message).
    """
    count, mean, m2, mark = (np.atleast_1d(np.asarray(a, np.float64)) for a in monitor)
    mean, m2 = mean.reshape(count.size, -1), m2.reshape(count.size, -1)
    step_size = np.atleast_1d(np.asarray(step_size, np.float64))
    problems = []
    valid = np.isfinite(mark) & (mark > 0) & np.isfinite(step_size) & (step_size > 0)
    if np.any(valid):
        growth = math.exp(float(np.mean(np.log(step_size[valid] / mark[valid]))))
        if growth > CLIMB_RATIO:
            problems.append(
                f"the step size was still climbing ({growth:.1f}x over the last quarter of "
                f"warmup, to {float(np.mean(step_size)):.2e})"
            )
    if check_chains and count.size > 1 and float(np.min(count)) >= 4:
        values = rhat(count, mean, m2)
        worst = int(np.argmax(values))
        if values[worst] > RHAT_THRESHOLD:
            names = ("the potential energy", *site_names)
            name = names[worst] if worst < len(names) else f"watched coordinate {worst - 1}"
            problems.append(
                f"the {label} disagree: R-hat {values[worst]:.2f} > {RHAT_THRESHOLD} on "
                f"{name} over the second half of warmup"
            )
    if not problems:
        return None
    return (
        f"Warmup ended before the sampler settled: {'; '.join(problems)}. The draws that follow "
        "are not yet from the posterior. Try, in order: a longer num_warmup; a better start "
        "(init_params are unconstrained values, e.g. log(sigma), not sigma; pretrained points "
        "help a neural network, but in a hierarchical model whose density grows without bound "
        "as a group scale goes to 0, the default Adam pretraining drives the chains into that "
        "funnel: pass pretrain_steps=0, or reparameterise it non-centred); for neural "
        "networks, chains started in different modes of a symmetric posterior also disagree "
        "(SMILEEnsemble runs one chain per mode on purpose)."
    )


def warn_after_warmup(
    monitor: MonitorState,
    step_size: np.ndarray,
    *,
    check_chains: bool,
    label: str = "chains",
    site_names: tuple[str, ...] = (),
) -> None:
    """Host side of the check: warn once (:class:`ConvergenceWarning`) if there is news."""
    message = warmup_report(
        monitor, step_size, check_chains=check_chains, label=label, site_names=site_names
    )
    if message is not None:
        warnings.warn(message, ConvergenceWarning, stacklevel=1)
