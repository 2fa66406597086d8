"""One trial: train an autoencoder, embed every split, cluster with ABO and KMeans, score everything.

`run_trial` is the plain pipeline (used directly by benchmarks and tests); `trainable` is the same
pipeline as a Ray Tune function trainable: it reports per-epoch losses, checkpoints the training
state so a retried trial resumes where it stopped, and reports the final metrics with a checkpoint
holding the model, both clusterers' centres and the PNG artifacts. MLflow logging happens on the
driver (tune/tracking.py), so trials never write to the tracking store themselves.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from models.abo import ABOClusterer
from models.build import build_autoencoder, count_parameters
from tune import names as N
from tune import plots
from tune.data import Dataset
from tune.metrics import cluster_scores, label_scores
from tune.training import (
    DivergedError,
    embed,
    images_to_tensor,
    pick_device,
    reconstruction_loss,
    train_autoencoder,
)

# Save the training state at most this often (seconds): Ray persists every checkpoint to storage,
# which costs more than a fast epoch; a killed trial loses at most this much work.
CHECKPOINT_INTERVAL_S = float(os.environ.get("CLUSTERTUNE_CHECKPOINT_INTERVAL_S", "30"))
# Each tune.report costs the trial a few ms in its actor and the driver more (results, loggers,
# searcher): with epochs of ~0.1 s that is a tenth of a core per trial, taken from the trials on
# a busy node. Epochs are therefore reported at most this often, each report carrying the epochs
# since the last one (names.EPOCH_LOG), so Tune, ASHA and MLflow still see every epoch.
REPORT_INTERVAL_S = float(os.environ.get("CLUSTERTUNE_REPORT_INTERVAL_S", "1"))
STATE_FILE = "train_state.pt"
MODEL_FILE = "model.pt"
CLUSTERERS_FILE = "clusterers.npz"
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
ARTIFACTS = ("reconstructions.png", "embedding.png", "loss_curves.png")


def make_clusterers(config: Mapping[str, Any]) -> dict[str, Any]:
    """ABO_clusterer and KMeans with the trial's settings, both seeded."""
    k, seed = int(config["n_clusters"]), int(config["seed"])
    return {
        "abo": ABOClusterer(
            n_clusters=k,
            lr=float(config["abo_lr"]),
            epochs=int(config["abo_epochs"]),
            batch_size=config["abo_batch_size"],
            temperature=float(config["abo_temperature"]),
            init=config.get("abo_init", "farthest"),
            random_state=seed,
        ),
        "kmeans": KMeans(n_clusters=k, n_init=int(config["kmeans_n_init"]), random_state=seed),
    }


def fit_projection(config: Mapping[str, Any], z_train: np.ndarray) -> PCA | None:
    """PCA of the train codes to `pca_dim` components, the space the clusterers work in.

    None when `pca_dim` is null or keeps every component (then PCA is only a rotation and a shift,
    which changes no distance, so neither clustering nor any score).
    """
    k = config["pca_dim"]
    if k is None or k >= z_train.shape[1]:
        return None
    return PCA(n_components=int(k), svd_solver="full").fit(z_train)


def run_trial(
    config: Mapping[str, Any],
    dataset: Dataset,
    *,
    device: torch.device | str | None = None,
    out_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float], Callable[[], dict]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline for one flat config; returns the flat result (names from tune.names).

    With `out_dir`, also writes the model, the clusterers' centres, the config, the result and the
    PNG artifacts there. A NaN/inf training loss stops training at once and gives a "diverged"
    result (NaN objectives, the epoch it stopped at, the reason) instead of an exception: the
    search goes on, the trial's MLflow run ends FAILED and Optuna records the trial as failed.
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else pick_device()
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_autoencoder(config, dataset.image_shape).to(device)
    x = {
        "train": images_to_tensor(dataset.x_train, device),
        "val": images_to_tensor(dataset.x_val, device),
        "test": images_to_tensor(dataset.x_test, device),
    }
    y = {"train": dataset.y_train, "val": dataset.y_val, "test": dataset.y_test}
    result: dict[str, Any] = {
        N.NODE: _node_id(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "n_parameters": count_parameters(model),
    }
    try:
        history = train_autoencoder(
            model,
            x["train"],
            x["val"] if len(x["val"]) else None,
            lr=float(config["lr"]),
            weight_decay=float(config["weight_decay"]),
            batch_size=int(config["batch_size"]),
            epochs=int(config["epochs"]),
            seed=seed,
            resume=resume,
            on_epoch=on_epoch,
        )
    except DivergedError as e:
        result.update(
            {
                N.SILHOUETTE: math.nan,
                N.RECON_LOSS: math.nan,
                N.STATUS: "diverged",
                N.DIVERGED: 1.0,
                N.DEGENERATE: 0.0,
                N.EPOCH: e.epoch,
                "reason": str(e),
                N.TRIAL_SECONDS: time.perf_counter() - start,
            }
        )
        return result

    z = {split: embed(model, xs) for split, xs in x.items()}
    for split in N.SPLITS:
        result[N.metric(split, "recon_loss")] = reconstruction_loss(model, x[split])
    z_train = z["train"].cpu().numpy()
    projection = fit_projection(config, z_train)
    if projection is not None:  # from here on the clusterers and their scores see the projection
        z = {split: _project(projection, zs) for split, zs in z.items()}
        z_train = z["train"].cpu().numpy()
    result[N.CLUSTER_DIM] = float(z_train.shape[1])
    clusterers = make_clusterers(config)
    labels: dict[str, dict[str, np.ndarray]] = {split: {} for split in N.SPLITS}
    for name, est in clusterers.items():
        labels["train"][name] = est.fit(z_train).labels_.astype(np.int64)
        for split in ("val", "test"):
            if len(z[split]):
                labels[split][name] = est.predict(z[split].cpu().numpy()).astype(np.int64)
    for split in N.SPLITS:
        if not labels[split]:
            continue
        scores = cluster_scores(z[split], labels[split], device=device)  # one silhouette pass
        for name, s in scores.items():
            for metric in (*N.CLUSTER_METRICS, "n_clusters", "degenerate"):
                result[N.metric(split, metric, name)] = float(s[metric])
            for metric, value in label_scores(y[split], labels[split][name]).items():
                result[N.metric(split, metric, name)] = value

    objective_split = "val" if len(z["val"]) else "train"
    sil = {c: result[N.metric(objective_split, "silhouette", c)] for c in N.CLUSTERERS}
    valid = {c: s for c, s in sil.items() if math.isfinite(s)}
    best = max(valid, key=valid.get) if valid else "none"
    result.update(
        {
            N.SILHOUETTE: valid[best] if valid else math.nan,
            N.BEST_CLUSTERER: best,
            N.DEGENERATE: 0.0 if valid else 1.0,
            N.DIVERGED: 0.0,
            N.STATUS: "ok" if valid else "degenerate",
            "abo/n_iter": float(clusterers["abo"].n_iter_),
            "abo/final_loss": clusterers["abo"].loss_history_[-1]
            if clusterers["abo"].loss_history_
            else math.nan,
        }
    )
    result[N.TRIAL_SECONDS] = time.perf_counter() - start
    if out_dir is not None:
        _write_outputs(
            Path(out_dir), config, model, projection, clusterers, x, z, labels, history, result
        )
    return result


def _project(projection: PCA, z: torch.Tensor) -> torch.Tensor:
    # [N, latent_dim] -> [N, pca_dim], on z's device; an empty split stays empty
    out = np.zeros((0, projection.n_components_), np.float32)
    if len(z):
        out = projection.transform(z.cpu().numpy()).astype(np.float32)
    return torch.from_numpy(out).to(z.device)


def _write_outputs(
    out, config, model, projection, clusterers, x, z, labels, history, result
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / MODEL_FILE)
    pca = {}
    if projection is not None:  # the served model projects codes exactly as the trial did
        pca = {"pca_mean": projection.mean_, "pca_components": projection.components_}
    np.savez(
        out / CLUSTERERS_FILE,
        abo=clusterers["abo"].cluster_centers_,
        kmeans=clusterers["kmeans"].cluster_centers_.astype(np.float32),
        **pca,
    )
    config = {**dict(config), "image_shape": list(model.image_shape)}  # for rebuilding the model
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    (out / RESULT_FILE).write_text(json.dumps(result, indent=1, sort_keys=True))
    split = "val" if len(x["val"]) else "train"
    with torch.no_grad():
        xs = x[split][:10]
        x_hat = model(xs)
    plots.reconstruction_grid(xs[:, 0].cpu().numpy(), x_hat[:, 0].cpu().numpy(), out / ARTIFACTS[0])
    plots.embedding_scatter(z[split].cpu().numpy(), labels[split], out / ARTIFACTS[1])
    plots.loss_curves(history, clusterers["abo"].loss_history_, out / ARTIFACTS[2])


def _node_id() -> str:
    """Ray's node id inside a Ray worker (unique per node even on one host), else the hostname."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray any failure just means "no Ray node"
        pass
    return socket.gethostname()


def trainable(config: dict[str, Any], data: Dataset) -> None:
    """Ray Tune function trainable: `tune.with_parameters(trainable, data=dataset)`."""
    from ray import tune

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retried trial: continue from the last saved epoch
        with checkpoint.as_directory() as d:
            if (Path(d) / STATE_FILE).exists():
                resume = torch.load(Path(d) / STATE_FILE, weights_only=False)
    resources = tune.get_context().get_trial_resources().required_resources
    gpu = bool(resources.get("GPU", 0))
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))  # no oversubscription of the node

    last_checkpoint = last_report = time.monotonic()
    unreported: list[list[float]] = []  # [epoch, train loss, val loss] not yet handed to Tune

    def on_epoch(record: dict[str, float], state: Callable[[], dict]) -> None:
        nonlocal last_checkpoint, last_report
        unreported.append([record["epoch"], record["train_loss"], record["val_loss"]])
        if record["epoch"] >= int(config["epochs"]):
            return  # the final report right after carries it, and a checkpoint
        now = time.monotonic()
        checkpoint_due = now - last_checkpoint >= CHECKPOINT_INTERVAL_S
        if not checkpoint_due and now - last_report < REPORT_INTERVAL_S:
            return
        metrics = {
            N.EPOCH: record["epoch"],
            N.TRAIN_LOSS: record["train_loss"],
            N.VAL_LOSS: record["val_loss"],
            N.EPOCH_LOG: list(unreported),
        }
        unreported.clear()
        last_report = now
        if checkpoint_due:
            last_checkpoint = now
            with tempfile.TemporaryDirectory() as d:
                torch.save(state(), Path(d) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    with tempfile.TemporaryDirectory() as out:
        result = run_trial(
            config, data, device=pick_device(gpu), out_dir=out, on_epoch=on_epoch, resume=resume
        )
        if result[N.STATUS] == "diverged":
            (Path(out) / RESULT_FILE).write_text(json.dumps(result, indent=1))
        tune.report(
            # a diverged trial: the epoch it stopped at
            {N.EPOCH: int(config["epochs"]), **result, N.EPOCH_LOG: unreported},
            checkpoint=tune.Checkpoint.from_directory(out),
        )
