"""The drivers' persistent compilation cache: where it lives, how to turn it off, that it
leaves the user's JAX settings alone, and that a second identical run loads the ensemble's
compiled loops instead of compiling them (which needs loops free of host callbacks)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from numpyro_smile import SMILEEnsemble, compilation_cache

from .test_convergence import two_means_minibatch


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", None), ("0", None), ("", None), ("/some/dir", "/some/dir"), ("~/c", "HOME/c")],
)
def test_cache_dir_follows_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(compilation_cache.ENV_VAR, value)
    path = compilation_cache.cache_dir()
    if expected is None:
        assert path is None
    else:
        assert str(path) == expected.replace("HOME", str(compilation_cache.Path.home()))


def test_default_cache_dir_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.cache_dir() == tmp_path / "numpyro_smile" / "jax"


def test_settings_are_restored_and_a_users_cache_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "ours"))
    with compilation_cache.persistent_cache() as path:
        assert path == tmp_path / "ours" and path.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    try:
        with compilation_cache.persistent_cache() as path:
            assert path is None
            assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.jax_cache.reset_cache()


@pytest.mark.filterwarnings("ignore::numpyro_smile.ResetWarning")  # a 40-step warmup
def test_a_second_identical_run_loads_the_compiled_loops(monkeypatch, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=200).astype(np.float32)
    y = (1.0 + 2.0 * X + rng.normal(size=200)).astype(np.float32)
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path))

    def run():
        ensemble = SMILEEnsemble(
            two_means_minibatch, num_members=2, num_warmup=40, num_samples=20, thinning=2,
            log_likelihood=False, progress_bar=False, pretrain_epochs=2,
        )  # fmt: skip
        idata = ensemble.run(jax.random.key(0), X, y)
        return ensemble.timings["compile_s"], idata.posterior["mu"].values

    first_compile, first = run()
    entries = {p.name for p in tmp_path.iterdir()}
    assert len(entries) >= 2  # the loops (at least) were written
    second_compile, second = run()
    np.testing.assert_array_equal(first, second)
    assert {p.name for p in tmp_path.iterdir()} == entries  # nothing compiled anew
    assert second_compile < first_compile
