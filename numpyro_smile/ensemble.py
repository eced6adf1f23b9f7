"""``SMILEEnsemble``: the MILE/SMILE recipe end to end, from a model and data to ArviZ.

1. **Pretraining**: K members trained to a mode of the posterior by an optax optimizer on the
   model's mini-batch potential, each from its own initial point and batch order, optionally
   early-stopped on validation data. Together they are a deep ensemble.
2. **Sampling**: one chain per member from its pretrained point, ``num_warmup`` tuning steps,
   then every ``thinning``-th of ``num_samples`` steps kept. Each member draws its own
   mini-batches, so R-hat across members means what it usually means. ``full_batch=True``
   samples with full-data gradients (MILE).
3. **InferenceData**: ``posterior`` (chain = member), ``sample_stats``, ``log_likelihood``
   over the full data, ``observed_data``, optionally ``posterior_predictive``, and the
   ``pretrained`` points and ``pretraining`` curves.

The class holds the settings and the public API; the stages are :mod:`numpyro_smile.pipeline`'s
functions, run in order by one method (``run = pretrain + init + warmup + sample``,
``resume = restore + warmup left + sample``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.util import is_prng_key

from numpyro_smile import (
    checkpoint,
    compilation_cache,
    diagnostics,
    draw_groups,
    draws_file,
    evaluation,
    loops,
    memory,
    model_views,
    pipeline,
    sampler,
    sharding,
    targets,
)
from numpyro_smile.batching import PlateInfo
from numpyro_smile.config import SMILEConfig
from numpyro_smile.kernel import DEFAULT_INIT_STRATEGY, SMILE, KernelAdapter
from numpyro_smile.runtime import Progress, Timings
from numpyro_smile.sampler import SMILEState
from numpyro_smile.sgmcmc import SGState

if TYPE_CHECKING:  # ArviZ takes seconds to import: only where InferenceData is built
    import arviz as az

__all__ = ["SMILEEnsemble", "default_pretrain_optimizer"]


def default_pretrain_optimizer() -> optax.GradientTransformation:
    """AdamW with the SMILE papers' UCI settings (learning rate 1e-2, weight decay 5e-3)."""
    return optax.adamw(learning_rate=1e-2, weight_decay=5e-3)


class SMILEEnsemble:
    """Pretrain ``num_members`` members, run one chain from each (SMILE's by default, or any
    kernel of the package's), return InferenceData.

    Args:
        model: a NumPyro model. Its likelihood plate's ``subsample_size`` sets the sampling
            mini-batch size (SMILE); without one, sampling uses the full data (MILE).
        num_members: K, the number of members and chains.
        num_warmup: tuning steps per chain (the papers use 50,000; 5,000 is a laptop budget).
        num_samples: sampling steps per chain after warmup.
        thinning: keep every ``thinning``-th sampling step: ``num_samples // thinning`` draws.
        full_batch: sample with full-data gradients (MILE) even when the model subsamples;
            pretraining still uses the model's mini-batches.
        config: the sampler's :class:`~numpyro_smile.SMILEConfig` (e.g. ``step_size``,
            ``precondition=False``, ``adapt=False`` for the naive variant). Its
            ``desired_energy_var=None`` means MILE's ``(0.5, 0.1)`` here (the papers' recipe).
        kernel: the kernel whose chains the members run, with its settings: ``SMILE(...)``
            (the default; its ``config`` is used), or a stochastic-gradient baseline such as
            ``SGHMC(model, step_size=1e-3)``. Only its settings are read: the ensemble samples
            its own ``model``. The InferenceData has the same groups whatever the kernel; a cyclical
            schedule's exploring draws are dropped.
        pretrain_optimizer: optax optimizer (default :func:`default_pretrain_optimizer`).
        pretrain_epochs: maximum pretraining epochs (an epoch is N // batch steps; for a model
            without a subsample plate one full-data step). 0 skips pretraining.
        pretrain_steps: alternatively, the number of optimizer steps (overrides epochs).
        pretrain_batch_size: pretraining mini-batch size (default 64, the papers'; ``None``
            uses the model's ``subsample_size``). Ignored without a subsample plate.
        patience: with validation data, a member stops after this many epochs without a
            better validation loss and is restored to its best parameters.
        init_strategy: NumPyro init strategy for the members' initial points.
        log_likelihood: ``True``: the ``log_likelihood`` group over all N data points; an int
            m: over a fixed random subset of m points per subsample plate; ``False``: none.
        posterior_predictive: add a ``posterior_predictive`` group (one replicate per draw).
        draws_per_chunk: draws per member produced per compiled call (default: a twentieth).
        devices: devices to shard members over (default: all devices of the default backend;
            with several processes, those of every process).
        progress_bar: show progress (default: only on a terminal, never when ``$CI`` is set,
            and with several processes only on process 0).
        memory_budget: bytes one chunk of the replays may hold at its peak (default 256 MiB).
        draws_to: a file path (e.g. ``"draws.nc"``; replaced if it exists): every chunk of
            kept draws, post-processed (``posterior``, ``sample_stats``, ``log_likelihood``,
            ``posterior_predictive``), is appended to this netCDF file as soon as it is
            produced, so host memory holds one chunk at a time however many draws are kept;
            the small groups (``observed_data``, ``pretrained``, ``pretraining``) follow at
            the end, and :meth:`run` returns the file opened lazily (``az.from_netcdf``:
            values are read from disk when indexed). Same draws as in memory, bit for bit.
            One process only (several raise ``NotImplementedError``).
        keep_sites: the latent (or deterministic) sites ``posterior`` keeps, e.g.
            ``["log_sigma"]`` to skip a network's weights; ``None`` keeps all. The
            ``log_likelihood`` and ``posterior_predictive`` groups are still computed from
            every site (chunk by chunk, while the whole draws are at hand), and the
            ``pretrained`` group keeps every site. :meth:`evaluate` needs every latent site:
            on such a posterior it raises (use ``group="pretrained"``, or keep the sites,
            with ``draws_to`` if they are large).
        host_memory_limit: bytes the kept draws may take in host memory when they are not
            streamed to a file (default: half the machine's physical memory). Before anything
            is computed, :meth:`run` estimates them (members x kept draws x the kept sites,
            the log-likelihood's and the predictive's numbers, in their dtypes; the sampler's
            statistics, a few numbers per draw, aside) and raises a ``ValueError`` naming the
            size and the fixes when they exceed it. Ignored with ``draws_to``.

    After :meth:`run`: ``last_state``, ``post_warmup_state``, ``pretrained_params`` (the
    members' unconstrained starting points), ``plan`` (the core's
    :class:`~numpyro_smile.sampler.Plan`), ``timings`` (seconds per phase, compilation apart)
    and ``memory`` (peak bytes). :meth:`save_state` and ``run(..., resume_from=path)``
    checkpoint and resume the chains exactly; :meth:`warmup` stops before sampling.

    Several processes (JAX's distributed runtime: ``jax.distributed.initialize()`` in every
    process before anything else of JAX) run the same script on the same data: the members are
    sharded over every process's devices (``num_members`` a multiple of the process count),
    each process computes its own, and every process gets the whole ``InferenceData``, the
    same as one process would. :meth:`run`, :meth:`evaluate`, :meth:`save_state` and
    :meth:`to_checkpoint` gather from all processes, so every process must call them;
    ``last_state`` and ``post_warmup_state`` are global arrays (each process holds its own
    members; :meth:`to_checkpoint` brings them to the host whole).

    Example::

        ensemble = SMILEEnsemble(model, num_members=4, num_warmup=2000, num_samples=2000)
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
        config: SMILEConfig | None = None,
        kernel: KernelAdapter | None = None,
        pretrain_optimizer: optax.GradientTransformation | None = None,
        pretrain_epochs: int = 200,
        pretrain_steps: int | None = None,
        pretrain_batch_size: int | None = 64,
        patience: int | None = 10,
        init_strategy: Callable = DEFAULT_INIT_STRATEGY,
        log_likelihood: bool | int = True,
        posterior_predictive: bool = False,
        draws_per_chunk: int | None = None,
        devices: Sequence[jax.Device] | None = None,
        progress_bar: bool | None = None,
        memory_budget: int | None = None,
        draws_to: str | os.PathLike | None = None,
        keep_sites: Sequence[str] | None = None,
        host_memory_limit: int | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a NumPyro model (a callable), got {model!r}.")
        for name, value, least in (
            ("num_members", num_members, 1),
            ("num_warmup", num_warmup, 0),
            ("num_samples", num_samples, 1),
            ("thinning", thinning, 1),
            ("pretrain_epochs", pretrain_epochs, 0),
            ("pretrain_steps", pretrain_steps, 0),
            ("pretrain_batch_size", pretrain_batch_size, 1),
            ("patience", patience, 1),
            ("draws_per_chunk", draws_per_chunk, 1),
        ):
            if value is not None:
                _check_int(name, value, least)
        if thinning > num_samples:
            raise ValueError(
                f"thinning ({thinning}) is larger than num_samples ({num_samples}): no draw "
                "would be kept. Use thinning <= num_samples."
            )
        if not isinstance(log_likelihood, bool):
            _check_int("log_likelihood (a subset size)", log_likelihood, 1)
        memory.check_budget(memory_budget)
        memory.check_host_limit(host_memory_limit)
        if draws_to is not None:
            draws_file.check_path(draws_to)
        if keep_sites is not None:
            draw_groups.check_keep_sites(keep_sites, None)  # the type here, the names in run
        if kernel is not None and not isinstance(kernel, KernelAdapter):
            raise TypeError(
                "kernel must be a kernel of numpyro_smile (SMILE, SGLD, SGHMC, AdaSGHMC), got "
                f"{type(kernel).__name__}."
            )
        if kernel is not None and kernel._model is None:
            raise ValueError(
                f"kernel={kernel.name}(potential_fn=...): the ensemble samples a model; pass "
                f"{kernel.name}(model, ...)."
            )
        if isinstance(kernel, SMILE):
            if config is not None:
                raise ValueError("Give the settings in kernel=SMILE(...) or in config=, not both.")
            config, kernel = kernel.config, None
        elif kernel is not None and config is not None:
            raise ValueError(f"config= is SMILE's; {kernel.name}'s settings are its own.")
        self.kernel = kernel
        self._model = model
        self.num_members, self.num_warmup = num_members, num_warmup
        self.num_samples, self.thinning, self.full_batch = num_samples, thinning, full_batch
        self.config = SMILEConfig.with_settings(config, {}, "SMILEEnsemble")
        self.pretrain_optimizer = pretrain_optimizer or default_pretrain_optimizer()
        self.pretrain_epochs, self.pretrain_steps = pretrain_epochs, pretrain_steps
        self.pretrain_batch_size, self.patience = pretrain_batch_size, patience
        self.init_strategy = init_strategy
        self.log_likelihood, self.posterior_predictive = log_likelihood, posterior_predictive
        self.draws_per_chunk, self.progress_bar = draws_per_chunk, progress_bar
        self.devices = list(devices) if devices is not None else None
        self.memory_budget = memory_budget
        self.draws_to = None if draws_to is None else Path(os.fspath(draws_to))
        self.keep_sites = None if keep_sites is None else list(keep_sites)
        self.host_memory_limit = host_memory_limit
        self.memory: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.plan: sampler.Plan | None = None
        self.last_state: SMILEState | None = None
        self.post_warmup_state: SMILEState | None = None
        self.pretrained_params: dict | None = None
        self._plates: dict[str, PlateInfo] = {}
        self._pretraining: dict = {}

    @property
    def model(self) -> Callable:
        """The user's model."""
        return self._model

    @property
    def full_data_model(self) -> Callable:
        """The model with every subsample plate over all N points (e.g. for ``Predictive``)."""
        return model_views.full_data_model(self._model, self._plates)

    @property
    def subsample_plates(self) -> dict[str, PlateInfo]:
        """``{name: PlateInfo(N, B)}`` of the training data, found by :meth:`run`."""
        return dict(self._plates)

    @property
    def num_draws(self) -> int:
        """Draws kept per member: ``num_samples // thinning``."""
        return self.num_samples // self.thinning

    # ------------------------------------------------------------------ public API

    def run(
        self,
        rng_key: jax.Array,
        *model_args: Any,
        validation: tuple | None = None,
        init_params: dict | None = None,
        resume_from: (
            str | os.PathLike | checkpoint.EnsembleCheckpoint | SMILEState | SGState | None
        ) = None,
        **model_kwargs: Any,
    ) -> az.InferenceData:
        """Pretrain, sample and return the ensemble's ``arviz.InferenceData``.

        Args:
            rng_key: a JAX PRNG key; the same key gives the same draws.
            *model_args: the model's positional arguments (the training data), as for
                ``mcmc.run``.
            **model_kwargs: the model's keyword arguments.
            validation: held-out data for early stopping, as the model's positional
                arguments (e.g. ``(X_val, y_val)``); ``model_kwargs`` are reused.
            init_params: the members' starting points instead of the init strategy's:
                unconstrained values per latent site with a leading ``(num_members,)`` axis.
                Pretraining starts from them; with ``pretrain_epochs=0`` the chains do.
            resume_from: continue saved chains instead of starting new ones: a file written
                by :meth:`save_state`, a loaded :class:`~numpyro_smile.checkpoint.
                EnsembleCheckpoint`, or a ``SMILEState`` (``SGState``) of this ensemble (e.g.
                ``post_warmup_state``). Pretraining is skipped, the warmup left is finished
                and ``num_samples`` further steps are sampled, continuing exactly the draws of
                an uninterrupted run. ``rng_key`` then only seeds the post-processing.
        """
        if not is_prng_key(rng_key):
            raise TypeError(
                "rng_key must be a single JAX PRNG key, e.g. jax.random.key(0); got "
                f"{getattr(rng_key, 'shape', type(rng_key).__name__)}."
            )
        if self.draws_to is not None and sharding.is_multiprocess():
            raise NotImplementedError(
                "draws_to= streams the draws to one file from one process; with several "
                f"processes ({jax.process_count()}) leave draws_to=None (every process gets "
                "the whole InferenceData in memory: keep it small with thinning, keep_sites "
                "or log_likelihood=m), or run in one process."
            )
        if resume_from is not None and (validation is not None or init_params is not None):
            raise ValueError(
                "resume_from continues saved chains: validation and init_params (for "
                "pretraining and new chains) cannot be combined with it."
            )
        return self._pipeline(
            rng_key, model_args, model_kwargs, validation, init_params, resume_from
        )

    def warmup(
        self,
        rng_key: jax.Array,
        *model_args: Any,
        validation: tuple | None = None,
        init_params: dict | None = None,
        **model_kwargs: Any,
    ) -> None:
        """Pretrain and warm up the chains without sampling (as ``MCMC.warmup``): sets
        ``post_warmup_state`` for :meth:`save_state` or ``run(..., resume_from=...)``."""
        self._pipeline(rng_key, model_args, model_kwargs, validation, init_params, None, True)

    def to_checkpoint(self, state: SMILEState | None = None) -> checkpoint.EnsembleCheckpoint:
        """The chains' state (default ``last_state``) and what resuming needs, on host."""
        state = self.last_state if state is None else state
        if state is None:
            raise RuntimeError(
                "There is no state to save yet: call run() or warmup() first (or pass state=)."
            )
        return checkpoint.make_checkpoint(
            state,
            num_warmup=self.num_warmup if self.plan is None else self.plan.num_warmup,
            mode=self._mode(),
            plates=self._plates,
            config=self._settings(),
            pretrained_params=self.pretrained_params,
            pretraining=self._pretraining,
        )

    def save_state(self, path: str | os.PathLike, state: SMILEState | None = None) -> Path:
        """Write the chains' full state (default ``last_state``) and what resuming checks and
        needs to one ``.npz`` file (see :mod:`numpyro_smile.checkpoint`); resume with
        ``run(rng_key, *model_args, resume_from=path)``, in a new process if need be."""
        return checkpoint.save_checkpoint(path, self.to_checkpoint(state))

    def evaluate(
        self, idata: az.InferenceData, *model_args: Any, group: str = "posterior", **kwargs: Any
    ) -> dict[str, float]:
        """Predictive metrics of ``idata[group]`` on held-out data: see
        :func:`numpyro_smile.evaluation.evaluate` (``group="pretrained"``: the deep ensemble).
        With several processes each one replays its own members: call it on every process."""
        kwargs.setdefault("memory_budget", self.memory_budget)
        kept = None
        if group == "posterior" and "posterior" in idata.groups():
            kept = idata.posterior.attrs.get("keep_sites")
        if kept is not None:
            raise ValueError(
                f"idata[{group!r}] keeps only the sites {kept} (keep_sites=): evaluating needs "
                "every latent site. Evaluate the deep ensemble (group='pretrained'), or rerun "
                "keeping every site (with draws_to='draws.nc' if they do not fit in memory)."
            )
        with compilation_cache.persistent_cache():
            return evaluation.evaluate(self._model, idata, *model_args, group=group, **kwargs)

    # ------------------------------------------------------------------ the pipeline

    def _pipeline(self, rng_key, model_args, model_kwargs, validation, init_params, resume_from,
                  warmup_only=False):  # fmt: skip
        """run = pretrain + init + warmup + sample; resume = restore + warmup left + sample
        (the stages are :mod:`numpyro_smile.pipeline`'s). Every second of it is in one of
        ``timings``' phases: setup, compile, pretrain, init, warmup, sampling, postprocess."""
        start = time.perf_counter()
        with Progress(self.progress_bar) as progress, compilation_cache.persistent_cache():
            timings = Timings(on_compile=lambda what: progress.status(f"compiling {what}"))
            self.timings = timings.seconds
            with timings.phase("setup"):
                progress.status(f"SMILEEnsemble: {self.num_members} members; checking the model")
                model_views.check_finite_data(model_args, model_kwargs)
                self._plates = model_views.inspect_model(self._model, model_args, model_kwargs)
                if validation is not None:
                    validation = targets.validation_loss(self._model, validation, model_kwargs)
                key_init, key_pretrain, key_chains, key_post = jax.random.split(rng_key, 4)
                mesh = sharding.member_mesh(self.devices, self.num_members)
                arrays, bind = model_views.split_model_args(model_args, model_kwargs)
                arrays = sharding.replicate(arrays, mesh)
                saved = _load(resume_from, self) if resume_from is not None else None
                info = model_views.initialize_subsampled_model(
                    jax.random.split(key_init, self.num_members), self._model, self._plates,
                    self.init_strategy, model_args, model_kwargs,
                    shapes_only=init_params is not None or saved is not None,
                )  # fmt: skip
                initial = info.param_info.z
                groups = draw_groups.DrawGroups(
                    self._model, model_args, model_kwargs, self._plates, key_post,
                    log_likelihood=self.log_likelihood,
                    posterior_predictive=self.posterior_predictive,
                    keep_sites=self.keep_sites, memory_budget=self.memory_budget,
                )  # fmt: skip
                if not warmup_only:
                    self._check_host_memory(groups, initial)
                if saved is not None:
                    self._check_resumable(saved, initial)
                    self.pretrained_params = saved.pretrained_params
                    self._pretraining = saved.pretraining
                elif init_params is not None:
                    one = jax.tree.map(
                        lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), initial
                    )
                    targets.check_init_params(init_params, one, self.num_members)
                    initial = jax.tree.map(jnp.asarray, init_params)
            num_warmup = self.num_warmup if saved is None else saved.num_warmup
            remaining = num_warmup if saved is None else max(0, num_warmup - saved.steps)
            if saved is None:
                with timings.phase("pretrain"):
                    self.pretrained_params, self._pretraining = pipeline.pretrain_members(
                        info.potential_fn, initial, self._plates, arrays, bind, key_pretrain,
                        optimizer=self.pretrain_optimizer, batch_size=self.pretrain_batch_size,
                        num_epochs=self.pretrain_epochs, num_steps=self.pretrain_steps,
                        validation=validation, patience=self.patience, mesh=mesh,
                        timings=timings, progress=progress,
                    )  # fmt: skip
            members = initial if self.pretrained_params is None else self.pretrained_params
            with timings.phase("init"):
                progress.status(f"initialising {self.num_members} chains")
                chains = pipeline.member_chains(
                    self._model, self._plates, members, model_args, model_kwargs, bind,
                    key_chains, config=self.config, full_batch=self.full_batch,
                    num_warmup=num_warmup, init_strategy=self.init_strategy,
                    build_core=None if self.kernel is None else self.kernel.build_core,
                )  # fmt: skip
                self.plan = chains.plan
                if saved is None:
                    state = chains.init(sharding.shard_members(members, mesh, self.num_members))
                else:
                    template = jax.eval_shape(chains.init, initial)
                    state = jax.device_put(checkpoint.restore_state(saved, template))
                state = sharding.shard_members(state, mesh, self.num_members)
            loop = loops.advance_fn(chains.step)
            advance = functools.cache(
                lambda: timings.compile(loop, state, 1, arrays, what=f"the {self.plan.mode} loop")
            )
            self.timings["warmup_s"] = 0.0
            if remaining:
                compiled = advance()
                with timings.phase("warmup"):
                    progress.start("warmup", remaining)
                    report = pipeline.reporter(self.plan, progress, "warmup")
                    state = loops.run_steps(compiled, state, remaining, arrays, report)
                pipeline.check_after_warmup(state)
            self.post_warmup_state = self.last_state = state
            if warmup_only:
                self.timings["total_s"] = time.perf_counter() - start
                return None
            if self.draws_to is None:
                sink: draws_file.HostDraws | draws_file.DrawsFile = draws_file.HostDraws(
                    self.num_draws
                )
            else:
                sink = draws_file.DrawsFile(self.draws_to, self.num_members)
            try:
                _, state = pipeline.sample_members(
                    chains, state, arrays, advance, num_samples=self.num_samples,
                    thinning=self.thinning, draws_per_chunk=self.draws_per_chunk,
                    timings=timings, progress=progress,
                    keep=pipeline.keep_draws(groups, sink, timings),
                )  # fmt: skip
            except BaseException:
                if isinstance(sink, draws_file.DrawsFile):
                    sink.close()
                raise
            self.last_state = state
            attrs = {
                "sampler": self.plan.variant,
                "num_members": self.num_members,
                "chains": CHAINS_NOTE,
                "num_warmup": num_warmup,
                "num_samples": self.num_samples,
                "thinning": self.thinning,
                "num_devices": 1 if mesh is None else mesh.size,
            } | ({} if saved is None else {"resumed_at_step": saved.steps})
            if self.keep_sites is not None:
                attrs["keep_sites"] = ", ".join(groups.kept)
            progress.start("post-processing", 0)
            progress.status("post-processing: the pretrained points, the observed data")
            with timings.phase("postprocess"):
                idata, self.memory = pipeline.members_inference_data(
                    groups, sink, pretrained=self.pretrained_params,
                    pretraining=self._pretraining, attrs=attrs,
                    memory_budget=self.memory_budget,
                )  # fmt: skip
        self.timings["total_s"] = time.perf_counter() - start
        idata.sample_stats.attrs.update({k: round(v, 3) for k, v in self.timings.items()})
        name = "SMILE" if self.kernel is None else self.kernel.name
        counters = pipeline.counters(self.last_state)
        diagnostics.check_resets(counters, self.plan, label="members", name=name)
        return idata

    def _check_host_memory(self, groups: draw_groups.DrawGroups, initial: dict) -> None:
        """Raise a ``ValueError`` before any compute when the kept draws would not fit
        ``host_memory_limit`` in host memory (see the class docstring); nothing with
        ``draws_to``."""
        limit = memory.check_host_limit(self.host_memory_limit)
        if self.draws_to is not None or limit is None:
            return
        one = {name: jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for name, a in initial.items()}
        per_draw = groups.bytes_per_draw(one)
        draws = self.num_members * self.num_draws
        total = draws * sum(per_draw.values())
        if total <= limit:
            return
        parts = ", ".join(f"{group} {_gb(draws * size)}" for group, size in per_draw.items())
        default = " (half of this machine's memory, by default)"
        raise ValueError(
            f"The kept draws would take about {_gb(total)} of host memory ({self.num_members} "
            f"members x {self.num_draws} draws: {parts}), more than host_memory_limit="
            f"{_gb(limit)}{default if self.host_memory_limit is None else ''}. Stream them to "
            "disk with draws_to='draws.nc' (read lazily afterwards), keep fewer draws "
            f"(thinning > {self.thinning}), keep only the sites you need (keep_sites=[...], "
            f"of {sorted(groups.names)}), or shrink the log-likelihood (log_likelihood=m for "
            "m points, or False); or raise host_memory_limit."
        )

    def _mode(self) -> str:
        return "full_batch" if self.full_batch or not self._plates else "minibatch"

    def _check_resumable(self, saved: checkpoint.EnsembleCheckpoint, shapes: dict) -> None:
        checkpoint.check_compatible(
            saved,
            num_members=self.num_members,
            mode=self._mode(),
            plates=self._plates,
            params=checkpoint.parameter_structure(shapes),
            config=self._settings(),
        )

    def _settings(self) -> dict[str, Any]:
        """The sampler's settings as plain values (a checkpoint records and compares them)."""
        if self.kernel is None:
            return self.config.to_dict()
        return {"kernel": self.kernel.name, **self.kernel.settings()}


#: What a chain of the ensemble's InferenceData is (``posterior.attrs["chains"]``): summaries
#: print R-hat across chains, which here compares modes, not runs of one sampler.
CHAINS_NOTE = (
    "one chain per ensemble member, each started from its own pretrained mode: R-hat across "
    "chains measures how far the members' modes differ (multimodality), not a failure of "
    "sampling; judge each member by its own ESS and the ensemble by predictive checks"
)


def _load(resume_from, ensemble: SMILEEnsemble) -> checkpoint.EnsembleCheckpoint:
    """A checkpoint from a path, a loaded checkpoint, or a state of ``ensemble``."""
    if isinstance(resume_from, (SMILEState, SGState)):
        return ensemble.to_checkpoint(resume_from)
    if isinstance(resume_from, checkpoint.EnsembleCheckpoint):
        return resume_from
    return checkpoint.load_checkpoint(resume_from)


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
