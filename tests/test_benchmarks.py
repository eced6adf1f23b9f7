"""The benchmark harnesses run end to end on tiny budgets (no timing assertions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import uci

from .conftest import data_file


@pytest.mark.slow
def test_uci_harness_smoke(tmp_path):
    records = uci.main(
        ["--data", str(data_file("yacht.data")), "--budget", "tiny", "--out", str(tmp_path)]
    )
    assert [r["method"] for r in records] == list(uci.METHODS)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == records
    required = {
        "method", "test_lppd", "test_rmse", "wall_s", "compile_s", "pretrain_s", "warmup_s",
        "sampling_s", "grad_evals", "resets", "data", "seed", "batch_size", "peak_rss_mb",
    }  # fmt: skip
    for record in records:
        assert required <= set(record), required - set(record)
        assert record["test_lppd"] is not None
    by_method = {r["method"]: r for r in records}
    assert by_method["mile"]["grad_evals"] > 0
    for method in uci.SG_METHODS:  # our kernels, at psmile's number of mini-batch gradients
        record = by_method[method]
        assert record["grad_evals"] == by_method["psmile"]["grad_evals"]
        assert len(record["grid"]) == len(uci.BUDGETS["tiny"]["grid"]) and record["step_size"]
        assert record["resets"] == 0 and record["grid_wall_s"] == 0.0
    # cSGLD keeps only the draws of its cycles' sampling halves
    assert 0 < by_method["csgld"]["num_draws"] < by_method["sgld"]["num_draws"]
    table = (tmp_path / "results.md").read_text()
    assert "| psmile |" in table and "psmile LPPD >= nuts" in table
    assert "| csgld |" in table and "psmile beats tuned adasghmc" in table
    for name in ("lppd_vs_time.png", "lppd_vs_grad_evals.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_psmile_frontier_gaps_and_batch_sizes():
    """The frontier benchmark's arithmetic: each variant's mini-batch (its gradient budget)
    and the per-seed gap to MILE, averaged with its standard error (runs are benchmarks)."""
    from types import SimpleNamespace

    from benchmarks import psmile_frontier

    problem = SimpleNamespace(
        n_train=1000, batch_size=250, budget={"warmup": 5000, "samples": 10000}
    )
    assert psmile_frontier.batch_size(problem, "mile") == 1000
    assert psmile_frontier.grad_share(problem, "mile-step=psmile") == 1.0
    # four times the warmup: (20,000 + 10,000) steps of N/4 against MILE's 15,000 of N
    assert psmile_frontier.grad_share(problem, "psmile-warmup=4x") == 0.5
    assert psmile_frontier.batch_size(problem, "psmile") == 250
    assert psmile_frontier.batch_size(problem, "psmile-B=N/8") == 125
    assert psmile_frontier.batch_size(problem, "psmile-angle=0.4") == 250

    def record(variant, seed, lppd, share):
        return dict(data="toy", seed=seed, variant=variant, test_lppd=lppd, test_rmse=0.1,
                    grad_share=share, reset_rate=0.02, step_size=[1e-2], wall_s=10.0)  # fmt: skip

    records = [record("mile", 1, 0.5, 1.0), record("mile", 2, 0.3, 1.0),
               record("psmile", 1, 0.4, 0.25), record("psmile", 2, 0.1, 0.25)]  # fmt: skip
    table = psmile_frontier.summarise(records)
    row = next(line for line in table.splitlines() if "| psmile |" in line)
    # gaps -0.1 and -0.2: mean -0.15, standard error 0.05; LPPD mean 0.25 (se 0.15)
    assert "| 0.250 | 2 | +0.250 (0.150) | -0.150 (0.050) |" in row


def test_sg_mixing_noise_norm_and_report(tmp_path):
    """The mixing benchmark's noise norm is the mini-batch gradient's measured spread, its
    steps turn the velocity by the asked angle, and a tiny run writes its table."""
    from benchmarks import sg_mixing

    data = sg_mixing.problem()
    X, y = np.asarray(data["X"], np.float64), np.asarray(data["y"], np.float64)
    per_datum = X * (y - X @ data["mean"])[:, None] / sg_mixing.NOISE_SD**2
    rng = np.random.default_rng(0)
    n, batch_size = sg_mixing.N, 500
    grads = [
        n / batch_size * per_datum[rng.choice(n, batch_size, replace=False)].sum(0)
        for _ in range(2000)
    ]
    measured = np.sqrt(np.var(grads, axis=0).sum())
    # 2000 batches: the std's Monte Carlo error is under 1 percent (5 percent: > 5 errors)
    assert measured / sg_mixing.noise_norm(data, batch_size) == pytest.approx(1, abs=0.05)

    rows = sg_mixing.main(
        ["--steps", "200", "--warmup", "50", "--batch-sizes", "500", "--angles", "0.2",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert [r["batch_size"] for r in rows] == [n, batch_size]
    limit = 0.2 * (sg_mixing.P - 1) / sg_mixing.noise_norm(data, batch_size)
    assert rows[1]["step_size"] == pytest.approx(limit, rel=1e-5)
    assert all(np.isfinite(r["ess_per_step"]) and r["sd_ratio_min"] > 0 for r in rows)
    assert "| 500 | 0.20 |" in (tmp_path / "sg_mixing.md").read_text()


def test_startup_report_sums_the_ensembles_and_gives_the_ratio():
    """The start-up benchmark's arithmetic (its runs take minutes: a benchmark, not a test)."""
    from benchmarks import startup

    def record(scale):
        phases = {"setup_s": 1.0, "compile_s": 4.0, "init_s": 1.0, "pretrain_s": 0.5}
        phases = {k: v * scale for k, v in phases.items()}
        return {"import_s": 2.0, "wall_s": 10.0 * scale, "timings": {"a": phases, "b": phases}}

    first, second = startup.summarise(record(1.0)), startup.summarise(record(0.25))
    assert first["startup_s"] == pytest.approx(12.0) and first["work_s"] == pytest.approx(1.0)
    cases = {"processes": [first, second], "cache off": [first, first]}
    config = dict(num_warmup=1, num_samples=1, jax="x", backend="cpu", cpu_count=2, benchmark_s=1)
    text = startup.render({"cases": cases, "ratios": startup.ratios(cases), "config": config})
    assert "processes: second start-up 4.0x faster than the first (met" in text
    assert "cache off: second start-up 1.0x faster than the first (control" in text


#: What every record of the image and text benchmarks' results.json holds (the schema in
#: benchmarks/networks.py's docstring and docs/benchmarks.md).
NETWORK_RECORD_KEYS = {
    "method", "seed", "test_accuracy", "test_lppd", "test_ece", "test_brier", "reliability",
    "num_draws", "wall_s", "compile_s", "pretrain_s", "warmup_s", "sampling_s", "grad_evals",
    "minibatch_grads", "resets", "peak_rss_mb", "n_train", "batch_size", "num_params",
    "members", "warmup", "samples", "thinning",
}  # fmt: skip
NETWORK_RESULTS_KEYS = {
    "benchmark", "budget", "command", "date", "machine", "load_before", "load_after", "records",
}  # fmt: skip
FINITE = ("test_accuracy", "test_lppd", "test_ece", "test_brier", "wall_s", "peak_rss_mb")


def check_network_outputs(out, results: dict, methods: list[str], benchmark: str) -> list[dict]:
    """The outputs exist, results.json has the documented schema and finite metrics."""
    assert json.loads((out / "results.json").read_text()) == results
    assert NETWORK_RESULTS_KEYS <= set(results) and results["benchmark"] == benchmark
    records = results["records"]
    assert [r["method"] for r in records] == methods
    for record in records:
        assert NETWORK_RECORD_KEYS <= set(record), NETWORK_RECORD_KEYS - set(record)
        for key in FINITE:
            assert isinstance(record[key], float) and math.isfinite(record[key]), (key, record)
        assert 0 <= record["test_accuracy"] <= 1 and 0 <= record["test_ece"] <= 1
        assert record["test_lppd"] < 0 and record["num_draws"] >= record["members"]
        curve = record["reliability"]
        assert len(curve["bin_edges"]) == len(curve["count"]) + 1 == 11
        assert sum(curve["count"]) > 0 and len(curve["accuracy"]) == 10
    de = records[0]
    assert de["method"] == "de" and de["grad_evals"] == 0 and de["compile_s"] is None
    assert de["num_draws"] == de["members"] and de["pretrain_s"] > 0
    for record in records[1:]:  # a sampler: two mini-batch gradients per step and member
        steps = record["members"] * (record["warmup"] + record["samples"])
        assert record["minibatch_grads"] == 2 * steps and record["compile_s"] > 0
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in methods) and "## Targets" in table
    for name in ("accuracy_lppd_vs_time.png", "reliability.png"):
        assert (out / name).stat().st_size > 1000
    return records


@pytest.mark.slow
def test_image_benchmark_tiny(tmp_path):
    """The MNIST-1D CNN benchmark end to end on the tiny budget with the deep ensemble only:
    data, network, pretraining, metrics, results.json, results.md and plots. (The samplers'
    runners are benchmarks/harness.py's, run by the UCI smoke test above; a CNN sampler run
    would add ~20 s of compilation, and notebook 05 runs pSMILE on a CNN.)"""
    from benchmarks import images

    methods = ["de"]
    results = images.main(["--budget", "tiny", "--methods", *methods, "--out", str(tmp_path)])
    (de,) = check_network_outputs(tmp_path, results, methods, "images")
    assert de["num_params"] >= images.MIN_PARAMS and de["n_train"] == 400
    assert "- CNN of >= 30,000 parameters: met (33,418)" in (tmp_path / "results.md").read_text()


def test_network_benchmarks_prior_options_and_extra_methods():
    """``--prior`` and ``--prior-scale`` reach the network and its records; pSMILE started at
    the noise limit and MILE can be asked for, and are not run by default."""
    import argparse

    from numpyro import handlers

    from benchmarks import harness, images, networks

    parser = argparse.ArgumentParser()
    networks.add_arguments(parser, images.BUDGETS)
    images.add_arguments(parser)
    argv = ["--budget", "tiny", "--out", "unused", "--methods", "de", "psmile-limit", "mile"]
    args = parser.parse_args([*argv, "--prior", "fan_in", "--prior-scale", "4"])
    assert args.methods == ["de", "psmile-limit", "mile"]
    assert set(networks.EXTRA_METHODS) <= set(harness.SMILE_METHODS)
    assert not set(networks.EXTRA_METHODS) & set(parser.parse_args(argv[:4]).methods)
    problem = images.Problem(args, seed=0)
    trace = handlers.trace(handlers.seed(problem.model, 0)).get_trace(*problem.split.train)
    weights = [s for s in trace.values() if s["type"] == "sample" and s["value"].ndim >= 2]
    assert len(weights) == 4  # two convolutions (width, in, out) and two dense (in, out)
    for site in weights:  # N(0, 4^2 / fan_in): the scale read off the log density at zero
        value = site["value"]
        log_density = float(site["fn"].log_prob(np.zeros(value.shape))) / value.size
        scale = np.exp(-log_density - 0.5 * np.log(2 * np.pi))
        assert np.isclose(scale, 4 / np.sqrt(np.prod(value.shape[:-1])), rtol=1e-4), site["name"]
    record = problem.config()
    assert (record["prior"], record["prior_scale"]) == ("fan_in", 4.0)
    assert networks.describe_prior(record) == ", prior N(0, 4^2 / fan_in) on the weights"
    default = images.Problem(parser.parse_args(argv), seed=0).config()
    assert (default["prior"], default["prior_scale"]) == ("isotropic", 1.0)
    assert networks.describe_prior(default) == ", prior N(0, 1^2)"
    assert networks.describe_prior({}) == ""  # results.json written before the prior was kept


def test_text_benchmark_data_metrics_and_report(monkeypatch):
    """The text benchmark's own parts on its tiny budget, without a sampler (the harness that
    runs the methods is the image benchmark's, tested end to end above; the transformer's
    compilations would cost about two minutes here): windows split by position, the model's
    size, per-character metrics of draws and the report's targets."""
    import argparse

    import arviz as az
    from numpyro import handlers

    from benchmarks import networks, text

    monkeypatch.setenv("SMILE_DATA_DIR", str(data_file(text.TEXT_FILE).parent))
    options = dict.fromkeys(networks.OVERRIDES) | {"grid": None, "budget": "tiny"}
    problem = text.Problem(argparse.Namespace(**options), seed=0)
    train, _, test = (part[0] for part in problem.split)
    budget = text.BUDGETS["tiny"]
    assert train.shape == ((budget["train_chars"] - 1) // text.CONTEXT, text.CONTEXT + 1)
    assert test.shape[0] == (budget["test_chars"] - 1) // text.CONTEXT
    assert problem.num_params >= text.MIN_PARAMS
    assert problem.n_likelihood == problem.n_train * text.CONTEXT

    def draws(seed):  # two members of one draw each, from the prior
        traces = [
            handlers.trace(handlers.seed(problem.model, seed + k)).get_trace(test) for k in range(2)
        ]
        names = [n for n, s in traces[0].items() if s["type"] == "sample" and not s["is_observed"]]
        return {n: np.stack([t[n]["value"] for t in traces])[:, None] for n in names}

    records = []
    for method, seed in (("de", 0), ("psmile", 10)):
        metrics = problem.metrics(az.from_dict(posterior=draws(seed)))
        records.append({"method": method, **metrics, **problem.config()})
    for record in records:
        assert record["test_nll_per_char"] == -record["test_lppd"] > 0
        assert 0 <= record["test_accuracy"] <= 1 and math.isfinite(record["test_brier"])
        assert (
            sum(record["reliability"]["count"]) == record["test_chars_scored"] == test[:, 1:].size
        )
        assert record["num_draws"] == 2
    lines = text.targets(records)
    assert lines[0].startswith("- transformer of >= 100,000 parameters: met")
    better = records[1]["test_lppd"] > records[0]["test_lppd"]
    assert f"below the deep ensemble's: {'met' if better else 'missed'}" in lines[1]
