"""k-means seeding at large M: greedy k-means++ against afk-mc2, the two choices of ``init="auto"``.

Greedy k-means++ (scikit-learn's variant, ``pds_hf.cluster.greedy_kmeans_plus_plus``) seeds from
``init_points(k)`` points with ``2 + ln k`` candidates per centre: its cost grows as ``k**2 ln k``.
faiss' afk-mc2 (an MCMC approximation of k-means++, chain length 50) costs ``n d + 50 k**2 d / 2``.
For each M this script times both seedings alone (on the points k-means fits: at most 256 per
centre, as ``pds_hf.cluster.kmeans`` draws them), and measures the inertia (on all points, exact) of
the seeds and, with ``--full``, of complete k-means runs (25 Lloyd iterations) from each seeding.

Data: the k-means benchmark's CLIP-like 768-d image embeddings (``bench_kmeans.py``, cached).

Usage:
    python benchmarks/perf/bench_kmeans_init.py                        # seeding, M = 250 ... 4000
    python benchmarks/perf/bench_kmeans_init.py --k 1000 --full 1000   # plus full k-means at M = 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_kmeans import data, full_inertia  # noqa: E402
from machine import append_results, markdown_table  # noqa: E402

from pds_hf.cluster import DEFAULT_MAX_POINTS_PER_CENTROID, greedy_kmeans_plus_plus, init_points, kmeans  # noqa: E402


def fit_sample(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The points ``kmeans`` fits on: all of ``x``, or a uniform sample of 256 per centre."""
    size = k * DEFAULT_MAX_POINTS_PER_CENTROID
    if len(x) <= size:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))]


def greedy_seeds(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    pick = np.sort(
        np.random.default_rng(seed).choice(len(points), size=min(len(points), init_points(k)), replace=False)
    )
    return greedy_kmeans_plus_plus(points[pick], k, seed=seed)


def afk_mc2_seeds(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    init = faiss.ClusteringInitialization(points.shape[1], k)
    init.method = faiss.ClusteringInitMethod_AFK_MC2
    init.seed = seed
    centres = np.empty((k, points.shape[1]), dtype=np.float32)
    points = np.ascontiguousarray(points, dtype=np.float32)
    init.init_centroids(len(points), faiss.swig_ptr(points), faiss.swig_ptr(centres))
    return centres


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="points (768-d)")
    parser.add_argument("--k", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000], help="numbers of clusters M")
    parser.add_argument("--full", type=int, nargs="*", default=[], help="M values to also run full k-means for")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    args = parser.parse_args()

    x = data(args.n, args.seed)
    rows = []
    for k in args.k:
        points = fit_sample(x, k, 42)
        row = [k, f"{len(points):,}"]
        inertias = {}
        for name, seeder in (("greedy k-means++", greedy_seeds), ("afk-mc2", afk_mc2_seeds)):
            start = time.perf_counter()
            centres = seeder(points, k, 42)
            seconds = time.perf_counter() - start
            inertias[name] = full_inertia(x, centres)
            row += [f"{seconds:.1f}", f"{inertias[name]:.5g}"]
        row.append(f"{inertias['afk-mc2'] / inertias['greedy k-means++']:.4f}")
        if k in args.full:
            finals = {}
            for name, init in (("greedy k-means++", "k-means++"), ("afk-mc2", "afk-mc2")):
                start = time.perf_counter()
                fit = kmeans(x, k, seed=42, init=init)
                finals[name] = (time.perf_counter() - start, full_inertia(x, fit.centroids))
            row += [
                f"{finals['greedy k-means++'][0]:.0f} / {finals['afk-mc2'][0]:.0f}",
                f"{finals['afk-mc2'][1] / finals['greedy k-means++'][1]:.4f}",
            ]
        else:
            row += ["-", "-"]
        rows.append(row)
        print(row, flush=True)
    table = markdown_table(
        [
            "M",
            "points seeded from",
            "greedy k-means++ seeding (s)",
            "greedy seeds' inertia",
            "afk-mc2 seeding (s)",
            "afk-mc2 seeds' inertia",
            "seeds' inertia afk-mc2 / greedy",
            "full k-means (s) greedy / afk-mc2",
            "final inertia afk-mc2 / greedy",
        ],
        rows,
    )
    append_results(
        "k-means seeding at large M: greedy k-means++ vs afk-mc2",
        table + f"\n\nData: {args.n} CLIP-like 768-d image embeddings (benchmarks/perf/synthetic.py, seed "
        f"{args.seed}); inertia over all points, exact; full k-means: 25 Lloyd iterations, at most "
        f"{DEFAULT_MAX_POINTS_PER_CENTROID} points per centre.",
    )


if __name__ == "__main__":
    main()
