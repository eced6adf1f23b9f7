"""Where the draws live: a 10^5-parameter MLP ensemble (8 members, 1,000 draws) keeps at most
two chunks of draws on the device and hands ArviZ host arrays without copying them again."""

from __future__ import annotations

import time
from functools import partial

import jax
import numpy as np
import pytest

from numpyro_smile import SMILEConfig, SMILEEnsemble, loops, memory
from numpyro_smile.models import mlp_regression

HIDDEN, N, B = (316, 316), 64, 16  # 1 + 316 + 316 * 316 + 316 + 316 + 1 + log_sigma
NUM_PARAMS = 101_122
K, NUM_DRAWS = 8, 1000


def _live_device_bytes() -> int:
    """Bytes of all live device buffers, each counted once (``copy_to_host_async`` leaves a
    second ``jax.Array`` on the same buffer in ``jax.live_arrays()``)."""
    buffers = {}
    for array in jax.live_arrays():
        for shard in array.addressable_shards:
            try:
                key = (shard.device.id, shard.data.unsafe_buffer_pointer())
            except Exception:  # e.g. PRNG key arrays: count them by object (they are tiny)
                key = id(shard.data)
            buffers[key] = shard.data.nbytes
    return sum(buffers.values())


@pytest.mark.filterwarnings("ignore::numpyro_smile.ResetWarning")  # not what this test is about
def test_draws_stream_to_host_memory(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 1)).astype(np.float32)
    y = np.sin(2 * X[:, 0]).astype(np.float32)
    ensemble = SMILEEnsemble(
        partial(mlp_regression, hidden=HIDDEN, batch_size=B),
        num_members=K,
        num_warmup=10,
        num_samples=NUM_DRAWS,
        thinning=1,
        pretrain_epochs=1,
        log_likelihood=False,
        config=SMILEConfig(integrator="leapfrog"),
    )
    chunks = []  # (live device bytes, bytes of the chunk) after each chunk of draws

    def store(host, buffer, *args):
        chunks.append((_live_device_bytes(), sum(a.nbytes for a in jax.tree.leaves(buffer))))
        return store.original(host, buffer, *args)

    store.original = loops.store
    monkeypatch.setattr(loops, "store", store)
    before = _live_device_bytes()
    measure_host = memory.reset_peak_rss()
    host_before = memory.peak_rss_bytes()  # right after a reset: the current resident set
    start = time.perf_counter()
    idata = ensemble.run(jax.random.key(0), X, y)
    wall = time.perf_counter() - start

    posterior = idata.posterior
    assert sum(int(np.prod(v.shape[2:])) for v in posterior.data_vars.values()) == NUM_PARAMS
    draws_bytes = sum(v.nbytes for v in posterior.data_vars.values())
    for group in ("posterior", "sample_stats"):
        for name, value in idata[group].data_vars.items():
            assert type(value.data) is np.ndarray, (group, name, type(value.data))
            assert value.shape[:2] == (K, NUM_DRAWS), (group, name)

    # On the device: at most two chunks of draws (the one being copied out, the next one),
    # the chains' state before and after a call, and the data; never all the draws.
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(ensemble.last_state))
    chunk_bytes = max(size for _, size in chunks)
    peak = max(live for live, _ in chunks) - before
    assert len(chunks) >= 10 and chunk_bytes * len(chunks) >= draws_bytes
    assert peak <= 2 * chunk_bytes + 4 * state_bytes + 16 * 2**20, (peak, chunk_bytes)
    assert peak < draws_bytes / 10

    # In host memory: the draws once (InferenceData shares the sampler's arrays).
    host_peak = memory.peak_rss_bytes() - host_before if measure_host else 0
    print(
        f"\n{NUM_PARAMS} parameters, {K} members, {NUM_DRAWS} draws ({draws_bytes / 2**30:.2f} "
        f"GiB): device peak {peak / 2**20:.0f} MiB (chunk {chunk_bytes / 2**20:.0f} MiB), host "
        f"peak +{host_peak / 2**30:.2f} GiB, {wall:.0f} s; timings {ensemble.timings}"
    )
    if measure_host:
        assert host_peak < 1.5 * draws_bytes, host_peak
