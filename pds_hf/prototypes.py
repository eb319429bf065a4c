"""Step 5 of PDS: one image prototype and one text prototype per matched pair of clusters.

For a matched (image cluster ``i``, text cluster ``j``), the prototypes are the mean image embedding
and the mean text embedding over the kept pairs that fall in both clusters (not the k-means centres).
When no pair falls in both, ``empty="centroid"`` uses the two k-means centres (``support`` 0) and
``empty="drop"`` leaves that match out; the result never holds NaN. Prototypes are ordered by the
cosine similarity of their image and text sides, most coherent first.

:func:`prototypes_from_embeddings` runs steps 2-5 on embeddings the user already has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .align import align_clusters, sparse_count_table
from .cluster import DEFAULT_MAX_POINTS_PER_CENTROID, kmeans
from .filter import as_table, filter_pairs, nonfinite_rows, pair_similarity
from .filter import normalize as unit_rows

logger = logging.getLogger(__name__)

EMPTY_POLICIES = ("centroid", "drop")


@dataclass
class Prototypes:
    """The outcome of steps 2-5.

    Attributes:
        image_embeds: ``(M, d)`` image prototypes.
        text_embeds: ``(M, d)`` text prototypes.
        support: ``(M,)`` int64 number of kept pairs each prototype averages (each pair counted
            ``weights[p]`` times); 0 where the fallback was used because the two clusters share no pair.
        image_cluster: ``(M,)`` image k-means label of each prototype.
        text_cluster: ``(M,)`` text k-means label of each prototype.
        similarity: ``(M,)`` cosine similarity of each image prototype to its text prototype
            (descending: the order of the prototypes).
        kept: ``(N,)`` per input pair, whether it survived filtering.
        pair_similarity: ``(N,)`` per input pair, the image-text cosine similarity used to filter.
        image_labels: ``(N,)`` per input pair, its image cluster (-1 where filtered out).
        text_labels: ``(N,)`` per input pair, its text cluster (-1 where filtered out).
        image_centroids: ``(k, d)`` image k-means centres (unit-norm space with ``normalize=True``).
        text_centroids: ``(k, d)`` text k-means centres (unit-norm space with ``normalize=True``).
        empty: the policy applied to empty intersections (``"centroid"`` or ``"drop"``).
        num_empty: how many matched cluster pairs had no pair in common.
        inertia: ``(image, text)`` k-means inertia.
    """

    image_embeds: np.ndarray
    text_embeds: np.ndarray
    support: np.ndarray
    image_cluster: np.ndarray
    text_cluster: np.ndarray
    similarity: np.ndarray
    kept: np.ndarray
    pair_similarity: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray
    image_centroids: np.ndarray
    text_centroids: np.ndarray
    empty: str
    num_empty: int
    inertia: tuple[float, float]

    def __len__(self) -> int:
        return len(self.support)


def distinct_rows(embeds, rows, at_most: int, *, chunk: int = 65536) -> int:
    """How many distinct vectors ``embeds[rows]`` holds, counted a block at a time up to ``at_most``
    (the scan stops there, so on ordinary data it reads one block)."""
    seen: set[bytes] = set()
    for start in range(0, len(rows), chunk):
        block = np.ascontiguousarray(embeds[rows[start : start + chunk]])
        keys = np.unique(block.view(np.dtype((np.void, block.dtype.itemsize * block.shape[1]))).ravel())
        if not seen and len(keys) >= at_most:
            return len(keys)
        seen.update(key.tobytes() for key in keys)
        if len(seen) >= at_most:
            break
    return len(seen)


def check_filled(filled: np.ndarray, what: str, normalize: bool) -> None:
    """Refuse a clustering where a centre got no point (``filled[c]`` False): the data hold fewer distinct points
    (or, with ``normalize``, directions) than clusters asked for."""
    if not filled.all():
        k = len(filled)
        raise ValueError(
            f"k-means could form only {int(filled.sum())} of num_pairs={k} {what} clusters: the {what} "
            f"embeddings hold fewer than {k} different "
            + (
                "directions (rows that are multiples of each other are one point once scaled to unit length)"
                if normalize
                else "points"
            )
            + f". Lower num_pairs to at most {int(filled.sum())}."
        )


def _cluster_side(
    embeds,
    pair_index,
    kept,
    weights,
    k,
    *,
    what,
    seed,
    iterations,
    restarts,
    init,
    gpu,
    max_points_per_centroid,
    normalize,
    chunk,
):
    """Cluster the distinct rows of ``embeds`` used by kept pairs; return per-pair labels and the fit."""
    counts = np.bincount(pair_index[kept], weights=weights[kept], minlength=len(embeds))
    used = np.flatnonzero(counts > 0)
    if len(used) < k:
        raise ValueError(
            f"num_pairs={k} is more than the {len(used)} distinct {what}s left after filtering; "
            f"lower num_pairs (or rm_ratio)."
        )
    # k clusters need k distinct points: identical rows (captions that differ only in case often
    # encode to one vector) would leave clusters empty and their prototypes undefined.
    distinct = distinct_rows(embeds, used, k, chunk=chunk)
    if distinct < k:
        raise ValueError(
            f"num_pairs={k} is more than the {distinct} distinct {what} embeddings left after filtering: "
            f"the {len(used)} {what}s in use encode to only {distinct} different vectors. Lower num_pairs to "
            f"at most {distinct}, or remove the duplicate {what}s."
        )
    # k-means reads the used rows in place (``rows``) rather than from a copy of them.
    fit = kmeans(
        embeds,
        k,
        weights=counts[used],
        seed=seed,
        iterations=iterations,
        restarts=restarts,
        init=init,
        gpu=gpu,
        max_points_per_centroid=max_points_per_centroid,
        rows=None if len(used) == len(embeds) else used,
        normalize=normalize,
        chunk=chunk,
    )
    filled = np.bincount(fit.labels, minlength=k) > 0
    check_filled(filled, what, normalize)
    label_of_row = np.full(len(embeds), -1, dtype=np.int64)
    label_of_row[used] = fit.labels
    labels = np.where(kept, label_of_row[pair_index], -1)
    return labels, fit


def group_sums(embeds, pair_index, group, weights, num_groups, *, chunk: int = 16384):
    """Weighted float64 sums of ``embeds[pair_index]`` per group id, and the summed weights (pairs with
    group -1 ignored).

    Sums a block of pairs at a time, so that no float64 copy of the table is made. Sums over parts of the
    pairs add up to the sums over all of them (exactly for the weights, which are whole numbers), which is
    how :mod:`pds_hf.parallel` combines processes.

    Returns:
        ``(sums, totals)``: ``(num_groups, d)`` and ``(num_groups,)`` float64.
    """
    from scipy.sparse import csr_matrix

    member = np.flatnonzero(group >= 0)
    totals = np.bincount(group[member], weights=weights[member], minlength=num_groups).astype(np.float64)
    sums = np.zeros((num_groups, embeds.shape[1]), dtype=np.float64)
    for start in range(0, len(member), chunk):
        block = member[start : start + chunk]
        rows, inverse = np.unique(pair_index[block], return_inverse=True)
        matrix = csr_matrix((weights[block], (group[block], inverse)), shape=(num_groups, len(rows)))
        sums += matrix @ embeds[rows].astype(np.float64)
    return sums, totals


def _group_means(embeds, pair_index, group, weights, num_groups, *, chunk: int = 16384):
    """Weighted mean of ``embeds[pair_index]`` per group id (NaN for an empty group), and the totals."""
    sums, totals = group_sums(embeds, pair_index, group, weights, num_groups, chunk=chunk)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / totals[:, None]
    return means, totals


def matched_groups(kept, image_labels, text_labels, image_cluster, text_cluster, k: int) -> np.ndarray:
    """Per pair, the index of the match (``image_cluster[m]``, ``text_cluster[m]``) whose two clusters hold it,
    or -1 (filtered out, or its caption is not in the text cluster matched to its image cluster).

    Works on any subset of the pairs (each pair is decided by its own labels).
    """
    text_match_of = np.empty(k, dtype=np.int64)
    text_match_of[image_cluster] = text_cluster
    match_of_image = np.empty(k, dtype=np.int64)
    match_of_image[image_cluster] = np.arange(k)
    in_match = kept & (text_labels == text_match_of[np.maximum(image_labels, 0)])
    return np.where(in_match, match_of_image[np.maximum(image_labels, 0)], -1)


def finish_prototypes(
    image_protos, text_protos, support, image_cluster, text_cluster, *, empty, normalize, centroids, cluster_means
):
    """The end of step 5: fill or drop the matches that share no pair, order by image-text cosine.

    Args:
        image_protos, text_protos: ``(k, d)`` float64 means per match (NaN where ``support`` is 0).
        support: ``(k,)`` summed weights per match.
        image_cluster, text_cluster: ``(k,)`` the matched clusters.
        empty: ``"centroid"`` or ``"drop"``.
        normalize: whether the clusters were fitted on unit-length rows (the fallback is then the raw mean of
            each matched cluster's kept pairs, from ``cluster_means``).
        centroids: ``(image_centroids, text_centroids)``.
        cluster_means: called with no argument when needed, returns ``(image_means, text_means)``: ``(k, d)``
            means of the kept pairs per image cluster and per text cluster (called on every process together).

    Returns:
        ``(image_embeds, text_embeds, support, image_cluster, text_cluster, similarity, num_empty)``.
    """
    k = len(support)
    is_empty = support <= 0
    num_empty = int(is_empty.sum())
    if num_empty:
        if empty == "centroid" and normalize:
            # The centres live on the unit sphere; the prototypes must stay in the encoder's raw space.
            image_means, text_means = cluster_means()
            image_protos[is_empty] = image_means[image_cluster[is_empty]]
            text_protos[is_empty] = text_means[text_cluster[is_empty]]
        elif empty == "centroid":
            image_protos[is_empty] = centroids[0][image_cluster[is_empty]]
            text_protos[is_empty] = centroids[1][text_cluster[is_empty]]
        if empty == "centroid":
            logger.info("%d of %d matched clusters share no pair; used their k-means centres.", num_empty, k)
        else:
            logger.warning(
                "%d of %d matched clusters share no pair and were dropped; %d prototypes remain.",
                num_empty,
                k,
                k - num_empty,
            )
    keep = ~is_empty if empty == "drop" else np.ones(k, dtype=bool)
    image_protos, text_protos = image_protos[keep].astype(np.float32), text_protos[keep].astype(np.float32)
    proto_similarity = np.einsum("ij,ij->i", unit_rows(image_protos), unit_rows(text_protos))
    order = np.argsort(-proto_similarity, kind="stable")
    return (
        image_protos[order],
        text_protos[order],
        # Sums of whole-number weights in float64: exact below 2**53, so the cast rounds nothing.
        support[keep][order].astype(np.int64),
        image_cluster[keep][order],
        text_cluster[keep][order],
        proto_similarity[order],
        num_empty,
    )


def prototypes_from_embeddings(
    image_embeds,
    text_embeds,
    num_pairs: int,
    *,
    rm_ratio: float = 0.2,
    seed: int = 42,
    weights=None,
    empty: str = "centroid",
    image_index=None,
    text_index=None,
    kmeans_iterations: int = 25,
    kmeans_restarts: int = 1,
    kmeans_init: str = "auto",
    kmeans_max_points_per_centroid: int | None = DEFAULT_MAX_POINTS_PER_CENTROID,
    gpu: bool | None = None,
    normalize: bool = True,
    chunk: int = 65536,
) -> Prototypes:
    """Steps 2-5 of PDS (filter, cluster each modality, align, prototypes) on precomputed embeddings.

    Args:
        image_embeds: ``(N, d)`` image embedding of each pair, or, with ``image_index``, a table of
            distinct images. An array or a memory map (``np.load(..., mmap_mode="r")``, float32 or
            float16): every step reads it a block of rows at a time, never whole.
        text_embeds: ``(N, d)`` text embedding of each pair, or, with ``text_index``, a table of
            distinct captions.
        num_pairs: ``M``, the number of clusters per modality and of prototypes.
        rm_ratio: fraction of pairs with the lowest image-text cosine similarity to drop.
        seed: k-means seed.
        weights: ``(N,)`` multiplicity of each pair, a whole number (default 1): filtering,
            clustering, the count table and the prototype means count pair ``p`` ``weights[p]`` times.
        empty: what to do when matched clusters share no pair: ``"centroid"`` (the k-means
            centres, as the reference does for M < 300) or ``"drop"`` (as the paper says).
        image_index: ``(N,)`` row of ``image_embeds`` of each pair, so that each image is stored once.
        text_index: ``(N,)`` row of ``text_embeds`` of each pair.
        kmeans_iterations, kmeans_restarts, kmeans_init, kmeans_max_points_per_centroid: faiss
            k-means settings (see :func:`pds_hf.cluster.kmeans`).
        gpu: run k-means on GPU (``None``: when faiss-gpu sees one).
        normalize: cluster each modality on its embeddings scaled to unit L2 norm (cosine geometry,
            which the filter and caption steps use too); ``False`` clusters the raw embeddings, as
            the reference code does. A contrastive encoder's loss leaves each embedding's length
            free, and on raw embeddings long or short outliers form clusters of their own that no
            text cluster matches (see benchmarks/quality/README.md). Only the clustering changes:
            prototypes stay means of the raw embeddings, and an empty intersection's fallback is
            then the raw mean of each matched cluster's kept pairs.
        chunk: rows per block when reading the embeddings (the prototype sums, in float64, use a
            quarter of that). Memory beyond the points k-means fits on is a few blocks and a few
            numbers per pair, whatever ``N``.

    Returns:
        :class:`Prototypes`, with per-pair ``kept``, ``image_labels`` and ``text_labels``.

    Example:
        ```py
        >>> rng = np.random.default_rng(0)
        >>> images = rng.normal(size=(1000, 16)).astype("float32")
        >>> texts = images + 0.1 * rng.normal(size=(1000, 16)).astype("float32")
        >>> protos = prototypes_from_embeddings(images, texts, num_pairs=10)
        >>> protos.image_embeds.shape, int(protos.kept.sum())
        ((10, 16), 800)
        ```
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
    if not isinstance(num_pairs, (int, np.integer)) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}.")
    image_embeds, text_embeds = as_table(image_embeds), as_table(text_embeds)
    for name, array in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {array.shape}.")
        bad = nonfinite_rows(array, chunk=chunk)
        if bad.size:
            raise ValueError(
                f"{name} has NaN or inf in {bad.size} row(s), first {bad[:5].tolist()}; fix or drop those rows."
            )
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image_embeds has {image_embeds.shape[1]} dimensions, text_embeds {text_embeds.shape[1]}.")
    n = len(image_index) if image_index is not None else len(image_embeds)
    image_index = np.arange(n) if image_index is None else np.asarray(image_index, dtype=np.int64)
    text_index = np.arange(n) if text_index is None else np.asarray(text_index, dtype=np.int64)
    if len(text_index) != n:
        raise ValueError(f"{n} image rows but {len(text_index)} text rows: every pair needs both.")
    if image_index.size and (image_index.min() < 0 or image_index.max() >= len(image_embeds)):
        raise ValueError("image_index points outside image_embeds.")
    if text_index.size and (text_index.min() < 0 or text_index.max() >= len(text_embeds)):
        raise ValueError("text_index points outside text_embeds.")
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"weights must hold one number per pair, {n} in all; got shape {weights.shape}.")
    # Whole numbers, so that ``support`` counts pairs exactly (int64, nothing rounded).
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0) | (weights != np.floor(weights)))
    if bad.size:
        raise ValueError(
            f"weights must be non-negative whole numbers (how many times each pair counts); "
            f"{bad.size} are not, first at pair(s) {bad[:5].tolist()}."
        )

    similarity = pair_similarity(image_embeds, text_embeds, image_index, text_index, chunk=chunk)
    kept = filter_pairs(similarity, rm_ratio, weights) & (weights > 0)
    if kept.sum() < num_pairs:
        raise ValueError(
            f"num_pairs={num_pairs} is more than the {int(kept.sum())} pairs left after filtering "
            f"{n} pairs with rm_ratio={rm_ratio}; lower num_pairs or rm_ratio."
        )
    k = int(num_pairs)
    side = dict(
        kept=kept,
        weights=weights,
        k=k,
        seed=seed,
        iterations=kmeans_iterations,
        restarts=kmeans_restarts,
        init=kmeans_init,
        gpu=gpu,
        max_points_per_centroid=kmeans_max_points_per_centroid,
        normalize=normalize,
        chunk=chunk,
    )
    image_labels, image_fit = _cluster_side(image_embeds, image_index, what="image", **side)
    text_labels, text_fit = _cluster_side(text_embeds, text_index, what="caption", **side)

    # Sparse: at most one cell per kept pair, never k * k (align_clusters densifies small tables).
    counts = sparse_count_table(image_labels[kept], text_labels[kept], k, weights=weights[kept])
    image_cluster, text_cluster = align_clusters(counts)

    # Each kept pair belongs to the match of its image cluster if its caption is in the matched text cluster.
    group = matched_groups(kept, image_labels, text_labels, image_cluster, text_cluster, k)
    sums_chunk = max(1, chunk // 4)
    image_protos, support = _group_means(image_embeds, image_index, group, weights, k, chunk=sums_chunk)
    text_protos, _ = _group_means(text_embeds, text_index, group, weights, k, chunk=sums_chunk)

    def cluster_means():
        image_means, _ = _group_means(image_embeds, image_index, image_labels, weights, k, chunk=sums_chunk)
        text_means, _ = _group_means(text_embeds, text_index, text_labels, weights, k, chunk=sums_chunk)
        return image_means, text_means

    image_protos, text_protos, support, image_cluster, text_cluster, proto_similarity, num_empty = finish_prototypes(
        image_protos,
        text_protos,
        support,
        image_cluster,
        text_cluster,
        empty=empty,
        normalize=normalize,
        centroids=(image_fit.centroids, text_fit.centroids),
        cluster_means=cluster_means,
    )
    return Prototypes(
        image_embeds=image_protos,
        text_embeds=text_protos,
        support=support,
        image_cluster=image_cluster,
        text_cluster=text_cluster,
        similarity=proto_similarity,
        kept=kept,
        pair_similarity=similarity,
        image_labels=image_labels,
        text_labels=text_labels,
        image_centroids=image_fit.centroids,
        text_centroids=text_fit.centroids,
        empty=empty,
        num_empty=num_empty,
        inertia=(image_fit.inertia, text_fit.inertia),
    )
