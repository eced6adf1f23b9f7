#!/usr/bin/env bash
# The accelerator run of issue 14: the image and text benchmarks at a larger size than the
# CPU's `small` budget, plus the step-overhead benchmark, in one go, within 8 minutes on one
# NVIDIA H200. Usage, from the repository root on the accelerator machine:
#
#     bash benchmarks/gpu.sh [OUTDIR]        # default: $OUT, else outputs/gpu
#
# Writes OUTDIR/{env.txt, step_overhead.json, step_overhead.log, images/, images.log, text/,
# text.log}; images/ and text/ hold results.json, results.md and the plots (see
# benchmarks/networks.py). Each benchmark writes results.json after every method, so a part
# cut short by its time limit keeps the methods it finished (the log says where it stopped).
#
# Sizing (an estimate: no accelerator was available when this was written). On the H200 the
# step-overhead benchmark's loops run at ~0.1 ms per step and its whole run took about a
# minute (docs/benchmarks.md); small networks are launch-bound there, so a step of 8 members
# costs ~0.5-1 ms for the CNN (33k parameters, B = 512) and ~1-2 ms for the transformer
# (106k parameters, B = 16 windows = 512 characters), and every run pays ~15-25 s of
# compilation (each method and each grid point compiles its own loop). Per benchmark: the deep
# ensemble (pretraining, ~40 s with its compilation), then 3 SMILE variants + 3 baselines x 2
# grid points = 9 runs of 2,000 + 4,000 steps (4-8 s of steps + ~20 s compilation + ~5 s
# evaluation each, ~4 minutes in all at the upper end). So: step overhead <= 90 s, images
# <= 180 s, text <= 180 s, ~20 s of start-up: 7.8 minutes at most, each part under `timeout`.
# If a part hits its limit, halve --warmup/--samples there, not the grid.
set -u
OUTDIR="${1:-${OUT:-outputs/gpu}}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$(dirname "$0")/.."

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  "$PYTHON" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
} > "$OUTDIR/env.txt" 2>&1

# The paper's protocol (8 members, B = 512 examples / 512 characters) on 10x the CPU's data
# (MNIST-1D: 40,000 training examples), steps cut to fit: 2,000 warmup + 4,000 sampling
# steps thinned by 40 (100 draws per member), a 2-point grid without extensions.
LARGE=(--budget paper --seeds 0 --members 8 --warmup 2000 --samples 4000 --thinning 40
       --grid 0.03 0.3 --max-extensions 0)

timeout 90 "$PYTHON" -m benchmarks.step_overhead --steps 2000 --repeats 5 \
  --out "$OUTDIR/step_overhead.json" > "$OUTDIR/step_overhead.log" 2>&1
echo "step_overhead: exit $?" | tee -a "$OUTDIR/env.txt"

timeout 180 "$PYTHON" -m benchmarks.images "${LARGE[@]}" --num-train 40000 --pretrain-epochs 10 \
  --out "$OUTDIR/images" > "$OUTDIR/images.log" 2>&1
echo "images: exit $?" | tee -a "$OUTDIR/env.txt"

timeout 180 "$PYTHON" -m benchmarks.text "${LARGE[@]}" --pretrain-steps 3000 \
  --out "$OUTDIR/text" > "$OUTDIR/text.log" 2>&1
echo "text: exit $?" | tee -a "$OUTDIR/env.txt"
date -u >> "$OUTDIR/env.txt"
