"""Text benchmark: a Bayesian character-level transformer on Shakespeare, pSMILE against the
deep ensemble and the tuned SG-MCMC baselines at the same number of mini-batch gradients.

Data: ``$SMILE_DATA_DIR/shakespeare_simple.txt`` (default ``../shared/data`` next to the
repository; 1.14 M characters, 65 symbols), split by position 90 / 5 / 5 into training,
validation and test text (``numpyro_smile.datasets.split_text``: the test text is a passage
the model never read); the budget takes the first characters of each part and cuts them into
windows of 33 characters (32 predictions each, ``char_sequences``). Without the file the
benchmark exits with the reason.

Network: ``numpyro_smile.models.transformer_lm``, d_model 64, 4 heads, 2 blocks, context 32,
tied head: 105,729 parameters, fan-in prior with s = 1 (the models' default, measured in
``benchmarks.priors``). The mini-batch plate is over windows (B windows = 32 B characters).

Protocol (:mod:`benchmarks.harness`): one deep ensemble per seed, every sampler from its
members at the same number of mini-batch gradients; the baselines' step-size scale is set by
the number of training characters. The score is the test NLL per character (nats; the
negative per-character LPPD: ``test_nll_per_char``), with next-character accuracy, ECE and
Brier score over the test characters. Outputs: see :mod:`benchmarks.networks`. Budgets:

- ``tiny``: 20,000 training characters and seconds of sampling (the tests' size);
- ``small``: 200,000 training characters, 4 members, B = 8 windows (256 characters), 600
  pretraining steps (batches of 16 windows), 150 warmup + 300 sampling steps (thinning 15),
  a 2-point grid for the baselines (c = 0.03 and 0.3, no extension): about 14 minutes for
  all methods on 2 quiet CPU cores by estimate (a step of the 4 members' transformer costs
  ~110 ms there, each run ~30 s of compilation);
- ``paper``: the whole training text, the SMILE paper's protocol (8 members, B = 16 windows
  = 512 characters, 5,000 warmup and 10,000 sampling steps thinned by 100), for an
  accelerator.

Run::

    python -m benchmarks.text --budget small --out outputs/text_small [--seeds 0 1 2]
        [--methods de psmile ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import jax

from benchmarks import networks
from benchmarks.networks import SG_METHODS, compare, verdict
from numpyro_smile import datasets, models

#: The text file, in ``$SMILE_DATA_DIR`` (default ``../shared/data``).
TEXT_FILE = "shakespeare_simple.txt"
#: The transformer: 105,729 parameters on the 65 symbols.
CONTEXT, D_MODEL, NUM_HEADS, NUM_LAYERS = 32, 64, 4, 2
#: The issue's size floor for this benchmark's network.
MIN_PARAMS = 100_000

#: The table's and plots' likelihood column: key and label.
SCORE = ("test_nll_per_char", "test NLL per char")

BUDGETS = {
    "tiny": dict(
        members=2, warmup=20, samples=20, thinning=5, pretrain_steps=30,
        pretrain_batch_size=16, batch_size=8, train_chars=20_000, valid_chars=2_000,
        test_chars=2_000, grid=(0.1,), max_extensions=0,
    ),
    "small": dict(
        members=4, warmup=150, samples=300, thinning=15, pretrain_steps=600,
        pretrain_batch_size=16, batch_size=8, train_chars=200_000, valid_chars=5_000,
        test_chars=10_000, grid=(0.03, 0.3), max_extensions=0,
    ),
    "paper": dict(
        members=8, warmup=5000, samples=10000, thinning=100, pretrain_steps=20_000,
        pretrain_batch_size=64, batch_size=16, train_chars=None, valid_chars=20_000,
        test_chars=10_000, grid=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0), max_extensions=2,
    ),
}  # fmt: skip


def data_path() -> Path:
    """Where the text is: ``$SMILE_DATA_DIR/shakespeare_simple.txt``."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return Path(os.environ.get("SMILE_DATA_DIR", default)).resolve() / TEXT_FILE


class Problem:
    """The text's windows, the transformer and one seed's key (see
    :class:`benchmarks.harness.Problem`)."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.budget = budget = networks.budget_of(args, BUDGETS)
        path = data_path()
        if not path.is_file():
            raise SystemExit(f"{path} not found: set SMILE_DATA_DIR to the folder holding it.")
        text = path.read_text()
        vocab = datasets.char_vocabulary(text)
        parts = datasets.split_text(text)
        limits = (budget["train_chars"], budget["valid_chars"], budget["test_chars"])
        self.split = datasets.Split(
            *[
                (datasets.char_sequences(part[:limit], CONTEXT, vocab=vocab),)
                for part, limit in zip(parts, limits)
            ]
        )
        self.seed = seed
        self.n_train = len(self.split.train[0])
        self.n_likelihood = self.n_train * CONTEXT  # characters: the likelihood's terms
        self.batch_size = min(budget["batch_size"], self.n_train // 4)
        self.model = partial(
            models.transformer_lm,
            vocab_size=len(vocab),
            context=CONTEXT,
            d_model=D_MODEL,
            num_heads=NUM_HEADS,
            num_layers=NUM_LAYERS,
            subsample_size=self.batch_size,
            **networks.prior_options(args),
        )
        self.key = jax.random.key(seed)
        self.num_params = networks.num_parameters(self.model, *self.split.train)

    def metrics(self, idata, group: str = "posterior") -> dict:
        scores = networks.classifier_metrics(self.model, idata, self.split.test, group)
        return scores | {"test_nll_per_char": -scores["test_lppd"]}

    def config(self) -> dict:
        return {
            "data": "shakespeare",
            "seed": self.seed,
            "n_train": self.n_train,
            "unit": f"windows of {CONTEXT} characters",
            "train_chars": self.n_train * CONTEXT,
            "test_chars_scored": int(self.split.test[0][:, 1:].size),
            "batch_size": self.batch_size,
            "num_params": self.num_params,
            **networks.prior_of(self.model),
            **{
                k: v
                for k, v in self.budget.items()
                if k not in ("grid", "batch_size", "train_chars")
            },
        }


def targets(records: list[dict]) -> list[str]:
    """The issue's targets for the transformer, met or missed with the margin (means over
    seeds); next-character accuracy is reported alongside."""
    methods = {r["method"] for r in records}
    params = records[0]["num_params"]
    out = [
        f"- transformer of >= {MIN_PARAMS:,} parameters: {verdict(params >= MIN_PARAMS)} "
        f"({params:,})"
    ]
    if {"psmile", "de"} <= methods:
        d = compare(records, "psmile", "de")
        out.append(
            f"- psmile's test NLL per character below the deep ensemble's: "
            f"{verdict(d['lppd'] > 0)} (NLL difference {-d['lppd']:+.4f} nats/char; accuracy "
            f"{d['accuracy']:+.4f}, ECE {d['ece']:+.4f})"
        )
    for baseline in SG_METHODS:
        if {"psmile", baseline} <= methods:
            d = compare(records, "psmile", baseline)
            out.append(
                f"- (reported, no target) psmile against tuned {baseline} at the same "
                f"mini-batch gradients: NLL {-d['lppd']:+.4f} nats/char, accuracy "
                f"{d['accuracy']:+.4f}, ECE {d['ece']:+.4f}"
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns ``results.json``'s content."""
    return networks.run(argv, "text")


if __name__ == "__main__":
    main(sys.argv[1:])
