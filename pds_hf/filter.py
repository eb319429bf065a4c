"""Step 2 of PDS: drop the noisiest pairs, those whose image and caption agree least.

The score of a pair is the cosine similarity of its image and caption embeddings; the fraction
``rm_ratio`` of pairs with the lowest scores is removed before clustering.
"""

from __future__ import annotations

import numpy as np


def normalize(x) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as a new float32 array.

    The package's one L2 normaliser: filtering, clustering, alignment of captions and the baselines
    all use it, on whole arrays or on one block of a memory-mapped table at a time.

    Example:
        ```py
        >>> normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
        array([[0.6, 0.8],
               [0. , 0. ]], dtype=float32)
        ```
    """
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def as_table(array) -> np.ndarray:
    """``array`` as a NumPy array without copying one already in memory or memory-mapped (of any
    float dtype); other inputs (lists, tensors, integer arrays) become float32 arrays."""
    if isinstance(array, np.ndarray) and array.dtype.kind == "f":
        return array
    return np.asarray(array, dtype=np.float32)


def nonfinite_rows(array, *, chunk: int = 65536) -> np.ndarray:
    """Indices of the rows of a 2-D array that hold NaN or inf, read ``chunk`` rows at a time.

    The package's one NaN-row check; a memory-mapped table is never read whole into memory.

    Example:
        ```py
        >>> nonfinite_rows(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, np.inf]]))
        array([1, 2])
        ```
    """
    bad = [
        start + np.flatnonzero(~np.isfinite(array[start : start + chunk]).all(axis=1))
        for start in range(0, len(array), chunk)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def finite_table(array, what: str, *, unit: str = "row") -> np.ndarray:
    """``array`` as a float32 ``(N, d)`` table; a ``ValueError`` naming ``what`` and the first bad ``unit``s if not.

    Example:
        ```py
        >>> finite_table([[0.0, 1.0], [np.nan, 0.0]], "image_embeds", unit="pair")
        Traceback (most recent call last):
        ValueError: image_embeds holds NaN or inf at pair(s) [1]; drop those pairs first.
        ```
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{what} must hold one vector per {unit}, an (N, d) array; got shape {array.shape}.")
    bad = nonfinite_rows(array)
    if bad.size:
        raise ValueError(f"{what} holds NaN or inf at {unit}(s) {bad[:5].tolist()}; drop those {unit}s first.")
    return array


def pair_similarity(image_embeds, text_embeds, pair_image=None, pair_text=None, *, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of each pair's image and text embeddings.

    Args:
        image_embeds, text_embeds: embedding tables (arrays or memory maps, any float dtype).
        pair_image, pair_text: ``(N,)`` rows of the two tables forming each pair; ``None`` means the
            tables are already aligned row by row.
        chunk: pairs per block, to bound memory on millions of pairs.
    """
    image_embeds, text_embeds = as_table(image_embeds), as_table(text_embeds)
    n = len(pair_image) if pair_image is not None else len(image_embeds)
    out = np.empty(n, dtype=np.float32)
    # Rows are normalised block by block (never a normalised copy of a whole table): the same
    # numbers as normalising the tables first, since each row is scaled on its own. Without an index
    # the blocks are contiguous slices, which a memory-mapped table reads sequentially.
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        image_rows = rows if pair_image is None else np.asarray(pair_image[rows])
        text_rows = rows if pair_text is None else np.asarray(pair_text[rows])
        out[rows] = np.einsum("ij,ij->i", normalize(image_embeds[image_rows]), normalize(text_embeds[text_rows]))
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
