"""Pretraining K ensemble members: an optax optimizer on the mini-batch potential.

The MILE/SMILE recipe starts every chain from a trained network (a deep-ensemble member):
MCLMC moves about one step size per step, so a chain started at random crawls, while one
started at a mode of the posterior samples from the first step. Here a member is trained by
MAP: any optax optimizer on the model's unconstrained potential (prior plus likelihood scaled
by N / B), mini-batched through the model's own subsample plate, divided by N so that losses
read per data point. Members are vectorized (``vmap``), with their own initial points and their
own batch orders.

Early stopping (optional) follows the papers: after every epoch each member's validation loss
(mean negative log-likelihood per held-out point) is computed; a member stops when it has not
improved for ``patience`` epochs and is restored to its best-validation parameters (SMILE's
rule; MILE kept the last ones). Stopped members are frozen while the others train on; their
curves then stay flat, so the loss curves are rectangular arrays without missing values.

Everything is a pure function of a :class:`PretrainState`; :func:`pretrain_epochs` runs any
number of epochs (a traced count, so one compilation serves every call) and returns the
per-epoch losses, so a driver can run it in chunks between progress updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from numpyro_smile import batching, sharding
from numpyro_smile.runtime import PROGRESS_CHUNKS, Timings

__all__ = [
    "PretrainState",
    "epoch_schedule",
    "pretrain",
    "pretrain_epochs",
    "pretrain_init",
    "train_steps",
]


class PretrainState(NamedTuple):
    """State of K members in training (leading ``(K,)`` axis on all fields but the last two).

    Attributes:
        position: ``(K, d)`` current unconstrained parameters.
        opt_state: the optimizer's state, batched over members.
        schedules: per-member batch schedules (``None`` for a full-batch model).
        best_position: ``(K, d)`` parameters at the best validation loss so far (the current
            ones when there is no validation data).
        best_loss: ``(K,)`` best validation loss so far (``inf`` before the first epoch).
        best_epoch: ``(K,)`` epoch (1-based) of ``best_loss``; 0 before any.
        since_best: ``(K,)`` epochs since the last improvement.
        stopped: ``(K,)`` True once a member has stopped early (it is then frozen).
        epoch: epochs completed (scalar).
        rng_key: a single key; every epoch derives each member's keys from it.
    """

    position: jax.Array
    opt_state: optax.OptState
    schedules: dict | None
    best_position: jax.Array
    best_loss: jax.Array
    best_epoch: jax.Array
    since_best: jax.Array
    stopped: jax.Array
    epoch: jax.Array
    rng_key: jax.Array


def pretrain_init(
    position: jax.Array,
    optimizer: optax.GradientTransformation,
    plates: tuple[tuple[str, batching.PlateInfo], ...],
    rng_key: jax.Array,
) -> PretrainState:
    """Start K members at ``position`` ``(K, d)``, each with its own batch order."""
    num_members = position.shape[0]
    key_batches, key = jax.random.split(rng_key)
    schedules = jax.vmap(lambda k: batching.schedules_init(plates, k, "epoch"))(
        jax.random.split(key_batches, num_members)
    )
    return PretrainState(
        position=position,
        opt_state=jax.vmap(optimizer.init)(position),
        schedules=schedules,
        best_position=position,
        best_loss=jnp.full((num_members,), jnp.inf, position.dtype),
        best_epoch=jnp.zeros((num_members,), jnp.int32),
        since_best=jnp.zeros((num_members,), jnp.int32),
        stopped=jnp.zeros((num_members,), bool),
        epoch=jnp.zeros((), jnp.int32),
        rng_key=key,
    )


def _where(mask: jax.Array, new, old):
    """Per-member select on pytrees whose leaves lead with the member axis."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old
    )


def train_steps(
    carry: tuple,
    keys: jax.Array,
    *,
    loss_and_grad_fn: Callable,
    optimizer: optax.GradientTransformation,
    plates: tuple,
    num_members: int | None = None,
    frozen: jax.Array | None = None,
) -> tuple[tuple, jax.Array]:
    """The optimisation loop: one optimizer step per key, each on a fresh mini-batch.

    The one training loop of the package: ensemble pretraining runs it for every member
    (``num_members``), the kernel's ``pretrain_steps`` for one chain. A step whose loss or
    gradient is not finite is skipped (a guardrail, not a fix: a member that keeps failing
    stays where it was), and so is every step of a ``frozen`` member.

    Args:
        carry: ``(position, opt_state, schedules)``; position ``(d,)``, or ``(K, d)`` with
            ``num_members=K`` (the optimizer state and schedules then batched alike).
        keys: ``(num_steps,)`` keys; step ``t`` draws its batches from ``keys[t]``.
        loss_and_grad_fn: ``(position, {plate: indices}) -> (loss, grad)``, batched over
            members when ``num_members`` is given.
        plates: ``((name, PlateInfo(N, B)), ...)`` of the mini-batches (empty: full batch).
        frozen: ``(K,)`` members that must not move (early-stopped), or ``None``.

    Returns:
        ``((position, opt_state, schedules), losses)``, losses ``(num_steps,)`` or
        ``(num_steps, K)``.
    """
    update = optimizer.update if num_members is None else jax.vmap(optimizer.update)

    def step(carry, key):
        position, opt_state, schedules = carry
        schedules, indices = batching.schedules_next(plates, schedules, key, num_members)
        loss, grad = loss_and_grad_fn(position, indices)
        updates, new_opt_state = update(grad, opt_state, position)
        new_position = optax.apply_updates(position, updates)
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad), axis=-1)
        if frozen is not None:
            ok = ok & ~frozen
        position, opt_state = _where(ok, (new_position, new_opt_state), (position, opt_state))
        return (position, opt_state, schedules), loss

    return jax.lax.scan(step, carry, keys)


def _train_epoch(
    state: PretrainState,
    *,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    plates: tuple,
    steps_per_epoch: int,
) -> tuple[PretrainState, jax.Array]:
    """``steps_per_epoch`` optimizer steps of every member; returns the mean training loss."""
    keys = jax.random.split(jax.random.fold_in(state.rng_key, state.epoch), steps_per_epoch)
    (position, opt_state, schedules), losses = train_steps(
        (state.position, state.opt_state, state.schedules),
        keys,
        loss_and_grad_fn=jax.vmap(jax.value_and_grad(loss_fn)),
        optimizer=optimizer,
        plates=plates,
        num_members=state.position.shape[0],
        frozen=state.stopped,
    )
    state = state._replace(position=position, opt_state=opt_state, schedules=schedules)
    return state, jnp.mean(losses, axis=0)


def _early_stopping(
    state: PretrainState, validation_loss: jax.Array | None, patience: int | None
) -> PretrainState:
    """Record the best validation point of each member and stop members that stalled."""
    epoch = state.epoch + 1
    if validation_loss is None:
        return state._replace(
            best_position=state.position,
            best_epoch=jnp.full_like(state.best_epoch, epoch),
            epoch=epoch,
        )
    improved = (validation_loss < state.best_loss) & ~state.stopped
    since_best = jnp.where(improved, 0, state.since_best + 1)
    stopped = state.stopped
    if patience is not None:
        stopped = stopped | (since_best >= patience)
    return state._replace(
        best_position=_where(improved, state.position, state.best_position),
        best_loss=jnp.where(improved, validation_loss, state.best_loss),
        best_epoch=jnp.where(improved, epoch, state.best_epoch),
        since_best=since_best,
        stopped=stopped,
        epoch=epoch,
    )


def pretrain_epochs(
    state: PretrainState,
    num_epochs: jax.Array | int,
    *,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    plates: tuple,
    steps_per_epoch: int,
    buffer_size: int,
    validation_loss_fn: Callable | None = None,
    patience: int | None = None,
) -> tuple[PretrainState, jax.Array, jax.Array]:
    """Train every member for ``num_epochs`` (<= ``buffer_size``) more epochs.

    Args:
        state: from :func:`pretrain_init` or a previous call.
        num_epochs: how many epochs to run now; may be traced, so one compiled function
            serves chunks of any length up to ``buffer_size``.
        loss_fn: ``(x (d,), {plate: (B,) indices}) -> loss`` of one member on one batch
            (unconstrained potential per data point).
        plates: ``((name, PlateInfo(N, B)), ...)`` of the mini-batches (empty: full batch).
        steps_per_epoch: optimizer steps per epoch (N // B for mini-batches).
        validation_loss_fn: ``x (d,) -> loss`` on held-out data, or ``None``.
        patience: epochs without validation improvement before a member stops (``None``: never
            stop early; the best-validation parameters are still kept).

    Returns:
        ``(state, train_loss, validation_loss)``: losses ``(buffer_size, K)`` of which the
        first ``num_epochs`` rows are filled (mean training loss over the epoch's batches, and
        the validation loss after the epoch; zeros when there is no validation data).
    """
    num_members = state.position.shape[0]
    dtype = state.position.dtype
    buffers = (
        jnp.zeros((buffer_size, num_members), dtype),
        jnp.zeros((buffer_size, num_members), dtype),
    )

    def epoch_body(j, carry):
        state, (train_buffer, validation_buffer) = carry
        state, train_loss = _train_epoch(
            state,
            loss_fn=loss_fn,
            optimizer=optimizer,
            plates=plates,
            steps_per_epoch=steps_per_epoch,
        )
        validation_loss = None
        if validation_loss_fn is not None:
            validation_loss = jax.vmap(validation_loss_fn)(state.position)
            validation_buffer = validation_buffer.at[j].set(validation_loss)
        state = _early_stopping(state, validation_loss, patience)
        return state, (train_buffer.at[j].set(train_loss), validation_buffer)

    state, (train_loss, validation_loss) = jax.lax.fori_loop(
        0, num_epochs, epoch_body, (state, buffers)
    )
    return state, train_loss, validation_loss


def pretrain(
    loss_fn: Callable,
    positions: jax.Array,
    arrays: Any,
    rng_key: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    plates: tuple,
    num_epochs: int,
    steps_per_epoch: int,
    validation: tuple[Callable, Any] | None = None,
    patience: int | None = None,
    mesh: Mesh | None = None,
    timings: Timings | None = None,
    on_ready: Callable[[], None] | None = None,
    on_epochs: Callable[[int], None] | None = None,
) -> tuple[jax.Array, dict[str, np.ndarray]]:
    """Train K members, in a few compiled calls; the deep ensemble of the MILE/SMILE recipe.

    Args:
        loss_fn: ``(x (d,), {plate: (B,) indices}, arrays) -> loss`` of one member on one
            batch (the unconstrained potential per data point).
        positions: ``(K, d)`` starting points.
        arrays: the training data leaves (passed to ``loss_fn``; replicated over ``mesh``).
        rng_key: seeds the members' batch orders.
        optimizer: any optax optimizer.
        plates: ``((name, PlateInfo(N, B)), ...)`` of the pretraining batches (empty: full
            batch, one step per epoch).
        num_epochs: at most this many epochs.
        steps_per_epoch: optimizer steps per epoch.
        validation: ``(loss(x, arrays), arrays)`` on held-out data, for early stopping.
        patience: epochs without validation improvement before a member stops.
        mesh: the member mesh (:func:`numpyro_smile.sharding.member_mesh`) or ``None``.
        timings: where the compilation is timed (``compile_s``).
        on_ready: called once compilation is done, before the first epoch (a progress bar
            opened then shows rates and ETAs without compilation).
        on_epochs: called with the number of epochs each compiled call ran (progress).

    Returns:
        ``(positions (K, d), curves)``: the best-validation (else last) points, and
        ``train_loss`` ``(K, epochs)``, with validation ``validation_loss`` and
        ``best_epoch``, and ``num_epochs`` ``(K,)``.
    """
    timings = timings or Timings()
    num_members = positions.shape[0]
    validation_loss, validation_arrays = validation if validation is not None else (None, [])
    validation_arrays = sharding.replicate(validation_arrays, mesh)
    chunk = max(1, math.ceil(num_epochs / PROGRESS_CHUNKS))

    def run_epochs(state, count, arrays, validation_arrays):
        return pretrain_epochs(
            state,
            count,
            loss_fn=lambda x, idx: loss_fn(x, idx, arrays),
            optimizer=optimizer,
            plates=plates,
            steps_per_epoch=steps_per_epoch,
            buffer_size=chunk,
            validation_loss_fn=(
                None if validation_loss is None else lambda x: validation_loss(x, validation_arrays)
            ),
            patience=None if validation_loss is None else patience,
        )

    state = pretrain_init(positions, optimizer, plates, rng_key)
    state = sharding.shard_members(state, mesh, num_members)
    compiled = timings.compile(run_epochs, state, 1, arrays, validation_arrays, what="pretraining")
    if on_ready is not None:
        on_ready()
    train_curve, validation_curve = [], []
    done = 0
    while done < num_epochs:
        count = min(chunk, num_epochs - done)
        state, train, valid = compiled(state, count, arrays, validation_arrays)
        train, valid = sharding.to_host((train, valid))  # every process gets all members
        train_curve.append(np.asarray(train)[:count])
        validation_curve.append(np.asarray(valid)[:count])
        done += count
        if on_epochs is not None:
            on_epochs(count)
        if validation_loss is not None and patience and bool(jnp.all(state.stopped)):
            break
    curves = {"train_loss": np.concatenate(train_curve).T}
    if validation_loss is not None:
        curves["validation_loss"] = np.concatenate(validation_curve).T
        curves["best_epoch"] = np.asarray(sharding.to_host(state.best_epoch))
    curves["num_epochs"] = np.full(num_members, done)
    return state.best_position, curves


def epoch_schedule(
    plates: dict, batch_size: int | None, num_epochs: int, num_steps: int | None
) -> tuple[tuple, int, int]:
    """The pretraining batches and epochs of a model's subsample plates.

    Args:
        plates: ``{name: PlateInfo(N, B)}`` of the model (empty: full batch).
        batch_size: the pretraining batch size (``None``: the model's ``B``), at most N.
        num_epochs: epochs to train (used when ``num_steps`` is ``None``).
        num_steps: alternatively, optimizer steps (an epoch is then at most that many).

    Returns:
        ``(plates, num_epochs, steps_per_epoch)`` with ``plates`` as
        ``((name, PlateInfo(N, batch)), ...)``; an epoch is N // batch steps (one full-data
        step without a subsample plate).
    """
    batches = tuple(
        (name, batching.PlateInfo(p.size, min(batch_size or p.subsample_size, p.size)))
        for name, p in plates.items()
    )
    steps_per_epoch = batches[0][1].size // batches[0][1].subsample_size if batches else 1
    if num_steps is not None:
        num_epochs = math.ceil(num_steps / steps_per_epoch)
        steps_per_epoch = min(steps_per_epoch, num_steps)
    return batches, num_epochs, steps_per_epoch
