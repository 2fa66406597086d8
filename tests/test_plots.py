"""The trial's figures (tune/plots.py) on hand-made data: which panels, in which space, with what
titles. The Pareto plot is tested on a real trials table in tests/test_report.py."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.decomposition import PCA

from tune import plots
from tune.plots import ClusterPanel, embedding_figure, loss_figure

RNG = np.random.default_rng(0)
N_POINTS = 300
TRUTH = np.repeat(np.arange(3), N_POINTS // 3)
# Three blobs in a 5-d space: its first two principal components are what should be drawn.
CENTRES = np.array([[0, 0, 0, 0, 0], [6, 1, 0, 0, 0], [0, 5, 2, 0, 0]], dtype=float)
UMAP5 = (CENTRES[TRUTH] + RNG.normal(0, 0.5, size=(N_POINTS, 5))).astype(np.float32)
LATENT8 = RNG.normal(size=(N_POINTS, 8)).astype(np.float32)
FLAT2 = RNG.normal(size=(N_POINTS, 2)).astype(np.float32)


def panel(name: str, points: np.ndarray, space: str, labels=TRUTH, nmi=0.9) -> ClusterPanel:
    return ClusterPanel(name, points, space, labels, 0.512, int(len(np.unique(labels))), nmi)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def offsets(ax) -> np.ndarray:
    return np.asarray(ax.collections[0].get_offsets())


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_a_2d_space_is_drawn_as_is_with_the_true_labels_beside_the_objective():
    fig = embedding_figure(
        [panel("abo", LATENT8, "latent"), panel("kmeans", FLAT2, "UMAP")],
        objective="kmeans",
        n_clusters=3,
        truth=TRUTH,
        title="mlp 32 z8 umap2",
    )
    best, truth, other = fig.axes
    assert best.get_title().splitlines() == [
        "KMeans (objective)",
        "silhouette 0.512 · 3/3 clusters · NMI 0.900",
        "the 2-d UMAP space KMeans clustered",
    ]
    assert best.xaxis.label.get_text() == "UMAP 1"
    np.testing.assert_allclose(offsets(best), FLAT2, rtol=1e-6)
    # the true labels in the objective clusterer's coordinates, not the other one's
    assert truth.get_title().startswith("true labels (3 classes)\nsame coordinates as KMeans")
    np.testing.assert_allclose(offsets(truth), FLAT2, rtol=1e-6)
    assert other.get_title().startswith("ABO_clusterer\n")  # not marked as the objective
    assert "PCA of the 8-d latent space ABO_clusterer clustered" in other.get_title()
    for ax in fig.axes:
        assert ax.title.get_fontsize() >= 10
    assert fig.get_suptitle() == "mlp 32 z8 umap2 · validation split, 300 points"


def test_a_space_of_more_than_2_dimensions_is_drawn_as_its_principal_components():
    fig = embedding_figure(
        [panel("abo", LATENT8, "latent"), panel("kmeans", UMAP5, "UMAP")],
        objective="kmeans",
        n_clusters=3,
        truth=TRUTH,
    )
    best, truth, _ = fig.axes
    expected = PCA(2).fit_transform(UMAP5.astype(np.float64))
    drawn = offsets(best)
    # principal components are defined up to sign
    np.testing.assert_allclose(np.abs(drawn), np.abs(expected), atol=1e-6)
    assert "PCA of the 5-d UMAP space KMeans clustered" in best.get_title()
    assert best.xaxis.label.get_text() == "PC 1"
    np.testing.assert_array_equal(offsets(truth), drawn)


def test_the_objective_comes_first_and_the_truth_follows_it_in_its_space():
    fig = embedding_figure(
        [panel("abo", LATENT8, "latent"), panel("kmeans", FLAT2, "UMAP")],
        objective="abo",
        n_clusters=3,
        truth=TRUTH,
    )
    best, truth, other = fig.axes
    assert best.get_title().startswith("ABO_clusterer (objective)\n")
    assert other.get_title().startswith("KMeans\n")
    np.testing.assert_array_equal(offsets(truth), offsets(best))
    assert not np.allclose(offsets(truth), FLAT2)


def test_no_true_label_panel_without_labels():
    fig = embedding_figure(
        [panel("abo", LATENT8, "latent", nmi=None), panel("kmeans", UMAP5, "UMAP", nmi=None)],
        objective="kmeans",
        n_clusters=3,
        truth=None,
    )
    assert len(fig.axes) == 2
    assert not any("true labels" in t for t in titles(fig))
    assert "NMI" not in fig.axes[0].get_title()


def test_cluster_colours_follow_the_classes_they_are_matched_to():
    # the same partition under other cluster ids: once matched, the same colours as the truth
    renamed = (TRUTH + 1) % 3
    fig = embedding_figure(
        [panel("kmeans", FLAT2, "UMAP", labels=renamed)],
        objective="kmeans",
        n_clusters=3,
        truth=TRUTH,
    )
    clusters, truth = fig.axes
    colours = clusters.collections[0].get_facecolors()
    np.testing.assert_array_equal(colours, truth.collections[0].get_facecolors())
    assert len(np.unique(colours, axis=0)) == 3


def test_many_points_are_subsampled_the_same_way_every_time():
    n = 6000
    points = RNG.normal(size=(n, 2))
    labels = RNG.integers(0, 12, n)

    def draw() -> np.ndarray:
        fig = embedding_figure(
            [panel("kmeans", points, "UMAP", labels=labels)],
            objective="kmeans",
            n_clusters=12,
            truth=labels,
            max_points=5000,
            seed=3,
        )
        assert fig.get_suptitle().endswith("validation split, 5000 of 6000 points")
        return offsets(fig.axes[0])

    first = draw()
    assert first.shape == (5000, 2)
    np.testing.assert_array_equal(first, draw())
    # every drawn point is one of the space's own points
    assert np.isin(first[:, 0], points[:, 0]).all()


def test_more_than_10_clusters_get_distinct_colours():
    ids = np.arange(20)
    assert len(np.unique(plots._colours(ids, 20), axis=0)) == 20
    assert len(np.unique(plots._colours(np.arange(10), 10), axis=0)) == 10
    assert len(np.unique(plots._colours(np.arange(30), 30), axis=0)) == 30


PRETRAIN = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e} for e in (1, 2, 3)]
FINETUNE = [
    {"epoch": e, "train_loss": 0.3, "val_loss": 0.31, "cluster_loss": 2 / e} for e in (4, 5)
]
ABO_LOSS = [3.0, 2.0, 1.5]


@pytest.mark.parametrize(
    ("history", "abo_loss", "objective", "expected"),
    [
        (PRETRAIN, ABO_LOSS, "kmeans", ["reconstruction loss (pre-training)"]),
        (
            PRETRAIN,
            ABO_LOSS,
            "abo",
            ["reconstruction loss (pre-training)", "ABO_clusterer's own fit"],
        ),
        # finetune abo: ABO's labels are the jointly trained centres', it took no steps itself
        (
            PRETRAIN + FINETUNE,
            [],
            "abo",
            ["reconstruction loss (pre-training + fine-tuning)", "fine-tuning clustering loss"],
        ),
        (
            PRETRAIN + FINETUNE,
            ABO_LOSS,
            "kmeans",
            ["reconstruction loss (pre-training + fine-tuning)", "fine-tuning clustering loss"],
        ),
    ],
    ids=["kmeans", "abo-objective", "abo-finetuned", "finetuned-kmeans"],
)
def test_loss_panels_are_what_ran_and_matters(history, abo_loss, objective, expected):
    fig = loss_figure(history, abo_loss, objective=objective, finetune="dec")
    assert [t.splitlines()[0] for t in titles(fig)] == expected
    if len(expected) > 1 and "fine-tuning" in expected[1]:
        assert "(IDEC, KL(P || Q))" in fig.axes[1].get_title()
        np.testing.assert_array_equal(fig.axes[1].lines[0].get_ydata(), [0.5, 0.4])
    if objective == "abo" and abo_loss:
        np.testing.assert_array_equal(fig.axes[-1].lines[0].get_ydata(), ABO_LOSS)


def test_short_ids():
    assert plots.short_id("238ac70e") == "238ac70e"
    assert plots.short_id("trainable_0dc01b57_5_abo_batch_size=1024,abo_epochs=50") == "0dc01b57"
    assert plots.short_id("d1") == "d1"


def test_reconstruction_grid_puts_inputs_above_their_reconstructions(tmp_path) -> None:
    x = np.zeros((10, 8, 8), dtype=np.float32)  # black inputs
    x_hat = np.full((10, 8, 8), 0.5, dtype=np.float32)  # mid-grey reconstructions
    path = plots.reconstruction_grid(x, x_hat, tmp_path / "grid.png")
    grey = plt.imread(path)[..., :3].mean(-1)  # [rows, cols] in [0, 1]
    half = len(grey) // 2
    black, mid = grey < 0.05, np.abs(grey - 0.5) < 0.05
    # (the titles' black text and its grey edges are the few exceptions)
    assert black[half:].sum() < 0.01 * black[:half].sum()
    assert mid[:half].sum() < 0.01 * mid[half:].sum()
    # the ten images of each row are apart: between them the background shows
    row = black[:half][black[:half].sum(1).argmax()]  # a pixel row through the input strip
    starts = np.flatnonzero(row[1:] & ~row[:-1]) + 1
    assert len(starts) + int(row[0]) == 10
