"""k-means: pds_hf.cluster.kmeans (faiss) against the reference's scikit-learn MiniBatchKMeans.

The reference clusters each modality with
``MiniBatchKMeans(n_clusters=M, batch_size=10000, n_init=20, random_state=42)``. This script times it
and several faiss settings on the same CLIP-like 768-d embeddings (see ``synthetic.py``), and
measures every result the same way: inertia = sum over *all* points of the squared distance to the
nearest centre (exact search), whatever the method reports itself. Times include assigning every
point to its centre (the labels the pipeline needs).

scikit-learn at 200k x 768 with n_init=20 takes many minutes on 2 cores; its result (time, centres)
is cached under ``cache/`` and reused with ``--reuse-sklearn``.

Usage:
    python benchmarks/perf/bench_kmeans.py                      # 200k points, M = 100 and 1000
    python benchmarks/perf/bench_kmeans.py --reuse-sklearn      # reuse cached scikit-learn runs
    python benchmarks/perf/bench_kmeans.py --n 20000 --k 50 --quick   # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from machine import CACHE, append_results, markdown_table  # noqa: E402
from synthetic import clip_like_images  # noqa: E402

from pds_hf.cluster import kmeans  # noqa: E402

# (label, kmeans keyword arguments). "faiss k-means++" is faiss' plain k-means++ seeding; "greedy
# k-means++" is scikit-learn's variant (pds_hf.cluster.greedy_kmeans_plus_plus), seeded from 30,000
# points. The first row is pds-hf's k-means before this benchmark; DEFAULT marks the chosen one.
DEFAULT = 10
FAISS_SETTINGS = [
    (
        "faiss k-means++ 25 it, all points (old default)",
        dict(init="faiss-k-means++", iterations=25, max_points_per_centroid=None),
    ),
    ("faiss k-means++ 25 it, 256/centre", dict(init="faiss-k-means++", iterations=25, max_points_per_centroid=256)),
    ("faiss k-means++ 10 it, 256/centre", dict(init="faiss-k-means++", iterations=10, max_points_per_centroid=256)),
    ("faiss k-means++ 25 it, 128/centre", dict(init="faiss-k-means++", iterations=25, max_points_per_centroid=128)),
    ("faiss k-means++ 10 it, 64/centre", dict(init="faiss-k-means++", iterations=10, max_points_per_centroid=64)),
    ("faiss k-means++ 25 it, 64/centre", dict(init="faiss-k-means++", iterations=25, max_points_per_centroid=64)),
    ("faiss k-means++ 25 it, 32/centre", dict(init="faiss-k-means++", iterations=25, max_points_per_centroid=32)),
    ("faiss random 25 it, 64/centre", dict(init="random", iterations=25, max_points_per_centroid=64)),
    ("faiss afk-mc2 25 it, 64/centre", dict(init="afk-mc2", iterations=25, max_points_per_centroid=64)),
    ("greedy k-means++ 25 it, all points", dict(init="k-means++", iterations=25, max_points_per_centroid=None)),
    (
        "greedy k-means++ 25 it, 256/centre (new default)",
        dict(init="k-means++", iterations=25, max_points_per_centroid=256),
    ),
    ("greedy k-means++ 25 it, 128/centre", dict(init="k-means++", iterations=25, max_points_per_centroid=128)),
    ("greedy k-means++ 25 it, 64/centre", dict(init="k-means++", iterations=25, max_points_per_centroid=64)),
    ("greedy k-means++ 10 it, 64/centre", dict(init="k-means++", iterations=10, max_points_per_centroid=64)),
]
QUICK = {0, DEFAULT}


def full_inertia(x: np.ndarray, centres: np.ndarray) -> float:
    """Sum of squared distances of all points to their nearest centre (exact), in float64."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    total = 0.0
    for start in range(0, len(x), 65536):
        dist, _ = index.search(x[start : start + 65536], 1)
        total += float(dist.sum(dtype=np.float64))
    return total


def data(n: int, seed: int) -> np.ndarray:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"clip_like_images_{n}_{seed}.npy"
    if path.exists():
        return np.load(path)
    x = clip_like_images(n, seed=seed)
    np.save(path, x)
    return x


def sklearn_run(x: np.ndarray, k: int, seed: int, reuse: bool, n_init: int):
    """Time the reference's MiniBatchKMeans; with ``n_init < 20``, add the measured cost of the
    missing k-means++ initialisations (each runs on ``init_size = 3 * batch_size`` points)."""
    path = CACHE / f"sklearn_minibatch_{len(x)}_{k}_{seed}_init{n_init}.npz"
    if reuse and path.exists():
        cached = np.load(path)
        return float(cached["seconds"]), float(cached["init_seconds"]), cached["centres"], True
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    init_seconds = 0.0
    if n_init < 20:
        sample = x[np.random.default_rng(42).choice(len(x), size=min(len(x), 30000), replace=False)]
        start = time.perf_counter()
        kmeans_plusplus(sample, k, random_state=42)
        init_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fit = MiniBatchKMeans(n_clusters=k, batch_size=10000, n_init=n_init, random_state=42).fit(x)
    seconds = time.perf_counter() - start
    np.savez(path, seconds=seconds, init_seconds=init_seconds, centres=fit.cluster_centers_.astype(np.float32))
    return seconds, init_seconds, fit.cluster_centers_, False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="points (768-d)")
    parser.add_argument("--k", type=int, nargs="+", default=[100, 1000], help="numbers of clusters M")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--reuse-sklearn", action="store_true", help="reuse cached scikit-learn runs")
    parser.add_argument(
        "--sklearn-n-init",
        type=int,
        default=20,
        help="run scikit-learn with fewer initialisations and add the measured time of the "
        "missing ones (for M where n_init=20 takes hours)",
    )
    parser.add_argument("--no-sklearn", action="store_true", help="faiss settings only (no ratio column)")
    parser.add_argument("--settings", type=int, nargs="+", help="indices into FAISS_SETTINGS to run")
    parser.add_argument("--quick", action="store_true", help="three faiss settings only")
    args = parser.parse_args()

    x = data(args.n, args.seed)
    chosen = (
        args.settings if args.settings is not None else (sorted(QUICK) if args.quick else range(len(FAISS_SETTINGS)))
    )
    rows, notes = [], []
    for k in args.k:
        base_time = base_inertia = None
        if not args.no_sklearn:
            seconds, init_seconds, centres, cached = sklearn_run(
                x, k, args.seed, args.reuse_sklearn, args.sklearn_n_init
            )
            base_inertia = full_inertia(x, centres)
            label = "sklearn MiniBatchKMeans n_init=20 (reference)"
            base_time = seconds
            if args.sklearn_n_init < 20:
                # A lower bound of n_init=20: one initialisation costs at least the smaller of its
                # time alone and the whole fit's time per initialisation (which includes the rest).
                per_init = min(init_seconds, seconds / args.sklearn_n_init)
                base_time = seconds + (20 - args.sklearn_n_init) * per_init
                label = (
                    f"sklearn MiniBatchKMeans n_init={args.sklearn_n_init} measured {seconds:.0f}s "
                    f"+ {20 - args.sklearn_n_init} x {per_init:.0f}s per k-means++ init "
                    f"(= n_init=20, lower bound)"
                )
            rows.append(
                [k, label + (" [cached]" if cached else ""), f"{base_time:.1f}", "1.0", f"{base_inertia:.5g}", "1.0000"]
            )
            print(rows[-1], flush=True)
        for i in chosen:
            label, kwargs = FAISS_SETTINGS[i]
            start = time.perf_counter()
            fit = kmeans(x, k, seed=42, **kwargs)
            seconds = time.perf_counter() - start
            inertia = full_inertia(x, fit.centroids)
            rows.append(
                [
                    k,
                    label,
                    f"{seconds:.1f}",
                    f"{base_time / seconds:.1f}" if base_time else "-",
                    f"{inertia:.5g}",
                    f"{inertia / base_inertia:.4f}" if base_inertia else "-",
                ]
            )
            print(rows[-1], flush=True)
    table = markdown_table(
        ["M", "method", "seconds", "speed-up vs sklearn", "inertia (all points)", "inertia / sklearn"], rows
    )
    if args.sklearn_n_init < 20:
        notes.append(
            f"scikit-learn ran with n_init={args.sklearn_n_init}; its n_init=20 time is estimated by adding "
            "the missing k-means++ initialisations, each timed alone (sklearn.cluster.kmeans_plusplus on "
            "init_size = 30000 points, as MiniBatchKMeans does) and capped at the fit's time per "
            "initialisation, so the estimate and the speed-ups are lower bounds. Its inertia is that "
            "of the run with fewer initialisations."
        )
    notes.append(f"Data: {args.n} CLIP-like 768-d image embeddings (benchmarks/perf/synthetic.py, seed {args.seed}).")
    append_results("k-means: faiss vs scikit-learn MiniBatchKMeans", table + "\n\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
