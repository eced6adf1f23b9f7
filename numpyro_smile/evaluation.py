"""Predictive metrics of posterior draws (or a deep ensemble) on held-out data.

The metrics the MILE and SMILE papers report, computed from an ``InferenceData`` group and a
model replayed on held-out data, with every draw of every member pooled:

* **LPPD**: mean over test points of log((1 / (K S)) sum_{k,s} p(y_i | theta_{k,s})); higher is
  better. For a deep ensemble (``group="pretrained"``) the K members are the draws. A site in
  several plates (a language model's sequences x tokens) has one point per element: the
  LPPD is then per token.
* **regression**: RMSE of the posterior-predictive mean (on the data's scale; standardised
  targets give the papers' numbers), central-interval coverage at each level from the
  probability integral transform u_i = mean_{k,s} F(y_i | theta_{k,s}) (exact for the mixture,
  no predictive sampling), and the calibration error sqrt(mean_levels (coverage - level)^2).
* **classification**: accuracy of the argmax of the mean predicted probabilities, the
  expected calibration error (textbook: confidence of the predicted class, ``num_bins`` equal
  bins; the SMILE code bins the true class's probability instead), the multi-class Brier score
  and, on request, the reliability curve behind the ECE (:func:`reliability_curve`).

Memory: the draws are never collected. Each chunk of draws is reduced inside the compiled
replay and added to running float64 summaries on the host (:mod:`numpyro_smile.reductions`:
sums of probabilities, means, variances and CDF values over all draws, a log-sum-exp of the
pointwise likelihood per member), so a call holds one chunk's replay plus n x C + K x n
numbers for n test points and C classes, not the K x S x n x C of every draw (20 GB for a char
transformer on 10^5 test tokens, 65 classes and 800 draws). Where one draw on all n test
points would exceed ``memory_budget`` (a network's activations: attention maps), the points
of the scored site's subsample plate are replayed in chunks too; the model must then take its
data through ``numpyro.subsample`` in that plate, as mini-batching requires anyway. Only
:func:`predict`'s ``quantiles`` keep one replicate per draw and point.

With several processes (JAX's distributed runtime) each process replays its own block of the
members and every process gets every metric (:func:`numpyro_smile.replay.map_draws`): call
:func:`evaluate` and :func:`predict` on every process, with the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

from numpyro_smile import model_views, replay

if TYPE_CHECKING:  # ArviZ takes seconds to import; only its type is needed here
    import arviz as az

__all__ = [
    "ReliabilityCurve",
    "brier_score",
    "evaluate",
    "expected_calibration_error",
    "lppd",
    "predict",
    "reliability_curve",
]


def lppd(log_likelihood: np.ndarray) -> float:
    """Mean log pointwise predictive density from ``(K, S, n)`` pointwise log-likelihoods."""
    log_likelihood = np.asarray(log_likelihood)
    pooled = log_likelihood.reshape(-1, log_likelihood.shape[-1])
    return float(np.mean(logsumexp(pooled, axis=0) - np.log(pooled.shape[0])))


class ReliabilityCurve(NamedTuple):
    """A reliability diagram's data: per equal-width bin of the predicted class's confidence,
    the mean confidence against the accuracy (a calibrated classifier has them equal).

    Attributes:
        bin_edges: ``(num_bins + 1,)`` bin edges, 0 to 1.
        confidence: ``(num_bins,)`` mean confidence (the predicted class's probability) of the
            points in each bin; NaN for an empty bin.
        accuracy: ``(num_bins,)`` share of the points in each bin whose predicted class is the
            label; NaN for an empty bin.
        count: ``(num_bins,)`` number of points in each bin (integers).
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = 10
) -> ReliabilityCurve:
    """Reliability diagram of predicted class probabilities: accuracy against confidence.

    Points are binned by the confidence of their predicted class (the argmax), in ``num_bins``
    equal-width bins of [0, 1] (a confidence of exactly 1 falls in the last bin), the binning of
    :func:`expected_calibration_error`: ``ECE = sum_b count_b / n |accuracy_b - confidence_b|``
    over the non-empty bins.

    Args:
        probs: ``(..., C)`` predicted probabilities of C classes (for a Bernoulli site,
            ``(P(y = 0), P(y = 1))``); all leading axes are points.
        labels: ``(...)`` integer labels in ``[0, C)``, the shape of ``probs`` without its last
            axis.
        num_bins: number of equal-width confidence bins (at least 1).

    Returns:
        A :class:`ReliabilityCurve`; ``curve._asdict()`` gives its fields by name.
    """
    probs, labels = _check_classification(probs, labels)
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
    num_bins = int(num_bins)
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    # binned in the probabilities' own precision, so a bin edge falls where it always has
    bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    confidence = confidence.astype(np.float64)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 = NaN
        mean_confidence = np.bincount(bins, confidence, num_bins) / count
        accuracy = np.bincount(bins, correct.astype(np.float64), num_bins) / count
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return ReliabilityCurve(edges, mean_confidence, accuracy, count)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> float:
    """Expected calibration error of predicted class probabilities.

    The textbook ECE: sum over ``num_bins`` equal-width bins of the predicted class's
    confidence of (share of points in the bin) x |accuracy - mean confidence|, from
    :func:`reliability_curve`. 0 for a calibrated classifier; at most 1.

    Args:
        probs: ``(..., C)`` predicted probabilities; all leading axes are points.
        labels: ``(...)`` integer labels in ``[0, C)``.
        num_bins: number of equal-width confidence bins.

    Returns:
        The ECE, a float in [0, 1].
    """
    curve = reliability_curve(probs, labels, num_bins)
    share = curve.count / curve.count.sum()
    gap = np.abs(curve.accuracy - curve.confidence)
    return float(np.sum(share[curve.count > 0] * gap[curve.count > 0]))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score of predicted class probabilities; lower is better.

    Mean over points of ``sum_c (p_c - 1[y = c])^2``: the squared error of the probability
    vector against the one-hot label, summed over all C classes (Brier's original definition),
    so it lies in [0, 2]. A Bernoulli site's probabilities are stacked to two classes
    ``(1 - p, p)``, which gives twice the binary convention ``mean (p - y)^2``.

    Args:
        probs: ``(..., C)`` predicted probabilities; all leading axes are points.
        labels: ``(...)`` integer labels in ``[0, C)``.

    Returns:
        The Brier score, a float in [0, 2].
    """
    probs, labels = _check_classification(probs, labels)
    true_prob = np.take_along_axis(probs, labels[:, None], axis=-1)[:, 0].astype(np.float64)
    # sum_c (p_c - 1[y = c])^2 = sum_c p_c^2 - 2 p_y + 1, with no (n, C) temporary
    squares = np.einsum("nc,nc->n", probs, probs).astype(np.float64)
    return float(np.mean(squares - 2.0 * true_prob + 1.0))


def _check_classification(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(..., C)`` probabilities and ``(...)`` labels as ``(n, C)`` and ``(n,)`` arrays."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim < 1 or probs.shape[:-1] != labels.shape:
        raise ValueError(
            f"probs must have the labels' shape plus a class axis: got probs {probs.shape} "
            f"and labels {labels.shape}; pass probs (..., C) with labels (...)."
        )
    num_classes = probs.shape[-1]
    labels = labels.reshape(-1).astype(np.int64) if labels.dtype == bool else labels.reshape(-1)
    # integer-valued floats are labels too (a Bernoulli site observes 0.0 and 1.0)
    if labels.size and (
        not np.all(np.isfinite(labels))
        or np.any(labels != np.round(labels))
        or labels.min() < 0
        or labels.max() >= num_classes
    ):
        raise ValueError(
            f"labels must be integers in [0, {num_classes}) for {num_classes} classes; got "
            f"values in [{labels.min()}, {labels.max()}] of dtype {labels.dtype}."
        )
    labels = labels.astype(np.int64)
    return probs.reshape(-1, num_classes), labels


def evaluate(
    model: Callable,
    idata: az.InferenceData,
    *model_args: Any,
    group: str = "posterior",
    site: str | None = None,
    coverage_levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    num_bins: int = 10,
    memory_budget: int | None = None,
    by_member: bool = False,
    reliability: bool = False,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Test metrics of the draws in ``idata[group]`` on held-out data.

    Args:
        model: the model the draws belong to; it is replayed on ``model_args``/``model_kwargs``
            (the held-out data, observed values included) with every subsample plate seeing
            all held-out points.
        idata: from :meth:`SMILEEnsemble.run` (or ``az.from_numpyro``).
        group: ``"posterior"``, or ``"pretrained"`` for the deep ensemble of pretrained points.
        site: the observed site to score (default: the model's only observed site).
        coverage_levels: central predictive-interval levels for regression coverage.
        num_bins: confidence bins of the expected calibration error (classification).
        memory_budget: bytes one chunk of the replay may hold at its peak, the network's
            activations included (default 256 MiB; see :func:`numpyro_smile.replay.map_draws`).
            Chunks hold several draws; where one draw on all held-out points does not fit,
            chunks of the points of the site's subsample plate. Beyond the chunk, the call
            holds running summaries of n x C numbers (see the module docstring).
        by_member: also return ``"member_lppd"``, each member's (chain's) own LPPD over its
            draws, a list of K floats: the pooled LPPD hides a member that left the data (its
            density vanishes from the mixture at a cost of at most log K).
        reliability: also return ``"reliability"`` (classification): the
            :func:`reliability_curve` of the pooled probabilities over ``num_bins`` bins, as a
            dict of lists (``"bin_edges"``, ``"confidence"``, ``"accuracy"``, ``"count"``;
            NaN for an empty bin), ready for ``json.dumps`` and for drawing the diagram.

    Returns:
        ``{"lppd", "num_draws"}`` plus, for a continuous likelihood, ``"rmse"``,
        ``"coverage_<level%>"`` and ``"calibration_error"``; for a likelihood with class
        probabilities (categorical, Bernoulli), ``"accuracy"``, ``"ece"`` and ``"brier"``
        (:func:`brier_score`, summed over classes).
    """
    replay_ = _prepare(model, idata, model_args, model_kwargs, group, site)
    if reliability and not replay_.classification:
        raise ValueError(
            f"reliability=True needs class probabilities, but {replay_.site!r} is a continuous "
            "likelihood; its calibration is in the coverage metrics (drop reliability=True)."
        )
    if not replay_.has_observations:
        raise ValueError(
            f"evaluate scores observations, but the model's site {replay_.site!r} has none: "
            "pass the held-out observations (e.g. evaluate(model, idata, X_test, y_test))."
        )
    outputs = {"log_likelihood": "member_logmeanexp"}
    if replay_.classification:
        outputs["probs"] = "mean"
    else:
        outputs["mean"] = "mean"
        if replay_.has_cdf:
            outputs["cdf"] = "mean"
    result = _replay(replay_, outputs, jax.random.key(0), memory_budget)
    labels = replay_.labels
    # (K, n) per member log predictive densities; a site over several plates (e.g.
    # sequences x tokens) has one value per element, all of them points
    member_log_density = result["log_likelihood"].reshape(replay_.num_members, -1)
    metrics: dict[str, Any] = {
        "lppd": float(np.mean(_pool_members(member_log_density))),
        "num_draws": replay_.num_members * replay_.num_draws,
    }
    if by_member:
        metrics["member_lppd"] = [float(np.mean(member)) for member in member_log_density]
    if replay_.classification:
        probs = result["probs"]
        metrics["accuracy"] = float(np.mean(probs.argmax(-1) == labels))
        metrics["ece"] = expected_calibration_error(probs, labels, num_bins)
        metrics["brier"] = brier_score(probs, labels)
        if reliability:
            curve = reliability_curve(probs, labels, num_bins)
            metrics["reliability"] = {
                name: np.asarray(v).tolist() for name, v in curve._asdict().items()
            }
        return metrics
    mean = result["mean"]
    metrics["rmse"] = float(np.sqrt(np.mean((labels - mean) ** 2)))
    if "cdf" in result:
        pit = result["cdf"]
        squared = []
        for level in coverage_levels:
            coverage = float(np.mean(np.abs(pit - 0.5) <= level / 2))
            metrics[f"coverage_{round(100 * level)}"] = coverage
            squared.append((coverage - level) ** 2)
        metrics["calibration_error"] = float(np.sqrt(np.mean(squared)))
    return metrics


def predict(
    model: Callable,
    idata: az.InferenceData,
    *model_args: Any,
    group: str = "posterior",
    site: str | None = None,
    quantiles: Sequence[float] = (),
    rng_key: jax.Array | None = None,
    memory_budget: int | None = None,
    **model_kwargs: Any,
) -> dict[str, np.ndarray]:
    """Pointwise posterior-predictive summaries of ``idata[group]`` on new inputs.

    The predictive distribution of each point is the mixture over all draws of all members
    (for ``group="pretrained"``: the deep ensemble). Observed values may be ``None``.

    Args:
        model: the model the draws belong to, as in :func:`evaluate`.
        idata: the draws, as in :func:`evaluate`.
        *model_args: the new inputs (observed values may be ``None``).
        group: ``"posterior"``, or ``"pretrained"`` for the deep ensemble.
        site: the observed site to summarise, as in :func:`evaluate`.
        quantiles: levels in (0, 1) of the predictive quantiles to return (continuous
            likelihoods), estimated from one replicate of ``site`` per draw, e.g.
            ``(0.05, 0.5, 0.95)`` for a 90 percent band and the median. The replicates are
            kept until the end: K x S x n numbers (the other summaries are reduced as the
            draws come).
        rng_key: key of the replicates (default ``jax.random.key(0)``). Replicates do not
            depend on the chunks of draws; where the points are chunked (see
            ``memory_budget``) each chunk of points folds in its number.
        memory_budget: bytes one chunk of the replay may hold at its peak, as in
            :func:`evaluate` (chunks of draws, and of points where one draw does not fit).

    Returns:
        For a likelihood with class probabilities: ``"probs"``, ``(n, C)`` mean predicted
        probabilities. Otherwise ``"mean"`` and ``"sd"`` (``(n,)``: the mixture's mean and
        standard deviation, from each draw's mean and variance) and, when asked,
        ``"quantiles"`` ``(len(quantiles), n)``. With observed values given, also
        ``"log_density"`` ``(n,)``: log of the mixture density of each observation.
    """
    if any(not 0.0 < q < 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in (0, 1), got {tuple(quantiles)}.")
    replay_ = _prepare(model, idata, model_args, model_kwargs, group, site)
    outputs = {}
    if replay_.has_observations:
        outputs["log_likelihood"] = "member_logmeanexp"
    if replay_.classification:
        outputs["probs"] = "mean"
    else:
        outputs["mean"] = "mean_variance"
        outputs["variance"] = "mean"
        if quantiles:
            outputs["replicate"] = "draws"
    key = jax.random.key(0) if rng_key is None else rng_key
    result = _replay(replay_, outputs, key, memory_budget)
    out = {}
    if replay_.has_observations:
        out["log_density"] = _pool_members(result["log_likelihood"])
    if replay_.classification:
        out["probs"] = result["probs"]
        return out
    mean, variance_of_means = result["mean"]
    out["mean"] = mean
    out["sd"] = np.sqrt(result["variance"] + variance_of_means)
    if quantiles:
        replicates = result["replicate"]
        pooled = replicates.reshape(-1, *replicates.shape[2:])
        out["quantiles"] = np.quantile(pooled, np.asarray(quantiles), axis=0)
    return out


class _Replay(NamedTuple):
    """What the metrics replay: the model's view, the draws and the scored site."""

    view: Callable  # the model on all held-out points of every subsample plate
    draws: dict  # latent values, leading (K, S)
    arrays: list  # the array arguments of the model (the held-out data)
    bind: Callable  # arrays -> (model_args, model_kwargs)
    site: str  # the scored site
    labels: np.ndarray | None  # its observed values (None when not given)
    classification: bool  # a likelihood with class probabilities
    has_observations: bool
    has_cdf: bool  # a continuous likelihood with a CDF (regression coverage)
    points: replay.PointAxis | None  # the site's points along a subsample plate, if any
    chunk_view: Callable | None  # (indices) -> the model on those points of that plate

    @property
    def num_members(self) -> int:
        return int(jax.tree.leaves(self.draws)[0].shape[0])

    @property
    def num_draws(self) -> int:
        return int(jax.tree.leaves(self.draws)[0].shape[1])


def _prepare(model, idata, model_args, model_kwargs, group, site) -> _Replay:
    """Check the draws and the held-out data, and find the scored site and its points."""
    if group not in idata.groups():
        raise ValueError(f"idata has no {group!r} group; it has {idata.groups()}.")
    model_views.check_finite_data(model_args, model_kwargs)
    plates = model_views.inspect_model(model, model_args, model_kwargs, check=False)
    view = model_views.full_data_model(model, plates)
    dataset = idata[group]
    prior_trace = replay.trace_model(view, {}, model_args, model_kwargs, prior_draws=False)
    latent = [
        name for name, s in prior_trace.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    observed = [n for n, s in prior_trace.items() if s["type"] == "sample" and s["is_observed"]]
    if site is None:
        # Sites the draws do not hold are the model's outputs (observed, or observations=None).
        outputs = observed or [name for name in latent if name not in dataset]
        if len(outputs) != 1:
            raise ValueError(
                f"The model has observed sites {outputs}; choose one with site=... (it needs "
                "exactly one, with the held-out observations passed in)."
            )
        site = outputs[0]
    elif site not in prior_trace or prior_trace[site]["type"] != "sample":
        raise ValueError(f"{site!r} is not a sample site of the model.")
    has_observations = bool(prior_trace[site]["is_observed"])
    latent = [name for name in latent if name != site]
    missing = [name for name in latent if name not in dataset]
    if missing:
        raise ValueError(f"idata[{group!r}] lacks the model's latent sites {missing}.")
    draws = {name: dataset[name].values for name in latent}
    labels = np.asarray(prior_trace[site]["value"]) if has_observations else None
    fn = _elementwise(prior_trace[site]["fn"])
    classification = fn.support.is_discrete and hasattr(fn, "probs")
    has_cdf = (
        has_observations and not fn.support.is_discrete and _has_cdf(fn, prior_trace[site]["value"])
    )
    arrays, bind = model_views.split_model_args(model_args, model_kwargs)
    points, chunk_view = _site_points(model, plates, prior_trace[site])
    return _Replay(
        view, draws, arrays, bind, site, labels, classification, has_observations, has_cdf,
        points, chunk_view,
    )  # fmt: skip


def _site_points(model, plates, model_site):
    """The scored site's points along its (largest) subsample plate, and the model view on
    given indices of that plate (all points of the others): the replay may then split the
    held-out points into chunks. ``(None, None)`` for a site in no subsample plate."""
    batch_ndim = len(model_site["fn"].batch_shape)
    frames = [
        frame
        for frame in model_site.get("cond_indep_stack", ())
        if frame.name in plates and 0 <= batch_ndim + frame.dim
    ]
    if not frames:
        return None, None
    frame = max(frames, key=lambda f: f.size)
    others = {name: plate for name, plate in plates.items() if name != frame.name}
    rest = model_views.full_data_model(model, others)

    def chunk_view(indices):
        return model_views.fixed_indices_model(rest, {frame.name: indices})

    return replay.PointAxis(int(frame.size), batch_ndim + frame.dim), chunk_view


def _replay(replay_: _Replay, outputs: dict[str, str], key, memory_budget) -> dict:
    """Replay every draw on the held-out data and reduce ``outputs`` (``{name: kind}``, see
    :func:`numpyro_smile.replay.map_draws`) over the draws as they come."""
    site, classification, has_observations = (
        replay_.site, replay_.classification, replay_.has_observations
    )  # fmt: skip

    def per_draw(params, key, indices, *arrays):
        args, kwargs = replay_.bind(arrays)
        view = replay_.view if indices is None else replay_.chunk_view(indices)
        model_site = replay.trace_model(view, params, args, kwargs, key)[site]
        site_fn, value = _elementwise(model_site["fn"]), model_site["value"]
        shape = jnp.shape(value)
        out = {}
        if has_observations and "log_likelihood" in outputs:
            out["log_likelihood"] = model_site["fn"].log_prob(value)
        if classification:
            probs = site_fn.probs
            if jnp.ndim(probs) == jnp.ndim(value):  # Bernoulli: P(y = 1) per point
                probs = jnp.stack([1 - probs, probs], -1)
            out["probs"] = jnp.broadcast_to(probs, (*shape, probs.shape[-1]))
            return out
        if "mean" in outputs:
            out["mean"] = jnp.broadcast_to(site_fn.mean, shape)
        if "variance" in outputs:
            out["variance"] = jnp.broadcast_to(site_fn.variance, shape)
        if "cdf" in outputs:
            out["cdf"] = jnp.broadcast_to(site_fn.cdf(value), shape)
        if "replicate" in outputs:
            out["replicate"] = model_site["fn"].sample(jax.random.fold_in(key, 1))
        return out

    points = replay_.points
    if points is None:

        def per_draw_all(params, key, *arrays):
            return per_draw(params, key, None, *arrays)

        return replay.map_draws(
            per_draw_all, replay_.draws, key, *replay_.arrays,
            memory_budget=memory_budget, reduce=outputs,
        )  # fmt: skip
    return replay.map_draws(
        per_draw, replay_.draws, key, *replay_.arrays,
        memory_budget=memory_budget, reduce=outputs, points=points,
    )  # fmt: skip


def _pool_members(member_log_density: np.ndarray) -> np.ndarray:
    """``(K, ...)`` members' log predictive densities (each over its own S draws, equally
    many) -> the log density of their equal-weight mixture, ``(...)``: all draws pooled."""
    pooled = logsumexp(member_log_density, axis=0) - np.log(member_log_density.shape[0])
    return np.asarray(pooled)


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
