"""Predictive metrics reduced over draws as they come (numpyro_smile.reductions, map_draws with
reduce=...): equal to collecting every draw and pooling afterwards, chunked over draws and
over test points within a memory budget, in memory of one result, compiled once per call."""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats as scipy_stats
from scipy.special import logsumexp

from numpyro_smile import evaluate, memory, predict, replay
from numpyro_smile.evaluation import brier_score, expected_calibration_error

K, S = 2, 5  # members x draws
N, D, H, C = 1500, 3, 96, 5  # test points, features, hidden units, classes
BUDGET = 2**20  # the smallest budget: one draw on all N points does not fit


def mlp(X, y=None, classes=None, subsample_size=None):
    """A one-hidden-layer network: a categorical (``classes``) or Gaussian likelihood."""
    w1 = numpyro.sample("w1", dist.Normal(0, 1).expand([X.shape[1], H]).to_event(2))
    w2 = numpyro.sample("w2", dist.Normal(0, 0.3).expand([H, classes or 1]).to_event(2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=1)
        out = jnp.tanh(x @ w1) @ w2
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        if classes:
            numpyro.sample("y", dist.Categorical(logits=out), obs=target)
        else:
            numpyro.sample("y", dist.Normal(out[..., 0], sigma), obs=target)


def _forward(draws, X):
    """``(K S, n, classes)`` network outputs of every draw, all at once (the reference)."""
    w1 = draws["w1"].reshape(K * S, *draws["w1"].shape[2:])
    w2 = draws["w2"].reshape(K * S, *draws["w2"].shape[2:])
    return np.einsum("snh,shc->snc", np.tanh(np.einsum("nd,sdh->snh", X, w1)), w2)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    draws = {
        "w1": rng.normal(size=(K, S, D, H)).astype(np.float32),
        "w2": (0.3 * rng.normal(size=(K, S, H, C))).astype(np.float32),
        "sigma": rng.uniform(0.5, 1.5, size=(K, S)).astype(np.float32),
    }
    y_class = rng.integers(0, C, size=N).astype(np.int32)
    y_reg = rng.normal(size=N).astype(np.float32)
    return X, draws, y_class, y_reg


def _with_stats(monkeypatch):
    """Record the chunking of every replay evaluate and predict make."""
    records = []
    original = replay.map_draws

    def map_draws(*args, **kwargs):
        stats = {}
        records.append(stats)
        return original(*args, **kwargs, stats=stats)

    monkeypatch.setattr(replay, "map_draws", map_draws)
    return records


def test_streamed_reductions_equal_collect_then_reduce():
    """Every kind, on chunks that straddle members, against the full per-draw output."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(3, 7, 4)).astype(np.float32)
    values[1, 2, 0] = -np.inf  # a draw that gives an observation zero density
    values[2, :, 1] = -np.inf  # a member that gives it zero density at every draw
    draws = {"x": values}

    def fn(draw, key):
        x = draw["x"]
        return {"lme": x, "mean": x, "mv": 1000.0 + jnp.where(jnp.isfinite(x), x, 0.0), "keep": x}

    reduce = {"lme": "member_logmeanexp", "mean": "mean", "mv": "mean_variance", "keep": "draws"}
    full = replay.map_draws(fn, draws, jax.random.key(0))
    for chunk_size in (1, 4, 21):
        out = replay.map_draws(fn, draws, jax.random.key(0), chunk_size=chunk_size, reduce=reduce)
        expected = logsumexp(full["lme"], axis=1) - np.log(7)
        np.testing.assert_allclose(out["lme"], expected, rtol=1e-6, atol=1e-6)
        assert np.isneginf(out["lme"][2, 1])
        np.testing.assert_array_equal(out["keep"], full["keep"])
        pooled = full["mv"].reshape(21, 4).astype(np.float64)
        mean, variance = out["mv"]
        np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-6)
        # large common offset (1000): the variance (about 1) keeps 4 digits in float32
        np.testing.assert_allclose(variance, pooled.var(0), rtol=1e-4)
        with np.errstate(invalid="ignore"):
            assert np.isneginf(out["mean"][0]) and np.isneginf(out["mean"][1])
    with pytest.raises(ValueError, match="Unknown reduction 'median'"):
        replay.map_draws(fn, draws, jax.random.key(0), reduce={**reduce, "mean": "median"})
    with pytest.raises(ValueError, match=r"names the outputs \['lme'\]"):
        replay.map_draws(fn, draws, jax.random.key(0), reduce={"lme": "member_logmeanexp"})


def test_points_are_chunked_when_one_draw_does_not_fit():
    """Chunks of points, the last one padded, reassembled for every kind (kept draws too)."""
    draws = {"x": np.linspace(-1, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)}
    data = jnp.linspace(-2, 2, 50_001)  # one draw: a (50001, 4) intermediate, 0.8 MiB

    def fn(draw, key, indices, data):
        points = data if indices is None else data[indices]
        value = jnp.sum(jnp.tanh(points[:, None] * draw["x"][None, :]), -1)
        return {"lme": value, "mean": value, "mv": value, "keep": value}

    reduce = {"lme": "member_logmeanexp", "mean": "mean", "mv": "mean_variance", "keep": "draws"}
    points = replay.PointAxis(50_001, 0)
    whole, chunked = {}, {}
    expected = replay.map_draws(
        fn, draws, jax.random.key(0), data, reduce=reduce, points=points, stats=whole
    )
    out = replay.map_draws(
        fn, draws, jax.random.key(0), data, reduce=reduce, points=points, stats=chunked,
        memory_budget=BUDGET,
    )  # fmt: skip
    assert whole["num_point_chunks"] == 1 and chunked["num_point_chunks"] > 1, chunked
    assert 50_001 % chunked["point_chunk_size"] != 0, chunked  # the last chunk is padded
    assert out["keep"].shape == (2, 3, 50_001)
    for name in ("lme", "mean", "keep"):
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["mv"], expected["mv"], rtol=1e-5, atol=1e-6)

    def ignores_indices(draw, key, indices, data):
        return fn(draw, key, None, data)

    with pytest.raises(ValueError, match="fn must return its outputs on the given point"):
        replay.map_draws(
            ignores_indices, draws, jax.random.key(0), data, reduce=reduce, points=points,
            memory_budget=BUDGET,
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs reduce="):
        replay.map_draws(fn, draws, jax.random.key(0), data, points=points)


def test_chunked_classification_equals_the_naive_reference(case, monkeypatch):
    """Chunks of draws and of test points (one draw on all N points exceeds the budget)."""
    X, draws, y, _ = case
    idata = az.from_dict(posterior=draws)
    records = _with_stats(monkeypatch)
    metrics = evaluate(
        mlp,
        idata,
        X,
        y,
        classes=C,
        subsample_size=64,
        memory_budget=BUDGET,
        by_member=True,
        reliability=True,
    )
    probs_out = predict(mlp, idata, X, y, classes=C, subsample_size=64, memory_budget=BUDGET)
    monkeypatch.undo()
    chunking = records[0]
    assert chunking["num_point_chunks"] > 1 and chunking["num_chunks"] > 2, chunking
    assert chunking["chunk_size"] < K * S and chunking["point_chunk_size"] < N, chunking
    # the naive reference: every draw's probabilities, (K S, n, C), pooled afterwards
    logits = _forward(draws, X)
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1))
    log_lik = np.take_along_axis(log_probs, y[None, :, None], -1)[..., 0]  # (K S, n)
    probs = np.exp(log_probs).mean(0)
    member = logsumexp(log_lik.reshape(K, S, N), axis=1) - np.log(S)
    assert metrics["lppd"] == pytest.approx(np.mean(logsumexp(log_lik, 0) - np.log(K * S)), 1e-5)
    np.testing.assert_allclose(metrics["member_lppd"], member.mean(1), rtol=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == y))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, y), abs=1e-5)
    assert metrics["brier"] == pytest.approx(brier_score(probs, y), rel=1e-5)
    assert sum(metrics["reliability"]["count"]) == N and metrics["num_draws"] == K * S
    np.testing.assert_allclose(probs_out["probs"], probs, rtol=1e-4, atol=1e-6)
    expected_density = logsumexp(log_lik, 0) - np.log(K * S)
    np.testing.assert_allclose(probs_out["log_density"], expected_density, rtol=1e-5, atol=1e-5)


def test_chunked_regression_equals_the_naive_reference(case, monkeypatch):
    X, draws, _, y = case
    draws = {**draws, "w2": draws["w2"][..., :1]}
    idata = az.from_dict(posterior=draws)
    records = _with_stats(monkeypatch)
    metrics = evaluate(mlp, idata, X, y, subsample_size=64, memory_budget=BUDGET)
    out = predict(mlp, idata, X, quantiles=(0.1, 0.9), subsample_size=64, memory_budget=BUDGET)
    monkeypatch.undo()
    assert all(r["num_point_chunks"] > 1 for r in records), records
    means = _forward(draws, X)[..., 0]  # (K S, n)
    sigma = draws["sigma"].reshape(K * S, 1)
    log_lik = scipy_stats.norm(means, sigma).logpdf(y)
    assert metrics["lppd"] == pytest.approx(np.mean(logsumexp(log_lik, 0) - np.log(K * S)), 1e-5)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y - means.mean(0)) ** 2)), 1e-5)
    pit = scipy_stats.norm(means, sigma).cdf(y).mean(0)
    for level in (0.5, 0.8, 0.9, 0.95):
        expected = np.mean(np.abs(pit - 0.5) <= level / 2)
        assert metrics[f"coverage_{round(100 * level)}"] == pytest.approx(expected, abs=2 / N)
    np.testing.assert_allclose(out["mean"], means.mean(0), rtol=1e-4, atol=1e-5)
    sd = np.sqrt((sigma**2).mean() + means.var(0))
    np.testing.assert_allclose(out["sd"], sd, rtol=1e-4)
    # one replicate per draw and point, from that draw's predictive: the quantiles' levels
    # under the mixture's CDF, averaged over the points, match those of replicates drawn
    # here with NumPy (each average has sd ~0.004 over 1500 points)
    assert out["quantiles"].shape == (2, N)

    def mean_levels(quantiles):
        return scipy_stats.norm(means[:, None], sigma[:, None]).cdf(quantiles).mean(0).mean(1)

    replicates = np.random.default_rng(5).normal(means, sigma)  # (K S, n)
    reference = mean_levels(np.quantile(replicates, [0.1, 0.9], axis=0))
    np.testing.assert_allclose(mean_levels(out["quantiles"]), reference, atol=0.02)


def test_memory_holds_one_result_not_every_draw(monkeypatch):
    """K S n C = 128 x 21,000 x 100 float32 probabilities are 1 GiB; evaluate holds (n, C)."""
    members, draws_per_member, n, classes, d = 2, 64, 21_000, 100, 2

    def softmax(X, y=None):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([d, classes]).to_event(2))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=X @ w), obs=y)

    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    w = rng.normal(size=(members, draws_per_member, d, classes)).astype(np.float32)
    idata = az.from_dict(posterior={"w": w})
    naive = members * draws_per_member * n * classes * 4
    assert naive >= 2**30
    budget = 64 * 2**20
    # first use of the model's operations on these shapes apart: a call with one draw
    evaluate(softmax, az.from_dict(posterior={"w": w[:1, :1]}), X, y)
    if not memory.reset_peak_rss():  # a measurement we cannot make must fail, never skip
        pytest.fail("cannot reset the peak resident set on this system (/proc/self/clear_refs)")
    before = memory.peak_rss_bytes()
    metrics = evaluate(softmax, idata, X, y, memory_budget=budget)
    growth = memory.peak_rss_bytes() - before
    print(f"\npeak growth {growth / 2**20:.0f} MiB; all draws at once: {naive / 2**20:.0f} MiB")
    assert metrics["num_draws"] == members * draws_per_member and 0 < metrics["brier"] < 2
    # the budget (chunks), the float64 running sums (n C: 16 MiB) and compiling the chunk
    # (measured 110-180 MiB): far below all draws at once (1 GiB)
    assert growth < naive / 3, growth


def test_evaluate_compiles_once_per_call_however_many_chunks(case):
    """A second call on the same shapes compiles the chunked replay once, not per chunk."""
    X, draws, y, _ = case
    idata = az.from_dict(posterior=draws)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    counts = []
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for _ in range(2):
            evaluate(mlp, idata, X, y, classes=C, subsample_size=64, memory_budget=BUDGET)
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # the first call compiles (the listener hears it); the second only its chunk program
    # (a new closure per call), once for its 18 chunks of draws and points
    assert counts[0] >= 1 and counts[1] - counts[0] <= 1, counts
