"""Figures of the documentation's concept pages, each from a real (small) run of numpyro-smile.

Run from the repository root::

    python docs/figures.py            # all figures into docs/img/
    python docs/figures.py guardrail  # only some: trajectory, energy, precondition, guardrail

Every number a figure shows is printed as well, so the pages can quote it. The runs are kept
small (about two minutes in all on a 2-core CPU); seeds are fixed, so a rerun on the same
machine and versions redraws the same figures.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC

from numpyro_smile import SMILE, models

IMG = Path(__file__).parent / "img"
BLUE, ORANGE, RED, GREY = "#3b5bdb", "#e8590c", "#c92a2a", "#868e96"


#: The README's quickstart model: y ~ N(X beta, 1), beta ~ N(0, 1), in the plate "N".
linear_regression = partial(models.linear_regression, plate_name="N")


def exact_posterior(X, y):
    """Mean and covariance of beta in :func:`linear_regression` (conjugate)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    precision = X.T @ X + np.eye(X.shape[1])
    cov = np.linalg.inv(precision)
    return cov @ X.T @ y, cov


def save(fig, name: str) -> None:
    IMG.mkdir(exist_ok=True)
    fig.savefig(IMG / name, dpi=130, bbox_inches="tight")
    plt.close(fig)
    print(f"  wrote docs/img/{name}")


def ellipse(ax, cov, levels=(1, 2), **kwargs):
    """Draw the ``levels``-sigma contours of a centred 2-D Gaussian."""
    angles = np.linspace(0, 2 * np.pi, 200)
    root = np.linalg.cholesky(cov)
    for level in levels:
        points = level * root @ np.stack([np.cos(angles), np.sin(angles)])
        ax.plot(points[0], points[1], **kwargs)


# ---------------------------------------------------------------------------------------------
# (a) MCLMC on a correlated 2-D Gaussian
# ---------------------------------------------------------------------------------------------


def figure_trajectory() -> None:
    """Full-batch MCLMC (MILE tuning) on a correlated Gaussian: path and draws."""
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    precision = jnp.asarray(np.linalg.inv(cov), jnp.float32)

    def potential(z):
        return 0.5 * z["x"] @ precision @ z["x"]

    # desired_energy_var=5e-4 (BlackJAX's default) rather than MILE's 0.5 -> 0.1: accurate
    # moments in two dimensions, where MILE's large steps cost about 20 percent of variance.
    kernel = SMILE(potential_fn=potential, desired_energy_var=5e-4)
    mcmc = MCMC(kernel, num_warmup=1000, num_samples=2000, progress_bar=False)
    mcmc.run(
        jax.random.key(0),
        init_params={"x": jnp.array([2.5, -1.5])},
        extra_fields=("step_size", "L"),
    )
    x = np.asarray(mcmc.get_samples()["x"])
    extra = mcmc.get_extra_fields()
    step_size, L = float(extra["step_size"][-1]), float(extra["L"][-1])
    sample_cov = np.cov(x.T)
    print(f"  tuned step size {step_size:.3f}, L {L:.2f}")
    print(f"  sample covariance {sample_cov.round(3).tolist()} (target {cov.tolist()})")

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4), sharex=True, sharey=True)
    ax = axes[0]
    ellipse(ax, cov, color=GREY, lw=1)
    path = x[:120]
    ax.plot(path[:, 0], path[:, 1], "-", color=BLUE, lw=1, alpha=0.8)
    ax.plot(path[:, 0], path[:, 1], ".", color=BLUE, ms=3)
    ax.plot(*path[0], "o", color=ORANGE, ms=6, label="first draw after warmup")
    ax.set_title(f"120 consecutive steps (step size {step_size:.2f}, L {L:.2f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(x[:, 0], x[:, 1], ".", color=BLUE, ms=2, alpha=0.35)
    ellipse(ax, cov, color="black", lw=1.2)
    ax.set_title("2,000 draws; the target's 1- and 2-sigma contours", fontsize=10)
    for ax in axes:
        ax.set_xlabel("$x_1$")
        ax.set_aspect("equal")
    axes[0].set_ylabel("$x_2$")
    axes[0].set_xlim(-3.5, 3.5)
    axes[0].set_ylim(-3.5, 3.5)
    save(fig, "mclmc_trajectory.png")


# ---------------------------------------------------------------------------------------------
# (b) Energy error: full batch vs mini-batches at the same step size
# ---------------------------------------------------------------------------------------------


def energy_errors(X, y, subsample_size, init, num_steps):
    """|dE| of fixed-step SMILE steps (no tuning, no resets) from the posterior mean."""
    kernel = SMILE(
        linear_regression, adapt=False, step_size=0.005, reset_quantile=1.0, pretrain_steps=0
    )
    mcmc = MCMC(kernel, num_warmup=0, num_samples=num_steps, progress_bar=False)
    mcmc.run(
        jax.random.key(0),
        X,
        y,
        subsample_size=subsample_size,
        init_params=init,
        extra_fields=("energy_change",),
    )
    return np.abs(np.asarray(mcmc.get_extra_fields()["energy_change"], np.float64))


def figure_energy() -> None:
    """Bayesian linear regression (N = 10,000, d = 5): full-batch vs B = 256 energy errors."""
    results = {}
    with jax.enable_x64(True):  # float64: a reference free of the potential's rounding
        X = jax.random.normal(jax.random.key(1), (10_000, 5))
        y = X @ jnp.arange(1.0, 6.0) + jax.random.normal(jax.random.key(2), (10_000,))
        mean, _ = exact_posterior(X, y)
        init = {"beta": jnp.asarray(mean)}
        results["full batch"] = energy_errors(X, y, None, init, 2000)
        results["mini-batch, B = 256"] = energy_errors(X, y, 256, init, 2000)
    X32, y32 = X.astype(jnp.float32), y.astype(jnp.float32)
    float32 = energy_errors(X32, y32, None, {"beta": jnp.asarray(mean, jnp.float32)}, 2000)
    for label, errors in results.items():
        median, variance = np.median(errors), np.mean(errors**2) / 5
        print(f"  {label}: median |dE| {median:.3g}, mean dE^2/d {variance:.3g}")
    # float32: the full-batch potential (about 14,000) is resolved only to its float32 spacing,
    # so the kernel sums this dE from per-datum differences; it should match float64.
    spacing = np.spacing(np.float32(14_000))
    print(
        f"  full batch in float32: median |dE| {np.median(float32):.3g} (U's spacing {spacing:.2g})"
    )
    ratio = np.median(results["mini-batch, B = 256"]) / np.median(results["full batch"])
    print(f"  ratio of medians {ratio:.3g}")

    fig, ax = plt.subplots(figsize=(8, 3.8))
    bins = np.logspace(-8, 4, 90)
    for (label, errors), color in zip(results.items(), (BLUE, ORANGE)):
        ax.hist(
            errors,
            bins=bins,
            color=color,
            alpha=0.75,
            label=f"{label} (median {np.median(errors):.2g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("|energy error| per step, same step size 0.005")
    ax.set_ylabel("steps")
    ax.set_title(f"Mini-batch |dE| is {ratio / 1e6:.1f} million times the full-batch one")
    ax.legend(fontsize=8, loc="upper left")
    save(fig, "energy_error_full_vs_minibatch.png")


# ---------------------------------------------------------------------------------------------
# (c) SMILE vs pSMILE on a regression with features on different scales
# ---------------------------------------------------------------------------------------------


def figure_precondition() -> None:
    """Feature scales 0.03 ... 3 make posterior scales span 100x: the preconditioner's case."""
    scales = jnp.array([0.03, 0.1, 0.3, 1.0, 3.0])
    X = jax.random.normal(jax.random.key(1), (10_000, 5)) * scales
    y = X @ jnp.ones(5) + jax.random.normal(jax.random.key(2), (10_000,))
    _, cov = exact_posterior(X, y)
    exact_sd = np.sqrt(np.diag(cov))
    results = {}
    for label, precondition in (("SMILE", False), ("pSMILE (default)", True)):
        kernel = SMILE(linear_regression, precondition=precondition)
        mcmc = MCMC(
            kernel,
            num_warmup=1000,
            num_samples=2000,
            num_chains=4,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(jax.random.key(0), X, y, subsample_size=256, extra_fields=("step_size",))
        beta = np.asarray(mcmc.get_samples(group_by_chain=True)["beta"])
        ess = effective_sample_size(beta)
        sd_ratio = beta.reshape(-1, 5).std(0) / exact_sd
        step = float(np.mean(mcmc.get_extra_fields()["step_size"]))
        results[label] = (ess, sd_ratio)
        print(f"  {label}: step size {step:.2e}, ESS {ess.round(0).tolist()}")
        print(f"  {label}: sd / exact sd {sd_ratio.round(2).tolist()}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    positions = np.arange(5)
    for offset, ((label, (ess, sd_ratio)), color) in zip(
        (-0.2, 0.2), zip(results.items(), (ORANGE, BLUE))
    ):
        axes[0].bar(positions + offset, ess, width=0.4, color=color, label=label)
        axes[1].bar(positions + offset, sd_ratio, width=0.4, color=color, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("effective sample size (4 x 2,000 draws)")
    axes[1].axhline(1.0, color="black", lw=1)
    axes[1].set_ylabel("posterior sd / exact sd")
    for ax in axes:
        ax.set_xticks(positions, [f"{s:g}" for s in np.asarray(scales)])
        ax.set_xlabel("feature scale (its coefficient's posterior sd is about 0.01 / scale)")
        ax.legend(fontsize=8)
    fig.suptitle("B = 256 of N = 10,000: the same budget with and without the preconditioner")
    save(fig, "smile_vs_psmile.png")


# ---------------------------------------------------------------------------------------------
# (d) The reset guardrail on Neal's funnel
# ---------------------------------------------------------------------------------------------


def gamma_quantile(mean, std, z):
    """Wilson-Hilferty quantile of the Gamma moment-fitted to |dE| (as the tuner computes it
    for upper quantiles; ``z`` is the standard normal quantile)."""
    variance = std**2 + 1e-6
    shape, scale = mean**2 / variance, variance / mean
    return shape * scale * (1 - 1 / (9 * shape) + z / (3 * np.sqrt(shape))) ** 3


def figure_guardrail() -> None:
    """Neal's funnel (d = 10) with centred mini-batch gradient noise, four fixed step sizes."""
    num_data, batch, dim = 1000, 100, 10
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.01, (num_data, dim))
    noise = jnp.asarray(noise - noise.mean(0), jnp.float32)  # sums to 0: unbiased noise

    def potential(z, batch_indices):
        v, x = z["v"], z["x"]
        funnel = v**2 / 18 + 0.5 * jnp.sum(x**2) * jnp.exp(-v) + 0.5 * (dim - 1) * v
        flat = jnp.concatenate([v[None], x])
        return funnel - num_data / batch * jnp.sum(noise[batch_indices] @ flat)

    # One vectorized run, one chain per fixed step size (no tuning; the guardrail stays on):
    # initialise, then give each chain its own step size through NumPyro's post_warmup_state.
    step_sizes = np.array([0.03, 0.3, 3.0, 30.0], np.float32)
    num_chains = len(step_sizes)
    init = {"v": jnp.zeros(num_chains), "x": jnp.full((num_chains, dim - 1), 0.5)}
    kernel = SMILE(
        potential_fn=potential, data_size=num_data, subsample_size=batch, adapt=False, step_size=1.0
    )
    mcmc = MCMC(
        kernel,
        num_warmup=0,
        num_samples=4000,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    state = kernel.init(jax.random.split(jax.random.key(0), num_chains), 0, init)
    mcmc.post_warmup_state = state._replace(step_size=jnp.asarray(step_sizes))
    mcmc.run(
        state.rng_key,
        init_params=init,
        extra_fields=("energy_change", "energy_tuner.abs_mean", "energy_tuner.abs_std"),
    )
    extra = mcmc.get_extra_fields(group_by_chain=True)
    v = np.asarray(mcmc.get_samples(group_by_chain=True)["v"])
    reset = np.asarray(extra["diverging"])
    error = np.abs(np.asarray(extra["energy_change"], np.float64))
    mean = np.asarray(extra["energy_tuner.abs_mean"], np.float64)
    std = np.asarray(extra["energy_tuner.abs_std"], np.float64)
    # The threshold of step t comes from the statistics after step t - 1.
    threshold = gamma_quantile(mean[:, :-1], std[:, :-1], 2.0537489)  # z of the 0.98 quantile
    for i, step in enumerate(step_sizes):
        quantiles = np.quantile(v[i], [0.05, 0.5, 0.95]).round(2).tolist()
        print(
            f"  step size {step:g}: {reset[i].sum()} resets of {reset[i].size} steps "
            f"({reset[i].mean():.1%}); v quantiles 5/50/95% {quantiles} (exact +-4.93, 0)"
        )

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    ax = axes[0]
    chain, window = 1, slice(2000, 2300)
    steps = np.arange(reset.shape[1])[window]
    ax.plot(steps, error[chain, window], ".", color=BLUE, ms=3, label="|dE| of the step")
    ax.plot(
        steps,
        threshold[chain, window.start - 1 : window.stop - 1],
        color="black",
        lw=1,
        label="reset threshold (0.98-quantile of the fitted Gamma)",
    )
    hits = steps[reset[chain, window]]
    ax.plot(hits, error[chain, hits], "x", color=RED, ms=7, label="reset")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"Step size {step_sizes[chain]:g}: steps {window.start}-{window.stop}")
    ax.set_ylim(1e-4, 50)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    labels = [f"{s:g}" for s in step_sizes]
    rates = 100 * reset.mean(1)
    ax.bar(labels, rates, color=[BLUE, BLUE, BLUE, RED])
    for i, rate in enumerate(rates):
        ax.annotate(f"{rate:.1f}%", (i, rate), ha="center", va="bottom", fontsize=8)
    ax.axhline(2.0, color="black", lw=1, ls="--", label="1 - reset_quantile = 2 percent")
    ax.set_ylim(0, 110)
    ax.set_xlabel("fixed step size")
    ax.set_ylabel("resets, percent of steps")
    ax.set_title("Reset rate")
    ax.legend(fontsize=8)
    ax = axes[2]
    bins = np.linspace(-10, 10, 41)
    for i, color in zip(range(3), (ORANGE, BLUE, GREY)):
        ax.hist(
            v[i],
            bins=bins,
            density=True,
            histtype="step",
            lw=1.5,
            color=color,
            label=f"step size {step_sizes[i]:g}",
        )
    ax.axvline(float(v[3, -1]), color=RED, lw=1.5, label=f"step size {step_sizes[3]:g} (stuck)")
    grid = np.linspace(-10, 10, 200)
    ax.plot(
        grid,
        np.exp(-(grid**2) / 18) / np.sqrt(18 * np.pi),
        color="black",
        lw=1,
        label="exact N(0, 3^2)",
    )
    ax.set_xlabel("$v$ (log variance of the other coordinates)")
    ax.set_title("Marginal of $v$ after 4,000 steps: none is right")
    ax.legend(fontsize=7)
    fig.suptitle("Neal's funnel (d = 10) with mini-batch gradient noise: the reset guardrail")
    save(fig, "guardrail_funnel.png")


FIGURES = {
    "trajectory": figure_trajectory,
    "energy": figure_energy,
    "precondition": figure_precondition,
    "guardrail": figure_guardrail,
}


def main(names: list[str]) -> None:
    start = time.perf_counter()
    for name in names or FIGURES:
        if name not in FIGURES:
            raise SystemExit(f"unknown figure {name!r}; choose from {sorted(FIGURES)}")
        began = time.perf_counter()
        print(f"{name}:")
        FIGURES[name]()
        print(f"  {time.perf_counter() - began:.1f} s")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
