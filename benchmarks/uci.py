"""UCI benchmark suite: SMILE vs MILE, NUTS, the SG-MCMC family and deep ensembles, side by side.

Protocol of the MILE and SMILE papers' UCI experiments: standardise, shuffle with the seed,
split 70/10/20; an MLP (``--hidden``, default 16-16) with N(0, 1) priors; regression (Gaussian
likelihood with a learned noise scale) or classification (categorical; chosen automatically
for integer targets). For each seed, one deep ensemble (``de``: ``SMILEEnsemble``'s
pretraining, AdamW with early stopping) is trained and **every sampler starts from its K members**
(the protocol shared with the image and text benchmarks, :mod:`benchmarks.harness`):

* ``psmile``, ``smile``, ``smile-naive``: our kernel in mini-batch mode (B = ``--batch-size``,
  at most a quarter of the training set): with the gradient-noise preconditioner, without it,
  and without any tuning (fixed step size 1e-3, the papers' initial value);
* ``mile``: our kernel with full-data gradients (MILE's tuning);
* ``nuts``: NumPyro NUTS chains (full data), vectorized;
* ``sgld``, ``sghmc``, ``adasghmc``, ``csgld``: our stochastic-gradient kernels
  (``SMILEEnsemble(model, kernel=...)`` from the same members): SGLD; SGHMC with BlackJAX's
  protocol (10 steps per mini-batch from a fresh momentum, friction 0.01); scale-adapted SGHMC;
  cyclical SGLD (4 cosine cycles over the sampling steps, draws from each cycle's sampling
  half only). Each takes the same number of mini-batch gradients as ``psmile`` with the same
  epoch batch schedule; the step size (cSGLD: the cycles' peak) is chosen on validation LPPD
  from a grid by ``select_step_size`` (``GRID_SCALE``; a point where a member runs away is
  refused, and a best point at the grid's edge extends the grid by up to two more sizes;
  ``grid_wall_s`` and ``grid_grad_evals`` report what the grid cost beyond the chosen run,
  compilation included).

Each record of ``DIR/results.json`` holds the test metrics (``test_lppd``, ``test_rmse`` or
``test_accuracy``, calibration), timings (``wall_s`` for the method's own run including
compilation, ``compile_s``, ``pretrain_s`` of the shared deep ensemble, ``warmup_s``,
``sampling_s``), ``grad_evals`` (full-data-equivalent gradient evaluations of warmup and
sampling, all members), ``resets``, ``peak_rss_mb`` (the method's peak resident set, MiB),
final step sizes and the configuration. ``DIR/results.md``
has the tables and the targets' verdicts; ``DIR/lppd_vs_time.png`` and
``DIR/lppd_vs_grad_evals.png`` the trade-offs. Run::

    python -m benchmarks.uci --data $SMILE_DATA_DIR/airfoil.data --budget small --out DIR \\
        [--methods psmile mile nuts ...] [--seeds 1 2 3]

``--budget small`` runs every method on one UCI file in about ten minutes on 2 CPU cores;
``--budget paper`` uses the papers' budgets (K = 10, 50k warmup, 10k samples, thinning 10,
B = 256); ``--budget tiny`` is the CI smoke test (seconds of sampling).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import arviz as az
import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from benchmarks import harness
from benchmarks.harness import SG_METHODS, mean
from numpyro_smile import evaluate
from numpyro_smile.datasets import load_table, split_standardize
from numpyro_smile.models import mlp_classification, mlp_regression

METHODS = ("de", "psmile", "smile", "smile-naive", "mile", "nuts", *SG_METHODS)

BUDGETS = {
    "tiny": dict(
        members=2, warmup=40, samples=40, thinning=4, pretrain_epochs=5,
        nuts_warmup=10, nuts_samples=10, grid=(0.1,),
    ),
    "small": dict(
        members=4, warmup=5000, samples=10000, thinning=10, pretrain_epochs=200,
        nuts_warmup=100, nuts_samples=200, grid=(0.01, 0.1, 1.0),
    ),
    "paper": dict(
        members=10, warmup=50000, samples=10000, thinning=10, pretrain_epochs=200,
        nuts_warmup=100, nuts_samples=1000, grid=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    ),
}  # fmt: skip
# (tiny: one grid point; every point of a grid compiles its own loop, and select_step_size's
# choice among several is tested in tests/test_sgmcmc.py)


class Problem:
    """One data file and seed: the split, the models and the shared deep ensemble."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        X, y = load_table(args.data)
        self.name = Path(args.data).stem
        self.seed = seed
        self.classification = args.task == "classification" or (
            args.task == "auto" and np.all(y == np.round(y)) and len(np.unique(y)) <= 10
        )
        self.split = split_standardize(X, y, seed, classification=self.classification)
        self.n_train = len(self.split.train[1])
        self.n_likelihood = self.n_train
        self.batch_size = min(args.batch_size, self.n_train // 4)
        hidden = tuple(args.hidden)
        if self.classification:
            classes = int(max(part[1].max() for part in self.split)) + 1
            base = partial(mlp_classification, num_classes=classes, hidden=hidden)
        else:
            base = partial(mlp_regression, hidden=hidden)
        self.model = partial(base, subsample_size=self.batch_size)
        self.full_model = partial(base, subsample_size=None)
        self.budget = BUDGETS[args.budget]
        self.key = jax.random.key(seed)

    def config(self) -> dict:
        return {
            "data": self.name,
            "seed": self.seed,
            "n_train": self.n_train,
            "batch_size": self.batch_size,
            "task": "classification" if self.classification else "regression",
            **{k: v for k, v in self.budget.items() if k != "grid"},
        }

    def metrics(self, idata: az.InferenceData, group: str = "posterior", on: str = "test"):
        data = self.split.test if on == "test" else self.split.valid
        scores = evaluate(self.model, idata, *data, group=group)
        renamed = {f"{on}_{k}": float(v) for k, v in scores.items() if k != "num_draws"}
        return renamed | {"num_draws": int(scores["num_draws"])}


def run_nuts(problem: Problem, de_params: dict, de: dict) -> dict:
    budget = problem.budget
    members = budget["members"]

    def mcmc(num_warmup, num_samples):
        return MCMC(
            NUTS(problem.full_model),
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=members,
            chain_method="vectorized",
            progress_bar=False,
        )

    key = jax.random.fold_in(problem.key, 2)
    start = time.perf_counter()  # a 1 + 1 step run: what NumPyro spends compiling per run
    mcmc(1, 1).run(key, *problem.split.train, init_params=de_params)
    compile_s = time.perf_counter() - start
    sampler = mcmc(budget["nuts_warmup"], budget["nuts_samples"])
    start = time.perf_counter()
    sampler.warmup(
        key,
        *problem.split.train,
        init_params=de_params,
        extra_fields=("num_steps",),
        collect_warmup=True,
    )
    warmup_steps = int(np.sum(sampler.get_extra_fields()["num_steps"]))
    warmup_s = time.perf_counter() - start
    sampler.run(key, *problem.split.train, extra_fields=("num_steps", "diverging"))
    sampling_s = time.perf_counter() - start - warmup_s
    fields = sampler.get_extra_fields()
    idata = az.from_dict(posterior=jax.device_get(sampler.get_samples(group_by_chain=True)))
    return {
        "method": "nuts",
        **problem.metrics(idata),
        "wall_s": warmup_s + sampling_s,
        "compile_s": compile_s,
        "pretrain_s": de["pretrain_s"],
        "warmup_s": warmup_s,
        "sampling_s": sampling_s,
        "grad_evals": float(warmup_steps + np.sum(fields["num_steps"])),
        "resets": int(np.sum(fields["diverging"])),  # divergent transitions
        "step_size": np.asarray(sampler.last_state.adapt_state.step_size).tolist(),
    }


def run_problem(args: argparse.Namespace, seed: int) -> list[dict]:
    return harness.run_methods(Problem(args, seed), args.methods, extra={"nuts": run_nuts})


# ------------------------------------------------------------------------- reporting


def markdown(records: list[dict]) -> str:
    lines = []
    for data in dict.fromkeys(r["data"] for r in records):
        rows = [r for r in records if r["data"] == data]
        score = "test_accuracy" if "test_accuracy" in rows[0] else "test_rmse"
        seeds = sorted({r["seed"] for r in rows})
        lines += [
            f"### {data} (seeds {', '.join(map(str, seeds))}; means over seeds)",
            "",
            f"| method | test LPPD | {score[5:]} | wall s | grad evals | resets | step size |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            step = mine[0].get("step_size")
            step = f"{np.mean(step):.2e}" if step is not None else ""
            lines.append(
                f"| {method} | {mean(mine, 'test_lppd'):.3f} | {mean(mine, score):.3f} "
                f"| {mean(mine, 'wall_s'):.1f} | {mean(mine, 'grad_evals'):.0f} "
                f"| {mean(mine, 'resets'):.0f} | {step} |"
            )
        lines += ["", *targets(rows), ""]
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The suite's targets, each with its verdict and margin (where the methods ran)."""

    def get(method, key):
        return mean([r for r in rows if r["method"] == method], key)

    out = []
    methods = {r["method"] for r in rows}
    if {"psmile", "mile"} <= methods:
        gap = get("psmile", "test_lppd") - get("mile", "test_lppd")
        ratio = get("psmile", "grad_evals") / get("mile", "grad_evals")
        ok = gap >= -0.02 and ratio <= 0.2
        out.append(
            f"- psmile LPPD >= mile - 0.02 with <= 1/5 of its gradients: "
            f"{'met' if ok else 'missed'} (LPPD difference {gap:+.3f}, gradient ratio "
            f"{ratio:.2f})"
        )
    if {"psmile", "nuts"} <= methods:
        gap = get("psmile", "test_lppd") - get("nuts", "test_lppd")
        speed = get("nuts", "wall_s") / get("psmile", "wall_s")
        ok = gap >= 0 and speed >= 20
        out.append(
            f"- psmile LPPD >= nuts with >= 20x less wall time: {'met' if ok else 'missed'} "
            f"(LPPD difference {gap:+.3f}, nuts/psmile wall time {speed:.1f}x)"
        )
    for baseline in SG_METHODS:
        if {"psmile", baseline} <= methods:
            gap = get("psmile", "test_lppd") - get(baseline, "test_lppd")
            out.append(
                f"- psmile beats tuned {baseline} at the same mini-batch gradients (no grid): "
                f"{'met' if gap > 0 else 'missed'} (LPPD difference {gap:+.3f}; the "
                f"{baseline} grid cost {get(baseline, 'grid_wall_s'):.1f} s more)"
            )
    return out


def plots(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, name in [
        ("wall_s", "wall time of the method's run, s (log)", "lppd_vs_time.png"),
        ("grad_evals", "full-data gradient evaluations (log)", "lppd_vs_grad_evals.png"),
    ]:
        datasets = list(dict.fromkeys(r["data"] for r in records))
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for ax, data in zip(axes[0], datasets):
            for method in dict.fromkeys(r["method"] for r in records):
                rows = [r for r in records if r["data"] == data and r["method"] == method]
                xs = [r[key] for r in rows if r.get(key) and r.get("test_lppd") is not None]
                ys = [r["test_lppd"] for r in rows if r.get(key) and r.get("test_lppd") is not None]
                if xs:  # the tuned stochastic-gradient baselines as crosses
                    ax.scatter(xs, ys, label=method, marker="x" if method in SG_METHODS else "o")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("test LPPD")
            ax.set_title(data)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="UCI table(s)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    parser.add_argument("--task", choices=("auto", "regression", "classification"), default="auto")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for data in args.data:
        for seed in args.seeds:
            records += run_problem(argparse.Namespace(**{**vars(args), "data": data}), seed)
            (out / "results.json").write_text(json.dumps(records, indent=1))
    machine = (
        f"{platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), jax {jax.__version__}"
    )
    command = "python -m benchmarks.uci " + " ".join(argv or [])
    (out / "results.md").write_text(
        f"# UCI benchmark ({args.budget} budget)\n\nMachine: {machine}.\n\n"
        f"Command: `{command}`\n\n{markdown(records)}\n"
    )
    plots(records, out)
    print(markdown(records))
    return records


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
