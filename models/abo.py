"""ABO_clusterer: the first source document's gradient-trained soft k-means, as a scikit-learn estimator.

The algorithm, exactly as the document describes it:
  * initial centres = the k points farthest from the mean of the data;
  * d_ij = ||x_i - c_j||^2, q_i = softmax(-d_i / T) (T = 1 in the document);
  * loss = mean_i sum_j q_ij d_ij, minimised over the centres with Adam (lr 0.1), 200 epochs of
    shuffled minibatches of 32 (batch_size=None: full batch);
  * label = argmax_j q_ij.

`ABONet` + `reference_fit` are that algorithm as a plain PyTorch autograd loop (the document's code
shape). `ABOClusterer.fit` computes the same steps with a closed-form gradient and a fused Adam update
in one numba-compiled loop per epoch: 375,000 steps of a 640-parameter problem are pure per-step
overhead for an autograd loop (minutes per fit: bench/RESULTS.md), and a GPU would not help a
chain of tiny sequential steps either, so the fast path always runs on the CPU.

Closed-form gradient (with dbar_i = sum_k q_ik d_ik and B the batch size):
  dL/dd_ij = q_ij * (1 - (d_ij - dbar_i) / T) / B =: g_ij
  dL/dc_j  = -2 * (sum_i g_ij x_i - (sum_i g_ij) c_j)
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numba
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.cluster import kmeans_plusplus
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import nn

# Adam's constants, shared by reference_fit (torch.optim.Adam) and the numba kernel (which reads
# them as compile-time constants).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def squared_distances(X, centers) -> np.ndarray:
    """||x_i - c_j||^2 [n, k] in float64, as ||x||^2 - 2 x.c + ||c||^2 (exact enough for argmin and
    the softmax; rounding below zero is clamped)."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    return np.maximum((X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None, :], 0.0)


def nearest_centre(X, centers) -> np.ndarray:
    """Index of the nearest of `centers` [k, d] for each row of X [n, d]: int64 [n].

    The one assignment rule of ABOClusterer.predict, the served champion and the benchmark (and
    what KMeans.predict computes)."""
    return squared_distances(X, centers).argmin(axis=1).astype(np.int64)


def farthest_from_mean(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k points farthest from the mean, farthest first (the document's initialisation)."""
    d = ((X - X.mean(axis=0, dtype=np.float64)) ** 2).sum(axis=1)
    return np.argsort(-d, kind="stable")[:k]


INITS = ("farthest", "k-means++")


def initial_indices(
    X: np.ndarray, k: int, init: str, random_state: int | np.random.RandomState | None
) -> np.ndarray:
    """Rows of X that seed the centres: the document's rule, or k-means++ seeding."""
    if init == "farthest":
        return farthest_from_mean(X, k)
    if init == "k-means++":
        return kmeans_plusplus(X, k, random_state=random_state)[1]
    raise ValueError(f"init={init!r}: expected one of {INITS}")


def epoch_orders(random_state: int | np.random.RandomState | None, n: int):
    """Per-epoch shuffles shared by the fast path and the reference loop, so both see the same batches."""
    if isinstance(random_state, np.random.RandomState):  # scikit-learn's other kind of seed
        random_state = int(random_state.randint(np.iinfo(np.int32).max))
    rng = np.random.default_rng(random_state)
    while True:
        yield rng.permutation(n)


class ABONet(nn.Module):
    """The document's module: k trainable centres (k*d parameters: 640 for k=10, d=64)."""

    def __init__(self, init_centers: torch.Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.centers = nn.Parameter(init_centers.clone())  # [k, d]
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, d] -> distances d: [B, k], soft assignment q: [B, k]
        d = ((x[:, None, :] - self.centers[None, :, :]) ** 2).sum(-1)
        return d, torch.softmax(-d / self.temperature, dim=1)


def reference_fit(
    X,
    n_clusters: int = 10,
    lr: float = 0.1,
    epochs: int = 200,
    batch_size: int | None = 32,
    temperature: float = 1.0,
    random_state: int | None = 0,
    max_steps: int | None = None,
    init: str = "farthest",
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, list[float]]:
    """The plain autograd loop (reference for tests and the benchmark): (centres, per-epoch losses)."""
    Xn = check_array(X, dtype=np.float32, order="C")
    x = torch.from_numpy(Xn).to(dtype)
    net = ABONet(x[initial_indices(Xn, n_clusters, init, random_state)], temperature)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    bs = batch_size or len(Xn)
    orders, history, steps = epoch_orders(random_state, len(Xn)), [], 0
    for _ in range(epochs):
        order, losses = torch.from_numpy(next(orders)), []
        for start in range(0, len(Xn), bs):
            d, q = net(x[order[start : start + bs]])
            loss = (q * d).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return net.centers.detach().float().numpy(), [*history, float(np.mean(losses))]
        history.append(float(np.mean(losses)))
    return net.centers.detach().float().numpy(), history


@numba.njit(cache=True, nogil=True, fastmath=True)
def _abo_epoch(X, order, C, m, v, step, lr, temperature, batch_size, max_steps):  # pragma: no cover
    """One epoch of minibatch Adam on the centres, in place. Returns (steps done, mean batch loss)."""
    n, dim = X.shape
    k = C.shape[0]
    b1, b2 = ADAM_BETAS
    d = np.empty(k, np.float64)
    q = np.empty(k, np.float64)
    gx = np.zeros((k, dim), np.float64)  # sum_i g_ij x_i
    gs = np.zeros(k, np.float64)  # sum_i g_ij
    x = np.empty(dim, np.float64)
    loss_sum, n_batches = 0.0, 0
    for start in range(0, n, batch_size):
        if step >= max_steps:
            break
        stop = min(start + batch_size, n)
        B = stop - start
        gx[:] = 0.0
        gs[:] = 0.0
        batch_loss = 0.0
        for r in range(start, stop):
            src = X[order[r]]
            for f in range(dim):  # widen to float64 once per row, not once per centre
                x[f] = src[f]
            dmin = np.inf
            for j in range(k):
                s = 0.0
                for f in range(dim):
                    t = x[f] - C[j, f]
                    s += t * t
                d[j] = s
                dmin = min(dmin, s)
            z = 0.0
            for j in range(k):  # softmax(-d/T), shifted by the smallest distance for stability
                a = -(d[j] - dmin) / temperature
                # exp underflows to exactly 0.0 below about -745.1: skip the call, same result
                q[j] = math.exp(a) if a > -746.0 else 0.0
                z += q[j]
            dbar = 0.0
            for j in range(k):
                q[j] /= z
                dbar += q[j] * d[j]
            batch_loss += dbar
            for j in range(k):
                if q[j] == 0.0:  # then g = 0: adding it to gs and gx changes nothing
                    continue
                g = q[j] * (1.0 - (d[j] - dbar) / temperature) / B
                gs[j] += g
                for f in range(dim):
                    gx[j, f] += g * x[f]
        step += 1
        bc1 = 1.0 - b1**step
        bc2_sqrt = math.sqrt(1.0 - b2**step)
        step_size = lr / bc1
        for j in range(k):  # torch.optim.Adam's update, written out
            for f in range(dim):
                grad = -2.0 * (gx[j, f] - gs[j] * C[j, f])
                m[j, f] = b1 * m[j, f] + (1.0 - b1) * grad
                v[j, f] = b2 * v[j, f] + (1.0 - b2) * grad * grad
                C[j, f] -= step_size * m[j, f] / (math.sqrt(v[j, f]) / bc2_sqrt + ADAM_EPS)
        loss_sum += batch_loss / B
        n_batches += 1
    return step, loss_sum / max(n_batches, 1)


class ABOClusterer(ClusterMixin, BaseEstimator):
    """The first document's ABO_clusterer with scikit-learn's estimator contract.

    Parameters
    ----------
    n_clusters : number of centres k.
    lr : Adam learning rate (document: 0.1).
    epochs : passes over the data (document: 200).
    batch_size : minibatch size (document: 32); None = full batch.
    temperature : softmax temperature T of q = softmax(-d / T) (document: 1).
    init : "farthest" (the document: the k points farthest from the mean), "k-means++", or an
        array [k, d] of starting centres (with epochs=0: centres trained elsewhere, e.g. jointly
        with the encoder by tune/finetune.py). The document's rule often puts several centres in
        one outlying cluster, and a centre far from every point gets no gradient, so it stays
        dead; k-means++ seeding avoids that.
    random_state : int, RandomState or None: seed of the per-epoch shuffles (and of k-means++
        seeding).
    max_steps : optional cap on the number of Adam steps (None = all epochs).

    Attributes
    ----------
    cluster_centers_ : [k, d] float32. labels_ : [n] int64 (argmax q on the training data).
    loss_history_ : per-epoch mean batch loss. n_iter_ : Adam steps taken. init_indices_ : [k]
    (with a string init). n_features_in_ (and feature_names_in_ for named columns).

    Input is validated by scikit-learn (2-D, finite, numeric) and cast to C-contiguous float32,
    the numba kernel's input; predict and predict_proba cast the same way.
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "init": [StrOptions(set(INITS)), "array-like"],
        "random_state": ["random_state"],
        "max_steps": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        lr: float = 0.1,
        epochs: int = 200,
        batch_size: int | None = 32,
        temperature: float = 1.0,
        init: str | np.ndarray = "farthest",
        random_state: int | np.random.RandomState | None = 0,
        max_steps: int | None = None,
    ) -> None:
        self.init = init
        self.n_clusters = n_clusters
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.temperature = temperature
        self.random_state = random_state
        self.max_steps = max_steps

    def _initial_centers(self, X: np.ndarray) -> np.ndarray:
        """[k, d] float64 starting centres: rows of X picked by the string `init`, or `init` itself."""
        if isinstance(self.init, str):
            self.init_indices_ = initial_indices(X, self.n_clusters, self.init, self.random_state)
            return X[self.init_indices_].astype(np.float64)
        # given centres, as KMeans(init=array): e.g. ones trained jointly with the encoder
        C = check_array(self.init, dtype=np.float64, copy=True, order="C")
        if C.shape != (self.n_clusters, X.shape[1]):
            raise ValueError(
                f"init has shape {C.shape}, expected (n_clusters, n_features) = "
                f"({self.n_clusters}, {X.shape[1]})"
            )
        return C

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> ABOClusterer:
        # float32 C-contiguous: the numba kernel's input type
        X = validate_data(self, X, dtype=np.float32, order="C")
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}.")
        C = self._initial_centers(X)
        m, v = np.zeros_like(C), np.zeros_like(C)
        bs = int(self.batch_size or len(X))
        max_steps = self.max_steps if self.max_steps is not None else np.iinfo(np.int64).max
        orders, step, self.loss_history_ = epoch_orders(self.random_state, len(X)), 0, []
        for _ in range(self.epochs):
            if step >= max_steps:
                break
            step, loss = _abo_epoch(
                X,
                next(orders),
                C,
                m,
                v,
                step,
                float(self.lr),
                float(self.temperature),
                bs,
                max_steps,
            )
            self.loss_history_.append(float(loss))
        self.n_iter_ = step
        self.cluster_centers_ = C.astype(np.float32)
        self.labels_ = nearest_centre(X, self.cluster_centers_)
        return self

    def _check_test_data(self, X) -> np.ndarray:
        check_is_fitted(self)
        # float32 as in fit, so predict(X_train) reproduces labels_
        return validate_data(self, X, dtype=np.float32, order="C", reset=False)

    def predict_proba(self, X) -> np.ndarray:
        """Soft assignment q = softmax(-d / T): [n, k], rows sum to 1."""
        z = -squared_distances(self._check_test_data(X), self.cluster_centers_) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Nearest centre = argmax of the soft assignment (softmax is monotone in -d)."""
        return nearest_centre(self._check_test_data(X), self.cluster_centers_)


ABO_clusterer = ABOClusterer  # the document's name
