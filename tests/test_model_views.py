"""Reading subsample plates, model errors, the mini-batch potential and the full-data views."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive, log_likelihood
from numpyro.infer.util import initialize_model

from numpyro_smile import SMILE, model_views
from numpyro_smile.batching import PlateInfo
from numpyro_smile.model_views import FullBatchWarning, ModelError, inspect_model

from .conftest import linear_regression


def small_data(n=1000, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(
        rng.normal(size=n), jnp.float32
    )


def test_inspect_finds_subsample_plate():
    X, y = small_data()
    assert model_views.inspect_model(linear_regression, (X, y), {"subsample_size": 100}) == {
        "N": PlateInfo(1000, 100)
    }
    assert model_views.inspect_model(linear_regression, (X, y), {}) == {}


def test_subsample_larger_than_data_is_rejected():
    X, y = small_data()
    with pytest.raises(ModelError, match=r"larger than the data \(2000 > 1000\)"):
        model_views.inspect_model(linear_regression, (X, y), {"subsample_size": 2000})


@pytest.mark.parametrize("size", [0, -5, 32.0, True, np.array([8])])
def test_subsample_size_that_is_not_a_positive_integer_is_rejected(size):
    """Zero, a negative or a float size used to fail deep inside (a ZeroDivisionError, JAX's
    "indices must have an integer type"); NumPy integers are fine."""
    X, y = small_data()
    with pytest.raises(ModelError, match=r"must be a positive integer"):
        model_views.inspect_model(linear_regression, (X, y), {"subsample_size": size})
    assert model_views.inspect_model(linear_regression, (X, y), {"subsample_size": np.int64(8)})


def test_discrete_latent_is_rejected():
    def model(y, subsample_size=10):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        with numpyro.plate("N", y.shape[0], subsample_size=subsample_size):
            numpyro.sample("obs", dist.Normal(k, 1), obs=numpyro.subsample(y, event_dim=0))

    with pytest.raises(ModelError, match="Latent site 'k' is discrete"):
        model_views.inspect_model(model, (jnp.zeros(100),), {})
    with warnings.catch_warnings():  # without subsample_size: the error alone, no warning
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match="Latent site 'k' is discrete"):
            model_views.inspect_model(model, (jnp.zeros(100),), {"subsample_size": None})


def test_local_latent_in_subsampled_plate_is_rejected():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.plate("N", y.shape[0], subsample_size=10):
            z = numpyro.sample("z", dist.Normal(mu, 1))
            numpyro.sample("obs", dist.Normal(z, 1), obs=numpyro.subsample(y, event_dim=0))

    with pytest.raises(ModelError, match="'z' is inside the subsampled plate 'N'"):
        model_views.inspect_model(model, (jnp.zeros(100),), {})


def test_arrays_of_different_lengths_in_one_plate_are_rejected():
    X, y = small_data()
    with pytest.raises(ModelError, match=r"invalid shape.*\(900,\).*arrays of equal length"):
        model_views.inspect_model(linear_regression, (X, y[:900]), {"subsample_size": 100})


def test_observations_not_sliced_to_the_batch_are_rejected():
    def model(X, y):
        beta = numpyro.sample("beta", dist.Normal().expand([X.shape[1]]).to_event(1))
        with numpyro.plate("N", X.shape[0], subsample_size=100):
            x = numpyro.subsample(X, event_dim=1)
            numpyro.sample("obs", dist.Normal(x @ beta, 1.0), obs=y)  # y not subsampled

    X, y = small_data()
    with pytest.raises(ModelError, match=r"'obs'.*1000 values.*not the mini-batch's 100"):
        model_views.inspect_model(model, (X, y), {})


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
        model_views.inspect_model(model, (X, y), {})


def test_nested_subsample_plates_are_rejected():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.plate("groups", 20, subsample_size=5, dim=-2):
            with numpyro.plate("N", y.shape[-1], subsample_size=10, dim=-1):
                obs = numpyro.subsample(y, event_dim=0)  # both plates slice it
                numpyro.sample("obs", dist.Normal(mu, 1), obs=obs)

    with pytest.raises(ModelError, match="'obs' sits in several subsampled plates"):
        model_views.inspect_model(model, (jnp.zeros((20, 100)),), {})


def test_subsample_size_equal_to_the_data_is_full_batch():
    X, y = small_data()
    assert model_views.inspect_model(linear_regression, (X, y), {"subsample_size": 1000}) == {}


def test_model_without_latent_sites_is_rejected():
    def model(y):
        numpyro.sample("obs", dist.Normal(0, 1), obs=y)

    with pytest.raises(ModelError, match="no latent sample site"):
        model_views.inspect_model(model, (jnp.zeros(10),), {})


def test_non_finite_data_is_rejected():
    X, y = small_data()
    y = y.at[3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"model_args\[1\] contains 1 non-finite"):
        model_views.check_finite_data((X, y), {})
    with pytest.raises(ValueError, match=r"model_kwargs\['X'\] contains"):
        model_views.check_finite_data((), {"X": X.at[0, 0].set(jnp.inf)})
    model_views.check_finite_data((X, jnp.arange(3)), {"n": 3})  # ints and scalars pass


def masked_regression(X, y, observed, subsample_size=None):
    """Missing targets as the NaN error advises: a finite placeholder in ``y`` and the
    missingness as its own argument, masked in the likelihood."""
    beta = numpyro.sample("beta", dist.Normal(0, 10).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("N", X.shape[0], subsample_size=subsample_size):
        Xb, yb, ob = (numpyro.subsample(a, event_dim=e) for a, e in ((X, 1), (y, 0), (observed, 0)))
        with numpyro.handlers.mask(mask=ob):
            numpyro.sample("obs", dist.Normal(Xb @ beta, 1.0), obs=yb)


def test_missing_data_as_the_nan_error_advises_passes_and_is_masked():
    """The advice of the non-finite data error works: the data pass the check, the masked rows
    add nothing to the density (it equals the model's on the other rows), and SMILE samples
    it with mini-batches."""
    X, y = small_data(n=200)
    y = y.at[::7].set(jnp.nan)
    with pytest.raises(ValueError, match=r"finite placeholder \(jnp.nan_to_num\(y\)\)"):
        model_views.check_finite_data((X, y), {})
    observed = ~jnp.isnan(y)
    args = (X, jnp.nan_to_num(y), observed)
    model_views.check_finite_data(args, {})
    params = {"beta": jnp.array([0.5, -1.0, 2.0])}
    masked, _ = numpyro.infer.util.log_density(masked_regression, args, {}, params)
    kept = (X[observed], y[observed], jnp.ones(int(observed.sum()), bool))
    expected, _ = numpyro.infer.util.log_density(masked_regression, kept, {}, params)
    assert np.isclose(masked, expected, rtol=1e-6)
    mcmc = numpyro.infer.MCMC(
        SMILE(masked_regression), num_warmup=50, num_samples=50, progress_bar=False
    )
    mcmc.run(jax.random.key(0), *args, subsample_size=40)
    assert np.isfinite(np.asarray(mcmc.get_samples()["beta"])).all()


def test_minibatch_potential_is_unbiased_over_an_epoch():
    """Averaged over the batches of one epoch (B divides N), the mini-batch potential equals the
    full-data potential: likelihood scaled by N / B, prior counted once."""
    X, y = small_data(n=1000)
    model = lambda X, y, **kw: model_views.subsample_model(linear_regression, X, y, **kw)  # noqa: E731
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
        return info.potential_fn(X, y, **kwargs, **{model_views.SUBSAMPLE_KWARG: {"N": indices}})(z)

    batch_values = [potential(permutation[i : i + 100]) for i in range(0, 1000, 100)]
    full = potential(jnp.arange(1000))
    np.testing.assert_allclose(np.mean(batch_values), full, rtol=1e-5)
    assert np.std(batch_values) > 1.0  # and the batches really differ


def test_full_data_model_gives_pointwise_log_likelihood_over_all_points():
    X, y = small_data(n=500)
    view = model_views.full_data_model(linear_regression, {"N": PlateInfo(500, 50)})
    samples = {"beta": jnp.zeros((7, 3))}
    ll = log_likelihood(view, samples, X, y, subsample_size=50)
    assert ll["obs"].shape == (7, 500)
    np.testing.assert_allclose(ll["obs"][0], dist.Normal(0, 1).log_prob(y), rtol=1e-5)


def test_full_data_model_predicts_on_new_data_of_another_size():
    """The view's plates take their size from each call's data: Predictive on 120 test points
    of a model inspected on 500 training points."""
    X_test, _ = small_data(n=120)
    view = model_views.full_data_model(linear_regression, {"N": PlateInfo(500, 50)})
    samples = {"beta": jnp.ones((7, 3))}
    predictive = Predictive(view, samples)(jax.random.key(0), X_test, None, subsample_size=50)
    assert predictive["obs"].shape == (7, 120)
    mean = np.asarray(predictive["obs"]).mean(0)  # 7 draws of N(X beta, 1) per point
    assert np.abs(mean - np.asarray(X_test).sum(1)).max() < 5 / np.sqrt(7)  # 5 sd
    ll = log_likelihood(view, samples, *small_data(n=120), subsample_size=50)
    assert ll["obs"].shape == (7, 120)


def test_a_forgotten_subsample_size_warns_and_an_explicit_one_does_not():
    """A plate that calls numpyro.subsample but got no subsample_size runs full batch: say so.
    subsample_size=N means full batch on purpose; a plate without numpyro.subsample is an
    ordinary full-batch model."""
    X = jnp.ones((50, 2))
    y = jnp.zeros(50)
    with pytest.warns(FullBatchWarning, match=r"plate\('N', 50\).*subsample_size=50"):
        assert inspect_model(linear_regression, (X, y), {}) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inspect_model(linear_regression, (X, y), {"subsample_size": 50}) == {}
        assert inspect_model(linear_regression, (X, y), {"subsample_size": 10}) != {}

        def plain(X, y=None):
            beta = numpyro.sample("beta", dist.Normal().expand([2]).to_event(1))
            with numpyro.plate("data", X.shape[0]):
                numpyro.sample("obs", dist.Normal(X @ beta, 1.0), obs=y)

        assert inspect_model(plain, (X, y), {}) == {}
        # reading plates of held-out data (check=False) never warns
        assert inspect_model(linear_regression, (X, y), {}, check=False) == {}

        def nested(y, subsample_size=None):  # groups x observations, the inner plate subsampled
            a = numpyro.sample("a", dist.Normal().expand([y.shape[1]]).to_event(1))
            with numpyro.plate("groups", y.shape[1], dim=-1):
                with numpyro.plate("obs", y.shape[0], subsample_size=subsample_size, dim=-2):
                    numpyro.sample("y", dist.Normal(a, 1.0), obs=numpyro.subsample(y, event_dim=0))

        Y = jnp.zeros((40, 3))
        assert inspect_model(nested, (Y,), {"subsample_size": 8}) == {"obs": PlateInfo(40, 8)}
    # with no subsample_size anywhere, each plate around numpyro.subsample is named
    with pytest.warns(FullBatchWarning) as record:
        assert inspect_model(nested, (Y,), {}) == {}
    assert {str(w.message).split(",")[0] for w in record} == {
        "numpyro.plate('groups'",
        "numpyro.plate('obs'",
    }
