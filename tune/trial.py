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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import joblib
import numba
import numpy as np
import torch
from sklearn.cluster import KMeans

from models.abo import ABOClusterer
from models.build import build_autoencoder, count_parameters
from tune import names as N
from tune import plots
from tune.config import TrialConfig, describe
from tune.data import Dataset
from tune.finetune import finetune, initial_centers
from tune.metrics import CLUSTER_SCORE_KEYS, cluster_scores, label_scores, silhouette_scores
from tune.reduction import apply_reduction, fit_reduction
from tune.rungs import CLOCK_KEY, Rungs, with_rung_values
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
# Each tune.report costs the trial time in its actor and the driver more (results, loggers,
# searcher), which short epochs cannot afford. Epochs are therefore reported at most this often,
# each report carrying the epochs since the last one (names.EPOCH_LOG), so Tune, ASHA and MLflow
# still see every epoch; an epoch that reaches a rung of `--scheduler mo-asha` is reported at once.
REPORT_INTERVAL_S = float(os.environ.get("CLUSTERTUNE_REPORT_INTERVAL_S", "1"))
# Test-only, for event-driven fault tests (tests/conftest.py's Hold): "DIR:EPOCH" makes a trial
# that reaches EPOCH (not its last) report it with a checkpoint, then wait while DIR/hold exists
# (and DIR/release-<trial id> does not).
TEST_HOLD = os.environ.get("CLUSTERTUNE_TEST_HOLD")
# Test-only as well: "DIR:N" makes every trial wait at its start until N trials have started
# (files DIR/arrived-<trial id>), so that a test knows that N trials ran at once.
TEST_GATHER = os.environ.get("CLUSTERTUNE_TEST_GATHER")
STATE_FILE = "train_state.pt"
# Beside it: the trial's seconds so far and when it last decided on a rung, so that a retry counts
# rungs in seconds on from there.
CLOCK_FILE = "clock.json"
MODEL_FILE = "model.pt"
CLUSTERERS_FILE = "clusterers.npz"
REDUCTION_FILE = "reduction.joblib"  # the fitted PCA or UMAP (pickled: neither has another format)
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
ARTIFACTS = ("reconstructions.png", "embedding.png", "loss_curves.png")


def make_clusterers(cfg: TrialConfig, joint_centers: np.ndarray | None = None) -> dict[str, Any]:
    """ABO_clusterer and KMeans with the trial's settings, both seeded.

    With `joint_centers` (finetune abo), ABO keeps the centres trained with the encoder: it is
    given them as `init` and takes no further steps, so its labels are their nearest centres.
    """
    c, seed = cfg.clustering, cfg.seed
    abo = ABOClusterer(
        n_clusters=c.n_clusters,
        lr=c.abo_lr,
        epochs=c.abo_epochs,
        batch_size=c.abo_batch_size,
        temperature=c.abo_temperature,
        init=c.abo_init,
        random_state=seed,
    )
    if joint_centers is not None:
        abo.set_params(init=joint_centers, epochs=0)
    return {
        "abo": abo,
        "kmeans": KMeans(n_clusters=c.n_clusters, n_init=c.kmeans_n_init, random_state=seed),
    }


def clusterer_space(cfg: TrialConfig, name: str) -> str:
    """ "latent" or "reduced": the space clusterer `name` works in. ABO's centres trained jointly
    with the encoder (finetune abo) live in the latent space; everything else sees the reduction."""
    joint = cfg.finetune is not None and cfg.finetune.kind == "abo"
    return "latent" if name == "abo" and joint else "reduced"


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[N.stage_seconds(stage)] = timings.get(N.stage_seconds(stage), 0.0) + (
            time.perf_counter() - start
        )


def run_trial(
    config: TrialConfig | Mapping[str, Any],
    dataset: Dataset,
    *,
    device: torch.device | str | None = None,
    out_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float], Callable[[], dict]], None] | None = None,
    resume: dict[str, Any] | None = None,
    rungs: Rungs | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline for one config (typed, or flat and checked here); returns the flat
    result (names from tune.names).

    Stages: pre-train the autoencoder; optionally fine-tune it jointly with cluster centres
    (tune/finetune.py); embed every split; optionally reduce the codes (PCA or UMAP,
    tune/reduction.py); fit ABO_clusterer and KMeans on train and predict val/test; score. Each
    stage's wall time is in the result (time/<stage>_s). `resume` is a state handed to `on_epoch`
    (either stage's): the trial continues from it exactly. At `rungs` (epochs of either stage,
    or seconds of `clock`: the trial's seconds so far, by default since this call), the record
    handed to `on_epoch` also carries the rung values (tune/rungs.py).

    With `out_dir`, also writes the model, the clusterers' centres, the reduction, the config, the
    result and the PNG artifacts there. A NaN/inf training loss stops training at once and gives a
    "diverged" result (NaN objectives, the epoch it stopped at, the reason) instead of an
    exception: the search goes on, the trial's MLflow run ends FAILED and Optuna records the
    trial as failed.
    """
    start = time.perf_counter()
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_flat(config)
    timings: dict[str, float] = {}
    device = torch.device(device) if device is not None else pick_device()
    seed = cfg.seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_autoencoder(cfg.autoencoder, dataset.image_shape).to(device)
    x = {
        "train": images_to_tensor(dataset.x_train, device),
        "val": images_to_tensor(dataset.x_val, device),
        "test": images_to_tensor(dataset.x_test, device),
    }
    y = {"train": dataset.y_train, "val": dataset.y_val, "test": dataset.y_test}
    x_val = x["val"] if len(x["val"]) else None
    if rungs is not None and rungs.at and on_epoch is not None:
        split = x["val"] if x_val is not None else x["train"]  # where the objectives come from
        if clock is None:
            clock = lambda: time.perf_counter() - start  # noqa: E731
        n_clusters = cfg.clustering.n_clusters
        on_epoch = with_rung_values(
            on_epoch, rungs, model, split, n_clusters, seed, cfg.reduction, clock
        )
    result: dict[str, Any] = {
        N.NODE: _node_id(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "n_parameters": count_parameters(model),
    }
    stage = cfg.finetune
    in_finetune = resume is not None and resume.get("phase") == "finetune"
    ft_history: list[dict[str, float]] = []
    joint_centers = None
    try:
        with _timed(timings, "pretrain"):
            if in_finetune:  # pre-training finished before the checkpoint
                history = list(resume["pretrain_history"])
            else:
                t = cfg.training
                history = train_autoencoder(
                    model,
                    x["train"],
                    x_val,
                    lr=t.lr,
                    weight_decay=t.weight_decay,
                    batch_size=t.batch_size,
                    epochs=t.epochs,
                    seed=seed,
                    resume=resume,
                    on_epoch=on_epoch,
                )
        if stage is not None:
            with _timed(timings, "finetune_init"):
                if in_finetune:  # the resumed state holds the centres
                    centers = resume["head"]["centers"].cpu().numpy()
                else:
                    z = embed(model, x["train"]).cpu().numpy()
                    centers = initial_centers(stage, z, cfg.clustering, seed, cfg.reduction)
            with _timed(timings, "finetune"):
                ft_history, centers = _finetune_stage(
                    cfg,
                    model,
                    x["train"],
                    x_val,
                    history,
                    centers,
                    on_epoch,
                    resume if in_finetune else None,
                )
            if stage.kind == "abo":  # ABO's labels come from the centres trained with the encoder
                joint_centers = centers
    except DivergedError as e:
        result.update(
            {
                N.SILHOUETTE: math.nan,
                N.RECON_LOSS: math.nan,
                N.STATUS: N.Status.DIVERGED,
                N.DIVERGED: 1.0,
                N.DEGENERATE: 0.0,
                N.EPOCH: e.epoch,
                "reason": str(e),
                N.TRIAL_SECONDS: time.perf_counter() - start,
                **timings,
            }
        )
        return result
    epochs_run = history + ft_history
    result[N.EPOCH] = epochs_run[-1]["epoch"] if epochs_run else 0

    with _timed(timings, "embed"):
        z = {split: embed(model, xs).cpu().numpy() for split, xs in x.items()}
        for split in N.SPLITS:
            result[N.recon_loss(split)] = reconstruction_loss(model, x[split])
    with _timed(timings, "reduction"):
        reducer = fit_reduction(cfg.reduction, seed, z["train"])
        reduced = z
        if reducer is not None:
            reduced = {split: apply_reduction(reducer, zs) for split, zs in z.items()}
    result[N.CLUSTER_DIM] = float(reduced["train"].shape[1])
    spaces = {"latent": z, "reduced": reduced}
    clusterers = make_clusterers(cfg, joint_centers)
    seen = {name: spaces[clusterer_space(cfg, name)] for name in clusterers}
    labels: dict[str, dict[str, np.ndarray]] = {split: {} for split in N.SPLITS}
    for name, est in clusterers.items():
        with _timed(timings, name):
            labels["train"][name] = est.fit(seen[name]["train"]).labels_.astype(np.int64)
            for split in ("val", "test"):
                if len(seen[name][split]):
                    labels[split][name] = est.predict(seen[name][split]).astype(np.int64)
    with _timed(timings, "metrics"):
        for split in N.SPLITS:
            if labels[split]:
                _score_split(result, split, seen, z, labels[split], y[split], device)

    objective_split = "val" if len(z["val"]) else "train"
    best, partial = _objective_clusterer(result, objective_split, cfg.clustering.n_clusters)
    abo = clusterers["abo"]
    result.update(
        {
            N.SILHOUETTE: result[N.metric(objective_split, "silhouette", best)]
            if best
            else math.nan,
            N.BEST_CLUSTERER: best or "none",
            N.PARTIAL: float(partial),
            N.DEGENERATE: 0.0 if best else 1.0,
            N.DIVERGED: 0.0,
            N.STATUS: N.Status.OK if best else N.Status.DEGENERATE,
            "abo/n_iter": float(abo.n_iter_),
            "abo/final_loss": abo.loss_history_[-1] if abo.loss_history_ else math.nan,
        }
    )
    if ft_history:
        result["finetune/epochs_run"] = float(len(ft_history))
        result["finetune/final_cluster_loss"] = ft_history[-1]["cluster_loss"]
    result.update(timings)
    result[N.TRIAL_SECONDS] = time.perf_counter() - start
    if out_dir is not None:
        _write_outputs(
            Path(out_dir),
            cfg,
            model,
            reducer,
            clusterers,
            x,
            y,
            seen,
            labels,
            epochs_run,
            result,
        )
    return result


def _finetune_stage(cfg: TrialConfig, model, x_train, x_val, history, centers, on_epoch, resume):
    """Run tune/finetune.py's stage after pre-training from `centers`; returns (its history, its
    centres).

    Its checkpoints also carry the pre-training history, so a trial resumed inside the stage
    still reports and plots both stages. `resume`: a state saved inside the stage, or None."""

    def report(record: dict[str, float], state: Callable[[], dict]) -> None:
        if on_epoch is not None:
            on_epoch(record, lambda: {**state(), "pretrain_history": list(history)})

    return finetune(
        model,
        x_train,
        x_val,
        centers,
        cfg.finetune,
        seed=cfg.seed,
        first_epoch=len(history),
        resume=resume,
        on_epoch=report,
    )


def _score_split(result, split, seen, z, labels, y, device) -> None:
    """Every score of every labeling of one split, into `result`.

    Cluster metrics are measured in the space each clusterer saw (one silhouette pass per
    space); `latent_silhouette` measures the same labeling in the autoencoder's latent space, so
    what a reduction contributed is visible beside it."""
    by_space: dict[int, list[str]] = {}
    for name in labels:
        by_space.setdefault(id(seen[name]), []).append(name)
    for names in by_space.values():
        space = seen[names[0]][split]
        scores = cluster_scores(space, {n: labels[n] for n in names}, device=device)
        for name, s in scores.items():
            for metric in CLUSTER_SCORE_KEYS:
                result[N.metric(split, metric, name)] = float(s[metric])
    elsewhere = [n for n in labels if seen[n][split] is not z[split]]
    if elsewhere:
        sils = silhouette_scores(z[split], [labels[n] for n in elsewhere], device=device)
        for name, sil in zip(elsewhere, sils, strict=True):
            result[N.metric(split, N.LATENT_SILHOUETTE, name)] = float(sil)
    for name in labels:
        result.setdefault(
            N.metric(split, N.LATENT_SILHOUETTE, name), result[N.metric(split, "silhouette", name)]
        )
        for metric, value in label_scores(y, labels[name]).items():
            result[N.metric(split, metric, name)] = value


def _objective_clusterer(
    result: Mapping[str, Any], split: str, n_clusters: int
) -> tuple[str | None, bool]:
    """(clusterer whose `split` silhouette is the objective, whether it is partly collapsed).

    A clusterer whose training labels use fewer than n_clusters clusters is partly collapsed: its
    silhouette is inflated by it, so it is chosen only when no clusterer uses all of them."""
    valid = {
        c: result[N.metric(split, "silhouette", c)]
        for c in N.CLUSTERERS
        if math.isfinite(result.get(N.metric(split, "silhouette", c), math.nan))
    }
    full = {
        c: s
        for c, s in valid.items()
        if result[N.metric("train", N.CLUSTERS_USED, c)] >= n_clusters
    }
    pool = full or valid
    if not pool:
        return None, False
    return max(pool, key=pool.get), not full


def _write_outputs(
    out, cfg, model, reducer, clusterers, x, y, seen, labels, history, result
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / MODEL_FILE)
    np.savez(
        out / CLUSTERERS_FILE,
        abo=clusterers["abo"].cluster_centers_,
        kmeans=clusterers["kmeans"].cluster_centers_.astype(np.float32),
    )
    if reducer is not None:  # the served model reduces codes exactly as the trial did
        joblib.dump(reducer, out / REDUCTION_FILE)
    config = {**dict(cfg.flat), "image_shape": list(model.image_shape)}  # for rebuilding the model
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    (out / RESULT_FILE).write_text(json.dumps(result, indent=1, sort_keys=True))
    split = "val" if len(x["val"]) else "train"
    with torch.no_grad():
        xs = x[split][:10]
        x_hat = model(xs)
    plots.reconstruction_grid(xs[:, 0].cpu().numpy(), x_hat[:, 0].cpu().numpy(), out / ARTIFACTS[0])
    best = result[N.BEST_CLUSTERER]
    plots.embedding_scatter(
        _embedding_panels(cfg, reducer, seen, labels, result, split),
        out / ARTIFACTS[1],
        objective=best,
        n_clusters=cfg.clustering.n_clusters,
        split=split,
        truth=y[split] if len(y[split]) == len(x[split]) else None,
        title=describe(cfg.flat),
        seed=cfg.seed,
    )
    abo = clusterers["abo"]
    plots.loss_curves(
        history,
        out / ARTIFACTS[2],
        abo_loss=abo.loss_history_ if abo.n_iter_ else [],  # jointly trained centres: no own fit
        objective=best,
        finetune=cfg.finetune.kind if cfg.finetune else None,
    )


def _embedding_panels(cfg, reducer, seen, labels, result, split) -> list[plots.ClusterPanel]:
    """Each clusterer's labels of `split` in the space it clustered, with its scores there."""
    panels = []
    for name, split_labels in labels[split].items():
        latent = clusterer_space(cfg, name) == "latent" or reducer is None
        nmi = result.get(N.metric(split, "nmi", name))
        panels.append(
            plots.ClusterPanel(
                name=name,
                points=seen[name][split],
                space="latent" if latent else cfg.reduction.kind.upper(),
                labels=split_labels,
                silhouette=result[N.metric(split, "silhouette", name)],
                clusters_used=int(result[N.metric(split, N.CLUSTERS_USED, name)]),
                nmi=nmi,
            )
        )
    return panels


def _node_id() -> str:
    """Ray's node id inside a Ray worker (unique per node even on one host), else the hostname."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray any failure just means "no Ray node"
        pass
    return socket.gethostname()


def _hold_file(epoch: int) -> Path | None:
    """TEST_HOLD's marker for this trial when it must wait at `epoch`, else None. A retried
    trial, whose marker exists, never waits twice."""
    if TEST_HOLD is None:
        return None
    from ray import tune

    directory, at = TEST_HOLD.rsplit(":", 1)
    marker = Path(directory) / f"held-{tune.get_context().get_trial_id()}"
    if epoch != int(at) or not (Path(directory) / "hold").exists() or marker.exists():
        return None
    return marker


def _wait_while_held(marker: Path) -> None:
    """Wait until the hold is off, or this trial alone is let go (DIR/release-<trial id>)."""
    marker.touch()
    release = marker.parent / marker.name.replace("held-", "release-", 1)
    while (marker.parent / "hold").exists() and not release.exists():
        time.sleep(0.05)


def _gather() -> None:
    """TEST_GATHER's barrier: mark this trial's arrival, wait for the others' (a retried trial
    finds its own mark and the others' there)."""
    if TEST_GATHER is None:
        return
    from ray import tune

    directory, n = TEST_GATHER.rsplit(":", 1)
    (Path(directory) / f"arrived-{tune.get_context().get_trial_id()}").touch()
    while len(list(Path(directory).glob("arrived-*"))) < int(n):
        time.sleep(0.05)


def trainable(config: dict[str, Any], data: Dataset, rungs: Rungs | None = None) -> None:
    """Ray Tune function trainable: `tune.with_parameters(trainable, data=dataset)`.

    `rungs`: where the scheduler decides (`--scheduler mo-asha`), in epochs or in seconds since
    the trial started (a retried trial goes on counting from its checkpoint); each rung is
    reported at once, with its rung values (names.RUNG_OBJECTIVES), whatever the report interval.
    """
    from ray import tune

    _gather()
    resume, elapsed = None, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retried trial: continue from the last saved epoch
        with checkpoint.as_directory() as d:
            if (Path(d) / STATE_FILE).exists():
                resume = torch.load(Path(d) / STATE_FILE, weights_only=False)
            if (Path(d) / CLOCK_FILE).exists():
                saved = json.loads((Path(d) / CLOCK_FILE).read_text())
                elapsed = saved["elapsed_s"]
                if rungs is not None:  # the rungs it had decided on were reported then
                    rungs = replace(rungs, decided_until=saved["decided_s"])
    started = time.monotonic() - elapsed

    def clock() -> float:
        return time.monotonic() - started

    resources = tune.get_context().get_trial_resources().required_resources
    gpu = bool(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    torch.set_num_threads(cpus)  # no oversubscription of the node
    numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))  # UMAP, pynndescent
    cfg = TrialConfig.from_flat(config, source=f"trial {tune.get_context().get_trial_id()}")
    last_epoch = cfg.last_epoch

    last_checkpoint = last_report = time.monotonic()
    # [epoch, train loss, val loss(, cluster loss)] not yet handed to Tune (names.EPOCH_LOG)
    unreported: list[list[float]] = []
    final_rung: dict[str, float] = {}  # the rung values of the last epoch, if it reached a rung
    decided = 0.0  # the trial's clock when the rungs of the last epoch were decided (seconds)

    def on_epoch(record: dict[str, float], state: Callable[[], dict]) -> None:
        nonlocal last_checkpoint, last_report, decided
        entry = [record["epoch"], record["train_loss"], record["val_loss"]]
        unreported.append(entry + ([record["cluster_loss"]] if "cluster_loss" in record else []))
        decided = record.get(CLOCK_KEY, decided)
        rung = {k: record[k] for k in N.RUNG_KEYS if k in record}
        if record["epoch"] >= last_epoch:
            final_rung.update(rung)
            return  # the final report right after carries it, and a checkpoint
        now = time.monotonic()
        hold = _hold_file(record["epoch"])
        checkpoint_due = hold is not None or now - last_checkpoint >= CHECKPOINT_INTERVAL_S
        # A rung is always reported: the scheduler decides on that epoch's values.
        if not checkpoint_due and not rung and now - last_report < REPORT_INTERVAL_S:
            return
        metrics = {
            N.EPOCH: record["epoch"],
            N.TRAIN_LOSS: record["train_loss"],
            N.VAL_LOSS: record["val_loss"],
            N.EPOCH_LOG: list(unreported),
        }
        if "cluster_loss" in record:
            metrics[N.CLUSTER_LOSS] = record["cluster_loss"]
        metrics.update(rung)
        unreported.clear()
        last_report = now
        if checkpoint_due:
            last_checkpoint = now
            with tempfile.TemporaryDirectory() as d:
                torch.save(state(), Path(d) / STATE_FILE)
                clock_state = {"elapsed_s": clock(), "decided_s": decided}
                (Path(d) / CLOCK_FILE).write_text(json.dumps(clock_state))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        if hold is not None:
            _wait_while_held(hold)

    with tempfile.TemporaryDirectory() as out:
        result = run_trial(
            cfg,
            data,
            device=pick_device(gpu),
            out_dir=out,
            on_epoch=on_epoch,
            resume=resume,
            rungs=rungs,
            clock=clock,
        )
        if result[N.STATUS] == N.Status.DIVERGED:
            (Path(out) / RESULT_FILE).write_text(json.dumps(result, indent=1))
        tune.report(
            # result[N.EPOCH]: the last epoch run (a diverged trial: the one it stopped at)
            {**result, **final_rung, N.EPOCH_LOG: unreported},
            checkpoint=tune.Checkpoint.from_directory(out),
        )
