"""Step 4 of PDS: match each image cluster to one text cluster.

``C[i, j]`` counts the kept pairs whose image is in image cluster ``i`` and whose caption is in text
cluster ``j``; the matching maximises the total count (Hungarian algorithm). Clusters are indexed by
their k-means label, never by position in a table of non-empty clusters, so an empty cluster
cannot shift the others.
"""

from __future__ import annotations

import numpy as np


def count_table(image_labels, text_labels, num_clusters: int, weights=None) -> np.ndarray:
    """``(k, k)`` table of (weighted) pair counts per (image cluster, text cluster).

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


def align_clusters(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment maximising the summed counts; returns ``(image_cluster, text_cluster)`` arrays.

    Every image cluster is matched to a distinct text cluster (the table is square).

    Example:
        ```py
        >>> align_clusters(np.array([[0, 5], [3, 1]]))
        (array([0, 1]), array([1, 0]))
        ```
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.asarray(counts, dtype=np.float64), maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)
