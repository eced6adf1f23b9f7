"""The NumPyro side of SMILE: checking a model and the views of it that the sampler runs.

A model marks its likelihood with ``numpyro.plate(name, N, subsample_size=B)``. SMILE feeds
the plate explicit indices every step, through a reserved keyword argument
(:data:`SUBSAMPLE_KWARG`) that a thin wrapper (:func:`subsample_model`) hands to the plate;
NumPyro then scales the plate's log-likelihood by N / B and counts the prior once, which is
the unbiased mini-batch potential. Feeding ``arange(N)`` instead gives the full-data potential
(scale 1), which is also what :func:`full_data_model` does for ArviZ and ``Predictive``.

This module owns everything that runs or traces the model: the checks that reject what SMILE
cannot sample (:func:`inspect_model`, :func:`check_finite_data`), splitting the model
arguments into data and static values, initialisation, the views of the model (on given
indices, on all points, prior only) and :func:`flat_potential`, the one builder of the
potential of flat parameters on a batch. Which indices a step sees is decided without NumPyro,
in :mod:`numpyro_smile.batching`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers, primitives
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import (
    ModelInfo,
    _unconstrain_reparam,
    compute_log_probs,
    initialize_model,
)
from numpyro.primitives import Messenger, plate

from numpyro_smile.batching import PlateInfo

__all__ = [
    "SUBSAMPLE_KWARG",
    "FullBatchWarning",
    "ModelError",
    "check_finite_data",
    "fixed_indices_model",
    "flat_potential",
    "full_data_model",
    "initialize_subsampled_model",
    "inspect_model",
    "log_density_terms",
    "prior_only_model",
    "split_model_args",
    "subsample_model",
    "without_prior_draws",
]

#: Reserved model keyword through which the kernel passes ``{plate_name: indices}``.
SUBSAMPLE_KWARG = "_smile_subsample_indices"


class ModelError(ValueError):
    """A model SMILE cannot sample as written; the message says what to change."""


class FullBatchWarning(UserWarning):
    """A model written for mini-batches (``numpyro.subsample`` in a plate) got no
    ``subsample_size``, so it runs with full-data gradients: often a forgotten argument."""


class _PlateInspector(Messenger):
    """Records every plate and hands subsampled plates fixed indices (no RNG needed); notes
    the plates that ``numpyro.subsample`` calls sit in."""

    def __init__(self, fn=None):
        self.plates: dict[str, tuple[int, int | None]] = {}
        self.subsampled_in: set[str] = set()
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "subsample":  # the plates it sits in are those on the stack
            enclosing = {h.name for h in primitives._PYRO_STACK if isinstance(h, plate)}
            # One of them with a subsample_size accounts for the call (nested plates
            # subsampled on the inner one only); with none, each is a candidate.
            if all(self.plates.get(name, (0, None))[1] is None for name in enclosing):
                self.subsampled_in |= enclosing
        if msg["type"] != "plate":
            return
        size, subsample_size = msg["args"]
        if subsample_size is not None and not _is_positive_int(subsample_size):
            raise ModelError(
                f"numpyro.plate({msg['name']!r}, {size}, subsample_size={subsample_size!r}): "
                "the mini-batch size must be a positive integer (the number of data points "
                f"per step, at most {size}), or None for full-data gradients."
            )
        self.plates[msg["name"]] = (size, subsample_size)
        if msg["value"] is None:
            msg["value"] = jnp.arange(min(size, subsample_size))


def _is_positive_int(value: Any) -> bool:
    """An integer of at least 1 (NumPy's and 0-d arrays' too; not a bool or a float)."""
    if isinstance(value, bool) or not jnp.issubdtype(np.asarray(value).dtype, jnp.integer):
        return False
    return np.ndim(value) == 0 and int(value) >= 1


def _plate_error(name: str, size: int, subsample_size: int) -> ModelError:
    return ModelError(
        f"numpyro.plate({name!r}, {size}, subsample_size={subsample_size}): the mini-batch "
        f"size is larger than the data ({subsample_size} > {size}). Use subsample_size <= "
        f"{size}, or drop subsample_size to sample with full-data gradients."
    )


def inspect_model(
    model: Callable, model_args: tuple, model_kwargs: dict, check: bool = True
) -> dict[str, PlateInfo]:
    """Find the subsample plates of ``model`` and reject what SMILE cannot sample.

    Args:
        check: validate the model for sampling (the errors below). ``False`` only reads the
            plates, e.g. of the model on held-out data, where a plate may be smaller than its
            ``subsample_size``; such a plate is reported as ``PlateInfo(N, N)``.

    Returns:
        ``{plate_name: PlateInfo(N, B)}`` for every plate with ``subsample_size < size`` (and,
        with ``check=False``, ``> size``); an empty dict means a full-batch model (MCLMC with
        MILE tuning).

    Raises:
        ModelError: a plate with ``subsample_size > size``; a discrete latent site; a latent
            site inside a subsampled plate (a per-datum local latent); no latent site at all;
            or a subsampled plate nested in another one.
    """
    inspector = _PlateInspector(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_trace = handlers.trace(
                without_prior_draws(handlers.seed(inspector, rng_seed=0))
            ).get_trace(*model_args, **model_kwargs)
    except ValueError as error:
        hint = _data_shape_hint(str(error), inspector.plates)
        if hint is None:
            raise
        raise ModelError(hint) from error
    plates: dict[str, PlateInfo] = {}
    forgotten = []  # plates written for mini-batches without a subsample_size: warn if valid
    for name, (size, subsample_size) in inspector.plates.items():
        if subsample_size is None and name in inspector.subsampled_in:
            forgotten.append((name, size))
        if subsample_size is None or subsample_size == size:
            continue
        if subsample_size > size and check:
            raise _plate_error(name, size, subsample_size)
        plates[name] = PlateInfo(int(size), int(min(size, subsample_size)))
    if not check:
        return plates

    latent_sites = 0
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        frames = [frame.name for frame in site["cond_indep_stack"]]
        nested = [plate for plate in frames if plate in plates]
        if len(nested) > 1:
            raise ModelError(
                f"Site {name!r} sits in several subsampled plates {nested}; SMILE draws the "
                "batches of different subsample plates independently and supports them only "
                "side by side, not nested. Subsample one plate and keep the others whole."
            )
        if site["is_observed"]:
            _check_observation_is_subsampled(name, site, plates)
            continue
        latent_sites += 1
        if getattr(site["fn"], "has_enumerate_support", False) or site["fn"].support.is_discrete:
            raise ModelError(
                f"Latent site {name!r} is discrete ({type(site['fn']).__name__}); SMILE moves "
                "continuous parameters only. Marginalise it out (e.g. a mixture distribution "
                "or numpyro.contrib.funsor enumeration) or make it observed."
            )
        if nested:
            raise ModelError(
                f"Latent site {name!r} is inside the subsampled plate {nested[0]!r}: a local, "
                "per-data-point latent variable, which a mini-batch sampler only ever sees "
                "B of at a time and cannot sample correctly. Move the site out of the plate, "
                "marginalise it, or drop subsample_size (full-batch MCLMC)."
            )
    if latent_sites == 0:
        raise ModelError(
            "The model has no latent sample site (every numpyro.sample is observed), so there "
            "is nothing to sample. Add a prior site, e.g. numpyro.sample('w', dist.Normal())."
        )
    if plates:
        _check_traced_indices(model, model_args, model_kwargs, plates)
    for name, size in forgotten:  # after the errors: a model that fails gets only its error
        _warn_full_batch(name, size)
    return plates


def _warn_full_batch(name: str, size: int) -> None:
    warnings.warn(
        f"numpyro.plate({name!r}, {size}) is written for mini-batches (numpyro.subsample "
        "inside it) but has no subsample_size, so SMILE samples with full-data gradients on "
        f"all {size} points (MILE). For mini-batches give the plate subsample_size=B (e.g. "
        "mcmc.run(..., subsample_size=256) for a model that passes it on); to mean full "
        f"batch, give subsample_size={size} (or filter FullBatchWarning).",
        FullBatchWarning,
        stacklevel=3,
    )


def _check_traced_indices(model, model_args, model_kwargs, plates: dict) -> None:
    """Trace the model with traced mini-batch indices, as the sampler's compiled step does.

    Data sliced by hand with a NumPy array (``X[idx]`` for ``with plate(...) as idx``) works
    on the concrete indices used above but fails inside the compiled step with a raw tracer
    error; here it fails before anything compiles, with the fix.
    """

    def run(indices):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handlers.trace(
                without_prior_draws(handlers.seed(subsample_model, rng_seed=0))
            ).get_trace(model, *model_args, **{**model_kwargs, SUBSAMPLE_KWARG: indices})

    indices = {
        name: jax.ShapeDtypeStruct((plate.subsample_size,), jnp.int32)
        for name, plate in plates.items()
    }
    try:
        jax.eval_shape(run, indices)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as error:
        raise ModelError(
            f"The model turns the mini-batch indices of plate {next(iter(plates))!r} into "
            "NumPy values, e.g. X[idx] on a NumPy array X inside `with numpyro.plate(..., "
            "subsample_size=B) as idx`. The sampler's indices are traced JAX values: slice "
            "data with numpyro.subsample(X, event_dim=1) (event_dim=0 for a vector), or "
            "index a JAX array (jnp.asarray(X)[idx])."
        ) from error


def without_prior_draws(fn: Callable) -> Callable:
    """``fn`` (seeded) with its continuous latent sites set to ``init_to_uniform`` values instead of
    draws from their priors: the model checks need shapes and supports, not prior draws, and
    improper priors (``dist.ImproperUniform``) cannot be drawn from (NUTS never draws them
    either)."""
    return handlers.substitute(fn, substitute_fn=init_to_uniform)


def _check_observation_is_subsampled(name: str, site: dict, plates: dict) -> None:
    """An observed site in a subsampled plate must hold B values along the plate's dimension;
    N values mean the data was not sliced with ``numpyro.subsample``."""
    shape = jnp.shape(site["value"])
    for frame in site["cond_indep_stack"]:
        if frame.name not in plates:
            continue
        position = len(shape) - site["fn"].event_dim + frame.dim
        batch = plates[frame.name].subsample_size
        if 0 <= position < len(shape) and shape[position] not in (1, batch):
            raise ModelError(
                f"Observed site {name!r} in the subsampled plate {frame.name!r} has "
                f"{shape[position]} values along the plate dimension, not the mini-batch's "
                f"{batch}: its data was not sliced to the mini-batch. Pass it through "
                "numpyro.subsample(y, event_dim=0) (event_dim=1 for rows of a matrix), e.g. "
                "obs=numpyro.subsample(y, event_dim=0)."
            )


def _data_shape_hint(message: str, plates: dict) -> str | None:
    """Explain the two shape errors a mini-batched model typically raises while traced."""
    if "invalid shape of numpyro.subsample" in message:
        return (
            f"{message}. Every array subsampled in a plate must have the plate's size along "
            "the plate dimension: pass arrays of equal length (e.g. X and y with the same "
            "number of rows) and size the plate by them, numpyro.plate('data', X.shape[0], "
            "subsample_size=B)."
        )
    subsampled = [name for name, (size, batch) in plates.items() if batch and batch < size]
    if "Incompatible shapes for broadcasting" in message and subsampled:
        return (
            f"{message} inside the subsampled plate {subsampled[0]!r}. Data used inside a "
            "subsampled plate must be sliced to the mini-batch: pass it through "
            "numpyro.subsample(y, event_dim=0) (event_dim=1 for rows of a matrix) before "
            "using it, e.g. as obs=."
        )
    return None


def check_finite_data(model_args: tuple, model_kwargs: dict) -> None:
    """Raise a clear ``ValueError`` if a floating-point model argument holds NaN or inf.

    Traced values (inside ``pmap``/``jit``) are skipped: only concrete data is checked.
    """
    named = [(f"model_args[{i}]", a) for i, a in enumerate(model_args)]
    named += [(f"model_kwargs[{k!r}]", v) for k, v in model_kwargs.items()]
    for label, value in named:
        leaves = jax.tree_util.tree_leaves_with_path(value)
        for path, leaf in leaves:
            if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype"):
                continue
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                continue
            bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
            if bad:
                where = label + jax.tree_util.keystr(path)
                raise ValueError(
                    f"{where} contains {bad} non-finite value(s) (NaN or inf). SMILE needs "
                    "finite data: drop or impute those rows before calling mcmc.run. To keep "
                    "them as missing values, pass the data with a finite placeholder "
                    "(jnp.nan_to_num(y)) and the missingness as its own argument (ok = "
                    "~jnp.isnan(y)), and let the model mask those terms "
                    "(numpyro.handlers.mask(mask=ok) around the likelihood)."
                )


def split_model_args(model_args: tuple, model_kwargs: dict) -> tuple[list, Callable]:
    """Split model arguments into array leaves and everything else.

    Arrays (the data) are passed to compiled functions as arguments, so they are neither
    baked into the program as constants nor retraced when only their values change; the rest
    (``batch_size=256``, ``hidden=(16, 16)``, functions) stays static, as NumPyro's ``MCMC``
    treats model arguments by default.

    Returns:
        ``(arrays, bind)`` with ``bind(arrays) -> (model_args, model_kwargs)``.
    """
    leaves, treedef = jax.tree.flatten((tuple(model_args), dict(model_kwargs)))
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]

    def bind(arrays) -> tuple[tuple, dict]:
        supplied = iter(arrays)
        merged = [next(supplied) if array else leaf for leaf, array in zip(leaves, is_array)]
        return jax.tree.unflatten(treedef, merged)

    return [leaf for leaf, array in zip(leaves, is_array) if array], bind


class _FixedPlateIndices(Messenger):
    """Hands the named plates fixed indices and declares their size as the subsample size.

    NumPyro then scales each plate's log-likelihood by N / len(indices); with all N indices
    the plate is an ordinary full plate (no gather, no warning, and a model inspected through
    this view reads as full-batch).
    """

    def __init__(self, fn=None, indices=None):
        self.indices = indices or {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["name"] in self.indices:
            indices = self.indices[msg["name"]]
            msg["value"] = indices
            msg["args"] = (msg["args"][0], jnp.shape(indices)[0])


def subsample_model(model: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run ``model`` with its subsample plates fixed to ``kwargs[SUBSAMPLE_KWARG]``.

    Without the reserved keyword the model runs unchanged (NumPyro draws the indices).
    """
    indices = kwargs.pop(SUBSAMPLE_KWARG, None)
    if not indices:
        return model(*args, **kwargs)
    with _FixedPlateIndices(indices=indices):
        return model(*args, **kwargs)


def initialize_subsampled_model(
    rng_key: jax.Array,
    model: Callable,
    plates: dict[str, PlateInfo],
    init_strategy: Callable,
    model_args: tuple,
    model_kwargs: dict,
    shapes_only: bool = False,
) -> ModelInfo:
    """``numpyro.infer.util.initialize_model`` for a model whose plates take given indices.

    The returned ``potential_fn``/``postprocess_fn`` are generators (``dynamic_args=True``):
    call them with ``model_kwargs | {SUBSAMPLE_KWARG: {plate: indices}}`` to get a function
    of the unconstrained latent values on that batch (N / B-scaled), or with ``arange(N)``
    for the full data. Initialisation evaluates the first B points of every plate (NumPyro's
    own seeded plate would shuffle all N on CPU). ``rng_key`` may be ``(K,)`` keys, giving
    ``(K, ...)`` initial values. ``shapes_only=True`` (for callers with their own initial
    values) only traces: ``param_info`` then holds ``jax.ShapeDtypeStruct`` leaves.
    """
    if plates:
        first_batch = {name: jnp.arange(plate.subsample_size) for name, plate in plates.items()}
        model_kwargs = {**model_kwargs, SUBSAMPLE_KWARG: first_batch}
    arrays, bind = split_model_args(model_args, model_kwargs)
    built = {}

    def initial_params(rng_key, arrays):
        args, kwargs = bind(arrays)
        built["info"] = initialize_model(
            rng_key,
            partial(subsample_model, model),
            dynamic_args=True,
            init_strategy=init_strategy,
            model_args=args,
            model_kwargs=kwargs,
        )
        return built["info"].param_info

    # One compiled call (checked here, as NumPyro does, unless traced, e.g. under pmap): run
    # eagerly, NumPyro's search for a valid point compiles every
    # primitive separately (7 s of an 11 s start-up for an airfoil MLP on 2 cores). The
    # potential and postprocess generators (dynamic_args=True) hold no traced values.
    if shapes_only:
        param_info = jax.eval_shape(initial_params, rng_key, arrays)
        return built["info"]._replace(param_info=param_info, model_trace=None)
    param_info = jax.jit(initial_params)(rng_key, arrays)
    energy = param_info.potential_energy
    if not isinstance(energy, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(energy))):
        raise ModelError(
            "Cannot find valid initial parameters: the model's log density is not finite at "
            "the initial point(s) drawn by the init strategy. Check the data and priors, or "
            "pass init_params (unconstrained values) or another init_strategy."
        )
    return built["info"]._replace(param_info=param_info, model_trace=None)


class _HideObservations(Messenger):
    """Masks every observed site, leaving the prior (and Jacobians) in the log density."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["fn"] = msg["fn"].mask(False)


def prior_only_model(model: Callable) -> Callable:
    """``model`` with its likelihood switched off: its log density is the log prior."""

    def prior_model(*args, **kwargs):
        with _HideObservations():
            return model(*args, **kwargs)

    return prior_model


def flat_potential(potential_gen: Callable, unravel: Callable, bind: Callable) -> Callable:
    """The potential (negative log density) of flat parameters on a batch of the data.

    This is the one builder of that function: ``SMILEEnsemble``'s pretraining loss and the
    SGLD/SGHMC baselines of ``benchmarks.uci`` are made from it. The kernel's log density
    (``SMILE._logdensity_fn``) is the same quantity negated, ``-potential(x, indices,
    arrays)``, with the model arguments held in its closure rather than passed as ``arrays``.

    Args:
        potential_gen: ``ModelInfo.potential_fn`` of :func:`initialize_subsampled_model` (a
            generator, ``dynamic_args=True``: model arguments -> potential of unconstrained
            latent values).
        unravel: flat ``(d,)`` vector -> dict of unconstrained latent values (the second
            output of ``jax.flatten_util.ravel_pytree`` of one point).
        bind: from :func:`split_model_args`; rebuilds ``(model_args, model_kwargs)`` from its
            array leaves.

    Returns:
        ``potential(x, indices, arrays) -> U``, a scalar, where ``x`` is the flat ``(d,)``
        parameter vector (unconstrained); ``indices`` is ``{plate: (B,) int32 indices}``,
        giving the N / B-scaled mini-batch potential (``{plate: arange(N)}``: the full-data
        one), or an empty dict for a model without subsample plates; ``arrays`` are the data
        leaves returned by :func:`split_model_args` (passed as an argument, so that compiled
        callers take the data as input rather than as constants). Differentiable in ``x``;
        ``jax.vmap`` over ``x`` (and ``indices``) for several chains or members.
    """

    def potential(x, indices, arrays):
        args, kwargs = bind(arrays)
        if indices:
            kwargs = {**kwargs, SUBSAMPLE_KWARG: indices}
        return potential_gen(*args, **kwargs)(unravel(x))

    return potential


def log_density_terms(
    model: Callable, model_args: tuple, model_kwargs: dict, params: dict
) -> list[jax.Array]:
    """Every sample site's log density at unconstrained ``params``, per element (not summed).

    Their total is minus NumPyro's ``potential_energy`` (the constraining transforms'
    log-Jacobians are factor sites). Differences of two points summed term by term,
    ``sum(new - old)``, keep the precision that ``U(new) - U(old)`` loses when U is large: in
    float32 a potential of 1e6 is resolved to ~0.1, coarser than MCLMC's energy errors.
    """
    substituted = handlers.substitute(model, substitute_fn=partial(_unconstrain_reparam, params))
    log_probs, _ = compute_log_probs(substituted, model_args, model_kwargs, {}, False)
    return list(log_probs.values())


def log_likelihood(model: Callable, model_args: tuple, model_kwargs: dict, params: dict) -> Any:
    """The log likelihood at unconstrained ``params``: the observed sites' log densities,
    summed, without the prior and without the transforms' log-Jacobians (NumPyro's
    ``_<site>_log_det`` factors)."""
    substituted = handlers.substitute(model, substitute_fn=partial(_unconstrain_reparam, params))
    log_probs, trace = compute_log_probs(substituted, model_args, model_kwargs, {}, False)
    observed = [
        jnp.sum(value)
        for name, value in log_probs.items()
        if trace[name]["is_observed"] and not (name.startswith("_") and name.endswith("_log_det"))
    ]
    return sum(observed, jnp.zeros(()))


class _AllPoints(Messenger):
    """Hands the named plates all their points, ``arange(size)`` with ``size`` as the model
    declares it on this call (the training N, or a test set's): an ordinary full plate."""

    def __init__(self, fn=None, names=()):
        self.names = frozenset(names)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["name"] in self.names:
            size = msg["args"][0]
            msg["value"] = jnp.arange(size)
            msg["args"] = (size, size)


def full_data_model(model: Callable, plates: dict[str, PlateInfo]) -> Callable:
    """A view of ``model`` that always uses all data points of every subsample plate.

    ``az.from_numpyro``, ``numpyro.infer.log_likelihood`` and ``Predictive`` on this view give
    per-datum quantities over the full data instead of a random mini-batch. The plates take
    their size from the data of each call, so the view also predicts on new data of another
    size (``Predictive(kernel.model, samples)(key, X_test)``).
    """
    names = tuple(plates)

    def model_on_all_points(*args, **kwargs):
        with _AllPoints(names=names):
            return model(*args, **kwargs)

    model_on_all_points.__name__ = getattr(model, "__name__", "model") + "_full_data"
    model_on_all_points.__wrapped__ = model
    return model_on_all_points


def fixed_indices_model(model: Callable, indices: dict, suffix: str = "_subset") -> Callable:
    """A view of ``model`` whose subsample plates always see the given ``{plate: indices}``.

    The plate's log-likelihood is then scaled by N / len(indices); with ``arange(N)`` that is
    the full-data model, with a fixed subset the per-datum log-likelihood of those points.
    """

    def model_on_indices(*args, **kwargs):
        return subsample_model(model, *args, **{**kwargs, SUBSAMPLE_KWARG: indices})

    model_on_indices.__name__ = getattr(model, "__name__", "model") + suffix
    model_on_indices.__wrapped__ = model
    return model_on_indices
