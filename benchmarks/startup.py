"""Start-up: how much faster a second run starts once its compiled code is cached.

The workload is ``make demo`` (``numpyro_smile.demo.run``: a SMILE ensemble of 8 members with
pretraining, then a MILE ensemble from the same members, on scikit-learn's diabetes data).
Each case runs in fresh Python processes with its own empty cache directory
(``NUMPYRO_SMILE_CACHE_DIR``), side by side in one invocation:

* ``processes``: the demo twice, each in a new process (what a user sees running
  ``make demo`` twice); the second process finds the first's executables on disk;
* ``same process``: the demo twice in one process (a notebook re-running a cell);
* ``cache off``: the same process case with ``NUMPYRO_SMILE_CACHE_DIR=off`` (the control).

For every run it reports, summed over the demo's two ensembles: start-up (``setup_s`` +
``compile_s`` + ``init_s``: everything before the first warmup step), of which ``compile_s``
and ``init_s`` apart, ``postprocess_s`` (the log-likelihood pass), the sampling phases
(pretraining, warmup, sampling) and the whole call's wall time; the verdict is the start-up
ratio first / second (goal >= 3). Run::

    python -m benchmarks.startup [--out DIR] [--num-warmup 2000] [--num-samples 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

GOAL = 3.0
STARTUP = ("setup_s", "compile_s", "init_s")
WORK = ("pretrain_s", "warmup_s", "sampling_s")

#: The child process: run the demo ``repeats`` times, print one JSON line per run.
CHILD = """
import json, sys, tempfile, time
start = time.perf_counter()
from numpyro_smile import demo
imported = time.perf_counter() - start
for _ in range({repeats}):
    begin = time.perf_counter()
    out = demo.run(num_warmup={num_warmup}, num_samples={num_samples},
                   out_dir=tempfile.mkdtemp(), progress_bar=False)
    wall = time.perf_counter() - begin
    print("RESULT " + json.dumps({{"import_s": imported, "wall_s": wall,
                                  "timings": out["timings"]}}), flush=True)
"""


def run_child(cache: str, repeats: int, args: argparse.Namespace) -> list[dict]:
    """The demo ``repeats`` times in one new process with ``cache`` as the cache setting."""
    code = CHILD.format(repeats=repeats, num_warmup=args.num_warmup, num_samples=args.num_samples)
    env = {**os.environ, "NUMPYRO_SMILE_CACHE_DIR": cache}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    runs = []
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            record = json.loads(line[len("RESULT ") :])
            runs.append(summarise(record))
    return runs


def summarise(record: dict) -> dict:
    """Seconds per phase summed over the demo's ensembles, and the start-up total."""
    timings = record["timings"].values()
    phases = {k: sum(t.get(k, 0.0) for t in timings) for k in (*STARTUP, "postprocess_s", *WORK)}
    return {
        "startup_s": sum(phases[k] for k in STARTUP),
        **phases,
        "work_s": sum(phases[k] for k in WORK),
        "wall_s": record["wall_s"],
        "import_s": record["import_s"],
    }


def ratios(cases: dict[str, list[dict]]) -> dict[str, float]:
    """Per case, the first run's start-up over the second's."""
    return {name: runs[0]["startup_s"] / runs[1]["startup_s"] for name, runs in cases.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/startup", help="output directory")
    parser.add_argument("--num-warmup", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=4000)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    with tempfile.TemporaryDirectory() as processes, tempfile.TemporaryDirectory() as same:
        start = time.perf_counter()
        cases["processes"] = run_child(processes, 1, args) + run_child(processes, 1, args)
        cases["same process"] = run_child(same, 2, args)
        cases["cache off"] = run_child("off", 2, args)
        total = time.perf_counter() - start
    results = {
        "cases": cases,
        "ratios": ratios(cases),
        "config": {
            "num_warmup": args.num_warmup,
            "num_samples": args.num_samples,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "benchmark_s": total,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (out / "results.md").write_text(report)
    print(report)
    return results


def render(results: dict) -> str:
    columns = ("startup_s", "compile_s", "init_s", "setup_s", "postprocess_s", "work_s", "wall_s")
    lines = [
        "| case | run | " + " | ".join(c.removesuffix("_s") + " s" for c in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for name, runs in results["cases"].items():
        for i, run in enumerate(runs, 1):
            cells = " | ".join(f"{run[c]:.2f}" for c in columns)
            lines.append(f"| {name} | {i} | {cells} |")
    lines.append("")
    for name, ratio in results["ratios"].items():
        verdict = "met" if ratio >= GOAL else "missed"
        if name == "cache off":
            verdict = "control"
        lines.append(
            f"- {name}: second start-up {ratio:.1f}x faster than the first "
            f"({verdict}; goal {GOAL:.0f}x)"
        )
    config = results["config"]
    lines.append(
        f"\n{config['backend']}, {config['cpu_count']} cores, JAX {config['jax']}; demo with "
        f"{config['num_warmup']} warmup and {config['num_samples']} sampling steps; "
        f"benchmark {config['benchmark_s']:.0f} s."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
