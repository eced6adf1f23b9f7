"""ArviZ ``InferenceData`` from ensemble draws, with per-datum quantities over the FULL data.

Draws come from mini-batch chains, but LOO, WAIC and predictive checks need every data point:
the log-likelihood and posterior-predictive groups are computed here by replaying the model's
full-data view (every subsample plate sees all N points) at each draw. That is K x S x N
numbers, and each of them needs the network's activations on its data point, so it runs in
chunks of draws whose peak memory, activations included, fits a budget (``memory_budget``,
:mod:`numpyro_smile.memory`), each chunk one call of a function compiled once, copied to host
memory before the next: the device never holds a members x draws x N array. For very large
N, ``log_likelihood=m`` uses a fixed random subset of m points instead (recorded as the
coordinate values), and ``log_likelihood=False`` skips it.

The replays themselves (tracing the model at a draw, the chunked map within a memory budget,
the per-draw log-likelihoods, replicates and constrained values) live in
:mod:`numpyro_smile.replay`, shared with the evaluation and the ensemble; this module only
assembles their host arrays into groups. All of ArviZ lives in this module (ArviZ 1.x replaces
``InferenceData`` with xarray's ``DataTree``; a DataTree path would be added here).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import arviz as az
import jax
import numpy as np
import xarray as xr

from numpyro_smile import model_views
from numpyro_smile._version import __version__
from numpyro_smile.replay import (
    constrain_draws,
    identity_sites,
    likelihood_view,
    map_draws,
    observations_fn,
    observed_sites,
    posterior_site_names,
    site_dims,
    trace_model,
)

__all__ = ["to_inference_data"]


def _dataset(values: dict, dims: dict, coords: dict, leading: tuple[str, ...]) -> xr.Dataset:
    """A Dataset of ``{name: array}`` whose arrays lead with the ``leading`` dims."""
    data_vars = {}
    for name, value in values.items():
        value = np.asarray(value)
        inner = dims.get(name, [f"{name}_dim_{i}" for i in range(value.ndim - len(leading))])
        data_vars[name] = (leading + tuple(inner), value)
    dataset = xr.Dataset(data_vars)
    used = {d for var in dataset.data_vars.values() for d in var.dims}
    return dataset.assign_coords(
        {name: value for name, value in coords.items() if name in used}
        | {dim: np.arange(dataset.sizes[dim]) for dim in leading}
    )


def to_inference_data(
    model: Callable,
    model_args: tuple,
    model_kwargs: dict,
    *,
    subsample_plates: dict,
    draws: dict,
    sample_stats: dict | None,
    pretrained: dict | None,
    pretraining: dict,
    rng_key: jax.Array,
    log_likelihood: bool | int = True,
    posterior_predictive: bool = False,
    attrs: dict | None = None,
    memory_budget: int | None = None,
    memory_stats: dict | None = None,
) -> az.InferenceData:
    """Assemble the ensemble's ``InferenceData``.

    Args:
        model: the user's model (with its subsample plates).
        subsample_plates: ``{name: PlateInfo}`` of the training data.
        draws: unconstrained latent draws, leaves ``(K, S, ...)``.
        sample_stats: ``{name: (K, S)}`` (empty or ``None``: no ``sample_stats`` group).
        pretrained: unconstrained pretrained points, leaves ``(K, ...)`` (``None``: no
            ``pretrained`` group).
        pretraining: ``{name: (K, E)}`` per-epoch curves and ``{name: (K,)}`` summaries.
        log_likelihood: True (all N points), an int m (a fixed random subset of m points per
            subsample plate), or False (skip).
        posterior_predictive: also draw one replicate of the observed sites per draw.
        memory_budget: bytes one chunk of a replay may hold at its peak (see
            :func:`numpyro_smile.replay.map_draws`).
        memory_stats: a dict to receive the replays' chunking: ``{"constrain": {...},
            "observations": {...}}``, each as :func:`numpyro_smile.replay.map_draws`'s ``stats``.

    Groups: ``posterior`` (chain = member), ``sample_stats``, ``log_likelihood``,
    ``posterior_predictive``, ``observed_data``, ``pretrained`` (the pretrained points as one
    draw per member, constrained) and ``pretraining`` (loss curves over ``epoch``).
    """
    key_ll, key_subset = jax.random.split(rng_key)
    arrays, bind = model_views.split_model_args(model_args, model_kwargs)
    names = posterior_site_names(model, model_args, model_kwargs, subsample_plates)

    # Sites on the real line are their own unconstrained values: reuse those host arrays
    # (no second K x S x d copy in host memory), constrain and replay only the others.
    unchanged = identity_sites(model, model_args, model_kwargs, subsample_plates, names)
    constrained_names = [name for name in names if name not in unchanged]

    def constrain(z, key, *arrays):
        args, kwargs = bind(arrays)
        return constrain_draws(model, args, kwargs, subsample_plates, constrained_names)(z, key)

    def constrain_all(draws):
        values = {}
        if constrained_names:
            stats = None if memory_stats is None else memory_stats.setdefault("constrain", {})
            values = map_draws(
                constrain, draws, rng_key, *arrays, memory_budget=memory_budget, stats=stats
            )
        return {
            name: np.asarray(draws[name]) if name in unchanged else values[name]
            for name in sorted(names)
        }

    posterior = constrain_all(draws)
    pretrained_values = None
    if pretrained is not None:
        pretrained_values = constrain_all(
            jax.tree.map(lambda a: np.asarray(a)[:, None], pretrained)
        )

    # Observed sites and dims from one full-data trace.
    full_view = model_views.full_data_model(model, subsample_plates)
    first = jax.tree.map(lambda a: np.asarray(a)[0, 0], posterior)
    full_trace = trace_model(full_view, first, model_args, model_kwargs)
    observed = observed_sites(full_trace)
    dims = site_dims(full_trace, list(observed) + list(posterior))
    observed_data = {name: np.asarray(site["value"]) for name, site in observed.items()}
    coords: dict[str, np.ndarray] = {}

    groups: dict[str, dict] = {}
    if log_likelihood is not False or posterior_predictive:
        view, coords = likelihood_view(model, subsample_plates, log_likelihood, key_subset)

        def observations(params, key, *arrays):
            args, kwargs = bind(arrays)
            return observations_fn(view, args, kwargs, posterior_predictive)(params, key)

        stats = None if memory_stats is None else memory_stats.setdefault("observations", {})
        replayed = map_draws(
            observations, posterior, key_ll, *arrays, memory_budget=memory_budget, stats=stats
        )
        if log_likelihood is not False:
            groups["log_likelihood"] = replayed["log_likelihood"]
        if posterior_predictive:
            groups["posterior_predictive"] = replayed["posterior_predictive"]

    with warnings.catch_warnings():
        # K members with few draws (the pretrained group has one) is the normal regime here.
        warnings.filterwarnings("ignore", message="More chains")
        stats_group = {}
        if sample_stats:
            stats_group["sample_stats"] = _dataset(sample_stats, {}, {}, ("chain", "draw"))
        idata = az.InferenceData(
            posterior=_dataset(posterior, dims, {}, ("chain", "draw")),
            **stats_group,
            observed_data=_dataset(observed_data, dims, {}, ()),
            # both replayed groups share the view, hence its coordinates (a data subset)
            **{
                name: _dataset(values, dims, coords, ("chain", "draw"))
                for name, values in groups.items()
            },
        )
        extra = {}
        if pretrained_values is not None:
            extra["pretrained"] = _dataset(pretrained_values, dims, {}, ("chain", "draw"))
        if pretraining:
            extra["pretraining"] = _pretraining_dataset(pretraining)
        if extra:
            idata.add_groups(extra, warn_on_custom_groups=False)
    for group in idata.groups():
        idata[group].attrs.update(_attrs(attrs))
    return idata


def _pretraining_dataset(pretraining: dict) -> xr.Dataset:
    data_vars = {}
    for name, value in pretraining.items():
        value = np.asarray(value)
        data_vars[name] = (("chain", "epoch")[: value.ndim], value)
    dataset = xr.Dataset(data_vars)
    return dataset.assign_coords({dim: np.arange(n) for dim, n in dataset.sizes.items()})


def _attrs(attrs: dict | None) -> dict:
    base = {
        "inference_library": "numpyro_smile",
        "inference_library_version": __version__,
        "created_at": str(np.datetime_as_string(np.datetime64("now"), unit="s")),
    }
    # netCDF attributes must be strings or numbers.
    return base | {
        k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in (attrs or {}).items()
    }
