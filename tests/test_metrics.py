"""Tests for tune.metrics: exactness against scikit-learn and degenerate-case handling."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from tune import metrics
from tune.metrics import (
    CLUSTER_METRICS,
    CLUSTER_SCORE_KEYS,
    LABEL_METRICS,
    calinski_harabasz,
    cluster_scores,
    davies_bouldin,
    hungarian_accuracy,
    is_degenerate,
    label_scores,
    recon_mse,
    silhouette_scores,
)

TOL = 1e-5


def blobs(n, d, k, seed=0, spread=1.0, dtype=np.float32):
    """Overlapping Gaussian blobs (silhouette ~0.1-0.5) and their true labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread * 3
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(dtype), y


def perturb(labels, frac, k, seed=1):
    rng = np.random.default_rng(seed)
    out = labels.copy()
    flip = rng.random(len(out)) < frac
    out[flip] = rng.integers(0, k, int(flip.sum()))
    return out


def sk_sil(X, labels):
    return silhouette_score(X, labels, metric="euclidean")


def assert_matches_sklearn(X, labelings, **kwargs):
    ours = silhouette_scores(X, labelings, **kwargs)
    assert len(ours) == len(labelings)
    for got, labels in zip(ours, labelings, strict=True):
        assert abs(got - sk_sil(X, labels)) < TOL


# --- silhouette_scores: agreement with sklearn -------------------------------------


@pytest.mark.parametrize(
    ("n", "d", "k"), [(3, 3, 2), (7, 2, 3), (200, 2, 4), (601, 16, 7), (1500, 64, 10)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silhouette_matches_sklearn_on_blobs(n, d, k, dtype):
    X, y = blobs(n, d, k, seed=n, dtype=dtype)
    if len(np.unique(y)) < 2 or len(np.unique(y)) == n:
        y = np.arange(n) % 2
    assert_matches_sklearn(X, [y])


@pytest.mark.parametrize("n_labelings", [2, 3])
def test_several_labelings_in_one_call(n_labelings):
    X, y = blobs(900, 8, 6)
    labelings = [y, perturb(y, 0.2, 6), np.random.default_rng(3).integers(0, 4, 900)]
    assert_matches_sklearn(X, labelings[:n_labelings])


def test_both_reduction_paths_are_used_and_agree():
    # Aligned labelings give blocks spanning few cells (segment sums); independent
    # random labelings fragment the cells (one-hot matmul).  Exercise both.
    rng = np.random.default_rng(0)
    X, y = blobs(700, 5, 5)
    aligned = [y, perturb(y, 0.05, 5)]
    fragmented = [rng.integers(0, 10, 700), rng.integers(0, 10, 700)]
    for labelings, tile, has_segments in [(aligned, 64**2, True), (fragmented, 2**25, False)]:
        assert_matches_sklearn(X, labelings, max_tile_elements=tile)
        cells, cell_of = np.unique(np.stack(labelings, 1), axis=0, return_inverse=True)
        k_total = sum(len(np.unique(labels)) for labels in labelings)
        blocks = metrics._make_blocks(
            np.sort(cell_of.ravel()), len(cells), min(700, math.isqrt(tile)), k_total // 2
        )
        assert any(b.segments is not None for b in blocks) == has_segments


@pytest.mark.parametrize("max_tile_elements", [1, 9, 49, 1000])
def test_small_tiles_give_identical_scores(max_tile_elements):
    # 9 -> 3x3 blocks; 49 -> 7-row blocks that do not divide n=101.
    X, y = blobs(101, 4, 3)
    labelings = [y, perturb(y, 0.3, 3)]
    assert_matches_sklearn(X, labelings, max_tile_elements=max_tile_elements)


def test_singleton_cluster_scores_zero_like_sklearn():
    X, y = blobs(300, 6, 3)
    y = y.copy()
    y[17] = 99  # singleton
    y[200] = 98  # another
    assert_matches_sklearn(X, [y])


def test_arbitrary_label_values():
    X, y = blobs(400, 6, 3)
    relabeled = np.array([3, 7, 42])[y]
    negative = np.array([-5, 0, 1000])[y]
    assert_matches_sklearn(X, [relabeled, negative])
    assert silhouette_scores(X, [relabeled]) == pytest.approx(silhouette_scores(X, [y]))


@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_large_offset_is_centred_away(offset):
    # Without centring, ||x||^2 ~ d * offset^2 and float32 cancellation would swamp
    # the unit-scale distances.
    X, y = blobs(500, 10, 4, dtype=np.float64)
    shifted = X + offset
    assert_matches_sklearn(shifted, [y, perturb(y, 0.2, 4)])
    assert_matches_sklearn(shifted.astype(np.float32), [y])


def test_duplicate_points():
    X, y = blobs(60, 8, 3)
    # Every point repeated 10 times (a collapsed embedding has many coincident points).
    Xd, yd = np.repeat(X, 10, axis=0), np.repeat(y, 10)
    assert_matches_sklearn(Xd, [yd, perturb(yd, 0.2, 3)])
    # Sparse duplicates mixed with distinct points.
    Xm, ym = np.concatenate([X, X[:20]]), np.concatenate([y, y[:20]])
    assert_matches_sklearn(Xm, [ym])


def test_all_points_identical_scores_zero():
    X = np.ones((50, 4), dtype=np.float32)
    y = np.arange(50) % 3
    assert silhouette_scores(X, [y]) == [0.0]
    assert sk_sil(X, y) == 0.0


def test_torch_input_and_explicit_device():
    X, y = blobs(300, 5, 3)
    expected = sk_sil(X, y)
    got = silhouette_scores(torch.from_numpy(X), [torch.from_numpy(y)], device="cpu")
    assert abs(got[0] - expected) < TOL


def test_tf32_setting_is_restored():
    X, y = blobs(100, 4, 3)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert_matches_sklearn(X, [y])
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


# --- silhouette_scores: degenerate labelings and bad input -------------------------


def test_one_cluster_is_nan_and_other_labeling_still_scored():
    X, y = blobs(300, 5, 3)
    one = np.zeros(300, dtype=int)
    scores = silhouette_scores(X, [one, y, np.full(300, 7)])
    assert math.isnan(scores[0]) and math.isnan(scores[2])
    assert abs(scores[1] - sk_sil(X, y)) < TOL


def test_all_singletons_is_nan():
    X, y = blobs(50, 3, 2)
    scores = silhouette_scores(X, [np.arange(50), y])
    assert math.isnan(scores[0])
    assert abs(scores[1] - sk_sil(X, y)) < TOL


def test_single_sample_and_all_degenerate_return_nans():
    assert all(math.isnan(s) for s in silhouette_scores(np.zeros((1, 3)), [[0], [5]]))
    assert silhouette_scores(np.zeros((4, 3)), []) == []


def test_bad_input_raises():
    with pytest.raises(ValueError, match="no samples"):
        silhouette_scores(np.zeros((0, 3)), [np.zeros(0, dtype=int)])
    with pytest.raises(ValueError, match="labeling 1"):
        silhouette_scores(np.zeros((5, 3)), [np.zeros(5, dtype=int), np.zeros(4, dtype=int)])
    with pytest.raises(ValueError, match="2-D"):
        silhouette_scores(np.zeros(5), [np.zeros(5, dtype=int)])


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0, 0, 0, 0], True),
        ([0, 1, 2, 3], True),
        ([5], True),
        ([], True),
        ([0, 1, 1, 0], False),
        ([3, 3, 42, 7], False),
        (np.array([1, 2, 2]), False),
        (torch.tensor([0, 0, 1]), False),
    ],
)
def test_is_degenerate(labels, expected):
    assert is_degenerate(labels) is expected


# --- Davies-Bouldin / Calinski-Harabasz ---------------------------------------------


def test_db_ch_match_sklearn():
    X, y = blobs(500, 6, 4)
    assert davies_bouldin(X, y) == pytest.approx(davies_bouldin_score(X.astype(float), y))
    assert calinski_harabasz(X, y) == pytest.approx(calinski_harabasz_score(X.astype(float), y))
    assert davies_bouldin(torch.from_numpy(X), torch.from_numpy(y)) == pytest.approx(
        davies_bouldin_score(X.astype(float), y)
    )


@pytest.mark.parametrize("labels", [np.zeros(40, dtype=int), np.arange(40)])
def test_db_ch_nan_on_degenerate_without_warnings(labels):
    X, _ = blobs(40, 3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(davies_bouldin(X, labels))
        assert math.isnan(calinski_harabasz(X, labels))


# --- cluster_scores ---------------------------------------------------------------


def test_cluster_scores_structure_and_values():
    X, y = blobs(400, 6, 4)
    labelings = {"kmeans": y, "abo": perturb(y, 0.2, 4), "collapsed": np.zeros(400, int)}
    scores = cluster_scores(X, labelings, device="cpu")
    assert list(scores) == ["kmeans", "abo", "collapsed"]
    assert CLUSTER_METRICS == ("silhouette", "davies_bouldin", "calinski_harabasz")
    for name, labels in labelings.items():
        row = scores[name]
        assert tuple(row) == CLUSTER_SCORE_KEYS
        assert isinstance(row["clusters_used"], int)
        assert row["clusters_used"] == len(np.unique(labels))
        if name == "collapsed":
            assert row["degenerate"] == 1.0
            assert all(math.isnan(row[m]) for m in CLUSTER_METRICS)
            continue
        assert row["degenerate"] == 0.0
        X64 = X.astype(float)
        assert abs(row["silhouette"] - sk_sil(X, labels)) < TOL
        assert row["davies_bouldin"] == pytest.approx(davies_bouldin_score(X64, labels))
        assert row["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X64, labels))


def test_cluster_scores_uses_one_silhouette_call(monkeypatch):
    calls = []
    real = metrics.silhouette_scores

    def spy(X, labelings, **kwargs):
        calls.append(len(labelings))
        return real(X, labelings, **kwargs)

    monkeypatch.setattr(metrics, "silhouette_scores", spy)
    X, y = blobs(100, 3, 3)
    cluster_scores(X, {"a": y, "b": perturb(y, 0.3, 3)})
    assert calls == [2]


# --- label metrics and reconstruction error ----------------------------------------


def test_hungarian_accuracy_hand_cases():
    # Permuted cluster ids are a perfect match.
    assert hungarian_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    # Clusters {0,1} and {2}: best map gets 2 of 3.
    assert hungarian_accuracy([0, 1, 2], [0, 0, 1]) == pytest.approx(2 / 3)
    # 3 clusters, 2 classes: cluster 1 is split 1/1 and stays unmatched -> 4/6.
    assert hungarian_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(4 / 6)
    # 2 clusters, 4 classes: at most 2 classes can be matched -> 2/4.
    assert hungarian_accuracy([0, 1, 2, 3], [5, 5, 9, 9]) == pytest.approx(2 / 4)


def test_hungarian_accuracy_rejects_bad_input():
    with pytest.raises(ValueError):
        hungarian_accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        hungarian_accuracy([], [])


def test_label_scores_perfect_and_keys():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    scores = label_scores(y, np.array([7, 7, 3, 3, 5, 5, 5]))
    assert tuple(scores) == LABEL_METRICS == ("nmi", "ari", "acc")
    assert scores == pytest.approx({"nmi": 1.0, "ari": 1.0, "acc": 1.0})
    assert all(isinstance(v, float) for v in scores.values())


def test_recon_mse_numpy_and_torch():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    x_hat = np.array([[1.0, 0.0], [3.0, 1.0]])
    expected = (0 + 4 + 0 + 9) / 4
    assert recon_mse(x, x_hat) == expected
    assert recon_mse(torch.tensor(x, dtype=torch.float32), torch.tensor(x_hat)) == expected
    with pytest.raises(ValueError, match="shape"):
        recon_mse(x, x_hat[:1])
