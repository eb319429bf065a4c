"""Step 6 of PDS: the real caption nearest to each text prototype.

It is the prompt for synthesis and the readable text of a distilled pair. The student trains on the
text prototype itself, which is kept beside it.
"""

from __future__ import annotations

import numpy as np

from .filter import as_table, normalize


def nearest(queries, candidates, *, chunk: int = 65536) -> np.ndarray:
    """Index of the candidate with the highest cosine similarity to each query (first on ties).

    The candidates are read ``chunk`` rows at a time (a memory-mapped table is never loaded whole):
    each block is normalised and searched with faiss for its best candidate per query, and a query
    keeps a later block's candidate only when it scores strictly higher. Memory is that of one block
    and the queries, whatever the number of candidates.

    Args:
        queries: ``(M, d)`` array.
        candidates: ``(N, d)`` array or memory map, any float dtype.
        chunk: candidates per block.

    Example:
        ```py
        >>> nearest(np.array([[0.0, 1.0], [1.0, 0.1]]), np.array([[1.0, 0.0], [0.1, 0.9], [0.0, 5.0]]))
        array([2, 0])
        ```
    """
    return nearest_scored(queries, candidates, chunk=chunk)[0]


def nearest_scored(queries, candidates, *, start: int = 0, stop: int | None = None, chunk: int = 65536):
    """:func:`nearest` over the candidate rows ``[start, stop)`` only, with the best cosine of each query.

    The rows are read in blocks of ``chunk`` from ``start``. Processes that each search their own range of
    rows find the overall best by keeping the highest score, ties to the lower index (see
    :mod:`pds_hf.parallel`).

    Returns:
        ``(index, score)``: ``(M,)`` int64 global row of each query's best candidate and its float32 cosine
        (``-inf`` and 0 when the range is empty).
    """
    import faiss

    candidates = as_table(candidates)
    queries_unit = normalize(queries)
    if len(candidates) == 0:
        raise ValueError("No candidates to search: the embedding table is empty.")
    if candidates.ndim != 2 or candidates.shape[1] != queries_unit.shape[1]:
        raise ValueError(
            f"Candidates of shape {candidates.shape} cannot be compared with queries of shape "
            f"{queries_unit.shape}: both need one row per item and the same dimension."
        )
    stop = len(candidates) if stop is None else min(stop, len(candidates))
    best = np.zeros(len(queries_unit), dtype=np.int64)
    best_score = np.full(len(queries_unit), -np.inf, dtype=np.float32)
    for begin in range(start, stop, chunk):
        scores, index = faiss.knn(
            queries_unit, normalize(candidates[begin : min(begin + chunk, stop)]), 1, metric=faiss.METRIC_INNER_PRODUCT
        )
        better = scores[:, 0] > best_score
        best[better] = begin + index[better, 0]
        best_score[better] = scores[better, 0]
    return best, best_score


def retrieve_captions(
    text_prototypes, text_embeds, texts: list[str], *, chunk: int = 65536
) -> tuple[list[str], np.ndarray]:
    """The caption nearest (cosine) to each text prototype, and its index in ``texts``.

    Args:
        text_prototypes: ``(M, d)`` text prototypes.
        text_embeds: ``(N, d)`` embedding of each caption in ``texts``; a memory map is read a block
            at a time (see :func:`nearest`).
        texts: the ``N`` captions.
        chunk: captions per block.

    Example:
        ```py
        >>> retrieve_captions(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0], [0.1, 0.9]]), ["a", "b"])
        (['b'], array([1]))
        ```
    """
    index = nearest(text_prototypes, text_embeds, chunk=chunk)
    return [texts[i] for i in index], index
