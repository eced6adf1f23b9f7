"""Predictive metrics of posterior draws (or a deep ensemble) on held-out data.

The papers' metrics (ALGORITHM.md 4.6 and 5.9), computed from an ``InferenceData`` group and a
model replayed on held-out data, with every draw of every member pooled:

* **LPPD**: mean over test points of log((1 / (K S)) sum_{k,s} p(y_i | theta_{k,s})); higher is
  better. For a deep ensemble (``group="pretrained"``) the K members are the draws.
* **regression**: RMSE of the posterior-predictive mean (on the data's scale; standardised
  targets give the papers' numbers), central-interval coverage at each level from the
  probability integral transform u_i = mean_{k,s} F(y_i | theta_{k,s}) (exact for the mixture,
  no predictive sampling), and the calibration error sqrt(mean_levels (coverage - level)^2).
* **classification**: accuracy of the argmax of the mean predicted probabilities, and the
  expected calibration error (textbook: confidence of the predicted class, ``num_bins`` equal
  bins; the SMILE code bins the true class's probability instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

from numpyro_smile import inference_data, minibatch

__all__ = ["evaluate", "expected_calibration_error", "lppd"]


def lppd(log_likelihood: np.ndarray) -> float:
    """Mean log pointwise predictive density from ``(K, S, n)`` pointwise log-likelihoods."""
    log_likelihood = np.asarray(log_likelihood)
    pooled = log_likelihood.reshape(-1, log_likelihood.shape[-1])
    return float(np.mean(logsumexp(pooled, axis=0) - np.log(pooled.shape[0])))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> float:
    """ECE of ``(n, C)`` predicted probabilities: sum over equal-width confidence bins of
    (bin share) x |accuracy - mean confidence|."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    error = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def evaluate(
    model: Callable,
    idata: az.InferenceData,
    *model_args: Any,
    group: str = "posterior",
    site: str | None = None,
    coverage_levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    num_bins: int = 10,
    **model_kwargs: Any,
) -> dict[str, float]:
    """Test metrics of the draws in ``idata[group]`` on held-out data.

    Args:
        model: the model the draws belong to; it is replayed on ``model_args``/``model_kwargs``
            (the held-out data, observed values included) with every subsample plate seeing
            all held-out points.
        idata: from :meth:`SMILEEnsemble.run` (or ``az.from_numpyro``).
        group: ``"posterior"``, or ``"pretrained"`` for the deep ensemble of pretrained points.
        site: the observed site to score (default: the model's only observed site).
        coverage_levels: central predictive-interval levels for regression coverage.

    Returns:
        ``{"lppd", "num_draws"}`` plus, for a continuous likelihood, ``"rmse"``,
        ``"coverage_<level%>"`` and ``"calibration_error"``; for a likelihood with class
        probabilities (categorical, Bernoulli), ``"accuracy"`` and ``"ece"``.
    """
    if group not in idata.groups():
        raise ValueError(f"idata has no {group!r} group; it has {idata.groups()}.")
    minibatch.check_finite_data(model_args, model_kwargs)
    plates = minibatch.inspect_model(model, model_args, model_kwargs, check=False)
    view = minibatch.full_data_model(model, plates)
    dataset = idata[group]
    prior_trace = inference_data.trace_model(view, {}, model_args, model_kwargs)
    latent = [
        name for name, s in prior_trace.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    missing = [name for name in latent if name not in dataset]
    if missing:
        raise ValueError(f"idata[{group!r}] lacks the model's latent sites {missing}.")
    observed = [n for n, s in prior_trace.items() if s["type"] == "sample" and s["is_observed"]]
    if site is None:
        if len(observed) != 1:
            raise ValueError(
                f"The model has observed sites {observed}; choose one with site=... (it needs "
                "exactly one, with the held-out observations passed in)."
            )
        site = observed[0]
    elif site not in observed:
        raise ValueError(f"{site!r} is not an observed site of the model ({observed}).")
    draws = {name: dataset[name].values for name in latent}
    labels = np.asarray(prior_trace[site]["value"])
    fn = _elementwise(prior_trace[site]["fn"])
    classification = fn.support.is_discrete and hasattr(fn, "probs")
    has_cdf = not fn.support.is_discrete and _has_cdf(fn, prior_trace[site]["value"])
    arrays, bind = minibatch.split_model_args(model_args, model_kwargs)

    def per_draw(params, key, *arrays):
        args, kwargs = bind(arrays)
        model_site = inference_data.trace_model(view, params, args, kwargs, key)[site]
        site_fn, value = _elementwise(model_site["fn"]), model_site["value"]
        out = {"log_likelihood": model_site["fn"].log_prob(value)}
        if classification:
            probs = site_fn.probs
            if jnp.ndim(probs) == jnp.ndim(value):  # Bernoulli: P(y = 1) per point
                probs = jnp.stack([1 - probs, probs], -1)
            out["probs"] = jnp.broadcast_to(probs, (*jnp.shape(value), probs.shape[-1]))
        else:
            out["mean"] = jnp.broadcast_to(site_fn.mean, jnp.shape(value))
            if has_cdf:
                out["cdf"] = jnp.broadcast_to(site_fn.cdf(value), jnp.shape(value))
        return out

    result = inference_data.map_draws(per_draw, draws, jax.random.key(0), *arrays)
    num_draws = int(np.prod(result["log_likelihood"].shape[:2]))
    metrics = {"lppd": lppd(result["log_likelihood"]), "num_draws": num_draws}
    if classification:
        probs = result["probs"].reshape(num_draws, *result["probs"].shape[2:]).mean(axis=0)
        metrics["accuracy"] = float(np.mean(probs.argmax(-1) == labels))
        metrics["ece"] = expected_calibration_error(probs, labels, num_bins)
        return metrics
    mean = result["mean"].reshape(num_draws, *labels.shape).mean(axis=0)
    metrics["rmse"] = float(np.sqrt(np.mean((labels - mean) ** 2)))
    if has_cdf:
        pit = result["cdf"].reshape(num_draws, *labels.shape).mean(axis=0)
        squared = []
        for level in coverage_levels:
            coverage = float(np.mean(np.abs(pit - 0.5) <= level / 2))
            metrics[f"coverage_{round(100 * level)}"] = coverage
            squared.append((coverage - level) ** 2)
        metrics["calibration_error"] = float(np.sqrt(np.mean(squared)))
    return metrics


def _elementwise(fn):
    """The distribution under plate broadcasting and masking (parameters broadcast)."""
    while isinstance(fn, (dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _has_cdf(fn, value) -> bool:
    try:
        fn.cdf(value)
    except NotImplementedError:
        return False
    return True
