"""Fixed-seed draws of every public entry point, recorded and compared bit for bit.

A refactor that should change no number runs ``record`` before it starts and ``compare``
after: every array of every case (draws, sample statistics, log-likelihoods, pretrained points,
pretraining curves, the demo's metrics, the README quickstarts) must be bit-identical, or the
script prints, per array, the largest absolute and relative difference.

The cases cover mini-batch (pSMILE, SMILE, naive, fixed L), full batch (default and MILE's
schedule, preconditioned, leapfrog), ``potential_fn`` in both modes, the default pretraining
start, ``chain_method`` vectorized and sequential, the ensemble in both modes with validation,
a warmup -> resume round trip, a small-budget ``make demo`` and both README quickstarts.

Usage::

    python -m benchmarks.golden record  [--out outputs/golden]   # before the change
    python -m benchmarks.golden compare [--out outputs/golden]   # after it: exit 1 if any differ
    python -m benchmarks.golden compare --only ensemble_minibatch
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_smile import SMILE, SMILEEnsemble
from numpyro_smile.models import linear_regression, mlp_regression

README = Path(__file__).parents[1] / "README.md"


#: The tests' Bayesian linear regression: prior sd 10, noise sd 1, plate "N".
_linear_regression = partial(linear_regression, prior_scale=10.0, noise_scale=1.0, plate_name="N")


def _regression_data(n: int = 2000, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d))], 1).astype(np.float32)
    y = (X @ rng.normal(size=d + 1) + rng.normal(size=n)).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y)


def _mcmc_arrays(mcmc: MCMC) -> dict:
    out = {f"z/{k}": v for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    out.update({f"stats/{k}": v for k, v in extra.items() if k != "z"})
    state = mcmc.last_state
    out.update(
        {
            "last/step_size": state.step_size,
            "last/L": state.L,
            "last/momentum": state.momentum,
            "last/num_resets": state.num_resets,
        }
    )
    return out


def _mcmc_case(kernel_kwargs: dict, subsample_size, *, chains=4, method="vectorized", init=True):
    X, y = _regression_data()
    kernel = SMILE(_linear_regression, **kernel_kwargs)
    mcmc = MCMC(
        kernel,
        num_warmup=300,
        num_samples=200,
        num_chains=chains,
        chain_method=method,
        progress_bar=False,
    )
    init_params = None
    if init:
        rng = np.random.default_rng(1)
        init_params = {"beta": jnp.asarray(rng.normal(size=(chains, 5)) * 0.1, jnp.float32)}
        if method != "vectorized" and chains == 1:
            init_params = jax.tree.map(lambda a: a[0], init_params)
    mcmc.run(
        jax.random.key(3),
        X,
        y,
        subsample_size=subsample_size,
        init_params=init_params,
        extra_fields=("diverging", "energy_change", "step_size", "L", "potential_energy"),
    )
    return _mcmc_arrays(mcmc)


def _potential_case(minibatch: bool):
    X, y = _regression_data()
    n = X.shape[0]

    def potential(z, idx=None):
        beta = z["beta"]
        prior = 0.5 * jnp.sum(beta**2) / 100.0
        if idx is None:
            return prior + 0.5 * jnp.sum((y - X @ beta) ** 2)
        return prior + 0.5 * (n / idx.shape[0]) * jnp.sum((y[idx] - X[idx] @ beta) ** 2)

    kwargs = {"data_size": n, "subsample_size": 128} if minibatch else {}
    mcmc = MCMC(
        SMILE(potential_fn=potential, **kwargs),
        num_warmup=300,
        num_samples=200,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    init = {"beta": jnp.zeros((2, 5), jnp.float32) + 0.1}
    mcmc.run(jax.random.key(4), init_params=init, extra_fields=("step_size", "diverging"))
    return _mcmc_arrays(mcmc)


def _idata_arrays(idata) -> dict:
    out = {}
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            out[f"{group}/{name}"] = np.asarray(var.values)
    return out


def _ensemble_data(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2)).astype(np.float32)
    y = (np.sin(X[:, 0]) * X[:, 1] + 0.2 * rng.normal(size=n)).astype(np.float32)
    return (X[:400], y[:400]), (X[400:500], y[400:500]), (X[500:], y[500:])


def _ensemble(full_batch: bool, **kwargs) -> SMILEEnsemble:
    return SMILEEnsemble(
        partial(mlp_regression, hidden=(8,), subsample_size=32),
        num_members=3,
        num_warmup=200,
        num_samples=200,
        thinning=5,
        pretrain_epochs=20,
        full_batch=full_batch,
        progress_bar=False,
        **kwargs,
    )


def _ensemble_case(full_batch: bool):
    train, valid, test = _ensemble_data()
    ensemble = _ensemble(full_batch, posterior_predictive=True)
    idata = ensemble.run(jax.random.key(5), *train, validation=valid)
    out = _idata_arrays(idata)
    for group in ("posterior", "pretrained"):
        for name, value in ensemble.evaluate(idata, *test, group=group).items():
            out[f"evaluate_{group}/{name}"] = np.asarray(value)
    return out


def _resume_case():
    train, valid, _ = _ensemble_data()
    first = _ensemble(False)
    first.warmup(jax.random.key(6), *train, validation=valid)
    idata = _ensemble(False).run(jax.random.key(7), *train, resume_from=first.post_warmup_state)
    return _idata_arrays(idata)


def _demo_case():
    from numpyro_smile import demo

    with contextlib.redirect_stdout(io.StringIO()):
        result = demo.run(
            num_members=2, num_warmup=100, num_samples=200, out_dir="outputs/golden_demo"
        )
    out = {}
    for method, metrics in result["metrics"].items():
        for name, value in metrics.items():
            if not name.endswith("_s"):  # timings differ from run to run
                out[f"{method}/{name}"] = np.asarray(value)
    return out


def _readme_case(index: int):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[index]
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(README), "exec"), namespace)
    idata = namespace["idata"]
    return {
        k: v
        for k, v in _idata_arrays(idata).items()
        if k.split("/")[0] in ("posterior", "sample_stats", "pretrained", "pretraining")
    }


CASES = {
    "mcmc_psmile": lambda: _mcmc_case({}, 128),
    "mcmc_smile_sequential": lambda: _mcmc_case({"precondition": False}, 128, method="sequential"),
    "mcmc_naive": lambda: _mcmc_case({"adapt": False, "step_size": 2e-3}, 128),
    "mcmc_fixed_L_leapfrog": lambda: _mcmc_case({"L": 0.5, "integrator": "leapfrog"}, 128),
    "mcmc_pretrained_start": lambda: _mcmc_case({"pretrain_steps": 200}, 128, init=False),
    "mcmc_full_batch": lambda: _mcmc_case({}, None),
    "mcmc_full_batch_mile_preconditioned": lambda: _mcmc_case(
        {"desired_energy_var": (0.5, 0.1), "precondition": True}, None
    ),
    "mcmc_full_batch_sequential": lambda: _mcmc_case({}, None, chains=2, method="sequential"),
    "potential_fn_full_batch": lambda: _potential_case(False),
    "potential_fn_minibatch": lambda: _potential_case(True),
    "ensemble_minibatch": lambda: _ensemble_case(False),
    "ensemble_full_batch": lambda: _ensemble_case(True),
    "ensemble_resume": _resume_case,
    "demo_small": _demo_case,
    "readme_quickstart": lambda: _readme_case(0),
    "readme_ensemble": lambda: _readme_case(1),
}


def _compare(name: str, recorded: dict, now: dict) -> list[str]:
    problems = []
    for key in sorted(set(recorded) | set(now)):
        if key not in now or key not in recorded:
            problems.append(f"{name}: {key} {'missing now' if key not in now else 'new'}")
            continue
        a, b = np.asarray(recorded[key]), np.asarray(now[key])
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: {key} {a.dtype}{a.shape} -> {b.dtype}{b.shape}")
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            scale = np.maximum(np.abs(a.astype(np.float64)), 1e-30)
            problems.append(
                f"{name}: {key} max |diff| {np.nanmax(diff):.3g}, "
                f"max rel {np.nanmax(diff / scale):.3g}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("--out", default="outputs/golden")
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrays = {k: np.asarray(v) for k, v in case().items()}
        path = out / f"{name}.npz"
        if args.action == "record":
            np.savez(path, **arrays)
            status = f"recorded {len(arrays)} arrays"
        else:
            with np.load(path) as recorded:
                found = _compare(name, dict(recorded), arrays)
            problems += found
            status = "identical" if not found else f"{len(found)} differ"
        print(f"{name:40} {status:24} {time.perf_counter() - start:6.1f} s", flush=True)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
