"""Coreset baselines: choose ``num_pairs`` *real* pairs instead of synthesising prototypes.

The paper compares PDS with two classic coreset selections, and a random subset is the floor every
method must beat. Each works on per-pair embeddings (an image with 5 captions is 5 pairs) and returns
indices of distinct pairs:

- ``"random"``: a uniform sample without replacement (seeded).
- ``"herding"``: greedy herding (Welling, 2009; as in iCaRL): repeatedly add the pair that brings the
  mean of the chosen pairs closest to the mean of all pairs.
- ``"kcenter"``: greedy k-center (farthest-point) selection: start from a seeded random pair, then
  repeatedly add the pair farthest from all chosen ones.

By default herding and k-center run on the concatenation of the L2-normalised image and text
embeddings (``modality="both"``), so that both modalities weigh the same whatever their norms (CLIP
image and text features have different scales); ``modality="image"`` or ``"text"`` uses one side.
Ties go to the lowest index. Both cost ``O(num_pairs * N * d)``: each step is one pass over the data
(torch, on the GPU when available).

Example:
    ```py
    >>> import numpy as np
    >>> from pds_hf.baselines import select_pairs
    >>> rng = np.random.default_rng(0)
    >>> image_embeds, text_embeds = rng.normal(size=(1000, 32)), rng.normal(size=(1000, 32))
    >>> select_pairs("herding", image_embeds, text_embeds, 10).shape
    (10,)
    ```
"""

from __future__ import annotations

import numpy as np

from .filter import finite_table, normalize

BASELINES = ("random", "herding", "kcenter")
MODALITIES = ("both", "image", "text")


def _device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def herding(features, num_pairs: int, *, device=None) -> np.ndarray:
    """Greedy herding on ``features`` as given (no normalisation).

    Step ``k`` (1-based) picks the unchosen row ``x`` minimising ``|| mean(all) - (sum(chosen) + x) / k ||``.

    Args:
        features: ``(N, d)`` array.
        num_pairs: how many rows to pick (at most ``N``).
        device: where to compute; CUDA when available.

    Returns:
        ``(num_pairs,)`` int64 row indices, in the order they were picked.

    Example:
        ```py
        >>> from pds_hf.baselines import herding
        >>> herding([[0.0], [1.0], [2.0], [3.0], [10.0]], 3).tolist()  # mean 3.2
        [3, 2, 1]
        ```
    """
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=_device(device))
    check_count(num_pairs, len(x))
    # The sums stay in float64: k * target and chosen_sum grow with k and nearly cancel.
    target = x.double().mean(dim=0)
    squared_norms = (x * x).sum(dim=1)
    chosen_sum = torch.zeros_like(target)
    available = torch.ones(len(x), dtype=torch.bool, device=x.device)
    picked = []
    for k in range(1, num_pairs + 1):
        # || k*target - chosen_sum - x ||^2 = ||c||^2 - 2 c.x + ||x||^2 with c = k*target - chosen_sum;
        # ||c||^2 is the same for every candidate.
        gap = (k * target - chosen_sum).float()
        cost = squared_norms - 2 * (x @ gap)
        cost[~available] = torch.inf
        best = int(torch.argmin(cost))
        picked.append(best)
        available[best] = False
        chosen_sum += x[best].double()
    return np.asarray(picked, dtype=np.int64)


def kcenter(features, num_pairs: int, *, seed: int = 42, first: int | None = None, device=None) -> np.ndarray:
    """Greedy k-center (farthest-point) selection on ``features`` as given, by Euclidean distance.

    Takes ``features``, ``num_pairs`` and ``device`` as :func:`herding` does, and returns the picked rows in
    the same way. The first row is ``first`` when given, else drawn with ``seed``.

    Example:
        ```py
        >>> from pds_hf.baselines import kcenter
        >>> kcenter([[0.0], [1.0], [2.0], [3.0], [10.0]], 4, first=0).tolist()
        [0, 4, 3, 1]
        ```
    """
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=_device(device))
    check_count(num_pairs, len(x))
    if first is None:
        first = int(np.random.default_rng(seed).integers(len(x)))
    if not 0 <= first < len(x):
        raise ValueError(f"first={first} is not a row index of the {len(x)} features.")
    picked = [first]
    # Distance of each row to its nearest chosen row; chosen rows hold -1 so that they are never picked
    # again, even when every remaining distance is 0 (duplicates).
    nearest = torch.linalg.vector_norm(x - x[first], dim=1)
    nearest[first] = -1.0
    for _ in range(num_pairs - 1):
        best = int(torch.argmax(nearest))
        picked.append(best)
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(x - x[best], dim=1))
        nearest[best] = -1.0
    return np.asarray(picked, dtype=np.int64)


def check_count(num_pairs: int, total: int) -> None:
    """A ``ValueError`` unless ``num_pairs`` is a whole number between 1 and ``total``."""
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, (int, np.integer)) or not 1 <= num_pairs <= total:
        raise ValueError(
            f"num_pairs must be an integer between 1 and the number of pairs ({total}); got {num_pairs!r}."
        )


def _embeddings(name: str, array) -> np.ndarray:
    return finite_table(array, name, unit="pair")


def select_pairs(
    method: str, image_embeds, text_embeds, num_pairs: int, *, seed: int = 42, modality: str = "both", device=None
) -> np.ndarray:
    """Choose ``num_pairs`` distinct real pairs with a coreset baseline.

    Args:
        method: ``"random"``, ``"herding"`` or ``"kcenter"``.
        image_embeds: ``(N, d)`` image embedding of each pair (repeated for an image's every caption).
        text_embeds: ``(N, d_text)`` text embedding of each pair.
        num_pairs: how many pairs to choose, between 1 and ``N``.
        seed: seeds ``random`` and the first pair of ``kcenter`` (herding is deterministic).
        modality: ``"both"`` (concatenated L2-normalised image and text embeddings), ``"image"`` or
            ``"text"`` (that side alone, L2-normalised).
        device: where herding and k-center compute; CUDA when available.

    Returns:
        ``(num_pairs,)`` int64 array of distinct pair indices, in the order they were chosen.

    Raises:
        ValueError: on an unknown method or modality, mismatched or non-finite embeddings, or a
            ``num_pairs`` outside ``[1, N]``.

    Example:
        ```py
        >>> from pds_hf.baselines import select_pairs
        >>> chosen = select_pairs("kcenter", image_embeds, text_embeds, num_pairs=100, seed=42)
        >>> subset = ds.select(table.pair_rows[chosen])
        ```
    """
    if method not in BASELINES:
        raise ValueError(f"Unknown baseline {method!r}; choose one of {BASELINES}.")
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; choose one of {MODALITIES}.")
    image_embeds = _embeddings("image_embeds", image_embeds)
    text_embeds = _embeddings("text_embeds", text_embeds)
    if len(image_embeds) != len(text_embeds):
        raise ValueError(
            f"image_embeds has {len(image_embeds)} rows but text_embeds {len(text_embeds)}; give one of each per pair."
        )
    total = len(image_embeds)
    check_count(num_pairs, total)
    if method == "random":
        return np.random.default_rng(seed).choice(total, size=num_pairs, replace=False).astype(np.int64)
    sides = {"both": (image_embeds, text_embeds), "image": (image_embeds,), "text": (text_embeds,)}[modality]
    features = np.concatenate([normalize(side) for side in sides], axis=1)
    if method == "herding":
        return herding(features, num_pairs, device=device)
    return kcenter(features, num_pairs, seed=seed, device=device)
