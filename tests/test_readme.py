"""The README's quickstart runs as pasted and recovers the posterior (default init included)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parents[1] / "README.md"


def snippet(index: int) -> str:
    """The README's ``index``-th Python code block."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[index]


@pytest.mark.slow
def test_quickstart_runs_and_is_right(capsys):
    namespace: dict = {}
    exec(compile(snippet(0), str(README), "exec"), namespace)
    assert "beta[4]" in capsys.readouterr().out
    mcmc, X, y = namespace["mcmc"], np.asarray(namespace["X"]), np.asarray(namespace["y"])
    # Exact posterior: N(0, 1) prior, unit noise -> precision X'X + I.
    precision = X.T @ X + np.eye(X.shape[1])
    mean = np.linalg.solve(precision, X.T @ y)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    beta = np.asarray(mcmc.get_samples()["beta"])
    assert np.all(np.abs(beta.mean(0) - mean) / sd < 0.3)
    assert np.all((beta.std(0) / sd > 0.8) & (beta.std(0) / sd < 1.25))
    idata = namespace["idata"]
    assert idata.log_likelihood["obs"].shape == (4, 4000, 10_000)


@pytest.mark.slow
def test_ensemble_quickstart_runs_and_beats_the_deep_ensemble(capsys):
    namespace: dict = {}
    exec(compile(snippet(1), str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "log_sigma" in out and "lppd" in out
    ensemble, idata, test = namespace["ensemble"], namespace["idata"], namespace["test"]
    posterior = ensemble.evaluate(idata, *test)
    deep_ensemble = ensemble.evaluate(idata, *test, group="pretrained")
    # noise sd 0.2: an ideal predictive has RMSE 0.2 and LPPD about 0.19
    assert posterior["rmse"] < 0.25 and posterior["lppd"] > 0.0, posterior
    assert posterior["lppd"] > deep_ensemble["lppd"], (posterior, deep_ensemble)
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 200
