"""pSMILE against full-batch MILE: test LPPD against the gradient budget, and the ablations of
issue 15 ("close the gap to full batch at a fraction of its gradients").

For each UCI file and seed, the UCI suite's protocol (:mod:`benchmarks.uci`: split, MLP 16-16,
N(0, 1) priors, one deep ensemble of K members that every run starts from, the budget's
warmup and sampling steps) runs MILE once and pSMILE in several variants, all with the same
number of steps, so that a variant's gradient budget is set by its mini-batch size alone:

* ``mile``: full-data gradients, MILE's tuning (the reference; budget 1);
* ``psmile``: the default, B = min(256, N/4) (the UCI suite's ``psmile``);
* ``psmile-B=N/k``: mini-batches of N/k points (budget 1/k of MILE's gradient evaluations);
* ``psmile-angle=a``: a larger noise-angle ceiling on the step size (default 0.2 rad);
* ``psmile-step=limit``: warmup starts at the noise-limited step size instead of at most 1e-3
  (``step_size=1.0``: an adapting step never exceeds the limit);
* ``psmile-L=mile``: partial momentum refresh in mini-batch mode, with the median of the
  decoherence lengths MILE tuned on the same data (a trajectory length of MILE's kind);
* two diagnostics outside the budget: ``psmile-warmup=4x`` (four times the warmup: how much of
  the gap is the way from the ensemble into the posterior) and ``mile-step=psmile`` (full
  batch, MILE's L, the step fixed at pSMILE's median final step: how much of the gap is the
  step size alone).

``--control-variate-diagnostic`` measures instead what a control variate would remove from
the mini-batch gradient noise: at the positions of MILE chains (2,000 warmup and 500
sampling steps from the deep ensemble's members), the variance over data points of the per-datum
gradient, plain and minus the same gradient at a reference point (each member's pretrained
point, and points at distances r in a random direction), summed over coordinates.

``grad_share`` is a run's full-data-equivalent gradient evaluations over MILE's (the issue's
goal: at most 1/4, with the test LPPD within 0.05 of MILE's). Each record also holds test RMSE,
wall time (sampling from the ensemble, compilation included; on a shared machine a rough
figure), resets and final step sizes. The exact-posterior effect of the same variants is
``python -m benchmarks.sg_mixing --frontier-variants``. Results
accumulate in ``DIR/frontier.json`` (one record per run; an interrupted run resumes where it
stopped) and ``DIR/frontier.md`` (means and standard errors over seeds)::

    python -m benchmarks.psmile_frontier \\
        --data $SMILE_DATA_DIR/{airfoil,energy,yacht,bikesharing}.data --seeds 1 2 3 \\
        --out DIR [--variants psmile psmile-B=N/8 ...] [--budget small]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

from benchmarks import harness, uci
from numpyro_smile import SMILEConfig, SMILEEnsemble

VARIANTS = (
    "mile",
    "psmile",
    "psmile-B=N/16",
    "psmile-B=N/8",
    "psmile-B=N/4",
    "psmile-B=N/2",
    "psmile-angle=0.4",
    "psmile-angle=0.8",
    "psmile-L=mile",
    "psmile-step=limit",
    "psmile-warmup=4x",
    "mile-step=psmile",
)
#: Warmup steps of ``psmile-warmup=4x`` over the budget's (a diagnostic: more steps than MILE).
LONG_WARMUP = 4


def uci_problem(data: str, seed: int, budget: str) -> uci.Problem:
    """The UCI suite's problem (split, MLP 16-16 regression, B = min(256, N/4)) of a file."""
    problem_args = argparse.Namespace(
        data=data, task="regression", batch_size=256, hidden=[16, 16], budget=budget
    )
    return uci.Problem(problem_args, seed)


def is_full_batch(variant: str) -> bool:
    """Whether ``variant`` samples with full-data gradients (MILE and its diagnostics)."""
    return variant.startswith("mile")


def batch_size(problem: uci.Problem, variant: str) -> int:
    """The variant's mini-batch size (N for MILE)."""
    if is_full_batch(variant):
        return problem.n_train
    if "-B=N/" in variant:
        return max(1, problem.n_train // int(variant.split("/")[-1]))
    return problem.batch_size


def grad_share(problem: uci.Problem, variant: str) -> float:
    """Full-data-equivalent gradient evaluations over MILE's."""
    share = batch_size(problem, variant) / problem.n_train
    if variant == "psmile-warmup=4x":
        warmup, samples = problem.budget["warmup"], problem.budget["samples"]
        share *= (LONG_WARMUP * warmup + samples) / (warmup + samples)
    return share


def run_variant(
    problem: uci.Problem,
    variant: str,
    de_params: dict,
    mile_L: float | None,
    psmile_step: float | None = None,
) -> dict:
    """One ensemble run of ``variant`` from the deep ensemble's members (``mile_L`` and
    ``psmile_step``: the median L of MILE's and final step of pSMILE's runs of this file and
    seed, for ``psmile-L=mile`` and ``mile-step=psmile``)."""
    config = SMILEConfig()
    settings: dict = {}
    full_batch = is_full_batch(variant)
    if variant.startswith("psmile-angle="):
        config = SMILEConfig(max_noise_angle=float(variant.split("=")[1]))
    elif variant == "psmile-step=limit":
        config = SMILEConfig(step_size=harness.LIMIT_STEP_SIZE)
    elif variant == "psmile-L=mile":
        config = SMILEConfig(L=mile_L)
    elif variant == "psmile-warmup=4x":
        settings["num_warmup"] = LONG_WARMUP * problem.budget["warmup"]
    elif variant == "mile-step=psmile":  # full batch at pSMILE's step: is the step the gap?
        config = SMILEConfig(adapt=False, step_size=psmile_step, L=mile_L)
    size = batch_size(problem, variant)
    model = problem.model  # MILE samples it with full-data gradients
    if not full_batch:
        keywords = {**problem.model.keywords, "subsample_size": size}
        model = partial(problem.model.func, **keywords)
    runner = SMILEEnsemble(
        model,
        **harness.ensemble_settings(problem, config=config, pretrain_epochs=0, **settings),
        full_batch=full_batch,
    )
    start = time.perf_counter()
    idata = runner.run(
        jax.random.fold_in(problem.key, 1), *problem.split.train, init_params=de_params
    )
    wall = time.perf_counter() - start
    state = runner.last_state
    return {
        "data": problem.name,
        "seed": problem.seed,
        "variant": variant,
        "batch_size": size,
        "n_train": problem.n_train,
        "grad_share": grad_share(problem, variant),
        **problem.metrics(idata),
        "wall_s": wall,
        "resets": int(np.sum(state.num_resets)),
        "reset_rate": float(np.sum(state.num_resets))
        / (problem.budget["members"] * (runner.num_warmup + problem.budget["samples"])),
        "step_size": np.asarray(state.step_size).tolist(),
        "L": np.asarray(state.L).tolist(),
    }


def control_variate_ratios(
    problem: uci.Problem, de_params: dict, distances=(0.03, 0.1, 0.3, 1.0, 3.0), members: int = 4
) -> list[dict]:
    """Per member: tr Var_i[g_i(x) - g_i(x_ref)] / tr Var_i[g_i(x)], with g_i the gradient of
    datum i's potential (unconstrained coordinates) at a MILE position x, for x_ref the
    member's pretrained point and for x_ref = x + r v (v a random unit vector)."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    warmup, samples = min(2000, problem.budget["warmup"]), min(500, problem.budget["samples"])
    settings = harness.ensemble_settings(problem, pretrain_epochs=0, num_warmup=warmup)
    settings |= {"num_samples": samples, "thinning": samples}
    runner = SMILEEnsemble(problem.model, full_batch=True, **settings)
    runner.run(problem.key, *problem.split.train, init_params=de_params)
    X, y = (jax.numpy.asarray(a) for a in problem.split.train)

    @jax.jit
    def per_datum_grads(params):
        def one(x, t):
            grad = jax.grad(
                lambda q: potential_energy(problem.full_model, (x[None], t[None]), {}, q)
            )
            return ravel_pytree(grad(params))[0]

        return jax.vmap(one)(X, y)

    def ratio(g, g_ref):
        return float(jax.numpy.var(g - g_ref, axis=0).sum() / jax.numpy.var(g, axis=0).sum())

    rows = []
    for k in range(min(members, problem.budget["members"])):
        x = jax.tree.map(lambda a, k=k: a[k], runner.last_state.z)
        start = jax.tree.map(lambda a, k=k: a[k], de_params)
        flat, unravel = ravel_pytree(x)
        g = per_datum_grads(x)
        row = {
            "member": k,
            "distance_to_pretrained": float(jax.numpy.linalg.norm(flat - ravel_pytree(start)[0])),
            "ratio_pretrained": ratio(g, per_datum_grads(start)),
        }
        direction = jax.random.normal(jax.random.fold_in(jax.random.key(0), k), flat.shape)
        direction = direction / jax.numpy.linalg.norm(direction)
        for r in distances:
            row[f"ratio_r={r}"] = ratio(g, per_datum_grads(unravel(flat + r * direction)))
        rows.append(row)
    return rows


def summarise(records: list[dict]) -> str:
    """Mean (standard error over seeds) of test LPPD and its gap to MILE, per file and variant."""
    lines = [
        "| data | variant | grad share | seeds | test LPPD | gap to MILE | test RMSE | resets "
        "| step | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in dict.fromkeys(r["data"] for r in records):
        rows = [r for r in records if r["data"] == data]
        mile = {r["seed"]: r["test_lppd"] for r in rows if r["variant"] == "mile"}
        for variant in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == variant]
            lppd = np.array([r["test_lppd"] for r in runs])
            gaps = np.array([r["test_lppd"] - mile[r["seed"]] for r in runs if r["seed"] in mile])

            def mean_se(x):
                if len(x) == 0:
                    return "n/a"
                se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
                return f"{x.mean():+.3f} ({se:.3f})"

            lines.append(
                f"| {data} | {variant} | {np.mean([r['grad_share'] for r in runs]):.3f} | "
                f"{len(runs)} | {mean_se(lppd)} | {mean_se(gaps)} | "
                f"{np.mean([r['test_rmse'] for r in runs]):.3f} | "
                f"{np.mean([r['reset_rate'] for r in runs]):.3f} | "
                f"{np.median([np.median(r['step_size']) for r in runs]):.2e} | "
                f"{np.mean([r['wall_s'] for r in runs]):.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="UCI regression table(s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--budget", choices=sorted(uci.BUDGETS), default="small")
    parser.add_argument("--out", required=True)
    parser.add_argument("--control-variate-diagnostic", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.control_variate_diagnostic:
        rows = []
        for data in args.data:
            for seed in args.seeds:
                problem = uci_problem(data, seed, args.budget)
                _, de_params = harness.run_de(problem)
                for row in control_variate_ratios(problem, de_params):
                    rows.append({"data": problem.name, "seed": seed, **row})
                    print(rows[-1], flush=True)
        (out / "control_variates.json").write_text(json.dumps(rows, indent=1))
        return rows
    path = out / "frontier.json"
    records: list[dict] = json.loads(path.read_text()) if path.exists() else []
    done = {(r["data"], r["seed"], r["variant"]) for r in records}
    # MILE first (the gap and its L), pSMILE before what uses its step
    first = ["mile", "psmile"] if "mile-step=psmile" in args.variants else ["mile"]
    variants = list(dict.fromkeys([*first, *args.variants]))
    for data in args.data:
        for seed in args.seeds:
            problem = uci_problem(data, seed, args.budget)
            todo = [v for v in variants if (problem.name, seed, v) not in done]
            if not todo:
                continue
            _, de_params = harness.run_de(problem)
            mile_L = psmile_step = None
            for variant in variants:
                key = (problem.name, seed, variant)
                if key in done:
                    record = next(r for r in records if (r["data"], r["seed"], r["variant"]) == key)
                else:
                    record = run_variant(problem, variant, de_params, mile_L, psmile_step)
                    records.append(record)
                    path.write_text(json.dumps(records, indent=1))
                    print(f"{key}: test LPPD {record['test_lppd']:.3f}", flush=True)
                if variant == "mile":
                    mile_L = float(np.median(record["L"]))
                if variant == "psmile":
                    psmile_step = float(np.median(record["step_size"]))
    (out / "frontier.md").write_text(summarise(records) + "\n")
    print(summarise(records))
    return records


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
