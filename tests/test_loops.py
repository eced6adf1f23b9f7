"""The chunked loops of :mod:`numpyro_smile.loops` on a counter "sampler" whose draws are
known in advance: steps, thinning, resets between draws, chunking and host storage."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_smile import loops
from numpyro_smile.runtime import PROGRESS_CHUNKS

K = 3  # members


class Counter(NamedTuple):
    """A deterministic "chain": ``i`` counts steps; step i is a reset when i % 3 == 0."""

    i: jax.Array
    x: jax.Array
    diverging: jax.Array


def step(state, arrays):
    i = state.i + 1
    return Counter(i, state.x + arrays["increment"], i % 3 == 0)


def start():
    return Counter(jnp.zeros(K, jnp.int32), jnp.zeros((K, 2)), jnp.zeros(K, bool))


ARRAYS = {"increment": jnp.array([1.0, 10.0])}


def record(state, resets):
    return {"i": state.i, "x": state.x, "resets": resets}


@pytest.fixture(scope="module")
def traces():
    return {"advance": 0, "chunk": 0}


@pytest.fixture(scope="module")
def advance(traces):
    def counted(state, arrays):
        traces["advance"] += 1
        return step(state, arrays)

    return jax.jit(loops.advance_fn(counted))


THINNING, CHUNK = 3, 4


@pytest.fixture(scope="module")
def sample_chunk(traces):
    def counted(state, arrays):
        traces["chunk"] += 1
        return step(state, arrays)

    return jax.jit(loops.sample_chunk_fn(counted, record, THINNING, CHUNK))


def test_advance_runs_a_traced_number_of_steps(advance, traces):
    state = advance(start(), 7, ARRAYS)
    np.testing.assert_array_equal(state.i, [7, 7, 7])
    np.testing.assert_allclose(state.x, np.tile([7.0, 70.0], (K, 1)))
    state = advance(state, 0, ARRAYS)
    np.testing.assert_array_equal(state.i, [7, 7, 7])
    state = advance(state, 11, {"increment": jnp.array([0.0, 1.0])})  # new data, same program
    np.testing.assert_array_equal(state.i, [18, 18, 18])
    np.testing.assert_allclose(state.x[0], [7.0, 81.0])
    assert traces["advance"] == 1


def expected_draws(first_step, num_draws):
    """Step counts after each draw and the resets (steps divisible by 3) since the last one."""
    ends = first_step + THINNING * np.arange(1, num_draws + 1)
    resets = [sum((s % 3 == 0) for s in range(e - THINNING + 1, e + 1)) for e in ends]
    return ends, np.array(resets)


def test_sample_chunk_thins_and_counts_resets_between_draws(sample_chunk, traces):
    state = Counter(jnp.full(K, 1, jnp.int32), jnp.zeros((K, 2)), jnp.zeros(K, bool))
    state, buffer = sample_chunk(state, 3, ARRAYS)
    assert buffer["i"].shape == (CHUNK, K) and buffer["x"].shape == (CHUNK, K, 2)
    ends, resets = expected_draws(1, 3)  # steps 2..4, 5..7, 8..10
    np.testing.assert_array_equal(buffer["i"][:3, 0], ends)
    np.testing.assert_array_equal(buffer["resets"][:3, 0], resets)
    np.testing.assert_array_equal(resets, [1, 1, 1])
    np.testing.assert_array_equal(buffer["i"][3], np.zeros(K))  # rows past num_draws unused
    np.testing.assert_array_equal(state.i, np.full(K, 1 + 3 * THINNING))
    state, buffer = sample_chunk(state, CHUNK, ARRAYS)
    np.testing.assert_array_equal(buffer["i"][:, 1], expected_draws(10, CHUNK)[0])
    assert traces["chunk"] == 1


@pytest.mark.parametrize("full_batch", [True, False])
def test_record_keeps_the_draw_and_its_statistics(full_batch):
    class State(NamedTuple):
        z: dict
        potential_energy: jax.Array
        step_size: jax.Array
        energy_change: jax.Array
        L: jax.Array

    state = State({"w": jnp.ones((K, 2))}, jnp.array([1.0, -2.0, 3.0]), 0.1, 0.01, 2.0)
    resets = jnp.array([0, 2, 1])
    draw = loops.record_fn(full_batch)(state, resets)
    assert set(draw) == {"z", "stats"}
    assert draw["z"] is state.z
    expected_keys = {"lp", "step_size", "energy_change", "diverging", "resets"}
    assert set(draw["stats"]) == expected_keys | ({"L"} if full_batch else set())
    np.testing.assert_array_equal(draw["stats"]["lp"], [-1.0, 2.0, -3.0])
    np.testing.assert_array_equal(draw["stats"]["diverging"], [False, True, True])
    np.testing.assert_array_equal(draw["stats"]["resets"], resets)


def test_collect_draws_stores_chunks_in_order_on_the_host(sample_chunk):
    counts = []
    host, state = loops.collect_draws(
        sample_chunk, start(), ARRAYS, 11, CHUNK, lambda count, s: counts.append(count)
    )
    assert counts == [4, 4, 3]
    assert isinstance(host["i"], np.ndarray) and host["i"].shape == (K, 11)
    assert host["x"].shape == (K, 11, 2)
    ends, resets = expected_draws(0, 11)
    for member in range(K):
        np.testing.assert_array_equal(host["i"][member], ends)
        np.testing.assert_array_equal(host["resets"][member], resets)
    np.testing.assert_allclose(host["x"][:, :, 1], np.tile(10.0 * ends, (K, 1)))
    np.testing.assert_array_equal(state.i, np.full(K, 11 * THINNING))


def test_collect_draws_with_a_single_chunk(sample_chunk):
    host, _ = loops.collect_draws(sample_chunk, start(), ARRAYS, 2, CHUNK, lambda *a: None)
    np.testing.assert_array_equal(host["i"], np.tile([3, 6], (K, 1)))


def test_collect_draws_needs_draws(sample_chunk):
    with pytest.raises(AssertionError, match="num_draws must be positive"):
        loops.collect_draws(sample_chunk, start(), ARRAYS, 0, CHUNK, lambda *a: None)


@pytest.mark.parametrize(
    ("args", "chunk"),
    [
        ((1000, 4, 10, 10**6, None), 50),  # a twentieth of the draws
        ((1000, 4, 10, 400, None), 10),  # at most max_elements / (members * d) draws
        ((1000, 4, 10, 10, None), 1),  # at least one
        ((10, 1, 1, 10**6, None), 1),  # ceil(10 / 20)
        ((1000, 4, 10, 10, 64), 64),  # requested wins over the memory cap
        ((5, 1, 1, 10**6, 100), 5),  # never more than the draws
    ],
)
def test_draws_per_chunk(args, chunk):
    assert PROGRESS_CHUNKS == 20
    assert loops.draws_per_chunk(*args) == chunk


@pytest.mark.parametrize(("num_steps", "calls"), [(45, 15), (7, 7), (40, 20), (1, 1), (0, 0)])
def test_run_steps_chunk_counts_add_up(advance, num_steps, calls):
    counts = []
    state = loops.run_steps(advance, start(), num_steps, ARRAYS, lambda c, s: counts.append(c))
    assert sum(counts) == num_steps and len(counts) == calls
    assert len(counts) <= PROGRESS_CHUNKS
    np.testing.assert_array_equal(state.i, np.full(K, num_steps))


def test_stream_draws_hands_each_chunk_to_consume_in_order(sample_chunk):
    """Chunks ``(K, count, ...)`` on the host, with the index of their first draw; together
    they are the draws ``collect_draws`` gathers."""
    seen = []
    state = loops.stream_draws(
        sample_chunk, start(), ARRAYS, 11, CHUNK, lambda *a: None,
        lambda draws, first: seen.append((first, jax.tree.map(np.array, draws))),
    )  # fmt: skip
    assert [first for first, _ in seen] == [0, 4, 8]
    assert [draws["i"].shape for _, draws in seen] == [(K, 4), (K, 4), (K, 3)]
    assert all(isinstance(draws["x"], np.ndarray) for _, draws in seen)
    ends, _ = expected_draws(0, 11)
    np.testing.assert_array_equal(
        np.concatenate([d["i"] for _, d in seen], 1), np.tile(ends, (K, 1))
    )
    np.testing.assert_array_equal(state.i, np.full(K, 11 * THINNING))


def test_recorded_resets_add_up_to_the_sampler_reset_count():
    """On a real SMILE kernel (2 members, mini-batches): the resets recorded between draws
    sum to the state's own ``num_resets`` (about 2 percent of 600 steps per member)."""
    from numpyro_smile import sampler
    from numpyro_smile.batching import PlateInfo
    from numpyro_smile.config import SMILEConfig

    data = jax.random.normal(jax.random.key(0), (100, 2))

    def logdensity(x, indices):
        return -jnp.sum(x**2) / 200 - (100 / 10) * jnp.sum((data[indices["data"]] - x) ** 2) / 2

    target = sampler.Target(logdensity, lambda x: {"x": x})
    plan = sampler.make_plan(SMILEConfig(pretrain_steps=0), {"data": PlateInfo(100, 10)}, 50, 2)
    kernel = sampler.build_kernel(plan, 2)
    init = jax.jit(jax.vmap(lambda x, k: kernel.init(x, k, target)))
    state = init(jnp.zeros((2, 2)), jax.random.split(jax.random.key(1), 2))
    state = state._replace(rng_key=jax.random.key(2))
    chunk = jax.jit(
        loops.sample_chunk_fn(lambda s, a: kernel.step(s, target), loops.record_fn(False), 3, 50)
    )
    host, final = loops.collect_draws(chunk, state, None, 200, 50, lambda *a: None)
    assert host["z"]["x"].shape == (2, 200, 2) and "L" not in host["stats"]
    assert host["stats"]["resets"].shape == (2, 200)
    np.testing.assert_array_equal(host["stats"]["resets"].sum(axis=1), final.num_resets)
    assert int(final.num_resets.sum()) > 0
    np.testing.assert_array_equal(host["stats"]["diverging"], host["stats"]["resets"] > 0)
    np.testing.assert_array_equal(final.i, [600, 600])
