"""Image-text retrieval metrics: IR@K (text to image) and TR@K (image to text).

The protocol is the standard one for Flickr30k and MS-COCO (Karpathy test splits): every caption is
a query for its image, every image is a query for its captions, and an image with 5 captions has 5
correct answers when it is the query.

- **IR@K** (text to image): the percentage of captions whose image is among the K images most similar
  to the caption.
- **TR@K** (image to text): the percentage of images with *any* of their captions among the K
  captions most similar to the image.
- **mean**: the mean of the six recalls IR@1/5/10 and TR@1/5/10, the figure papers rank methods by.

Ties are broken against the model: a wrong candidate that scores exactly as high as the right one is
ranked above it. A model whose scores are all equal therefore retrieves nothing (every recall is 0
for K up to the number of wrong candidates), instead of getting credit from the order of the rows.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)
METRIC_NAMES = ("IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10", "mean")


def _as_array(similarity) -> np.ndarray:
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().float().cpu().numpy()
    return np.asarray(similarity, dtype=np.float32)


def retrieval_ranks(similarity, caption_to_image) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the right answer for every caption query and every image query.

    Args:
        similarity: ``(num_images, num_captions)`` scores, higher is more similar (a numpy array or a
            torch tensor).
        caption_to_image: ``(num_captions,)`` index of the image each caption describes.

    Returns:
        ``(caption_ranks, image_ranks)``. ``caption_ranks[j]`` is the number of wrong images scoring at
        least as high as caption ``j``'s image; ``image_ranks[i]`` is the number of captions of *other*
        images scoring at least as high as image ``i``'s best-scoring caption. A rank below K is a hit
        at K.

    Raises:
        ValueError: on a shape mismatch, a caption pointing at no image, an image with no caption, or
            NaN / inf scores.

    Example:
        ```py
        >>> import numpy as np
        >>> from pds_hf.evaluation.metrics import retrieval_ranks
        >>> caption_ranks, image_ranks = retrieval_ranks(np.eye(3), [0, 1, 2])
        >>> caption_ranks.tolist(), image_ranks.tolist()
        ([0, 0, 0], [0, 0, 0])
        ```
    """
    sim = _as_array(similarity)
    owner = np.asarray(caption_to_image, dtype=np.int64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a (num_images, num_captions) matrix, got shape {sim.shape}.")
    num_images, num_captions = sim.shape
    if owner.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image has shape {owner.shape} but the similarity matrix has {num_captions} caption "
            f"columns; give one image index per caption."
        )
    if num_captions and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError(f"caption_to_image holds indices outside [0, {num_images}): each must name an image row.")
    captions_per_image = np.bincount(owner, minlength=num_images)
    if (captions_per_image == 0).any():
        lonely = np.flatnonzero(captions_per_image == 0)[:5].tolist()
        raise ValueError(f"Image(s) {lonely} have no caption; every image of a retrieval test set needs at least one.")
    if not np.isfinite(sim).all():
        raise ValueError("The similarity matrix holds NaN or inf; check the features it was computed from.")

    columns = np.arange(num_captions)
    right = sim[owner, columns]
    # The right image scores >= itself, hence the -1.
    caption_ranks = (sim >= right[None, :]).sum(axis=0) - 1

    best = np.full(num_images, -np.inf, dtype=np.float32)
    np.maximum.at(best, owner, right)
    wrong = sim.copy()
    wrong[owner, columns] = -np.inf
    image_ranks = (wrong >= best[:, None]).sum(axis=1)
    return caption_ranks.astype(np.int64), image_ranks.astype(np.int64)


def retrieval_metrics(similarity, caption_to_image, *, ks=RECALL_KS) -> dict[str, float]:
    """IR@K, TR@K (in percent) and their mean for one similarity matrix.

    Args:
        similarity: ``(num_images, num_captions)`` scores, higher is more similar.
        caption_to_image: ``(num_captions,)`` index of the image each caption describes; an image may
            have several captions, and any of them counts as a match for TR@K.
        ks: the cut-offs K.

    Returns:
        ``{"IR@1": ..., "IR@5": ..., "IR@10": ..., "TR@1": ..., "TR@5": ..., "TR@10": ..., "mean": ...}``
        with ``mean`` the average of the IR and TR values. Ties count against the model (see the
        module docstring).

    Example:
        ```py
        >>> import numpy as np
        >>> from pds_hf.evaluation.metrics import retrieval_metrics
        >>> sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.7]])  # 2 images, 3 captions
        >>> retrieval_metrics(sim, caption_to_image=[0, 0, 1], ks=(1,))
        {'IR@1': 100.0, 'TR@1': 100.0, 'mean': 100.0}
        ```
    """
    caption_ranks, image_ranks = retrieval_ranks(similarity, caption_to_image)
    result = {f"IR@{k}": 100.0 * float(np.mean(caption_ranks < k)) for k in ks}
    result.update({f"TR@{k}": 100.0 * float(np.mean(image_ranks < k)) for k in ks})
    result["mean"] = float(np.mean(list(result.values())))
    return result
