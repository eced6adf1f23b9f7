"""Reading subsample plates, the mini-batch potential, batch schedules and model errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive, log_likelihood
from numpyro.infer.util import initialize_model

from numpyro_smile import minibatch
from numpyro_smile.minibatch import ModelError, PlateInfo

from .conftest import linear_regression


def small_data(n=1000, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(
        rng.normal(size=n), jnp.float32
    )


def test_inspect_finds_subsample_plate():
    X, y = small_data()
    assert minibatch.inspect_model(linear_regression, (X, y), {"subsample_size": 100}) == {
        "N": PlateInfo(1000, 100)
    }
    assert minibatch.inspect_model(linear_regression, (X, y), {}) == {}
    assert minibatch.inspect_model(linear_regression, (X, y), {"subsample_size": 1000}) == {}


def test_subsample_larger_than_data_is_rejected():
    X, y = small_data()
    with pytest.raises(ModelError, match=r"larger than the data \(2000 > 1000\)"):
        minibatch.inspect_model(linear_regression, (X, y), {"subsample_size": 2000})


def test_discrete_latent_is_rejected():
    def model(y):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        with numpyro.plate("N", y.shape[0], subsample_size=10):
            numpyro.sample("obs", dist.Normal(k, 1), obs=numpyro.subsample(y, event_dim=0))

    with pytest.raises(ModelError, match="Latent site 'k' is discrete"):
        minibatch.inspect_model(model, (jnp.zeros(100),), {})


def test_local_latent_in_subsampled_plate_is_rejected():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.plate("N", y.shape[0], subsample_size=10):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("obs", dist.Normal(z, 1), obs=numpyro.subsample(y, event_dim=0))

    with pytest.raises(ModelError, match="'z' is inside the subsampled plate 'N'"):
        minibatch.inspect_model(model, (jnp.zeros(100),), {})


def test_arrays_of_different_lengths_in_one_plate_are_rejected():
    X, y = small_data()
    with pytest.raises(ModelError, match=r"invalid shape.*\(900,\).*arrays of equal length"):
        minibatch.inspect_model(linear_regression, (X, y[:900]), {"subsample_size": 100})


def test_observations_not_sliced_to_the_batch_are_rejected():
    def model(X, y):
        beta = numpyro.sample("beta", dist.Normal().expand([X.shape[1]]).to_event(1))
        with numpyro.plate("N", X.shape[0], subsample_size=100):
            x = numpyro.subsample(X, event_dim=1)
            numpyro.sample("obs", dist.Normal(x @ beta, 1.0), obs=y)  # y not subsampled

    X, y = small_data()
    with pytest.raises(ModelError, match=r"'obs'.*1000 values.*not the mini-batch's 100"):
        minibatch.inspect_model(model, (X, y), {})


def test_unsliced_distribution_parameter_gets_the_subsample_hint():
    def model(X, y):
        beta = numpyro.sample("beta", dist.Normal().expand([X.shape[1]]).to_event(1))
        scale = 1.0 + jnp.abs(X[:, 0])  # per-datum noise scale, computed from X, not the batch
        with numpyro.plate("N", X.shape[0], subsample_size=100):
            x = numpyro.subsample(X, event_dim=1)
            target = numpyro.subsample(y, event_dim=0)
            numpyro.sample("obs", dist.Normal(x @ beta, scale), obs=target)

    X, y = small_data()
    with pytest.raises(ModelError, match=r"Incompatible shapes.*inside the subsampled plate 'N'"):
        minibatch.inspect_model(model, (X, y), {})


def test_nested_subsample_plates_are_rejected():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.plate("groups", 20, subsample_size=5, dim=-2):
            with numpyro.plate("N", y.shape[-1], subsample_size=10, dim=-1):
                obs = numpyro.subsample(y, event_dim=0)  # both plates slice it
                numpyro.sample("obs", dist.Normal(mu, 1), obs=obs)

    with pytest.raises(ModelError, match="'obs' sits in several subsampled plates"):
        minibatch.inspect_model(model, (jnp.zeros((20, 100)),), {})


def test_subsample_size_equal_to_the_data_is_full_batch():
    X, y = small_data()
    assert minibatch.inspect_model(linear_regression, (X, y), {"subsample_size": 1000}) == {}


def test_model_without_latent_sites_is_rejected():
    def model(y):
        numpyro.sample("obs", dist.Normal(0, 1), obs=y)

    with pytest.raises(ModelError, match="no latent sample site"):
        minibatch.inspect_model(model, (jnp.zeros(10),), {})


def test_non_finite_data_is_rejected():
    X, y = small_data()
    y = y.at[3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"model_args\[1\] contains 1 non-finite"):
        minibatch.check_finite_data((X, y), {})
    with pytest.raises(ValueError, match=r"model_kwargs\['X'\] contains"):
        minibatch.check_finite_data((), {"X": X.at[0, 0].set(jnp.inf)})
    minibatch.check_finite_data((X, jnp.arange(3)), {"n": 3})  # ints and scalars pass


def test_epoch_schedule_visits_every_index_once_per_epoch():
    plate = PlateInfo(1003, 100)  # 10 batches per epoch, 3 points left out each epoch
    state = minibatch.batch_schedule_init(jax.random.key(0), plate, "epoch")
    keys = jax.random.split(jax.random.key(1), 20)
    batches = []
    for key in keys:
        state, idx = minibatch.batch_schedule_next(state, key, plate)
        batches.append(np.asarray(idx))
    first, second = np.concatenate(batches[:10]), np.concatenate(batches[10:])
    assert len(np.unique(first)) == 1000 and len(np.unique(second)) == 1000
    assert not np.array_equal(first, second)  # a fresh permutation for the second epoch


def test_with_replacement_schedule_is_uniform():
    plate = PlateInfo(10, 5)
    _, idx = minibatch.batch_schedule_next(None, jax.random.key(0), plate)
    assert idx.shape == (5,)
    counts = np.bincount(
        np.concatenate(
            [
                np.asarray(minibatch.batch_schedule_next(None, k, plate)[1])
                for k in jax.random.split(jax.random.key(1), 2000)
            ]
        ),
        minlength=10,
    )
    # 10,000 draws over 10 cells: each count is 1000 +- 30 (sd); allow 5 sd.
    assert np.all(np.abs(counts - 1000) < 150)


def test_minibatch_potential_is_unbiased_over_an_epoch():
    """Averaged over the batches of one epoch (B divides N), the mini-batch potential equals the
    full-data potential: likelihood scaled by N / B, prior counted once."""
    X, y = small_data(n=1000)
    model = lambda X, y, **kw: minibatch.subsample_model(linear_regression, X, y, **kw)  # noqa: E731
    info = initialize_model(
        jax.random.key(0),
        model,
        dynamic_args=True,
        model_args=(X, y),
        model_kwargs={"subsample_size": 100},
    )
    z = {"beta": jnp.array([0.3, -0.2, 0.1])}
    kwargs = {"subsample_size": 100}
    permutation = jax.random.permutation(jax.random.key(1), 1000)

    def potential(indices):
        return info.potential_fn(X, y, **kwargs, **{minibatch.SUBSAMPLE_KWARG: {"N": indices}})(z)

    batch_values = [potential(permutation[i : i + 100]) for i in range(0, 1000, 100)]
    full = potential(jnp.arange(1000))
    np.testing.assert_allclose(np.mean(batch_values), full, rtol=1e-5)
    assert np.std(batch_values) > 1.0  # and the batches really differ


def test_full_data_model_gives_pointwise_log_likelihood_over_all_points():
    X, y = small_data(n=500)
    view = minibatch.full_data_model(linear_regression, {"N": PlateInfo(500, 50)})
    samples = {"beta": jnp.zeros((7, 3))}
    ll = log_likelihood(view, samples, X, y, subsample_size=50)
    assert ll["obs"].shape == (7, 500)
    np.testing.assert_allclose(ll["obs"][0], dist.Normal(0, 1).log_prob(y), rtol=1e-5)


def test_full_data_model_predicts_on_new_data_of_another_size():
    """The view's plates take their size from each call's data: Predictive on 120 test points
    of a model inspected on 500 training points."""
    X_test, _ = small_data(n=120)
    view = minibatch.full_data_model(linear_regression, {"N": PlateInfo(500, 50)})
    samples = {"beta": jnp.ones((7, 3))}
    predictive = Predictive(view, samples)(jax.random.key(0), X_test, None, subsample_size=50)
    assert predictive["obs"].shape == (7, 120)
    mean = np.asarray(predictive["obs"]).mean(0)  # 7 draws of N(X beta, 1) per point
    assert np.abs(mean - np.asarray(X_test).sum(1)).max() < 5 / np.sqrt(7)  # 5 sd
    ll = log_likelihood(view, samples, *small_data(n=120), subsample_size=50)
    assert ll["obs"].shape == (7, 120)


PERMUTATIONS = [minibatch.feistel_permutation, minibatch.swap_or_not_permutation]


@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("size", [2, 3, 17, 256, 1003, 65_537])
def test_keyed_permutation_is_a_bijection(permutation, size):
    """Both keyed permutations map {0..N-1} onto itself, and differ by key."""
    positions = jnp.arange(size)
    first = np.asarray(permutation(positions, jax.random.key(0), size))
    second = np.asarray(permutation(positions, jax.random.key(1), size))
    np.testing.assert_array_equal(np.sort(first), np.arange(size))
    np.testing.assert_array_equal(np.sort(second), np.arange(size))
    if size > 3:
        assert not np.array_equal(first, second)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_keyed_permutation_looks_random(permutation):
    """Neighbouring positions land far apart: the mean |pi(i+1) - pi(i)| of a uniform random
    permutation of N is ~N/3; a structured map (e.g. affine) would give a constant."""
    size = 10_000
    perm = np.asarray(permutation(jnp.arange(size), jax.random.key(3), size))
    gaps = np.abs(np.diff(perm))
    assert 0.3 * size < gaps.mean() < 0.37 * size
    assert len(np.unique(gaps)) > size // 4
