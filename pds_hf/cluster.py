"""Step 3 of PDS: k-means on one modality's embeddings, with faiss.

Euclidean k-means, on the features as given (the reference) or scaled to unit length (``normalize``,
what :func:`pds_hf.prototypes_from_embeddings` does by default). Points carry weights so that an image
encoded once but paired with five captions counts five times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .filter import as_table
from .filter import normalize as unit_rows

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


INIT_METHODS = ("auto", "k-means++", "faiss-k-means++", "random", "afk-mc2")

# ``init="auto"`` seeds with greedy k-means++ up to this many clusters and with afk-mc2 above. Greedy
# k-means++ costs about ``(2 + ln k) * init_points(k) * k * d`` (``k**2 ln k`` once ``init_points``
# grows with ``k``); faiss' afk-mc2 costs ``n * d + 50 * k**2 * d / 2`` and seeds 17-40x faster at
# M = 250-2000, but k-means from its seeds ends with 5.5% more inertia at M = 1000 (25 Lloyd
# iterations, CLIP-like 768-d data; benchmarks/perf/bench_kmeans_init.py, RESULTS.md). So greedy keeps
# the quality up to M = 2000 (seeding 185 s there on 2 busy cores) and afk-mc2 bounds the time above.
GREEDY_MAX_CLUSTERS = 2000

# Lloyd iterations run on at most this many (randomly drawn) points per cluster; all points are then
# assigned to the final centres. Chosen with benchmarks/perf/bench_kmeans.py on CLIP-like 768-d data
# (see benchmarks/perf/RESULTS.md). ``None`` iterates on every point.
DEFAULT_MAX_POINTS_PER_CENTROID = 256


def resolve_init(init: str, k: int) -> str:
    """The seeding ``init`` stands for: ``"auto"`` is ``"k-means++"`` (greedy) up to
    :data:`GREEDY_MAX_CLUSTERS` clusters and ``"afk-mc2"`` above; other names stand for themselves."""
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}.")
    if init == "auto":
        return "k-means++" if k <= GREEDY_MAX_CLUSTERS else "afk-mc2"
    return init


def fit_points(x, rows, normalize: bool, chunk: int) -> np.ndarray:
    """The points k-means fits on (``x[rows]``, or all of ``x``) as one C-contiguous float32 array,
    gathered and (with ``normalize``) scaled a block at a time: no second full-size temporary, and a
    memory map is read once."""
    n = len(x) if rows is None else len(rows)
    if rows is None and not normalize and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        out[start:stop] = unit_rows(block) if normalize else block
    return out


def fit_sample(n: int, k: int, max_points_per_centroid: int | None, seed: int) -> np.ndarray | None:
    """Which of ``n`` points k-means fits its centres on: ``None`` for all of them, else the sorted positions
    of a uniform sample of ``k * max_points_per_centroid`` drawn with ``seed`` (the rule of :func:`kmeans`).

    Depends on ``n`` alone, not on the points, so processes that each hold a part of the points draw the
    same sample (see :mod:`pds_hf.parallel`).

    Example:
        ```py
        >>> fit_sample(10, 2, 2, seed=0).tolist(), fit_sample(4, 2, 2, seed=0)
        ([2, 4, 7, 9], None)
        ```
    """
    if max_points_per_centroid is not None and n > k * max_points_per_centroid:
        return np.sort(np.random.default_rng(seed).choice(n, size=k * max_points_per_centroid, replace=False))
    return None


def train_kmeans(fit_x: np.ndarray, k: int, *, weights=None, seed: int, iterations: int, restarts: int, init: str, gpu):
    """The Lloyd iterations of :func:`kmeans` on the points it fits on (``fit_x``, float32, C-contiguous).

    Returns:
        The best (lowest objective) trained ``faiss.Kmeans``: its ``centroids`` and its ``index`` (the
        centres, searched to assign points).
    """
    import faiss

    init = resolve_init(init, k)
    d = fit_x.shape[1]
    init_method = {
        "random": faiss.ClusteringInitMethod_RANDOM,
        "k-means++": faiss.ClusteringInitMethod_RANDOM,  # unused: the centres are given
        "faiss-k-means++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        "afk-mc2": faiss.ClusteringInitMethod_AFK_MC2,
    }[init]
    fit_w = weights
    best = None
    # faiss restarts (nredo) redraw its own initial centres; with given centres, restart here.
    for run in range(restarts if init == "k-means++" else 1):
        km = faiss.Kmeans(
            d,
            k,
            niter=iterations,
            nredo=1 if init == "k-means++" else restarts,
            seed=seed + run,
            gpu=_use_gpu(gpu),
            init_method=init_method,
            # faiss must not subsample again, nor warn about small clusters: distilled
            # sets ask for many clusters relative to the data on purpose.
            max_points_per_centroid=max(len(fit_x), 1),
            min_points_per_centroid=1,
            verbose=False,
        )
        start = None
        if init == "k-means++":
            size = min(len(fit_x), init_points(k))
            pick = np.sort(np.random.default_rng(seed + run).choice(len(fit_x), size=size, replace=False))
            start = greedy_kmeans_plus_plus(
                fit_x[pick], k, weights=None if fit_w is None else fit_w[pick], seed=seed + run
            )
        objective = km.train(fit_x, weights=fit_w, init_centroids=start)
        if best is None or objective < best[0]:
            best = (objective, km)
    return best[1]


def centre_index(centroids: np.ndarray):
    """A faiss index holding ``centroids`` (``(k, d)`` float32), as :func:`train_kmeans`' ``index`` holds them."""
    import faiss

    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index


def assign(index, x, rows=None, *, normalize: bool, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each point ``x[rows]`` (or of all of ``x``), read ``chunk`` rows at a time.

    Args:
        index: the centres as a faiss index (:func:`centre_index`, or a trained ``faiss.Kmeans.index``).
        x: ``(n, d)`` array or memory map.
        rows: the rows to assign (in this order); ``None`` for all.
        normalize: scale each point to unit length first (as the centres were fitted).
        chunk: points per block.

    Returns:
        ``(labels, squared_distances)``: int64 and float64, one per point.
    """
    n = len(x) if rows is None else len(rows)
    labels = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        block = unit_rows(block) if normalize else np.ascontiguousarray(block, dtype=np.float32)
        dist, lab = index.search(block, 1)
        distances[start:stop], labels[start:stop] = dist[:, 0], lab[:, 0]
    return labels, distances


def init_points(k: int) -> int:
    """How many points greedy k-means++ seeds from: scikit-learn's MiniBatchKMeans seeds from
    ``3 * batch_size`` = 30,000 points; more for large ``k`` so that each centre has ~10 to choose from."""
    return max(30_000, 10 * k)


def greedy_kmeans_plus_plus(x: np.ndarray, k: int, *, weights=None, seed: int = 0, trials: int | None = None):
    """Greedy k-means++ seeding (as scikit-learn's ``kmeans_plusplus``): each new centre is the best,
    by the resulting weighted potential, of ``trials`` (default ``2 + ln k``) candidates drawn with
    probability proportional to weight x squared distance to the nearest centre so far.

    Plain k-means++ (one candidate per step) leaves k-means in visibly worse local optima on CLIP-like
    data at large ``k`` (3-4% higher inertia at k = 1000 after 25 Lloyd iterations).

    Returns:
        ``(k, d)`` float32 initial centres, rows of ``x``.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    trials = trials or 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.choice(n, p=w / w.sum()))
    centres[0] = x[first]
    closest = np.maximum(sq - 2 * (x @ x[first]) + sq[first], 0)
    for c in range(1, k):
        cumulative = np.cumsum(w * closest)
        if cumulative[-1] <= 0:  # every point sits on a centre already (duplicates): any point will do
            candidates = rng.integers(0, n, size=trials)
        else:
            candidates = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
            candidates = np.minimum(candidates, n - 1)
        dist = sq[candidates][:, None] - 2 * (x[candidates] @ x.T) + sq[None, :]
        np.maximum(dist, 0, out=dist)
        np.minimum(dist, closest[None, :], out=dist)
        best = int(np.argmin(dist @ w))
        closest = dist[best]
        centres[c] = x[candidates[best]]
    return centres


def kmeans(
    x,
    k: int,
    *,
    weights=None,
    seed: int = 42,
    iterations: int = 25,
    restarts: int = 1,
    init: str = "auto",
    gpu: bool | None = None,
    max_points_per_centroid: int | None = DEFAULT_MAX_POINTS_PER_CENTROID,
    rows=None,
    chunk: int = 65536,
    normalize: bool = False,
) -> KMeansResult:
    """Weighted k-means with faiss.

    Args:
        x: ``(n, d)`` points: an array or a memory map of any float dtype, read a block at a time
            (only the points fitted are copied, as float32).
        k: number of clusters (at most the number of points clustered).
        weights: ``(n,)`` non-negative point weights (``(len(rows),)`` with ``rows``); ``None`` for
            all ones.
        seed: seeds the initial centres and the subsample.
        iterations: Lloyd iterations per run.
        restarts: runs from different initialisations; the lowest-inertia one is kept.
        init: initial centres: ``"auto"`` (default): ``"k-means++"`` up to
            :data:`GREEDY_MAX_CLUSTERS` clusters, ``"afk-mc2"`` above; ``"k-means++"``: greedy
            k-means++ as scikit-learn (which the reference uses) does it, on :func:`init_points`
            points drawn from those fitted (its cost grows as ``k**2 ln k``);
            ``"faiss-k-means++"``: faiss' plain k-means++ on all fitted points (pds-hf's ``"k-means++"``
            before 2026-11); ``"random"`` (faiss' default: k points drawn at random; often merges
            clusters) or ``"afk-mc2"`` (faiss' MCMC approximation of k-means++).
        gpu: use faiss on GPU (``None``: when faiss-gpu sees one).
        max_points_per_centroid: when there are more than ``k`` times this many points, the
            centres are fitted on a uniform random subsample of that size (each sampled point keeps
            its weight), then every point is assigned to its nearest centre. ``None``: fit on all.
        rows: cluster only these rows of ``x`` (labels are returned in this order); saves copying
            the rows out of a large table.
        chunk: points per block when gathering the fitted points and when assigning, to bound memory.
        normalize: cluster the points scaled to unit L2 norm (cosine geometry) instead of as given;
            the scaled copy is made only of the points fitted and of one assignment block at a time.
            The returned centres and inertia are then in that unit-norm space.

    Example:
        ```py
        >>> x = np.array([[0.0], [0.1], [10.0], [10.2]], dtype=np.float32)
        >>> kmeans(x, 2).labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
        True
        ```
    """
    x = as_table(x)
    rows = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(x) if rows is None else len(rows)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points.")
    resolve_init(init, k)
    if max_points_per_centroid is not None and max_points_per_centroid < 1:
        raise ValueError(f"max_points_per_centroid must be a positive integer or None, got {max_points_per_centroid}.")
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)

    # The subsample is drawn here rather than by faiss, so that only the sample is ever copied.
    sample = fit_sample(n, k, max_points_per_centroid, seed)
    if sample is not None:
        fit_rows = sample if rows is None else rows[sample]
        fit_w = None if w is None else w[sample]
    else:
        fit_rows, fit_w = rows, w
    fit_x = fit_points(x, fit_rows, normalize, chunk)
    km = train_kmeans(fit_x, k, weights=fit_w, seed=seed, iterations=iterations, restarts=restarts, init=init, gpu=gpu)
    del fit_x
    labels, distances = assign(km.index, x, rows, normalize=normalize, chunk=chunk)
    inertia = float(np.dot(distances, w) if w is not None else distances.sum())
    return KMeansResult(centroids=np.asarray(km.centroids, dtype=np.float32), labels=labels, inertia=inertia)


def assign_torch(centroids, x, rows=None, *, normalize: bool, chunk: int = 65536, device=None):
    """:func:`assign` with torch, on ``device`` (a GPU when there is one): each block of rows travels in its
    stored dtype (float16 halves the bytes), is scaled to unit length there in float32 when ``normalize``, and
    meets the centres in one matrix product: the nearest centre maximises ``2 x.c - |c|^2``.

    The labels equal faiss' except where two centres are within float32 rounding of each other (the sums
    run in another order).

    Args:
        centroids: ``(k, d)`` centres.
        x, rows, normalize, chunk: as :func:`assign`.
        device: a torch device; ``None``: CUDA when available, else the CPU.

    Returns:
        ``(labels, squared_distances)``: int64 and float64, one per point.

    Example:
        ```py
        >>> labels, _ = assign_torch(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.1, 2.0]]), normalize=False)
        >>> labels.tolist()
        [0]
        ```
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    centres = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=device)
    centre_norms = (centres * centres).sum(dim=1)
    n = len(x) if rows is None else len(rows)
    labels = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float64)
    tiny = float(np.finfo(np.float32).tiny)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = np.ascontiguousarray(x[start:stop] if rows is None else x[rows[start:stop]])
        points = torch.from_numpy(block).to(device, non_blocking=True).float()
        if normalize:
            points = points / torch.linalg.vector_norm(points, dim=1, keepdim=True).clamp_min(tiny)
        score = 2 * (points @ centres.T) - centre_norms
        best, label = score.max(dim=1)
        squared = ((points * points).sum(dim=1) - best).clamp_min(0)
        labels[start:stop] = label.cpu().numpy()
        distances[start:stop] = squared.double().cpu().numpy()
    return labels, distances
