"""The joint fine-tuning stage (tune/finetune.py): IDEC's target and loss, the joint ABO gradient,
what the stage does to separable data, and a trial killed inside the stage resuming exactly."""

import math

import numpy as np
import pytest
import torch
from conftest import SMALL_MLP
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from models.abo import ABONet
from models.dec import ClusteringLayer
from models.mlp import MLPAutoencoder
from tune import names as N
from tune.config import Clustering, Finetune, Reduction
from tune.data import load_dataset
from tune.finetune import (
    abo_loss,
    finetune,
    initial_centers,
    kl_divergence,
    target_distribution,
)
from tune.training import embed, reconstruction_loss, train_autoencoder
from tune.trial import run_trial


def test_student_t_assignment_on_a_hand_made_case():
    layer = ClusteringLayer(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    q = layer(torch.tensor([[0.0, 0.0]])).detach()
    # distances^2 0 and 25: (1 + d)^-1 = 1 and 1/26, normalised
    assert q[0].tolist() == pytest.approx([26 / 27, 1 / 27])


def test_the_refresh_assignment_is_the_layers_up_to_rounding():
    """IDEC's refresh computes q for every training code with a matrix product; the training
    step with the layer's own differences. Same q, also for a code sitting on a centre."""
    g = torch.Generator().manual_seed(0)
    layer = ClusteringLayer(torch.randn(10, 64, generator=g) * 3)
    z = torch.cat([torch.randn(5000, 64, generator=g) * 3, layer.centers.detach()[:2]])
    fast = layer.soft_assignment(z)
    assert not fast.requires_grad and fast.shape == (5002, 10)
    torch.testing.assert_close(fast, layer(z).detach(), rtol=1e-4, atol=1e-6)
    assert (fast.argmax(1) == layer(z).argmax(1)).all()
    assert fast[-2:].argmax(1).tolist() == [0, 1]


def test_idec_target_distribution_and_kl_on_a_hand_made_case():
    q = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    p = target_distribution(q)
    f = q.sum(0)  # [1.2, 0.8]
    raw = q**2 / f
    expected = raw / raw.sum(1, keepdim=True)
    assert torch.allclose(p, expected)
    # p sharpens q: the larger share grows in each row
    assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1]
    assert torch.allclose(p.sum(1), torch.ones(2, dtype=torch.float64))
    kl = kl_divergence(p, q)
    by_hand = sum(p[i, j] * math.log(p[i, j] / q[i, j]) for i in range(2) for j in range(2)) / 2
    assert kl.item() == pytest.approx(float(by_hand))
    assert kl_divergence(q, q).item() == pytest.approx(0.0, abs=1e-15)
    # 0 log 0 = 0: a zero target share adds nothing
    zero = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert kl_divergence(zero, torch.tensor([[0.5, 0.5]], dtype=torch.float64)).item() == (
        pytest.approx(math.log(2))
    )


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_joint_abo_gradient_equals_autograd_through_the_documents_module(temperature):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(17, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    # reference: ABONet, the document's module, as reference_fit uses it
    net = ABONet(c0, temperature)
    d, q = net(z)
    ref = (q * d).sum(1).mean()
    gz_ref, gc_ref = torch.autograd.grad(ref, [z, net.centers])
    centers = c0.clone().requires_grad_(True)
    ours = abo_loss(z, centers, temperature)
    gz, gc = torch.autograd.grad(ours, [z, centers])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(gz, gz_ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(gc, gc_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: abo_loss(a, b, temperature), (z, centers))


def blobs_as_images(n_per: int = 120, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Three well separated prototype 6x6 images plus pixel noise: [N, 1, 6, 6] in [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0.1, 0.9, size=(3, 36))
    y = np.repeat(np.arange(3), n_per)
    x = np.clip(protos[y] + rng.normal(0, 0.05, size=(len(y), 36)), 0, 1)
    return torch.tensor(x, dtype=torch.float32).view(-1, 1, 6, 6), y


def pretrained(x: torch.Tensor) -> MLPAutoencoder:
    torch.manual_seed(0)
    model = MLPAutoencoder(image_shape=(6, 6), hidden=(16,), latent_dim=4)
    train_autoencoder(model, x, None, lr=3e-3, weight_decay=0.0, batch_size=32, epochs=30, seed=0)
    return model


CLUSTERING = Clustering(3, 0.1, 5, None, 1.0, "k-means++", kmeans_n_init=4)
STAGES = {
    "abo": Finetune("abo", 15, 1e-3, 32, 0.1, temperature_start=5.0, temperature_end=0.5),
    "dec": Finetune("dec", 15, 1e-3, 32, 0.1, update_interval=5, tol=0.0, init="latent"),
}


@pytest.mark.parametrize("kind", ["abo", "dec"])
def test_finetuning_lowers_the_clustering_loss_and_keeps_reconstruction(kind):
    x, y = blobs_as_images()
    model = pretrained(x)
    before = reconstruction_loss(model, x)
    centers = initial_centers(STAGES[kind], embed(model, x).numpy(), CLUSTERING, seed=0)
    history, tuned = finetune(model, x, x, centers, STAGES[kind], seed=0, first_epoch=30)
    assert [h["epoch"] for h in history] == list(range(31, 46))
    losses = [h["cluster_loss"] for h in history]
    assert losses[-1] < losses[0]  # the clustering term goes down...
    # ...while reconstruction stays within 50% of the pre-trained loss (the stated bound)
    assert reconstruction_loss(model, x) <= 1.5 * before
    assert tuned.shape == (3, 4)
    # and the blobs are still told apart by the tuned centres
    z = embed(model, x).numpy()
    labels = ((z[:, None, :] - tuned[None]) ** 2).sum(-1).argmin(1)
    from sklearn.metrics import normalized_mutual_info_score

    assert normalized_mutual_info_score(y, labels) > 0.95


def test_dec_stops_early_when_few_labels_change():
    x, _ = blobs_as_images()
    model = pretrained(x)
    stage = Finetune("dec", 50, 1e-3, 32, 0.1, update_interval=3, tol=0.01, init="latent")
    centers = initial_centers(stage, embed(model, x).numpy(), CLUSTERING, seed=0)
    history, _ = finetune(model, x, None, centers, stage, seed=0)
    # separable blobs: labels settle at once, so the stage ends long before 50 epochs
    assert len(history) < 50
    assert history[-1]["labels_changed"] < 0.01
    # each epoch says how long its refreshes took (the stopping one refreshed at least once)
    assert all(r["refresh_seconds"] >= 0 for r in history) and history[-1]["refresh_seconds"] > 0


def two_bands(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Codes [2n, 2]: two long parallel bands 1 apart. KMeans (k=2) cuts them across, into a
    left and a right half."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-10, 10, size=2 * n)
    band = np.repeat([0, 1], n)
    z = np.column_stack([x, band + rng.normal(0, 0.02, size=2 * n)]).astype(np.float32)
    return z, band


def test_dec_can_start_from_the_clusters_of_the_trials_reduction(monkeypatch):
    from sklearn.metrics import normalized_mutual_info_score

    import tune.finetune

    z, band = two_bands()
    clustering = Clustering(2, 0.1, 5, None, 1.0, "k-means++", kmeans_n_init=4)
    umap = Reduction("umap", umap_dim=1, umap_n_neighbors=10, umap_min_dist=0.0, umap_fit_size=300)
    latent = Finetune("dec", 1, 1e-3, 32, 0.1, update_interval=5, tol=0.0, init="latent")
    reduced = Finetune("dec", 1, 1e-3, 32, 0.1, update_interval=5, tol=0.0, init="reduced")

    def agreement(centers: np.ndarray) -> float:
        nearest = ((z[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        return normalized_mutual_info_score(band, nearest)

    assert agreement(initial_centers(latent, z, clustering, 0, umap)) < 0.1  # cut across
    # A reduction that sees the bands, fitted on every other row (as UMAP on its subsample).
    rows = np.arange(0, len(z), 2)
    seen = (5.0 * band[rows] + 0.1 * np.sin(rows))[:, None].astype(np.float32)
    calls = []

    def fit_sample(reduction, seed, codes):
        calls.append((reduction, seed))
        return rows, seen

    monkeypatch.setattr(tune.finetune, "fit_sample", fit_sample)
    centers = initial_centers(reduced, z, clustering, 7, umap)
    assert calls == [(umap, 7)]  # the trial's own reduction and seed
    assert centers.shape == (2, 2) and centers.dtype == np.float32
    # each centre is the mean code of one band's rows that the reduction saw
    expected = [z[rows][band[rows] == b].mean(0) for b in (0, 1)]
    np.testing.assert_allclose(centers[np.argsort(centers[:, 1])], expected, rtol=1e-6)


def test_dec_starts_from_the_latent_kmeans_when_the_reduction_collapses(monkeypatch):
    """A collapsed encoder gives fewer distinct reduced codes than clusters: KMeans leaves some
    clusters empty, whose mean code would be NaN (the trial then diverged)."""
    import tune.finetune

    z, _ = two_bands()
    clustering = Clustering(4, 0.1, 5, None, 1.0, "k-means++", kmeans_n_init=2)
    pca = Reduction("pca", pca_dim=1)
    reduced = Finetune("dec", 1, 1e-3, 32, 0.1, update_interval=5, tol=0.0, init="reduced")
    latent = Finetune("dec", 1, 1e-3, 32, 0.1, update_interval=5, tol=0.0, init="latent")
    rows = np.arange(len(z))
    seen = np.repeat([[0.0], [1.0]], len(z) // 2, axis=0).astype(np.float32)  # 2 distinct codes
    monkeypatch.setattr(tune.finetune, "fit_sample", lambda reduction, seed, codes: (rows, seen))
    with pytest.warns(ConvergenceWarning):
        centers = initial_centers(reduced, z, clustering, 0, pca)
    assert centers.shape == (4, 2) and np.isfinite(centers).all()
    np.testing.assert_array_equal(centers, initial_centers(latent, z, clustering, 0, pca))


def test_fit_sample_gives_the_codes_a_reduction_was_fitted_on():
    from sklearn.metrics import normalized_mutual_info_score

    from tune.reduction import apply_reduction, fit_reduction, fit_sample, umap_rows

    rng = np.random.default_rng(0)
    centres = np.array([0.0, 4.0, 8.0])
    truth = np.repeat([0, 1, 2], 100)
    z = rng.normal(centres[truth, None], 0.3, size=(300, 6)).astype(np.float32)
    umap = Reduction("umap", umap_dim=2, umap_n_neighbors=10, umap_min_dist=0.0, umap_fit_size=120)
    rows, seen = fit_sample(umap, 3, z)
    np.testing.assert_array_equal(rows, umap_rows(umap, 3, 300))
    assert len(np.unique(rows)) == 120 and seen.shape == (120, 2)
    np.testing.assert_array_equal(seen, fit_reduction(umap, 3, z).embedding_)  # seeded: the same
    labels = KMeans(3, n_init=4, random_state=0).fit(seen).labels_
    assert normalized_mutual_info_score(truth[rows], labels) == 1.0
    pca = Reduction("pca", pca_dim=2)
    rows, seen = fit_sample(pca, 3, z)
    np.testing.assert_array_equal(rows, np.arange(300))
    np.testing.assert_allclose(seen, apply_reduction(fit_reduction(pca, 3, z), z))
    for none in (Reduction("none"), Reduction("pca", pca_dim=6)):  # pca_dim 6 keeps every one
        rows, seen = fit_sample(none, 3, z)
        assert seen is None and len(rows) == 300


# The harness's small MLP, wider, with dropout and a fine-tuning stage (FT picks the recipe).
DIGITS_CONFIG = {
    **SMALL_MLP,
    "mlp_width_1": 32,
    "latent_dim": 8,
    "dropout": 0.1,  # dropout: the global RNG must be part of the resumed state
    "finetune_epochs": 6,
    "finetune_lr": 1e-3,
    "finetune_batch_size": 64,
    "finetune_gamma": 0.1,
    "abo_init": "k-means++",
    "seed": 0,
}
FT = {
    "abo": {"finetune": "abo", "finetune_temperature_start": 5.0, "finetune_temperature_end": 0.2},
    "dec": {"finetune": "dec", "dec_update_interval": 7, "dec_tol": 0.0, "dec_init": "latent"},
}


class KilledError(Exception):
    """Stands for the worker dying right after a checkpoint was written."""


@pytest.mark.parametrize("kind", ["abo", "dec"])
@pytest.mark.parametrize("kill_at", [3, 6])  # at the end of pre-training; inside the stage
def test_a_trial_killed_inside_the_stage_resumes_to_the_same_result(kind, kill_at):
    digits = load_dataset("digits", seed=0)
    config = {**DIGITS_CONFIG, **FT[kind]}
    whole = run_trial(config, digits, device="cpu")
    saved = {}

    def on_epoch(record, state):
        if record["epoch"] == kill_at:  # the test decides when the fault happens
            saved["state"] = state()
            raise KilledError

    with pytest.raises(KilledError):
        run_trial(config, digits, device="cpu", on_epoch=on_epoch)
    epochs = []
    resumed = run_trial(
        config,
        digits,
        device="cpu",
        resume=saved["state"],
        on_epoch=lambda record, state: epochs.append(record["epoch"]),
    )
    assert epochs == list(range(kill_at + 1, 10))  # continued right after the checkpoint
    for key, value in whole.items():
        if key.startswith("time/") or key in (N.NODE, "hostname"):
            continue
        assert resumed[key] == value or (value != value and resumed[key] != resumed[key]), key


# The closed-form joint step (MLPStep.joint + abo_closed_form / idec_closed_form) against autograd.
SMALL_MLPS = [
    {"hidden": (16,), "latent_dim": 4},  # relu, the first document's shape
    {"hidden": (24, 12), "latent_dim": 5, "activation": "tanh"},
    {"hidden": (20,), "latent_dim": 3, "activation": "leaky_relu"},
]


def joint_setup(kw: dict, kind: str, dtype: torch.dtype = torch.float32):
    """A small MLP + head in one flat buffer (as finetune builds them), a batch and a target."""
    from torch import nn

    from tune.training import make_optimizer

    torch.manual_seed(0)
    model = MLPAutoencoder((6, 6), **kw).to(dtype)
    c0 = torch.randn(3, kw["latent_dim"], dtype=dtype)
    head = ABONet(c0) if kind == "abo" else ClusteringLayer(c0)
    _, flat = make_optimizer(nn.ModuleDict({"autoencoder": model, "head": head}), 1e-3, 0.0)
    x = torch.rand(29, 1, 6, 6, dtype=dtype)  # not a power of two: the batch size is in the scale
    p = target_distribution(torch.softmax(torch.randn(29, 3, dtype=dtype), 1))
    return model, head, flat, x, p


# float64 shows the math is the same (agreement to rounding), float32 the tolerance training sees
TOLERANCE = {
    torch.float64: {"rtol": 1e-11, "atol": 1e-14},
    torch.float32: {"rtol": 1e-5, "atol": 1e-7},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", SMALL_MLPS, ids=["relu", "tanh-2-layers", "leaky_relu"])
@pytest.mark.parametrize("kind", ["abo", "dec"])
def test_closed_form_joint_gradients_equal_autograd(kind, kw, dtype):
    from tune.finetune import abo_closed_form, idec_closed_form
    from tune.mlp_step import MLPStep

    model, head, flat, x, p = joint_setup(kw, kind, dtype)
    gamma, temperature = 0.3, 0.7

    def hook(z):
        if kind == "abo":
            loss, dz, dc = abo_closed_form(z, head.centers, temperature, gamma)
        else:
            loss, dz, dc = idec_closed_form(z, head, p, gamma)
        head.centers.grad.copy_(dc)
        return loss, dz

    flat.grad.fill_(float("nan"))  # every gradient must be written, none accumulated
    recon, cluster = MLPStep.for_model(model).joint(x, hook)
    fast = flat.grad.clone()

    flat.grad.zero_()
    z = model.encode(x)
    recon_ref = torch.nn.functional.mse_loss(model.decode(z), x)
    if kind == "abo":  # autograd through the document's module, not through ABOLoss
        head.temperature = temperature
        d, q = head(z)
        cluster_ref = (q * d).sum(1).mean()
    else:
        cluster_ref = kl_divergence(p, head(z))
    (recon_ref + gamma * cluster_ref).backward()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(recon, recon_ref.detach(), **tol)
    torch.testing.assert_close(cluster, cluster_ref.detach(), **tol)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, flat.grad, **tol)
    # the centres' share is really there (not zero on both sides)
    assert head.centers.grad.abs().max() > 1e-4


@pytest.mark.parametrize("kw", SMALL_MLPS[::2], ids=["relu", "leaky_relu"])
@pytest.mark.parametrize("kind", ["abo", "dec"])
def test_finetuning_with_and_without_the_closed_form_matches(kind, kw):
    import copy

    from tune.mlp_step import MLPStep

    x, _ = blobs_as_images(n_per=40)
    torch.manual_seed(0)
    model = MLPAutoencoder((6, 6), **kw)
    train_autoencoder(model, x, None, lr=3e-3, weight_decay=0.0, batch_size=32, epochs=5, seed=0)
    assert MLPStep.for_model(model) is not None  # the comparison is real: one side is closed-form
    twin = copy.deepcopy(model)
    stage = {
        "abo": Finetune("abo", 6, 3e-3, 32, 0.5, temperature_start=5.0, temperature_end=0.5),
        "dec": Finetune("dec", 6, 3e-3, 32, 0.5, update_interval=4, tol=0.0, init="latent"),
    }[kind]
    centers = initial_centers(stage, embed(model, x).numpy(), CLUSTERING, seed=0)
    h_fast, c_fast = finetune(model, x, x[:30], centers, stage, seed=3)
    h_ref, c_ref = finetune(twin, x, x[:30], centers, stage, seed=3, closed_form=False)
    assert len(h_fast) == len(h_ref) == 6
    for a, b in zip(h_fast, h_ref, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"refresh_seconds"}:  # a timing
            assert a[key] == pytest.approx(b[key], rel=1e-5, nan_ok=True), key
    np.testing.assert_allclose(c_fast, c_ref, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not np.allclose(c_ref, centers, rtol=1e-3)  # the centres did move


@pytest.mark.parametrize("kind", ["abo", "dec"])
def test_the_closed_form_stage_resumes_exactly(kind):
    # the run_trial resume tests above use dropout, i.e. autograd: this one covers the fast path
    import copy

    from tune.mlp_step import MLPStep

    x, _ = blobs_as_images(n_per=40)
    torch.manual_seed(0)
    model = MLPAutoencoder((6, 6), hidden=(16,), latent_dim=4)
    train_autoencoder(model, x, None, lr=3e-3, weight_decay=0.0, batch_size=32, epochs=5, seed=0)
    assert MLPStep.for_model(model) is not None
    stage = STAGES[kind]
    centers = initial_centers(stage, embed(model, x).numpy(), CLUSTERING, seed=0)
    m_whole, m_resumed = copy.deepcopy(model), copy.deepcopy(model)
    whole, c_whole = finetune(m_whole, x, x[:30], centers, stage, seed=3)
    saved = {}

    def on_epoch(record, state):
        if record["epoch"] == 4:
            saved["state"] = state()
            raise KilledError

    with pytest.raises(KilledError):
        finetune(copy.deepcopy(model), x, x[:30], centers, stage, seed=3, on_epoch=on_epoch)
    resumed, c_resumed = finetune(
        m_resumed, x, x[:30], centers, stage, seed=3, resume=saved["state"]
    )
    assert len(resumed) == len(whole) == stage.epochs
    for a, b in zip(resumed, whole, strict=True):
        assert a.keys() == b.keys()
        same = (
            a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a if k != "refresh_seconds"
        )
        assert all(same), (a, b)
    np.testing.assert_array_equal(c_resumed, c_whole)
    for p, q in zip(m_resumed.parameters(), m_whole.parameters(), strict=True):
        assert torch.equal(p, q)
