"""numpyro_smile.datasets: reading a table and the papers' standardise-shuffle-split protocol."""

from __future__ import annotations

import numpy as np
import pytest

from numpyro_smile.datasets import Split, load_table, split_standardize

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
