"""What a run returns: the distilled ``datasets.Dataset``, its run record and its fingerprint.

Example:
    ```py
    >>> small = pds_hf.distill(ds, num_pairs=10)
    >>> small.column_names
    ['image', 'caption', 'image_embedding', 'text_embedding', 'support', 'image_cluster', 'text_cluster', 'source_row']
    >>> pds_hf.metadata(small)["kept_pairs"]
    ```
"""

from __future__ import annotations

import numpy as np

from .cache import fingerprint
from .schema import output_features, run_record_info

# The version of what a run returns (its columns and how they are made from the stages): part of its fingerprint.
OUTPUT_VERSION = 2  # 2: the source_row column


def library_versions() -> dict:
    """The installed versions of pds-hf and the libraries whose code changes its results, for the run record."""
    import importlib.metadata as md

    out = {}
    for name in ("pds-hf", "datasets", "transformers", "diffusers", "torch", "faiss-cpu", "faiss-gpu"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def output_fingerprint(selection_key: str | None, images) -> str | None:
    """The fingerprint of the distilled dataset, or None when it cannot be known.

    Derived, as datasets derives a transform's, from what makes the result: the selection's key (source
    fingerprint, encoder, steps 2-6 settings, stage versions) and ``images``, how step 7 makes the images (the
    synthesize stage's key, or the synthesis and image size). None (datasets then draws a random one) when a part
    has no identity: a loaded model without a ``fingerprint``.
    """
    if selection_key is None or images is None:
        return None
    return fingerprint("distilled", OUTPUT_VERSION, selection_key, images)


def source_rows(config, selection) -> np.ndarray:
    """The source row of each pair's image where it is a real one, else -1.

    A baseline's pair is a real pair: its row. ``synthesis="retrieve"`` / ``"retrieve-scored"`` take the real image
    chosen for each prototype: the (first) row that holds it. unCLIP images and ``synthesis="none"`` have no row.
    For a stream, rows count from its start in stream order.
    """
    from .synthesize import REAL_IMAGE_METHODS

    table = selection.table
    if config.method != "pds":
        return np.asarray(table.pair_rows[selection.pairs], dtype=np.int64)
    if config.synthesis in REAL_IMAGE_METHODS:
        return np.asarray(table.image_rows[selection.image_index], dtype=np.int64)
    return np.full(len(selection), -1, dtype=np.int64)


def distilled_dataset(config, selection, images: list, *, record: dict, fingerprint: str | None):
    """The distilled ``Dataset``: one row per selected pair, with the run record in its info.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig`.
        selection: what steps 2-6 chose (:class:`~pds_hf.stages.Selection`).
        images: one image (or None) per pair, from step 7.
        record: the run record (see :func:`run_record`).
        fingerprint: the dataset's fingerprint (:func:`output_fingerprint`; None: datasets draws one).
    """
    from datasets import Dataset

    features = output_features(selection.image_embeds.shape[1])
    made = Dataset.from_dict(
        {
            "image": images,
            "caption": selection.captions,
            "image_embedding": np.asarray(selection.image_embeds, dtype=np.float32),
            "text_embedding": np.asarray(selection.text_embeds, dtype=np.float32),
            "support": selection.support,
            "image_cluster": selection.image_cluster,
            "text_cluster": selection.text_cluster,
            "source_row": source_rows(config, selection),
        },
        features=features,
        info=run_record_info(record, features),
    )
    # Two runs that make the same set give it the same fingerprint, so datasets caches what follows (a map).
    return Dataset(made.data, info=made.info, split=made.split, fingerprint=fingerprint)


def run_record(
    config, selection, *, source: dict, encoder: str, encoder_revision=None, stages=None, world: int = 1, **extra
) -> dict:
    """How a distilled set was made: what ``pds_hf.metadata(small)`` returns and the card shows.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig`.
        selection: what steps 2-6 chose.
        source: what was read (dataset, split, fingerprint, counts).
        encoder: the encoder's name (or where the embeddings came from); ``encoder_revision`` its revision.
        stages: the :class:`~pds_hf.cache.StageTimer` of the run; ``world``: its number of processes.
        **extra: more entries.
    """
    settings = config.to_dict()
    pds = config.method == "pds"
    return {
        "config": settings,
        "source": source,
        "models": {
            "encoder": encoder,
            "encoder_revision": encoder_revision,
            "unclip": settings["unclip_model"] if config.synthesis == "unclip" and pds else None,
            "unclip_revision": config.unclip_revision,
        },
        "kept_pairs": int(selection.kept) if pds else None,
        "empty_intersections": int(selection.num_empty) if pds else None,
        "processes": world,
        "stages_seconds": stages.seconds if stages is not None else {},
        "versions": library_versions(),
        **extra,
    }
