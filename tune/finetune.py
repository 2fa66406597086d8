"""Joint fine-tuning: encoder, decoder and cluster centres trained together after pre-training.

Two recipes, chosen by the trial's `finetune` key (`none` skips this stage):

* `abo`, Deep k-Means (Moradi Fard et al., 2018) with the first document's ABO_clusterer as the
  clustering term: loss = MSE(x, x_hat) + gamma * mean_i sum_j q_ij d_ij with d_ij = ||z_i - c_j||^2
  and q_i = softmax(-d_i / T), the loss ABO_clusterer minimises, now also over the encoder. T is
  annealed geometrically from `finetune_temperature_start` (soft: every centre pulls) to
  `finetune_temperature_end` (nearly hard k-means) over the stage, as Deep k-Means anneals its
  inverse temperature upward. Centres start at ABO's initialisation (`abo_init`) on the
  pre-trained codes.
* `dec`, IDEC (Guo et al., 2017): q_ij = Student's t assignment (alpha = 1, models/dec.py), target
  p_ij = (q_ij^2 / f_j) normalised per row with f_j = sum_i q_ij, recomputed on all training codes
  every `dec_update_interval` batches; loss = MSE + gamma * KL(P || Q) (batch mean of
  sum_j p log(p / q)). The stage stops early when fewer than `dec_tol` of the training labels
  changed between two refreshes. Centres start from KMeans on the pre-trained codes, or on the
  trial's reduction of them (`dec_init`, `initial_centers`).

Reconstruction stays in the loss, so the validation reconstruction loss stays an honest objective:
a stage that wrecks the decoder to sharpen clusters pays for it there.

Like pre-training, the stage is deterministic for a seed and resumable: `state()` (handed to
`on_epoch` after every epoch) holds the weights, centres, Adam's moments, the target distribution,
the RNGs and the counters, and `finetune(..., resume=state)` continues from it exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from models.abo import ABONet, initial_indices
from models.dec import ClusteringLayer
from tune.config import Clustering, Finetune, Reduction
from tune.mlp_step import MLPStep
from tune.reduction import fit_sample
from tune.training import (
    DivergedError,
    adam_step,
    embed,
    make_optimizer,
    reconstruction_loss,
    restore_training,
    training_state,
    use_channels_last,
)


def distance_grads(
    g: torch.Tensor, z: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dz [B, d], dL/dc [k, d]) from g = dL/dd [B, k], d_ij = ||z_i - c_j||^2: both recipes'
    losses depend on z and the centres only through d."""
    dz = 2.0 * (z * g.sum(1, keepdim=True) - g @ centers)  # [B, d]
    dc = -2.0 * (g.t() @ z - g.sum(0)[:, None] * centers)  # [k, d]
    return dz, dc


def _abo_terms(
    z: torch.Tensor, centers: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # z: [B, d], centers: [k, d] -> d: [B, k], q: [B, k], dbar: [B] (the loss is dbar.mean())
    d = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    q = torch.softmax(-d / temperature, dim=1)
    return d, q, (q * d).sum(1)


def _abo_g(
    q: torch.Tensor,
    d: torch.Tensor,
    dbar: torch.Tensor,
    temperature: float,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """g = dL/dd [B, k] of ABOLoss times `scale` (the upstream gradient over B)."""
    return q * (1.0 - (d - dbar[:, None]) / temperature) * scale


class ABOLoss(torch.autograd.Function):
    """mean_i sum_j q_ij d_ij with q_i = softmax(-d_i / T), d_ij = ||z_i - c_j||^2, and the
    closed-form gradient of models/abo.py's docstring, now for the codes as well as the centres:
      g_ij = q_ij (1 - (d_ij - dbar_i) / T) / B,  dL/dz_i = 2 sum_j g_ij (z_i - c_j),
      dL/dc_j = -2 sum_i g_ij (z_i - c_j).
    tests/test_finetune.py checks it against autograd through models.abo.ABONet."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, centers: torch.Tensor, temperature: float) -> torch.Tensor:
        d, q, dbar = _abo_terms(z, centers, temperature)
        ctx.save_for_backward(z, centers, q, d, dbar)
        ctx.temperature = temperature
        return dbar.mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, centers, q, d, dbar = ctx.saved_tensors
        g = _abo_g(q, d, dbar, ctx.temperature, grad_out / len(z))
        return *distance_grads(g, z, centers), None


def abo_loss(z: torch.Tensor, centers: torch.Tensor, temperature: float) -> torch.Tensor:
    return ABOLoss.apply(z, centers, temperature)


def abo_closed_form(
    z: torch.Tensor, centers: torch.Tensor, temperature: float, weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dz [B, d], dc [k, d]) of abo_loss, the gradients times `weight` (gamma): what
    ABOLoss.backward gives, without autograd."""
    d, q, dbar = _abo_terms(z, centers, temperature)
    g = _abo_g(q, d, dbar, temperature, weight / len(z))
    return dbar.mean(), *distance_grads(g, z, centers)


def idec_closed_form(
    z: torch.Tensor, head: ClusteringLayer, p: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KL(P || Q), dz [B, d], dc [k, d]) for q = head(z) and the target p [B, k], the gradients
    times `weight` (gamma). With u_ij = (1 + d_ij / a)^(-(a+1)/2), q = u / sum_j u and
    s_i = sum_j p_ij (1 up to rounding; kept so the result is autograd's to the last bits):
      dL/dd_ij = (a + 1) / (2a) (p_ij - s_i q_ij) / (1 + d_ij / a) / B."""
    base, q = head.assign(z)  # [B, k] each
    a = head.alpha
    g = (p - p.sum(1, keepdim=True) * q).div_(base).mul_(weight * (a + 1.0) / (2.0 * a) / len(z))
    return kl_divergence(p, q), *distance_grads(g, z, head.centers)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's auxiliary target: p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij."""
    weight = q**2 / q.sum(0)
    return weight / weight.sum(1, keepdim=True)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = batch mean of sum_j p_ij log(p_ij / q_ij), with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * torch.log(q)).sum(1).mean()


def initial_centers(
    stage: Finetune,
    z_train: np.ndarray,
    clustering: Clustering,
    seed: int,
    reduction: Reduction | None = None,
) -> np.ndarray:
    """[k, d] float32 starting centres on the pre-trained codes [N, d].

    abo: ABO's initialisation rule. dec: KMeans on the codes (`dec_init: latent`, IDEC's start),
    or on the trial's `reduction` of them (`dec_init: reduced`: the clustering the trial would
    make without the stage), each centre then the mean code of its cluster. The second starts
    IDEC from N2D's clusters, which IDEC then sharpens instead of sharpening the latent KMeans'
    mistakes; without a reduction the two are the same.
    """
    k = clustering.n_clusters
    if stage.kind == "abo":
        return z_train[initial_indices(z_train, k, clustering.abo_init, seed)].astype(np.float32)
    km = KMeans(n_clusters=k, n_init=clustering.kmeans_n_init, random_state=seed)
    if stage.init == "reduced" and reduction is not None:
        rows, seen = fit_sample(reduction, seed, z_train)
        if seen is not None:
            labels, codes = km.fit(seen).labels_, z_train[rows]
            # Fewer distinct reduced codes than k (a collapsed encoder) leave clusters empty,
            # whose mean would be NaN: start from the latent KMeans instead.
            if len(np.unique(labels)) == k:
                return np.stack([codes[labels == j].mean(0) for j in range(k)]).astype(np.float32)
    return km.fit(z_train).cluster_centers_.astype(np.float32)


@torch.no_grad()
def soft_assignment(model: nn.Module, head: ClusteringLayer, x: torch.Tensor) -> torch.Tensor:
    """q [N, k] of every image in x [N, 1, H, W], the encoder in eval mode (dropout off)."""
    return head.soft_assignment(embed(model, x))  # [N, d] codes -> [N, k]


def finetune(
    model: nn.Module,
    x_train: torch.Tensor,
    x_val: torch.Tensor | None,
    centers: np.ndarray,
    stage: Finetune,
    *,
    seed: int,
    first_epoch: int = 0,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float], Callable[[], dict[str, Any]]], None] | None = None,
    closed_form: bool = True,
) -> tuple[list[dict[str, float]], np.ndarray]:
    """Train `model` (pre-trained) and the centres [k, d] jointly; returns (history, centres).

    Epochs are numbered on from `first_epoch` (the pre-training epochs), so one trial's per-epoch
    curves run on without a gap. Each record: epoch, train_loss (the reconstruction part),
    val_loss, cluster_loss, and `temperature` (abo) or `labels_changed` (dec, NaN before the
    second refresh) and `refresh_seconds` (dec: the epoch's time spent refreshing the target).
    Raises DivergedError on a NaN/inf loss.

    A plain MLP (MLPStep.for_model) steps with closed-form gradients, anything else with autograd;
    `closed_form=False` forces autograd (tests and bench/bench_stages.py compare the two).
    """
    device = x_train.device
    model.train()
    use_channels_last(model)
    c0 = torch.as_tensor(centers, dtype=torch.float32, device=device)
    head: nn.Module = ABONet(c0) if stage.kind == "abo" else ClusteringLayer(c0)
    head.to(device)
    opt, flat = make_optimizer(nn.ModuleDict({"autoencoder": model, "head": head}), stage.lr, 0.0)
    # after make_optimizer: the step holds views of the flat gradient buffer
    fast = MLPStep.for_model(model) if closed_form else None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed + 1)  # a stream of its own: pre-training's shuffles stay as they were
    history: list[dict[str, float]] = []
    steps, target, prev_labels, changed = 0, None, None, math.nan
    if resume is not None:
        head.load_state_dict(resume["head"])
        history = restore_training(resume, model, opt, gen)
        steps, changed = resume["steps"], resume["changed"]
        target, prev_labels = resume["target"], resume["prev_labels"]

    def state() -> dict[str, Any]:
        return {
            **training_state(model, opt, gen, history),
            "phase": "finetune",
            "head": head.state_dict(),
            "steps": steps,
            "changed": changed,
            "target": None if target is None else target.clone(),
            "prev_labels": None if prev_labels is None else prev_labels.clone(),
        }

    def code_grad(temperature: float | None, p: torch.Tensor | None):
        """MLPStep's hook for this batch: the clustering term's loss and gamma * dL/dz, the
        centres' gradient written into their view of the flat buffer (every gradient is written,
        none accumulated: the fast step never zeroes the buffer)."""

        def hook(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if stage.kind == "abo":
                loss, dz, dc = abo_closed_form(z, head.centers, temperature, stage.gamma)
            else:
                loss, dz, dc = idec_closed_form(z, head, p, stage.gamma)
            head.centers.grad.copy_(dc)
            return loss, dz

        return hook

    n, bs = len(x_train), stage.batch_size
    stopped = False
    for e in range(len(history), stage.epochs):
        temperature = stage.temperature(e) if stage.kind == "abo" else None
        order = torch.randperm(n, generator=gen).to(device)
        sums = torch.zeros(2, device=device)  # summed reconstruction and clustering losses
        seen, refreshing = 0, 0.0
        for start in range(0, n, bs):
            if stage.kind == "dec" and steps % stage.update_interval == 0:
                began = time.perf_counter()
                q_all = soft_assignment(model, head, x_train)
                labels = q_all.argmax(1)
                if prev_labels is not None:
                    changed = (labels != prev_labels).float().mean().item()
                # IDEC's stopping rule, checked at each refresh
                stopped = prev_labels is not None and changed < stage.tol
                if not stopped:
                    prev_labels, target = labels, target_distribution(q_all)
                refreshing += time.perf_counter() - began
                if stopped:
                    break
            index = order[start : start + bs]
            xb = x_train[index]
            if fast is not None:
                p = None if target is None else target[index]
                recon, clustering = fast.joint(xb, code_grad(temperature, p))
            else:
                z = model.encode(xb)
                recon = nn.functional.mse_loss(model.decode(z), xb)
                if stage.kind == "abo":
                    clustering = abo_loss(z, head.centers, temperature)
                else:
                    clustering = kl_divergence(target[index], head(z))
                flat.grad.zero_()
                (recon + stage.gamma * clustering).backward()
            adam_step(opt, flat)
            sums += torch.stack([recon.detach(), clustering.detach()]) * len(index)
            seen += len(index)
            steps += 1
        if seen:
            train_loss, cluster_loss = (sums / seen).tolist()
            epoch = first_epoch + e + 1
            if not (math.isfinite(train_loss) and math.isfinite(cluster_loss)):
                raise DivergedError(
                    f"fine-tuning loss is {train_loss + stage.gamma * cluster_loss} at epoch "
                    f"{epoch} (finetune_lr={stage.lr})",
                    epoch,
                )
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": reconstruction_loss(model, x_val) if x_val is not None else math.nan,
                "cluster_loss": cluster_loss,
            }
            if stage.kind == "abo":
                record["temperature"] = temperature
            else:
                record["labels_changed"] = changed
                record["refresh_seconds"] = refreshing
            history.append(record)
            if on_epoch is not None:
                on_epoch(record, state)
        if stopped:
            break
    model.eval()
    return history, head.centers.detach().cpu().numpy().astype(np.float32)
