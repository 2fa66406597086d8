"""Clustering and reconstruction metrics shared by every trial and every clusterer.

The hot spot is the exact Euclidean silhouette: each trial scores several labelings
(KMeans, ABO, ...) of the same embedding, and scikit-learn pays the O(n^2 d) distances once per
labeling.  `silhouette_scores` makes one pass over the pairwise distances for all labelings
together, so the O(n^2 d) distance work is paid once and most of it runs in BLAS.

Everything else (Davies-Bouldin, Calinski-Harabasz, label agreement, reconstruction
error) is O(n k) and wraps scikit-learn, with degenerate labelings mapped to NaN so a
collapsed trial is recorded instead of crashing the search.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
)

from tune.names import (  # the one set of names
    CLUSTER_DEGENERATE,
    CLUSTER_METRICS,
    CLUSTERS_USED,
    LABEL_METRICS,
)
from tune.training import pick_device

SILHOUETTE, DAVIES_BOULDIN, CALINSKI_HARABASZ = CLUSTER_METRICS
NMI, ARI, ACC = LABEL_METRICS
CLUSTER_SCORE_KEYS = (*CLUSTER_METRICS, CLUSTERS_USED, CLUSTER_DEGENERATE)

# Square distance blocks of this side keep a float32 block (4 MiB) in a typical L3 cache
# (bench/RESULTS.md, silhouette); GPUs get the largest block max_tile_elements allows.
_CPU_BLOCK = 1024
# Relative rounding noise of float32 ||x||^2 + ||y||^2 - 2 x.y when x == y: at most
# 8 ulp (2**-24) of ||x||^2 + ||y||^2 for d in 2..784, doubled for margin.  Per row we use
# 2 ||x_i||^2 for the sum, as the two norms are equal for (near-)coincident points.
_GRAM_NOISE = 16 * 2.0**-24
# Cap on the float64 per-cell accumulator [n_cells, n] (256 MiB).
_MAX_CELL_SUMS = 2**25


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


@contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    # A training script may enable TF32 globally; its 10-bit mantissa would wreck the
    # Gram-trick distances, so force full float32 matmuls for the duration.
    prev = torch.get_float32_matmul_precision()
    if prev != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if prev != "highest":
            torch.set_float32_matmul_precision(prev)


def is_degenerate(labels: ArrayLike) -> bool:
    """True when silhouette/DB/CH are undefined: < 2 clusters or one cluster per sample."""
    labels = _to_numpy(labels).ravel()
    n_clusters = len(np.unique(labels))
    return n_clusters < 2 or n_clusters == len(labels)


@dataclass
class _Block:
    """A contiguous range of (cell-sorted) points and how to reduce distances onto it.

    Points are sorted by their joint cell (the tuple of their labels over all
    labelings), so a block usually spans only a few cells.  On CPU, summing distances
    over those few contiguous segments is much cheaper than a matmul with the
    [block, k1+k2+...] one-hot (one GEMM instead of a scatter per labeling).  Blocks
    spanning many cells (``segments is None``) use the one-hot matmul instead.
    """

    start: int
    stop: int
    first_cell: int = 0
    segments: list[tuple[int, int]] | None = None  # local [s, e) per cell, in cell order


def _make_blocks(
    cell_sorted: np.ndarray, n_cells: int, block: int, max_segments: int
) -> list[_Block]:
    n = len(cell_sorted)
    cell_start = np.searchsorted(cell_sorted, np.arange(n_cells + 1))
    blocks = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        c0, c1 = int(cell_sorted[start]), int(cell_sorted[stop - 1]) + 1
        if c1 - c0 > max_segments:
            blocks.append(_Block(start, stop))
            continue
        bounds = np.clip(cell_start[c0 : c1 + 1], start, stop) - start
        segments = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        blocks.append(_Block(start, stop, c0, segments))
    return blocks


def _cluster_distance_sums(
    xc: torch.Tensor,
    onehot: torch.Tensor,
    cell_to_cluster: torch.Tensor,
    blocks: list[_Block],
    block: int,
) -> torch.Tensor:
    """S[i, c] = sum of Euclidean distances from point i to the points of cluster c.

    Only blocks on or above the diagonal are computed: each distance block D(I, J)
    is reduced over its columns (onto the points of I) and over its rows (onto the
    points of J), halving the Gram work.  Per-block sums are float32 (<= `block`
    terms) and are accumulated in float64 across blocks: per cell for segment blocks
    (mapped to clusters by `cell_to_cluster` [n_cells, K] at the end), per cluster for
    one-hot blocks.

    Squared distances below the float32 rounding noise of the Gram trick are set to 0:
    otherwise sqrt turns that noise into a positive bias of ~1e-3 ||x|| per pair,
    which breaks 1e-5 agreement when many points coincide (a collapsed embedding).
    """
    n, dim = xc.shape
    k_total = onehot.shape[1]
    dev = xc.device
    f32, f64 = torch.float32, torch.float64
    # On a GPU always mask: a .item() per block would stall the pipeline.
    skip_clean_blocks = dev.type != "cuda"
    onehot_t = onehot.T.contiguous()
    # Accumulators are laid out so that every per-block update is a contiguous add.
    rows_k = torch.zeros(n, k_total, dtype=f64, device=dev)
    cols_k = torch.zeros(k_total, n, dtype=f64, device=dev)
    any_segments = any(b.segments is not None for b in blocks)
    cells_acc = torch.zeros(
        cell_to_cluster.shape[0] if any_segments else 0, n, dtype=f64, device=dev
    )
    # Buffers reused across blocks so the loop allocates nothing.
    tile = torch.empty(block * block, dtype=f32, device=dev)
    mask = torch.empty(block * block, dtype=torch.bool, device=dev)
    red = torch.empty(max(k_total, 1) * block, dtype=f32, device=dev)
    y_buf = torch.empty(n, dim, dtype=f32, device=dev)

    for bi, blk_i in enumerate(blocks):
        i0, i1 = blk_i.start, blk_i.stop
        # Re-centre on this row block (mostly one cluster, as points are cell-sorted):
        # Gram-trick error scales with ||x||^2, so distances to nearby points keep
        # float32 precision relative to the local spread, not the whole embedding's.
        y = torch.sub(xc[i0:], xc[i0:i1].mean(0), out=y_buf[: n - i0])
        sq = torch.linalg.vecdot(y, y)
        yi, sqi = y[: i1 - i0], sq[: i1 - i0, None]
        floor_i = sqi * _GRAM_NOISE
        max_floor_i = float(floor_i.max()) if skip_clean_blocks else math.inf
        for blk_j in blocks[bi:]:
            j0, j1 = blk_j.start, blk_j.stop
            rows, cols = i1 - i0, j1 - j0
            d = tile[: rows * cols].view(rows, cols)
            # ||x||^2 + ||y||^2 - 2 x.y with the column norms fused into addmm.
            torch.addmm(
                sq[None, j0 - i0 : j1 - i0], yi, y[j0 - i0 : j1 - i0].T, beta=1.0, alpha=-2.0, out=d
            )
            d.add_(sqi)
            # Most blocks hold no pair near the noise floor: a read-only min is then
            # cheaper than masking (and also proves there is nothing to clamp).
            if not skip_clean_blocks or blk_j is blk_i or float(d.min()) <= max_floor_i:
                d.masked_fill_(torch.le(d, floor_i, out=mask[: rows * cols].view_as(d)), 0.0)
            d.sqrt_()
            if blk_j is blk_i:
                d.fill_diagonal_(0.0)  # exact self-distance, whatever the rounding

            # Columns of J -> points of I.
            if blk_j.segments is None:
                rows_k[i0:i1] += torch.mm(
                    d, onehot[j0:j1], out=red[: rows * k_total].view(rows, k_total)
                )
            else:
                out = red[: len(blk_j.segments) * rows].view(-1, rows)
                for r, (s, e) in enumerate(blk_j.segments):
                    torch.sum(d[:, s:e], 1, out=out[r])
                cells_acc[blk_j.first_cell : blk_j.first_cell + len(out), i0:i1] += out
            if blk_j is blk_i:
                continue
            # Rows of I -> points of J.
            if blk_i.segments is None:
                cols_k[:, j0:j1] += torch.mm(
                    onehot_t[:, i0:i1], d, out=red[: k_total * cols].view(k_total, cols)
                )
            else:
                out = red[: len(blk_i.segments) * cols].view(-1, cols)
                for r, (s, e) in enumerate(blk_i.segments):
                    torch.sum(d[s:e], 0, out=out[r])
                cells_acc[blk_i.first_cell : blk_i.first_cell + len(out), j0:j1] += out

    sums = rows_k.add_(cols_k.T)
    if any_segments:
        sums.addmm_(cells_acc.T, cell_to_cluster)
    return sums


def silhouette_scores(
    X: ArrayLike | torch.Tensor,
    labelings: Sequence[ArrayLike],
    *,
    device: str | torch.device | None = None,
    max_tile_elements: int = 2**25,
) -> list[float]:
    """Exact Euclidean silhouette (sklearn's definition) of several labelings of X.

    All labelings share one pass over the pairwise distances, computed in square
    blocks of at most `max_tile_elements` distances (upper triangle only, by symmetry)
    on `device` (CUDA when available).  Distances use the Gram trick in float32 on
    data centred in float64 and re-centred per row block; sums across blocks and the
    final reductions are float64.  Matches ``sklearn.metrics.silhouette_score`` to
    ~1e-7 on ordinary data (~3e-6 when clusters are ~1e-3 as wide as they are apart).

    Returns one float per labeling; NaN for degenerate labelings (< 2 clusters or one
    cluster per sample).  Labels may be any integers.
    """
    x_np = X if isinstance(X, torch.Tensor) else np.asarray(X)
    if x_np.ndim != 2:
        raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(x_np.shape)}")
    n = x_np.shape[0]
    if n == 0:
        raise ValueError("X has no samples")
    if max_tile_elements < 1:
        raise ValueError(f"max_tile_elements must be >= 1, got {max_tile_elements}")

    codes, ks = [], []
    for idx, labels in enumerate(labelings):
        labels = _to_numpy(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ValueError(f"labeling {idx} has shape {labels.shape}, expected ({n},) to match X")
        _, inverse = np.unique(labels, return_inverse=True)
        codes.append(inverse.ravel())
        ks.append(int(inverse.max()) + 1)
    scores = [math.nan] * len(codes)
    valid = [i for i, k in enumerate(ks) if 2 <= k < n]
    if not valid:
        return scores

    dev = torch.device(device) if device is not None else pick_device()
    # Sort points by joint cell so every cluster of every labeling is a union of
    # contiguous runs; this enables the cheap segment reduction in `_Block`.
    joint = np.stack([codes[i] for i in valid], axis=1)
    cells, cell_of = np.unique(joint, axis=0, return_inverse=True)
    cell_of = cell_of.ravel()
    order = np.argsort(cell_of, kind="stable")
    offsets = np.concatenate([[0], np.cumsum([ks[i] for i in valid])])

    x64 = torch.as_tensor(x_np).detach().to(dev, torch.float64)[torch.as_tensor(order).to(dev)]
    # Centring before the float32 cast removes the offset that would otherwise cancel
    # catastrophically in ||x||^2 + ||y||^2 - 2 x.y.
    xc = (x64 - x64.mean(0)).float().contiguous()
    del x64

    sorted_codes = torch.as_tensor(joint[order] + offsets[:-1], device=dev)
    onehot = torch.zeros(n, int(offsets[-1]), dtype=torch.float32, device=dev)
    onehot.scatter_(1, sorted_codes, 1.0)

    cell_to_cluster = torch.zeros(len(cells), int(offsets[-1]), dtype=torch.float64, device=dev)
    cell_to_cluster.scatter_(1, torch.as_tensor(cells + offsets[:-1], device=dev), 1.0)
    if dev.type == "cuda":
        # Small ops are launch-bound on a GPU: one big one-hot matmul per block wins.
        block, max_segments = math.isqrt(max_tile_elements), 0
    else:
        block = min(_CPU_BLOCK, math.isqrt(max_tile_elements))
        # Beyond ~K/2 segments, per-segment op overhead loses against one matmul; and
        # the per-cell accumulator [n_cells, n] must stay small.
        fits = len(cells) * n <= _MAX_CELL_SUMS
        max_segments = max(1, int(offsets[-1]) // 2) if fits else 0
    blocks = _make_blocks(cell_of[order], len(cells), block, max_segments)

    with _ieee_fp32_matmul():
        sums = _cluster_distance_sums(xc, onehot, cell_to_cluster, blocks, block)

    for col, idx in enumerate(valid):
        lo, hi = int(offsets[col]), int(offsets[col + 1])
        own_label = sorted_codes[:, col : col + 1] - lo
        per_cluster = sums[:, lo:hi]
        counts = onehot[:, lo:hi].sum(0, dtype=torch.float64)
        own_count = counts[own_label[:, 0]]
        a = per_cluster.gather(1, own_label)[:, 0] / (own_count - 1).clamp(min=1)
        b = (per_cluster / counts).scatter_(1, own_label, math.inf).min(1).values
        denom = torch.maximum(a, b)
        # sklearn's convention: 0 for singleton clusters (and for a == b == 0).
        s = torch.where((own_count > 1) & (denom > 0), (b - a) / denom, 0.0)
        scores[idx] = float(s.mean())
    return scores


def davies_bouldin(X: ArrayLike | torch.Tensor, labels: ArrayLike) -> float:
    """sklearn's Davies-Bouldin index (lower is better); NaN if degenerate."""
    labels = _to_numpy(labels).ravel()
    if is_degenerate(labels):
        return math.nan
    return float(davies_bouldin_score(_to_numpy(X).astype(np.float64, copy=False), labels))


def calinski_harabasz(X: ArrayLike | torch.Tensor, labels: ArrayLike) -> float:
    """sklearn's Calinski-Harabasz index (higher is better); NaN if degenerate."""
    labels = _to_numpy(labels).ravel()
    if is_degenerate(labels):
        return math.nan
    return float(calinski_harabasz_score(_to_numpy(X).astype(np.float64, copy=False), labels))


def cluster_scores(
    X: ArrayLike | torch.Tensor,
    labelings: Mapping[str, ArrayLike],
    *,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Internal cluster-quality metrics for each named labeling of the same embedding.

    Returns ``{name: {"silhouette", "davies_bouldin", "calinski_harabasz",
    "clusters_used", "degenerate"}}``; one `silhouette_scores` call covers all labelings.
    """
    names = list(labelings)
    label_arrays = [_to_numpy(labelings[name]).ravel() for name in names]
    x_np = _to_numpy(X).astype(np.float64, copy=False)
    silhouettes = silhouette_scores(X, label_arrays, device=device)
    out: dict[str, dict[str, float]] = {}
    for name, labels, sil in zip(names, label_arrays, silhouettes, strict=True):
        out[name] = {
            SILHOUETTE: sil,
            DAVIES_BOULDIN: davies_bouldin(x_np, labels),
            CALINSKI_HARABASZ: calinski_harabasz(x_np, labels),
            CLUSTERS_USED: int(len(np.unique(labels))),
            CLUSTER_DEGENERATE: float(is_degenerate(labels)),
        }
    return out


def recon_mse(x: ArrayLike | torch.Tensor, x_hat: ArrayLike | torch.Tensor) -> float:
    """Mean squared error over all elements, accumulated in float64."""
    a = torch.as_tensor(x).detach()
    b = torch.as_tensor(x_hat).detach().to(a.device)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: x {tuple(a.shape)} vs x_hat {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("recon_mse of empty arrays")
    return float((a.double() - b.double()).pow(2).mean())


def hungarian_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Clustering accuracy under the best one-to-one cluster -> class mapping.

    Works for any number of clusters vs classes: unmatched clusters count as wrong.
    """
    y_true, y_pred = _to_numpy(y_true).ravel(), _to_numpy(y_pred).ravel()
    if len(y_true) != len(y_pred):
        raise ValueError(f"length mismatch: y_true {len(y_true)} vs y_pred {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("hungarian_accuracy of empty labelings")
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p.ravel(), t.ravel()), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y_true))


def label_scores(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Agreement with ground-truth classes (reporting only, never a tuning objective)."""
    y_true, y_pred = _to_numpy(y_true).ravel(), _to_numpy(y_pred).ravel()
    return {
        NMI: float(normalized_mutual_info_score(y_true, y_pred)),
        ARI: float(adjusted_rand_score(y_true, y_pred)),
        ACC: hungarian_accuracy(y_true, y_pred),
    }
