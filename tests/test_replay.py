"""Model replay at posterior draws (numpyro_smile.replay): tracing, the chunked map over draws
within a memory budget, the per-draw observations and constrained values, site names and
dims. Hand-made draws of a tiny model, checked against closed forms; no sampling."""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from numpyro_smile import batching, model_views, replay
from numpyro_smile.replay import ReplayMemoryWarning, map_draws

N = 10


def regression(X, y=None, batch_size=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("w_norm", jnp.sqrt(jnp.sum(w**2)))
    with numpyro.plate("data", X.shape[0], subsample_size=batch_size):
        x = numpyro.subsample(X, event_dim=1)
        mean = numpyro.deterministic("mean", x @ w)  # per data point: not in the posterior
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(mean, sigma), obs=target)


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32)
    return X, y


def _plates(X, y):
    plates = model_views.inspect_model(regression, (X, y), {"batch_size": 4})
    assert plates == {"data": batching.PlateInfo(N, 4)}
    return plates


def test_map_draws_does_not_depend_on_the_chunk_size():
    draws = {"x": jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)}

    def fn(draw, key, scale):
        return {"y": scale * draw["x"].sum() + jax.random.normal(key)}

    results = [
        map_draws(fn, draws, jax.random.key(0), jnp.float32(2.0), chunk_size=size)["y"]
        for size in (1, 3, 7, None)
    ]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    assert results[0].shape == (2, 7) and isinstance(results[0], np.ndarray)


def test_map_draws_keys_and_chunk_statistics():
    """Draw (k, s) gets fold_in(fold_in(key, k), s); the last chunk is padded, not dropped."""
    draws = {"x": np.zeros((2, 7), np.float32)}
    stats_ = {}
    out = map_draws(
        lambda draw, key: jax.random.normal(key) + draw["x"],
        draws,
        jax.random.key(3),
        chunk_size=3,
        stats=stats_,
    )
    expected = [
        [
            jax.random.normal(jax.random.fold_in(jax.random.fold_in(jax.random.key(3), k), s))
            for s in range(7)
        ]
        for k in range(2)
    ]
    np.testing.assert_array_equal(out, np.asarray(expected, np.float32))
    assert stats_["chunk_size"] == 3 and stats_["num_chunks"] == 5  # 14 pairs: 3+3+3+3+2
    assert stats_["chunk_peak_bytes"] > 0


def test_budget_is_validated_and_an_oversized_draw_warns():
    draws = {"x": jnp.ones((1, 3, 4))}

    def fn(draw, key, data):
        return {"y": jnp.sum(jnp.tanh(data[:, None] * draw["x"][None, :]), -1)}

    with pytest.raises(TypeError, match="number of bytes"):
        map_draws(fn, draws, jax.random.key(0), jnp.ones(8), memory_budget=1.5e8)
    with pytest.raises(ValueError, match="at least 1 MiB"):
        map_draws(fn, draws, jax.random.key(0), jnp.ones(8), memory_budget=1000)
    data = jnp.ones(2**19)  # one draw: a (2**19, 4) intermediate, 8 MiB, over a 1 MiB budget
    with pytest.warns(ReplayMemoryWarning, match="one draw at a time"):
        stats_ = {}
        out = map_draws(fn, draws, jax.random.key(0), data, memory_budget=2**20, stats=stats_)
    assert stats_["chunk_size"] == 1 and out["y"].shape == (1, 3, 2**19)


def test_trace_model_substitutes_the_draw():
    X, y = _data()
    w = np.array([0.5, -1.0], np.float32)
    trace = replay.trace_model(regression, {"w": w, "sigma": 2.0}, (X, y), {})
    np.testing.assert_array_equal(trace["w"]["value"], w)
    assert trace["sigma"]["value"] == 2.0 and trace["y"]["is_observed"]
    np.testing.assert_allclose(trace["mean"]["value"], X @ w, rtol=1e-6)
    # Missing latent sites come from the prior with the given key, or, read for structure
    # (prior_draws=False), from init_to_uniform: inside the support either way.
    one, two = (
        replay.trace_model(regression, {}, (X, y), {}, jax.random.key(i))["w"]["value"]
        for i in (1, 2)
    )
    assert not np.array_equal(one, two)
    structure = replay.trace_model(regression, {}, (X, y), {}, prior_draws=False)
    assert structure["sigma"]["value"] > 0 and structure["w"]["value"].shape == (2,)


def test_observations_fn_gives_pointwise_log_likelihoods_and_replicates():
    X, y = _data()
    params = {"w": np.array([0.5, -1.0], np.float32), "sigma": np.float32(2.0)}
    out = replay.observations_fn(regression, (X, y), {}, True)(params, jax.random.key(0))
    expected = stats.norm(X @ params["w"], 2.0).logpdf(y)
    np.testing.assert_allclose(out["log_likelihood"]["y"], expected, rtol=1e-5)
    replicate = out["posterior_predictive"]["y"]
    assert replicate.shape == (N,) and not np.allclose(replicate, y)
    without = replay.observations_fn(regression, (X, y), {}, False)(params, jax.random.key(0))
    assert without["posterior_predictive"] == {}
    trace = replay.trace_model(regression, params, (X, y), {})
    assert list(replay.observed_sites(trace)) == ["y"]


def test_site_names_supports_and_dims():
    X, y = _data()
    plates = _plates(X, y)
    names = replay.posterior_site_names(regression, (X, y), {"batch_size": 4}, plates)
    # latent sites and deterministic sites outside the subsample plate, in trace order
    assert names == ["w", "sigma", "w_norm"]
    assert replay.identity_sites(regression, (X, y), {"batch_size": 4}, plates, names) == {"w"}
    view = model_views.full_data_model(regression, plates)
    trace = replay.trace_model(view, {}, (X, y), {"batch_size": 4})
    dims = replay.site_dims(trace, ["y", "mean", "w", "sigma"])
    # plate axes are named after the plate; scalars have no dims
    assert dims == {"y": ["data"], "mean": ["data"], "w": ["w_dim_0"]}


def test_constrain_draws_applies_each_support_transform():
    X, y = _data()
    plates = _plates(X, y)
    names = ["w", "sigma", "w_norm"]
    constrain = replay.constrain_draws(regression, (X, y), {"batch_size": 4}, plates, names)
    w = np.array([3.0, 4.0], np.float32)
    values = constrain({"w": w, "sigma": np.float32(np.log(2.0))}, jax.random.key(0))
    assert set(values) == set(names)
    np.testing.assert_array_equal(values["w"], w)  # the real line: unchanged
    np.testing.assert_allclose(values["sigma"], 2.0, rtol=1e-6)  # positive: exp
    np.testing.assert_allclose(values["w_norm"], 5.0, rtol=1e-6)


def test_likelihood_view_full_data_or_a_fixed_subset():
    X, y = _data()
    plates = _plates(X, y)
    kwargs = {"batch_size": 4}
    params = {"w": np.zeros(2, np.float32), "sigma": np.float32(1.0)}
    for setting in (True, False):
        view, coords = replay.likelihood_view(regression, plates, setting, jax.random.key(0))
        assert coords == {}
        trace = replay.trace_model(view, params, (X, y), kwargs)
        np.testing.assert_array_equal(trace["y"]["value"], y)  # all N points
    view, coords = replay.likelihood_view(regression, plates, 4, jax.random.key(0))
    chosen = coords["data"]
    assert len(chosen) == 4 == len(set(chosen.tolist())) and np.all(np.diff(chosen) > 0)
    assert 0 <= chosen.min() and chosen.max() < N
    trace = replay.trace_model(view, params, (X, y), kwargs)
    np.testing.assert_array_equal(trace["y"]["value"], y[chosen])
    _, everything = replay.likelihood_view(regression, plates, 50, jax.random.key(0))
    np.testing.assert_array_equal(everything["data"], np.arange(N))  # m > N: all N
    with pytest.raises(ValueError, match="positive int"):
        replay.likelihood_view(regression, plates, 0, jax.random.key(0))


def test_replay_module_needs_no_arviz():
    """The replay layer is shared with code that never builds InferenceData."""
    source = Path(replay.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "numpyro" in imported and "jax" in imported  # the walk sees the imports
    assert not imported & {"arviz", "xarray"}, imported
    assert all(hasattr(replay, name) for name in replay.__all__)
