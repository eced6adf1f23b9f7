"""Replaying a NumPyro model at posterior draws, in chunks of draws within a memory budget.

Three parts of the package run the user's model again at draws it has already made:
:mod:`numpyro_smile.evaluation` (test metrics and predictions on held-out data),
:mod:`numpyro_smile.inference_data` (the ``posterior`` constrained, ``log_likelihood`` and
``posterior_predictive`` over the full data) and :mod:`numpyro_smile.ensemble` (validation
losses during pretraining, the chunk size of the sampling loop). This module owns what they
share, and nothing here imports ArviZ or xarray:

* tracing a model with its latent sites set to one draw (:func:`trace_model`);
* mapping a function over every (member, draw) pair in chunks whose estimated peak memory,
  intermediate activations included, fits a budget, onto host memory (:func:`map_draws`,
  :class:`ReplayMemoryWarning`, :data:`CHUNK_ELEMENTS`), or reducing its outputs over the
  draws chunk by chunk (``reduce=``, :mod:`numpyro_smile.reductions`) and, where one draw on
  all data points does not fit, over chunks of the points too (``points=``,
  :class:`PointAxis`);
* the per-draw functions replayed that way: pointwise log-likelihoods and predictive
  replicates of the observed sites (:func:`observations_fn`, :func:`observed_sites`,
  :func:`likelihood_view`) and constrained latent values (:func:`constrain_draws`);
* reading a model's structure from a cheap trace: the sites a posterior holds
  (:func:`posterior_site_names`), those on the real line (:func:`identity_sites`) and the
  names of each site's axes (:func:`site_dims`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import IdentityTransform, IndependentTransform, biject_to
from numpyro.infer.util import constrain_fn

from numpyro_smile import memory, model_views, reductions, sharding

__all__ = [
    "CHUNK_ELEMENTS",
    "PointAxis",
    "ReplayMemoryWarning",
    "constrain_draws",
    "identity_sites",
    "likelihood_view",
    "map_draws",
    "observations_fn",
    "observed_sites",
    "posterior_site_names",
    "site_dims",
    "trace_model",
]

#: Elements (float32: 4 bytes each) of draws per chunk of the sampling loop: 2**24 is 64 MiB.
#: (Replays size their chunks by their peak memory instead: ``map_draws``.)
CHUNK_ELEMENTS = 2**24


def trace_model(
    model: Callable,
    params: dict,
    model_args: tuple,
    model_kwargs: dict,
    rng_key=None,
    *,
    prior_draws: bool = True,
) -> dict:
    """The trace of ``model`` with its latent sites set to the constrained ``params``.

    Latent sites missing from ``params`` are drawn from their priors, or, with
    ``prior_draws=False`` (traces read for their structure: names, supports, shapes), set to
    ``init_to_uniform`` values, which improper priors allow.
    """
    seeded = handlers.seed(
        handlers.substitute(model, data=params), rng_seed=0 if rng_key is None else rng_key
    )
    if not prior_draws:
        seeded = model_views.without_prior_draws(seeded)
    return handlers.trace(seeded).get_trace(*model_args, **model_kwargs)


class ReplayMemoryWarning(UserWarning):
    """One draw's replay needs more memory than the budget allows (it runs anyway)."""


class PointAxis(NamedTuple):
    """The data points of a replay's outputs, over which :func:`map_draws` may chunk.

    Attributes:
        size: the number of points.
        axis: their axis in every per-draw output of the replayed function (counted from the
            left, without the draw axes).
    """

    size: int
    axis: int


def map_draws(
    fn: Callable,
    draws: dict,
    rng_key: jax.Array,
    *extra: Any,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    stats: dict | None = None,
    reduce: dict[str, str] | None = None,
    points: PointAxis | None = None,
    first_draw: int = 0,
) -> dict:
    """Apply ``fn(draw, key, *extra) -> pytree`` to every draw, in chunks, onto host memory.

    Args:
        fn: a function of one draw (a dict of arrays without the leading axes) and a key.
        draws: dict of host or device arrays with leading ``(K, S)`` (members, draws).
        rng_key: base key; draw (k, s) gets ``fold_in(fold_in(rng_key, k), s)``, so results do
            not depend on the chunk size.
        extra: arrays passed to every call (e.g. the data), as jit arguments.
        chunk_size: (member, draw) pairs per chunk. Default: as many as fit ``memory_budget``
            at the chunk's peak, intermediate activations included
            (:func:`numpyro_smile.memory.peak_live_bytes`). The last chunk is padded, so ``fn``
            is compiled exactly once.
        memory_budget: bytes one chunk may hold at its peak (default
            :data:`numpyro_smile.memory.DEFAULT_REPLAY_BUDGET`, 256 MiB). When a single draw
            needs more, chunks hold one draw and a :class:`ReplayMemoryWarning` says so.
        stats: a dict to receive ``chunk_size``, ``num_chunks`` (compiled calls) and
            ``chunk_peak_bytes`` (the estimated peak of one chunk); with ``reduce``, also
            ``point_chunk_size`` and ``num_point_chunks``.
        first_draw: the index of ``draws``' first draw among all of a run's draws: draws
            (k, s) get the keys of draws (k, ``first_draw`` + s), so a run's draws mapped in
            parts (streamed chunks) get the keys, hence the results, of one call on them all.
        reduce: ``{name: kind}`` for ``fn`` returning a dict of arrays with these keys: each
            output is reduced over the draws chunk by chunk, inside the compiled call and then
            on the host in float64 (:mod:`numpyro_smile.reductions`), so memory holds one
            result per point, not one per draw. Kinds: ``"mean"`` (over all draws of all
            members), ``"mean_variance"`` (a pair: mean and variance over all draws),
            ``"member_logmeanexp"`` (``(K, ...)``: per member, log mean exp over its draws)
            and ``"draws"`` (kept: ``(K, S, ...)``). Equal to reducing ``map_draws``'s full
            output afterwards, to float rounding.
        points: with ``reduce``, the points of every output (:class:`PointAxis`: how many,
            and their axis in ``fn``'s per-draw outputs) when the replay may be split over
            them: ``fn`` then takes ``(draw, key, indices, *extra)`` and returns its outputs
            on the points ``indices`` (an int32 array; ``None``: all of them). Points are
            split only when one draw on all of them exceeds the budget, into equal chunks
            (the last one padded: one compilation); draw (k, s) then gets its key folded
            with the chunk's number too.

    Returns:
        ``fn``'s output tree with leading ``(K, S)``, as NumPy arrays; with ``reduce``, the
        dict of reduced outputs (a ``(mean, variance)`` tuple for ``"mean_variance"``).

    With several processes (JAX's distributed runtime) and K a multiple of their count, each
    process replays its own block of members (:func:`numpyro_smile.sharding.process_members`)
    and every process gets all of them back: every process must call this with the same
    draws, at the same point of the program. ``memory_budget`` and ``stats`` are then per
    process.
    """
    num_members = jax.tree.leaves(draws)[0].shape[0]
    block = sharding.process_members(num_members)
    if reduce is not None:
        if first_draw:
            raise ValueError("map_draws(reduce=...) maps a run's draws in one call: first_draw=0.")
        return _reduce_draws(
            fn, draws, rng_key, *extra, block=block, chunk_size=chunk_size,
            memory_budget=memory_budget, stats=stats, reduce=reduce, points=points,
        )  # fmt: skip
    if points is not None:
        raise ValueError("map_draws(points=...) needs reduce={output: kind} too.")
    if block is None:
        return _map_draws(fn, draws, rng_key, *extra, chunk_size=chunk_size,
                          memory_budget=memory_budget, stats=stats,
                          first_draw=first_draw)  # fmt: skip
    local = _map_draws(
        fn, jax.tree.map(lambda a: a[block], draws), rng_key, *extra, first_member=block.start,
        chunk_size=chunk_size, memory_budget=memory_budget, stats=stats, first_draw=first_draw,
    )  # fmt: skip
    return sharding.gather_members(local)


def _map_draws(
    fn: Callable,
    draws: dict,
    rng_key: jax.Array,
    *extra: Any,
    first_member: int = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    stats: dict | None = None,
    first_draw: int = 0,
) -> dict:
    """:func:`map_draws` in this process, on the members ``first_member, first_member + 1,
    ...`` (their keys are those of their place in the whole ensemble)."""
    budget = memory.check_budget(memory_budget)
    num_members, num_draws = jax.tree.leaves(draws)[0].shape[:2]
    total = num_members * num_draws
    # (member, draw) pairs in one flat axis: a chunk may hold fewer draws than members.
    flat = jax.tree.map(lambda a: a.reshape(total, *a.shape[2:]), draws)

    run_chunk = _chunk_fn(fn)

    def chunk_peak(size: int) -> int:
        chunk = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *a.shape[1:]), a.dtype), flat)
        ids = jax.ShapeDtypeStruct((size,), jnp.int32)
        return memory.peak_live_bytes(run_chunk, chunk, ids, ids, rng_key, *extra)

    chunk_size, estimate = _draws_per_chunk(chunk_peak, budget, total, chunk_size, stats)
    if stats is not None:
        stats.update(
            chunk_size=chunk_size, num_chunks=-(-total // chunk_size), chunk_peak_bytes=estimate
        )

    compiled = _compiled_chunk_fn(fn)
    out = None
    for start in range(0, total, chunk_size):
        size = min(chunk_size, total - start)
        ids = np.minimum(np.arange(start, start + chunk_size), total - 1)
        chunk = jax.tree.map(lambda a, ids=ids: a[ids], flat)
        members, draw_ids = np.divmod(ids, num_draws)
        members += first_member
        draw_ids += first_draw
        result = jax.device_get(
            compiled(
                chunk,
                jnp.asarray(members, jnp.int32),
                jnp.asarray(draw_ids, jnp.int32),
                rng_key,
                *extra,
            )
        )
        if out is None:
            out = jax.tree.map(lambda a: np.empty((total, *a.shape[1:]), a.dtype), result)
        for dest, src in zip(jax.tree.leaves(out), jax.tree.leaves(result)):
            dest[start : start + size] = src[:size]
    return jax.tree.map(lambda a: a.reshape(num_members, num_draws, *a.shape[1:]), out)


def _draws_per_chunk(
    chunk_peak: Callable[[int], int],
    budget: int,
    total: int,
    chunk_size: int | None,
    stats: dict | None,
    where: str = "on all data points",
) -> tuple[int, int | None]:
    """``(chunk_size, estimated peak of a chunk)``: the given size, or as many draws as fit
    ``budget`` by ``chunk_peak(draws)`` (warning when one draw does not fit)."""
    if chunk_size is not None:
        chunk_size = int(min(chunk_size, total))
        return chunk_size, chunk_peak(chunk_size) if stats is not None else None
    # A vmapped program's peak grows linearly with the draws: fixed + per_draw * chunk.
    one, two = chunk_peak(1), chunk_peak(2)
    per_draw, fixed = max(1, two - one), max(0, 2 * one - two)
    # Headroom for what the estimate cannot see (allocator rounding, runtime scratch).
    chunk_size = max(1, (int(memory.HEADROOM * budget) - fixed) // per_draw)
    chunk_size = int(min(chunk_size, total))
    if one > budget:
        warnings.warn(
            f"Replaying one draw {where} needs about {one / 2**20:.0f} MiB "
            f"(intermediate activations included), more than the memory budget of "
            f"{budget / 2**20:.0f} MiB; it runs one draw at a time. Raise memory_budget, "
            "or use fewer data points per call (log_likelihood=m, or evaluate/predict on "
            "parts of the test set).",
            ReplayMemoryWarning,
            stacklevel=4,
        )
    return chunk_size, fixed + per_draw * chunk_size


def _reduce_draws(
    fn: Callable,
    draws: dict,
    rng_key: jax.Array,
    *extra: Any,
    block: slice | None,
    chunk_size: int | None,
    memory_budget: int | None,
    stats: dict | None,
    reduce: dict[str, str],
    points: PointAxis | None,
) -> dict:
    """:func:`map_draws` with ``reduce``: this process's members (``block``; ``None``: all),
    chunked over draws and, where one draw does not fit the budget, over points; the
    summaries gathered from every process."""
    for name, kind in reduce.items():
        reductions.check_kind(name, kind)
    budget = memory.check_budget(memory_budget)
    num_members, num_draws = jax.tree.leaves(draws)[0].shape[:2]
    first_member = 0
    if block is not None:
        draws = jax.tree.map(lambda a: a[block], draws)
        first_member = block.start
    local_members = jax.tree.leaves(draws)[0].shape[0]
    total = local_members * num_draws
    flat = jax.tree.map(lambda a: a.reshape(total, *a.shape[2:]), draws)
    extra = jax.device_put(extra)  # the data: on the device once, not at every call

    def run_chunk(chunk, members, draw_ids, local, valid, key, indices, *extra):
        def per_draw(draw, member, draw_id):
            draw_key = jax.random.fold_in(jax.random.fold_in(key, member), draw_id)
            if points is None:
                return fn(draw, draw_key, *extra)
            return fn(draw, draw_key, indices, *extra)

        outputs = jax.vmap(per_draw)(chunk, members, draw_ids)
        if not isinstance(outputs, dict) or set(outputs) != set(reduce):
            raise ValueError(
                f"map_draws(reduce=...) names the outputs {sorted(reduce)}, but fn returns "
                f"{sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__}; "
                "return a dict with exactly those keys."
            )
        if points is not None:
            expected = points.size if indices is None else indices.shape[0]
            for name, value in outputs.items():
                if value.ndim <= points.axis + 1 or value.shape[points.axis + 1] != expected:
                    raise ValueError(
                        f"Output {name!r} has shape {value.shape[1:]} per draw, not "
                        f"{expected} points along axis {points.axis}: fn must return its "
                        "outputs on the given point indices (a model subsamples its data "
                        "inside the plate: numpyro.subsample(data, event_dim=...))."
                    )
        return {
            name: reductions.reduce_chunk(kind, outputs[name], valid, local, local_members)
            for name, kind in reduce.items()
        }

    @cache
    def chunk_peak(size: int, num_points: int | None = None) -> int:
        chunk = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *a.shape[1:]), a.dtype), flat)
        ids = jax.ShapeDtypeStruct((size,), jnp.int32)
        valid = jax.ShapeDtypeStruct((size,), jnp.bool_)
        indices = None if num_points is None else jax.ShapeDtypeStruct((num_points,), jnp.int32)
        return memory.peak_live_bytes(
            run_chunk, chunk, ids, ids, ids, valid, rng_key, indices, *extra
        )

    num_points, point_axis = points if points is not None else (0, 0)
    point_size = _points_per_chunk(chunk_peak, budget, points)
    where = "on all data points"
    point_starts: list[int | None] = [None]
    if point_size is not None:
        where = f"on a chunk of {point_size} of the {num_points} data points"
        point_starts = list(range(0, num_points, point_size))
    chunk_size, estimate = _draws_per_chunk(
        lambda size: chunk_peak(size, point_size), budget, total, chunk_size, stats, where
    )
    num_chunks = -(-total // chunk_size)
    if stats is not None:
        stats.update(
            chunk_size=chunk_size,
            num_chunks=num_chunks * len(point_starts),
            chunk_peak_bytes=estimate,
            point_chunk_size=point_size or (num_points if points is not None else None),
            num_point_chunks=len(point_starts),
        )

    compiled = jax.jit(run_chunk)
    parts: dict[str, list] = {name: [] for name in reduce}
    dtypes: dict[str, Any] = {}
    for point_chunk, point_start in enumerate(point_starts):
        key, indices = rng_key, None
        if point_start is not None and point_size is not None:
            key = jax.random.fold_in(rng_key, point_chunk)
            positions = np.arange(point_start, point_start + point_size)
            indices = jnp.asarray(np.minimum(positions, num_points - 1), jnp.int32)
        summaries: dict[str, Any] = dict.fromkeys(reduce)
        for start in range(0, total, chunk_size):
            size = min(chunk_size, total - start)
            positions = np.arange(start, start + chunk_size)
            ids = np.minimum(positions, total - 1)
            local, draw_ids = np.divmod(ids, num_draws)
            result = jax.device_get(
                compiled(
                    jax.tree.map(lambda a, ids=ids: a[ids], flat),
                    jnp.asarray(local + first_member, jnp.int32),
                    jnp.asarray(draw_ids, jnp.int32),
                    jnp.asarray(local, jnp.int32),
                    jnp.asarray(positions < total),
                    key,
                    indices,
                    *extra,
                )
            )
            for name, kind in reduce.items():
                dtypes[name] = result[name].dtype
                summaries[name] = reductions.combine(
                    kind, summaries[name], result[name], start, size
                )
        for name, kind in reduce.items():
            summary = reductions.summary_array(kind, summaries[name])
            if point_start is not None and point_size is not None:  # drop the last's padding
                kept = min(point_size, num_points - point_start)
                axis = reductions.LEADING_AXES[kind] + point_axis
                summary = np.take(summary, np.arange(kept), axis=axis)
            parts[name].append(summary)

    out = {}
    for name, kind in reduce.items():
        summary = parts[name][0]
        if len(parts[name]) > 1:
            axis = reductions.LEADING_AXES[kind] + point_axis
            summary = np.concatenate(parts[name], axis=axis)
        if block is not None:  # every process's summary, in member order, on every process
            if kind != "draws":  # float64 travels as float32 unless x64 is on
                summary = summary.astype(jax.dtypes.canonicalize_dtype(np.float64))
            summary = reductions.merge(kind, sharding.gather_members(summary[None]), total)
        value = reductions.finalize(kind, summary, num_draws, num_members * num_draws, dtypes[name])
        if kind == "draws":
            value = value.reshape(num_members, num_draws, *value.shape[1:])
        out[name] = value
    return out


def _points_per_chunk(
    chunk_peak: Callable[..., int], budget: int, points: PointAxis | None
) -> int | None:
    """Points per replay chunk: ``None`` (all, unsplit) unless one draw on all of them exceeds
    the budget's headroom; then as many as leave room for a few draws per chunk, in equal
    chunks."""
    limit = memory.HEADROOM * budget
    if points is None or points.size < 2 or chunk_peak(1) <= limit:
        return None
    # One draw's peak grows linearly with the points: fixed (the data, the draw) + per point.
    whole, single = chunk_peak(1), chunk_peak(1, 1)
    per_point = max(1.0, (whole - single) / (points.size - 1))
    fixed = max(0.0, single - per_point)
    # A quarter of the room the fixed part leaves: chunks of about four draws fit.
    size = int((limit - fixed) // (4 * per_point)) if limit > fixed else 1
    size = min(max(size, 1), points.size)
    num_chunks = -(-points.size // size)
    return -(-points.size // num_chunks)  # equal chunks, the last one padded least


def _chunk_fn(fn: Callable) -> Callable:
    """``(chunk, members, draw_ids, key, *extra) -> fn`` vmapped over a chunk of draws, draw
    (k, s) with the key ``fold_in(fold_in(key, k), s)``."""

    def run_chunk(chunk, members, draw_ids, key, *extra):
        def per_draw(draw, member, draw_id):
            return fn(draw, jax.random.fold_in(jax.random.fold_in(key, member), draw_id), *extra)

        return jax.vmap(per_draw)(chunk, members, draw_ids)

    return run_chunk


#: ``fn -> jax.jit(_chunk_fn(fn))`` while ``fn`` lives: calls of :func:`map_draws` with the
#: same ``fn`` (a run's chunks of draws, streamed) share one executable per chunk shape.
_COMPILED_CHUNK_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_chunk_fn(fn: Callable) -> Callable:
    """``jax.jit(_chunk_fn(fn))``, one per ``fn`` (weakly held: the jitted function calls
    ``fn`` through a weak reference, so the cache never keeps ``fn``, or the data its closure
    may hold, alive)."""
    try:
        return _COMPILED_CHUNK_FNS[fn]
    except (KeyError, TypeError):  # TypeError: fn is not hashable or weakly referenceable
        pass
    try:
        reference = weakref.ref(fn)
    except TypeError:
        return jax.jit(_chunk_fn(fn))

    def call(*args):  # fn is alive whenever this is traced: map_draws holds it
        function = reference()
        assert function is not None
        return function(*args)

    compiled = jax.jit(_chunk_fn(call))
    try:
        _COMPILED_CHUNK_FNS[fn] = compiled
    except TypeError:
        pass
    return compiled


def observations_fn(
    model: Callable, model_args: tuple, model_kwargs: dict, predictive: bool
) -> Callable:
    """``(params, key) -> {"log_likelihood": {site: (n...)}, "posterior_predictive": {...}}``.

    Per observed site: the pointwise log-density of the observed values and, when
    ``predictive``, one draw from the site's distribution (a posterior-predictive replicate).
    ``params`` are constrained latent values; ``model`` is a full-data (or subset) view.
    """

    def observations(params, key):
        model_trace = trace_model(model, params, model_args, model_kwargs, key)
        log_likelihood, replicates = {}, {}
        for i, (name, site) in enumerate(observed_sites(model_trace).items()):
            value = site["value"]
            log_likelihood[name] = site["fn"].log_prob(value)
            if predictive:
                batch_ndim = jnp.ndim(value) - len(site["fn"].event_shape)
                site_fn = site["fn"].expand(jnp.shape(value)[:batch_ndim])
                replicates[name] = site_fn.sample(jax.random.fold_in(key, i))
        return {"log_likelihood": log_likelihood, "posterior_predictive": replicates}

    return observations


def observed_sites(model_trace: dict) -> dict:
    """``{name: site}`` of the observed sample sites of ``model_trace``, in trace order."""
    return {
        name: site
        for name, site in model_trace.items()
        if site["type"] == "sample" and site["is_observed"]
    }


def posterior_site_names(
    model: Callable, model_args: tuple, model_kwargs: dict, subsample_plates: dict
) -> list[str]:
    """Latent sites and the deterministic sites outside every subsample plate.

    Deterministic sites inside a subsample plate are per data point (K x S x N numbers) and
    are left out of ``posterior``: replay them on the data you need with
    ``numpyro.infer.Predictive`` on the full-data view.
    """
    model_trace = trace_model(
        _one_point_view(model, subsample_plates), {}, model_args, model_kwargs, prior_draws=False
    )
    names = []
    for name, site in model_trace.items():
        frames = {frame.name for frame in site.get("cond_indep_stack", ())}
        if site["type"] == "sample" and not site["is_observed"]:
            names.append(name)
        elif site["type"] == "deterministic" and not frames & set(subsample_plates):
            names.append(name)
    return names


def identity_sites(
    model: Callable,
    model_args: tuple,
    model_kwargs: dict,
    subsample_plates: dict,
    names: list[str],
) -> set[str]:
    """The latent sites among ``names`` whose support is the real line (or a product of it):
    their unconstrained and constrained values are the same arrays."""
    model_trace = trace_model(
        _one_point_view(model, subsample_plates), {}, model_args, model_kwargs, prior_draws=False
    )
    unchanged = set()
    for name in names:
        site = model_trace[name]
        if site["type"] != "sample":
            continue
        transform = biject_to(site["fn"].support)
        while isinstance(transform, IndependentTransform):
            transform = transform.base_transform
        if isinstance(transform, IdentityTransform):
            unchanged.add(name)
    return unchanged


def _one_point_view(model: Callable, subsample_plates: dict) -> Callable:
    """The model on a one-point batch of every subsample plate (cheap to replay)."""
    return model_views.fixed_indices_model(
        model, {name: jnp.arange(1) for name in subsample_plates}, suffix="_one_point"
    )


def constrain_draws(
    model: Callable,
    model_args: tuple,
    model_kwargs: dict,
    subsample_plates: dict,
    names: list[str],
) -> Callable:
    """``(unconstrained, key) -> {name: constrained value}`` for the given site ``names``.

    The model runs on a one-point batch per plate, so this costs no full-data pass.
    """
    one_point = _one_point_view(model, subsample_plates)

    def constrain(z, key):
        del key
        values = constrain_fn(one_point, model_args, model_kwargs, z, return_deterministic=True)
        return {name: values[name] for name in names}

    return constrain


def site_dims(model_trace: dict, names) -> dict[str, list[str]]:
    """ArviZ dims of each site's value: plate axes are named after their plate."""
    dims = {}
    for name in names:
        site = model_trace[name]
        value = site["value"]
        ndim = jnp.ndim(value)
        event_dim = len(site["fn"].event_shape) if site["type"] == "sample" else 0
        names_ = [f"{name}_dim_{i}" for i in range(ndim)]
        for frame in site.get("cond_indep_stack", ()):
            axis = ndim - event_dim + frame.dim
            if 0 <= axis < ndim:
                names_[axis] = frame.name
        if ndim:
            dims[name] = names_
    return dims


def likelihood_view(
    model: Callable, subsample_plates: dict, log_likelihood: bool | int, rng_key: jax.Array
) -> tuple[Callable, dict[str, np.ndarray]]:
    """The model view replayed for ``log_likelihood``/``posterior_predictive``, and coords.

    ``log_likelihood`` True or False (or a model without subsample plates): the full-data
    view and no coordinates. An int m: every subsample plate sees a fixed random subset of
    ``min(m, N)`` of its points (sorted, drawn with ``rng_key``), whose indices are returned as
    ``{plate: indices}`` coordinates.
    """
    if log_likelihood is True or log_likelihood is False or not subsample_plates:
        return model_views.full_data_model(model, subsample_plates), {}
    size = int(log_likelihood)
    if size < 1:
        raise ValueError(f"log_likelihood must be True, False or a positive int, got {size}.")
    indices, coords = {}, {}
    for key, (name, plate) in zip(
        jax.random.split(rng_key, len(subsample_plates)), subsample_plates.items()
    ):
        chosen = np.sort(
            np.asarray(jax.random.choice(key, plate.size, (min(size, plate.size),), replace=False))
        )
        indices[name], coords[name] = jnp.asarray(chosen), chosen
    return model_views.fixed_indices_model(model, indices), coords
