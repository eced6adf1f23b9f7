"""Scale: SMILE's cost per step and its memory as the data grow from N = 10^4 to 10^6.

Three measurements, all float32 (the default), 4 chains vectorized, mini-batches of B = 256:

1. **Step time.** For each model (a linear regression, d = 6, where the per-step bookkeeping
   dominates; the MLP 10-32-32-1 of ``benchmarks.step_overhead``, d = 1,441) and each N, one
   ``SMILE`` kernel and a ``jax.jit(lax.fori_loop)`` over ``kernel.sample`` with the data as
   arguments (not constants), compiled once; then ``--repeats`` timed runs of ``--steps``
   steps, interleaved across N so that machine noise hits every N alike. Reported: the median
   time per step and its ratio to N = 10^4 (goal: <= 1.2 at N = 10^6).
2. **Batch schedule.** The epoch schedule's batches (a keyed permutation evaluated at the B
   positions needed, ``batching.schedule_next``) cost the same at every N: nothing
   O(N) happens at an epoch boundary (the permutation is never materialised), against an
   O(N) ``jax.random.permutation`` per epoch, amortised over its N / B batches.
3. **Memory.** One subprocess per (N, draws): ``MCMC(SMILE(model)).run`` on the linear
   regression with 500 warmup steps and ``draws`` kept draws, then ``get_samples()``.
   Reported: resident memory (``/proc/self/status``) after imports, after the data, at its
   peak and after the run; the bytes of the data, of the draws and statistics returned, and of
   the live JAX buffers after the run (each buffer once). A least-squares fit
   peak = a + b * N + c * draws checks that nothing grows like N * draws (nothing
   materialises a ``(draws, N)`` array).

The pointwise log-likelihood that ``az.from_numpyro(mcmc)`` computes is ``chains * draws * N``
floats by design (16 GB for 4 x 1,000 draws at N = 10^6): pass ``log_likelihood=False`` there,
or use ``SMILEEnsemble(log_likelihood=m)`` (a fixed random subset of m points, in chunks).

Run::

    python -m benchmarks.scale [--steps 2000] [--repeats 7] [--skip-memory] [--out scale.json]

(``--skip-steps``, ``--skip-schedule``, ``--skip-memory`` leave a part out.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import MCMC

from benchmarks.step_overhead import mlp_regression
from numpyro_smile import SMILE, batching, models

BATCH, NUM_CHAINS = 256, 4
SIZES = (10_000, 100_000, 1_000_000)
MEMORY_CONFIGS = (  # (N, draws)
    (10_000, 10_000),
    (100_000, 10_000),
    (1_000_000, 10_000),
    (1_000_000, 1_000),
    (1_000_000, 50_000),
)


#: Bayesian linear regression with prior sd 10 and noise sd 1 in the plate "N".
linear_regression = partial(
    models.linear_regression, prior_scale=10, noise_scale=1.0, plate_name="N"
)


MODELS = {
    "linear": (linear_regression, 6, "linear regression, d = 6"),
    "mlp": (mlp_regression, 10, "MLP 10-32-32-1, d = 1,441"),
}


def make_data(size: int, num_features: int, seed: int = 0):
    """float32 standard normal features and a smooth target with a little noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((size, num_features), dtype=np.float32)
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.standard_normal(size, dtype=np.float32)
    return jnp.asarray(X), jnp.asarray(y.astype(np.float32))


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of this process, from /proc, in MB.

    Not ``getrusage``: Linux carries ``ru_maxrss`` over ``execve`` from the forking parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ 1. step time


def compiled_loop(model, X, y, num_steps: int):
    """A warm (compiled) ``fori_loop`` of ``num_steps`` SMILE steps and its initial state."""
    kwargs = {"subsample_size": BATCH}
    kernel = SMILE(model, pretrain_steps=0)
    keys = jax.random.split(jax.random.key(0), NUM_CHAINS)
    state = kernel.init(keys, 10 * num_steps, None, (X, y), kwargs)

    @partial(jax.jit, static_argnums=3)
    def run(state, X, y, num_steps):
        step = lambda _, s: kernel.sample(s, (X, y), kwargs)  # noqa: E731
        return jax.lax.fori_loop(0, num_steps, step, state)

    jax.block_until_ready(run(state, X, y, num_steps))  # compile
    return lambda: jax.block_until_ready(run(state, X, y, num_steps))


def step_times(model_name: str, steps: int, repeats: int) -> list[dict]:
    model, num_features, _ = MODELS[model_name]
    loops = {}
    for size in SIZES:
        X, y = make_data(size, num_features)
        start = time.perf_counter()
        loops[size] = compiled_loop(model, X, y, steps)
        print(f"  {model_name}, N = {size:,}: init + compile {time.perf_counter() - start:.1f} s")
    times = {size: [] for size in SIZES}
    for _ in range(repeats):  # interleaved
        for size, loop in loops.items():
            start = time.perf_counter()
            loop()
            times[size].append((time.perf_counter() - start) / steps)
    base = np.median(times[SIZES[0]])
    return [
        {
            "model": model_name,
            "N": size,
            "step_ms_median": 1e3 * float(np.median(t)),
            "step_ms_min": 1e3 * float(np.min(t)),
            "step_ms_max": 1e3 * float(np.max(t)),
            "ratio_to_1e4": float(np.median(t) / base),
        }
        for size, t in times.items()
    ]


# ------------------------------------------------------------------ 2. batch schedule


def batch_schedule_times(steps: int, repeats: int) -> list[dict]:
    """Time per batch of the epoch schedule (4 chains), and of one full permutation.

    The per-batch cost depends on how far N is below the Feistel network's range 4^h (cycle
    walking: 4^h / N expected passes), not on N itself; N = 10^8 shows the schedule's O(1)
    state and O(B) work where a materialised permutation would be 400 MB per chain."""
    rows = []
    for size in (*SIZES, 100_000_000):
        plate = batching.PlateInfo(size, BATCH)
        plates = (("N", plate),)
        schedules = jax.vmap(partial(batching.schedules_init, plates, kind="epoch"))(
            jax.random.split(jax.random.key(0), NUM_CHAINS)
        )

        @jax.jit
        def run(schedules, key, plates=plates):
            def body(i, carry):
                schedules, acc = carry
                schedules, idx = batching.schedules_next(
                    plates, schedules, jax.random.fold_in(key, i), NUM_CHAINS
                )
                return schedules, acc + idx["N"].sum()

            return jax.lax.fori_loop(0, steps, body, (schedules, jnp.zeros((), jnp.int32)))

        jax.block_until_ready(run(schedules, jax.random.key(1)))
        per_batch = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(run(schedules, jax.random.key(1)))
            per_batch.append((time.perf_counter() - start) / steps)
        batches_per_epoch = size // BATCH
        permutation_s = float("nan")  # a full permutation at 10^8 takes minutes on a CPU
        if size <= max(SIZES):
            permutation = jax.jit(lambda k, size=size: jax.random.permutation(k, size))
            jax.block_until_ready(permutation(jax.random.key(2)))
            start = time.perf_counter()
            jax.block_until_ready(permutation(jax.random.key(3)))
            permutation_s = time.perf_counter() - start
        rows.append(
            {
                "N": size,
                "epochs_in_run": steps / batches_per_epoch,
                "batch_us_median": 1e6 * float(np.median(per_batch)),
                "full_permutation_ms": 1e3 * permutation_s,
                "permutation_us_per_batch_amortised": 1e6 * permutation_s / batches_per_epoch,
            }
        )
        del schedules
    return rows


# ------------------------------------------------------------------ 3. memory (subprocesses)


def _distinct_buffer_bytes(arrays) -> int:
    """Bytes of the device buffers behind ``arrays``, each counted once: a compiled call that
    closes over an array (``SMILE.init`` over the data) holds a second ``jax.Array`` on the
    same buffer, which ``jax.live_arrays()`` lists twice."""
    buffers = {}
    for array in arrays:
        for shard in array.addressable_shards:
            try:
                key = shard.data.unsafe_buffer_pointer()
            except Exception:  # PRNG key arrays: tiny, count them by object
                key = id(shard.data)
            buffers[key] = shard.data.nbytes
    return sum(buffers.values())


def memory_child(size: int, draws: int) -> dict:
    """Runs in a fresh process: one MCMC run, its memory figures as a dict."""
    rss_imports = _status_mb("VmRSS")
    X, y = make_data(size, 6)
    jax.block_until_ready((X, y))
    rss_data = _status_mb("VmRSS")
    mcmc = MCMC(
        SMILE(linear_regression, pretrain_steps=0),
        num_warmup=500,
        num_samples=draws,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.key(0), X, y, subsample_size=BATCH)
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    stats = mcmc.get_extra_fields(group_by_chain=True)
    wall = time.perf_counter() - start
    returned = sum(np.asarray(v).nbytes for v in jax.tree.leaves((samples, stats)))
    live_arrays = sorted(jax.live_arrays(), key=lambda a: -a.nbytes)
    live = _distinct_buffer_bytes(live_arrays)
    return {
        "N": size,
        "draws": draws,
        "wall_s": wall,
        "rss_imports_mb": rss_imports,
        "rss_data_mb": rss_data,
        "rss_peak_mb": _status_mb("VmHWM"),
        "rss_after_mb": _status_mb("VmRSS"),
        "data_mb": (X.nbytes + y.nbytes) / 2**20,
        "draws_and_stats_mb": returned / 2**20,
        "live_jax_arrays_mb": live / 2**20,
        "largest_live_arrays": [f"{a.dtype}{list(a.shape)}" for a in live_arrays[:4]],
    }


def memory_table() -> list[dict]:
    rows = []
    for size, draws in MEMORY_CONFIGS:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--memory-child", str(size), str(draws)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"  N = {size:,}, draws = {draws:,}: peak RSS {row['rss_peak_mb']:.0f} MB "
            f"({row['wall_s']:.1f} s)"
        )
    return rows


def fit_memory(rows: list[dict]) -> dict:
    """peak RSS = a + b * N + c * draws (+ e * N * draws, which should be ~0)."""
    n = np.array([r["N"] for r in rows], float)
    s = np.array([r["draws"] for r in rows], float)
    peak = np.array([r["rss_peak_mb"] for r in rows])
    design = np.stack([np.ones_like(n), n, s], axis=1)
    coef, *_ = np.linalg.lstsq(design, peak, rcond=None)
    residual = peak - design @ coef
    return {
        "intercept_mb": float(coef[0]),
        "bytes_per_data_point": float(coef[1] * 2**20),
        "bytes_per_draw": float(coef[2] * 2**20),
        "max_abs_residual_mb": float(np.max(np.abs(residual))),
        # A (draws, N) float32 array at N = 10^6, 10^4 draws would be 40 GB.
        "n_times_draws_array_at_1e6_1e4_mb": 4 * 1e6 * 1e4 / 2**20,
    }


# ------------------------------------------------------------------ report


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-schedule", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return {}

    results = {
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "batch_size": BATCH,
        "num_chains": NUM_CHAINS,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    if not args.skip_steps:
        print("step time")
        results["step_time"] = [
            r for m in args.models for r in step_times(m, args.steps, args.repeats)
        ]
    if not args.skip_schedule:
        print("batch schedule")
        results["batch_schedule"] = batch_schedule_times(args.steps, args.repeats)
    if not args.skip_memory:
        print("memory (one subprocess per row)")
        results["memory"] = memory_table()
        results["memory_fit"] = fit_memory(results["memory"])

    print(f"\n{results['device']}, {results['cpu_count']} CPUs, jax {results['jax']}")
    print(f"B = {BATCH}, {NUM_CHAINS} chains vectorized, float32\n")
    if "step_time" in results:
        print("Step time (median of the interleaved repeats; ratio to N = 10^4, goal <= 1.2):")
        cols = ["model", "N", "step_ms_median", "step_ms_min", "step_ms_max", "ratio_to_1e4"]
        print(_table(results["step_time"], cols))
    if "batch_schedule" in results:
        print("\nEpoch batch schedule, 4 chains (per batch) vs one full permutation:")
        cols = [
            "N",
            "epochs_in_run",
            "batch_us_median",
            "full_permutation_ms",
            "permutation_us_per_batch_amortised",
        ]
        print(_table(results["batch_schedule"], cols))
    if "memory" in results:
        print("\nMemory (MB; one process per row; 500 warmup steps + draws, linear model):")
        cols = [
            "N",
            "draws",
            "rss_imports_mb",
            "rss_data_mb",
            "rss_peak_mb",
            "rss_after_mb",
            "data_mb",
            "draws_and_stats_mb",
            "live_jax_arrays_mb",
        ]
        print(_table(results["memory"], cols))
        fit = results["memory_fit"]
        print(
            f"\npeak RSS ~ {fit['intercept_mb']:.0f} MB + {fit['bytes_per_data_point']:.0f} B "
            f"per data point + {fit['bytes_per_draw']:.0f} B per draw (max residual "
            f"{fit['max_abs_residual_mb']:.0f} MB); a (draws, N) float32 array at N = 10^6, "
            f"10^4 draws would be {fit['n_times_draws_array_at_1e6_1e4_mb']:,.0f} MB."
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
