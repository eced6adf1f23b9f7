"""Ready NumPyro models with a subsample plate: two GLMs and two Bayesian neural networks.

Every model takes ``(X, y=None, subsample_size=None, *, ...)``: ``X`` the ``(N, p)`` inputs,
``y`` the ``(N,)`` targets (``None`` to sample them), and ``subsample_size`` the mini-batch
size B of the likelihood's ``numpyro.plate(name, N, subsample_size=B)``, NumPyro's own word
for it. With B < N, ``SMILE`` and ``SMILEEnsemble`` feed the plate a fresh mini-batch every
step (NumPyro scales its log-likelihood by N / B); ``subsample_size=None`` is the full-data
model (what NUTS samples, and full-batch MCLMC, i.e. MILE).

- :func:`linear_regression` and :func:`logistic_regression`: latent ``beta`` ``(p,)`` with an
  isotropic N(0, ``prior_scale``^2) prior, observed site ``obs``; the linear one has an exact
  Gaussian posterior (in its docstring), the reference for checking a sampler.
- :func:`mlp_regression` and :func:`mlp_classification` follow the MILE and SMILE papers' UCI
  setup: a fully connected ReLU network, an isotropic N(0, ``prior_scale``^2) prior on every
  weight and bias, the likelihood in the plate ``"data"``, observed site ``y``. Latent sites:
  ``w0, b0, w1, b1, ...`` for the layers (``w<i>`` of shape ``(in, out)``, ``b<i>`` of shape
  ``(out,)``), plus ``log_sigma`` (the Gaussian noise scale's log, prior N(0, 1), as in SMILE)
  for regression.

Any other network works the same way; for a Flax or Equinox module, lift its parameters to
latent sites with ``numpyro.contrib.module.random_flax_module`` / ``random_eqx_module`` inside
the model, before the plate (see the README's "Your own network").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

__all__ = [
    "linear_regression",
    "logistic_regression",
    "mlp_apply",
    "mlp_classification",
    "mlp_params",
    "mlp_regression",
]

#: The papers clip the noise scale sigma = exp(log_sigma) to [1e-6, 1e6].
LOG_SIGMA_BOUNDS = (-13.815510557964274, 13.815510557964274)


def linear_regression(
    X: jax.Array,
    y: jax.Array | None = None,
    subsample_size: int | None = None,
    *,
    prior_scale: float = 1.0,
    noise_scale: float = 1.0,
    plate_name: str = "data",
) -> None:
    """Bayesian linear regression with a known noise scale: y ~ N(X beta, noise_scale^2).

    Sites: the latent ``beta`` ``(p,)`` and the observed ``obs`` ``(N,)`` (``(B,)`` per
    mini-batch). ``beta`` has the prior N(0, prior_scale^2 I); there is no separate
    intercept (give ``X`` a column of ones for one). The likelihood sits in
    ``numpyro.plate(plate_name, N, subsample_size=subsample_size)``.

    The posterior is Gaussian and known exactly, which makes this model the reference for
    checking a sampler's moments: with s0 = ``prior_scale`` and s = ``noise_scale``,

        beta | X, y ~ N(m, S),   S = (X^T X / s^2 + I / s0^2)^-1,   m = S X^T y / s^2.

    Mini-batching does not change it: with B < N the plate scales each mini-batch's
    log-likelihood by N / B, an unbiased estimate of the full-data one, so ``SMILE`` samples
    this same posterior (up to its discretisation and gradient-noise bias).

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` targets (``None`` to sample them).
        subsample_size: mini-batch size B of the plate (``None``: full batch).
        prior_scale: standard deviation s0 of the prior on every coefficient.
        noise_scale: standard deviation s of the Gaussian noise (fixed, not learned).
        plate_name: name of the data plate (``"data"``, as in the MLPs).
    """
    beta = numpyro.sample("beta", dist.Normal(0, prior_scale).expand([X.shape[1]]).to_event(1))
    with numpyro.plate(plate_name, X.shape[0], subsample_size=subsample_size):
        xb = numpyro.subsample(X, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0) if y is not None else None
        numpyro.sample("obs", dist.Normal(xb @ beta, noise_scale), obs=yb)


def logistic_regression(
    X: jax.Array,
    y: jax.Array | None = None,
    subsample_size: int | None = None,
    *,
    prior_scale: float = 1.0,
    plate_name: str = "data",
) -> None:
    """Bayesian logistic regression: y ~ Bernoulli(sigmoid(X beta)).

    Sites: the latent ``beta`` ``(p,)`` and the observed ``obs`` ``(N,)`` (``(B,)`` per
    mini-batch). ``beta`` has the prior N(0, prior_scale^2 I); there is no separate
    intercept (give ``X`` a column of ones for one). The likelihood sits in
    ``numpyro.plate(plate_name, N, subsample_size=subsample_size)``. The posterior has no
    closed form; for large N it is close to the Laplace approximation at the MAP.

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` labels in {0, 1}, as floats (``None`` to sample them).
        subsample_size: mini-batch size B of the plate (``None``: full batch).
        prior_scale: standard deviation of the prior on every coefficient.
        plate_name: name of the data plate (``"data"``, as in the MLPs).
    """
    beta = numpyro.sample("beta", dist.Normal(0, prior_scale).expand([X.shape[1]]).to_event(1))
    with numpyro.plate(plate_name, X.shape[0], subsample_size=subsample_size):
        xb = numpyro.subsample(X, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0) if y is not None else None
        numpyro.sample("obs", dist.Bernoulli(logits=xb @ beta), obs=yb)


def mlp_params(
    num_inputs: int,
    num_outputs: int,
    hidden: Sequence[int] = (16, 16),
    prior_scale: float = 1.0,
) -> list[tuple[jax.Array, jax.Array]]:
    """Sample an MLP's weights as global sites ``w<i>`` ``(in, out)`` and ``b<i>`` ``(out,)``.

    Call it outside the data plate: the weights are shared by all data points.

    Args:
        num_inputs: width of the input.
        num_outputs: width of the linear output layer.
        hidden: widths of the hidden layers.
        prior_scale: standard deviation of the N(0, prior_scale^2) prior on every parameter.
    """
    widths = [num_inputs, *hidden, num_outputs]
    params = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = numpyro.sample(
            f"w{i}", dist.Normal(0.0, prior_scale).expand([fan_in, fan_out]).to_event(2)
        )
        b = numpyro.sample(f"b{i}", dist.Normal(0.0, prior_scale).expand([fan_out]).to_event(1))
        params.append((w, b))
    return params


def mlp_apply(
    params: list[tuple[jax.Array, jax.Array]], x: jax.Array, activation: Callable = jax.nn.relu
) -> jax.Array:
    """``(..., p) -> (..., num_outputs)``: the MLP with ``activation`` between layers."""
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = activation(h)
    return h


def mlp_regression(
    X: jax.Array,
    y: jax.Array | None = None,
    subsample_size: int | None = None,
    *,
    hidden: Sequence[int] = (16, 16),
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.relu,
) -> None:
    """Bayesian MLP regression: y ~ N(mlp(x), sigma^2) with a learned noise scale sigma.

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` targets (``None`` to sample them).
        subsample_size: mini-batch size of the ``"data"`` plate (``None``: full batch).
        hidden: hidden-layer widths (the papers: 16-16 or 16-16-16).
        prior_scale: prior standard deviation of every weight and bias.
        activation: the nonlinearity between layers.
    """
    params = mlp_params(X.shape[-1], 1, hidden, prior_scale)
    log_sigma = numpyro.sample("log_sigma", dist.Normal(0.0, 1.0))
    sigma = jnp.exp(jnp.clip(log_sigma, *LOG_SIGMA_BOUNDS))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        mean = mlp_apply(params, x, activation)[..., 0]
        numpyro.sample("y", dist.Normal(mean, sigma), obs=target)


def mlp_classification(
    X: jax.Array,
    y: jax.Array | None = None,
    subsample_size: int | None = None,
    *,
    num_classes: int,
    hidden: Sequence[int] = (16, 16),
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.relu,
) -> None:
    """Bayesian MLP classification: y ~ Categorical(softmax(mlp(x))).

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` integer labels in ``[0, num_classes)`` (``None`` to sample them).
        subsample_size: mini-batch size of the ``"data"`` plate (``None``: full batch).
        num_classes: number of classes (2 for binary data).
        hidden: hidden-layer widths, as in :func:`mlp_regression`.
        prior_scale: prior standard deviation of every weight and bias.
        activation: the nonlinearity between layers.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    params = mlp_params(X.shape[-1], num_classes, hidden, prior_scale)
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        logits = mlp_apply(params, x, activation)
        numpyro.sample("y", dist.Categorical(logits=logits), obs=target)
