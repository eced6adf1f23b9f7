"""Replays of networks with large activations stay within their memory budget.

A convolutional network (the digits CNN of ``benchmarks/cnn_memory.py``) and a self-attention
layer hold far more memory in their intermediate
activations (per data point and draw) than in their outputs. The replays (``evaluate``,
``log_likelihood``) size their chunks of draws by the peak of the traced program
(``numpyro_smile.memory.peak_live_bytes``); here the real peak of every chunk is measured
as the growth of the process's peak resident set (on CPU the device memory is the process's)
while the chunk runs, after the first chunk (which includes compilation).
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from benchmarks.cnn_memory import cnn
from numpyro_smile import evaluate, memory, replay

BUDGET = 64 * 2**20
K, S = 2, 16  # members x draws: 32 replays of the whole data set
N = 512


def attention_regressor(X, y=None, subsample_size=None):
    """One causal self-attention layer over sequences of 64 steps of 16 features, mean-pooled
    to a scalar: a 64 x 64 attention matrix per sequence against one output."""
    d = X.shape[-1]
    wq, wk, wv = (
        numpyro.sample(name, dist.Normal(0, d**-0.5).expand([d, d]).to_event(2))
        for name in ("wq", "wk", "wv")
    )
    wo = numpyro.sample("wo", dist.Normal(0, d**-0.5).expand([d]).to_event(1))
    steps = X.shape[1]
    causal = jnp.tril(jnp.ones((steps, steps), bool))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=2)
        scores = jnp.einsum("ntd,nsd->nts", x @ wq, x @ wk) / jnp.sqrt(d)
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        out = jnp.einsum("nts,nsd->ntd", weights, x @ wv).mean(1) @ wo
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(out, 1.0), obs=target)


def _problem(name: str):
    rng = np.random.default_rng(0)
    if name == "cnn":  # the digits CNN of benchmarks/cnn_memory.py: ~6,000 floats of
        # activations per 8x8 image against 10 logits
        X = rng.normal(size=(N, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 10, size=N).astype(np.int32)
        shapes = {
            "w1": (3, 3, 1, 8), "b1": (8,), "w2": (3, 3, 8, 16), "b2": (16,),
            "w3": (256, 32), "b3": (32,), "w4": (32, 10), "b4": (10,),
        }  # fmt: skip
        return cnn, X, y, shapes
    X = rng.normal(size=(N, 64, 16)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32)
    shapes = {"wq": (16, 16), "wk": (16, 16), "wv": (16, 16), "wo": (16,)}
    return attention_regressor, X, y, shapes


def _posterior(shapes: dict) -> az.InferenceData:
    rng = np.random.default_rng(1)
    draws = {
        name: (0.3 * rng.normal(size=(K, S, *shape))).astype(np.float32)
        for name, shape in shapes.items()
    }
    return az.from_dict(posterior=draws)


@pytest.mark.parametrize("name", ["cnn", "attention"])
def test_replay_peak_stays_within_the_budget(name, monkeypatch):
    model, X, y, shapes = _problem(name)
    idata = _posterior(shapes)
    if not memory.reset_peak_rss():  # a measurement we cannot make must fail, never skip
        pytest.fail("cannot reset the peak resident set on this system (/proc/self/clear_refs)")

    growth = []  # peak resident growth while each chunk runs and is copied out, in bytes
    original = jax.device_get

    def measured_device_get(tree):
        out = original(tree)  # waits for the chunk's computation
        growth.append(memory.peak_rss_bytes() - measured_device_get.base)
        memory.reset_peak_rss()
        # right after a reset the peak is the current resident set
        measured_device_get.base = memory.peak_rss_bytes()
        return out

    stats = {}
    original_map_draws = replay.map_draws

    def map_draws_with_stats(*args, **kwargs):
        return original_map_draws(*args, **kwargs, stats=stats)

    monkeypatch.setattr(replay, "map_draws", map_draws_with_stats)
    monkeypatch.setattr(jax, "device_get", measured_device_get)
    memory.reset_peak_rss()
    measured_device_get.base = memory.peak_rss_bytes()
    metrics = evaluate(model, idata, X, y, memory_budget=BUDGET)
    monkeypatch.undo()

    assert np.isfinite(metrics["lppd"]) and metrics["num_draws"] == K * S
    # The estimate is what the chunks were sized by; the old sizing (by output elements)
    # would have put all K x S replays in one call.
    assert stats["chunk_peak_bytes"] <= memory.HEADROOM * BUDGET, stats
    assert 1 < stats["chunk_size"] < K * S and stats["num_chunks"] == len(growth), stats
    unchunked = memory.peak_live_bytes(
        lambda z: jax.vmap(lambda w: jax.nn.logsumexp(_replay_log_lik(model, w, X, y)))(z),
        {k: jax.ShapeDtypeStruct((K * S, *v), jnp.float32) for k, v in shapes.items()},
    )
    assert unchunked > 2 * BUDGET, unchunked  # the test's network really needs chunking
    # Measured: every chunk after the first (which compiles) stays within the budget.
    executed = max(growth[1:])
    print(
        f"\n{name}: {stats['num_chunks']} chunks of {stats['chunk_size']} draws, estimated "
        f"chunk peak {stats['chunk_peak_bytes'] / 2**20:.1f} MiB, measured "
        f"{executed / 2**20:.1f} MiB; all {K * S} draws at once: {unchunked / 2**20:.0f} MiB"
    )
    assert executed <= BUDGET, (executed, stats)


def _replay_log_lik(model, params, X, y):
    trace = replay.trace_model(model, params, (X, y), {})
    return trace["y"]["fn"].log_prob(trace["y"]["value"])


def test_peak_live_bytes_counts_intermediates_not_outputs():
    def two_layers(w1, w2, x):
        return jnp.sum(jnp.tanh(jnp.tanh(x @ w1) @ w2), -1)  # output (n,), hidden (n, 1000)

    spec = jax.ShapeDtypeStruct
    inputs = 4 * (10 * 1000 + 1000 * 1000)
    for n in (10, 1000):
        peak = memory.peak_live_bytes(
            two_layers,
            spec((10, 1000), jnp.float32),
            spec((1000, 1000), jnp.float32),
            spec((n, 10), jnp.float32),
        )
        hidden = 4 * n * 1000
        # inputs, plus at least two (n, 1000) values alive at once (a layer's input and
        # output), at most the four made by the two layers
        assert inputs + 4 * n * 10 + 2 * hidden <= peak <= inputs + 4 * n * 10 + 4 * hidden + 4 * n
