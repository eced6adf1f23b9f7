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
:mod:`numpyro_smile.replay`, shared with the evaluation and the ensemble, and the ensemble
runs them on each chunk of draws as it is sampled (:mod:`numpyro_smile.draw_groups`), into
host memory or a netCDF file (:mod:`numpyro_smile.draws_file`); this module only assembles
their host arrays, or that file, into groups. All of ArviZ lives in this module (ArviZ 1.x
replaces ``InferenceData`` with xarray's ``DataTree``; a DataTree path would be added here).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import arviz as az
import h5netcdf
import jax
import numpy as np
import xarray as xr

from numpyro_smile._version import __version__
from numpyro_smile.draw_groups import DrawGroups
from numpyro_smile.draws_file import DrawsFile

__all__ = ["from_groups", "to_inference_data"]


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
    keep_sites: Sequence[str] | None = None,
) -> az.InferenceData:
    """Assemble the ensemble's ``InferenceData`` from all its draws at once.

    Args:
        model: the user's model (with its subsample plates).
        model_args: its positional arguments (the training data).
        model_kwargs: its keyword arguments.
        subsample_plates: ``{name: PlateInfo}`` of the training data.
        draws: unconstrained latent draws, leaves ``(K, S, ...)``.
        sample_stats: ``{name: (K, S)}`` (empty or ``None``: no ``sample_stats`` group).
        pretrained: unconstrained pretrained points, leaves ``(K, ...)`` (``None``: no
            ``pretrained`` group).
        pretraining: ``{name: (K, E)}`` per-epoch curves and ``{name: (K,)}`` summaries.
        rng_key: the post-processing key (log-likelihood subset, predictive replicates).
        log_likelihood: True (all N points), an int m (a fixed random subset of m points per
            subsample plate), or False (skip).
        posterior_predictive: also draw one replicate of the observed sites per draw.
        attrs: attributes of every group (strings and numbers; others are written as text).
        memory_budget: bytes one chunk of a replay may hold at its peak (see
            :func:`numpyro_smile.replay.map_draws`).
        memory_stats: a dict to receive the replays' chunking: ``{"constrain": {...},
            "observations": {...}}``, each as :func:`numpyro_smile.replay.map_draws`'s ``stats``.
        keep_sites: the sites ``posterior`` keeps (``None``: all).

    Groups: ``posterior`` (chain = member), ``sample_stats``, ``log_likelihood``,
    ``posterior_predictive``, ``observed_data``, ``pretrained`` (the pretrained points as one
    draw per member, constrained) and ``pretraining`` (loss curves over ``epoch``).
    The ensemble itself computes the same groups chunk by chunk while it samples
    (:class:`~numpyro_smile.draw_groups.DrawGroups`, :func:`from_groups`).
    """
    draw_groups = DrawGroups(
        model, model_args, model_kwargs, subsample_plates, rng_key,
        log_likelihood=log_likelihood, posterior_predictive=posterior_predictive,
        keep_sites=keep_sites, memory_budget=memory_budget,
    )  # fmt: skip
    groups = draw_groups.groups(draws)
    if sample_stats:
        groups["sample_stats"] = dict(sample_stats)
    if memory_stats is not None:
        memory_stats.update(draw_groups.stats)
    return from_groups(draw_groups, groups, pretrained, pretraining, attrs)


def from_groups(
    draw_groups: DrawGroups,
    groups: dict[str, dict] | DrawsFile,
    pretrained: dict | None,
    pretraining: dict,
    attrs: dict | None,
) -> az.InferenceData:
    """The ``InferenceData`` of draws post-processed by ``draw_groups``.

    Args:
        draw_groups: what computed the draws' groups (their dims and coordinates, the
            observed data, the pretrained points' constraining).
        groups: ``{group: {name: (K, S, ...)}}`` in host memory, or the closed
            :class:`~numpyro_smile.draws_file.DrawsFile` they were appended to: the small
            groups are then added to the file and the result reads it lazily.
        pretrained: unconstrained pretrained points, leaves ``(K, ...)``, or ``None``.
        pretraining: the pretraining curves (may be empty).
        attrs: attributes of every group.
    """
    dims, observed_data = draw_groups.structure()
    small = {"observed_data": _dataset(observed_data, dims, {}, ())}
    if pretrained is not None:
        values = draw_groups.constrain(
            jax.tree.map(lambda a: np.asarray(a)[:, None], pretrained), record=False
        )
        small["pretrained"] = _dataset(values, dims, {}, ("chain", "draw"))
    if pretraining:
        small["pretraining"] = _pretraining_dataset(pretraining)
    attrs = _attrs(attrs)
    if isinstance(groups, DrawsFile):
        return _open_file(groups, small, attrs)
    with warnings.catch_warnings():
        # K members with few draws (the pretrained group has one) is the normal regime here.
        warnings.filterwarnings("ignore", message="More chains")
        big = {
            # both replayed groups share the view, hence its coordinates (a data subset)
            name: _dataset(values, dims, draw_groups.coords, ("chain", "draw"))
            for name, values in groups.items()
        }
        standard = {name: small.pop(name) for name in ("observed_data",)}
        idata = az.InferenceData(**_in_order(big | standard))
        if small:  # pretrained, pretraining: the ensemble's own groups
            idata.add_groups(small, warn_on_custom_groups=False)
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    return idata


#: The order of the groups (an InferenceData lists them in the order given).
_ORDER = ("posterior", "sample_stats", "observed_data", "log_likelihood", "posterior_predictive")


def _in_order(groups: dict) -> dict:
    return {name: groups[name] for name in _ORDER if name in groups}


def _open_file(draws_file: DrawsFile, small: dict, attrs: dict) -> az.InferenceData:
    """Add the small groups and ``attrs`` to the closed ``draws_file`` and open it lazily."""
    with h5netcdf.File(draws_file.path, "a") as handle:
        for group in handle.groups.values():
            group.attrs.update(attrs)
    for name, dataset in small.items():
        dataset.attrs.update(attrs)
        dataset.to_netcdf(draws_file.path, mode="a", group=name, engine="h5netcdf")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="More chains")
        return az.from_netcdf(draws_file.path)


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
