"""Flagship demo: a Bayesian neural network on real data that ships with scikit-learn.

The diabetes data (442 patients, 10 features, disease progression after one year; bundled
with scikit-learn, so no network) is split 70/10/20 as in the MILE/SMILE papers. One
:class:`~numpyro_smile.SMILEEnsemble` pretrains 8 members of a 16-16 MLP (a deep ensemble,
early-stopped on the validation split) and runs one SMILE chain per member on mini-batches of
64; a second ensemble runs MILE (full-batch MCLMC) from the same pretrained members. The demo
prints a table (deep ensemble vs SMILE vs MILE: test LPPD, RMSE, interval calibration, wall
time), saves the SMILE run as ArviZ InferenceData (``outputs/demo.nc``) and draws the
predictive uncertainty (``outputs/demo.png``).

Run with ``make demo`` or ``python -m numpyro_smile.demo``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

from numpyro_smile.datasets import Split, split_standardize
from numpyro_smile.ensemble import SMILEEnsemble
from numpyro_smile.models import mlp_apply, mlp_regression

#: Central interval levels of the calibration curve.
LEVELS = tuple(np.round(np.arange(0.1, 0.96, 0.05), 2))


def load_diabetes(seed: int = 0) -> tuple[Split, list[str]]:
    """scikit-learn's bundled diabetes data, standardised and split 70/10/20 (float32), and
    the feature names."""
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    data = sklearn_diabetes()
    return split_standardize(data.data, data.target, seed), list(data.feature_names)


def run(
    num_members: int = 8,
    num_warmup: int = 2000,
    num_samples: int = 4000,
    thinning: int = 10,
    subsample_size: int = 64,
    out_dir: str | Path = "outputs",
    seed: int = 0,
    progress_bar: bool | None = None,
) -> dict:
    """Deep ensemble vs SMILE vs MILE on the diabetes data.

    Returns:
        ``{"metrics": {method: {...}}, "idata": SMILE's InferenceData, "paths": [...],
        "timings": {"SMILE": ..., "MILE": ...}}``; each method's metrics are
        :func:`numpyro_smile.evaluate`'s plus ``"time_s"``; the timings are the two
        ensembles' seconds per phase (:attr:`SMILEEnsemble.timings`).
    """
    split, feature_names = load_diabetes(seed)
    num_train, num_features = split.train[0].shape
    print(
        f"Diabetes: {num_train} training, {len(split.valid[0])} validation, "
        f"{len(split.test[0])} test patients, {num_features} features. "
        f"BNN: MLP 16-16, {num_members} members, SMILE mini-batches of {subsample_size}."
    )
    model = partial(mlp_regression, hidden=(16, 16), subsample_size=subsample_size)
    settings = dict(
        num_members=num_members,
        num_warmup=num_warmup,
        num_samples=num_samples,
        thinning=thinning,
        progress_bar=progress_bar,
    )
    key_smile, key_mile = jax.random.split(jax.random.key(seed))

    smile = SMILEEnsemble(model, **settings)
    idata = smile.run(key_smile, *split.train, validation=split.valid)
    # MILE from the very same deep ensemble: no second pretraining.
    mile = SMILEEnsemble(model, full_batch=True, pretrain_epochs=0, **settings)
    idata_mile = mile.run(key_mile, *split.train, init_params=smile.pretrained_params)

    levels = {"coverage_levels": LEVELS}
    metrics = {
        "deep ensemble": smile.evaluate(idata, *split.test, group="pretrained", **levels),
        "SMILE": smile.evaluate(idata, *split.test, **levels),
        "MILE": mile.evaluate(idata_mile, *split.test, **levels),
    }
    sampling = ("init_s", "warmup_s", "sampling_s")
    metrics["deep ensemble"]["time_s"] = smile.timings["pretrain_s"]
    metrics["SMILE"]["time_s"] = sum(smile.timings[k] for k in ("pretrain_s", *sampling))
    metrics["MILE"]["time_s"] = sum(mile.timings[k] for k in sampling)
    for name, ensemble in (("deep ensemble", smile), ("SMILE", smile), ("MILE", mile)):
        metrics[name]["compile_s"] = ensemble.timings["compile_s"]
    _print_table(metrics)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    netcdf = out_dir / "demo.nc"
    idata.to_netcdf(netcdf)
    figure = _plot(idata, split, metrics, feature_names, out_dir / "demo.png")
    print(f"\nWrote {netcdf} (SMILE's InferenceData: az.from_netcdf({str(netcdf)!r})) and {figure}")
    timings = {"SMILE": smile.timings, "MILE": mile.timings}
    return {"metrics": metrics, "idata": idata, "paths": [netcdf, figure], "timings": timings}


def _print_table(metrics: dict) -> None:
    rows = [
        ("test LPPD (higher is better)", "lppd", "{:.3f}"),
        ("test RMSE (standardised)", "rmse", "{:.3f}"),
        ("90% interval coverage", "coverage_90", "{:.2f}"),
        ("calibration error", "calibration_error", "{:.3f}"),
        ("run time, s", "time_s", "{:.2f}"),
        ("compilation, s", "compile_s", "{:.1f}"),
    ]
    names = list(metrics)
    print(f"\n{'':30}" + "".join(f"{name:>15}" for name in names))
    for label, key, fmt in rows:
        print(f"{label:30}" + "".join(f"{fmt.format(metrics[n][key]):>15}" for n in names))
    print(
        "\nCalibration error: root mean square gap between the nominal and the observed "
        f"coverage of central predictive intervals at {len(LEVELS)} levels (10 to 95 percent). "
        "Run time excludes compilation (listed apart; the deep ensemble is compiled with "
        "SMILE's run) and post-processing: pretraining for the deep ensemble; pretraining, "
        "chain initialisation, warmup and sampling for SMILE; the same without pretraining "
        "(it reuses SMILE's members) for MILE."
    )


def _network_outputs(idata, group: str, X: np.ndarray) -> np.ndarray:
    """``(K * S, n)``: the MLP's mean function at ``X`` for every draw of ``idata[group]``."""
    dataset = idata[group]
    num_layers = sum(1 for name in dataset.data_vars if name.startswith("w"))
    names = [n for i in range(num_layers) for n in (f"w{i}", f"b{i}")]
    flat = {n: dataset[n].values.reshape(-1, *dataset[n].shape[2:]) for n in names}

    def one(draw):
        layers = [(draw[f"w{i}"], draw[f"b{i}"]) for i in range(num_layers)]
        return mlp_apply(layers, X)[:, 0]

    return np.asarray(jax.jit(jax.vmap(one))(flat))


def _plot(idata, split: Split, metrics: dict, feature_names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, calibration) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(1.4, 1))
    # A slice through input space along BMI (all other features at their mean), reaching
    # beyond the training data: epistemic uncertainty should grow where there is no data.
    feature = feature_names.index("bmi")
    X_train, y_train = split.train
    grid = np.linspace(-5.0, 5.0, 201, dtype=np.float32)
    X_grid = np.zeros((grid.size, X_train.shape[1]), np.float32)
    X_grid[:, feature] = grid
    draws = _network_outputs(idata, "posterior", X_grid)
    low, q25, q75, high = np.quantile(draws, [0.05, 0.25, 0.75, 0.95], axis=0)
    curve.fill_between(grid, low, high, color="C0", alpha=0.2, label="SMILE: 90% band")
    curve.fill_between(grid, q25, q75, color="C0", alpha=0.35, label="SMILE: 50% band")
    curve.plot(grid, draws.mean(0), color="C0", lw=2, label="SMILE: posterior mean")
    members = _network_outputs(idata, "pretrained", X_grid)
    for k, member in enumerate(members):
        curve.plot(
            grid, member, color="k", lw=0.8, alpha=0.7, label="deep ensemble members" * (k == 0)
        )
    curve.plot(
        X_train[:, feature], y_train, ".", color="tab:red", ms=3, alpha=0.5, label="training data"
    )
    lo, hi = X_train[:, feature].min(), X_train[:, feature].max()
    curve.axvspan(grid[0], lo, color="0.92", zorder=-1)
    curve.axvspan(hi, grid[-1], color="0.92", zorder=-1, label="outside the training range")
    curve.set(
        xlabel="body-mass index (standardised; other features at their mean)",
        ylabel="mean disease progression (standardised)",
        title="Network output along one input: epistemic uncertainty",
        ylim=(-4, 4),
    )
    curve.legend(loc="upper left", fontsize=8)

    calibration.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name, colour in (("deep ensemble", "k"), ("SMILE", "C0"), ("MILE", "C1")):
        observed = [metrics[name][f"coverage_{round(100 * level)}"] for level in LEVELS]
        error = metrics[name]["calibration_error"]
        calibration.plot(LEVELS, observed, "o-", color=colour, ms=3, label=f"{name} ({error:.3f})")
    calibration.set(
        xlabel="nominal coverage of the central predictive interval",
        ylabel="observed coverage on test data",
        title="Interval calibration on test data (calibration error)",
    )
    calibration.legend(loc="upper left", fontsize=8)
    fig.suptitle("Bayesian MLP on scikit-learn's diabetes data: deep ensemble vs SMILE")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run(args.members, args.warmup, args.samples, out_dir=args.out)
    print(f"Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
