"""One trial through `run_trial`: the clustering space (pca_dim), its scores and the served model.

The served model (tune/champion.py's pyfunc) must label images exactly as the trial did, so its
labels are checked against the trial's own test metrics, and the trial's silhouette against
scikit-learn's on the codes projected as the served model projects them.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from tune import names as N
from tune.champion import ClusterModel
from tune.data import load_dataset
from tune.trial import CLUSTERERS_FILE, run_trial

CONFIG = {
    "arch": "mlp",
    "mlp_depth": 1,
    "mlp_width_1": 32,
    "mlp_activation": "relu",
    "mlp_batch_norm": False,
    "latent_dim": 8,
    "dropout": 0.0,
    "lr": 0.003,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 3,
    "pca_dim": 3,
    "n_clusters": 10,
    "abo_lr": 0.1,
    "abo_epochs": 5,
    "abo_batch_size": 64,
    "abo_temperature": 1.0,
    "abo_init": "farthest",
    "kmeans_n_init": 2,
    "seed": 0,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def served(out_dir) -> ClusterModel:
    model = ClusterModel()
    model.load_context(SimpleNamespace(artifacts={"trial": str(out_dir)}))
    return model


@pytest.mark.parametrize("pca_dim", [3, 5])
def test_clusterers_work_in_the_pca_space_and_the_served_model_agrees(digits, tmp_path, pca_dim):
    result = run_trial({**CONFIG, "pca_dim": pca_dim}, digits, device="cpu", out_dir=tmp_path)
    assert result[N.STATUS] == "ok"
    assert result[N.CLUSTER_DIM] == pca_dim
    arrays = np.load(tmp_path / CLUSTERERS_FILE)
    assert arrays["pca_components"].shape == (pca_dim, CONFIG["latent_dim"])
    assert arrays["kmeans"].shape == arrays["abo"].shape == (10, pca_dim)

    model = served(tmp_path)
    best = result[N.BEST_CLUSTERER]
    # The served labels are the trial's labels: same NMI against the true labels on test.
    labels = model.predict(None, digits.x_test)
    nmi = normalized_mutual_info_score(digits.y_test, labels)
    assert nmi == pytest.approx(result[N.metric("test", "nmi", best)], abs=1e-9)
    # The objective is scikit-learn's silhouette of those labels in the projected space.
    images = torch.from_numpy(digits.x_val.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        z = model.model.encode(images).double().numpy()
    mean, components = model.pca
    projected = (z - mean) @ components.T
    val_labels = model.predict(None, digits.x_val)
    assert silhouette_score(projected, val_labels) == pytest.approx(result[N.SILHOUETTE], abs=1e-5)


@pytest.mark.parametrize("pca_dim", [None, 8, 20])
def test_no_projection_when_null_or_every_component_is_kept(digits, tmp_path, pca_dim):
    # pca_dim >= latent_dim would only rotate the codes: no distance, label or score changes.
    result = run_trial({**CONFIG, "pca_dim": pca_dim}, digits, device="cpu", out_dir=tmp_path)
    assert result[N.CLUSTER_DIM] == CONFIG["latent_dim"]
    assert "pca_components" not in np.load(tmp_path / CLUSTERERS_FILE)
    assert served(tmp_path).pca is None


def test_projection_changes_the_scores_not_the_autoencoder(digits):
    plain = run_trial({**CONFIG, "pca_dim": None}, digits, device="cpu")
    projected = run_trial({**CONFIG, "pca_dim": 2}, digits, device="cpu")
    for split in N.SPLITS:  # same seed, same network: the same reconstruction
        key = N.metric(split, "recon_loss")
        assert projected[key] == plain[key]
    assert projected[N.metric("val", "silhouette", "kmeans")] != pytest.approx(
        plain[N.metric("val", "silhouette", "kmeans")], abs=1e-3
    )
