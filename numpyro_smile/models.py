"""Ready NumPyro models with a subsample plate: two GLMs, two MLPs, a CNN and a transformer.

Every model takes ``(X, y=None, subsample_size=None, *, ...)``: ``X`` the ``(N, p)`` inputs
(a CNN's: signals or images), ``y`` the ``(N,)`` targets (``None`` to sample them), and
``subsample_size`` the mini-batch size B of the likelihood's ``numpyro.plate(name, N,
subsample_size=B)``, NumPyro's own word for it; the language model takes ``(tokens,
subsample_size=None, *, ...)``, its targets being the tokens themselves. With B < N, ``SMILE``
and ``SMILEEnsemble`` feed the plate a fresh mini-batch every step (NumPyro scales its
log-likelihood by N / B); ``subsample_size=None`` is the full-data model (what NUTS samples,
and full-batch MCLMC, i.e. MILE). Latent weights are sampled before the plate.

- :func:`linear_regression` and :func:`logistic_regression`: latent ``beta`` ``(p,)`` with an
  isotropic N(0, ``prior_scale``^2) prior, observed site ``obs``; the linear one has an exact
  Gaussian posterior (in its docstring), the reference for checking a sampler.
- :func:`mlp_regression` and :func:`mlp_classification` follow the MILE and SMILE papers' UCI
  setup: a fully connected ReLU network, an isotropic N(0, ``prior_scale``^2) prior on every
  weight and bias, the likelihood in the plate ``"data"``, observed site ``y``. Latent sites:
  ``w0, b0, w1, b1, ...`` for the layers (``w<i>`` of shape ``(in, out)``, ``b<i>`` of shape
  ``(out,)``), plus ``log_sigma`` (the Gaussian noise scale's log, prior N(0, 1), as in SMILE)
  for regression.
- :func:`cnn_classification`: convolutions with average pooling, then dense layers, GELU, on
  1-D signals ``(N, L[, C])`` or 2-D images ``(N, H, W[, C])`` (pure JAX); observed site
  ``y`` in the plate ``"data"``. :func:`cnn_params` samples its sites, :func:`cnn_apply`
  evaluates it at given weights (e.g. one posterior draw).
- :func:`transformer_lm`: a character-level GPT (token and position embeddings, pre-LN causal
  self-attention blocks, GELU MLPs, a tied or separate head) over ``(N, T + 1)`` windows of a
  text (:func:`numpyro_smile.datasets.char_sequences`); the plate ``"data"`` over sequences is
  the mini-batch plate, an inner plate ``"tokens"`` holds the T next-token observations, so
  ``evaluate`` scores it per token. :func:`transformer_params` samples its sites,
  :func:`transformer_apply` gives next-token logits at given weights (e.g. to generate text).

Any other network works the same way: lift a Flax (linen or NNX) or Equinox module's
parameters to latent sites with ``numpyro.contrib.module.random_flax_module`` /
``random_nnx_module`` / ``random_eqx_module`` inside the model, before the plate (see the
README's "Your own network"; all three are tested with ``SMILE`` and ``SMILEEnsemble``).

**Priors for CNNs and transformers.** ``prior="isotropic"`` is N(0, s^2) on every parameter,
s = ``prior_scale``; ``prior="fan_in"`` is N(0, s^2 / fan_in) on every weight, fan_in being
the number of inputs each output sums over (LeCun's initialisation at s = 1, He's at s =
sqrt 2), and N(0, s^2) on the biases; a callable ``prior(name, shape) -> Distribution`` gives
any other prior. The defaults follow a measurement (``python -m benchmarks.priors``: for each
prior, the prior predictive's logit scale, then a ``SMILEEnsemble`` of 4 members, 2,000 AdamW
pretraining steps, 1,000 warmup and 1,000 sampling steps, scored on test data; CPU). Two
numbers are seeds 0 / 1, one is seed 0:

| data, network (parameters) | prior | prior logit sd | test LPPD | accuracy |
|---|---|---|---|---|
| 8x8 digits, 2-D CNN (3,700) | **N(0, 1)** | 128 | **-0.055 / -0.064** | 0.989 / 0.986 |
| | fan-in, s = 1 | 1.2 | -0.980 | 0.886 |
| | fan-in, s = sqrt 2 | 2.4 | -0.255 | 0.939 |
| | fan-in, s = 2 | 6.1 | -0.159 | 0.967 |
| | fan-in, s = 4 | 67 | -0.078 / -0.091 | 0.986 / 0.981 |
| MNIST-1D, 1-D CNN (5,900) | **N(0, 1)** | 181 | -0.233 / -0.230 | 0.926 / 0.938 |
| | fan-in, s = 1 | 1.2 | -0.823 | 0.733 |
| | fan-in, s = sqrt 2 | 2.6 | -0.416 | 0.897 |
| | fan-in, s = 2 | 7.6 | -0.288 | 0.927 |
| | fan-in, s = 4 | 100 | **-0.194 / -0.196** | 0.949 / 0.945 |
| Shakespeare, GPT (28,000) | N(0, 1) | 5.7 | -2.075 / -2.049 | 0.424 / 0.426 |
| | **fan-in, s = 1** | 1.4 | **-2.001 / -1.981** | 0.432 / 0.422 |
| | fan-in, s = sqrt 2 | 2.0 | -2.025 | 0.431 |
| | fan-in, s = 2 | 2.8 | -2.042 | 0.429 |
| | fan-in, s = 4 | 5.6 | -2.065 | 0.424 |

(LPPD in nats per example, per character for the GPT: d_model 32, 2 blocks, 32-character
windows of the first 200,000 training characters, scored on 20,000 test characters; uniform
guessing scores -2.30 on the digits, -4.17 on the text. The digits' seed also redraws their
70/10/20 split; MNIST-1D is the package's 3,500 / 500 / 1,000 examples either way.) So:

- **CNN: N(0, 1)** (``prior="isotropic"``). Fan-in scaling at s = 1 or sqrt 2 (LeCun, He)
  gives a sane prior predictive (logits of sd 1 to 3 against 128), but a small CNN fitted to
  10^3 examples needs larger weights than it allows: the posterior shrinks towards zero and
  underfits (at s = 1, the test suite's 300 pretraining steps on 600 digits stay at chance),
  and widening the prior helps steadily. The two wide priors tie: N(0, 1) predicts better on the
  digits, fan-in with s = 4 on MNIST-1D, by 0.02 to 0.04 nats on both seeds. N(0, 1) is the
  default for being the MLPs' prior too; for much wider networks, where N(0, 1) puts ever
  larger pre-activations in the prior, compare ``prior="fan_in", prior_scale=4``. On the
  image benchmark's 33,000-parameter CNN (MNIST-1D) N(0, 1) also gives the best deep
  ensemble against N(0, s^2) with s = 0.3, 2, 4 and fan-in with s = 2, 4, and chains that
  move far from the ensemble lose under every one of them but the underfitting fan-in s = 2
  (docs, "Is it the prior?").
- **Transformer: fan-in, s = 1** (``prior="fan_in"``, the embeddings N(0, s^2 / d_model)).
  The LayerNorms rescale every block's input whatever the weights' scale, so the prior acts
  mostly on the output: with the tied head, N(0, 1) embeddings make prior logits of sd about
  sqrt(d_model), and the test LPPD falls steadily as s grows, 0.07 nats per character from
  s = 1 to N(0, 1) on both seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

__all__ = [
    "PRIORS",
    "cnn_apply",
    "cnn_classification",
    "cnn_params",
    "linear_regression",
    "logistic_regression",
    "mlp_apply",
    "mlp_classification",
    "mlp_params",
    "mlp_regression",
    "transformer_apply",
    "transformer_lm",
    "transformer_params",
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


# ------------------------------------------------------------------ priors of the larger networks

#: The named priors of :func:`cnn_classification` and :func:`transformer_lm` (see the module
#: docstring, "Priors for CNNs and transformers").
PRIORS = ("fan_in", "isotropic")

#: A prior: one of :data:`PRIORS`, or ``prior(name, shape) -> Distribution`` for every site
#: (as ``numpyro.contrib.module``'s callable priors; expanded to ``shape``).
Prior = str | Callable[[str, tuple[int, ...]], dist.Distribution]


def _check_prior(prior: Prior, prior_scale: float) -> None:
    if callable(prior):
        return
    if prior not in PRIORS:
        raise ValueError(
            f"prior must be one of {PRIORS} or a callable (name, shape) -> Distribution, got "
            f"{prior!r}."
        )
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}.")


def _latent(
    name: str,
    shape: Sequence[int],
    prior: Prior,
    prior_scale: float,
    fan_in: int | None = None,
) -> jax.Array:
    """The global site ``name`` of ``shape`` under ``prior``: N(0, s^2 / fan_in) for a weight
    under ``"fan_in"`` (``fan_in`` the number of inputs each output sums over), N(0, s^2) for
    a bias (``fan_in=None``) and for everything under ``"isotropic"``."""
    shape = tuple(int(n) for n in shape)
    if callable(prior):
        fn = prior(name, shape)
        batch = shape[: len(shape) - fn.event_dim]
        return numpyro.sample(name, fn.expand(list(batch)).to_event(len(batch)))
    scale = prior_scale
    if prior == "fan_in" and fan_in is not None:
        scale = prior_scale / math.sqrt(fan_in)
    return numpyro.sample(name, dist.Normal(0.0, scale).expand(list(shape)).to_event(len(shape)))


# ------------------------------------------------------------------ convolutional classifier


def _cnn_layout(shape: Sequence[int], spatial_dims: int | None) -> tuple[tuple[int, ...], int]:
    """``(spatial shape, channels)`` of inputs of ``shape`` (examples first), by the rule of
    :func:`cnn_classification`."""
    ndim = len(shape) - 1
    if spatial_dims is None:
        spatial_dims = 1 if ndim == 1 else 2
    if spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims must be 1, 2 or None, got {spatial_dims}.")
    if ndim == spatial_dims:
        return tuple(int(n) for n in shape[1:]), 1
    if ndim == spatial_dims + 1:
        return tuple(int(n) for n in shape[1:-1]), int(shape[-1])
    layouts = "(N, L) or (N, L, C)" if spatial_dims == 1 else "(N, H, W) or (N, H, W, C)"
    raise ValueError(
        f"Inputs of shape {tuple(shape)} do not fit a {spatial_dims}-D convolution: expected "
        f"{layouts}."
    )


def _avg_pool(h: jax.Array, pool: int) -> jax.Array:
    """Average pooling of ``(B, *spatial, C)`` over ``pool``-wide windows with stride ``pool``
    in every spatial dimension (trailing rows that fill no window are dropped)."""
    if pool <= 1:
        return h
    spatial = h.shape[1:-1]
    h = h[(slice(None), *(slice(0, n // pool * pool) for n in spatial), slice(None))]
    split = [h.shape[0]]
    for n in spatial:
        split += [n // pool, pool]
    axes = tuple(2 + 2 * i for i in range(len(spatial)))
    return h.reshape(*split, h.shape[-1]).mean(axis=axes)


def cnn_params(
    input_shape: Sequence[int],
    num_outputs: int,
    channels: Sequence[int] = (8, 16),
    kernel_size: int = 3,
    dense: Sequence[int] = (32,),
    pool: int = 2,
    prior: Prior = "isotropic",
    prior_scale: float = 1.0,
) -> dict[str, jax.Array]:
    """Sample a CNN's weights as global sites; call it outside the data plate.

    Sites: ``conv<i>_w`` ``(k, C_in, C_out)`` (1-D) or ``(k, k, C_in, C_out)`` (2-D) and
    ``conv<i>_b`` ``(C_out,)`` per convolution, ``dense<i>_w`` ``(in, out)`` and
    ``dense<i>_b`` per hidden dense layer, ``out_w`` and ``out_b`` for the output layer.

    Args:
        input_shape: one example's shape, ``(L, C)`` or ``(H, W, C)`` (channels last).
        num_outputs: width of the linear output layer.
        channels: output channels of each convolution.
        kernel_size: width k of every convolution kernel (in each spatial dimension).
        dense: widths of the hidden dense layers after the flattened convolutions.
        pool: average-pooling window and stride after each convolution (1: none).
        prior: ``"isotropic"``, ``"fan_in"`` or a callable (see the module docstring).
        prior_scale: s of the prior.
    """
    _check_prior(prior, prior_scale)
    *spatial, c_in = (int(n) for n in input_shape)
    params = {}
    for i, c_out in enumerate(channels):
        shape = (kernel_size,) * len(spatial) + (c_in, c_out)
        fan_in = kernel_size ** len(spatial) * c_in
        params[f"conv{i}_w"] = _latent(f"conv{i}_w", shape, prior, prior_scale, fan_in)
        params[f"conv{i}_b"] = _latent(f"conv{i}_b", (c_out,), prior, prior_scale)
        if pool > 1:
            if min(spatial) < pool:
                raise ValueError(
                    f"Convolution {i} gets inputs of spatial shape {tuple(spatial)}, smaller "
                    f"than the pooling window {pool}: use fewer channels= layers, pool=1, or "
                    "larger inputs."
                )
            spatial = [n // pool for n in spatial]
        c_in = c_out
    width = math.prod(spatial) * c_in
    widths = [*dense, num_outputs]
    for i, out in enumerate(widths):
        name = "out" if i == len(widths) - 1 else f"dense{i}"
        params[f"{name}_w"] = _latent(f"{name}_w", (width, out), prior, prior_scale, width)
        params[f"{name}_b"] = _latent(f"{name}_b", (out,), prior, prior_scale)
        width = out
    return params


def cnn_apply(
    params: dict[str, jax.Array],
    x: jax.Array,
    *,
    pool: int = 2,
    activation: Callable = jax.nn.gelu,
) -> jax.Array:
    """``(B, *spatial[, C]) -> (B, num_outputs)``: the CNN of :func:`cnn_params`' sites.

    Each convolution (stride 1, ``"SAME"`` padding) adds its bias, applies ``activation``
    and average-pools; the result is flattened into the dense layers (``activation``
    between them) and the linear output layer. Without a channel axis the input has one
    channel. ``params`` may be one draw of a posterior, ``{name: value}``.
    """
    num_convs = sum(1 for name in params if name.startswith("conv") and name.endswith("_w"))
    h = x
    if num_convs:
        spatial_dims = params["conv0_w"].ndim - 2
        if h.ndim == spatial_dims + 1:
            h = h[..., None]
        spec = ("NWC", "WIO", "NWC") if spatial_dims == 1 else ("NHWC", "HWIO", "NHWC")
        for i in range(num_convs):
            h = jax.lax.conv_general_dilated(
                h,
                params[f"conv{i}_w"],
                window_strides=(1,) * spatial_dims,
                padding="SAME",
                dimension_numbers=spec,
            )
            h = _avg_pool(activation(h + params[f"conv{i}_b"]), pool)
    h = h.reshape(h.shape[0], -1)
    i = 0
    while f"dense{i}_w" in params:
        h = activation(h @ params[f"dense{i}_w"] + params[f"dense{i}_b"])
        i += 1
    return h @ params["out_w"] + params["out_b"]


def cnn_classification(
    X: jax.Array,
    y: jax.Array | None = None,
    subsample_size: int | None = None,
    *,
    num_classes: int,
    channels: Sequence[int] = (8, 16),
    kernel_size: int = 3,
    dense: Sequence[int] = (32,),
    pool: int = 2,
    spatial_dims: int | None = None,
    prior: Prior = "isotropic",
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.gelu,
) -> None:
    """Bayesian CNN classification of 1-D signals or 2-D images: y ~ Categorical(cnn(x)).

    The network: per entry of ``channels`` a convolution (``kernel_size`` wide, stride 1,
    ``"SAME"`` padding, bias), ``activation`` (GELU) and ``pool`` x ``pool`` average pooling;
    then the flattened features through the ``dense`` layers (GELU) and a linear layer to
    ``num_classes`` logits. Pure JAX (``jax.lax.conv_general_dilated``). Sites: see
    :func:`cnn_params`; the likelihood ``y`` sits in ``numpyro.plate("data", N,
    subsample_size=subsample_size)``.

    The input layout, channels last: ``(N, L)`` is 1-D signals, ``(N, H, W)`` 2-D
    single-channel images, ``(N, H, W, C)`` 2-D images with C channels. A 3-D array is read
    as images unless ``spatial_dims=1``, which reads it as 1-D signals with channels
    ``(N, L, C)``. The defaults (channels 8 and 16, dense 32) are 3,658 parameters on
    scikit-learn's 8x8 digits and 5,914 on MNIST-1D (length 40).

    The default prior is N(0, s^2) on every weight and bias, s = ``prior_scale`` = 1 (the
    MLPs' prior); ``prior="fan_in"`` puts N(0, s^2 / fan_in) on every weight instead (fan_in:
    k^d C_in for a convolution, the input width for a dense layer). In the measurement of the
    module docstring ("Priors for CNNs and transformers") N(0, 1) and fan-in with s = 4 tie
    for the best test LPPD, far ahead of fan-in with s = 1 (LeCun) or sqrt 2 (He), although
    their prior predictives are absurd (logits of standard deviation 70 to 180).

    Args:
        X: inputs, ``(N, L)``, ``(N, H, W)``, ``(N, H, W, C)`` or (with ``spatial_dims=1``)
            ``(N, L, C)``.
        y: ``(N,)`` integer labels in ``[0, num_classes)`` (``None`` to sample them).
        subsample_size: mini-batch size of the ``"data"`` plate (``None``: full batch).
        num_classes: number of classes.
        channels: output channels of each convolution (``()``: a dense network on the
            flattened input).
        kernel_size: width of every convolution kernel in each spatial dimension.
        dense: widths of the hidden dense layers.
        pool: average-pooling window and stride after each convolution (1: no pooling).
        spatial_dims: 1 or 2 to override the layout rule above (``None``: by ``X.ndim``).
        prior: ``"isotropic"`` (default), ``"fan_in"``, or ``prior(name, shape) ->
            Distribution`` for every site.
        prior_scale: s of the prior.
        activation: the nonlinearity after every convolution and hidden dense layer.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    spatial, num_channels = _cnn_layout(X.shape, spatial_dims)
    params = cnn_params(
        (*spatial, num_channels),
        num_classes,
        channels=channels,
        kernel_size=kernel_size,
        dense=dense,
        pool=pool,
        prior=prior,
        prior_scale=prior_scale,
    )
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=X.ndim - 1)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        x = x.reshape(x.shape[0], *spatial, num_channels)
        logits = cnn_apply(params, x, pool=pool, activation=activation)
        numpyro.sample("y", dist.Categorical(logits=logits), obs=target)


# ------------------------------------------------------------------ character-level transformer

#: The transformer's per-block sites, each with a leading ``num_layers`` axis.
TRANSFORMER_BLOCK_SITES = (
    "attn_qkv_w",
    "attn_qkv_b",
    "attn_out_w",
    "attn_out_b",
    "mlp_in_w",
    "mlp_in_b",
    "mlp_out_w",
    "mlp_out_b",
)


def transformer_params(
    vocab_size: int,
    context: int,
    d_model: int = 64,
    num_layers: int = 2,
    *,
    mlp_ratio: int = 4,
    tie_weights: bool = True,
    prior: Prior = "fan_in",
    prior_scale: float = 1.0,
) -> dict[str, jax.Array]:
    """Sample a GPT's weights as global sites; call it outside the data plate.

    Sites (D = ``d_model``, L = ``num_layers``, F = ``mlp_ratio`` D, V = ``vocab_size``):
    ``tok_emb`` ``(V, D)``, ``pos_emb`` ``(context, D)``; per block, stacked over a leading
    L axis, ``attn_qkv_w`` ``(L, D, 3D)``, ``attn_qkv_b`` ``(L, 3D)``, ``attn_out_w``
    ``(L, D, D)``, ``attn_out_b`` ``(L, D)``, ``mlp_in_w`` ``(L, D, F)``, ``mlp_in_b``
    ``(L, F)``, ``mlp_out_w`` ``(L, F, D)``, ``mlp_out_b`` ``(L, D)``; ``head_w`` ``(D, V)``
    unless ``tie_weights`` (then the head is ``tok_emb`` transposed) and ``head_b`` ``(V,)``.
    The LayerNorms have no gain or offset (a gain would only rescale the next weight matrix:
    a ridge of equally good weights in the posterior).

    Under ``prior="fan_in"`` every weight matrix is N(0, s^2 / fan_in) with fan_in its input
    width (D, or F for ``mlp_out_w``), the embeddings are N(0, s^2 / D) (an embedding vector
    of squared norm about s^2; the tied head is then also fan-in scaled) and the biases
    N(0, s^2).
    """
    _check_prior(prior, prior_scale)
    for name, value in (("vocab_size", vocab_size), ("context", context), ("d_model", d_model)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if num_layers < 1 or mlp_ratio < 1:
        raise ValueError(f"num_layers and mlp_ratio must be >= 1, got {num_layers}, {mlp_ratio}.")
    D, L, F, V = d_model, num_layers, mlp_ratio * d_model, vocab_size
    shapes: dict[str, tuple[tuple[int, ...], int | None]] = {
        "tok_emb": ((V, D), D),
        "pos_emb": ((context, D), D),
        "attn_qkv_w": ((L, D, 3 * D), D),
        "attn_qkv_b": ((L, 3 * D), None),
        "attn_out_w": ((L, D, D), D),
        "attn_out_b": ((L, D), None),
        "mlp_in_w": ((L, D, F), D),
        "mlp_in_b": ((L, F), None),
        "mlp_out_w": ((L, F, D), F),
        "mlp_out_b": ((L, D), None),
    }
    if not tie_weights:
        shapes["head_w"] = ((D, V), D)
    shapes["head_b"] = ((V,), None)
    return {
        name: _latent(name, shape, prior, prior_scale, fan_in)
        for name, (shape, fan_in) in shapes.items()
    }


def _layer_norm(h: jax.Array, eps: float = 1e-5) -> jax.Array:
    mean = h.mean(-1, keepdims=True)
    centred = h - mean
    return centred * jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + eps)


def transformer_apply(
    params: dict[str, jax.Array],
    inputs: jax.Array,
    *,
    num_heads: int,
    activation: Callable = jax.nn.gelu,
) -> jax.Array:
    """``(B, T) -> (B, T, V)``: next-token logits of :func:`transformer_params`' sites.

    Token plus position embeddings, then per block (pre-LN) ``h += attention(LN(h))`` with
    ``num_heads`` causal heads and ``h += mlp(LN(h))`` (``activation`` between its two
    layers), then a final LayerNorm and the head. ``T`` may be anything up to ``context``.
    ``params`` may be one draw of a posterior, ``{name: value}``, e.g. to generate text.
    """
    tok_emb = params["tok_emb"]
    d_model = tok_emb.shape[-1]
    if d_model % num_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}).")
    steps = inputs.shape[-1]
    head_dim = d_model // num_heads
    causal = jnp.tril(jnp.ones((steps, steps), bool))
    h = jnp.take(tok_emb, inputs, axis=0) + params["pos_emb"][:steps]

    def block(h, p):
        q, k, v = jnp.split(_layer_norm(h) @ p["attn_qkv_w"] + p["attn_qkv_b"], 3, axis=-1)
        q, k, v = (z.reshape(*z.shape[:-1], num_heads, head_dim) for z in (q, k, v))
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(head_dim)
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attended = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, -1), v)
        h = h + attended.reshape(h.shape) @ p["attn_out_w"] + p["attn_out_b"]
        hidden = activation(_layer_norm(h) @ p["mlp_in_w"] + p["mlp_in_b"])
        return h + hidden @ p["mlp_out_w"] + p["mlp_out_b"], None

    h, _ = jax.lax.scan(block, h, {name: params[name] for name in TRANSFORMER_BLOCK_SITES})
    head = params["head_w"] if "head_w" in params else tok_emb.T
    return _layer_norm(h) @ head + params["head_b"]


def transformer_lm(
    tokens: jax.Array,
    subsample_size: int | None = None,
    *,
    vocab_size: int,
    context: int,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    mlp_ratio: int = 4,
    tie_weights: bool = True,
    prior: Prior = "fan_in",
    prior_scale: float = 1.0,
    activation: Callable = jax.nn.gelu,
) -> None:
    """Bayesian character-level GPT: each token ~ Categorical(gpt(the tokens before it)).

    ``tokens`` ``(N, T + 1)`` holds N sequences (windows of a text, see
    :func:`numpyro_smile.datasets.char_sequences`); the network reads ``tokens[:, :-1]`` and
    predicts ``tokens[:, 1:]``, each position from the ones up to it (causal attention), so a
    sequence gives T predictions, T <= ``context``. The network and its sites: see
    :func:`transformer_params` and :func:`transformer_apply`.

    The plates: ``numpyro.plate("data", N, subsample_size=subsample_size, dim=-2)`` over
    sequences, the mini-batch plate, and inside it ``numpyro.plate("tokens", T, dim=-1)``
    over positions, never subsampled. The observed site ``y`` is the ``(B, T)`` next tokens,
    each its own Categorical, so NumPyro scales the log-likelihood of the B x T tokens by
    N / B (sequences), an unbiased estimate of the sum over all N x T tokens, and the
    pointwise log-likelihood is per token: ``evaluate`` reports the mean over test tokens of
    log (mean over draws of p(token)), the per-token (per-character) LPPD in nats (its
    negative divided by log 2 is bits per character); ``accuracy`` is next-token accuracy.
    ``SMILEEnsemble``'s ``log_likelihood`` group is members x draws x N x T numbers: pass
    ``log_likelihood=m`` (m sequences) or ``False`` for a long text.

    The default prior is fan-in scaled (see :func:`transformer_params`; why, with the
    measurement: the module docstring).

    Args:
        tokens: ``(N, T + 1)`` integer tokens in ``[0, vocab_size)``.
        subsample_size: sequences per mini-batch (``None``: full batch).
        vocab_size: V, the number of symbols.
        context: the longest T the network reads (rows of the position embedding).
        d_model: width D of the residual stream.
        num_heads: attention heads per block (D must be a multiple).
        num_layers: number of transformer blocks.
        mlp_ratio: hidden width of each block's MLP, in multiples of D.
        tie_weights: use the token embedding as the output head (no ``head_w``).
        prior: ``"fan_in"`` (default), ``"isotropic"``, or ``prior(name, shape) ->
            Distribution`` for every site.
        prior_scale: s of the prior.
        activation: the nonlinearity of the blocks' MLPs.
    """
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens must be an (N, T + 1) integer array, got shape {tokens.shape} and dtype "
            f"{tokens.dtype}."
        )
    steps = tokens.shape[1] - 1
    if not 1 <= steps <= context:
        raise ValueError(
            f"tokens of shape {tokens.shape} give T = {steps} predictions per sequence; the "
            f"network reads 1 to context = {context} tokens."
        )
    if d_model % num_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}).")
    params = transformer_params(
        vocab_size,
        context,
        d_model,
        num_layers,
        mlp_ratio=mlp_ratio,
        tie_weights=tie_weights,
        prior=prior,
        prior_scale=prior_scale,
    )
    with numpyro.plate("data", tokens.shape[0], subsample_size=subsample_size, dim=-2):
        sequences = numpyro.subsample(tokens, event_dim=0)
        logits = transformer_apply(
            params, sequences[:, :-1], num_heads=num_heads, activation=activation
        )
        with numpyro.plate("tokens", steps, dim=-1):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=sequences[:, 1:])
