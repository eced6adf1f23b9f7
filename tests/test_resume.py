"""SMILEEnsemble checkpoints: save, resume in a new ensemble, exact continuation, validation."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from numpyro_smile import SMILEConfig, SMILEEnsemble
from numpyro_smile.checkpoint import load_checkpoint
from numpyro_smile.models import mlp_regression

N, P, B, K = 200, 3, 32, 2
NUM_WARMUP, S, THINNING = 40, 20, 2


def data(n: int = N):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, P)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


def ensemble(num_samples: int, hidden=(8,), **kwargs) -> SMILEEnsemble:
    options = dict(
        num_members=K,
        num_warmup=NUM_WARMUP,
        num_samples=num_samples,
        thinning=THINNING,
        pretrain_epochs=2,
        log_likelihood=False,
    )
    return SMILEEnsemble(
        partial(mlp_regression, hidden=hidden, subsample_size=B), **options | kwargs
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run of 2S samples; the same chains as warmup, a checkpoint, S samples
    resumed from it, a checkpoint, and S more samples resumed in a new ensemble."""
    X, y = data()
    key = jax.random.key(0)
    uninterrupted = ensemble(2 * S)
    full = uninterrupted.run(key, X, y)

    directory = tmp_path_factory.mktemp("checkpoints")
    first_part = ensemble(S)
    first_part.warmup(key, X, y)
    warm_path = first_part.save_state(directory / "warm.npz")
    first = first_part.run(jax.random.key(1), X, y, resume_from=load_checkpoint(warm_path))
    path = first_part.save_state(directory / "chains.npz")

    resumed = ensemble(S)  # a new object, as in a new process
    second = resumed.run(jax.random.key(2), X, y, resume_from=path)
    return {
        "uninterrupted": uninterrupted,
        "full": full,
        "first_part": first_part,
        "first": first,
        "resumed": resumed,
        "second": second,
        "warm_path": warm_path,
        "path": path,
    }


def test_resumed_draws_equal_the_uninterrupted_run(runs):
    full, first, second = runs["full"], runs["first"], runs["second"]
    for group in ("posterior", "sample_stats"):
        assert set(full[group].data_vars) == set(second[group].data_vars)
        for name in full[group].data_vars:
            joined = np.concatenate([first[group][name].values, second[group][name].values], 1)
            np.testing.assert_array_equal(full[group][name].values, joined, err_msg=name)
    # the whole final state, PRNG keys included, is the uninterrupted run's
    end, resumed_end = runs["uninterrupted"].last_state, runs["resumed"].last_state
    for a, b in zip(jax.tree.leaves(end), jax.tree.leaves(resumed_end), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resumed_inference_data_carries_the_pretraining(runs):
    full, second = runs["full"], runs["second"]
    assert {"pretrained", "pretraining"} <= set(second.groups())
    np.testing.assert_array_equal(full.pretrained["w0"].values, second.pretrained["w0"].values)
    np.testing.assert_array_equal(
        full.pretraining["train_loss"].values, second.pretraining["train_loss"].values
    )
    assert second.posterior.sizes["draw"] == S // THINNING
    assert second.posterior.attrs["resumed_at_step"] == NUM_WARMUP + S
    assert second.posterior.attrs["num_warmup"] == NUM_WARMUP
    assert "pretrain_s" not in runs["resumed"].timings  # neither pretraining nor warmup ran
    assert runs["resumed"].timings["warmup_s"] == 0.0


def test_warmup_checkpoint(runs):
    warm = load_checkpoint(runs["warm_path"])
    assert warm.phase == "sampling" and warm.steps == NUM_WARMUP and warm.num_samples_done == 0
    assert warm.num_members == K and warm.mode == "minibatch" and warm.num_warmup == NUM_WARMUP
    assert warm.key_impls[".rng_key"] == "threefry2x32"  # typed keys stored as key data
    assert warm.state[".rng_key"].dtype == np.uint32
    # warmup() reaches the state the uninterrupted run sampled from
    expected = runs["uninterrupted"].post_warmup_state
    np.testing.assert_array_equal(np.asarray(expected.momentum), warm.state[".momentum"])
    np.testing.assert_array_equal(np.asarray(expected.z["w0"]), warm.state[".z['w0']"])
    # and its file holds no pickled objects
    with np.load(runs["warm_path"], allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(num_members=3), r"holds 2 members .* num_members=2"),
        (dict(hidden=(9,)), r"parameters .* w0: \(\(3, 8\), 'float32'\) in the checkpoint"),
        (dict(full_batch=True), r"mini-batch \(SMILE\) mode .* full_batch=False"),
        (dict(n=100), r"data plates .* \{'data': \(200, 32\)\}.* training data and batch"),
    ],
)
def test_resume_checks_the_checkpoint(runs, settings, message):
    n = settings.pop("n", N)
    with pytest.raises(ValueError, match=message):
        ensemble(S, **settings).run(jax.random.key(0), *data(n), resume_from=runs["path"])


def test_resume_checks_the_kernel_state(runs, tmp_path):
    other = ensemble(S, config=SMILEConfig(batch_schedule="with_replacement"))
    with (
        pytest.warns(UserWarning, match="other sampler settings"),
        pytest.raises(ValueError, match=r"sampler state does not fit .*batches"),
    ):
        other.run(jax.random.key(0), *data(), resume_from=runs["path"])
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a numpyro_smile ensemble checkpoint"):
        ensemble(S).run(jax.random.key(0), *data(), resume_from=tmp_path / "other.npz")
    with pytest.raises(RuntimeError, match=r"call run\(\) or warmup\(\) first"):
        ensemble(S).save_state(tmp_path / "nothing.npz")
