"""Step 6 of PDS: the real caption nearest to each text prototype.

It is the prompt for synthesis and the readable text of a distilled pair. The student trains on the
text prototype itself, which is kept beside it.
"""

from __future__ import annotations

import numpy as np

from .filter import normalize


def nearest(queries, candidates, *, chunk: int = 4096) -> np.ndarray:
    """Index of the candidate with the highest cosine similarity to each query (first on ties)."""
    candidates_unit = normalize(candidates)
    queries_unit = normalize(queries)
    best = np.empty(len(queries_unit), dtype=np.int64)
    for start in range(0, len(queries_unit), chunk):
        scores = queries_unit[start:start + chunk] @ candidates_unit.T
        best[start:start + chunk] = np.argmax(scores, axis=1)
    return best


def retrieve_captions(text_prototypes, text_embeds, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """The caption nearest to each text prototype, and its index in ``texts``.

    Example:
        ```py
        >>> retrieve_captions(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0], [0.1, 0.9]]), ["a", "b"])
        (['b'], array([1]))
        ```
    """
    index = nearest(text_prototypes, text_embeds)
    return [texts[i] for i in index], index
