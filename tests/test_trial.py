"""One trial through `run_trial`: the clustering space (PCA, UMAP), the fine-tuning stages, their
scores and the served model.

The served model (tune/champion.py's pyfunc) must label images exactly as the trial did, so its
labels are checked against the trial's own test metrics, and the trial's silhouette against
scikit-learn's on the codes reduced as the served model reduces them.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SMALL_MLP
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from tune import names as N
from tune import plots
from tune.champion import ClusterModel
from tune.config import TrialConfig
from tune.data import load_dataset
from tune.reduction import apply_reduction, fit_reduction
from tune.trial import ARTIFACTS, CLUSTERERS_FILE, REDUCTION_FILE, run_trial

# The harness's small MLP, wider, with a PCA stage that projects (pca_dim < latent_dim).
CONFIG = {
    **SMALL_MLP,
    "mlp_width_1": 32,
    "latent_dim": 8,
    "reduction": "pca",
    "pca_dim": 3,
    "abo_epochs": 5,
    "seed": 0,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def served(out_dir) -> ClusterModel:
    model = ClusterModel()
    model.load_context(SimpleNamespace(artifacts={"trial": str(out_dir)}))
    return model


PCA = {"reduction": "pca", "pca_dim": 3}
UMAP = {
    "reduction": "umap",
    "umap_dim": 4,
    "umap_n_neighbors": 15,
    "umap_min_dist": 0.0,
    "umap_fit_size": 600,  # a subsample of the 1197 train codes: the rest go through transform
}
NONE = {"reduction": "none"}
FT = {"finetune_epochs": 2, "finetune_lr": 1e-3, "finetune_batch_size": 64, "finetune_gamma": 0.1}
ABO = {
    "finetune": "abo",
    **FT,
    "finetune_temperature_start": 5.0,
    "finetune_temperature_end": 0.5,
}
DEC = {"finetune": "dec", **FT, "dec_update_interval": 10, "dec_tol": 0.001, "dec_init": "latent"}
DEC_FROM_REDUCED = {**DEC, "dec_init": "reduced"}  # IDEC starts from the reduction's clusters


def config_with(*stages: dict) -> dict:
    config = {k: v for k, v in CONFIG.items() if k != "pca_dim"}
    for stage in stages:
        config.update(stage)
    return config


def reduced_codes(model: ClusterModel, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        z = model.model.encode(x).numpy()
    return z if model.reducer is None else model.reducer.transform(z)


@pytest.mark.parametrize(
    ("stages", "dim"),
    [
        ((PCA,), 3),
        ((UMAP,), 4),
        ((ABO, NONE), 8),
        ((DEC, PCA), 3),
        ((ABO, UMAP), 4),
        ((DEC, UMAP), 4),
        ((DEC_FROM_REDUCED, UMAP), 4),
    ],
    ids=["pca", "umap", "abo", "dec+pca", "abo+umap", "dec+umap", "dec-from-umap+umap"],
)
def test_each_stage_round_trips_through_the_served_model(digits, tmp_path, stages, dim):
    config = config_with(*stages)
    result = run_trial(config, digits, device="cpu", out_dir=tmp_path)
    assert result[N.STATUS] == "ok"
    assert result[N.CLUSTER_DIM] == dim
    arrays = np.load(tmp_path / CLUSTERERS_FILE)
    # KMeans clusters the reduced codes; ABO too, unless its centres were trained with the encoder
    assert arrays["kmeans"].shape == (10, dim)
    abo_dim = 8 if config["finetune"] == "abo" else dim
    assert arrays["abo"].shape == (10, abo_dim)
    for stage in N.STAGES:
        if stage not in ("finetune_init", "finetune") or config["finetune"] != "none":
            assert result[N.stage_seconds(stage)] >= 0.0, stage
    if config["finetune"] != "none":
        assert result["finetune/epochs_run"] >= 1
    if config["finetune"] == "abo":  # ABO's labels are the jointly trained centres': no own fit
        assert result["abo/n_iter"] == 0

    model = served(tmp_path)
    best = result[N.BEST_CLUSTERER]
    # The served labels are the trial's labels: same NMI against the true labels on test.
    labels = model.predict(None, digits.x_test)
    nmi = normalized_mutual_info_score(digits.y_test, labels)
    assert nmi == pytest.approx(result[N.metric("test", "nmi", best)], abs=1e-9)
    # The objective is scikit-learn's silhouette of those labels in the space the clusterer saw...
    val_labels = model.predict(None, digits.x_val)
    seen = reduced_codes(model, digits.x_val)
    assert silhouette_score(seen, val_labels) == pytest.approx(result[N.SILHOUETTE], abs=1e-5)
    # ...and latent_silhouette the same labels' silhouette in the autoencoder's own space.
    x = torch.from_numpy(digits.x_val.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        latent = model.model.encode(x).numpy()
    assert silhouette_score(latent, val_labels) == pytest.approx(
        result[N.metric("val", N.LATENT_SILHOUETTE, best)], abs=1e-5
    )


@pytest.mark.parametrize(
    "stages",
    [(NONE,), ({"reduction": "pca", "pca_dim": 8},), ({"reduction": "pca", "pca_dim": 20},)],
)
def test_no_projection_when_none_or_every_component_is_kept(digits, tmp_path, stages):
    # pca_dim >= latent_dim would only rotate the codes: no distance, label or score changes.
    result = run_trial(config_with(*stages), digits, device="cpu", out_dir=tmp_path)
    assert result[N.CLUSTER_DIM] == CONFIG["latent_dim"]
    assert not (tmp_path / REDUCTION_FILE).exists()
    assert served(tmp_path).reducer is None
    for split in N.SPLITS:
        for c in N.CLUSTERERS:
            assert (
                result[N.metric(split, N.LATENT_SILHOUETTE, c)]
                == result[N.metric(split, "silhouette", c)]
            )


def test_projection_changes_the_scores_not_the_autoencoder(digits):
    plain = run_trial(config_with(NONE), digits, device="cpu")
    projected = run_trial(config_with({"reduction": "pca", "pca_dim": 2}), digits, device="cpu")
    for split in N.SPLITS:  # same seed, same network: the same reconstruction
        key = N.recon_loss(split)
        assert projected[key] == plain[key]
    assert projected[N.metric("val", "silhouette", "kmeans")] != pytest.approx(
        plain[N.metric("val", "silhouette", "kmeans")], abs=1e-3
    )


def test_umap_with_a_seed_gives_the_same_codes_twice():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 0.3, size=(150, 6)) for c in (0.0, 3.0, 6.0)]).astype(
        np.float32
    )
    umap = TrialConfig.from_flat(config_with({**UMAP, "umap_fit_size": 300})).reduction
    a = apply_reduction(fit_reduction(umap, 3, z), z)
    b = apply_reduction(fit_reduction(umap, 3, z), z)
    assert a.shape == (450, 4)
    np.testing.assert_array_equal(a, b)
    c = apply_reduction(fit_reduction(umap, 4, z), z)
    assert not np.array_equal(a, c)  # the seed is what fixes it


def test_a_partly_collapsed_clustering_never_beats_a_full_one(digits):
    # ABO with a huge lr collapses onto a few centres; its silhouette may be the higher one, but
    # the objective takes KMeans's, which uses every cluster.
    result = run_trial(config_with(NONE, {"abo_lr": 1000.0}), digits, device="cpu")
    assert result[N.metric("train", N.CLUSTERS_USED, "abo")] < 10
    assert result[N.metric("train", N.CLUSTERS_USED, "kmeans")] == 10
    assert result[N.BEST_CLUSTERER] == "kmeans"
    assert result[N.SILHOUETTE] == result[N.metric("val", "silhouette", "kmeans")]
    assert result[N.PARTIAL] == 0.0


def test_the_trials_figures_show_what_its_clusterers_saw(digits, tmp_path, monkeypatch):
    # Each figure is kept as built, before its PNG is written (tune/plots.py's save).
    figures = {}
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path, **kw: figures.setdefault(path.name, fig))
    config = config_with({"reduction": "pca", "pca_dim": 2})
    result = run_trial(config, digits, device="cpu", out_dir=tmp_path)
    assert set(figures) == set(ARTIFACTS)
    best = result[N.BEST_CLUSTERER]
    name = plots.CLUSTERER_NAMES[best]

    fig = figures["embedding.png"]
    heads = [ax.get_title().splitlines()[0] for ax in fig.axes]
    others = [plots.CLUSTERER_NAMES[c] for c in N.CLUSTERERS if c != best]
    assert heads == [f"{name} (objective)", "true labels (10 classes)", *others]
    sil = result[N.metric("val", "silhouette", best)]
    used = int(result[N.metric("val", N.CLUSTERS_USED, best)])
    assert f"silhouette {sil:.3f} · {used}/10 clusters" in fig.axes[0].get_title()
    assert fig.get_suptitle() == f"mlp 32 z8 pca2 · validation split, {len(digits.x_val)} points"
    # The 2-d space the clusterers saw, as is: the validation codes reduced as the served model
    # reduces them (not the 8-d codes' principal components).
    seen = reduced_codes(served(tmp_path), digits.x_val)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), seen, atol=1e-5)
    np.testing.assert_allclose(fig.axes[1].collections[0].get_offsets(), seen, atol=1e-5)

    loss_titles = [ax.get_title().splitlines()[0] for ax in figures["loss_curves.png"].axes]
    expected = ["reconstruction loss (pre-training)"]
    assert loss_titles == expected + (["ABO_clusterer's own fit"] if best == "abo" else [])
    for path, fig in figures.items():  # and they still save
        save(fig, tmp_path / f"again-{path}")
