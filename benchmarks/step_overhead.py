"""Step overhead: one SMILE step vs the two raw mini-batch value-and-gradient evaluations it wraps.

Model: Bayesian MLP regression 10-32-32-1 (1,441 weights, N(0, 1) priors, Gaussian likelihood
with learned noise) on N = 100,000 synthetic points, mini-batches of B = 256, 4 chains
vectorized. Measured side by side in one process, each loop compiled once and then timed:

* ``raw``: a ``lax.fori_loop`` doing, per step and per chain, what a McLachlan step must do at
  the very least: draw B batch indices and evaluate the mini-batch potential and its gradient
  twice (through the same NumPyro potential as the kernel, so the model cost is identical);
* ``smile``: a ``lax.fori_loop`` of ``SMILE.sample`` (pSMILE, tuner on: the default);
* ``floor``: what any such McLachlan step must do beyond ``raw``, without the bookkeeping: per
  step and chain, the next batch of SMILE's batch schedule and one isokinetic McLachlan step
  (three velocity updates, two drifts, two sanitised value-and-gradients of the flat
  parameters) under a diagonal preconditioner; no tuner, gradient statistics, guardrail,
  resets or convergence monitor. ``smile - floor`` is the per-step bookkeeping;
* ``mcmc``: ``numpyro.infer.MCMC(SMILE(model)).run`` end to end (what a user runs).

Timed runs of the three loops alternate (best of ``--repeats`` each), so machine noise hits
them alike. On a loaded machine the best times can come from different moments; the median of
the per-round ratios (``step_ratio_paired``) is the steadier figure there.

Reports the per-step ratio smile / raw (goals: <= 1.10 on a CPU, <= 1.15 on an accelerator;
the kernel issue's was 1.15 everywhere), the floor's ratio floor / raw, and
start-up (``init`` + compile of the sampling loop) over the raw loop's compile time (goal
<= 2). Run::

    python -m benchmarks.step_overhead [--steps 2000] [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import MCMC
from numpyro.infer.util import initialize_model

from numpyro_smile import (
    SMILE,
    SMILEConfig,
    batching,
    dynamics,
    model_views,
    models,
    sampler,
    targets,
)

N, D_IN, HIDDEN, BATCH, NUM_CHAINS = 100_000, 10, 32, 256, 4


def mlp_regression(X, y=None, subsample_size=None):
    """MLP 10-32-32-1 with N(0, 1) priors and a learned noise scale: the package's
    :func:`numpyro_smile.models.mlp_regression` with two hidden layers of 32."""
    models.mlp_regression(X, y, subsample_size, hidden=(HIDDEN, HIDDEN))


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D_IN)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=N)).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y)


def _time(fn, *args, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (after the first, compiling, call)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def raw_loop(X, y, num_steps: int):
    """The floor: per step, B random indices and 2 mini-batch value-and-grads per chain."""
    kwargs = {"subsample_size": BATCH}
    first_batch = {model_views.SUBSAMPLE_KWARG: {"data": jnp.arange(BATCH)}}
    info = initialize_model(
        jax.random.key(0),
        partial(model_views.subsample_model, mlp_regression),
        dynamic_args=True,
        model_args=(X, y),
        model_kwargs={**kwargs, **first_batch},
    )
    z0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (NUM_CHAINS, *a.shape)), info.param_info.z)

    def potential(z, idx):
        return info.potential_fn(X, y, **kwargs, **{model_views.SUBSAMPLE_KWARG: {"data": idx}})(z)

    value_and_grad = jax.vmap(jax.value_and_grad(potential))

    @partial(jax.jit, static_argnums=2)
    def run(z, key, num_steps):
        def body(_, carry):
            z, key, acc = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (NUM_CHAINS, BATCH), 0, N)
            for _ in range(2):  # McLachlan: two evaluations per step, on the same batch
                value, grad = value_and_grad(z, idx)
                z = jax.tree.map(lambda a, g: a - 1e-6 * g, z, grad)
                acc = acc + value.sum()
            return z, key, acc

        return jax.lax.fori_loop(0, num_steps, body, (z, key, 0.0))

    return run, z0


def floor_loop(X, y, batch_schedule: str):
    """The step without its bookkeeping: per step and chain, SMILE's next batch and one
    isokinetic McLachlan step on the flat parameters (SMILE's sanitised value-and-gradient of
    the same potential), under a fixed diagonal preconditioner (not all ones, which XLA would
    fold away)."""
    problem = targets.model_problem(
        mlp_regression, X, y, subsample_size=BATCH, rng_key=jax.random.key(0)
    )
    dim, plates = problem.position.shape[0], tuple(problem.plates.items())
    config = SMILEConfig(batch_schedule=batch_schedule)
    plan = sampler.make_plan(config, problem.plates, 1000, dim)
    value_and_grad = sampler.build_kernel(plan, NUM_CHAINS, warmup_check=None).value_and_grad
    key_momentum, key_scale, key_batches = jax.random.split(jax.random.key(4), 3)
    start = (
        jnp.broadcast_to(problem.position, (NUM_CHAINS, dim)),
        dynamics.random_unit_vector(key_momentum, (NUM_CHAINS, dim)),
        jnp.zeros((NUM_CHAINS, dim)),
        jnp.exp(0.1 * jax.random.normal(key_scale, (NUM_CHAINS, dim))),
        jax.vmap(lambda key: batching.schedules_init(plates, key, batch_schedule))(
            jax.random.split(key_batches, NUM_CHAINS)
        ),
    )
    step_size = jnp.asarray(1e-4)

    def chain(position, momentum, grad, scale, indices):
        state = dynamics.IntegratorState(position, momentum, jnp.zeros(()), grad)
        logdensity_and_grad = value_and_grad(problem.target, indices)
        new, kinetic = dynamics.isokinetic_step(state, logdensity_and_grad, step_size, scale)
        return new.position, new.momentum, new.logdensity_grad, new.logdensity + kinetic

    @partial(jax.jit, static_argnums=2)
    def run(carry, key, num_steps):
        def body(_, carry):
            (position, momentum, grad, scale, batches), key, acc = carry
            key, sub = jax.random.split(key)
            batches, indices = batching.schedules_next(plates, batches, sub, NUM_CHAINS)
            position, momentum, grad, energy = jax.vmap(chain)(
                position, momentum, grad, scale, indices
            )
            return (position, momentum, grad, scale, batches), key, acc + energy.sum()

        return jax.lax.fori_loop(0, num_steps, body, (carry, key, 0.0))

    return run, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--batch-schedule",
        default="epoch",
        choices=["epoch", "with_replacement"],
        help="SMILE's batch schedule (the raw floor always draws with replacement)",
    )
    args = parser.parse_args()
    X, y = make_data()
    kwargs = {"subsample_size": BATCH}

    # raw floor: compile time, then steady-state time per step
    start = time.perf_counter()
    run_raw, z0 = raw_loop(X, y, args.steps)
    jax.block_until_ready(run_raw(z0, jax.random.key(1), args.steps))
    raw_startup = time.perf_counter() - start

    # SMILE kernel: init + compile of a jitted fori_loop over kernel.sample, then per step
    kernel = SMILE(mlp_regression, batch_schedule=args.batch_schedule, pretrain_steps=0)
    start = time.perf_counter()
    state = kernel.init(jax.random.split(jax.random.key(2), NUM_CHAINS), 1000, None, (X, y), kwargs)

    @partial(jax.jit, static_argnums=1)
    def run_smile(state, num_steps):
        return jax.lax.fori_loop(0, num_steps, lambda _, s: kernel.sample(s, (X, y), kwargs), state)

    jax.block_until_ready(run_smile(state, args.steps))
    smile_startup = time.perf_counter() - start
    run_floor, floor_start = floor_loop(X, y, args.batch_schedule)
    jax.block_until_ready(run_floor(floor_start, jax.random.key(5), args.steps))
    # Interleave the timed runs so that machine noise hits the loops alike.
    raw_times, smile_times, floor_times = [], [], []
    for _ in range(args.repeats):
        raw_times.append(_time(run_raw, z0, jax.random.key(1), args.steps, repeats=1))
        smile_times.append(_time(run_smile, state, args.steps, repeats=1))
        floor_times.append(_time(run_floor, floor_start, jax.random.key(5), args.steps, repeats=1))
    raw_step, smile_step = min(raw_times) / args.steps, min(smile_times) / args.steps
    floor_step = min(floor_times) / args.steps
    paired = np.median(np.asarray(smile_times) / np.asarray(raw_times))
    floor_paired = np.median(np.asarray(floor_times) / np.asarray(raw_times))

    # The user path: MCMC.run (its own loop; NumPyro recompiles it on every run).
    mcmc = MCMC(
        SMILE(mlp_regression),
        num_warmup=args.steps // 2,
        num_samples=args.steps // 2,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.key(3), X, y, **kwargs)
    jax.block_until_ready(mcmc.get_samples())
    mcmc_total = time.perf_counter() - start

    results = {
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "model": "MLP 10-32-32-1, N=100000, B=256, 4 chains vectorized, float32",
        "batch_schedule": args.batch_schedule,
        "steps": args.steps,
        "raw_step_ms": 1e3 * raw_step,
        "smile_step_ms": 1e3 * smile_step,
        "step_ratio": smile_step / raw_step,
        "step_ratio_paired": float(paired),
        "floor_step_ms": 1e3 * floor_step,
        "floor_ratio": floor_step / raw_step,
        "floor_ratio_paired": float(floor_paired),
        "raw_startup_s": raw_startup,
        "smile_startup_s": smile_startup,
        "startup_ratio": smile_startup / raw_startup,
        "mcmc_run_s": mcmc_total,
        "mcmc_run_ms_per_step_incl_compile": 1e3 * mcmc_total / args.steps,
    }
    goal = 1.10 if jax.default_backend() == "cpu" else 1.15
    width = max(map(len, results))
    for name, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{name:>{width}}  {shown}")
    print(
        f"\nstep ratio {results['step_ratio']:.3f} (goal <= {goal:.2f}; floor without bookkeeping "
        f"{results['floor_ratio']:.3f}); start-up ratio {results['startup_ratio']:.2f} (goal <= 2)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
