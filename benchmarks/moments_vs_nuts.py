"""Full-batch ``MCMC(SMILE(model))`` against NUTS: posterior moments of everyday models.

What a NumPyro user checks first when swapping ``NUTS`` for ``SMILE`` on a model without a
subsample plate: eight schools (non-centred) and NumPyro's ``examples/bnn.py`` network (two
tanh layers of 5 units, N = 100, a Gamma(3, 1) prior on the noise precision). Each model runs
with NUTS, with SMILE's default energy target (``desired_energy_var=5e-4``) and with MILE's
schedule (``desired_energy_var=(0.5, 0.1)``), 4 chains each; the table gives the mean and sd
of the hyperparameters and the tuned step size. Run::

    python -m benchmarks.moments_vs_nuts [--out outputs/moments_vs_nuts.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from numpyro.infer.reparam import TransformReparam

from numpyro_smile import SMILE

SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def eight_schools(sigma, y=None):
    """Non-centred eight schools."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        with numpyro.handlers.reparam(config={"theta": TransformReparam()}):
            theta = numpyro.sample(
                "theta",
                dist.TransformedDistribution(
                    dist.Normal(0.0, 1.0), dist.transforms.AffineTransform(mu, tau)
                ),
            )
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def bnn(X, Y=None, hidden=5):
    """NumPyro's examples/bnn.py network."""
    w1 = numpyro.sample("w1", dist.Normal(jnp.zeros((X.shape[1], hidden)), 1.0))
    w2 = numpyro.sample("w2", dist.Normal(jnp.zeros((hidden, hidden)), 1.0))
    w3 = numpyro.sample("w3", dist.Normal(jnp.zeros((hidden, 1)), 1.0))
    prec_obs = numpyro.sample("prec_obs", dist.Gamma(3.0, 1.0))
    out = jnp.tanh(jnp.tanh(X @ w1) @ w2) @ w3
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("Y", dist.Normal(out, 1.0 / jnp.sqrt(prec_obs)).to_event(1), obs=Y)


def bnn_data(n: int = 100, d: int = 3, noise: float = 0.05):
    """examples/bnn.py's toy data: polynomial features of a 1-D input, a wiggly target."""
    x = np.linspace(-1, 1, n)
    X = np.power(x[:, None], np.arange(d))
    W = 0.5 * np.random.default_rng(0).normal(size=d)
    y = X @ W + 0.5 * (0.5 + X[:, 1]) ** 2 * np.sin(4.0 * X[:, 1])
    y = y + noise * np.random.default_rng(1).normal(size=n)
    y = (y - y.mean()) / y.std()
    return X.astype(np.float32), y[:, None].astype(np.float32)


PROBLEMS = {
    "eight_schools": (eight_schools, (SCHOOLS_SIGMA,), {"y": SCHOOLS_Y}, ("mu", "tau")),
    "bnn": (bnn, bnn_data(), {}, ("prec_obs",)),
}
KERNELS = {
    "nuts": lambda model: NUTS(model),
    "smile": lambda model: SMILE(model),
    "smile_mile_schedule": lambda model: SMILE(model, desired_energy_var=(0.5, 0.1)),
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/moments_vs_nuts.json"))
    args = parser.parse_args(argv)
    records = []
    for problem, (model, model_args, model_kwargs, names) in PROBLEMS.items():
        for label, make in KERNELS.items():
            nuts = label == "nuts"  # NUTS: half the steps (each is a whole trajectory)
            mcmc = MCMC(
                make(model),
                num_warmup=args.warmup // (2 if nuts else 1),
                num_samples=args.samples // (2 if nuts else 1),
                num_chains=4,
                chain_method="sequential" if nuts else "vectorized",
                progress_bar=False,
            )
            start = time.perf_counter()
            mcmc.run(jax.random.key(args.seed), *model_args, **model_kwargs)
            wall = time.perf_counter() - start
            samples = mcmc.get_samples()
            record = {"model": problem, "kernel": label, "wall_s": round(wall, 1)}
            for name in names:
                values = np.asarray(samples[name], np.float64).reshape(-1)
                record[name] = [round(values.mean(), 3), round(values.std(), 3)]
            if not nuts:
                step = np.asarray(mcmc.get_extra_fields()["step_size"])
                record["step_size"] = round(float(np.median(step)), 4)
            records.append(record)
            print(json.dumps(record), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    main()
