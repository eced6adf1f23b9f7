"""Pretraining: members converge, early stopping keeps each member's best validation point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numpyro_smile import batching, pretrain

TARGET = jnp.array([1.0, -2.0, 0.5])
PLATES = (("data", batching.PlateInfo(100, 10)),)


def quadratic_loss(x, indices):
    """A mini-batch loss whose batches are unbiased for |x - TARGET|^2 / 2 (+ const)."""
    noise = 0.1 * jnp.mean(jnp.sin(indices["data"].astype(jnp.float32)))
    return 0.5 * jnp.sum((x - TARGET) ** 2) + noise * jnp.sum(x)


def trainer(buffer_size, **kwargs):
    """A compiled ``(state, num_epochs) -> (state, train_loss, validation_loss)``."""
    options = dict(
        loss_fn=quadratic_loss,
        optimizer=optax.sgd(0.05),
        plates=PLATES,
        steps_per_epoch=10,
        buffer_size=buffer_size,
    )
    return jax.jit(lambda s, n: pretrain.pretrain_epochs(s, n, **(options | kwargs)))


def run(state, epochs, **kwargs):
    return trainer(epochs, **kwargs)(state, epochs)


def test_members_converge_with_their_own_batch_orders():
    start = jax.random.normal(jax.random.key(0), (4, 3)) * 3
    state = pretrain.pretrain_init(start, optax.sgd(0.05), PLATES, jax.random.key(1))
    state, train_loss, _ = run(state, 30)
    np.testing.assert_allclose(state.position, jnp.broadcast_to(TARGET, (4, 3)), atol=0.05)
    assert train_loss.shape == (30, 4) and np.all(np.diff(np.asarray(train_loss[:10, 0])) < 0)
    # independent batch orders: the first batches of the members differ
    _, first = batching.schedules_next(PLATES, state.schedules, jax.random.key(2), 4)
    assert len({tuple(np.asarray(row)) for row in first["data"]}) == 4
    assert int(state.epoch) == 30 and np.all(np.asarray(state.best_epoch) == 30)


def test_early_stopping_restores_the_best_validation_point():
    """Validation prefers x = 0 on the way from x0 to TARGET: the best point is on the path."""
    start = jnp.tile(jnp.array([[-1.0, 2.0, -0.5]]), (2, 1))
    state = pretrain.pretrain_init(start, optax.sgd(0.05), PLATES, jax.random.key(0))
    path = []

    def validation_loss(x):
        return jnp.sum(x**2)

    one_epoch = trainer(1, validation_loss_fn=validation_loss, patience=5)
    for _ in range(40):
        state, _, valid = one_epoch(state, 1)
        path.append((np.asarray(state.position[0]), float(valid[0, 0]), bool(state.stopped[0])))
    losses = np.array([loss for _, loss, _ in path])
    best = int(np.argmin(losses[: int(state.best_epoch[0])]))
    assert int(state.best_epoch[0]) == best + 1
    np.testing.assert_allclose(state.best_position[0], path[best][0], rtol=1e-6)
    stop_epoch = next(i for i, (_, _, stopped) in enumerate(path) if stopped) + 1
    assert stop_epoch == int(state.best_epoch[0]) + 5  # patience 5
    # a stopped member is frozen
    np.testing.assert_allclose(path[-1][0], path[stop_epoch - 1][0])


def test_non_finite_loss_skips_the_step():
    def loss(x, indices):
        del indices
        return jnp.where(x[0] > 0, jnp.nan, jnp.sum((x - 1.0) ** 2))

    start = jnp.array([[-1.0, 0.0], [1.0, 0.0]])
    state = pretrain.pretrain_init(start, optax.sgd(0.1), PLATES, jax.random.key(0))
    state, _, _ = run(state, 2, loss_fn=loss)
    assert np.all(np.isfinite(np.asarray(state.position)))
    np.testing.assert_allclose(state.position[1], start[1])  # never moved


@pytest.mark.parametrize("optimizer", [optax.adamw(5e-2, weight_decay=1e-4), optax.adam(5e-2)])
def test_any_optax_optimizer(optimizer):
    start = jnp.zeros((3, 3))
    state = pretrain.pretrain_init(start, optimizer, (), jax.random.key(0))
    state, _, _ = jax.jit(
        lambda s: pretrain.pretrain_epochs(
            s,
            300,
            loss_fn=quadratic_loss_full,
            optimizer=optimizer,
            plates=(),
            steps_per_epoch=1,
            buffer_size=300,
        )
    )(state)
    np.testing.assert_allclose(state.position, jnp.broadcast_to(TARGET, (3, 3)), atol=0.05)


def quadratic_loss_full(x, indices):
    assert indices == {}
    return 0.5 * jnp.sum((x - TARGET) ** 2)
