"""The flagship demo (``make demo``) on a tiny budget: table, netCDF and figure."""

from __future__ import annotations

import arviz as az

from numpyro_smile import demo


def test_demo_writes_inference_data_and_figure(tmp_path, capsys):
    result = demo.run(
        num_members=2, num_warmup=100, num_samples=100, out_dir=tmp_path, progress_bar=False
    )
    table = capsys.readouterr().out
    for row in ("test LPPD", "test RMSE", "calibration error", "run time, s"):
        assert row in table
    assert set(result["metrics"]) == {"deep ensemble", "SMILE", "MILE"}
    for metrics in result["metrics"].values():
        assert {"lppd", "rmse", "calibration_error", "time_s"} <= set(metrics)
        assert metrics["rmse"] < 1.5  # standardised targets: better than predicting noise
    netcdf, figure = result["paths"]
    loaded = az.from_netcdf(netcdf)
    assert {"posterior", "sample_stats", "log_likelihood", "pretrained"} <= set(loaded.groups())
    assert loaded.posterior.sizes["chain"] == 2 and loaded.posterior.sizes["draw"] == 10
    assert figure.stat().st_size > 10_000
