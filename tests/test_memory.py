"""Where the draws live: a 10^5-parameter MLP ensemble (8 members, 1,000 draws) keeps at most
two chunks of draws on the device and hands ArviZ host arrays without copying them again.

The host check needs a per-run peak (``memory.reset_peak_rss``); where the platform cannot
reset the peak it skips with the reason instead of passing without measuring."""

from __future__ import annotations

import time
import warnings
from functools import partial
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from numpyro_smile import ResetWarning, SMILEConfig, SMILEEnsemble, memory, pipeline
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


@pytest.fixture(scope="module")
def streamed_run() -> SimpleNamespace:
    """One 8-member run of 1,000 draws, with the device's live bytes after each chunk of draws
    and the host's peak resident growth over the run (``None`` where it cannot be measured)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 1)).astype(np.float32)
    y = np.sin(2 * X[:, 0]).astype(np.float32)
    ensemble = SMILEEnsemble(
        partial(mlp_regression, hidden=HIDDEN, subsample_size=B),
        num_members=K,
        num_warmup=10,
        num_samples=NUM_DRAWS,
        thinning=1,
        pretrain_epochs=1,
        log_likelihood=False,
        config=SMILEConfig(integrator="leapfrog"),
    )
    chunks = []  # (live device bytes, bytes of the chunk) as each chunk of draws is kept

    def keep_draws(*args):
        keep = keep_draws.original(*args)

        def measured_keep(chunk, first_draw):
            chunks.append((_live_device_bytes(), sum(a.nbytes for a in jax.tree.leaves(chunk))))
            keep(chunk, first_draw)

        return measured_keep

    keep_draws.original = pipeline.keep_draws
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResetWarning)  # not what these tests are about
        patch.setattr(pipeline, "keep_draws", keep_draws)
        before = _live_device_bytes()
        measure_host = memory.reset_peak_rss()
        host_before = memory.peak_rss_bytes()  # right after a reset: the current resident set
        start = time.perf_counter()
        idata = ensemble.run(jax.random.key(0), X, y)
        wall = time.perf_counter() - start
        host_peak = memory.peak_rss_bytes() - host_before if measure_host else None
    return SimpleNamespace(
        ensemble=ensemble, idata=idata, chunks=chunks, before=before, host_peak=host_peak, wall=wall
    )


def _draws_bytes(idata) -> int:
    return sum(v.nbytes for v in idata.posterior.data_vars.values())


def test_draws_stream_to_host_memory(streamed_run):
    idata, chunks = streamed_run.idata, streamed_run.chunks
    posterior = idata.posterior
    assert sum(int(np.prod(v.shape[2:])) for v in posterior.data_vars.values()) == NUM_PARAMS
    draws_bytes = _draws_bytes(idata)
    for group in ("posterior", "sample_stats"):
        for name, value in idata[group].data_vars.items():
            assert type(value.data) is np.ndarray, (group, name, type(value.data))
            assert value.shape[:2] == (K, NUM_DRAWS), (group, name)

    # On the device: at most two chunks of draws (the one being copied out, the next one),
    # the chains' state before and after a call, and the data; never all the draws.
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(streamed_run.ensemble.last_state))
    chunk_bytes = max(size for _, size in chunks)
    peak = max(live for live, _ in chunks) - streamed_run.before
    print(
        f"\n{NUM_PARAMS} parameters, {K} members, {NUM_DRAWS} draws ({draws_bytes / 2**30:.2f} "
        f"GiB): device peak {peak / 2**20:.0f} MiB (chunk {chunk_bytes / 2**20:.0f} MiB), "
        f"{streamed_run.wall:.0f} s; timings {streamed_run.ensemble.timings}"
    )
    assert len(chunks) >= 10 and chunk_bytes * len(chunks) >= draws_bytes
    assert peak <= 2 * chunk_bytes + 4 * state_bytes + 16 * 2**20, (peak, chunk_bytes)
    assert peak < draws_bytes / 10


def test_host_memory_holds_the_draws_once(streamed_run):
    """InferenceData shares the sampler's host arrays: the run's resident peak grows by about
    the draws' size, not by a multiple of it."""
    if streamed_run.host_peak is None:
        pytest.skip(
            "the process's peak resident set cannot be reset here (/proc/self/clear_refs is "
            "missing, not writable or ignored), so the host peak of the run cannot be measured"
        )
    draws_bytes = _draws_bytes(streamed_run.idata)
    print(
        f"\nhost peak +{streamed_run.host_peak / 2**30:.2f} GiB for {draws_bytes / 2**30:.2f} GiB"
    )
    assert streamed_run.host_peak < 1.5 * draws_bytes, streamed_run.host_peak
