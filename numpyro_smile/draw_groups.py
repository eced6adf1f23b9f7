"""What each kept draw adds to the InferenceData, computed one chunk of draws at a time.

A draw of the ensemble becomes a row of up to four groups: ``posterior`` (its constrained
values), ``sample_stats`` (the sampler's statistics, passed through), ``log_likelihood`` and
``posterior_predictive`` (the model replayed at the draw on the full data, or on a fixed
subset of m points). :class:`DrawGroups` computes them for a chunk of draws ``(K, c, ...)``
as soon as the sampling loop hands it over, while every latent site of the chunk is still at
hand, so that

* the draws never have to be in host memory all at once (``SMILEEnsemble(draws_to=path)``
  appends each chunk's rows to a netCDF file, :mod:`numpyro_smile.draws_file`), and
* ``posterior`` can keep only some sites (``keep_sites``: skip the weight tensors of a large
  network) while the log-likelihood and predictive groups still see every site.

Each replay is one function compiled once for the run (the chunks have one shape: a short
last chunk is padded with its last draw), and draw (k, s) gets the random key of its place in
the whole run, so the groups do not depend on how the draws were chunked. Nothing here
imports ArviZ or xarray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from numpyro_smile import model_views
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

__all__ = ["DrawGroups", "check_keep_sites"]


def check_keep_sites(
    keep_sites: Sequence[str] | None, names: Sequence[str] | None
) -> list[str] | None:
    """``keep_sites`` validated against the posterior's site ``names`` (``None``: its type
    only), as the sorted names kept (``None``: all).

    Raises:
        TypeError: ``keep_sites`` is a single string or not a sequence of strings.
        ValueError: a name is not a site of the posterior (the message lists those that are).
    """
    if keep_sites is None:
        return None
    if isinstance(keep_sites, str) or not all(isinstance(n, str) for n in keep_sites):
        raise TypeError(
            f"keep_sites must be a list of site names, e.g. ['log_sigma'], got {keep_sites!r}."
        )
    if names is None:
        return sorted(keep_sites)
    unknown = [name for name in keep_sites if name not in names]
    if unknown:
        raise ValueError(
            f"keep_sites names {unknown}, which the posterior does not hold; its sites are "
            f"{sorted(names)}."
        )
    return [name for name in sorted(names) if name in keep_sites]


class DrawGroups:
    """The groups of chunks of an ensemble's draws: ``groups(z, first_draw)``.

    Args:
        model: the user's model (with its subsample plates).
        model_args: its positional arguments (the training data).
        model_kwargs: its keyword arguments.
        subsample_plates: ``{name: PlateInfo}`` of the training data.
        rng_key: the post-processing key (the log-likelihood subset and the predictive
            replicates derive from it).
        log_likelihood: True (all N points), an int m (a fixed random subset of m points per
            subsample plate), or False (no ``log_likelihood`` group).
        posterior_predictive: also draw one replicate of the observed sites per draw.
        keep_sites: the sites ``posterior`` keeps (``None``: all of them); the other groups
            are computed from all sites regardless.
        memory_budget: bytes one chunk of a replay may hold at its peak (see
            :func:`numpyro_smile.replay.map_draws`).

    Attributes:
        names: the posterior's sites (latent, and deterministic outside subsample plates).
        kept: the sites ``posterior`` holds, sorted.
        coords: ``{plate: indices}`` of the log-likelihood subset (empty for all N points).
        stats: per replay (``"constrain"``, ``"observations"``), its chunking as
            :func:`numpyro_smile.replay.map_draws`'s ``stats``, ``num_chunks`` summed over
            the calls.
    """

    def __init__(
        self,
        model: Callable,
        model_args: tuple,
        model_kwargs: dict,
        subsample_plates: dict,
        rng_key: jax.Array,
        *,
        log_likelihood: bool | int = True,
        posterior_predictive: bool = False,
        keep_sites: Sequence[str] | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self._model, self._model_args, self._model_kwargs = model, model_args, model_kwargs
        self._plates, self._rng_key, self._memory_budget = subsample_plates, rng_key, memory_budget
        self._key_ll, key_subset = jax.random.split(rng_key)
        self._arrays, bind = model_views.split_model_args(model_args, model_kwargs)
        self.names = posterior_site_names(model, model_args, model_kwargs, subsample_plates)
        kept = check_keep_sites(keep_sites, self.names)
        self.kept = sorted(self.names) if kept is None else kept
        # Sites on the real line are their own unconstrained values: reuse those host arrays
        # (no second copy in host memory), constrain and replay only the others.
        self._unchanged = identity_sites(
            model, model_args, model_kwargs, subsample_plates, self.names
        )
        constrained = [name for name in self.names if name not in self._unchanged]
        self._constrained_names = constrained

        def constrain(z, key, *arrays):
            args, kwargs = bind(arrays)
            return constrain_draws(model, args, kwargs, subsample_plates, constrained)(z, key)

        self._constrain = constrain
        self.log_likelihood, self.posterior_predictive = log_likelihood, posterior_predictive
        self.coords: dict[str, np.ndarray] = {}
        self._observations: Callable | None = None
        if log_likelihood is not False or posterior_predictive:
            view, self.coords = likelihood_view(model, subsample_plates, log_likelihood, key_subset)

            def observations(params, key, *arrays):
                args, kwargs = bind(arrays)
                return observations_fn(view, args, kwargs, posterior_predictive)(params, key)

            self._observations = observations
        self.stats: dict[str, dict] = {}
        self._draws_per_call: int | None = None
        self._first: dict | None = None  # every site's values at the first draw
        self._structure: tuple | None = None

    def constrain(self, z: dict, first_draw: int = 0, *, record: bool = True) -> dict:
        """Every posterior site's constrained values of unconstrained draws ``z`` (leaves
        ``(K, c, ...)``), sorted by name; ``record``: count the chunks in ``stats``."""
        values = {}
        if self._constrained_names:
            values = self._map("constrain" if record else None, self._constrain, z,
                               self._rng_key, first_draw)  # fmt: skip
        return {
            name: np.asarray(z[name]) if name in self._unchanged else values[name]
            for name in sorted(self.names)
        }

    def groups(self, z: dict, first_draw: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """``{"posterior": kept sites, "log_likelihood": ..., "posterior_predictive": ...}``
        (the last two when asked for) of the unconstrained draws ``z`` (leaves ``(K, c,
        ...)``), the draws ``first_draw, ..., first_draw + c - 1`` of the run.

        Chunks shorter than the first one are padded with their last draw, so that every
        call runs the executables of the first.
        """
        count = jax.tree.leaves(z)[0].shape[1]
        if self._draws_per_call is None:
            self._draws_per_call = count
        if count < self._draws_per_call:
            rows = np.minimum(np.arange(self._draws_per_call), count - 1)
            z = jax.tree.map(lambda a: np.asarray(a)[:, rows], z)
        posterior = self.constrain(z, first_draw)
        if self._first is None:
            self._first = {name: np.asarray(value[0, 0]) for name, value in posterior.items()}
        out = {"posterior": {name: posterior[name] for name in self.kept}}
        if self._observations is not None:
            replayed = self._map("observations", self._observations, posterior, self._key_ll,
                                 first_draw)  # fmt: skip
            if self.log_likelihood is not False:
                out["log_likelihood"] = replayed["log_likelihood"]
            if self.posterior_predictive:
                out["posterior_predictive"] = replayed["posterior_predictive"]
        if count < self._draws_per_call:
            out = jax.tree.map(lambda a: a[:, :count], out)
        return out

    def bytes_per_draw(self, z: dict) -> dict[str, int]:
        """Host bytes one draw of one member adds to each group: ``{"posterior": ...,
        "log_likelihood": ..., "posterior_predictive": ...}`` (the groups asked for), from
        the shapes of one member's unconstrained draw ``z`` (arrays or
        ``jax.ShapeDtypeStruct``, no member axis). Nothing is computed
        (``jax.eval_shape``)."""
        z = {name: jax.ShapeDtypeStruct(np.shape(a), a.dtype) for name, a in z.items()}
        key = jax.random.key(0)
        shapes = dict(z)
        if self._constrained_names:
            shapes |= jax.eval_shape(self._constrain, z, key, *self._arrays)
        sizes = {"posterior": _nbytes({name: shapes[name] for name in self.kept})}
        if self._observations is not None:
            params = {name: shapes[name] for name in self.names}
            replayed = jax.eval_shape(self._observations, params, key, *self._arrays)
            if self.log_likelihood is not False:
                sizes["log_likelihood"] = _nbytes(replayed["log_likelihood"])
            if self.posterior_predictive:
                sizes["posterior_predictive"] = _nbytes(replayed["posterior_predictive"])
        return sizes

    def structure(self) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
        """``(dims, observed_data)``: the ArviZ dims of the observed and posterior sites, and
        the observed values, from one full-data trace at the first draw :meth:`groups` saw."""
        if self._structure is not None:
            return self._structure
        if self._first is None:
            raise RuntimeError("DrawGroups.structure() needs a chunk of draws first: groups().")
        full_view = model_views.full_data_model(self._model, self._plates)
        full_trace = trace_model(full_view, self._first, self._model_args, self._model_kwargs)
        observed = observed_sites(full_trace)
        dims = site_dims(full_trace, list(observed) + sorted(self.names))
        observed_data = {name: np.asarray(site["value"]) for name, site in observed.items()}
        self._structure = dims, observed_data
        return self._structure

    def _map(self, name: str | None, fn: Callable, draws: dict, key: Any, first: int) -> dict:
        """:func:`~numpyro_smile.replay.map_draws` of ``fn``: chunks sized for the memory
        budget on the first call of ``name``, the same size after (one executable)."""
        if name is None:
            return map_draws(fn, draws, key, *self._arrays, memory_budget=self._memory_budget,
                             first_draw=first)  # fmt: skip
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = {}
            return map_draws(fn, draws, key, *self._arrays, memory_budget=self._memory_budget,
                             stats=stats, first_draw=first)  # fmt: skip
        total = int(np.prod(jax.tree.leaves(draws)[0].shape[:2]))
        stats["num_chunks"] += -(-total // stats["chunk_size"])
        return map_draws(fn, draws, key, *self._arrays, chunk_size=stats["chunk_size"],
                         first_draw=first)  # fmt: skip


def _nbytes(tree: Any) -> int:
    return sum(
        int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(tree)
    )
