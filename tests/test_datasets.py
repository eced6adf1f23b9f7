"""numpyro_smile.datasets: reading a table and the papers' standardise-shuffle-split protocol,
text windows for the language model, and MNIST-1D made locally."""

from __future__ import annotations

import numpy as np
import pytest

from numpyro_smile.datasets import (
    Split,
    char_sequences,
    char_vocabulary,
    load_mnist1d,
    load_table,
    split_standardize,
    split_text,
)

N = 50


@pytest.fixture
def table_file(tmp_path):
    """A whitespace-separated table: 3 features (one constant), the target last."""
    rng = np.random.default_rng(0)
    table = np.column_stack(
        [rng.normal(5.0, 2.0, N), rng.uniform(-1, 3, N), np.full(N, 7.0), rng.normal(size=N)]
    )
    path = tmp_path / "toy.data"
    np.savetxt(path, table, fmt="%.6f", delimiter="  ")
    return path, np.loadtxt(path)


def test_load_table_splits_off_the_last_column(table_file):
    path, table = table_file
    X, y = load_table(path)
    assert X.shape == (N, 3) and y.shape == (N,)
    assert X.dtype == y.dtype == np.float64
    np.testing.assert_array_equal(X, table[:, :3])
    np.testing.assert_array_equal(y, table[:, 3])


def test_load_table_one_row_and_too_few_columns(tmp_path):
    one_row = tmp_path / "one.data"
    one_row.write_text("1 2 3\n")
    X, y = load_table(one_row)
    assert X.shape == (1, 2) and y.tolist() == [3.0]
    target_only = tmp_path / "target.data"
    target_only.write_text("1\n2\n3\n")
    with pytest.raises(ValueError, match="at least one feature column"):
        load_table(target_only)


def test_split_proportions_and_standardisation(table_file):
    split = split_standardize(*load_table(table_file[0]), seed=0)
    assert isinstance(split, Split)
    # 70 / 10 / 20 of 50 rows
    assert [len(part[1]) for part in split] == [35, 5, 10]
    assert [part[0].shape for part in split] == [(35, 3), (5, 3), (10, 3)]
    for X, y in split:
        assert X.dtype == y.dtype == np.float32
    # standardised with the whole table's statistics: over the three parts together,
    # mean 0 and sd 1, except the constant column, which is centred only (all zeros)
    X = np.concatenate([part[0] for part in split]).astype(np.float64)
    y = np.concatenate([part[1] for part in split]).astype(np.float64)
    np.testing.assert_allclose(X[:, [0, 1]].mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(X[:, [0, 1]].std(0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(X[:, 2], 0.0)
    np.testing.assert_allclose([y.mean(), y.std()], [0.0, 1.0], atol=1e-6)


def test_split_is_a_seeded_shuffle_of_the_rows(table_file):
    X_raw, y_raw = load_table(table_file[0])
    y_std = (y_raw - y_raw.mean()) / y_raw.std()
    first, again, other = (split_standardize(X_raw, y_raw, seed) for seed in (1, 1, 2))
    for a, b in zip(first, again, strict=True):  # the same seed: the same split
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first.train[1], other.train[1])  # another seed: another order
    # every row lands in exactly one part, features and target kept together
    order = np.random.default_rng(1).permutation(N)
    np.testing.assert_allclose(
        np.concatenate([part[1] for part in first]), y_std[order], rtol=1e-6, atol=1e-6
    )
    X_std = (X_raw[:, 0] - X_raw[:, 0].mean()) / X_raw[:, 0].std()
    np.testing.assert_allclose(
        np.concatenate([part[0][:, 0] for part in first]), X_std[order], rtol=1e-6, atol=1e-6
    )


def test_classification_keeps_integer_labels_and_custom_fractions(table_file):
    X, _ = load_table(table_file[0])
    labels = np.arange(N) % 3
    split = split_standardize(X, labels, seed=0, classification=True, fractions=(0.5, 0.2, 0.3))
    assert [len(part[1]) for part in split] == [25, 10, 15]
    for _, y in split:
        assert y.dtype == np.int32 and set(y) <= {0, 1, 2}
    assert sorted(np.concatenate([part[1] for part in split])) == sorted(labels)
    with pytest.raises(ValueError, match="fractions must sum to 1"):
        split_standardize(X, labels, seed=0, fractions=(0.7, 0.2, 0.2))


# ------------------------------------------------------------------ text windows


def test_split_text_by_position():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, valid, test = split_text(text)
    assert (len(train), len(valid), len(test)) == (900, 50, 50)
    assert train + valid + test == text  # contiguous, in order: no shuffling
    assert [len(p) for p in split_text(text, (0.5, 0.0, 0.5))] == [500, 0, 500]
    with pytest.raises(ValueError, match="sum to 1"):
        split_text(text, (0.5, 0.2, 0.2))


def test_char_sequences_windows_and_codes():
    text = "hello world, hello numpyro"
    vocab = char_vocabulary(text)
    assert vocab == "".join(sorted(set(text))) and len(vocab) == len(set(text))
    windows = char_sequences(text, 5)
    # windows start every 5 characters and hold 6: inputs [:, :-1], targets [:, 1:]
    assert windows.shape == ((len(text) - 6) // 5 + 1, 6) and windows.dtype == np.int32
    decoded = ["".join(vocab[i] for i in row) for row in windows]
    assert decoded == [text[5 * j : 5 * j + 6] for j in range(len(windows))]
    # every character after the first is a target exactly once (up to the last full window)
    targets = "".join("".join(vocab[i] for i in row[1:]) for row in windows)
    assert targets == text[1 : 1 + len(targets)]
    overlapping = char_sequences(text, 5, stride=1, max_sequences=4)
    assert overlapping.shape == (4, 6)
    np.testing.assert_array_equal(overlapping[1, :-1], overlapping[0, 1:])
    # a held-out part is encoded with the training part's vocabulary
    np.testing.assert_array_equal(char_sequences("hello!", 2, vocab="!ehlo")[0], [2, 1, 3])


def test_char_sequences_errors():
    with pytest.raises(ValueError, match="outside vocab"):
        char_sequences("abcz", 2, vocab="abc")
    with pytest.raises(ValueError, match="shorter than one window"):
        char_sequences("abc", 3)
    with pytest.raises(ValueError, match="context and stride must be >= 1"):
        char_sequences("abcdef", 0)


# ------------------------------------------------------------------ MNIST-1D


def test_load_mnist1d_is_generated_locally_and_restores_the_global_rng():
    pytest.importorskip("mnist1d", reason="mnist1d is not installed (pip install mnist1d)")
    import random

    # the global states that mnist1d's generator seeds are left as they were
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    expected = (np.random.random(), random.random())  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    split = load_mnist1d(num_train=120, num_valid=30, num_test=50, seed=3)
    assert (np.random.random(), random.random()) == expected  # noqa: NPY002
    assert [part[0].shape for part in split] == [(120, 40), (30, 40), (50, 40)]
    for X, y in split:
        assert X.dtype == np.float32 and y.dtype == np.int32 and set(y) <= set(range(10))
    X = np.concatenate([part[0] for part in split])
    assert abs(X.mean()) < 0.05 and abs(X.std() - 1) < 0.05  # mnist1d standardises
    labels = np.concatenate([part[1] for part in split])
    assert np.all(np.bincount(labels, minlength=10) == 20)  # as many of every digit
    again = load_mnist1d(num_train=120, num_valid=30, num_test=50, seed=3)
    np.testing.assert_array_equal(again.test[0], split.test[0])
    with pytest.raises(ValueError, match="multiple of 10"):
        load_mnist1d(num_train=101, num_test=50)
