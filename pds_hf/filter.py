"""Step 2 of PDS: drop the noisiest pairs, those whose image and caption agree least.

The score of a pair is the cosine similarity of its image and caption embeddings; the fraction
``rm_ratio`` of pairs with the lowest scores is removed before clustering.
"""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def pair_similarity(image_embeds, text_embeds, pair_image=None, pair_text=None, *, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of each pair's image and text embeddings.

    Args:
        image_embeds, text_embeds: embedding tables.
        pair_image, pair_text: ``(N,)`` rows of the two tables forming each pair; ``None`` means the
            tables are already aligned row by row.
        chunk: pairs per block, to bound memory on millions of pairs.
    """
    image_embeds, text_embeds = np.asarray(image_embeds), np.asarray(text_embeds)
    n = len(pair_image) if pair_image is not None else len(image_embeds)
    pair_image = np.arange(n) if pair_image is None else np.asarray(pair_image)
    pair_text = np.arange(n) if pair_text is None else np.asarray(pair_text)
    out = np.empty(n, dtype=np.float32)
    # Rows are normalised block by block (never a normalised copy of a whole table): the same
    # numbers as normalising the tables first, since each row is scaled on its own.
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = np.einsum("ij,ij->i", normalize(image_embeds[pair_image[start:stop]]),
                                    normalize(text_embeds[pair_text[start:stop]]))
    return out


def filter_pairs(similarity: np.ndarray, rm_ratio: float, weights=None) -> np.ndarray:
    """Mask of the pairs kept after removing the lowest-similarity fraction ``rm_ratio``.

    With unit weights this removes exactly ``floor(rm_ratio * N)`` pairs. With ``weights`` (a pair
    standing for several identical ones), pairs are removed, lowest first, while the removed weight
    stays within ``rm_ratio`` of the total. Ties are broken by position: the earlier pair goes first.

    Example:
        ```py
        >>> filter_pairs(np.array([0.9, 0.1, 0.5, 0.3, 0.7]), rm_ratio=0.4)
        array([ True, False,  True, False,  True])
        ```
    """
    if not 0.0 <= rm_ratio < 1.0:
        raise ValueError(f"rm_ratio must be in [0, 1), got {rm_ratio}.")
    similarity = np.asarray(similarity)
    weights = np.ones(len(similarity)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(similarity, kind="stable")
    removed_weight = np.cumsum(weights[order])
    # A small tolerance so that rm_ratio * N landing on an integer is not lost to rounding.
    n_removed = int(np.searchsorted(removed_weight, rm_ratio * weights.sum() * (1 + 1e-9), side="right"))
    kept = np.ones(len(similarity), dtype=bool)
    kept[order[:n_removed]] = False
    return kept
