"""SMILEEnsemble end to end: groups and dims, ArviZ, no NaN, resets, devices, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from functools import partial
from pathlib import Path

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

from numpyro_smile import ModelError, ResetWarning, SMILEConfig, SMILEEnsemble, tuning
from numpyro_smile.models import mlp_classification, mlp_regression

N, P, B, K = 400, 3, 50, 4
NUM_WARMUP, NUM_SAMPLES, THINNING = 300, 200, 5


def synthetic_regression(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def regression_run():
    X, y = synthetic_regression(N, 0)
    X_val, y_val = synthetic_regression(100, 1)
    model = partial(mlp_regression, hidden=(8,), subsample_size=B)
    ensemble = SMILEEnsemble(
        model,
        num_members=K,
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        thinning=THINNING,
        pretrain_epochs=60,
        pretrain_optimizer=optax.adam(2e-2),
        posterior_predictive=True,
    )
    idata = ensemble.run(jax.random.key(0), X, y, validation=(X_val, y_val))
    return ensemble, idata, (X, y)


def test_groups_and_dims(regression_run):
    ensemble, idata, (_X, y) = regression_run
    draws = NUM_SAMPLES // THINNING
    assert set(idata.groups()) == {
        "posterior",
        "sample_stats",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        "pretrained",
        "pretraining",
    }
    post = idata.posterior
    assert dict(post.sizes)["chain"] == K and dict(post.sizes)["draw"] == draws
    assert post["w0"].dims == ("chain", "draw", "w0_dim_0", "w0_dim_1")
    assert post["w0"].shape == (K, draws, P, 8) and post["log_sigma"].shape == (K, draws)
    # A summary's R-hat across chains compares members' modes; the output says so.
    assert "multimodality" in post.attrs["chains"]
    # per-datum groups cover the FULL data, not one mini-batch
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].shape == (K, draws, N)
    assert idata.posterior_predictive["y"].shape == (K, draws, N)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    stats = idata.sample_stats
    assert {"lp", "step_size", "energy_change", "diverging", "resets"} <= set(stats.data_vars)
    assert stats["diverging"].dtype == bool and stats["lp"].shape == (K, draws)
    assert "L" not in stats  # mini-batch chains have no partial refresh
    assert idata.pretrained["w0"].shape == (K, 1, P, 8)
    curves = idata.pretraining
    assert curves["train_loss"].dims == ("chain", "epoch")
    assert curves["validation_loss"].shape == curves["train_loss"].shape
    assert np.all((curves["best_epoch"].values >= 1) & (curves["best_epoch"].values <= 60))
    assert idata.posterior.attrs["sampler"] == "pSMILE"
    assert idata.posterior.attrs["inference_library"] == "numpyro_smile"
    assert ensemble.timings["sampling_s"] > 0 and ensemble.timings["compile_s"] > 0


def test_no_nan_in_any_group(regression_run):
    _, idata, _ = regression_run
    for group in idata.groups():
        for name, value in idata[group].data_vars.items():
            assert np.all(np.isfinite(np.asarray(value, float))), f"{group}.{name}"


def test_chains_start_from_the_pretrained_points_and_predict_well(regression_run):
    ensemble, idata, _ = regression_run
    X_test, y_test = synthetic_regression(200, 2)
    post = ensemble.evaluate(idata, X_test, y_test)
    de = ensemble.evaluate(idata, X_test, y_test, group="pretrained")
    assert de["num_draws"] == K and post["num_draws"] == K * NUM_SAMPLES // THINNING
    # noise sd 0.1 on a smooth target: both fit, and sampling keeps the fit
    assert de["rmse"] < 0.3 and post["rmse"] < 0.3, (de, post)
    assert post["lppd"] > 0.0, post
    assert 0.7 < post["coverage_90"] <= 1.0


def test_arviz_summary_loo_and_plot_trace(regression_run):
    _, idata, _ = regression_run
    summary = az.summary(idata, var_names=["log_sigma", "b1"])
    assert np.all(np.isfinite(summary["r_hat"].values))
    with warnings.catch_warnings():
        # 160 draws of a 41-parameter network: Pareto-k diagnostics may warn; loo still runs.
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == N
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # ArviZ 0.23 calls a matplotlib 3.11 API that is deprecated (not our code).
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        axes = az.plot_trace(idata, var_names=["log_sigma"])
    assert axes.shape == (1, 2)
    plt.close("all")


def test_netcdf_round_trip(regression_run, tmp_path):
    _, idata, _ = regression_run
    path = tmp_path / "ensemble.nc"
    idata.to_netcdf(path)
    loaded = az.from_netcdf(path)
    assert set(loaded.groups()) == set(idata.groups())
    np.testing.assert_array_equal(loaded.posterior["w0"].values, idata.posterior["w0"].values)


@pytest.fixture(scope="module")
def stressed_run():
    """A fixed step size 100x too large, no pretraining, a log-likelihood subset."""
    X, y = synthetic_regression(N, 3)
    ensemble = SMILEEnsemble(
        partial(mlp_regression, hidden=(8,), subsample_size=B),
        num_members=2,
        num_warmup=50,
        num_samples=100,
        thinning=1,
        pretrain_epochs=0,
        config=SMILEConfig(step_size=0.5, adapt=False),
        log_likelihood=37,
    )
    with pytest.warns(ResetWarning) as record:
        idata = ensemble.run(jax.random.key(1), X, y)
    return ensemble, idata, record


def test_resets_are_visible_and_draws_stay_finite(stressed_run):
    ensemble, idata, record = stressed_run
    stats = idata.sample_stats
    assert stats["diverging"].values.any()
    np.testing.assert_array_equal(stats["diverging"].values, stats["resets"].values > 0)
    # thinning=1: every sampling reset is in `resets`; the rest happened during warmup
    in_warmup = ensemble.post_warmup_state.num_resets
    np.testing.assert_array_equal(
        ensemble.last_state.num_resets - in_warmup, stats["resets"].values.sum(axis=1)
    )
    # one warning after the run, with the totals over warmup and sampling
    [warning] = [w for w in record if issubclass(w.category, ResetWarning)]
    resets = np.asarray(ensemble.last_state.num_resets)
    affected = np.count_nonzero(resets)
    assert f"{resets.sum()} resets in {affected} of 2 members" in str(warning.message)
    for group in ("posterior", "sample_stats", "log_likelihood"):
        for name, value in idata[group].data_vars.items():
            assert np.all(np.isfinite(np.asarray(value, float))), f"{group}.{name}"
    assert "pretraining" not in idata.groups()  # pretrain_epochs=0: nothing to record


def test_log_likelihood_on_a_random_subset(stressed_run):
    _, idata, _ = stressed_run
    log_lik = idata.log_likelihood["y"]
    assert log_lik.shape == (2, 100, 37)
    chosen = log_lik["data"].values
    assert len(set(chosen)) == 37 and chosen.min() >= 0 and chosen.max() < N
    assert np.all(np.diff(chosen) > 0)


def test_full_batch_mode_is_mile():
    X, y = synthetic_regression(200, 4)
    ensemble = SMILEEnsemble(
        partial(mlp_regression, hidden=(4,), subsample_size=B),
        num_members=2,
        num_warmup=100,
        num_samples=20,
        full_batch=True,
        pretrain_epochs=10,
        log_likelihood=False,
    )
    idata = ensemble.run(jax.random.key(2), X, y)
    assert ensemble.plan.plates == () and ensemble.plan.variant == "MILE"
    assert isinstance(ensemble.last_state.tuner, tuning.MCLMCTunerState)  # MILE's, not SMILE's
    assert idata.posterior.attrs["sampler"] == "MILE"
    assert "L" in idata.sample_stats and "log_likelihood" not in idata.groups()
    # pretraining still used the model's mini-batches: 200 // 64 = 3 steps per epoch
    assert idata.pretraining["train_loss"].shape == (2, 10)


def test_classification_ensemble():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
    model = partial(mlp_classification, num_classes=2, hidden=(4,), subsample_size=64)
    ensemble = SMILEEnsemble(
        model, num_members=2, num_warmup=200, num_samples=100, thinning=5, pretrain_steps=402
    )
    idata = ensemble.run(jax.random.key(3), X, y)
    # 402 steps of 300 // 64 = 4 batches per epoch: 101 epochs (rounded up to whole epochs)
    assert idata.pretraining["train_loss"].shape == (2, 101)
    X_test = rng.normal(size=(200, 2)).astype(np.float32)
    y_test = (X_test[:, 0] + X_test[:, 1] > 0).astype(np.int32)
    metrics = ensemble.evaluate(idata, X_test, y_test)
    assert metrics["accuracy"] > 0.9 and 0 <= metrics["ece"] < 0.2, metrics
    assert metrics["lppd"] > -0.4


def eqx_regression(X, y=None, subsample_size=None):
    """An Equinox MLP lifted to latent sites by numpyro.contrib.module."""
    import equinox as eqx
    from numpyro.contrib.module import random_eqx_module

    net = eqx.nn.MLP(X.shape[1], "scalar", 8, 1, key=jax.random.key(0))
    net = random_eqx_module("net", net, prior=dist.Normal(0.0, 1.0))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(jax.vmap(net)(x), 0.2), obs=target)


def test_equinox_module_through_numpyro_contrib():
    pytest.importorskip("equinox")
    X, y = synthetic_regression(N, 6)
    ensemble = SMILEEnsemble(
        partial(eqx_regression, subsample_size=B),
        num_members=2,
        num_warmup=100,
        num_samples=50,
        pretrain_epochs=20,
    )
    idata = ensemble.run(jax.random.key(4), X, y)
    names = list(idata.posterior.data_vars)
    assert names and all(name.startswith("net/") for name in names)
    for name in names:
        assert np.all(np.isfinite(idata.posterior[name].values))
    metrics = ensemble.evaluate(idata, *synthetic_regression(100, 7))
    assert metrics["rmse"] < 0.5, metrics


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_members": 0}, "num_members must be an integer >= 1"),
        ({"thinning": 0}, "thinning must be an integer >= 1"),
        ({"num_samples": 10, "thinning": 20}, "thinning \\(20\\) is larger than num_samples"),
        ({"num_warmup": -1}, "num_warmup must be an integer >= 0"),
        ({"patience": 0}, "patience must be an integer >= 1"),
        ({"log_likelihood": 0}, "log_likelihood \\(a subset size\\) must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SMILEEnsemble(mlp_regression, **kwargs)


def test_config_is_a_smile_config():
    with pytest.raises(TypeError, match="config must be a SMILEConfig"):
        SMILEEnsemble(mlp_regression, config={"step_size": 1e-3})
    with pytest.raises(TypeError, match="precondition must be True or False"):
        SMILEConfig(precondition="yes")


def test_bad_run_inputs():
    X, y = synthetic_regression(100, 0)
    ensemble = SMILEEnsemble(partial(mlp_regression, subsample_size=200), num_members=2)
    with pytest.raises(ModelError, match="larger than the data"):
        ensemble.run(jax.random.key(0), X, y)
    with pytest.raises(TypeError, match="single JAX PRNG key"):
        ensemble.run(jax.random.split(jax.random.key(0), 2), X, y)
    bad = y.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        SMILEEnsemble(partial(mlp_regression, subsample_size=20)).run(jax.random.key(0), X, bad)
    with pytest.raises(TypeError, match="validation must be a tuple"):
        SMILEEnsemble(partial(mlp_regression, subsample_size=20)).run(
            jax.random.key(0), X, y, validation=X
        )


SHARDING_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import sys
    from functools import partial
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_ensemble import synthetic_regression
    from numpyro_smile import SMILEEnsemble
    from numpyro_smile.models import mlp_regression

    assert jax.device_count() == 4
    X, y = synthetic_regression(400, 0)
    results = {{}}
    for label, devices in [("sharded", jax.devices()), ("single", jax.devices()[:1])]:
        ensemble = SMILEEnsemble(
            partial(mlp_regression, hidden=(8,), subsample_size=50), num_members=4,
            num_warmup=100, num_samples=60, thinning=3, pretrain_epochs=10,
            devices=devices, log_likelihood=False,
        )
        idata = ensemble.run(jax.random.key(0), X, y, validation=(X[:50], y[:50]))
        assert idata.posterior.attrs["num_devices"] == len(devices)
        sharding = ensemble.last_state.momentum.sharding
        assert len(sharding.device_set) == len(devices), sharding
        results[label] = idata
    for name in results["single"].posterior.data_vars:
        np.testing.assert_allclose(
            results["sharded"].posterior[name].values,
            results["single"].posterior[name].values, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(results["sharded"].pretrained["w0"].values,
                               results["single"].pretrained["w0"].values, rtol=1e-5, atol=1e-6)
    print("OK")
    """
)


def test_sharded_members_match_unsharded(tmp_path):
    """Members sharded over 4 (CPU) devices give the draws of one device, to float tolerance."""
    script = tmp_path / "sharding.py"
    script.write_text(SHARDING_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_every_phase_reports_progress_and_the_timings_add_up(capsys):
    """A bar per phase in its own unit (opened after compilation, so ETAs exclude it), a
    status line for the phases in between, and timings that account for the whole run."""
    X, y = synthetic_regression(200, 3)
    ensemble = SMILEEnsemble(
        partial(mlp_regression, hidden=(4,), subsample_size=32),
        num_members=2,
        num_warmup=20,
        num_samples=20,
        thinning=2,
        pretrain_epochs=3,
        progress_bar=True,
    )
    ensemble.run(jax.random.key(0), X[:160], y[:160], validation=(X[160:], y[160:]))
    err = capsys.readouterr().err
    assert err.startswith("SMILEEnsemble: 2 members; checking the model\n"), err[:200]
    for line in (
        "compiling pretraining",
        "initialising 2 chains",
        "compiling the pSMILE, B=32 of N=160 loop",
        "compiling the sampling loop",
        "post-processing",
    ):
        assert line in err, (line, err)
    assert "pretraining: 100%" in err and "3/3" in err and "epoch" in err
    assert "warmup: 100%" in err and "20/20" in err and "resets" in err
    assert "sampling: 100%" in err
    timings = ensemble.timings
    phases = ("setup", "compile", "pretrain", "init", "warmup", "sampling", "postprocess")
    covered = sum(timings[f"{phase}_s"] for phase in phases)
    assert 0.95 * timings["total_s"] <= covered <= timings["total_s"] * 1.001, timings
