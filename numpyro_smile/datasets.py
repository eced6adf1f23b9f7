"""Data sets for the ready models, all read or made locally (no network access).

- UCI-style tables and the data protocol of the MILE and SMILE papers' UCI experiments: a
  table is whitespace-separated numbers, one row per example, the target in the last column;
  the protocol standardises the columns with the whole table's mean and standard deviation
  (features, and the target for regression), shuffles the rows with a seed and splits them
  70 / 10 / 20 into training, validation and test sets (:func:`load_table`,
  :func:`split_standardize`).
- MNIST-1D (:func:`load_mnist1d`), generated on the spot by the ``mnist1d`` package, for
  :func:`numpyro_smile.models.cnn_classification` with 1-D inputs.
- Text for :func:`numpyro_smile.models.transformer_lm`: :func:`split_text` cuts a text into
  training, validation and test parts by position, :func:`char_vocabulary` and
  :func:`char_sequences` turn a part into ``(N, T + 1)`` windows of character codes.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "Split",
    "char_sequences",
    "char_vocabulary",
    "load_mnist1d",
    "load_table",
    "split_standardize",
    "split_text",
]


class Split(NamedTuple):
    """Training, validation and test sets, each ``(X (n, p), y (n,))``."""

    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def load_table(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from a whitespace-separated table whose last column is the target."""
    table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if table.shape[1] < 2:
        raise ValueError(f"{path}: need at least one feature column and a target column.")
    return table[:, :-1], table[:, -1]


def split_standardize(
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    *,
    classification: bool = False,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    dtype: type = np.float32,
) -> Split:
    """Standardise, shuffle with ``seed`` and split (the MILE/SMILE protocol).

    Columns with zero variance are centred only. For classification the target is left as
    integer labels.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {fractions}.")
    X = np.asarray(X, np.float64)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    if classification:
        y = np.asarray(y).astype(np.int32)
    else:
        y = np.asarray(y, np.float64)
        y = ((y - y.mean()) / (y.std() or 1.0)).astype(dtype)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = round(fractions[0] * len(y))
    n_valid = round(fractions[1] * len(y))
    parts = np.split(order, [n_train, n_train + n_valid])
    X = X.astype(dtype)
    return Split(*[(X[idx], y[idx]) for idx in parts])


def load_mnist1d(
    num_train: int = 4000,
    num_test: int = 1000,
    *,
    num_valid: int = 0,
    seed: int = 42,
    dtype: type = np.float32,
) -> Split:
    """MNIST-1D, generated locally by the ``mnist1d`` package (``pip install mnist1d``).

    Calls ``mnist1d.data.make_dataset`` with the package's default configuration
    (``get_dataset_args()``: signals of length 40, 10 classes, standardised) and
    ``num_train + num_valid + num_test`` examples; never its download path. The defaults give
    the package's own 4,000 / 1,000 split of 5,000 examples (seed 42). The generator seeds
    NumPy's and Python's global random state; both are restored afterwards.

    Args:
        num_train: training examples. The three parts are taken in the order training,
            validation, test from one generated set; their total must be a multiple of 10
            (the generator makes the same number of every digit).
        num_test: test examples.
        num_valid: validation examples.
        seed: the generator's seed.
        dtype: of the ``(n, 40)`` signals; labels are ``int32`` in ``[0, 10)``.

    Returns:
        A :class:`Split` (``valid`` is empty unless ``num_valid > 0``).
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    total = num_train + num_valid + num_test
    if min(num_train, num_test) < 1 or num_valid < 0 or total % 10:
        raise ValueError(
            "num_train and num_test must be >= 1, num_valid >= 0, and their total a multiple "
            f"of 10 (as many examples of each digit); got {num_train}, {num_valid}, {num_test}."
        )
    args = get_dataset_args()
    args.num_samples, args.seed = total, seed
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)
    # make_dataset splits at int(0.8 * total); join its parts and split at our own sizes
    X: np.ndarray = np.concatenate([data["x"], data["x_test"]]).astype(dtype)
    y: np.ndarray = np.concatenate([data["y"], data["y_test"]]).astype(np.int32)
    parts = np.split(np.arange(total), [num_train, num_train + num_valid])
    return Split(*[(X[idx], y[idx]) for idx in parts])


def split_text(
    text: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
) -> tuple[str, str, str]:
    """Training, validation and test parts of ``text``, cut by position (not shuffled: the
    parts share no window, and the test part is text the model never read)."""
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}.")
    first = round(fractions[0] * len(text))
    second = first + round(fractions[1] * len(text))
    return text[:first], text[first:second], text[second:]


def char_vocabulary(text: str) -> str:
    """The distinct characters of ``text``, sorted: character ``vocab[i]`` has code ``i``."""
    return "".join(sorted(set(text)))


def char_sequences(
    text: str,
    context: int,
    *,
    vocab: str | None = None,
    stride: int | None = None,
    max_sequences: int | None = None,
) -> np.ndarray:
    """``(N, context + 1)`` int32 windows of ``text``'s character codes, for
    :func:`numpyro_smile.models.transformer_lm` (inputs ``[:, :-1]``, targets ``[:, 1:]``).

    Window j covers characters ``[j * stride, j * stride + context + 1)``. The default
    stride, ``context``, makes consecutive windows share one character, so every character
    after the first is a target exactly once; a smaller stride overlaps them.

    Args:
        text: the text (e.g. one part of :func:`split_text`).
        context: T, the predictions per window.
        vocab: the characters, code = position (default :func:`char_vocabulary` of
            ``text``; pass the training part's to encode validation and test parts alike).
        stride: characters between window starts (default ``context``).
        max_sequences: keep only the first this many windows.

    Raises:
        ValueError: ``text`` is shorter than one window, or holds a character not in
            ``vocab``.
    """
    vocab = char_vocabulary(text) if vocab is None else vocab
    stride = context if stride is None else stride
    if context < 1 or stride < 1:
        raise ValueError(f"context and stride must be >= 1, got {context} and {stride}.")
    missing = set(text) - set(vocab)
    if missing:
        raise ValueError(f"text has characters outside vocab: {sorted(missing)[:10]!r}.")
    code = {c: i for i, c in enumerate(vocab)}
    codes = np.fromiter((code[c] for c in text), np.int32, len(text))
    if len(codes) < context + 1:
        raise ValueError(
            f"text of {len(codes)} characters is shorter than one window of {context + 1}."
        )
    starts = np.arange(0, len(codes) - context, stride)
    if max_sequences is not None:
        starts = starts[:max_sequences]
    return codes[starts[:, None] + np.arange(context + 1)].astype(np.int32)
