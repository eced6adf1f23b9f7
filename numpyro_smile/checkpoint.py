"""Save an ensemble's chains to one ``.npz`` file and resume them (``SMILEEnsemble``).

A checkpoint holds the chains' full :class:`~numpyro_smile.SMILEState` (positions,
velocities, cached gradients, step sizes, tuner and preconditioner statistics, batch
schedules and PRNG keys; typed keys are stored as their key data and the name of their
implementation) and what is needed to continue and to check that the resuming ensemble runs
the same chains: the member count, the warmup length the kernel was configured with, the
steps done, the sampling mode, the data plates, the unconstrained parameter structure (sites,
shapes and dtypes in ravel order) and the kernel's settings. The pretrained points and the
pretraining curves travel along, so that a resumed run's ``InferenceData`` keeps its
``pretrained`` and ``pretraining`` groups.

The file is a plain ``numpy.savez`` archive (arrays plus one JSON string; no pickled code),
written to a temporary file and renamed, so an interrupted save never leaves a broken file.
Every random number of a chain derives from its state (the step's key is split from
``state.rng_key``; the mini-batch order from the batch schedule's key and count), so a resumed
chain continues exactly the stream the uninterrupted chain would have drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from numpyro_smile import sharding
from numpyro_smile._version import __version__

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "EnsembleCheckpoint",
    "load_checkpoint",
    "make_checkpoint",
    "parameter_structure",
    "restore_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "numpyro_smile.SMILEEnsemble checkpoint"
#: 2: the sampler settings are stored as ``config`` (a ``SMILEConfig``), no longer as
#: ``kernel_kwargs``, and the tuner statistics as one ``tuner`` field. 3: the state carries
#: the end-of-warmup convergence monitor (``monitor``).
CHECKPOINT_VERSION = 3
_METADATA = "__metadata__"
_STATE, _PRETRAINED, _PRETRAINING = "state", "pretrained/", "pretraining/"


@dataclasses.dataclass(frozen=True)
class EnsembleCheckpoint:
    """The chains of a :class:`~numpyro_smile.SMILEEnsemble`, on host, ready to save or resume.

    Attributes:
        state: the ``SMILEState`` leaves as NumPy arrays, by pytree path (e.g. ``".z['w0']"``),
            each with a leading ``(num_members,)`` axis except ``".rng_key"``; PRNG keys as key
            data.
        key_impls: ``{path: implementation}`` of the leaves that were typed PRNG keys.
        num_members: K, the number of chains.
        num_warmup: the warmup length the kernel was configured with (adaptation runs while
            a chain's step count is below it).
        steps: steps every chain has done (warmup included).
        mode: ``"minibatch"`` (SMILE) or ``"full_batch"`` (MILE).
        plates: ``{plate: [N, B]}`` of the training data.
        params: one member's unconstrained sites in ravel order, ``[[name, shape, dtype]]``.
        config: the sampler's settings, ``SMILEConfig.to_dict()``.
        backend: the JAX backend that ran the chains.
        pretrained_params: the members' pretrained unconstrained points, or ``None``.
        pretraining: the pretraining curves (may be empty).
    """

    state: dict[str, np.ndarray]
    key_impls: dict[str, str]
    num_members: int
    num_warmup: int
    steps: int
    mode: str
    plates: dict[str, list[int]]
    params: list
    config: dict
    backend: str
    pretrained_params: dict | None = None
    pretraining: dict = dataclasses.field(default_factory=dict)

    @property
    def phase(self) -> str:
        """``"warmup"`` if warmup steps remain, else ``"sampling"``."""
        return "warmup" if self.steps < self.num_warmup else "sampling"

    @property
    def num_samples_done(self) -> int:
        """Sampling steps done after warmup."""
        return max(0, self.steps - self.num_warmup)


def make_checkpoint(
    state: Any,
    *,
    num_warmup: int,
    mode: str,
    plates: dict,
    config: dict,
    pretrained_params: dict | None = None,
    pretraining: dict | None = None,
) -> EnsembleCheckpoint:
    """Copy a vectorized ensemble ``state`` (a ``SMILEState``) and its metadata to host."""
    arrays, key_impls = {}, {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = jax.tree_util.keystr(path)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_impls[name] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[name] = np.asarray(sharding.to_host(leaf))
    steps = np.unique(arrays[".i"])
    if steps.size != 1 or arrays[".i"].ndim != 1:
        raise ValueError(
            "make_checkpoint needs an ensemble state: every chain with a step count "
            f"(a (num_members,) field i), got i = {arrays['.i']!r}."
        )
    return EnsembleCheckpoint(
        state=arrays,
        key_impls=key_impls,
        num_members=int(arrays[".i"].shape[0]),
        num_warmup=int(num_warmup),
        steps=int(steps[0]),
        mode=mode,
        plates={name: [int(plate[0]), int(plate[1])] for name, plate in plates.items()},
        params=parameter_structure(state.z),
        config=_plain(config),
        backend=jax.default_backend(),
        pretrained_params=(
            None
            if pretrained_params is None
            else {k: np.asarray(v) for k, v in jax.device_get(pretrained_params).items()}
        ),
        pretraining={k: np.asarray(v) for k, v in (pretraining or {}).items()},
    )


def save_checkpoint(path: str | os.PathLike, checkpoint: EnsembleCheckpoint) -> Path:
    """Write ``checkpoint`` to ``path`` (exactly that name; ``.npz`` is the usual suffix)."""
    path = Path(path)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "numpyro_smile_version": __version__,
        "jax_version": jax.__version__,
        **{
            field.name: getattr(checkpoint, field.name)
            for field in dataclasses.fields(checkpoint)
            if field.name not in ("state", "pretrained_params", "pretraining")
        },
        "has_pretrained": checkpoint.pretrained_params is not None,
    }
    arrays = {_STATE + name: value for name, value in checkpoint.state.items()}
    for name, value in (checkpoint.pretrained_params or {}).items():
        arrays[_PRETRAINED + name] = value
    for name, value in checkpoint.pretraining.items():
        arrays[_PRETRAINING + name] = value
    arrays[_METADATA] = np.array(json.dumps(metadata))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> EnsembleCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``SMILEEnsemble.save_state``)."""
    with np.load(path, allow_pickle=False) as archive:
        if _METADATA not in archive.files:
            raise ValueError(
                f"{os.fspath(path)!r} is not a numpyro_smile ensemble checkpoint (no metadata); "
                "write one with SMILEEnsemble.save_state(path)."
            )
        metadata = json.loads(str(archive[_METADATA]))
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a numpyro_smile ensemble checkpoint.")
        if metadata["version"] != CHECKPOINT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has checkpoint format version {metadata['version']}; this "
                f"numpyro_smile reads version {CHECKPOINT_VERSION}. Resume it with the "
                "numpyro_smile version that wrote it (its numpyro_smile_version metadata)."
            )
        groups: dict[str, dict] = {_STATE: {}, _PRETRAINED: {}, _PRETRAINING: {}}
        for name in archive.files:
            for prefix, group in groups.items():
                if name.startswith(prefix):
                    group[name[len(prefix) :]] = archive[name]
                    break
    fields = {field.name for field in dataclasses.fields(EnsembleCheckpoint)}
    return EnsembleCheckpoint(
        state=groups[_STATE],
        pretrained_params=groups[_PRETRAINED] if metadata["has_pretrained"] else None,
        pretraining=groups[_PRETRAINING],
        **{k: v for k, v in metadata.items() if k in fields},
    )


def check_compatible(
    checkpoint: EnsembleCheckpoint,
    *,
    num_members: int,
    mode: str,
    plates: dict,
    params: list,
    config: dict,
) -> None:
    """Raise a ``ValueError`` saying what differs (and what to change) when ``checkpoint``
    cannot continue in an ensemble with these settings; warn on differing kernel settings."""
    if checkpoint.num_members != num_members:
        raise ValueError(
            f"The checkpoint holds {checkpoint.num_members} members (chains) but this ensemble "
            f"has num_members={num_members}. Construct SMILEEnsemble(..., "
            f"num_members={checkpoint.num_members}) to resume it."
        )
    if checkpoint.mode != mode:
        saved, here = _MODES[checkpoint.mode], _MODES[mode]
        fix = (
            "full_batch=True"
            if checkpoint.mode == "full_batch"
            else "full_batch=False and a model with a subsample plate"
        )
        raise ValueError(
            f"The checkpoint was sampled in {saved} mode but this ensemble samples in {here} "
            f"mode. Resume with {fix}, as in the saved run."
        )
    saved_plates = {name: tuple(plate) for name, plate in checkpoint.plates.items()}
    these_plates = {name: (int(p[0]), int(p[1])) for name, p in plates.items()}
    if mode == "full_batch":  # the sampler sees all N points: the batch size does not matter
        saved_plates = {name: plate[0] for name, plate in saved_plates.items()}
        these_plates = {name: plate[0] for name, plate in these_plates.items()}
    if saved_plates != these_plates:
        raise ValueError(
            f"The checkpoint's data plates (name: (N, B)) are {saved_plates}, this model's are "
            f"{these_plates}. Resume with the training data and batch size of the saved run."
        )
    saved_params = {name: (tuple(shape), dtype) for name, shape, dtype in checkpoint.params}
    these_params = {name: (tuple(shape), dtype) for name, shape, dtype in params}
    if checkpoint.params != params:  # [[name, shape, dtype]] in ravel order
        differences = [
            f"{name}: {saved_params.get(name, 'absent')} in the checkpoint, "
            f"{these_params.get(name, 'absent')} in this model"
            for name in sorted(set(saved_params) | set(these_params))
            if saved_params.get(name) != these_params.get(name)
        ] or ["the same sites in another ravel order"]
        raise ValueError(
            "The checkpoint's parameters (unconstrained site: (shape, dtype)) do not match this "
            f"model's: {'; '.join(differences)}. Resume with the model (architecture, data "
            "shapes and jax_enable_x64 setting) that wrote the checkpoint."
        )
    here = _plain(config)
    if here != checkpoint.config:
        changed = {
            k: (checkpoint.config.get(k), v)
            for k, v in here.items()
            if checkpoint.config.get(k) != v
        }
        warnings.warn(
            f"The checkpoint was sampled with other sampler settings (saved, here): {changed}; "
            "the chains continue with this ensemble's config. Pass the saved run's settings, "
            f"SMILEConfig(**{checkpoint.config}), to continue the same chains.",
            UserWarning,
            stacklevel=4,
        )
    if checkpoint.backend != jax.default_backend() and mode == "minibatch":
        warnings.warn(
            f"The checkpoint was sampled on {checkpoint.backend!r} and resumes on "
            f"{jax.default_backend()!r}: the mini-batch order depends on the backend, so the "
            "draws will differ from an uninterrupted run there (they remain valid).",
            UserWarning,
            stacklevel=4,
        )


def restore_state(checkpoint: EnsembleCheckpoint, template: Any) -> Any:
    """The checkpoint's state as a pytree shaped like ``template`` (a ``SMILEState`` of
    arrays or ``jax.ShapeDtypeStruct``), with typed PRNG keys restored.

    Raises:
        ValueError: a field is missing or extra (another kernel configuration), or has
            another shape or dtype.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    missing = sorted(set(expected) - set(checkpoint.state))
    extra = sorted(set(checkpoint.state) - set(expected))
    if missing or extra:
        raise ValueError(
            "The checkpoint's sampler state does not fit this ensemble's kernel (fields only in "
            f"the kernel: {missing}; only in the checkpoint: {extra}): the kernel is configured "
            "differently (precondition, adapt, batch_schedule, L, ...). Construct the ensemble "
            f"with the saved run's config=SMILEConfig(**{checkpoint.config})."
        )
    leaves = []
    for name, want in expected.items():
        value = checkpoint.state[name]
        if name in checkpoint.key_impls:
            leaves.append(jax.random.wrap_key_data(value, impl=checkpoint.key_impls[name]))
            continue
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            leaves.append(value)  # raw key data where this run has typed keys: both work
            continue
        if value.shape != tuple(want.shape) or value.dtype != want.dtype:
            raise ValueError(
                f"The checkpoint's state field {name} has shape {value.shape} and dtype "
                f"{value.dtype}; this ensemble expects {tuple(want.shape)} and {want.dtype}. "
                "Resume with the model, num_members and jax_enable_x64 setting of the saved run."
            )
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


_MODES = {"minibatch": "mini-batch (SMILE)", "full_batch": "full-batch (MILE)"}


def parameter_structure(z: Any) -> list:
    """``[[site, shape, dtype]]`` of one member's unconstrained values, in ravel order, from
    ``z`` with a leading member axis (arrays or ``jax.ShapeDtypeStruct``)."""
    structure = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(z)[0]:
        name = ".".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)
        structure.append([name, list(leaf.shape[1:]), str(np.dtype(leaf.dtype))])
    return structure


def _plain(kwargs: dict) -> dict:
    """The JSON-representable part of ``kwargs`` (tuples as lists), for comparison."""
    plain = {}
    for name, value in sorted(kwargs.items()):
        if isinstance(value, np.generic):
            value = value.item()
        try:
            plain[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return plain
