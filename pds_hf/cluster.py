"""Step 3 of PDS: k-means on one modality's embeddings, with faiss.

Euclidean k-means on the raw (not normalised) features, as in the reference. Points carry weights so
that an image encoded once but paired with five captions counts five times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class KMeansResult:
    """Attributes:
    centroids: ``(k, d)`` cluster centres.
    labels: ``(n,)`` index of the nearest centre of each point.
    inertia: weighted sum of squared distances of the points to their centres.
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float


def _use_gpu(gpu) -> bool:
    import faiss

    available = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    if gpu is None:
        return available
    if gpu and not available:
        raise RuntimeError("gpu=True but faiss sees no GPU; install faiss-gpu or pass gpu=False.")
    return bool(gpu)


INIT_METHODS = ("k-means++", "random", "afk-mc2")


def kmeans(x, k: int, *, weights=None, seed: int = 42, iterations: int = 25, restarts: int = 1,
           init: str = "k-means++", gpu: bool | None = None) -> KMeansResult:
    """Weighted k-means with faiss.

    Args:
        x: ``(n, d)`` points.
        k: number of clusters (at most ``n``).
        weights: ``(n,)`` non-negative point weights; ``None`` for all ones.
        seed: seeds the initial centres.
        iterations: Lloyd iterations per run.
        restarts: runs from different initialisations; the lowest-inertia one is kept.
        init: initial centres: ``"k-means++"`` (as scikit-learn, which the reference uses),
            ``"random"`` (faiss' default: k points drawn at random; often merges clusters) or
            ``"afk-mc2"`` (an MCMC approximation of k-means++, cheaper for very large k).
        gpu: use faiss on GPU (``None``: when faiss-gpu sees one).

    Example:
        ```py
        >>> x = np.array([[0.0], [0.1], [10.0], [10.2]], dtype=np.float32)
        >>> kmeans(x, 2).labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
        True
        ```
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points.")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}.")
    init_method = {"random": faiss.ClusteringInitMethod_RANDOM,
                   "k-means++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
                   "afk-mc2": faiss.ClusteringInitMethod_AFK_MC2}[init]
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=iterations, nredo=restarts, seed=seed, gpu=_use_gpu(gpu), init_method=init_method,
                      # Use every point (no subsampling) and do not warn about small clusters:
                      # distilled sets ask for many clusters relative to the data on purpose.
                      max_points_per_centroid=max(n, 1), min_points_per_centroid=1, verbose=False)
    km.train(x, weights=w)
    distances, labels = km.index.search(x, 1)
    distances, labels = distances[:, 0].astype(np.float64), labels[:, 0].astype(np.int64)
    inertia = float(np.dot(distances, w) if w is not None else distances.sum())
    return KMeansResult(centroids=np.asarray(km.centroids, dtype=np.float32), labels=labels, inertia=inertia)
