"""Memory of a small CNN ensemble with the defaults: scikit-learn's 8x8 digits, end to end.

The case that once exhausted a 24 GB machine: a CNN (two 3x3 convolutions with 8 and 16
channels, 2x2 average pooling, dense 32, dense 10, ReLU; 9,802 parameters, N(0, 1) priors)
with a subsample plate of 64 over the 1,257 training images, ``SMILEEnsemble(num_members=4,
num_warmup=3000, num_samples=5000, thinning=10)`` with its defaults (the full-data
``log_likelihood`` group included), then ``evaluate`` on the 361 test images. Reports the peak
resident set of the process (``VmHWM``), the ensemble's ``memory`` and ``timings``, and the
test metrics of the deep ensemble and the posterior. No network access: the digits ship with
scikit-learn. Run::

    python -m benchmarks.cnn_memory [--members 4] [--warmup 3000] [--samples 5000]
        [--thinning 10] [--progress] [--out outputs/cnn_memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_smile import SMILEEnsemble, memory


def cnn(X, y=None, subsample_size=None):
    """The network of the memory issue, on (N, 8, 8, 1) images and 10 classes."""

    def weight(name, shape):
        return numpyro.sample(name, dist.Normal(0.0, 1.0).expand(list(shape)).to_event(len(shape)))

    w1, b1 = weight("w1", (3, 3, 1, 8)), weight("b1", (8,))
    w2, b2 = weight("w2", (3, 3, 8, 16)), weight("b2", (16,))
    w3, b3 = weight("w3", (256, 32)), weight("b3", (32,))
    w4, b4 = weight("w4", (32, 10)), weight("b4", (10,))
    conv = partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size):
        x = numpyro.subsample(X, event_dim=3)
        h = jax.nn.relu(conv(x, w1) + b1)
        h = jax.nn.relu(conv(h, w2) + b2)
        h = h.reshape(h.shape[0], 4, 2, 4, 2, 16).mean((2, 4)).reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ w3 + b3)
        target = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Categorical(logits=h @ w4 + b4), obs=target)


def load_digits(seed: int = 0):
    """8x8 digits scaled to [0, 1], split 70/10/20 with the seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    X = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train, n_valid = int(0.7 * len(y)), int(0.1 * len(y))
    parts = np.split(order, [n_train, n_train + n_valid])
    return [(X[idx], y[idx]) for idx in parts]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--thinning", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    parser.add_argument("--out", type=Path, default=Path("outputs/cnn_memory.json"))
    args = parser.parse_args(argv)

    train, valid, test = load_digits(args.seed)
    ensemble = SMILEEnsemble(
        partial(cnn, subsample_size=args.batch_size),
        num_members=args.members,
        num_warmup=args.warmup,
        num_samples=args.samples,
        thinning=args.thinning,
        progress_bar=args.progress or None,
    )
    start = time.perf_counter()
    idata = ensemble.run(jax.random.key(args.seed), *train, validation=valid)
    run_s = time.perf_counter() - start
    start = time.perf_counter()
    posterior = ensemble.evaluate(idata, *test)
    deep_ensemble = ensemble.evaluate(idata, *test, group="pretrained")
    evaluate_s = time.perf_counter() - start
    record = {
        "peak_rss_gb": memory.peak_rss_bytes() / 2**30,
        "run_s": run_s,
        "evaluate_s": evaluate_s,
        "num_train": len(train[1]),
        "num_test": len(test[1]),
        "log_likelihood_shape": list(idata.log_likelihood["y"].shape),
        "posterior": posterior,
        "deep_ensemble": deep_ensemble,
        "memory": ensemble.memory,
        "timings": ensemble.timings,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=float))
    print(json.dumps(record, indent=2, default=float))
    return record


if __name__ == "__main__":
    main()
