"""Batch schedules and the keyed permutations under the epoch schedule (pure JAX)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_smile import batching
from numpyro_smile.batching import PlateInfo


def test_epoch_schedule_visits_every_index_once_per_epoch():
    plate = PlateInfo(1003, 100)  # 10 batches per epoch, 3 points left out each epoch
    state = batching.schedule_init(plate, jax.random.key(0), "epoch")
    keys = jax.random.split(jax.random.key(1), 20)
    batches = []
    for key in keys:
        state, idx = batching.schedule_next(plate, state, key)
        batches.append(np.asarray(idx))
    first, second = np.concatenate(batches[:10]), np.concatenate(batches[10:])
    assert len(np.unique(first)) == 1000 and len(np.unique(second)) == 1000
    assert not np.array_equal(first, second)  # a fresh permutation for the second epoch


def test_with_replacement_schedule_is_uniform():
    plate = PlateInfo(10, 5)
    _, idx = batching.schedule_next(plate, None, jax.random.key(0))
    assert idx.shape == (5,)
    counts = np.bincount(
        np.concatenate(
            [
                np.asarray(batching.schedule_next(plate, None, k)[1])
                for k in jax.random.split(jax.random.key(1), 2000)
            ]
        ),
        minlength=10,
    )
    # 10,000 draws over 10 cells: each count is 1000 +- 30 (sd); allow 5 sd.
    assert np.all(np.abs(counts - 1000) < 150)


PERMUTATIONS = [batching.feistel_permutation, batching.swap_or_not_permutation]


@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("size", [2, 3, 17, 256, 1003, 65_537])
def test_keyed_permutation_is_a_bijection(permutation, size):
    """Both keyed permutations map {0..N-1} onto itself, and differ by key."""
    positions = jnp.arange(size)
    first = np.asarray(permutation(positions, jax.random.key(0), size))
    second = np.asarray(permutation(positions, jax.random.key(1), size))
    np.testing.assert_array_equal(np.sort(first), np.arange(size))
    np.testing.assert_array_equal(np.sort(second), np.arange(size))
    if size > 3:
        assert not np.array_equal(first, second)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_keyed_permutation_looks_random(permutation):
    """Neighbouring positions land far apart: the mean |pi(i+1) - pi(i)| of a uniform random
    permutation of N is ~N/3; a structured map (e.g. affine) would give a constant."""
    size = 10_000
    perm = np.asarray(permutation(jnp.arange(size), jax.random.key(3), size))
    gaps = np.abs(np.diff(perm))
    assert 0.3 * size < gaps.mean() < 0.37 * size
    assert len(np.unique(gaps)) > size // 4
