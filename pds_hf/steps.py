"""Steps 2-6 of PDS, or a baseline's choice, on one process: arrays in, the select stage's arrays out.

:func:`choose` is what the select stage (:mod:`pds_hf.stages`) runs on one process; :mod:`pds_hf.parallel` runs
the same on every process, each on its slice, and returns the same dict.

Example:
    ```py
    >>> from pds_hf.steps import choose
    >>> chosen = choose(pds_hf.DistillConfig(num_pairs=10), table, image_embeds, text_embeds)
    >>> chosen["caption_index"][:3], chosen["support"][:3]
    ```
"""

from __future__ import annotations

import numpy as np

from .caption import nearest, retrieve_captions
from .prototypes import prototypes_from_embeddings
from .synthesize import retrieve_scored_images


def choose(config, table, image_embeds, text_embeds) -> dict:
    """Steps 2-6 (or a baseline's choice of real pairs) as plain arrays, ready to cache.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig`.
        table: the :class:`~pds_hf.inputs.PairTable` the embeddings belong to.
        image_embeds, text_embeds: one row per distinct image and caption of ``table``.

    Returns:
        A dict of arrays (prototypes, supports, clusters, the chosen captions and real images) and, for PDS,
        ``labels``: each pair's image and text cluster.
    """
    if config.method == "pds":
        protos = prototypes_from_embeddings(
            image_embeds,
            text_embeds,
            config.num_pairs,
            rm_ratio=config.rm_ratio,
            seed=config.seed,
            empty=config.empty,
            image_index=table.pair_image,
            text_index=table.pair_text,
            kmeans_iterations=config.kmeans_iterations,
            kmeans_restarts=config.kmeans_restarts,
            kmeans_init=config.kmeans_init,
            normalize=config.normalize,
        )
        _, caption_index = retrieve_captions(protos.text_embeds, text_embeds, table.texts)
        # The real images are chosen here, where the embeddings are, so that step 7 needs none of them.
        if config.synthesis == "retrieve-scored":
            image_index = retrieve_scored_images(image_embeds, protos.image_embeds, protos.text_embeds)
        else:
            image_index = nearest(protos.image_embeds, image_embeds)
        return dict(
            image_embeds=protos.image_embeds,
            text_embeds=protos.text_embeds,
            image_index=np.asarray(image_index, dtype=np.int64),
            support=np.asarray(protos.support, dtype=np.int64),
            image_cluster=protos.image_cluster,
            text_cluster=protos.text_cluster,
            caption_index=caption_index,
            pairs=np.zeros(0, np.int64),
            kept=np.int64(protos.kept.sum()),
            num_empty=np.int64(protos.num_empty),
            labels=dict(image_labels=protos.image_labels, text_labels=protos.text_labels),
        )
    from .baselines import select_pairs

    chosen = np.asarray(
        select_pairs(
            config.method,
            image_embeds[table.pair_image],
            text_embeds[table.pair_text],
            config.num_pairs,
            seed=config.seed,
        ),
        dtype=np.int64,
    )
    return baseline_dict(table, image_embeds, text_embeds, chosen)


def baseline_dict(table, image_embeds, text_embeds, chosen) -> dict:
    """The select stage's arrays for a baseline that chose the pairs ``chosen`` (real pairs: support 1, no
    clusters)."""
    return dict(
        image_embeds=image_embeds[table.pair_image[chosen]],
        image_index=table.pair_image[chosen],
        text_embeds=text_embeds[table.pair_text[chosen]],
        support=np.ones(len(chosen), np.int64),
        image_cluster=np.full(len(chosen), -1, np.int64),
        text_cluster=np.full(len(chosen), -1, np.int64),
        caption_index=table.pair_text[chosen],
        pairs=chosen,
        kept=np.int64(-1),
        num_empty=np.int64(-1),
    )
