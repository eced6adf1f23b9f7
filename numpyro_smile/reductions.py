"""Reductions over posterior draws that stream: memory of one result, not of every draw.

The predictive metrics pool K members x S draws per test point. Collecting every draw's
output first costs K S n C numbers (a char transformer scored on 10^5 test tokens, 65
classes, 800 draws: 20 GB); each metric needs only a running summary over the draws. A
reduction here has three parts, so that a replay can apply it chunk by chunk
(:func:`numpyro_smile.replay.map_draws` with ``reduce=...``):

* :func:`reduce_chunk`, inside the compiled replay: one chunk of D draws ``(D, ...)`` to a
  partial summary, padded draws (``valid`` False) left out;
* :func:`combine`, on the host in float64: the running summary and the next chunk's
  partial (one array per output: :func:`summary_array`); :func:`merge` joins the summaries
  of several processes, each over its own members;
* :func:`finalize`: the summary to the reduced values.

The kinds (:data:`KINDS`), each over every (member, draw) pair of a point:

* ``"mean"``: the mean over all draws of all members (the pooled predictive probabilities,
  means and CDF values); running sum, ``(...)``.
* ``"mean_variance"``: ``(mean, variance)`` over all draws of all members (variance with
  divisor K S, as ``np.var``), merged by Chan et al.'s pairwise update from each chunk's mean
  and sum of squared deviations: no cancellation of large means, unlike sum of squares.
* ``"member_logmeanexp"``: ``(K, ...)``: per member, log of the mean over its draws of
  ``exp(value)`` (a member's log predictive density from pointwise log-likelihoods), a running
  log-sum-exp; the pooled mixture is ``logsumexp`` over members minus log K.
* ``"draws"``: every draw kept, ``(K S, ...)``: what a per-draw output (predictive replicates
  for quantiles) needs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KINDS",
    "LEADING_AXES",
    "check_kind",
    "combine",
    "finalize",
    "merge",
    "reduce_chunk",
    "summary_array",
]

#: The reductions over draws: see the module docstring.
KINDS = ("mean", "mean_variance", "member_logmeanexp", "draws")


def check_kind(name: str, kind: str) -> None:
    """Raise a ``ValueError`` naming the known kinds when ``kind`` (of output ``name``) is not
    one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"Unknown reduction {kind!r} for {name!r}; use one of {KINDS}.")


def _mask(valid: jax.Array, values: jax.Array) -> jax.Array:
    """``valid`` ``(D,)`` broadcast against ``values`` ``(D, ...)``."""
    return valid.reshape(valid.shape + (1,) * (values.ndim - 1))


def reduce_chunk(
    kind: str, values: jax.Array, valid: jax.Array, members: jax.Array, num_members: int
) -> jax.Array:
    """The partial summary of one chunk of draws (traceable: runs inside the replay's jit).

    Args:
        kind: one of :data:`KINDS`.
        values: ``(D, ...)`` one output of D draws.
        valid: ``(D,)`` bool, False for the padding of the last chunk.
        members: ``(D,)`` int, each draw's member among the ``num_members`` this call reduces
            (0-based; only ``"member_logmeanexp"`` reads it).
        num_members: the members this call reduces (a static int).

    Returns:
        ``"mean"``: the sum over valid draws ``(...)``; ``"mean_variance"``: the valid draws'
        mean and sum of squared deviations from it, stacked ``(2, ...)``;
        ``"member_logmeanexp"``: per member the log-sum-exp of its valid draws,
        ``(num_members, ...)`` (-inf for a member with none); ``"draws"``: ``values``.
    """
    check_kind("values", kind)
    if kind == "draws":
        return values
    mask = _mask(valid, values)
    if kind == "mean":
        return jnp.sum(jnp.where(mask, values, 0), axis=0)
    if kind == "mean_variance":
        count = jnp.maximum(jnp.sum(valid), 1).astype(values.dtype)
        mean = jnp.sum(jnp.where(mask, values, 0), axis=0) / count
        squares = jnp.sum(jnp.where(mask, (values - mean) ** 2, 0), axis=0)
        return jnp.stack([mean, squares])
    # member_logmeanexp: a log-sum-exp per member, shifted by the member's largest value
    segment = jnp.where(valid, members, num_members)  # padding: out of range, dropped
    peak = jax.ops.segment_max(values, segment, num_segments=num_members)
    shift = jnp.where(jnp.isfinite(peak), peak, 0.0)  # no draw, or all -inf: no shift
    scaled = jnp.exp(values - shift[jnp.minimum(segment, num_members - 1)])
    return jnp.log(jax.ops.segment_sum(scaled, segment, num_segments=num_members)) + shift


#: Axes of a summary array before the output's own axes (see :func:`summary_array`).
LEADING_AXES = {"mean": 0, "mean_variance": 1, "member_logmeanexp": 1, "draws": 1}


def combine(kind: str, summary: Any, partial: Any, seen: int, count: int) -> Any:
    """The running summary joined with the next chunk's partial (host NumPy, float64).

    Args:
        kind: one of :data:`KINDS`.
        summary: the running summary (``None`` before the first chunk).
        partial: :func:`reduce_chunk`'s output for the chunk, on the host.
        seen: the draws the running summary holds.
        count: the chunk's valid draws.

    Returns:
        The new running summary (for ``"draws"`` a list of chunks until
        :func:`summary_array`).
    """
    if kind == "draws":
        return [*(summary or []), np.asarray(partial)[:count]]
    if summary is None:
        return np.array(partial, np.float64)
    if kind == "mean":  # in place: no second (n, C) array
        return np.add(summary, partial, out=summary)
    if kind == "mean_variance":
        return _merge_moments(summary, seen, np.asarray(partial, np.float64), count)
    return np.logaddexp(summary, partial, out=summary)  # member_logmeanexp


def summary_array(kind: str, summary: Any) -> np.ndarray:
    """The running summary as one array: ``(...)`` for ``"mean"``, ``(2, ...)`` (mean, sum of
    squared deviations) for ``"mean_variance"``, ``(K, ...)`` for ``"member_logmeanexp"`` and
    ``(K S, ...)`` for ``"draws"``; :data:`LEADING_AXES` counts the axes before ``...``."""
    if kind == "draws" and isinstance(summary, list):
        return np.concatenate(summary, axis=0)
    return np.asarray(summary)


def _merge_moments(a: np.ndarray, count_a: int, b: np.ndarray, count_b: int) -> np.ndarray:
    """Chan, Golub and LeVeque's pairwise update of stacked (mean, sum of squared deviations)
    over ``count_a`` and ``count_b`` draws."""
    count = count_a + count_b
    delta = b[0] - a[0]
    mean = a[0] + delta * (count_b / count)
    squares = a[1] + b[1] + delta**2 * (count_a * count_b / count)
    return np.stack([mean, squares])


def merge(kind: str, stacked: np.ndarray, count: int) -> np.ndarray:
    """One summary array from P processes' arrays stacked ``(P, ...)``, each over its own
    ``count`` (member, draw) pairs, in member order: sums add, moments merge, per-member
    results and kept draws concatenate."""
    stacked = np.asarray(stacked, np.float64 if kind != "draws" else stacked.dtype)
    if kind == "mean":
        return stacked.sum(axis=0)
    if kind == "mean_variance":
        merged = stacked[0]
        for i, summary in enumerate(stacked[1:], start=1):
            merged = _merge_moments(merged, i * count, summary, count)
        return merged
    return stacked.reshape(-1, *stacked.shape[2:])  # member_logmeanexp, draws


def finalize(kind: str, summary: np.ndarray, num_draws: int, total: int, dtype: Any) -> Any:
    """The reduced values of a summary array over ``total`` (member, draw) pairs,
    ``num_draws`` per member, in the outputs' ``dtype``.

    Returns:
        ``"mean"``: ``(...)``; ``"mean_variance"``: ``(mean, variance)``, each ``(...)``;
        ``"member_logmeanexp"``: ``(K, ...)``; ``"draws"``: ``(K S, ...)``.
    """
    if kind == "draws":
        return summary
    if kind == "mean":
        return (summary / total).astype(dtype)
    if kind == "mean_variance":
        return summary[0].astype(dtype), (summary[1] / total).astype(dtype)
    return (summary - np.log(num_draws)).astype(dtype)  # member_logmeanexp
