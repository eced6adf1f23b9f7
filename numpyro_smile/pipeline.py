"""The ensemble's stages as functions of explicit inputs: pretrain, build chains, sample.

:class:`~numpyro_smile.SMILEEnsemble` runs these in order (``run = pretrain + init + warmup +
sample``; ``resume = restore + warmup left + sample``); each takes what it needs as arguments
and returns what it produced, so no stage depends on another having run first through shared
attributes. Members are vectorized with ``vmap`` and sharded over a member mesh; every phase
is a few calls of one compiled function (progress between calls, draws streamed to host).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from numpyro_smile import (
    convergence,
    diagnostics,
    loops,
    memory,
    model_views,
    pretrain,
    replay,
    sampler,
    sharding,
    targets,
    tuning,
)
from numpyro_smile.config import SMILEConfig
from numpyro_smile.runtime import Progress, Timings

__all__ = [
    "Counters",
    "MemberChains",
    "check_after_warmup",
    "counters",
    "flat_structure",
    "keep_draws",
    "member_chains",
    "members_inference_data",
    "pretrain_members",
    "reporter",
    "sample_members",
]


def flat_structure(z: dict) -> tuple[jax.Array, Callable]:
    """``(flat zeros (d,), unravel)`` of one member of ``z`` (arrays or shapes, member axis
    first)."""
    return ravel_pytree(jax.tree.map(lambda a: np.zeros(a.shape[1:], a.dtype), z))


def pretrain_members(
    potential_gen: Callable,
    initial: dict,
    plates: dict,
    arrays: Any,
    bind: Callable,
    rng_key: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    batch_size: int | None,
    num_epochs: int,
    num_steps: int | None,
    validation: tuple | None,
    patience: int | None,
    mesh: Mesh | None,
    timings: Timings,
    progress: Progress,
) -> tuple[dict, dict]:
    """Train K members from ``initial`` (unconstrained values, member axis first) on the
    model's potential per data point; returns ``(pretrained_params on host, curves)``.

    ``validation`` is :func:`numpyro_smile.targets.validation_loss`'s ``(loss, arrays)``;
    ``num_epochs`` (or ``num_steps``) 0 returns ``initial`` untrained.
    """
    unravel = flat_structure(initial)[1]
    positions = jax.vmap(lambda z: ravel_pytree(z)[0])(initial)
    curves: dict = {}
    length = num_epochs if num_steps is None else num_steps
    if length > 0:
        batches, epochs, steps_per_epoch = pretrain.epoch_schedule(
            plates, batch_size, num_epochs, num_steps
        )
        num_data = batches[0][1].size if batches else 1
        potential = model_views.flat_potential(potential_gen, unravel, bind)
        if validation is not None:
            loss, held_out = validation
            validation = (lambda x, data: loss(x, unravel, data), held_out)
        unit = 1 if num_steps is None else steps_per_epoch
        positions, curves = pretrain.pretrain(
            lambda x, indices, arrays: potential(x, indices, arrays) / num_data,
            positions,
            arrays,
            rng_key,
            optimizer=optimizer,
            plates=batches,
            num_epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation=validation,
            patience=patience,
            mesh=mesh,
            timings=timings,
            on_ready=lambda: progress.start(
                "pretraining", length, "epoch" if num_steps is None else "step"
            ),
            on_epochs=lambda count: progress.update(count * unit, "pretraining"),
        )
        progress.update(max(0, length - progress.phase_done("pretraining")), "pretraining")
    return sharding.to_host(jax.vmap(unravel)(positions)), curves


class MemberChains(NamedTuple):
    """One chain per member, built for the data.

    Attributes:
        plan: the core's plan (:class:`~numpyro_smile.sampler.Plan`, or
            :class:`~numpyro_smile.sgmcmc.SGPlan` for a stochastic-gradient kernel).
        init: ``init_params -> state`` of all members (jitted; as the kernel's ``init`` with
            one key per member).
        step: ``(state, arrays) -> state``: one step of all members on the data ``arrays``.
        record: ``(state, resets) -> {"z", "stats"}``: what a draw keeps.
    """

    plan: Any
    init: Callable
    step: Callable
    record: Callable


def member_chains(
    model: Callable,
    plates: dict,
    members: dict,
    model_args: tuple,
    model_kwargs: dict,
    bind: Callable,
    rng_key: jax.Array,
    *,
    config: SMILEConfig,
    full_batch: bool,
    num_warmup: int,
    init_strategy: Callable,
    build_core: Callable | None = None,
) -> MemberChains:
    """The sampler core for the members (the full-data view of the model when
    ``full_batch``): SMILE's with MILE's energy-variance schedule unless ``config`` sets one,
    or ``build_core(plates, num_warmup, dim, num_chains, fixed_start)``'s (a kernel's
    :meth:`~numpyro_smile.kernel.KernelAdapter.build_core`)."""
    num_members = jax.tree.leaves(members)[0].shape[0]
    if full_batch and plates:
        model, plates = model_views.full_data_model(model, plates), {}
    first_key = jax.random.split(rng_key, num_members)[0]
    info = model_views.initialize_subsampled_model(
        first_key, model, plates, init_strategy, model_args, model_kwargs, shapes_only=True
    )
    flat, unravel = flat_structure(members)
    if build_core is None:
        config = config.replace(pretrain_steps=0)
        plan = sampler.make_plan(config, plates, num_warmup, flat.shape[0], tuning.MILE_ENERGY_VAR)
        core = sampler.build_kernel(plan, num_members, sampler.MEMBERS_CHECK)
        record = loops.record_fn(full_batch=not plates)
    else:
        core = build_core(plates, num_warmup, flat.shape[0], num_members, True, members=True)
        record = core.record

    def target_fn(args, kwargs):
        return targets.model_target(model, info.potential_fn, plates, unravel, args, kwargs)

    key_state, key_members = jax.random.split(first_key)
    keys = jax.random.split(key_members, num_members)

    def init(init_params):
        target = target_fn(model_args, model_kwargs)
        init_all = jax.vmap(lambda z, k: core.init(ravel_pytree(z)[0], k, target))
        return init_all(init_params, keys)._replace(rng_key=key_state)

    def step(state, arrays):
        args, kwargs = bind(arrays)
        return core.step(state, target_fn(args, kwargs))

    return MemberChains(core.plan, jax.jit(init), step, record)


def check_after_warmup(state: Any) -> None:
    """The end-of-warmup check of the members (:data:`~numpyro_smile.sampler.MEMBERS_CHECK`),
    on the host once warmup's last step has run; states without a monitor (the
    stochastic-gradient family's, or warmup under 8 steps) are skipped."""
    monitor = getattr(state, "monitor", None)
    if monitor is None:
        return
    check = sampler.MEMBERS_CHECK
    monitor, step_size = sharding.to_host((monitor, state.step_size))
    convergence.warn_after_warmup(
        monitor,
        np.asarray(step_size),
        check_chains=check.chains,
        label=check.label,
        site_names=check.site_names,
    )


def reporter(plan: sampler.Plan, progress: Progress, phase: str, unit: int = 1) -> Callable:
    """``(count, state) -> None``: ``count * unit`` steps of ``phase`` done, with the
    sampler's status text."""

    def report(count, state):
        status = diagnostics.status_text(plan.mode, plan.expected_reset_rate, counters(state))
        progress.update(count * unit, phase, status)

    return report


class Counters(NamedTuple):
    """Every member's step count, resets and step size, on the host: what the progress text
    and the reset check read of a state (not the whole state, which may be large)."""

    i: np.ndarray
    num_resets: np.ndarray
    step_size: np.ndarray


def counters(state: Any) -> Counters:
    """A state's :class:`Counters` (with several processes, every process gets every
    member's: all of them must call this together)."""
    return Counters(*sharding.to_host((state.i, state.num_resets, state.step_size)))


def sample_members(
    chains: MemberChains,
    state: Any,
    arrays: Any,
    advance: Callable,
    *,
    num_samples: int,
    thinning: int,
    draws_per_chunk: int | None,
    timings: Timings,
    progress: Progress,
    keep: Callable,
) -> tuple[int, Any]:
    """``num_samples`` steps of every member, every ``thinning``-th kept (a cyclical schedule's
    exploring draws dropped); returns ``(number of kept draws per member, state)``.

    Each chunk of kept draws goes to ``keep(chunk, first_draw)`` on the host as soon as it is
    produced: ``chunk`` is ``{"z": draws, "stats": sample stats}`` with leaves ``(K, c,
    ...)``, the kept draws ``first_draw, ..., first_draw + c - 1`` of the run, so host memory
    holds one chunk at a time (what ``keep`` keeps of it is its choice). ``advance()`` gives
    the compiled warmup loop, reused for the steps past the last draw.
    """
    num_members = jax.tree.leaves(state.z)[0].shape[0]
    num_draws = num_samples // thinning
    dim = sum(int(np.prod(np.shape(v)[1:])) for v in jax.tree.leaves(state.z))
    chunk = loops.draws_per_chunk(
        num_draws, num_members, dim, replay.CHUNK_ELEMENTS, draws_per_chunk
    )
    sample_chunk = loops.sample_chunk_fn(chains.step, chains.record, thinning, chunk)
    compiled = timings.compile(sample_chunk, state, 1, arrays, what="the sampling loop")
    kept = [0]

    def consume(draws, start):
        del start
        draws = _without_exploring(draws)
        if jax.tree.leaves(draws)[0].shape[1]:
            keep(draws, kept[0])
            kept[0] += jax.tree.leaves(draws)[0].shape[1]

    with timings.phase("sampling"):
        progress.start("sampling", num_samples)
        report = reporter(chains.plan, progress, "sampling", thinning)
        state = loops.stream_draws(compiled, state, arrays, num_draws, chunk, report, consume)
        state = _leftover(advance, state, arrays, num_samples, num_draws * thinning, progress)
    if not kept[0]:
        raise ValueError(_ALL_EXPLORING)
    return kept[0], state


def _leftover(advance, state, arrays, num_samples: int, done: int, progress: Progress):
    """The steps past the last kept draw, so that the chains ran ``num_samples`` steps."""
    if num_samples > done:
        state = advance()(state, num_samples - done, arrays)
        progress.update(num_samples - done, "sampling")
    return state


_ALL_EXPLORING = (
    "Every kept draw fell on an exploring step of the cyclical schedule: sample for longer, "
    "or lower its exploration share."
)


def _without_exploring(draws: dict) -> dict:
    """``draws`` without those of a cyclical schedule's exploring steps (the same steps for
    every member; ``stats["exploring"]`` dropped); possibly none."""
    stats = draws["stats"]
    if "exploring" not in stats:
        return draws
    keep = ~np.asarray(stats["exploring"][0], bool)
    stats = {name: value for name, value in stats.items() if name != "exploring"}
    return jax.tree.map(lambda a: a[:, keep], {"z": draws["z"], "stats": stats})


def keep_draws(draw_groups: Any, sink: Any, timings: Timings) -> Callable:
    """``keep(chunk, first_draw)`` for :func:`sample_members`: the chunk's groups
    (:class:`~numpyro_smile.draw_groups.DrawGroups`: constrained ``posterior``, replayed
    ``log_likelihood`` and ``posterior_predictive``, ``sample_stats``) appended to ``sink``
    (:class:`~numpyro_smile.draws_file.HostDraws` or
    :class:`~numpyro_smile.draws_file.DrawsFile`), timed as ``postprocess_s``."""

    def keep(chunk: dict, first_draw: int) -> None:
        with timings.phase("postprocess"):
            groups = draw_groups.groups(chunk["z"], first_draw)
            groups["sample_stats"] = chunk["stats"]
            dims, _ = draw_groups.structure()
            sink.append(groups, dims, draw_groups.coords)

    return keep


def members_inference_data(
    draw_groups: Any,
    sink: Any,
    *,
    pretrained: dict | None,
    pretraining: dict,
    attrs: dict,
    memory_budget: int | None,
) -> tuple[Any, dict]:
    """The members' ``arviz.InferenceData`` from the draws kept in ``sink`` (:func:`keep_draws`;
    a :class:`~numpyro_smile.draws_file.DrawsFile` is closed and read lazily: see
    :func:`numpyro_smile.inference_data.from_groups`), and the memory report:
    ``peak_rss_bytes`` of the process, ``device_peak_bytes`` where the backend reports it,
    ``budget_bytes`` and, per replay, its chunking and estimated ``chunk_peak_bytes``."""
    from numpyro_smile import inference_data  # imports ArviZ (seconds): only when needed
    from numpyro_smile.draws_file import DrawsFile

    if isinstance(sink, DrawsFile):
        sink.close()
        groups = sink
    else:
        groups = sink.groups()
    idata = inference_data.from_groups(draw_groups, groups, pretrained, pretraining, attrs)
    report = {
        "peak_rss_bytes": memory.peak_rss_bytes(),
        "device_peak_bytes": memory.device_peak_bytes(),
        "budget_bytes": memory.check_budget(memory_budget),
        **draw_groups.stats,
    }
    return idata, report
