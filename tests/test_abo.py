"""ABO_clusterer: the document's algorithm, its estimator contract, and the fast path vs the reference."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from models import ABO_clusterer as exported
from models.abo import (
    ABO_clusterer,
    ABOClusterer,
    ABONet,
    farthest_from_mean,
    nearest_centre,
    reference_fit,
)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(
        n_samples=3000,
        centers=10,
        n_features=16,
        cluster_std=0.5,
        center_box=(-20, 20),
        random_state=3,
    )
    return X.astype(np.float32), y


def test_name_and_parameter_count():
    assert ABO_clusterer is ABOClusterer is exported
    net = ABONet(torch.zeros(10, 64))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 640


def test_init_is_farthest_from_mean():
    X = np.array([[0, 0], [1, 0], [10, 0], [0, -5], [0.5, 0.5]], dtype=np.float32)
    # mean = (2.3, -0.9): squared distances 6.1, 2.5, 59.9, 22.4, 3.2 -> farthest first: 2, 3, 0
    np.testing.assert_array_equal(farthest_from_mean(X, 3), [2, 3, 0])
    est = ABOClusterer(n_clusters=3, epochs=0).fit(X)
    np.testing.assert_array_equal(est.cluster_centers_, X[[2, 3, 0]])


@pytest.mark.parametrize("random_state", [0, 1, 2])
def test_recovers_well_separated_blobs(blobs, random_state):
    X, y = blobs
    est = ABOClusterer(n_clusters=10, epochs=30, init="k-means++", random_state=random_state).fit(X)
    assert adjusted_rand_score(y, est.labels_) > 0.99
    assert est.loss_history_[-1] < est.loss_history_[0]
    assert len(est.loss_history_) == 30


def test_document_init_recovers_blobs_it_seeds_one_centre_each():
    # Three tight blobs at the vertices of an equilateral triangle (equidistant from the mean), each
    # with one point pushed outwards: the farthest-from-mean rule then seeds one centre per blob.
    rng = np.random.default_rng(0)
    angles = np.deg2rad([90, 210, 330])
    centres = 10 * np.column_stack([np.cos(angles), np.sin(angles)])
    blobs = [rng.normal(c, 0.3, (200, 2)) for c in centres]
    for c, b in zip(centres, blobs, strict=True):
        b[0] = c * 1.15  # 1.5 outwards: well inside its blob, far from the others
    X = np.vstack(blobs).astype(np.float32)
    y = np.repeat([0, 1, 2], 200)
    est = ABOClusterer(n_clusters=3, epochs=20, random_state=0).fit(X)
    assert sorted(y[est.init_indices_]) == [0, 1, 2]
    assert adjusted_rand_score(y, est.labels_) > 0.99


@pytest.mark.parametrize(
    "batch_size,temperature,init,dtype",
    [
        (32, 1.0, "farthest", torch.float32),  # the document's setting against its float32 loop
        (None, 2.0, "farthest", torch.float32),
        (7, 0.5, "k-means++", torch.float64),  # float64 reference: float32 rounding, not the fast
        (32, 1.0, "farthest", torch.float64),  # path, is then the only difference left
    ],
)
def test_fast_path_matches_reference_loop(blobs, batch_size, temperature, init, dtype):
    X = blobs[0][:1000] / 4  # moderate distances: every centre gets a real gradient
    steps = 40
    ref, ref_hist = reference_fit(
        X,
        10,
        lr=0.1,
        epochs=100,
        batch_size=batch_size,
        temperature=temperature,
        init=init,
        random_state=5,
        max_steps=steps,
        dtype=dtype,
    )
    est = ABOClusterer(
        10,
        lr=0.1,
        epochs=100,
        batch_size=batch_size,
        temperature=temperature,
        init=init,
        random_state=5,
        max_steps=steps,
    ).fit(X)
    assert est.n_iter_ == steps
    atol = 1e-4 if dtype == torch.float32 else 1e-6
    np.testing.assert_allclose(est.cluster_centers_, ref, atol=atol, rtol=0)
    np.testing.assert_allclose(est.loss_history_, ref_hist, rtol=1e-4)


def test_whole_epochs_match_reference(blobs):
    X = blobs[0][:400] / 4
    ref, ref_hist = reference_fit(X, 5, epochs=3, batch_size=32, random_state=1)
    est = ABOClusterer(5, epochs=3, batch_size=32, random_state=1).fit(X)
    np.testing.assert_allclose(est.cluster_centers_, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(est.loss_history_, ref_hist, rtol=1e-4)


def test_estimator_contract(blobs):
    X, _ = blobs
    est = ABOClusterer(n_clusters=4, epochs=2, batch_size=64, random_state=0)
    assert est.get_params()["batch_size"] == 64
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "labels_")
    assert est.fit(X) is est
    np.testing.assert_array_equal(clone(est).fit_predict(X), est.labels_)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    p = est.predict_proba(X[:50])
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(1), est.labels_[:50])
    assert est.cluster_centers_.shape == (4, X.shape[1])
    # torch tensors are accepted too and give the same answer
    np.testing.assert_array_equal(est.predict(torch.from_numpy(X)), est.labels_)
    with pytest.raises(NotFittedError):
        ABOClusterer().predict(X)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])


def test_deterministic_for_a_seed(blobs):
    X = blobs[0]
    a = ABOClusterer(epochs=2, random_state=7).fit(X).cluster_centers_
    b = ABOClusterer(epochs=2, random_state=7).fit(X).cluster_centers_
    c = ABOClusterer(epochs=2, random_state=8).fit(X).cluster_centers_
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_input():
    with pytest.raises(ValueError, match="n_clusters"):
        ABOClusterer(n_clusters=5).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ABOClusterer(n_clusters=1).fit(np.array([[np.nan, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2D array"):
        ABOClusterer().fit(np.zeros(10))
    with pytest.raises(ValueError, match="init has shape"):
        ABOClusterer(n_clusters=2, init=np.zeros((3, 2))).fit(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="init"):
        ABOClusterer(init="random").fit(np.zeros((20, 2)))
    with pytest.raises(ValueError, match="batch_size"):
        ABOClusterer(batch_size=0).fit(np.zeros((20, 2)))


def test_constant_embedding_collapses_without_crashing():
    est = ABOClusterer(n_clusters=3, epochs=2).fit(np.ones((50, 4), np.float32))
    assert len(np.unique(est.labels_)) == 1


def test_given_centres_are_kept_with_no_epochs(blobs):
    X = blobs[0]
    centres = X[[0, 1, 2]] + 0.25
    est = ABOClusterer(n_clusters=3, init=centres, epochs=0).fit(X)
    np.testing.assert_array_equal(est.cluster_centers_, centres)
    assert est.n_iter_ == 0 and est.loss_history_ == []
    np.testing.assert_array_equal(est.labels_, nearest_centre(X, centres))


def test_nearest_centre():
    X = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.1]])
    C = np.array([[0.0, 3.0], [0.1, 0.0], [5.0, 0.0]])
    np.testing.assert_array_equal(nearest_centre(X, C), [1, 2, 0])
    assert nearest_centre(X, C).dtype == np.int64


def test_random_state_instance_is_accepted(blobs):
    X = blobs[0][:300]
    a = ABOClusterer(4, epochs=2, init="k-means++", random_state=np.random.RandomState(3)).fit(X)
    b = ABOClusterer(4, epochs=2, init="k-means++", random_state=np.random.RandomState(3)).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


@parametrize_with_checks(
    [
        ABOClusterer(n_clusters=3, epochs=5, batch_size=None),
        ABOClusterer(n_clusters=3, epochs=5, batch_size=None, init="k-means++"),
    ],
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_parameter_constraints():
    # Not among parametrize_with_checks' checks: scikit-learn runs it on its own estimators only.
    check_param_validation("ABOClusterer", ABOClusterer(n_clusters=3, epochs=1))
