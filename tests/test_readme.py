"""The README's quickstart runs as pasted and recovers the posterior (default init included)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_quickstart_runs_and_is_right(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
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
