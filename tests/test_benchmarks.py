"""The UCI benchmark harness runs end to end on a tiny budget (no timing assertions)."""

from __future__ import annotations

import json

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
