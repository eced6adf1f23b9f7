"""Image benchmark: a Bayesian CNN on MNIST-1D, pSMILE against the deep ensemble and the
tuned SG-MCMC baselines at the same number of mini-batch gradients.

Data: MNIST-1D (Greydanus 2020; signals of length 40, 10 classes) generated locally by the
``mnist1d`` package (``numpyro_smile.datasets.load_mnist1d``, the package's seed 42: the
same examples for every benchmark seed; never downloaded): ``--num-train`` training examples
(4,000 by default, the package's standard size), then the budget's validation and test
examples. Reference test accuracies (Greydanus): logistic regression ~32 %, MLP ~68 %,
CNN ~94 %.

Network: ``numpyro_smile.models.cnn_classification`` with two 1-D convolutions (16 and 32
channels, width 3, GELU, average pooling by 2) and a dense layer of 96 (GELU): 33,418
parameters, N(0, 1) priors (the models' default, measured in ``benchmarks.priors``).

Protocol (:mod:`benchmarks.harness`): for each seed one deep ensemble (``de``; AdamW with
early stopping on the validation set) and every sampler from its members: ``psmile``,
``smile``, ``smile-naive``, and ``sghmc``, ``adasghmc``, ``csgld`` with step sizes chosen on
validation LPPD from the budget's grid, all at the same number of mini-batch gradients.
Outputs: see :mod:`benchmarks.networks`. Budgets:

- ``tiny``: seconds of sampling on 400 examples, the tests' size (meaningless numbers);
- ``small``: 4 members, B = 128, pretraining up to 30 epochs, 200 warmup + 400 sampling
  steps (thinning 20), a 2-point grid for the baselines (c = 0.03 and 0.3, no extension):
  about 11 minutes for all methods on 2 quiet CPU cores by estimate (a step of the 4
  members' CNN costs ~70 ms there, each run ~15 s of compilation);
- ``paper``: the SMILE paper's protocol (8 members, B = 512, 5,000 warmup and 10,000
  sampling steps thinned by 100, a 6-point grid), for an accelerator.

Run::

    python -m benchmarks.images --budget small --out outputs/images_small [--seeds 0 1 2]
        [--methods de psmile ...] [--num-train 40000]
"""

from __future__ import annotations

import argparse
from functools import partial

import jax

from benchmarks import networks
from benchmarks.networks import SG_METHODS, compare, verdict
from numpyro_smile import datasets, models

#: The CNN: two 1-D convolutions and a dense layer, 33,418 parameters on MNIST-1D.
CHANNELS, DENSE = (16, 32), (96,)
NUM_CLASSES = 10
#: The issue's size floor for this benchmark's network.
MIN_PARAMS = 30_000

#: The table's and plots' likelihood column: key and label.
SCORE = ("test_lppd", "test LPPD")

BUDGETS = {
    "tiny": dict(
        members=2, warmup=20, samples=20, thinning=5, pretrain_epochs=3, batch_size=64,
        num_train=400, num_valid=100, num_test=200, grid=(0.1,), max_extensions=0,
    ),
    "small": dict(
        members=4, warmup=200, samples=400, thinning=20, pretrain_epochs=30, batch_size=128,
        num_train=4000, num_valid=500, num_test=1000, grid=(0.03, 0.3), max_extensions=0,
    ),
    "paper": dict(
        members=8, warmup=5000, samples=10000, thinning=100, pretrain_epochs=200,
        batch_size=512, num_train=4000, num_valid=1000, num_test=2000,
        grid=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0), max_extensions=2,
    ),
}  # fmt: skip


class Problem:
    """MNIST-1D, the CNN and one seed's key (see :class:`benchmarks.harness.Problem`)."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.budget = networks.budget_of(args, BUDGETS)
        if args.num_train is not None:
            self.budget["num_train"] = args.num_train
        budget = self.budget
        self.split = datasets.load_mnist1d(
            num_train=budget["num_train"],
            num_valid=budget["num_valid"],
            num_test=budget["num_test"],
        )
        self.seed = seed
        self.n_train = self.n_likelihood = len(self.split.train[1])
        self.batch_size = min(budget["batch_size"], self.n_train // 4)
        self.model = partial(
            models.cnn_classification,
            num_classes=NUM_CLASSES,
            channels=CHANNELS,
            dense=DENSE,
            subsample_size=self.batch_size,
            **networks.prior_options(args),
        )
        self.key = jax.random.key(seed)
        self.num_params = networks.num_parameters(self.model, *self.split.train)

    def metrics(self, idata, group: str = "posterior") -> dict:
        return networks.classifier_metrics(self.model, idata, self.split.test, group)

    def config(self) -> dict:
        return {
            "data": "mnist1d",
            "seed": self.seed,
            "n_train": self.n_train,
            "batch_size": self.batch_size,
            "num_params": self.num_params,
            **networks.prior_of(self.model),
            **{k: v for k, v in self.budget.items() if k not in ("grid", "batch_size")},
        }


def targets(records: list[dict]) -> list[str]:
    """The issue's targets for the CNN, each met or missed with its margin (means over
    seeds)."""
    methods = {r["method"] for r in records}
    params = records[0]["num_params"]
    out = [f"- CNN of >= {MIN_PARAMS:,} parameters: {verdict(params >= MIN_PARAMS)} ({params:,})"]
    if {"psmile", "de"} <= methods:
        d = compare(records, "psmile", "de")
        ok = d["accuracy"] >= 0 and d["lppd"] >= 0 and d["ece"] <= 0
        out.append(
            f"- psmile's test accuracy, LPPD and ECE each at least as good as the deep "
            f"ensemble's: {verdict(ok)} (accuracy {d['accuracy']:+.4f}: "
            f"{verdict(d['accuracy'] >= 0)}; LPPD {d['lppd']:+.4f}: {verdict(d['lppd'] >= 0)}; "
            f"ECE {d['ece']:+.4f}: {verdict(d['ece'] <= 0)})"
        )
    for baseline in SG_METHODS:
        if {"psmile", baseline} <= methods:
            d = compare(records, "psmile", baseline)
            ok = d["accuracy"] > 0 and d["lppd"] > 0 and d["ece"] < 0
            out.append(
                f"- psmile better than tuned {baseline} at the same mini-batch gradients "
                f"(accuracy and LPPD higher, ECE lower): {verdict(ok)} (accuracy "
                f"{d['accuracy']:+.4f}, LPPD {d['lppd']:+.4f}, ECE {d['ece']:+.4f})"
            )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own option."""
    parser.add_argument(
        "--num-train", type=int, default=None, help="training examples (budget's: 4,000)"
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns ``results.json``'s content."""
    return networks.run(argv, "images")


if __name__ == "__main__":
    main()
