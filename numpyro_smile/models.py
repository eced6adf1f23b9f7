"""Ready NumPyro models for Bayesian neural networks, with a subsample plate.

Both models follow the MILE and SMILE papers' UCI setup: a fully connected ReLU
network, an isotropic N(0, prior_scale^2) prior on every weight and bias, and the likelihood in
``numpyro.plate("data", N, subsample_size=batch_size)``, so that ``SMILE`` and
``SMILEEnsemble`` mini-batch them (``batch_size=None``: full batch, i.e. MILE).

Latent sites: ``w0, b0, w1, b1, ...`` for the layers (``w<i>`` of shape ``(in, out)``), plus
``log_sigma`` (the Gaussian noise scale's log, prior N(0, 1), as in SMILE) for regression.

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

__all__ = ["mlp_apply", "mlp_classification", "mlp_params", "mlp_regression"]

#: The papers clip the noise scale sigma = exp(log_sigma) to [1e-6, 1e6].
LOG_SIGMA_BOUNDS = (-13.815510557964274, 13.815510557964274)


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
    *,
    hidden: Sequence[int] = (16, 16),
    batch_size: int | None = None,
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.relu,
) -> None:
    """Bayesian MLP regression: y ~ N(mlp(x), sigma^2) with a learned noise scale sigma.

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` targets (``None`` to sample them).
        hidden: hidden-layer widths (the papers: 16-16 or 16-16-16).
        batch_size: mini-batch size of the ``"data"`` plate (``None``: full batch).
        prior_scale: prior standard deviation of every weight and bias.
        activation: the nonlinearity between layers.
    """
    params = mlp_params(X.shape[-1], 1, hidden, prior_scale)
    log_sigma = numpyro.sample("log_sigma", dist.Normal(0.0, 1.0))
    sigma = jnp.exp(jnp.clip(log_sigma, *LOG_SIGMA_BOUNDS))
    with numpyro.plate("data", X.shape[0], subsample_size=batch_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        mean = mlp_apply(params, x, activation)[..., 0]
        numpyro.sample("y", dist.Normal(mean, sigma), obs=target)


def mlp_classification(
    X: jax.Array,
    y: jax.Array | None = None,
    *,
    num_classes: int,
    hidden: Sequence[int] = (16, 16),
    batch_size: int | None = None,
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.relu,
) -> None:
    """Bayesian MLP classification: y ~ Categorical(softmax(mlp(x))).

    Args:
        X: ``(N, p)`` inputs.
        y: ``(N,)`` integer labels in ``[0, num_classes)`` (``None`` to sample them).
        num_classes: number of classes (2 for binary data).
        hidden: hidden-layer widths, as in :func:`mlp_regression`.
        batch_size: mini-batch size of the ``"data"`` plate (``None``: full batch).
        prior_scale: prior standard deviation of every weight and bias.
        activation: the nonlinearity between layers.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    params = mlp_params(X.shape[-1], num_classes, hidden, prior_scale)
    with numpyro.plate("data", X.shape[0], subsample_size=batch_size):
        x = numpyro.subsample(X, event_dim=1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        logits = mlp_apply(params, x, activation)
        numpyro.sample("y", dist.Categorical(logits=logits), obs=target)
