"""A 10^6-parameter network, 8 members x 100 kept draws, streamed to disk: memory and time.

Issue 14's target: a Bayesian MLP of about 10^6 parameters (``models.mlp_regression`` on 100
inputs, hidden layers of 1,000 and 900 units: 1,002,802 parameters) on N = 10,000 synthetic
points with mini-batches of 64, ``SMILEEnsemble(num_members=8, num_samples=100,
thinning=1)`` after a short pretraining and warmup, the ``log_likelihood`` group on a fixed
subset of 256 points, and ``draws_to`` a temporary file. The kept draws are 8 x 100 x 10^6
float32 numbers, 3.2 GB: the goal is a peak resident set below 4 GiB on 2 CPU cores, with
every draw in the file afterwards.

Each mode runs in its own process (a clean peak resident set): ``streamed`` (``draws_to``)
and, for comparison, ``memory`` (the same run with every draw in host memory). Reported per
mode: the peak resident set (``VmHWM``), the wall time, the ensemble's ``timings`` (compile
time apart), every XLA compilation of the process (count and seconds, from JAX's
``backend_compile_duration`` event: each loop is compiled once per run), the file's size,
and a check that every draw is there and finite: the file is read back one member and ten
draws at a time. The drivers' persistent compilation cache would make a second run's
compilations cache hits: set ``NUMPYRO_SMILE_CACHE_DIR=off`` to measure cold compilation.
Run::

    NUMPYRO_SMILE_CACHE_DIR=off python -m benchmarks.large_draws [--mode both|streamed|memory]
        [--warmup 100] [--samples 100] [--tmp FOLDER] [--out outputs/large_draws.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

from numpyro_smile import SMILEEnsemble, memory, models

NUM_INPUTS, HIDDEN, NUM_DATA = 100, (1000, 900), 10_000


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: N(0, 1) inputs and a noisy nonlinear target of a few of them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(NUM_DATA, NUM_INPUTS)).astype(np.float32)
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=NUM_DATA)
    return X, y.astype(np.float32)


def num_parameters() -> int:
    """Weights and biases of the MLP, plus the noise scale."""
    widths = (NUM_INPUTS, *HIDDEN, 1)
    return sum(a * b + b for a, b in itertools.pairwise(widths)) + 1


def run(mode: str, args: argparse.Namespace) -> dict:
    """One run in this process; returns its record."""
    compiles: list[float] = []

    def on_event(event: str, seconds: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    X, y = data(args.seed)
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        path = Path(folder) / "draws.nc" if mode == "streamed" else None
        ensemble = SMILEEnsemble(
            partial(models.mlp_regression, hidden=HIDDEN, subsample_size=args.batch_size),
            num_members=args.members,
            num_warmup=args.warmup,
            num_samples=args.samples,
            thinning=1,
            pretrain_steps=args.pretrain_steps,
            log_likelihood=args.log_likelihood,
            draws_to=path,
            progress_bar=args.progress or None,
        )
        start = time.perf_counter()
        idata = ensemble.run(jax.random.key(args.seed), X, y)
        run_s = time.perf_counter() - start
        start = time.perf_counter()
        checked = check_draws(idata, args.members, args.samples)
        check_s = time.perf_counter() - start
        record = {
            "mode": mode,
            "num_parameters": num_parameters(),
            "kept_draws_gb": args.members * args.samples * num_parameters() * 4 / 1e9,
            "peak_rss_gib": memory.peak_rss_bytes() / 2**30,
            "run_s": run_s,
            "check_s": check_s,
            "file_gb": None if path is None else path.stat().st_size / 1e9,
            "xla_compilations": len(compiles),
            "xla_compile_s": sum(compiles),
            "xla_compiles_over_half_second": sorted(round(t, 2) for t in compiles if t > 0.5),
            "compilation_cache": os.environ.get("NUMPYRO_SMILE_CACHE_DIR", "default"),
            "timings": ensemble.timings,
            "memory": ensemble.memory,
            **checked,
        }
        del idata  # closes the file before its folder goes
    return record


def check_draws(idata, members: int, draws: int) -> dict:
    """Every variable of ``posterior``, ``sample_stats`` and ``log_likelihood`` holds
    ``members`` x ``draws`` finite values, read ten draws of one member at a time."""
    counted = {}
    for group in ("posterior", "sample_stats", "log_likelihood"):
        dataset = idata[group]
        for name, variable in dataset.data_vars.items():
            assert variable.shape[:2] == (members, draws), (group, name, variable.shape)
            for chain in range(members):
                for first in range(0, draws, 10):
                    part = variable[chain, first : first + 10].values
                    assert np.isfinite(part.astype(float)).all(), (group, name, chain, first)
            counted[f"{group}/{name}"] = list(variable.shape)
    return {"all_draws_finite": True, "shapes": counted}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("both", "streamed", "memory"), default="both")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-likelihood", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder of the temporary draws file")
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    parser.add_argument("--out", type=Path, default=Path("outputs/large_draws.json"))
    args = parser.parse_args(argv)
    if args.mode != "both":
        record = run(args.mode, args)
    else:  # each mode in its own process: its own peak resident set
        record = {}
        for mode in ("streamed", "memory"):
            out = args.out.with_name(f"{args.out.stem}_{mode}.json")
            command = [sys.executable, "-m", "benchmarks.large_draws", "--mode", mode]
            for name in ("members", "warmup", "samples", "pretrain_steps", "batch_size",
                         "log_likelihood", "seed"):  # fmt: skip
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            command += ["--out", str(out)] + (["--tmp", args.tmp] if args.tmp else [])
            subprocess.run(command, check=True)
            record[mode] = json.loads(out.read_text())
    record["machine"] = (
        f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)"
    )
    record["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=float))
    print(json.dumps(record, indent=2, default=float))
    return record


if __name__ == "__main__":
    main()
