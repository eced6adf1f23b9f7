"""Compiled chunked loops over a sampler's ``step``: warmup and thinned sampling.

Each loop is one function with a traced step (or draw) count, compiled once per run and called
a few times (:data:`~numpyro_smile.runtime.PROGRESS_CHUNKS`), which gives progress between
calls and lets each chunk of draws move to host memory while the next one runs. ``step`` is
``(state, arrays) -> state`` for all members at once (the data ``arrays`` are passed at every
call, never baked into the executable as constants).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_smile import sharding
from numpyro_smile.runtime import PROGRESS_CHUNKS

__all__ = [
    "advance_fn",
    "collect_draws",
    "draws_per_chunk",
    "record_fn",
    "run_steps",
    "sample_chunk_fn",
    "stream_draws",
]


def advance_fn(step: Callable) -> Callable:
    """``(state, num_steps, arrays) -> state``: ``num_steps`` (traced) steps."""

    def advance(state, num_steps, arrays):
        return jax.lax.fori_loop(0, num_steps, lambda _, s: step(s, arrays), state)

    return advance


def sample_chunk_fn(step: Callable, record: Callable, thinning: int, chunk: int) -> Callable:
    """``(state, num_draws, arrays) -> (state, buffer)``: ``num_draws`` (traced, at most
    ``chunk``) draws, each after ``thinning`` steps; ``buffer`` holds ``chunk`` rows of
    ``record(state, resets)``, ``resets`` the guardrail resets since the previous draw."""

    def sample_chunk(state, num_draws, arrays):
        def one_step(_, carry):
            state, resets = carry
            state = step(state, arrays)
            return state, resets + state.diverging.astype(jnp.int32)

        def draw(j, carry):
            state, buffer = carry
            no_resets = jnp.zeros(state.diverging.shape, jnp.int32)
            state, resets = jax.lax.fori_loop(0, thinning, one_step, (state, no_resets))
            new = record(state, resets)
            return state, jax.tree.map(lambda b, r: b.at[j].set(r), buffer, new)

        shapes = record(state, jnp.zeros(state.diverging.shape, jnp.int32))
        buffer = jax.tree.map(lambda r: jnp.zeros((chunk, *r.shape), r.dtype), shapes)
        return jax.lax.fori_loop(0, num_draws, draw, (state, buffer))

    return sample_chunk


def draws_per_chunk(
    num_draws: int, num_members: int, dim: int, max_elements: int, requested: int | None
) -> int:
    """Draws per compiled call: ``requested``, or a twentieth of the draws, within
    ``max_elements`` numbers per chunk of positions."""
    chunk = requested or max(
        1, min(math.ceil(num_draws / PROGRESS_CHUNKS), max_elements // (num_members * dim))
    )
    return min(chunk, num_draws)


def record_fn(full_batch: bool) -> Callable:
    """``(state, resets) -> {"z", "stats"}``: what a draw keeps (``L`` only in full batch,
    where it is tuned)."""

    def record(state, resets):
        stats = {
            "lp": -state.potential_energy,
            "step_size": state.step_size,
            "energy_change": state.energy_change,
            "diverging": resets > 0,
            "resets": resets,
        }
        if full_batch:
            stats["L"] = state.L
        return {"z": state.z, "stats": stats}

    return record


def run_steps(
    advance: Callable, state: Any, num_steps: int, arrays: Any, on_chunk: Callable
) -> Any:
    """``num_steps`` steps in :data:`PROGRESS_CHUNKS` calls of the compiled ``advance``;
    ``on_chunk(count, state)`` after each."""
    chunk = max(1, math.ceil(num_steps / PROGRESS_CHUNKS))
    for done in range(0, num_steps, chunk):
        count = min(chunk, num_steps - done)
        state = advance(state, count, arrays)
        on_chunk(count, state)
    return state


def collect_draws(
    sample_chunk: Callable,
    state: Any,
    arrays: Any,
    num_draws: int,
    chunk: int,
    on_chunk: Callable,
) -> tuple[Any, Any]:
    """Run the compiled ``sample_chunk`` until ``num_draws`` draws are on the host.

    Each chunk starts its copy to host memory as soon as it is produced and is stored while
    the next one runs. Returns ``(host draws with leaves (K, num_draws, ...), state)``.
    """
    host: list = [None]

    def keep(draws, start):
        if host[0] is None:
            host[0] = jax.tree.map(
                lambda a: np.empty((a.shape[0], num_draws, *a.shape[2:]), a.dtype), draws
            )
        for dest, src in zip(jax.tree.leaves(host[0]), jax.tree.leaves(draws)):
            dest[:, start : start + src.shape[1]] = src

    state = stream_draws(sample_chunk, state, arrays, num_draws, chunk, on_chunk, keep)
    return host[0], state


def stream_draws(
    sample_chunk: Callable,
    state: Any,
    arrays: Any,
    num_draws: int,
    chunk: int,
    on_chunk: Callable,
    consume: Callable,
) -> Any:
    """Run the compiled ``sample_chunk`` for ``num_draws`` draws, handing each chunk to
    ``consume(draws, start)`` on the host (leaves ``(K, count, ...)``, the draws ``start,
    ..., start + count - 1``), in order, while the next chunk runs; returns the final state.

    Host memory holds one or two chunks at a time, whatever ``num_draws``: what ``consume``
    keeps of them (all of it in host arrays, a file, a running summary) is its choice. Each
    chunk is waited for before the previous one is consumed, so that a driver's timings of
    sampling and of ``consume`` (replays of the model at the draws: computations that would
    otherwise share the device with the next chunk) each measure their own work.
    """
    pending: tuple[Any, int, int] | None = None
    for done in range(0, num_draws, chunk):
        count = min(chunk, num_draws - done)
        state, buffer = sample_chunk(state, count, arrays)
        for leaf in jax.tree.leaves(buffer):
            leaf.copy_to_host_async()
        if pending is not None:
            jax.block_until_ready(buffer)
            consume(_host_chunk(pending[0], pending[2]), pending[1])
        pending = (buffer, done, count)
        on_chunk(count, state)
    assert pending is not None, "num_draws must be positive"
    consume(_host_chunk(pending[0], pending[2]), pending[1])
    return state


def _host_chunk(buffer: Any, count: int) -> Any:
    """The first ``count`` rows of a ``(chunk, K, ...)`` buffer as host ``(K, count, ...)``
    arrays (with several processes every process gets every member's draws)."""
    return jax.tree.map(lambda a: np.swapaxes(a[:count], 0, 1), sharding.to_host(buffer))
