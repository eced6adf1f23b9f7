"""Flax (linen and NNX) and Equinox networks through ``numpyro.contrib.module``: sampled with
``SMILE`` under ``MCMC`` and with ``SMILEEnsemble``, then scored by ``evaluate``.

``random_flax_module`` / ``random_nnx_module`` / ``random_eqx_module`` lift a module's
parameters to latent sites named ``"<module name>/<path>"`` (``numpyro.param`` holds the
initial values; ``SMILE`` samples the latent sites). The network is the same tiny MLP
(2 -> 8 -> 1, GELU) in each library. The runs use one regression model (noise sd 0.2) whose
mean is the sum of the three libraries' MLPs, so that one compiled run checks all three (a run
per library would triple the suite's compile time); each library's sites are checked apart,
and each library alone is traced. tests/test_ensemble.py runs an Equinox MLP alone through
``SMILEEnsemble``.
"""

from __future__ import annotations

import warnings
from functools import partial

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import MCMC

from numpyro_smile import SMILE, ResetWarning, SMILEEnsemble, evaluate

N, B, HIDDEN = 300, 50, 8
PRIOR = dist.Normal(0.0, 1.0)


def synthetic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


def linen_net(num_inputs: int):
    import flax.linen as nn
    from numpyro.contrib.module import random_flax_module

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            hidden = nn.gelu(nn.Dense(HIDDEN, name="hidden")(x))
            return nn.Dense(1, name="out")(hidden)[..., 0]

    return random_flax_module("linen", MLP(), PRIOR, input_shape=(1, num_inputs))


def nnx_net(num_inputs: int):
    from flax import nnx
    from numpyro.contrib.module import random_nnx_module

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(num_inputs, HIDDEN, rngs=rngs)
            self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.gelu(self.hidden(x)))[..., 0]

    return random_nnx_module("nnx", MLP(nnx.Rngs(0)), PRIOR)


def eqx_net(num_inputs: int):
    import equinox as eqx
    from numpyro.contrib.module import random_eqx_module

    mlp = eqx.nn.MLP(num_inputs, "scalar", HIDDEN, 1, activation=jax.nn.gelu, key=jax.random.key(0))
    return jax.vmap(random_eqx_module("eqx", mlp, PRIOR))


#: name: (the package to import, the network's builder, the latent sites it adds: the
#: module's name, "/", the parameter's path; the shapes of a Flax Dense layer's parameters)
LIBRARIES = {
    "flax.linen": ("flax", linen_net, "linen/"),
    "flax.nnx": ("flax", nnx_net, "nnx/"),
    "equinox": ("equinox", eqx_net, "eqx/"),
}
FLAX_SITES = {
    "hidden.kernel": (2, HIDDEN),
    "hidden.bias": (HIDDEN,),
    "out.kernel": (HIDDEN, 1),
    "out.bias": (1,),
}


def regression(X, y=None, subsample_size=None, *, libraries=tuple(LIBRARIES)):
    """The mean is the sum of the libraries' MLPs, each lifted to latent sites outside the
    data plate: one run checks every library's path through the sampler and the replays."""
    nets = [LIBRARIES[library][1](X.shape[1]) for library in libraries]
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(sum(net(x) for net in nets), 0.2), obs=target)


def check_draws(posterior, leading: tuple[int, int]) -> None:
    """Every library's sites are there, with finite values of the right shape."""
    names = list(posterior.data_vars)
    for library, (_, _, prefix) in LIBRARIES.items():
        mine = {n[len(prefix) :]: posterior[n].shape[2:] for n in names if n.startswith(prefix)}
        if library.startswith("flax"):
            assert mine == FLAX_SITES, (library, mine)
        else:  # Equinox: weights and biases of its two layers
            assert (
                sum(np.prod(shape) for shape in mine.values()) == 2 * HIDDEN + HIDDEN + HIDDEN + 1
            )
    for name in names:
        assert posterior[name].shape[:2] == leading, name
        assert np.all(np.isfinite(posterior[name].values)), name


@pytest.fixture(scope="module", autouse=True)
def libraries_installed():
    for package in ("flax", "equinox"):
        pytest.importorskip(package, reason=f"{package} is not installed (the test extra has it)")


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_module_parameters_become_latent_sites(library):
    """Each library's module alone: its parameters are the model's only latent sites, named
    after the module, with the prior N(0, 1) (traced abstractly: nothing compiled)."""
    X, y = synthetic(N, 0)
    sites = {}

    def trace(X):
        model = partial(regression, libraries=(library,))
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(X, y, B)
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"]:
                sites[name] = (tuple(site["value"].shape), site["fn"])

    jax.eval_shape(trace, X)
    prefix = LIBRARIES[library][2]
    assert sites and all(name.startswith(prefix) for name in sites), sites
    if library.startswith("flax"):
        assert {n[len(prefix) :]: shape for n, (shape, _) in sites.items()} == FLAX_SITES
    for shape, fn in sites.values():
        assert fn.event_shape == shape and isinstance(fn.base_dist.base_dist, dist.Normal)


def test_smile_under_mcmc():
    model = regression
    mcmc = MCMC(
        SMILE(model, pretrain_steps=300),
        num_warmup=150,
        num_samples=50,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    with warnings.catch_warnings():  # a short run: resets are not what this test is about
        warnings.simplefilter("ignore", ResetWarning)
        mcmc.run(jax.random.key(0), *synthetic(N, 0), subsample_size=B)
    idata = az.from_dict(posterior=mcmc.get_samples(group_by_chain=True))
    check_draws(idata.posterior, (2, 50))
    metrics = evaluate(model, idata, *synthetic(100, 1))
    assert metrics["num_draws"] == 100 and metrics["rmse"] < 0.5, metrics


def test_smile_ensemble_and_evaluate():
    ensemble = SMILEEnsemble(
        partial(regression, subsample_size=B),
        num_members=2,
        num_warmup=100,
        num_samples=50,
        thinning=5,
        pretrain_epochs=30,
        log_likelihood=False,  # the replays are the same for any model: tested elsewhere
    )
    with warnings.catch_warnings():  # a short run: resets are not what this test is about
        warnings.simplefilter("ignore", ResetWarning)
        idata = ensemble.run(jax.random.key(1), *synthetic(N, 0))
    check_draws(idata.posterior, (2, 10))
    check_draws(idata.pretrained, (2, 1))
    metrics = ensemble.evaluate(idata, *synthetic(100, 1))
    assert metrics["rmse"] < 0.5 and np.isfinite(metrics["lppd"]), metrics
