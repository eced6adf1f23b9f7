"""SMILEEnsemble on a UCI file: deep ensemble vs SMILE (mini-batch) vs MILE (full batch).

The MILE and SMILE papers' UCI protocol: standardise, shuffle with the seed, split 70/10/20;
an MLP with N(0, 1) priors (regression: learned noise scale; classification: categorical).
For each seed, one ``SMILEEnsemble`` run per mode from the same key, so both modes start from
the same pretrained members, whose pooled prediction is the deep ensemble (DE) row. Reports
test LPPD, RMSE or accuracy, calibration, and wall time (compilation included), and the LPPD
gain over the DE (the acceptance target of the ensemble issue is >= +0.3). Run::

    python -m benchmarks.ensemble_uci --data $SMILE_DATA_DIR/airfoil.data \\
        [--members 4] [--warmup 5000] [--samples 10000] [--thinning 10] [--seeds 1 2 3] \\
        [--classification] [--out outputs/ensemble_uci.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import jax

from numpyro_smile import SMILEEnsemble
from numpyro_smile.datasets import load_table, split_standardize
from numpyro_smile.models import mlp_classification, mlp_regression


def run_seed(args: argparse.Namespace, seed: int) -> list[dict]:
    X, y = load_table(args.data)
    split = split_standardize(X, y, seed, classification=args.classification)
    if args.classification:
        num_classes = int(max(split.train[1].max(), split.test[1].max())) + 1
        model = partial(
            mlp_classification,
            num_classes=num_classes,
            subsample_size=args.batch_size,
            hidden=tuple(args.hidden),
        )
    else:
        model = partial(mlp_regression, subsample_size=args.batch_size, hidden=tuple(args.hidden))
    records = []
    for mode in ("smile", "mile"):
        ensemble = SMILEEnsemble(
            model,
            num_members=args.members,
            num_warmup=args.warmup,
            num_samples=args.samples,
            thinning=args.thinning,
            full_batch=mode == "mile",
            log_likelihood=False,
        )
        start = time.perf_counter()
        idata = ensemble.run(jax.random.key(seed), *split.train, validation=split.valid)
        wall = time.perf_counter() - start
        groups = [("de", "pretrained")] if mode == "smile" else []
        for method, group in [*groups, (mode, "posterior")]:
            metrics = ensemble.evaluate(idata, *split.test, group=group)
            record = {
                "data": Path(args.data).stem,
                "seed": seed,
                "method": method,
                **{k: round(float(v), 4) for k, v in metrics.items()},
                "wall_s": round(wall, 2),
                **{k: round(v, 2) for k, v in ensemble.timings.items()},
                "resets": int(idata.sample_stats["resets"].values.sum()),
            }
            records.append(record)
            print(json.dumps(record))
    return records


def markdown(records: list[dict]) -> str:
    score = "accuracy" if "accuracy" in records[0] else "rmse"
    lines = [
        f"| data | seed | method | test LPPD | LPPD - DE | {score} | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        de = next(r for r in records if r["seed"] == record["seed"] and r["method"] == "de")
        gain = "" if record["method"] == "de" else f"{record['lppd'] - de['lppd']:+.3f}"
        wall = "" if record["method"] == "de" else f"{record['wall_s']:.0f}"
        lines.append(
            f"| {record['data']} | {record['seed']} | {record['method']} | {record['lppd']:.3f} "
            f"| {gain} | {record[score]:.3f} | {wall} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--thinning", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--classification", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records = [r for seed in args.seeds for r in run_seed(args, seed)]
    print(markdown(records))
    print(
        f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), jax {jax.__version__}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
