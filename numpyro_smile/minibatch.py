"""Reading a NumPyro model's subsample plates and building its mini-batch potential.

A model marks its likelihood with ``numpyro.plate(name, N, subsample_size=B)``. SMILE feeds
the plate explicit indices every step, through a reserved keyword argument that a thin
wrapper turns into ``handlers.substitute(data={name: indices})``; NumPyro then scales the
plate's log-likelihood by N / B and counts the prior once, which is the unbiased mini-batch
potential. Feeding ``arange(N)`` instead gives the full-data potential (scale 1), which is also
what :func:`full_data_model` does for ArviZ and ``Predictive``.

Batch indices cost O(B) per step: ``"epoch"`` walks a per-chain random permutation that is
redrawn once per epoch (O(N) once every N / B steps); ``"with_replacement"`` draws B uniform
indices. ``random.choice(replace=False)`` per step (O(N) each step) is never used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.primitives import Messenger

__all__ = [
    "SUBSAMPLE_KWARG",
    "BATCH_SCHEDULES",
    "PlateInfo",
    "ModelError",
    "inspect_model",
    "check_finite_data",
    "subsample_model",
    "full_data_model",
    "full_data_indices",
    "EpochBatchState",
    "batch_schedule_init",
    "batch_schedule_next",
    "take_batch",
    "epoch_is_over",
]

#: Reserved model keyword through which the kernel passes ``{plate_name: indices}``.
SUBSAMPLE_KWARG = "_smile_subsample_indices"

BATCH_SCHEDULES = ("epoch", "with_replacement")


class ModelError(ValueError):
    """A model SMILE cannot sample as written; the message says what to change."""


class PlateInfo(NamedTuple):
    """A subsample plate: ``size`` N data points, ``subsample_size`` B per step."""

    size: int
    subsample_size: int


class _PlateInspector(Messenger):
    """Records every plate and hands subsampled plates fixed indices (no RNG needed)."""

    def __init__(self, fn=None):
        self.plates: dict[str, tuple[int, int | None]] = {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "plate":
            return
        size, subsample_size = msg["args"]
        self.plates[msg["name"]] = (size, subsample_size)
        if msg["value"] is None:
            msg["value"] = jnp.arange(min(size, subsample_size))


def _plate_error(name: str, size: int, subsample_size: int) -> ModelError:
    return ModelError(
        f"numpyro.plate({name!r}, {size}, subsample_size={subsample_size}): the mini-batch "
        f"size is larger than the data ({subsample_size} > {size}). Use subsample_size <= "
        f"{size}, or drop subsample_size to sample with full-data gradients."
    )


def inspect_model(model: Callable, model_args: tuple, model_kwargs: dict) -> dict[str, PlateInfo]:
    """Find the subsample plates of ``model`` and reject what SMILE cannot sample.

    Returns:
        ``{plate_name: PlateInfo(N, B)}`` for every plate with ``subsample_size < size``; an
        empty dict means a full-batch model (MCLMC with MILE tuning).

    Raises:
        ModelError: a plate with ``subsample_size > size``; a discrete latent site; a latent
            site inside a subsampled plate (a per-datum local latent); no latent site at all;
            or a subsampled plate nested in another one.
    """
    inspector = _PlateInspector(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_trace = handlers.trace(handlers.seed(inspector, rng_seed=0)).get_trace(
            *model_args, **model_kwargs
        )
    plates: dict[str, PlateInfo] = {}
    for name, (size, subsample_size) in inspector.plates.items():
        if subsample_size is None or subsample_size == size:
            continue
        if subsample_size > size:
            raise _plate_error(name, size, subsample_size)
        plates[name] = PlateInfo(int(size), int(subsample_size))

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
    return plates


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
                    "finite data: drop or impute those rows (or mask them with "
                    "numpyro.handlers.mask) before calling mcmc.run."
                )


def subsample_model(model: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run ``model`` with its subsample plates fixed to ``kwargs[SUBSAMPLE_KWARG]``.

    Without the reserved keyword the model runs unchanged (NumPyro draws the indices).
    """
    indices = kwargs.pop(SUBSAMPLE_KWARG, None)
    if not indices:
        return model(*args, **kwargs)
    with warnings.catch_warnings():
        # Full-data indices differ in length from subsample_size; NumPyro warns, harmlessly.
        warnings.filterwarnings("ignore", message="subsample_size does not match")
        with handlers.substitute(data=indices):
            return model(*args, **kwargs)


def full_data_indices(plates: dict[str, PlateInfo]) -> dict[str, jax.Array]:
    """``{name: arange(N)}`` for every subsample plate."""
    return {name: jnp.arange(info.size) for name, info in plates.items()}


def full_data_model(model: Callable, plates: dict[str, PlateInfo]) -> Callable:
    """A view of ``model`` that always uses all N data points of every subsample plate.

    ``az.from_numpyro``, ``numpyro.infer.log_likelihood`` and ``Predictive`` on this view give
    per-datum quantities over the full data instead of a random mini-batch.
    """

    def model_on_full_data(*args, **kwargs):
        return subsample_model(model, *args, **{**kwargs, SUBSAMPLE_KWARG: full_data_indices(plates)})

    model_on_full_data.__name__ = getattr(model, "__name__", "model") + "_full_data"
    model_on_full_data.__wrapped__ = model
    return model_on_full_data


class EpochBatchState(NamedTuple):
    """Per-chain epoch schedule: a permutation of the N indices and the next offset."""

    permutation: jax.Array
    offset: jax.Array


def batch_schedule_init(
    rng_key: jax.Array, plate: PlateInfo, schedule: str
) -> EpochBatchState | None:
    """Initial schedule state of one plate (``None`` for ``"with_replacement"``)."""
    if schedule == "with_replacement":
        return None
    permutation = jax.random.permutation(rng_key, plate.size).astype(jnp.int32)
    return EpochBatchState(permutation, jnp.zeros((), jnp.int32))


def take_batch(state: EpochBatchState, plate: PlateInfo) -> tuple[EpochBatchState, jax.Array]:
    """Slice the next ``(B,)`` indices off the permutation (the epoch must have room left)."""
    indices = jax.lax.dynamic_slice(state.permutation, (state.offset,), (plate.subsample_size,))
    return EpochBatchState(state.permutation, state.offset + plate.subsample_size), indices


def epoch_is_over(state: EpochBatchState, plate: PlateInfo) -> jax.Array:
    """True when fewer than B unused indices are left (the last N mod B points are skipped)."""
    return state.offset + plate.subsample_size > plate.size


def batch_schedule_next(
    state: EpochBatchState | None, rng_key: jax.Array, plate: PlateInfo
) -> tuple[EpochBatchState | None, jax.Array]:
    """The next ``(B,)`` batch of indices of one chain and the advanced schedule state.

    ``"epoch"`` (a state is given): consecutive slices of the permutation, and a fresh
    permutation once the epoch is over. ``"with_replacement"`` (``state is None``): B uniform
    draws.
    """
    if state is None:
        indices = jax.random.randint(rng_key, (plate.subsample_size,), 0, plate.size, jnp.int32)
        return None, indices
    state = jax.lax.cond(
        epoch_is_over(state, plate),
        lambda: batch_schedule_init(rng_key, plate, "epoch"),
        lambda: state,
    )
    return take_batch(state, plate)
