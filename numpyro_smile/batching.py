"""Which data points each step sees: subsample plates, keyed permutations, batch schedules.

Pure JAX (no NumPyro): a plate is only its size N and batch size B (:class:`PlateInfo`), and a
schedule turns a key and a small state into the next ``(B,)`` indices of every plate.
:mod:`numpyro_smile.model_views` reads the plates off a NumPyro model and feeds the indices
back into it; the kernel, pretraining and the benchmarks draw the indices here.

Batch indices cost O(B) per step: ``"epoch"`` walks a per-chain, per-epoch keyed
pseudo-random permutation evaluated only at the B positions needed (no O(N) state or work);
``"with_replacement"`` draws B uniform indices. ``random.choice(replace=False)`` per step
(O(N) each step) is never used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "BATCH_SCHEDULES",
    "EpochBatchState",
    "PlateInfo",
    "feistel_permutation",
    "full_data_indices",
    "keyed_permutation",
    "schedule_init",
    "schedule_next",
    "schedules_init",
    "schedules_next",
    "swap_or_not_permutation",
]

#: The values of ``SMILE(batch_schedule=...)``: see :func:`schedule_next`.
BATCH_SCHEDULES = ("epoch", "with_replacement")


class PlateInfo(NamedTuple):
    """A subsample plate: ``size`` N data points, ``subsample_size`` B per step."""

    size: int
    subsample_size: int


class EpochBatchState(NamedTuple):
    """Per-chain epoch schedule: a key and the number of batches drawn so far.

    Epoch e visits the data in the order of a keyed pseudo-random permutation pi_e of
    {0, ..., N - 1}; batch k of the epoch is pi_e(kB), ..., pi_e(kB + B - 1). The permutation is
    never stored: pi_e (see :func:`keyed_permutation`) is evaluated on the B positions only,
    so each batch costs O(B) time and the schedule O(1) memory, whatever N is.
    """

    key: jax.Array
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count; a saved field name


_FEISTEL_ROUNDS = 4
_SWAP_OR_NOT_ROUNDS = 24


def _mix(x: jax.Array, key: jax.Array) -> jax.Array:
    """A keyed 32-bit integer hash (the 'lowbias32' finaliser), the Feistel round function."""
    x = x ^ key
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def feistel_permutation(positions: jax.Array, rng_key: jax.Array, size: int) -> jax.Array:
    """Keyed permutation by a 4-round balanced Feistel network with cycle walking.

    The network permutes {0, ..., 4^h - 1} (the smallest such range holding ``size``); values
    that land outside {0, ..., size - 1} are walked again (a ``while_loop``; expected passes
    below 4), which keeps it a bijection of the smaller set. Fastest on CPUs.
    """
    half_bits = max(1, math.ceil(math.log2(max(size, 2)) / 2))
    mask = jnp.uint32((1 << half_bits) - 1)
    round_keys = jax.random.bits(rng_key, (_FEISTEL_ROUNDS,), jnp.uint32)

    def feistel(x):
        left, right = x >> half_bits, x & mask
        for r in range(_FEISTEL_ROUNDS):
            left, right = right, left ^ (_mix(right, round_keys[r]) & mask)
        return (left << half_bits) | right

    def walk(x):
        return jnp.where(x >= size, feistel(x), x)

    x = feistel(positions.astype(jnp.uint32))
    x = jax.lax.while_loop(lambda x: jnp.any(x >= size), walk, x)
    return x.astype(jnp.int32)


def swap_or_not_permutation(positions: jax.Array, rng_key: jax.Array, size: int) -> jax.Array:
    """Keyed permutation by a swap-or-not shuffle (Hoang, Morris and Rogaway, 2012).

    Each round draws K in {0, ..., size - 1} and maps x to its partner (K - x) mod size when a
    keyed hash bit of max(x, partner) is set; every round is an involution, so the composition
    is a permutation for any size. Branch- and loop-free: fastest on GPUs, where a
    ``while_loop`` costs a host round trip per pass.
    """
    key_partner, key_bits = jax.random.split(rng_key)
    partners = jax.random.randint(key_partner, (_SWAP_OR_NOT_ROUNDS,), 0, size, jnp.int32)
    hash_keys = jax.random.bits(key_bits, (_SWAP_OR_NOT_ROUNDS,), jnp.uint32)
    x = positions.astype(jnp.int32)
    for r in range(_SWAP_OR_NOT_ROUNDS):
        partner = partners[r] - x
        partner = jnp.where(partner < 0, partner + size, partner)
        swap = (_mix(jnp.maximum(x, partner).astype(jnp.uint32), hash_keys[r]) & 1) == 1
        x = jnp.where(swap, partner, x)
    return x


def keyed_permutation(positions: jax.Array, rng_key: jax.Array, size: int) -> jax.Array:
    """pi(positions) for the pseudo-random permutation of {0, ..., size - 1} keyed by ``rng_key``.

    Feistel with cycle walking on CPU, swap-or-not on accelerators (chosen at trace time):
    each is the cheaper one where it runs (measured per SMILE step on an MLP: the Feistel
    walk's ``while_loop`` added 0.33 ms on an H200; 24 swap-or-not rounds added ~0.1 ms on
    a 2-core CPU). Both are exact permutations; the order differs between backends.
    """
    if jax.default_backend() == "cpu":
        return feistel_permutation(positions, rng_key, size)
    return swap_or_not_permutation(positions, rng_key, size)


def schedule_init(plate: PlateInfo, rng_key: jax.Array, kind: str) -> EpochBatchState | None:
    """Initial schedule state of one plate (``None`` for ``"with_replacement"``)."""
    if kind == "with_replacement":
        return None
    return EpochBatchState(rng_key, jnp.zeros((), jnp.int32))


def schedules_init(
    plates: tuple[tuple[str, PlateInfo], ...], rng_key: jax.Array, kind: str
) -> dict | None:
    """``{plate: schedule state}`` of one chain for every plate (``None``: nothing to keep)."""
    if not plates or kind != "epoch":
        return None
    keys = jax.random.split(rng_key, len(plates))
    return {name: schedule_init(plate, key, kind) for key, (name, plate) in zip(keys, plates)}


def schedule_next(
    plate: PlateInfo, state: EpochBatchState | None, rng_key: jax.Array
) -> tuple[EpochBatchState | None, jax.Array]:
    """The next ``(B,)`` batch of indices of one chain and the advanced schedule state.

    ``"epoch"`` (a state is given): batches walk a fresh keyed permutation each epoch, without
    replacement; the last N mod B positions of every epoch are skipped. ``"with_replacement"``
    (``state is None``): B uniform draws from ``rng_key``.
    """
    batch_size = plate.subsample_size
    if state is None:
        indices = jax.random.randint(rng_key, (batch_size,), 0, plate.size, jnp.int32)
        return None, indices
    batches_per_epoch = plate.size // batch_size
    epoch = state.count // batches_per_epoch
    positions = (state.count % batches_per_epoch) * batch_size + jnp.arange(batch_size)
    indices = keyed_permutation(positions, jax.random.fold_in(state.key, epoch), plate.size)
    return EpochBatchState(state.key, state.count + 1), indices


def schedules_next(
    plates: tuple[tuple[str, PlateInfo], ...],
    states: dict | None,
    rng_key: jax.Array,
    num_chains: int | None = None,
) -> tuple[dict | None, dict]:
    """Advance every plate's batch schedule, for one chain or for ``num_chains`` at once.

    Args:
        plates: ``((name, PlateInfo), ...)``; empty for a full-batch model.
        states: from :func:`schedules_init` (leaves batched over chains when ``num_chains``
            is given), or ``None`` for ``"with_replacement"``.
        rng_key: a single key; each chain gets its own stream from it.

    Returns:
        ``(new_states, {plate: indices})`` with indices ``(B,)``, or ``(num_chains, B)``;
        each chain draws its own batches.
    """
    if not plates:
        return states, {}
    keys = jax.random.split(rng_key, len(plates))
    new_states, indices = {}, {}
    for key, (name, plate) in zip(keys, plates):
        state = None if states is None else states[name]
        if num_chains is None:
            new_states[name], indices[name] = schedule_next(plate, state, key)
        else:
            new_states[name], indices[name] = jax.vmap(
                lambda s, k, plate=plate: schedule_next(plate, s, k)
            )(state, jax.random.split(key, num_chains))
    return (None if states is None else new_states), indices


def full_data_indices(plates: dict[str, PlateInfo]) -> dict[str, jax.Array]:
    """``{name: arange(N)}`` for every subsample plate."""
    return {name: jnp.arange(info.size) for name, info in plates.items()}
