"""The image and text benchmarks' shared driver: command line, runs, ``results.json``,
``results.md`` and plots.

:mod:`benchmarks.images` (MNIST-1D CNN) and :mod:`benchmarks.text` (Shakespeare char
transformer) each define a problem (data, network, budgets, targets); this module runs the
methods of :mod:`benchmarks.harness` on it for every seed and writes to ``--out DIR``:

- ``results.json``: ``{"benchmark", "budget", "command", "date", "machine", "load_before",
  "load_after", "records"}``; ``load_*`` are the 1-, 5- and 15-minute load averages when the
  runs began and ended (the machine's other work, which stretches every time); ``records``
  has one dict per method and seed with ``method``, ``seed``, ``test_accuracy``,
  ``test_lppd`` (nats per test example, or per character for text), ``test_ece``,
  ``test_brier``, ``reliability`` (``bin_edges``, ``confidence``, ``accuracy``, ``count``
  of 10 equal-width confidence bins; ``null`` for empty bins), ``num_draws``, ``wall_s``,
  ``compile_s``, ``pretrain_s``, ``warmup_s``, ``sampling_s``, ``grad_evals``
  (full-data-equivalent), ``minibatch_grads`` (mini-batch gradient evaluations of warmup and
  sampling, all members), ``resets``, ``peak_rss_mb``, ``step_size``, the baselines'
  ``grid``, and the problem's configuration (``n_train``, ``batch_size``, ``num_params``,
  ``prior`` and ``prior_scale``, the budget); text adds ``test_nll_per_char``
  (= -``test_lppd``).
- ``results.md``: a table per benchmark (means over seeds) and the issue's targets, each
  met or missed with its margin.
- ``accuracy_lppd_vs_time.png`` (test accuracy and LPPD against each method's wall time) and
  ``reliability.png`` (the reliability diagram of every method, seeds pooled).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import inspect
import json
import math
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az
import jax
import numpy as np
from numpyro import handlers

from benchmarks import harness
from benchmarks.harness import SG_METHODS, mean
from numpyro_smile import evaluate

#: The methods of both benchmarks, all from the same deep ensemble.
METHODS = ("de", "psmile", "smile", "smile-naive", "sghmc", "adasghmc", "csgld")
#: Methods run only when asked for with ``--methods``: pSMILE started at the noise limit and
#: full-batch MILE (full-data gradients: about 30 times pSMILE's cost per step on the CNN).
EXTRA_METHODS = ("psmile-limit", "mile")
#: The models' built-in priors (``--prior``; ``--prior-scale`` sets their s).
PRIORS = ("isotropic", "fan_in")
#: Settings a command line may override in the chosen budget (``--grid`` too: the baselines'
#: c values, several floats).
OVERRIDES = (
    "members", "warmup", "samples", "thinning", "batch_size", "pretrain_epochs",
    "pretrain_steps", "max_extensions",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, budgets: dict) -> None:
    """The options both benchmarks share."""
    parser.add_argument("--budget", choices=list(budgets), default="small")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS + EXTRA_METHODS, default=list(METHODS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--prior", choices=PRIORS, default=None, help="the network's prior (default: the model's)"
    )
    parser.add_argument(
        "--prior-scale", type=float, default=None, help="the prior's s (default: the model's, 1)"
    )
    for name in OVERRIDES:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help="override the budget's"
        )
    parser.add_argument("--grid", type=float, nargs="+", default=None, help="override the budget's")


def budget_of(args: argparse.Namespace, budgets: dict) -> dict:
    """The chosen budget with the command line's overrides."""
    overrides = {k: getattr(args, k) for k in (*OVERRIDES, "grid") if getattr(args, k) is not None}
    if overrides.get("pretrain_epochs") is not None:  # epochs given: no step count
        overrides.setdefault("pretrain_steps", None)
    return {**budgets[args.budget], **overrides}


def prior_options(args: argparse.Namespace) -> dict:
    """The model keywords of ``--prior`` and ``--prior-scale``, those given only (an empty dict
    keeps the model's default prior)."""
    options = {
        "prior": getattr(args, "prior", None),
        "prior_scale": getattr(args, "prior_scale", None),
    }
    return {k: v for k, v in options.items() if v is not None}


def prior_of(model: functools.partial) -> dict:
    """``{"prior", "prior_scale"}`` of a ready model's ``partial``: its keywords, else the
    model function's defaults (for ``results.json``'s records)."""
    defaults = inspect.signature(model.func).parameters
    return {k: model.keywords.get(k, defaults[k].default) for k in ("prior", "prior_scale")}


def num_parameters(model: Callable, *args: Any) -> int:
    """The number of latent values of ``model`` (its weights and biases)."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args)
    return int(
        sum(
            np.size(site["value"])
            for site in trace.values()
            if site["type"] == "sample" and not site["is_observed"]
        )
    )


def classifier_metrics(
    model: Callable, idata: az.InferenceData, test: tuple, group: str = "posterior"
) -> dict:
    """Test accuracy, LPPD, ECE, Brier score and the reliability curve of ``idata[group]``
    (``"pretrained"``: the deep ensemble), every draw of every member pooled."""
    scores = evaluate(model, idata, *test, group=group, reliability=True)
    out = {f"test_{k}": float(scores[k]) for k in ("accuracy", "lppd", "ece", "brier")}
    return out | {"reliability": scores["reliability"], "num_draws": int(scores["num_draws"])}


def run(argv: list[str] | None, benchmark: str) -> dict:
    """Parse ``argv``, run every seed and method of ``benchmarks.<benchmark>``, write the
    outputs; returns results.json's content.

    The benchmark's module defines ``BUDGETS`` (``{name: budget}``, see
    :class:`benchmarks.harness.Problem`), ``Problem`` (``(args, seed) -> problem``),
    ``targets`` (``records -> lines`` of the issue's targets with verdicts), ``SCORE`` (the
    key and label of the table's and plots' likelihood column) and optionally
    ``add_arguments(parser)`` for options of its own; its docstring's first line is the
    ``--help`` text.

    Args:
        argv: the command line (``None``: ``sys.argv[1:]``).
        benchmark: ``"images"`` or ``"text"``.
    """
    module = importlib.import_module(f"benchmarks.{benchmark}")
    budgets = module.BUDGETS
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=(module.__doc__ or "").splitlines()[0])
    add_arguments(parser, budgets)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} {jax.default_backend()} device(s) "
        f"({jax.devices()[0].device_kind}), jax {jax.__version__}"
    )
    results: dict[str, Any] = {
        "benchmark": benchmark,
        "budget": args.budget,
        "command": f"python -m benchmarks.{benchmark} " + " ".join(argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "records": [],
    }

    def save(record: dict) -> None:  # after every method: a run cut short keeps what it did
        share = record["n_train"] / record["batch_size"]
        record["minibatch_grads"] = round(record["grad_evals"] * share)
        results["records"].append(record)
        results["load_after"] = [round(x, 2) for x in os.getloadavg()]
        (out / "results.json").write_text(json.dumps(results, indent=1))

    for seed in args.seeds:
        harness.run_methods(module.Problem(args, seed), args.methods, on_record=save)
    print(write_reports(results, out, module.targets, module.SCORE))
    return results


def write_reports(
    results: dict, out: Path, targets: Callable[[list[dict]], list[str]], score: tuple[str, str]
) -> str:
    """Write ``results.md`` and the plots of ``results`` into ``out``; returns the markdown."""
    text = render(results, targets, score)
    (out / "results.md").write_text(text)
    plots(results["records"], out, score)
    return text


def rerender(out: Path) -> str:
    """``results.md`` and the plots again from ``out/results.json`` (e.g. of a run that was
    cut short): ``python -m benchmarks.networks DIR``."""
    results = json.loads((out / "results.json").read_text())
    module = importlib.import_module(f"benchmarks.{results['benchmark']}")
    return write_reports(results, out, module.targets, module.SCORE)


def describe_prior(record: dict) -> str:
    """The prior as ``results.md``'s setting line names it (", prior N(0, 1^2)"); empty for
    records written before the prior was kept."""
    if "prior" not in record:
        return ""
    s = record["prior_scale"]
    if record["prior"] == "fan_in":
        return f", prior N(0, {s:g}^2 / fan_in) on the weights"
    return f", prior N(0, {s:g}^2)"


def render(results: dict, targets: Callable[[list[dict]], list[str]], score: tuple) -> str:
    """``results.md``: the setting, a table of means over seeds and the targets' verdicts."""
    records = results["records"]
    key, label = score
    seeds = sorted({r["seed"] for r in records})
    first = records[0]
    lines = [
        f"# {results['benchmark']} benchmark ({results['budget']} budget)",
        "",
        f"{results['date']}; machine: {results['machine']}; load average (1, 5, 15 min) "
        f"{results['load_before']} at the start, {results.get('load_after')} at the end.",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{first['num_params']:,} parameters{describe_prior(first)}, N = {first['n_train']:,} "
        f"training {first.get('unit', 'examples')}, B = {first['batch_size']}, {first['members']} "
        f"members, {first['warmup']} warmup + {first['samples']} sampling steps (thinning "
        f"{first['thinning']}); seeds {', '.join(map(str, seeds))} (means over seeds).",
        "",
        f"| method | accuracy | {label} | ECE | Brier | wall s | compile s | mini-batch grads "
        "| resets | peak MiB | step size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        step = mine[0].get("step_size")
        step = f"{np.mean(step):.2e}" if step is not None else ""
        compile_s = mean(mine, "compile_s")
        lines.append(
            f"| {method} | {mean(mine, 'test_accuracy'):.4f} | {mean(mine, key):.4f} "
            f"| {mean(mine, 'test_ece'):.4f} | {mean(mine, 'test_brier'):.4f} "
            f"| {mean(mine, 'wall_s'):.1f} | {'' if math.isnan(compile_s) else f'{compile_s:.1f}'} "
            f"| {mean(mine, 'minibatch_grads'):.0f} | {mean(mine, 'resets'):.0f} "
            f"| {mean(mine, 'peak_rss_mb'):.0f} | {step} |"
        )
    lines += [
        "",
        "(de: the pretrained members; its wall time is pretraining, its gradients are not "
        "counted. A baseline's wall time is its chosen grid point's run.)",
        "",
    ]
    for r in records:
        if r["method"] in SG_METHODS:
            points = ", ".join(
                f"{p['step_size']:.2e}: {p['valid_lppd']}{'' if p['accepted'] else ' (refused)'}"
                for p in r["grid"]
            )
            sizes = [p["step_size"] for p in r["grid"]]
            edge = r["step_size"] in (min(sizes), max(sizes)) and len(sizes) > 1
            lines.append(
                f"- {r['method']} (seed {r['seed']}): validation LPPD by step size {points}; "
                f"chose {r['step_size']:.2e}{' (an edge of the grid)' if edge else ''}; the "
                f"other points cost {r['grid_wall_s']:.0f} s"
            )
    lines += ["", "## Targets", "", *targets(records), ""]
    return "\n".join(lines)


def compare(records: list[dict], method: str, other: str) -> dict[str, float]:
    """``method`` minus ``other`` in mean test accuracy, LPPD and ECE (NaN when missing)."""

    def get(name, key):
        return mean([r for r in records if r["method"] == name], key)

    return {
        key: get(method, f"test_{key}") - get(other, f"test_{key}")
        for key in ("accuracy", "lppd", "ece", "brier")
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def plots(records: list[dict], out: Path, score: tuple[str, str]) -> None:
    """``accuracy_lppd_vs_time.png`` and ``reliability.png``."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, [("test_accuracy", "test accuracy"), score]):
        for method in methods:
            rows = [r for r in records if r["method"] == method and r.get(key) is not None]
            if rows:  # the tuned stochastic-gradient baselines as crosses
                ax.scatter(
                    [r["wall_s"] for r in rows],
                    [r[key] for r in rows],
                    label=method,
                    marker="x" if method in SG_METHODS else "o",
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.set_xlabel("wall time of the method's run, s (log; de: pretraining)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_lppd_vs_time.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for method in methods:
        curves = [r["reliability"] for r in records if r["method"] == method]
        confidence, accuracy = pooled_curve(curves)
        keep = np.isfinite(confidence)
        ax.plot(confidence[keep], accuracy[keep], marker="o", markersize=3, label=method)
    ax.set_xlabel("confidence (predicted class's probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram (test set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)


def pooled_curve(curves: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Mean confidence and accuracy per bin over several reliability curves (seeds), weighted
    by their counts; NaN for bins empty in all of them."""
    count = np.sum([c["count"] for c in curves], axis=0).astype(float)

    def pooled(name):
        values = np.array([[np.nan if v is None else v for v in c[name]] for c in curves])
        weights = np.array([c["count"] for c in curves], float)
        with np.errstate(invalid="ignore"):
            return np.nansum(values * weights, axis=0) / np.where(count > 0, count, np.nan)

    return pooled("confidence"), pooled("accuracy")


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(rerender(Path(folder)))
