"""How far SG-MCLMC travels per step when mini-batch noise caps its step size (issue 15).

On a Bayesian linear regression with a known Gaussian posterior (N = 10,000, 6 coefficients),
SMILE runs at fixed step sizes (``adapt=False``, no preconditioner, no partial refresh)
chosen so that the mini-batch gradient noise turns the velocity by a given angle per step,
for several mini-batch sizes B; full-batch MCLMC (``SMILE``'s default tuning) runs beside
them. Reported per run: the effective sample size per step (``arviz.ess``, bulk, mean over
coordinates, 4 chains started at exact posterior draws), the same over the step size (ESS per
unit of path length), and the posterior sd ratio (the bias).

What it shows. In the isokinetic velocity update a gradient g turns the unit velocity by about
eps |g| / (d - 1) radians, so mini-batch noise of total std |sigma| turns it by
theta = eps |sigma| / (d - 1) per step. SMILE caps theta (``max_noise_angle``) because the
bias grows with it, so its step size is at most theta (d - 1) / |sigma|, and |sigma|^2 grows as
N^2 / B. If the ESS per unit path length is the same with and without the noise, then at a
fixed number of steps the only thing mini-batches lose is that cap on the step size. Run::

    python -m benchmarks.sg_mixing [--steps 10000] [--frontier-variants] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_smile import SMILE, models

N, P = 10_000, 6
NOISE_SD, PRIOR_SD = 1.0, 10.0
NUM_CHAINS = 4


def problem(seed: int = 0) -> dict:
    """Data (an intercept and 5 standard-normal inputs), the exact posterior, and the
    per-datum gradients' covariance at the posterior mean (for the noise of a mini-batch)."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([np.ones((N, 1)), rng.normal(size=(N, P - 1))], axis=1)
    y = X @ rng.normal(size=P) + NOISE_SD * rng.normal(size=N)
    precision = X.T @ X / NOISE_SD**2 + np.eye(P) / PRIOR_SD**2
    cov = np.linalg.inv(precision)
    mean = cov @ X.T @ y / NOISE_SD**2
    per_datum = X * ((y - X @ mean) / NOISE_SD**2)[:, None]  # gradient of log lik_i
    return {
        "X": jnp.asarray(X, jnp.float32),
        "y": jnp.asarray(y, jnp.float32),
        "mean": mean,
        "cov": cov,
        "grad_var": per_datum.var(axis=0).sum(),  # tr Var_i[g_i]
        "init": rng.multivariate_normal(mean, cov, size=NUM_CHAINS).astype(np.float32),
    }


def noise_norm(data: dict, batch_size: int) -> float:
    """|sigma|: the total std of the mini-batch gradient's noise, (N^2 / B) tr Var_i[g_i]
    (with replacement; without, times (N - B) / (N - 1))."""
    fpc = (N - batch_size) / (N - 1)
    return float(np.sqrt(N**2 / batch_size * data["grad_var"] * fpc))


def run(
    data: dict,
    batch_size: int | None,
    fixed_step: float | None,
    steps: int,
    seed: int = 0,
    warmup: int = 2000,
    **settings,
) -> dict:
    """ESS per step and sd ratio of one run: ``batch_size=None``: full batch, tuned; a
    ``fixed_step``: that step size, fixed (no adaptation, no preconditioner); neither:
    ``SMILE(**settings)``."""

    def model(X, y):
        models.linear_regression(
            X, y, batch_size, prior_scale=PRIOR_SD, noise_scale=NOISE_SD, plate_name="N"
        )

    if fixed_step is not None:
        settings = {"adapt": False, "step_size": fixed_step, "precondition": False}
    kernel = SMILE(model, **settings)
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=steps,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.key(seed), data["X"], data["y"], init_params={"beta": jnp.asarray(data["init"])}
    )
    beta = np.asarray(mcmc.get_samples(group_by_chain=True)["beta"], np.float64)
    ess_per_step = np.mean(az.ess(az.convert_to_dataset({"beta": beta}))["beta"].values) / (
        NUM_CHAINS * steps
    )
    pooled, exact_sd = beta.reshape(-1, P), np.sqrt(np.diag(data["cov"]))
    sd_ratio = pooled.std(axis=0) / exact_sd
    extra = mcmc.get_extra_fields(group_by_chain=True)
    step_size = float(np.median(extra["step_size"]))
    return {
        "batch_size": batch_size or N,
        "step_size": step_size,
        "ess_per_step": float(ess_per_step),
        "ess_per_path": float(ess_per_step / step_size),
        "sd_ratio_mean": float(np.mean(sd_ratio)),
        "sd_ratio_min": float(np.min(sd_ratio)),
        "sd_ratio_max": float(np.max(sd_ratio)),
        "mean_error_max": float(np.max(np.abs(pooled.mean(0) - data["mean"]) / exact_sd)),
        "L": float(np.median(extra["L"])),
        "resets": float(np.mean(extra["diverging"])),
    }


def frontier_variants(data: dict, steps: int, mile_L: float, warmup: int = 2000) -> list[dict]:
    """The exact-posterior effect of :mod:`benchmarks.psmile_frontier`'s variants: each one's
    settings on this posterior (pSMILE's defaults otherwise, B = N/4 unless the variant
    sets it)."""
    variants = {
        "psmile (B=N/4)": (N // 4, {}),
        "psmile-B=N/8": (N // 8, {}),
        "psmile-B=N/2": (N // 2, {}),
        "psmile-angle=0.4": (N // 4, {"max_noise_angle": 0.4}),
        "psmile-angle=0.8": (N // 4, {"max_noise_angle": 0.8}),
        "psmile-L=full-batch": (N // 4, {"L": mile_L}),
        "psmile-step=limit": (N // 4, {"step_size": 1.0}),
    }
    rows = []
    for name, (batch_size, settings) in variants.items():
        row = run(data, batch_size, None, steps, warmup=warmup, **settings)
        rows.append({"variant": name, **row})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[N // 64, N // 16, N // 4])
    parser.add_argument("--angles", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--frontier-variants",
        action="store_true",
        help="also the exact-posterior effect of benchmarks.psmile_frontier's variants",
    )
    args = parser.parse_args(argv)
    data = problem()
    rows = [{"angle": None, **run(data, None, None, args.steps, warmup=args.warmup)}]
    print(rows[-1], flush=True)
    for batch_size in args.batch_sizes:
        sigma = noise_norm(data, batch_size)
        for angle in args.angles:
            step = angle * (P - 1) / sigma
            row = run(data, batch_size, step, args.steps, warmup=args.warmup)
            rows.append({"angle": angle, **row})
            print(rows[-1], flush=True)
    lines = [
        "| B | angle (rad/step) | step size | ESS per step | ESS per unit path "
        "| sd ratio (mean, min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        angle = "full batch" if r["angle"] is None else f"{r['angle']:.2f}"
        lines.append(
            f"| {r['batch_size']} | {angle} | {r['step_size']:.2e} | {r['ess_per_step']:.2e} | "
            f"{r['ess_per_path']:.1f} | {r['sd_ratio_mean']:.3f}, {r['sd_ratio_min']:.3f} |"
        )
    if args.frontier_variants:
        variants = frontier_variants(data, args.steps, rows[0]["L"], args.warmup)
        lines += [
            "",
            "| variant | step size | ESS per step | largest mean error (sd) | sd ratio (min, max) "
            "| resets |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {r['step_size']:.2e} | {r['ess_per_step']:.2e} | "
            f"{r['mean_error_max']:.2f} | {r['sd_ratio_min']:.3f}, {r['sd_ratio_max']:.3f} | "
            f"{r['resets']:.3f} |"
            for r in variants
        ]
        rows += variants
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sg_mixing.json").write_text(json.dumps(rows, indent=1))
        (out / "sg_mixing.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
