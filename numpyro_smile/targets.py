"""A NumPyro model (or a potential function) as the sampler core's ``Target``.

The core (:mod:`numpyro_smile.sampler`) samples functions of flat ``(d,)`` parameters; the
adapters (the ``SMILE`` kernel, the ensemble driver) meet NumPyro models and their arguments.
This module is the bridge between them, plus the argument checks both adapters share:

* :func:`model_problem`: everything a new sampler needs from a model and its data, in one
  call (the target, a starting point, the plates, the map back to constrained sites);
* :func:`model_target`: log density on a mini-batch (the model's subsample plates fed the
  batch indices), per-datum log densities for precise full-batch energy errors, and the
  log prior (its curvature floors the preconditioner);
* :func:`potential_target`: the same from a user's ``potential_fn``;
* :func:`validation_loss`: the held-out loss that early-stops pretraining;
* :func:`check_init_params`, :func:`argument_shapes`, :func:`check_same_shapes`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_sample, init_to_uniform
from numpyro.infer.util import constrain_fn, potential_energy

from numpyro_smile import batching, model_views, replay
from numpyro_smile.sampler import Target

__all__ = [
    "AUXILIARY_SITE",
    "DEFAULT_INIT_STRATEGY",
    "FAR_START",
    "ModelProblem",
    "NonSmoothWarning",
    "StartWarning",
    "add_auxiliary_site",
    "argument_shapes",
    "check_init_params",
    "check_same_shapes",
    "check_smooth_likelihood",
    "check_start",
    "coordinate_names",
    "drop_auxiliary_site",
    "model_problem",
    "model_target",
    "potential_plates",
    "potential_target",
    "validation_loss",
    "with_auxiliary_site",
    "with_indices",
]


def with_indices(model_kwargs: dict, indices: dict) -> dict:
    """``model_kwargs`` plus the batch indices the subsample plates read (none: unchanged)."""
    if not indices:
        return model_kwargs
    return {**model_kwargs, model_views.SUBSAMPLE_KWARG: indices}


def model_target(
    model: Callable,
    potential_fn_gen: Callable,
    plates: dict,
    unravel: Callable,
    model_args: tuple,
    model_kwargs: dict,
) -> Target:
    """The :class:`Target` of a NumPyro model on its data.

    Args:
        model: the user's model.
        potential_fn_gen: NumPyro's potential builder from
            :func:`numpyro_smile.model_views.initialize_subsampled_model`.
        plates: ``{name: PlateInfo(N, B)}`` subsample plates (empty: full batch).
        unravel: flat ``(d,)`` vector -> dict of unconstrained latent values.
        model_args: the model's positional arguments (the data; may be traced).
        model_kwargs: its keyword arguments.
    """
    arrays, bind = model_views.split_model_args(model_args, model_kwargs)
    potential = model_views.flat_potential(potential_fn_gen, unravel, bind)

    def logdensity(x, indices):
        return -potential(x, indices, arrays)

    terms = None
    if not plates:

        def terms(x):
            return model_views.log_density_terms(model, model_args, model_kwargs, unravel(x))

    prior = model_views.prior_only_model(partial(model_views.subsample_model, model))
    prior_kwargs = with_indices(model_kwargs, {name: jnp.arange(1) for name in plates})

    def prior_potential(x):
        return potential_energy(prior, model_args, prior_kwargs, unravel(x))

    return Target(logdensity, unravel, terms, prior_potential)


def potential_target(potential_fn: Callable, plates: dict, unravel: Callable) -> Target:
    """The :class:`Target` of ``potential_fn``: ``z -> U(z)``, or with one subsample plate
    ``(z, batch_indices (B,)) -> U_B(z)`` (an unbiased estimate of the full potential)."""
    if plates:
        (name,) = plates

        def logdensity(x, indices):
            return -potential_fn(unravel(x), indices[name])

    else:

        def logdensity(x, indices):
            return -potential_fn(unravel(x))

    return Target(logdensity, unravel)


#: Where chains start (before pretraining) when no ``init_params`` are given: nearer the
#: prior's centre than NUTS's radius 2 in unconstrained space, since MCLMC moves one step size
#: per step. Neural networks are better started from trained points (``init_params``).
DEFAULT_INIT_STRATEGY = init_to_uniform(radius=0.5)
#: Prior draws that define "typical" unconstrained values for :func:`check_start`.
NUM_PRIOR_DRAWS = 64
#: A start coordinate this many robust standard deviations (1.4826 x median absolute
#: deviation of the prior draws, or 1 where that is smaller) from the prior draws' median
#: is called far. Pretrained network weights sit well within it.
FAR_START = 10.0


class StartWarning(UserWarning):
    """``init_params`` far outside the prior's typical unconstrained range (often constrained
    values passed by mistake): the chains would spend warmup walking in from there."""


def check_start(
    model: Callable | None,
    plates: dict,
    init_params: dict,
    potential_energy: Any,
    num_chains: int | None,
    model_args: tuple,
    model_kwargs: dict,
    rng_key: jax.Array,
) -> None:
    """Diagnose a bad start from user ``init_params`` before any step is taken.

    Raises ``ValueError`` when the potential at a start is not finite (an out-of-support
    value: no step can leave it), and warns (:class:`StartWarning`) when a coordinate lies more
    than :data:`FAR_START` robust standard deviations from the prior's typical unconstrained
    values, naming the sites. Both messages say that ``init_params`` are unconstrained values.
    """
    unconstrained = (
        "init_params are unconstrained values (log(sigma) for a positive site, logit for a "
        "(0, 1) site, ...); convert constrained values with "
        "numpyro.infer.util.unconstrain_fn(model, model_args, model_kwargs, params)"
    )
    if isinstance(potential_energy, jax.core.Tracer):
        return  # traced: parallel chains initialise under pmap
    energy = np.atleast_1d(np.asarray(potential_energy))
    if not np.all(np.isfinite(energy)):
        chains = np.flatnonzero(~np.isfinite(energy)).tolist()
        raise ValueError(
            f"The potential energy at the start of chain(s) {chains} is not finite: init_params "
            f"put a value outside the model's support (or where its density vanishes). "
            f"{unconstrained}."
        )
    if model is None:
        return
    try:
        prior = model_views.initialize_subsampled_model(
            jax.random.split(rng_key, NUM_PRIOR_DRAWS),
            model,
            plates,
            init_to_sample,
            model_args,
            model_kwargs,
        ).param_info.z
    except Exception:  # improper priors have no draws: nothing to compare with
        return
    far = []
    for name, draws in prior.items():
        draws = np.asarray(draws, np.float64)
        start = np.asarray(init_params[name], np.float64)
        if num_chains is None:
            start = start[None]
        center = np.median(draws, axis=0)
        spread = np.maximum(1.4826 * np.median(np.abs(draws - center), axis=0), 1.0)
        distance = np.abs(start - center) / spread
        if np.any(distance > FAR_START):
            worst = np.unravel_index(int(np.argmax(distance)), distance.shape)
            far.append(
                f"{name!r} (chain {worst[0]}: {start[worst]:.3g}, {distance[worst]:.0f} robust "
                f"sd from the prior's median {center[worst[1:]]:.3g})"
            )
    if far:
        warnings.warn(
            f"init_params far from the prior's typical unconstrained values at {', '.join(far)}. "
            f"If these are constrained values: {unconstrained}. A far start costs warmup "
            "(and in mini-batch mode can freeze chains in resets).",
            StartWarning,
            stacklevel=3,
        )


#: Offsets (unconstrained units) at which :func:`check_smooth_likelihood` probes a coordinate.
STEP_PROBES = (-1.0, -0.3, -0.1, -0.03, 0.03, 0.1, 0.3, 1.0)
#: Models up to this many flat coordinates are probed (neural networks are not).
MAX_PROBED_DIM = 1000


class NonSmoothWarning(UserWarning):
    """The likelihood depends on a latent site only through steps (``jnp.where``,
    comparisons, rounding): its gradient there is zero, so the sampler feels no data."""


def check_smooth_likelihood(
    model: Callable,
    plates: dict,
    position: jax.Array,
    unravel: Callable,
    model_args: tuple,
    model_kwargs: dict,
) -> None:
    """Warn (:class:`NonSmoothWarning`) about coordinates the likelihood moves only by steps.

    MCLMC and SMILE follow the gradient and have no accept/reject step. A site that enters
    the likelihood only through a step, such as the switch time of a change-point model
    (``jnp.where(t < switch, early, late)``), has a likelihood gradient of exactly zero, so
    the data exert no force on it: it drifts as under its prior while the other sites adapt
    to wherever it is, and the chain settles in a mode NUTS (whose Metropolis step sees the
    jumps) does not choose. Detected at the start: a coordinate whose likelihood gradient is
    zero at the start and at every probe in :data:`STEP_PROBES`, while the likelihood's value
    changes between them. Models with more than :data:`MAX_PROBED_DIM` coordinates are
    skipped.

    Args:
        model: the user's model.
        plates: its subsample plates (the likelihood is evaluated on their first batch).
        position: ``(d,)`` start of one chain (flat, unconstrained).
        unravel: flat ``(d,)`` vector -> dict of unconstrained latent values.
        model_args: the model's positional arguments.
        model_kwargs: its keyword arguments.
    """
    if position.shape[0] > MAX_PROBED_DIM or isinstance(position, jax.core.Tracer):
        return  # too large to probe, or traced (parallel chains initialise under pmap)
    batch = {name: jnp.arange(plate.subsample_size) for name, plate in plates.items()}
    kwargs = with_indices(model_kwargs, batch)
    subsampled = partial(model_views.subsample_model, model)

    def loglik(x):
        return model_views.log_likelihood(subsampled, model_args, kwargs, unravel(x))

    value_and_grad = jax.value_and_grad(loglik)
    value, grad = jax.jit(value_and_grad)(position)
    candidates = np.flatnonzero(np.asarray(grad) == 0)[:16]
    if candidates.size == 0 or not np.isfinite(value):
        return
    deltas = jnp.asarray(STEP_PROBES, position.dtype)

    def probe(j):
        points = position + deltas[:, None] * jax.nn.one_hot(
            j, position.shape[0], dtype=deltas.dtype
        )
        values, grads = jax.vmap(value_and_grad)(points)
        return values, grads[:, j]

    values, grads = (np.asarray(a) for a in jax.jit(jax.vmap(probe))(jnp.asarray(candidates)))
    changes = np.abs(values - float(value)) > 1e-5 * (1.0 + abs(float(value)))
    flat = np.all(grads == 0, axis=1) & np.any(changes, axis=1) & np.all(np.isfinite(values), 1)
    if np.any(flat):
        coordinates = coordinate_names(unravel(position), candidates[flat])
        sites = ", ".join(repr(name) for name in coordinates)
        warnings.warn(
            f"The likelihood depends on {sites} only through steps (jnp.where, a comparison, "
            "rounding): its gradient there is exactly zero at the start and nearby, while its "
            "value jumps. SMILE, like every sampler without an accept/reject step, then feels "
            "no pull from the data on these coordinates: they drift as under the prior and "
            "the chains can settle in a different mode than NUTS. Marginalise the discrete "
            "choice (sum over the switch positions with logsumexp), make the switch smooth "
            "(e.g. jax.nn.sigmoid((t - switch) / width)), or sample this model with NUTS.",
            NonSmoothWarning,
            stacklevel=3,
        )


def coordinate_names(z: Any, indices: Any) -> tuple[str, ...]:
    """Names of flat coordinates of ``z`` (one chain's pytree, in ``ravel_pytree`` order):
    ``"tau"`` for a scalar site, ``"w[3]"`` or ``"w[1,2]"`` for an element of an array site.
    Only the requested coordinates are named (O(len(indices)), not O(d))."""
    leaves = jax.tree_util.tree_flatten_with_path(z)[0]
    shapes = [np.shape(leaf) for _, leaf in leaves]
    starts = np.cumsum([0] + [int(np.prod(shape)) for shape in shapes])
    names = []
    for i in np.asarray(indices, dtype=np.int64).reshape(-1):
        k = int(np.searchsorted(starts, i, side="right")) - 1
        path, shape = leaves[k][0], shapes[k]
        site = ".".join(
            str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path
        )
        if shape:
            index = np.unravel_index(int(i - starts[k]), shape)
            site = f"{site}[{','.join(str(int(j)) for j in index)}]"
        names.append(site)
    return tuple(names)


#: The extra site of a one-dimensional target (see :func:`with_auxiliary_site`).
AUXILIARY_SITE = "_smile_auxiliary"


def add_auxiliary_site(z: dict, num_chains: int | None) -> dict:
    """``z`` plus :data:`AUXILIARY_SITE` at 0 (``(num_chains,)`` zeros for several chains)."""
    dtype = jax.tree.leaves(z)[0].dtype
    return {**z, AUXILIARY_SITE: jnp.zeros(() if num_chains is None else (num_chains,), dtype)}


def drop_auxiliary_site(z: dict) -> dict:
    """``z`` without :data:`AUXILIARY_SITE`."""
    return {name: value for name, value in z.items() if name != AUXILIARY_SITE}


def with_auxiliary_site(make_target: Callable[[Callable], Target], unravel: Callable) -> Target:
    """A one-dimensional target made two-dimensional, as MCLMC needs (its velocity lives on
    the sphere S^(d-1), a single point for d = 1): the product of the target and an
    independent N(0, 1) on :data:`AUXILIARY_SITE`, which leaves the target's marginal exact.

    Args:
        make_target: ``unravel -> Target`` of the model alone (e.g. :func:`model_target`
            with its data bound).
        unravel: flat ``(2,)`` vector -> ``z`` with the auxiliary site.
    """
    base = make_target(lambda x: drop_auxiliary_site(unravel(x)))

    def auxiliary(x):
        return unravel(x)[AUXILIARY_SITE]

    def logdensity(x, indices):
        return base.logdensity_fn(x, indices) - 0.5 * auxiliary(x) ** 2

    terms = None
    if base.logdensity_terms_fn is not None:

        def terms(x):
            return [*base.logdensity_terms_fn(x), -0.5 * auxiliary(x) ** 2]

    def prior_potential(x):
        prior = 0.0 if base.prior_potential_fn is None else base.prior_potential_fn(x)
        return prior + 0.5 * auxiliary(x) ** 2

    return Target(logdensity, unravel, terms, prior_potential)


def potential_plates(
    model: Callable | None, data_size: int | None, subsample_size: int | None
) -> dict[str, batching.PlateInfo]:
    """The one plate ``{"data": PlateInfo(N, B)}`` a mini-batch ``potential_fn`` declares with
    ``data_size`` and ``subsample_size`` (``{}``: full batch), checked."""
    if model is not None and (data_size is not None or subsample_size is not None):
        raise ValueError(
            "SMILE(model, data_size=..., subsample_size=...): a model declares its "
            "mini-batch size in its plate, numpyro.plate('data', N, subsample_size=B) "
            "(e.g. a model argument passed at mcmc.run(..., subsample_size=B)); "
            "data_size and subsample_size are for potential_fn only."
        )
    if data_size is None or subsample_size is None:
        if data_size is not None or subsample_size is not None:
            raise ValueError("Give both data_size and subsample_size, or neither.")
        return {}
    if subsample_size > data_size:
        raise ValueError(
            f"subsample_size ({subsample_size}) is larger than data_size ({data_size}); "
            "use subsample_size <= data_size."
        )
    return (
        {"data": batching.PlateInfo(data_size, subsample_size)}
        if subsample_size < data_size
        else {}
    )


def argument_shapes(model_args: tuple, model_kwargs: dict) -> dict[str, tuple[int, ...]]:
    """``{"model_args[1]": (N,), "model_kwargs['X']": (N, p), ...}`` for every array argument."""
    shapes = {}
    leaves = jax.tree_util.tree_leaves_with_path((tuple(model_args), dict(model_kwargs)))
    for path, leaf in leaves:
        if hasattr(leaf, "shape"):
            group = ("model_args", "model_kwargs")[path[0].idx]
            shapes[group + jax.tree_util.keystr(path[1:])] = tuple(leaf.shape)
    return shapes


def check_same_shapes(at_init: dict, now: dict) -> None:
    """The chain state (batch schedules, preconditioner, tuned step size) belongs to the data it
    was initialised and warmed up on: refuse to continue on data of another shape."""
    if now == at_init:
        return
    changed = sorted(set(at_init) ^ set(now)) + [
        f"{name}: {at_init[name]} -> {now[name]}"
        for name in at_init
        if name in now and at_init[name] != now[name]
    ]
    raise ValueError(
        "The model arguments changed shape since the chains were initialised (e.g. between "
        f"mcmc.warmup(...) and mcmc.run(...)): {', '.join(changed)}. The chain state (batch "
        "schedule, preconditioner, tuned step size) belongs to the data it was warmed up on. "
        "Pass the same data, or start afresh on the new data (a new MCMC object, or "
        "mcmc.post_warmup_state = None before mcmc.run)."
    )


def check_init_params(init_params: Any, expected: dict, num_chains: int | None) -> None:
    """Clear errors for ``init_params`` with the wrong sites or shapes.

    ``expected`` holds one chain's values (or shapes); with ``num_chains`` every value must
    carry a leading ``(num_chains,)`` axis.
    """
    if not isinstance(init_params, dict) or set(init_params) != set(expected):
        got = sorted(init_params) if isinstance(init_params, dict) else type(init_params).__name__
        lead = "" if num_chains is None else ", each with a leading (num_chains,) axis"
        raise ValueError(
            f"init_params must be a dict of unconstrained values for the latent sites "
            f"{sorted(expected)}{lead}; got {got}."
        )
    for name, value in init_params.items():
        want = tuple(jnp.shape(expected[name]))
        if num_chains is not None:
            want = (num_chains, *want)
        if tuple(jnp.shape(value)) != want:
            lead = "" if num_chains is None else f"(num_chains,) + {want[1:]} = "
            raise ValueError(
                f"init_params[{name!r}] has shape {jnp.shape(value)}, expected {lead}{want}."
            )


def validation_loss(model: Callable, validation: Any, model_kwargs: dict) -> tuple[Callable, Any]:
    """``(loss, arrays)``: ``loss(x, unravel, arrays)`` is the mean negative log-likelihood per
    held-out point of flat parameters ``x``; ``arrays`` are the held-out data's leaves.

    Args:
        model: the user's model (its subsample plates see all held-out points).
        validation: the model's positional arguments on held-out data, e.g. ``(X_val, y_val)``.
        model_kwargs: the training run's keyword arguments (options), reused.
    """
    if not isinstance(validation, (tuple, list)):
        raise TypeError(
            "validation must be a tuple of the model's positional arguments on the "
            f"held-out data, e.g. (X_val, y_val); got {type(validation).__name__}."
        )
    validation = tuple(validation)
    model_views.check_finite_data(validation, model_kwargs)
    plates = model_views.inspect_model(model, validation, model_kwargs, check=False)
    view = model_views.full_data_model(model, plates)
    arrays, bind = model_views.split_model_args(validation, model_kwargs)

    def loss(x, unravel, arrays):
        args, kwargs = bind(arrays)
        params = constrain_fn(view, args, kwargs, unravel(x))
        observed = replay.observations_fn(view, args, kwargs, False)(params, jax.random.key(0))
        values = observed["log_likelihood"].values()
        return -sum(jnp.sum(v) for v in values) / sum(jnp.size(v) for v in values)

    return loss, arrays


class ModelProblem(NamedTuple):
    """A NumPyro model on its data, ready for a sampler core.

    Attributes:
        target: the :class:`~numpyro_smile.sampler.Target` (flat parameters).
        position: ``(d,)`` a starting point from the init strategy (unconstrained, flat).
        plates: ``{name: PlateInfo(N, B)}`` subsample plates (empty: full batch).
        constrain: ``(d,) -> {site: value}``: constrained latent and deterministic sites,
            the deterministic ones over all N data points.
    """

    target: Target
    position: jax.Array
    plates: dict
    constrain: Callable


def model_problem(
    model: Callable,
    *model_args: Any,
    rng_key: jax.Array,
    init_strategy: Callable = DEFAULT_INIT_STRATEGY,
    **model_kwargs: Any,
) -> ModelProblem:
    """Check ``model`` on its data and build what a sampler core needs (see
    :class:`ModelProblem`); the model's subsample plates give the mini-batches."""
    model_views.check_finite_data(model_args, model_kwargs)
    plates = model_views.inspect_model(model, model_args, model_kwargs)
    info = model_views.initialize_subsampled_model(
        rng_key, model, plates, init_strategy, model_args, model_kwargs
    )
    position, unravel = ravel_pytree(info.param_info.z)
    target = model_target(model, info.potential_fn, plates, unravel, model_args, model_kwargs)
    full = with_indices(model_kwargs, batching.full_data_indices(plates))
    postprocess = info.postprocess_fn(*model_args, **full)
    return ModelProblem(target, position, plates, lambda x: postprocess(unravel(x)))
