"""``SMILEEnsemble``: the MILE/SMILE recipe end to end, from a model and data to ArviZ.

1. **Pretraining**: K members are trained to a mode of the posterior (MAP in unconstrained
   space) by an optax optimizer on the model's mini-batch potential, each from its own random
   initial point and with its own batch order, optionally with early stopping on validation
   data (:mod:`numpyro_smile.pretrain`). Together they are a deep ensemble.
2. **Sampling**: one :class:`~numpyro_smile.SMILE` chain per member starts at its pretrained
   point, tunes during ``num_warmup`` steps and keeps every ``thinning``-th of ``num_samples``
   steps. Each member draws its own mini-batches, so R-hat across members means what it
   usually means. ``full_batch=True`` samples with full-data gradients instead (MILE).
3. **InferenceData**: ``posterior`` (chain = member), ``sample_stats``, ``log_likelihood`` over
   the full data (in chunks), ``observed_data``, optionally ``posterior_predictive``, and the
   ``pretrained`` points and ``pretraining`` loss curves as their own groups
   (:mod:`numpyro_smile.inference_data`).

Members are vectorized with ``vmap`` on one device and sharded over several with
``jax.sharding`` (a 1-D mesh over the member axis; the data is replicated). Every phase runs as
a few calls of one compiled function each (a traced step count), which gives a progress bar
and lets draws move to host memory chunk by chunk while the next chunk runs.

Multi-host: call ``jax.distributed.initialize()`` on every host first; ``jax.devices()`` then
lists all hosts' devices and the member mesh spans them (pass ``devices=`` to restrict it).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer.util import constrain_fn
from numpyro.util import is_prng_key

from numpyro_smile import (
    batching,
    checkpoint,
    diagnostics,
    evaluation,
    inference_data,
    memory,
    model_views,
    pretrain,
    replay,
    tuning,
)
from numpyro_smile.kernel import DEFAULT_INIT_STRATEGY, SMILE, SMILEState, check_init_params

__all__ = ["SMILEEnsemble"]

#: Number of progress updates (and compiled-loop calls) per phase.
PROGRESS_CHUNKS = 20


def default_pretrain_optimizer() -> optax.GradientTransformation:
    """AdamW with the SMILE papers' UCI settings (learning rate 1e-2, weight decay 5e-3)."""
    return optax.adamw(learning_rate=1e-2, weight_decay=5e-3)


class SMILEEnsemble:
    """Pretrain ``num_members`` members, run one SMILE chain from each, return InferenceData.

    Args:
        model: a NumPyro model. Its likelihood plate's ``subsample_size`` sets the sampling
            mini-batch size (SMILE); without one, sampling uses the full data (MILE).
        num_members: K, the number of members and chains.
        num_warmup: tuning steps per chain (the papers use 50,000; 5,000 is a laptop budget).
        num_samples: sampling steps per chain after warmup.
        thinning: keep every ``thinning``-th sampling step: ``num_samples // thinning`` draws per
            member (the papers: 10,000 steps, thinning 10, 1,000 draws).
        full_batch: sample with full-data gradients (MILE: MCLMC with MILE's tuning, including
            its energy-variance schedule ``desired_energy_var=(0.5, 0.1)``; ``kernel_kwargs``
            may override it) even when the model subsamples; pretraining still uses the
            model's mini-batches.
        pretrain_optimizer: optax optimizer for pretraining (default
            :func:`default_pretrain_optimizer`: AdamW, lr 1e-2, weight decay 5e-3).
        pretrain_epochs: maximum pretraining epochs (an epoch is N // batch steps; for a model
            without a subsample plate one full-data step). 0 skips pretraining.
        pretrain_steps: alternatively, the number of optimizer steps (overrides epochs; early
            stopping is then checked every epoch's worth of steps).
        pretrain_batch_size: mini-batch size for pretraining (default 64, the papers'; ``None``
            uses the model's ``subsample_size``). Ignored without a subsample plate.
        patience: with validation data, a member stops after this many epochs without a
            better validation loss and is restored to its best parameters. ``None``: train all
            epochs, still keeping the best-validation parameters.
        init_strategy: NumPyro init strategy for the members' initial points.
        kernel_kwargs: extra arguments of :class:`~numpyro_smile.SMILE` (e.g. ``step_size``,
            ``precondition=False``, ``adapt=False`` for the naive variant).
        log_likelihood: ``True``: the ``log_likelihood`` group over all N data points;
            an int m: over a fixed random subset of m points per subsample plate (for huge N);
            ``False``: no group.
        posterior_predictive: add a ``posterior_predictive`` group (one replicate per draw).
        draws_per_chunk: draws per member produced per compiled call; each chunk is copied to
            host memory while the next one runs, so the device holds at most two chunks
            (default: a twentieth of the draws, within a 64 MiB chunk budget).
        devices: devices to shard members over (default: all devices of the default backend).
            Members are split evenly over the largest number of them that divides K.
        progress_bar: show progress (default: only on a terminal, and never when ``$CI`` is set).
        memory_budget: bytes one chunk of the replays (``log_likelihood``,
            ``posterior_predictive``, :meth:`evaluate`) may hold at its peak, the network's
            activations on all data points included (default 256 MiB,
            :data:`numpyro_smile.memory.DEFAULT_REPLAY_BUDGET`).

    After :meth:`run`: ``last_state`` (the chains' :class:`~numpyro_smile.SMILEState`),
    ``pretrained_params`` (the members' unconstrained starting points, e.g. for
    ``MCMC(NUTS(model)).run(..., init_params=...)``), ``kernel``, ``timings`` (seconds per
    phase; compilation counted separately) and ``memory`` (bytes: ``peak_rss_bytes`` of the
    process, ``device_peak_bytes`` where the backend reports it, ``budget_bytes`` and, per
    replay, its chunking and estimated ``chunk_peak_bytes``).

    Checkpoints: :meth:`save_state` writes the chains' full state to one file;
    ``run(..., resume_from=path)`` continues them (without pretraining or the warmup already
    done) in this or a new ensemble, and draws exactly what the uninterrupted run would have;
    :meth:`warmup` pretrains and warms up only, for a checkpoint before sampling.

    Example::

        ensemble = SMILEEnsemble(model, num_members=4, num_warmup=2000, num_samples=2000,
                                 thinning=10)
        idata = ensemble.run(jax.random.key(0), X_train, y_train, validation=(X_val, y_val))
        ensemble.evaluate(idata, X_test, y_test)   # {"lppd": ..., "rmse": ..., ...}
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_members: int = 8,
        num_warmup: int = 5000,
        num_samples: int = 10000,
        thinning: int = 10,
        full_batch: bool = False,
        pretrain_optimizer: optax.GradientTransformation | None = None,
        pretrain_epochs: int = 200,
        pretrain_steps: int | None = None,
        pretrain_batch_size: int | None = 64,
        patience: int | None = 10,
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        kernel_kwargs: dict | None = None,
        log_likelihood: bool | int = True,
        posterior_predictive: bool = False,
        draws_per_chunk: int | None = None,
        devices: Sequence[jax.Device] | None = None,
        progress_bar: bool | None = None,
        memory_budget: int | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a NumPyro model (a callable), got {model!r}.")
        _check_int("num_members", num_members, 1)
        _check_int("num_warmup", num_warmup, 0)
        _check_int("num_samples", num_samples, 1)
        _check_int("thinning", thinning, 1)
        if thinning > num_samples:
            raise ValueError(
                f"thinning ({thinning}) is larger than num_samples ({num_samples}): no draw "
                "would be kept. Use thinning <= num_samples."
            )
        _check_int("pretrain_epochs", pretrain_epochs, 0)
        if pretrain_steps is not None:
            _check_int("pretrain_steps", pretrain_steps, 0)
        if pretrain_batch_size is not None:
            _check_int("pretrain_batch_size", pretrain_batch_size, 1)
        if patience is not None:
            _check_int("patience", patience, 1)
        if draws_per_chunk is not None:
            _check_int("draws_per_chunk", draws_per_chunk, 1)
        if not isinstance(log_likelihood, bool):
            _check_int("log_likelihood (a subset size)", log_likelihood, 1)
        memory.check_budget(memory_budget)
        kernel_kwargs = dict(kernel_kwargs or {})
        reserved = {"model", "potential_fn", "data_size", "subsample_size"} & set(kernel_kwargs)
        if reserved:
            raise ValueError(
                f"kernel_kwargs must not set {sorted(reserved)}: the ensemble passes its model."
            )
        self._model = model
        self.num_members = num_members
        self.num_warmup = num_warmup
        self.num_samples = num_samples
        self.thinning = thinning
        self.full_batch = full_batch
        self.pretrain_optimizer = pretrain_optimizer or default_pretrain_optimizer()
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_steps = pretrain_steps
        self.pretrain_batch_size = pretrain_batch_size
        self.patience = patience
        self.init_strategy = init_strategy
        self.kernel_kwargs = kernel_kwargs
        self.log_likelihood = log_likelihood
        self.posterior_predictive = posterior_predictive
        self.draws_per_chunk = draws_per_chunk
        self.devices = list(devices) if devices is not None else None
        self.progress_bar = progress_bar
        self.memory_budget = memory_budget
        self.memory: dict[str, Any] = {}
        self.kernel: SMILE | None = None
        self.last_state: SMILEState | None = None
        self.timings: dict[str, float] = {}
        self.pretrained_params: dict | None = None
        self.post_warmup_state: SMILEState | None = None
        self._advance = None
        self._plates: dict[str, batching.PlateInfo] = {}
        self._pretraining: dict = {}
        self._kernel_num_warmup = num_warmup  # the warmup length the kernel is built with
        self._stop_after_warmup = False

    @property
    def model(self) -> Callable:
        """The user's model."""
        return self._model

    @property
    def subsample_plates(self) -> dict[str, batching.PlateInfo]:
        """``{name: PlateInfo(N, B)}`` of the training data, found by :meth:`run`."""
        return dict(self._plates)

    @property
    def num_draws(self) -> int:
        """Draws kept per member: ``num_samples // thinning``."""
        return self.num_samples // self.thinning

    # ------------------------------------------------------------------ run

    def run(
        self,
        rng_key: jax.Array,
        *model_args: Any,
        validation: tuple | None = None,
        init_params: dict | None = None,
        resume_from: str | os.PathLike | checkpoint.EnsembleCheckpoint | SMILEState | None = None,
        **model_kwargs: Any,
    ) -> az.InferenceData:
        """Pretrain, sample and return the ensemble's ``arviz.InferenceData``.

        Args:
            rng_key: a JAX PRNG key; the same key gives the same draws.
            *model_args: the model's positional arguments (the training data), as for
                ``mcmc.run``.
            **model_kwargs: the model's keyword arguments (options), as for ``mcmc.run``.
            validation: held-out data for early stopping, as the model's positional
                arguments (e.g. ``(X_val, y_val)``); ``model_kwargs`` are reused.
            init_params: the members' starting points instead of the init strategy's:
                unconstrained values per latent site with a leading ``(num_members,)`` axis
                (e.g. ``pretrained_params`` of an earlier run, or your own trained networks).
                Pretraining starts from them; with ``pretrain_epochs=0`` the chains do.
            resume_from: continue saved chains instead of starting new ones: a file written
                by :meth:`save_state`, a loaded
                :class:`~numpyro_smile.checkpoint.EnsembleCheckpoint`, or a ``SMILEState``
                of this ensemble (e.g. ``post_warmup_state``). Pretraining is skipped, the
                warmup left (of the saved run's ``num_warmup``) is finished, and
                ``num_samples`` further steps are sampled; the draws continue exactly those of
                an uninterrupted run. Pass the same training data; ``rng_key`` then only
                seeds the post-processing (posterior predictive, log-likelihood subset).
        """
        if not is_prng_key(rng_key):
            raise TypeError(
                "rng_key must be a single JAX PRNG key, e.g. jax.random.key(0); got "
                f"{getattr(rng_key, 'shape', type(rng_key).__name__)}."
            )
        if resume_from is not None:
            if validation is not None or init_params is not None:
                raise ValueError(
                    "resume_from continues saved chains: validation and init_params (for "
                    "pretraining and new chains) cannot be combined with it."
                )
            return self._resume(rng_key, resume_from, model_args, model_kwargs)
        start = time.perf_counter()
        self.timings = {"compile_s": 0.0}
        model_views.check_finite_data(model_args, model_kwargs)
        self._plates = model_views.inspect_model(self._model, model_args, model_kwargs)
        validation_loss = None
        if validation is not None:
            if not isinstance(validation, (tuple, list)):
                raise TypeError(
                    "validation must be a tuple of the model's positional arguments on the "
                    f"held-out data, e.g. (X_val, y_val); got {type(validation).__name__}."
                )
            validation_loss = self._validation_loss_fn(tuple(validation), model_kwargs)
        mesh = _member_mesh(self.devices, self.num_members)
        arrays, bind = model_views.split_model_args(model_args, model_kwargs)
        arrays = _replicate(arrays, mesh)
        key_init, key_pretrain, key_chains, key_post = jax.random.split(rng_key, 4)

        with _Progress(self._progress_total(), self.progress_bar) as progress:
            info = self._model_info(key_init, model_args, model_kwargs, init_params is not None)
            initial = info.param_info.z
            if init_params is not None:
                one_member = jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), initial
                )
                check_init_params(init_params, one_member, self.num_members)
                initial = jax.tree.map(jnp.asarray, init_params)
            unravel = ravel_pytree(jax.tree.map(lambda a: a[0], initial))[1]
            positions = jax.vmap(lambda z: ravel_pytree(z)[0])(initial)
            positions, pretraining = self._pretrain(
                info.potential_fn,
                unravel,
                positions,
                validation_loss,
                arrays,
                bind,
                mesh,
                key_pretrain,
                progress,
            )
            self.pretrained_params = jax.device_get(jax.vmap(unravel)(positions))
            self._pretraining = pretraining
            state = self._init_chains(
                key_chains, self.pretrained_params, model_args, model_kwargs, mesh
            )
            state = self._warmup(state, arrays, bind, mesh, progress)
            self.post_warmup_state = state
            if self._stop_after_warmup:
                self.last_state = state
                self.timings["total_s"] = time.perf_counter() - start
                return None
            draws, stats, state = self._sample(state, arrays, bind, mesh, progress)
        self.last_state = state
        return self._to_inference_data(
            model_args, model_kwargs, draws, stats, key_post, self._attrs(mesh), start
        )

    def _to_inference_data(
        self, model_args, model_kwargs, draws, stats, key_post, attrs, start
    ) -> az.InferenceData:
        post_start = time.perf_counter()
        replays: dict = {}
        idata = inference_data.to_inference_data(
            self._model,
            model_args,
            model_kwargs,
            subsample_plates=self._plates,
            draws=draws,
            sample_stats=stats,
            pretrained=self.pretrained_params,
            pretraining=self._pretraining,
            rng_key=key_post,
            log_likelihood=self.log_likelihood,
            posterior_predictive=self.posterior_predictive,
            attrs=attrs,
            memory_budget=self.memory_budget,
            memory_stats=replays,
        )
        self.memory = {
            "peak_rss_bytes": memory.peak_rss_bytes(),
            "device_peak_bytes": memory.device_peak_bytes(),
            "budget_bytes": memory.check_budget(self.memory_budget),
            **replays,
        }
        self.timings["postprocess_s"] = time.perf_counter() - post_start
        self.timings["total_s"] = time.perf_counter() - start
        for name, seconds in self.timings.items():
            idata.sample_stats.attrs[name] = round(seconds, 3)
        diagnostics.check_resets(self.last_state, self.kernel, label="members")
        return idata

    def warmup(
        self,
        rng_key: jax.Array,
        *model_args: Any,
        validation: tuple | None = None,
        init_params: dict | None = None,
        **model_kwargs: Any,
    ) -> None:
        """Pretrain and warm up the chains without sampling (as ``MCMC.warmup``).

        Sets ``post_warmup_state`` (and ``last_state``) and ``pretrained_params``. Then
        :meth:`save_state` writes a checkpoint from which ``run(..., resume_from=...)``
        samples only; ``run(rng_key, *model_args, resume_from=ensemble.post_warmup_state)``
        continues in memory. Arguments as for :meth:`run`.
        """
        self._stop_after_warmup = True
        try:
            self.run(
                rng_key, *model_args, validation=validation, init_params=init_params, **model_kwargs
            )
        finally:
            self._stop_after_warmup = False

    def to_checkpoint(self, state: SMILEState | None = None) -> checkpoint.EnsembleCheckpoint:
        """The chains' state (default ``last_state``) and what resuming needs, on host."""
        state = self.last_state if state is None else state
        if state is None or self.kernel is None:
            raise RuntimeError(
                "There is no state to save yet: call run() or warmup() first (or pass state=)."
            )
        return self._checkpoint_of(state)

    def _checkpoint_of(self, state: SMILEState) -> checkpoint.EnsembleCheckpoint:
        return checkpoint.make_checkpoint(
            state,
            num_warmup=self._kernel_num_warmup,
            mode=self._mode(),
            plates=self._plates,
            kernel_kwargs=self.kernel_kwargs,
            pretrained_params=self.pretrained_params,
            pretraining=self._pretraining,
        )

    def save_state(self, path: str | os.PathLike, state: SMILEState | None = None) -> Path:
        """Write the chains' full state to one ``.npz`` file, to resume with
        ``run(rng_key, *model_args, resume_from=path)`` (in a new process if need be).

        Args:
            path: the file to write (exactly that name; written atomically).
            state: the state to save (default ``last_state``: after :meth:`run`, the end of
                sampling; after :meth:`warmup`, the end of warmup).

        Returns:
            The path written.

        The file holds positions, velocities, cached gradients, step sizes, the tuner and
        preconditioner statistics, the batch schedules and the PRNG keys (see
        :mod:`numpyro_smile.checkpoint`), the warmup length and steps done, the sampling mode,
        data plates and parameter structure (checked on resume), and the pretrained points and
        pretraining curves (carried into the resumed run's ``InferenceData``).
        """
        return checkpoint.save_checkpoint(path, self.to_checkpoint(state))

    def _model_info(self, key, model_args, model_kwargs, shapes_only: bool):
        """NumPyro's model info (potential, transforms) and, unless ``shapes_only``, one
        initial point per member from the init strategy."""
        return model_views.initialize_subsampled_model(
            jax.random.split(key, self.num_members),
            self._model,
            self._plates,
            self.init_strategy,
            model_args,
            model_kwargs,
            shapes_only=shapes_only,
        )

    def _mode(self) -> str:
        return "full_batch" if self.full_batch or not self._plates else "minibatch"

    def _resume(self, rng_key, resume_from, model_args, model_kwargs) -> az.InferenceData:
        """``run(..., resume_from=...)``: restore the chains, finish warmup, sample."""
        start = time.perf_counter()
        self.timings = {"compile_s": 0.0}
        model_views.check_finite_data(model_args, model_kwargs)
        self._plates = model_views.inspect_model(self._model, model_args, model_kwargs)
        if isinstance(resume_from, SMILEState):  # with this ensemble's metadata
            saved = self._checkpoint_of(resume_from)
        elif isinstance(resume_from, checkpoint.EnsembleCheckpoint):
            saved = resume_from
        else:
            saved = checkpoint.load_checkpoint(resume_from)
        key_init, _, key_chains, key_post = jax.random.split(rng_key, 4)
        info = self._model_info(key_init, model_args, model_kwargs, shapes_only=True)
        shapes = info.param_info.z
        checkpoint.check_compatible(
            saved,
            num_members=self.num_members,
            mode=self._mode(),
            plates=self._plates,
            params=checkpoint.parameter_structure(shapes),
            kernel_kwargs=self.kernel_kwargs,
        )
        mesh = _member_mesh(self.devices, self.num_members)
        arrays, bind = model_views.split_model_args(model_args, model_kwargs)
        arrays = _replicate(arrays, mesh)
        self.pretrained_params = saved.pretrained_params
        self._pretraining = dict(saved.pretraining)
        remaining = max(0, saved.num_warmup - saved.steps)
        with _Progress(remaining + self.num_samples, self.progress_bar) as progress:
            template = self._init_chains(
                key_chains, shapes, model_args, model_kwargs, mesh, saved.num_warmup, True
            )
            state = checkpoint.restore_state(saved, template)
            state = _shard_members(jax.device_put(state), mesh, self.num_members)
            state = self._warmup(state, arrays, bind, mesh, progress, remaining)
            self.post_warmup_state = state
            draws, stats, state = self._sample(state, arrays, bind, mesh, progress)
        self.last_state = state
        attrs = self._attrs(mesh) | {"num_warmup": saved.num_warmup, "resumed_at_step": saved.steps}
        return self._to_inference_data(
            model_args, model_kwargs, draws, stats, key_post, attrs, start
        )

    def evaluate(
        self, idata: az.InferenceData, *model_args: Any, group: str = "posterior", **kwargs: Any
    ) -> dict[str, float]:
        """Predictive metrics of ``idata[group]`` on held-out data: see
        :func:`numpyro_smile.evaluation.evaluate` (``group="pretrained"``: the deep ensemble).
        """
        kwargs.setdefault("memory_budget", self.memory_budget)
        return evaluation.evaluate(self._model, idata, *model_args, group=group, **kwargs)

    # ------------------------------------------------------------------ phases

    def _progress_total(self) -> int:
        sampling = 0 if self._stop_after_warmup else self.num_samples
        return self._pretrain_length() + self.num_warmup + sampling

    def _pretrain_length(self) -> int:
        return self.pretrain_epochs if self.pretrain_steps is None else self.pretrain_steps

    def _pretrain_plates(self) -> tuple[tuple[str, batching.PlateInfo], ...]:
        plates = []
        for name, plate in self._plates.items():
            batch = self.pretrain_batch_size or plate.subsample_size
            plates.append((name, batching.PlateInfo(plate.size, min(batch, plate.size))))
        return tuple(plates)

    def _validation_loss_fn(self, validation_args: tuple, model_kwargs: dict) -> tuple:
        """``(loss, arrays)``: ``loss(x, unravel, arrays)`` is the mean negative
        log-likelihood per held-out point of the flat parameters ``x``."""
        model_views.check_finite_data(validation_args, model_kwargs)
        plates = model_views.inspect_model(self._model, validation_args, model_kwargs, check=False)
        view = model_views.full_data_model(self._model, plates)
        arrays, bind = model_views.split_model_args(validation_args, model_kwargs)

        def validation_loss(x, unravel, arrays):
            args, kwargs = bind(arrays)
            params = constrain_fn(view, args, kwargs, unravel(x))
            observed = replay.observations_fn(view, args, kwargs, False)(params, jax.random.key(0))[
                "log_likelihood"
            ]
            total = sum(jnp.sum(v) for v in observed.values())
            return -total / sum(jnp.size(v) for v in observed.values())

        return validation_loss, arrays

    def _pretrain(
        self,
        potential_gen,
        unravel,
        positions,
        validation_loss,
        arrays,
        bind,
        mesh,
        key,
        progress,
    ):
        """Train the members; returns ``(positions (K, d), pretraining curves)``."""
        length = self._pretrain_length()
        if length == 0:
            return positions, {}
        plates = self._pretrain_plates()
        num_data = plates[0][1].size if plates else 1
        steps_per_epoch = plates[0][1].size // plates[0][1].subsample_size if plates else 1
        if self.pretrain_steps is not None:
            num_epochs = math.ceil(self.pretrain_steps / steps_per_epoch)
            steps_per_epoch = min(steps_per_epoch, self.pretrain_steps)
        else:
            num_epochs = self.pretrain_epochs
        validation_arrays = []
        if validation_loss is not None:
            validation_loss, validation_arrays = validation_loss
        validation_arrays = _replicate(validation_arrays, mesh)
        chunk = max(1, math.ceil(num_epochs / PROGRESS_CHUNKS))

        potential = model_views.flat_potential(potential_gen, unravel, bind)

        def loss_fn(x, indices, arrays):
            return potential(x, indices, arrays) / num_data

        def run_epochs(state, count, arrays, validation_arrays):
            return pretrain.pretrain_epochs(
                state,
                count,
                loss_fn=lambda x, idx: loss_fn(x, idx, arrays),
                optimizer=self.pretrain_optimizer,
                plates=plates,
                steps_per_epoch=steps_per_epoch,
                buffer_size=chunk,
                validation_loss_fn=(
                    None
                    if validation_loss is None
                    else lambda x: validation_loss(x, unravel, validation_arrays)
                ),
                patience=None if validation_loss is None else self.patience,
            )

        state = pretrain.pretrain_init(positions, self.pretrain_optimizer, plates, key)
        state = _shard_members(state, mesh, self.num_members)
        elapsed = self._phase_timer()
        compiled = self._compile(run_epochs, state, 1, arrays, validation_arrays)
        train_curve, validation_curve = [], []
        done = 0
        while done < num_epochs:
            count = min(chunk, num_epochs - done)
            state, train, valid = compiled(state, count, arrays, validation_arrays)
            train_curve.append(np.asarray(train)[:count])
            validation_curve.append(np.asarray(valid)[:count])
            done += count
            stopped = validation_loss is not None and self.patience and bool(jnp.all(state.stopped))
            progress.update(
                (count if self.pretrain_steps is None else count * steps_per_epoch),
                "pretraining",
            )
            if stopped:
                break
        progress.update(max(0, length - progress.phase_done("pretraining")), "pretraining")
        self.timings["pretrain_s"] = elapsed()
        curves = {"train_loss": np.concatenate(train_curve).T}
        if validation_loss is not None:
            curves["validation_loss"] = np.concatenate(validation_curve).T
            curves["best_epoch"] = np.asarray(state.best_epoch)
        curves["num_epochs"] = np.full(self.num_members, done)
        return state.best_position, curves

    def _init_chains(
        self, key, init_params, model_args, model_kwargs, mesh, num_warmup=None, shapes_only=False
    ) -> SMILEState:
        """Build the kernel (for ``num_warmup`` warmup steps, default ``self.num_warmup``)
        and the chains' initial state; ``shapes_only``: only its shapes (to resume a state)."""
        model = self._model
        if self.full_batch and self._plates:
            model = model_views.full_data_model(self._model, self._plates)
        # The papers' recipe: MILE's energy-variance schedule, unless kernel_kwargs says else.
        kernel_kwargs = {"desired_energy_var": tuning.MILE_ENERGY_VAR, **self.kernel_kwargs}
        self.kernel = SMILE(model, init_strategy=self.init_strategy, **kernel_kwargs)
        self._advance = None  # compiled for this kernel and these shapes
        self._kernel_num_warmup = self.num_warmup if num_warmup is None else num_warmup
        start = time.perf_counter()

        def init(keys, init_params):
            return self.kernel.init(
                keys,
                self._kernel_num_warmup,
                init_params=init_params,
                model_args=model_args,
                model_kwargs=model_kwargs,
            )

        keys = jax.random.split(key, self.num_members)
        if shapes_only:
            state = jax.eval_shape(init, keys, init_params)
        else:
            state = init(keys, _shard_members(init_params, mesh, self.num_members))
        self.timings["init_s"] = time.perf_counter() - start
        return state if shapes_only else _shard_members(state, mesh, self.num_members)

    def _warmup(self, state, arrays, bind, mesh, progress, num_steps=None) -> SMILEState:
        """``num_steps`` (default ``num_warmup``) kernel steps in a few compiled calls."""
        num_steps = self.num_warmup if num_steps is None else num_steps
        if num_steps == 0:
            self.timings["warmup_s"] = 0.0
            return state
        kernel = self.kernel
        elapsed = self._phase_timer()
        compiled = self._advance_executable(state, arrays, bind)
        chunk = max(1, math.ceil(num_steps / PROGRESS_CHUNKS))
        for done in range(0, num_steps, chunk):
            count = min(chunk, num_steps - done)
            state = compiled(state, count, arrays)
            progress.update(count, "warmup", kernel.get_diagnostics_str(state))
        self.timings["warmup_s"] = elapsed()
        return state

    def _sample(self, state, arrays, bind, mesh, progress):
        """Sampling with thinning inside the compiled loop; draws streamed to host."""
        kernel, thinning, num_draws = self.kernel, self.thinning, self.num_draws
        num_members = self.num_members
        dim = sum(int(np.prod(np.shape(v)[1:])) for v in jax.tree.leaves(state.z))
        chunk = self.draws_per_chunk or max(
            1,
            min(
                math.ceil(num_draws / PROGRESS_CHUNKS),
                replay.CHUNK_ELEMENTS // (num_members * dim),
            ),
        )
        chunk = min(chunk, num_draws)
        full_batch = not kernel.subsample_plates

        def record(state, resets):
            stats = {
                "lp": -state.potential_energy,
                "step_size": state.step_size,
                "energy_change": state.energy_change,
                "diverging": resets > 0,
                "resets": resets,
            }
            if full_batch:
                stats["L"] = state.L
            return {"z": state.z, "stats": stats}

        def sample_chunk(state, num, arrays):
            args, kwargs = bind(arrays)

            def step(_, carry):
                state, resets = carry
                state = kernel.sample(state, args, kwargs)
                return state, resets + state.diverging.astype(jnp.int32)

            def draw(j, carry):
                state, buffer = carry
                no_resets = jnp.zeros(state.diverging.shape, jnp.int32)
                state, resets = jax.lax.fori_loop(0, thinning, step, (state, no_resets))
                new = record(state, resets)
                return state, jax.tree.map(lambda b, r: b.at[j].set(r), buffer, new)

            shapes = record(state, jnp.zeros(state.diverging.shape, jnp.int32))
            buffer = jax.tree.map(lambda r: jnp.zeros((chunk, *r.shape), r.dtype), shapes)
            return jax.lax.fori_loop(0, num, draw, (state, buffer))

        elapsed = self._phase_timer()
        compiled = self._compile(sample_chunk, state, 1, arrays)
        host, pending = None, None
        for done in range(0, num_draws, chunk):
            count = min(chunk, num_draws - done)
            state, buffer = compiled(state, count, arrays)
            for leaf in jax.tree.leaves(buffer):
                leaf.copy_to_host_async()
            if pending is not None:
                host = _store(host, *pending, num_draws)
            pending = (buffer, done, count)
            progress.update(count * thinning, "sampling", kernel.get_diagnostics_str(state))
        host = _store(host, *pending, num_draws)
        leftover = self.num_samples - num_draws * thinning
        if leftover:  # steps past the last kept draw, so the chain ran num_samples steps
            state = self._advance_executable(state, arrays, bind)(state, leftover, arrays)
            progress.update(leftover, "sampling")
        self.timings["sampling_s"] = elapsed()
        return host["z"], host["stats"], state

    def _compile(self, fn, *example_args):
        """AOT-compile ``fn`` (timing the compilation separately); returns the executable."""
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*example_args).compile()
        self.timings["compile_s"] += time.perf_counter() - start
        return compiled

    def _phase_timer(self):
        """A function returning the seconds since this call, less compilation in between."""
        start, compiled = time.perf_counter(), self.timings["compile_s"]
        return lambda: time.perf_counter() - start - (self.timings["compile_s"] - compiled)

    def _advance_executable(self, state, arrays, bind):
        """The compiled ``(state, num_steps, arrays) -> state`` loop of kernel steps.

        Compiled once per run (the step count is traced): warmup and the steps after the last
        kept draw share it.
        """
        if self._advance is None:
            kernel = self.kernel

            def advance(state, num_steps, arrays):
                args, kwargs = bind(arrays)
                return jax.lax.fori_loop(
                    0, num_steps, lambda _, s: kernel.sample(s, args, kwargs), state
                )

            self._advance = self._compile(advance, state, 1, arrays)
        return self._advance

    def _attrs(self, mesh) -> dict:
        variant = "MILE"
        if self.kernel.subsample_plates:
            variant = "pSMILE" if self.kernel.preconditioned else "SMILE"
        return {
            "sampler": variant,
            "num_members": self.num_members,
            "num_warmup": self.num_warmup,
            "num_samples": self.num_samples,
            "thinning": self.thinning,
            "num_devices": 1 if mesh is None else mesh.size,
        }


# ---------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _store(host: dict | None, buffer: dict, start: int, count: int, num_draws: int) -> dict:
    """Copy a chunk ``(chunk, K, ...)`` of draws into the host arrays ``(K, num_draws, ...)``."""
    chunk = jax.device_get(buffer)
    if host is None:
        host = jax.tree.map(
            lambda a: np.empty((a.shape[1], num_draws, *a.shape[2:]), a.dtype), chunk
        )
    for dest, src in zip(jax.tree.leaves(host), jax.tree.leaves(chunk)):
        dest[:, start : start + count] = np.swapaxes(src[:count], 0, 1)
    return host


def _member_mesh(devices: Sequence[jax.Device] | None, num_members: int) -> Mesh | None:
    """A 1-D mesh ``("member",)`` over the most devices that split the members evenly."""
    devices = list(devices) if devices is not None else jax.devices()
    count = max(n for n in range(1, len(devices) + 1) if num_members % n == 0)
    if count < len(devices):
        warnings.warn(
            f"num_members={num_members} does not split evenly over {len(devices)} devices; "
            f"using {count}. Use a multiple of the device count to use them all.",
            UserWarning,
            stacklevel=3,
        )
    if count == 1:
        return None
    return Mesh(np.array(devices[:count]), ("member",))


def _shard_members(tree, mesh: Mesh | None, num_members: int):
    """Place leaves that lead with the member axis on the mesh; replicate the others."""
    if mesh is None:
        return tree

    def place(leaf):
        leading = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_members
        spec = PartitionSpec("member") if leading else PartitionSpec()
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)


def _replicate(arrays, mesh: Mesh | None):
    """Copy the data to every device of the mesh once (not at every call)."""
    if mesh is None:
        return arrays
    return jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))


class _Progress:
    """A tqdm bar over pretraining, warmup and sampling (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = None
        self._done: dict[str, int] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(self, count: int, phase: str, postfix: str = "") -> None:
        self._done[phase] = self._done.get(phase, 0) + count
        if self._bar is not None:
            self._bar.set_description(phase)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(count)

    def phase_done(self, phase: str) -> int:
        return self._done.get(phase, 0)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
