"""Step 4 of PDS: match each image cluster to one text cluster.

``C[i, j]`` counts the kept pairs whose image is in image cluster ``i`` and whose caption is in text
cluster ``j``; the matching maximises the total count (Hungarian algorithm). Clusters are indexed by
their k-means label, never by position in a table of non-empty clusters, so an empty cluster
cannot shift the others.

The table has ``M x M`` cells but at most one non-zero cell per kept pair, so for large ``M`` it is
built sparse (:func:`sparse_count_table`) and solved on its non-zero cells only
(:func:`align_clusters` on a sparse table): the optimum total is the same as the dense Hungarian's,
and ``M = 50,000`` takes seconds instead of a 20 GB table.
"""

from __future__ import annotations

import numpy as np

# Up to this many clusters the dense Hungarian solver is used on a dense table (at most 32 MB), which
# keeps the matching bit-identical to the reference's ``linear_sum_assignment`` where it runs well.
DENSE_MAX_CLUSTERS = 2000


def count_table(image_labels, text_labels, num_clusters: int, weights=None) -> np.ndarray:
    """``(k, k)`` dense table of (weighted) pair counts per (image cluster, text cluster).

    Builds ``k * k`` cells: for large ``k`` use :func:`sparse_count_table`.

    Example:
        ```py
        >>> count_table([0, 0, 1], [1, 1, 0], 2)
        array([[0., 2.],
               [1., 0.]])
        ```
    """
    image_labels = np.asarray(image_labels, dtype=np.int64)
    text_labels = np.asarray(text_labels, dtype=np.int64)
    k = num_clusters
    flat = np.bincount(image_labels * k + text_labels, weights=weights, minlength=k * k)
    return flat.astype(np.float64).reshape(k, k)


def sparse_count_table(image_labels, text_labels, num_clusters: int, weights=None):
    """The same table as :func:`count_table`, as a ``scipy.sparse.csr_array`` holding only the
    cells with a positive count (memory grows with the number of pairs, not with ``k * k``).

    Example:
        ```py
        >>> sparse_count_table([0, 0, 1], [1, 1, 0], 2).toarray()
        array([[0., 2.],
               [1., 0.]])
        ```
    """
    from scipy.sparse import csr_array

    k = int(num_clusters)
    cell = np.asarray(image_labels, dtype=np.int64) * k + np.asarray(text_labels, dtype=np.int64)
    cells, inverse = np.unique(cell, return_inverse=True)
    totals = np.bincount(inverse, weights=weights, minlength=len(cells)).astype(np.float64)
    positive = totals > 0
    cells, totals = cells[positive], totals[positive]
    return csr_array((totals, (cells // k, cells % k)), shape=(k, k))


def align_clusters(counts) -> tuple[np.ndarray, np.ndarray]:
    """Assignment maximising the summed counts; returns ``(image_cluster, text_cluster)`` arrays.

    Every image cluster is matched to a distinct text cluster (the table is square). ``counts`` may
    be a dense array (solved with the Hungarian algorithm, as the reference does) or a
    ``scipy.sparse`` table of non-negative counts (from :func:`sparse_count_table`). A sparse table
    of at most :data:`DENSE_MAX_CLUSTERS` clusters is densified and solved the dense way; a larger
    one is solved on its non-zero cells (:func:`max_weight_matching`), which gives the same optimum
    total. Image clusters matched with a zero count then take the remaining text clusters in
    ascending order (any order gives the same total).

    Example:
        ```py
        >>> align_clusters(np.array([[0, 5], [3, 1]]))
        (array([0, 1]), array([1, 0]))
        ```
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import issparse

    if issparse(counts):
        if counts.shape[0] > DENSE_MAX_CLUSTERS:
            return max_weight_matching(counts)
        counts = counts.toarray()
    rows, cols = linear_sum_assignment(np.asarray(counts, dtype=np.float64), maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def max_weight_matching(counts) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-total assignment of a square sparse table of non-negative counts.

    The dense problem has an edge for every cell, zero where nothing was counted, so its optimum is
    a maximum-weight matching on the non-zero cells alone, completed by pairing the rows and columns
    left over (their cells add zero). The matching on the non-zero cells is found as a minimum-cost
    *full* matching (LAPJVsp, ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``) of a graph
    that always has one: every image cluster ``i`` may also take a stand-in column "``i``
    unmatched", every text cluster ``j`` a stand-in row "``j`` unmatched", and stand-in row ``j``
    may take stand-in column ``i`` wherever cell ``(i, j)`` is an edge (for when ``i`` and ``j`` are
    matched to each other). Only the real edges carry a gain, so the cheapest full matching of that
    graph is the heaviest matching of the table.

    Returns:
        ``(image_cluster, text_cluster)``: ``arange(k)`` and the text cluster of each image cluster.
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    table = coo_array(counts)
    table.sum_duplicates()
    k = table.shape[0]
    if table.shape != (k, k):
        raise ValueError(f"The count table must be square, got shape {table.shape}.")
    if (table.data < 0).any() or not np.isfinite(table.data).all():
        raise ValueError("The count table must hold finite non-negative counts.")
    edge = table.data > 0
    row, col, gain = table.row[edge].astype(np.int64), table.col[edge].astype(np.int64), table.data[edge]
    # LAPJVsp drops explicit zero weights, so every edge cost is shifted by the same positive
    # constant; a full matching of this graph always has 2k edges, so the shift changes no choice.
    shift = (gain.max() if gain.size else 0.0) + 1.0
    lone = np.arange(k, dtype=np.int64)
    graph = coo_array(
        (
            np.concatenate([shift - gain, np.full(k, shift)]),
            (np.concatenate([row, lone]), np.concatenate([col, k + lone])),
        ),
        shape=(k, 2 * k),
    ).tocsr()
    _, text_of = min_weight_full_bipartite_matching(graph)
    text_of = text_of.astype(np.int64)
    alone = text_of >= k
    taken = np.zeros(k, dtype=bool)
    taken[text_of[~alone]] = True
    text_of[alone] = np.flatnonzero(~taken)
    return np.arange(k, dtype=np.int64), text_of
