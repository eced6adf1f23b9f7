"""The assembly of ``arviz.InferenceData`` (numpyro_smile.inference_data.to_inference_data):
groups, dims and coords, attrs, the full-data log-likelihood. A tiny regression with hand-made
draws, checked against closed forms; no sampling. Also: the package's one version source."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

import numpyro_smile
from numpyro_smile import _version, model_views
from numpyro_smile.inference_data import to_inference_data

from .test_replay import N, _data, regression

ROOT = Path(__file__).parents[1]
K, S = 2, 3
KWARGS = {"batch_size": 4}  # training mini-batches of 4: the replays still see all N points


def _draws(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(K, S, 2)).astype(np.float32),
        "sigma": (0.3 * rng.normal(size=(K, S))).astype(np.float32),  # unconstrained: log
    }


def _assemble(**overrides):
    X, y = _data()
    arguments = dict(
        subsample_plates=model_views.inspect_model(regression, (X, y), KWARGS),
        draws=_draws(),
        sample_stats={"energy_change": np.arange(K * S, dtype=np.float32).reshape(K, S)},
        pretrained=None,
        pretraining={},
        rng_key=jax.random.key(0),
    )
    return to_inference_data(regression, (X, y), KWARGS, **(arguments | overrides))


def _closed_form_log_likelihood(draws: dict, X, y) -> np.ndarray:
    mean = np.einsum("ksd,nd->ksn", draws["w"], X)
    return stats.norm(mean, np.exp(draws["sigma"])[..., None]).logpdf(y)


def test_groups_and_constrained_posterior():
    memory_stats = {}
    idata = _assemble(memory_stats=memory_stats)
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    draws, posterior = _draws(), idata.posterior
    # latent sites and deterministic sites outside the plate; per-datum "mean" is left out
    assert set(posterior.data_vars) == {"w", "sigma", "w_norm"}
    np.testing.assert_array_equal(posterior["w"].values, draws["w"])  # real line: as drawn
    np.testing.assert_allclose(posterior["sigma"].values, np.exp(draws["sigma"]), rtol=1e-6)
    np.testing.assert_allclose(
        posterior["w_norm"].values, np.linalg.norm(draws["w"], axis=-1), rtol=1e-5
    )
    # the replays' chunking is reported: constraining (sigma) and the observations
    assert set(memory_stats) == {"constrain", "observations"}
    assert memory_stats["observations"]["num_chunks"] >= 1


def test_dims_and_coords():
    _, y = _data()
    idata = _assemble()
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.posterior["sigma"].dims == ("chain", "draw")
    np.testing.assert_array_equal(idata.posterior["chain"].values, np.arange(K))
    np.testing.assert_array_equal(idata.posterior["draw"].values, np.arange(S))
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.observed_data["y"].dims == ("data",)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    assert idata.sample_stats["energy_change"].dims == ("chain", "draw")
    np.testing.assert_array_equal(
        idata.sample_stats["energy_change"].values, np.arange(K * S).reshape(K, S)
    )


def test_log_likelihood_over_all_points_or_a_subset():
    X, y = _data()
    full = _assemble().log_likelihood["y"]
    assert full.shape == (K, S, N)  # all N points, not the mini-batch of 4
    expected = _closed_form_log_likelihood(_draws(), X, y)
    np.testing.assert_allclose(full.values, expected, rtol=1e-5, atol=1e-6)

    subset = _assemble(log_likelihood=4, posterior_predictive=True)
    chosen = subset.log_likelihood["data"].values  # the subset's indices are the coordinates
    assert len(chosen) == 4 and np.all(np.diff(chosen) > 0) and chosen.max() < N
    np.testing.assert_allclose(
        subset.log_likelihood["y"].values, expected[..., chosen], rtol=1e-5, atol=1e-6
    )
    replicates = subset.posterior_predictive["y"]
    assert replicates.dims == ("chain", "draw", "data") and replicates.shape == (K, S, 4)
    np.testing.assert_array_equal(subset.posterior_predictive["data"].values, chosen)

    skipped = _assemble(log_likelihood=False)
    assert "log_likelihood" not in skipped.groups()
    assert "posterior_predictive" not in skipped.groups()
    with pytest.raises(ValueError, match="positive int"):
        _assemble(log_likelihood=0)


def test_sample_stats_only_when_given():
    for empty in ({}, None):
        assert "sample_stats" not in _assemble(sample_stats=empty).groups()
    assert "sample_stats" in _assemble().groups()


def test_pretrained_and_pretraining_groups():
    draws = _draws()
    pretrained = {name: value[:, 0] for name, value in draws.items()}
    pretraining = {"loss": np.ones((K, 5), np.float32), "best_epoch": np.array([3, 4])}
    idata = _assemble(pretrained=pretrained, pretraining=pretraining)
    group = idata.pretrained  # one draw per member, constrained like the posterior
    assert group["sigma"].shape == (K, 1)
    np.testing.assert_allclose(group["sigma"].values[:, 0], np.exp(pretrained["sigma"]), rtol=1e-6)
    np.testing.assert_array_equal(group["w"].values[:, 0], pretrained["w"])
    assert idata.pretraining["loss"].dims == ("chain", "epoch")
    assert idata.pretraining["best_epoch"].dims == ("chain",)
    np.testing.assert_array_equal(idata.pretraining["epoch"].values, np.arange(5))


def test_attrs_in_every_group():
    idata = _assemble(posterior_predictive=True, attrs={"members": 2, "mesh": [1, 2]})
    assert len(idata.groups()) == 5
    for group in idata.groups():
        attrs = idata[group].attrs
        assert attrs["inference_library"] == "numpyro_smile"
        assert attrs["inference_library_version"] == numpyro_smile.__version__ == "0.1.0"
        np.datetime64(attrs["created_at"])  # an ISO timestamp
        # netCDF attributes are strings or numbers
        assert attrs["members"] == 2 and attrs["mesh"] == "[1, 2]"


def test_one_version_source():
    """``_version.py`` holds the version; the package, the wheel and the modules read it."""
    assert numpyro_smile.__version__ is _version.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "numpyro_smile._version.__version__"
    }
    # No module of the package imports a name defined in the package root (__init__.py):
    # `from numpyro_smile import X` must name a submodule.
    package = ROOT / "numpyro_smile"
    submodules = {path.stem for path in package.glob("*.py")} | {
        path.name for path in package.iterdir() if (path / "__init__.py").exists()
    }
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "numpyro_smile":
                names = {alias.name for alias in node.names}
                assert names <= submodules, (path.name, names - submodules)
            if isinstance(node, ast.Import):
                assert "numpyro_smile" not in {alias.name for alias in node.names}, path.name
