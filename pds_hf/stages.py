"""The stages of a run, each with its own key: encode (or read the given embeddings), select, synthesize.

A key holds exactly what changes a stage's result: its name and version (``pds_hf.cache.STAGE_VERSIONS``), the
key of the stage it reads (the source's identity for the first), and the settings that change its numbers; never
a device, a batch size, a worker count or a folder. Each stage also says what every process does:

- **encode** (:func:`encode_key`, :func:`embeddings_key`, :func:`stream_key`): split across processes by the
  source (:mod:`pds_hf.sources`), which owns how its rows are read;
- **select** (:func:`select`: steps 2-6 or a baseline, :func:`pds_hf.steps.choose`): on one process; over several,
  every process works on its slice (:func:`pds_hf.parallel.choose_on_slices`);
- **synthesize** (:func:`unclip_images`, step 7 with unCLIP): the prototypes are split across processes; real
  images come from the source (:meth:`pds_hf.sources.Source.images`).

Example:
    ```py
    >>> from pds_hf.stages import select
    >>> selection = select(config, table, image_embeds, text_embeds, parent_key=None, ranks=Ranks(), cache_dir=None)
    >>> selection.captions[:2], selection.support[:2]
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import StageTimer, dtype_key, log_found, open_stage, stage_key
from .distributed import Ranks
from .steps import choose
from .synthesize import load_unclip, synthesize_unclip


@dataclass
class Selection:
    """What steps 2-6 chose: one entry per distilled pair, plus what step 7 needs to make the images.

    Attributes:
        image_embeds: ``(M, d)`` image prototypes (a baseline: the chosen pairs' image embeddings).
        text_embeds: ``(M, d)`` text prototypes.
        captions: the ``M`` retrieved real captions.
        caption_index: ``(M,)`` index of each caption among the distinct captions.
        support: ``(M,)`` real pairs each prototype averages (0 where the k-means centres were used).
        image_cluster, text_cluster: ``(M,)`` the matched k-means clusters (-1 for baselines).
        pairs: ``(M,)`` the chosen pairs (baselines; empty for PDS).
        kept: pairs left after filtering (-1 for baselines).
        num_empty: matched clusters that shared no pair (-1 for baselines).
        image_index: ``(M,)`` the real image nearest (cosine) to each image prototype, as an index among the
            source's distinct images (``synthesis="retrieve"``); a baseline's own images.
        key: the stage-cache fingerprint of this selection, or None when it is not cached.
        table: the source's :class:`~pds_hf.inputs.PairTable`.
        pair_image_labels, pair_text_labels: ``(N,)`` per pair of ``table``, its image and text k-means cluster,
            -1 where the filter dropped it (PDS; None for baselines). Pair ``p`` stands behind distilled pair ``m``
            when both equal ``image_cluster[m]`` and ``text_cluster[m]``; ``support[m]`` counts them.
        stage: the select stage it is cached in (where its members are written, see :mod:`pds_hf.members`).
    """

    image_embeds: np.ndarray
    text_embeds: np.ndarray
    captions: list
    caption_index: np.ndarray
    support: np.ndarray
    image_cluster: np.ndarray
    text_cluster: np.ndarray
    pairs: np.ndarray
    kept: int
    num_empty: int
    image_index: np.ndarray
    key: str | None = None
    table: object = field(default=None, repr=False)
    pair_image_labels: np.ndarray | None = field(default=None, repr=False)
    pair_text_labels: np.ndarray | None = field(default=None, repr=False)
    stage: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class Embedded:
    """What the encode stage gives the select stage: the pairs and one embedding per distinct image and caption.

    Attributes:
        table: the :class:`~pds_hf.inputs.PairTable` of the usable pairs.
        image_embeds, text_embeds: ``(Ni, d)`` and ``(Nt, d)`` (memory maps on a disk stage); None on a process
            that does not select.
        key: the encode stage's key (the select stage's parent), None when nothing is cached.
        encoder: the encoder's name, or where the given embeddings came from.
        encoder_revision: the encoder's revision (None for given embeddings).
        num_rows: rows read from the source.
        given: whether the embeddings came from the source's columns.
        store: the stage holding the embeddings (:mod:`pds_hf.store`), which every process can open.
    """

    table: object
    image_embeds: np.ndarray | None
    text_embeds: np.ndarray | None
    key: str | None
    encoder: str
    encoder_revision: str | None
    num_rows: int
    given: bool = False
    store: object = None


# --------------------------------------------------------------------------------------------------------------
# Encode: the keys (the sources run the stage)
# --------------------------------------------------------------------------------------------------------------


def encode_key(config, encoder_fingerprint, source_identity) -> str | None:
    """The key of a map-style dataset's encode stage.

    ``embedding_dtype`` is not in it: the shards are float32 whatever it is, and the stage holds one merged store
    per dtype (see :mod:`pds_hf.store`), so a float16 rerun of an encoded source encodes nothing. Nor is
    ``shard_size``: the stage records the size its shards were cut in (:func:`pds_hf.encode.recorded_shard_size`).
    """
    return stage_key(
        "encode", encoder_fingerprint, source_identity, config.image_column, config.caption_column, config.on_bad_image
    )


def embeddings_key(config, source_identity) -> str | None:
    """The key of the stage that reads a map-style dataset's given embedding columns (one store per dtype)."""
    return stage_key(
        "embeddings",
        source_identity,
        config.image_column,
        config.caption_column,
        config.image_embedding_column,
        config.text_embedding_column,
        config.on_bad_image,
    )


def stream_key(config, source_identity, units: list, layout: str, has_images: bool, embeddings: tuple) -> str | None:
    """The key of a stream's encode pass: the stream's identity and input shards, its layout, the columns, and
    ``embeddings``: ``("encoder", fingerprint)`` or ``("given", image column, text column)``."""
    if source_identity is None or embeddings[-1] is None:
        return None
    return stage_key(
        "stream",
        source_identity,
        units,
        layout,
        has_images,
        config.image_column,
        config.caption_column,
        config.on_bad_image,
        *embeddings,
    )


def stream_images_key(config, stream_key: str | None) -> str | None:
    """The key of the real images fetched from a stream (a second pass): the encode pass's key and their size."""
    return stage_key("stream", stream_key, "images", config.image_size)


# --------------------------------------------------------------------------------------------------------------
# Select: steps 2-6
# --------------------------------------------------------------------------------------------------------------


def select_key(config, parent_key: str | None) -> str | None:
    """The select stage's key: the encode stage's, and every setting of steps 2-6."""
    return stage_key(
        "select",
        parent_key,
        config.method,
        config.num_pairs,
        config.rm_ratio,
        config.seed,
        config.empty,
        config.kmeans_iterations,
        config.kmeans_restarts,
        config.kmeans_init,
        "unit-norm" if config.normalize else "raw",
        *dtype_key(config.embedding_dtype),
        # the selection holds the chosen real images, whose rule only "retrieve-scored" changes
        *(["retrieve-scored"] if config.synthesis == "retrieve-scored" else []),
    )


LABELS = ("image_labels", "text_labels")


def write_labels(stage, labels: dict, num_pairs: int, ranks, rows: slice | None = None) -> None:
    """Save each pair's image and text cluster into ``stage``: one ``.npy`` file per name, read back as memory maps.

    Every process writes the labels of its ``rows`` of the ``num_pairs`` pairs (all of them with ``rows=None``), so
    that no process holds all of them; the files are complete (marked done) once all processes have written.
    """
    if stage.path is None:  # in memory: one process
        stage.save_arrays("labels", **labels)
        return
    if ranks.is_main:
        stage.path.mkdir(parents=True, exist_ok=True)
        for name in labels:
            np.lib.format.open_memmap(stage.path / f"{name}.npy", mode="w+", dtype=np.int64, shape=(num_pairs,)).flush()
    ranks.barrier()
    for name, values in labels.items():
        out = np.load(stage.path / f"{name}.npy", mmap_mode="r+")
        out[slice(None) if rows is None else rows] = values
        out.flush()
        del out
    ranks.barrier()
    if ranks.is_main:
        stage.mark_done("labels")


def read_labels(stage) -> dict:
    """The labels :func:`write_labels` saved (memory maps on disk), or an empty dict (a baseline's selection)."""
    if not stage.done("labels"):
        return {}
    if stage.path is None:
        return stage.load_arrays("labels")
    return {name: np.load(stage.path / f"{name}.npy", mmap_mode="r") for name in LABELS}


def select(config, table, image_embeds, text_embeds, *, parent_key, ranks, cache_dir, store=None) -> Selection:
    """Steps 2-6 on embeddings already read or encoded, cached as the select stage under ``parent_key``.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig`.
        table: the :class:`~pds_hf.inputs.PairTable` the embeddings belong to.
        image_embeds, text_embeds: one row per distinct image and caption of ``table`` (None on a process that
            did not read them).
        parent_key: the key of the stage the embeddings come from (``None``: nothing is cached).
        ranks: this process's place in a multi-process run.
        cache_dir: the cache folder (None: nothing is cached).
        store: the stage that holds the embeddings (see :mod:`pds_hf.store`). Given, and over several processes,
            every process opens it and works on its slice of the pairs (:func:`pds_hf.parallel.choose_on_slices`);
            otherwise the main process computes and the others wait.

    Used by every run, map-style or streamed, and by ``DistillProcessor.select``: all of them cache one select
    stage.
    """
    key = select_key(config, parent_key)
    stage = open_stage(cache_dir, "select", key)
    if ranks.world > 1 and store is not None:
        # All processes decide together: none can mark the stage done before every one has joined the first
        # collective of choose_on_slices.
        ranks.barrier()
        if not stage.done("selection"):
            from .parallel.select import choose_on_slices, pair_slice
            from .store import open_embeddings

            if image_embeds is None:
                image_embeds, text_embeds = open_embeddings(store, config.embedding_dtype)
            chosen = choose_on_slices(config, table, image_embeds, text_embeds, ranks)
            labels = chosen.pop("labels", None)
            if labels is not None:
                write_labels(stage, labels, table.num_pairs, ranks, pair_slice(table.num_pairs, ranks))
            if ranks.is_main:
                stage.save_arrays("selection", **chosen)
    elif not stage.done("selection") and ranks.is_main:
        chosen = choose(config, table, image_embeds, text_embeds)
        labels = chosen.pop("labels", None)
        if labels is not None:
            write_labels(stage, labels, table.num_pairs, Ranks())
        stage.save_arrays("selection", **chosen)
    ranks.barrier()
    chosen = stage.load_arrays("selection")
    labels = read_labels(stage)
    return Selection(
        image_embeds=chosen["image_embeds"],
        text_embeds=chosen["text_embeds"],
        captions=[table.texts[i] for i in chosen["caption_index"]],
        caption_index=chosen["caption_index"],
        support=chosen["support"],
        image_cluster=chosen["image_cluster"],
        text_cluster=chosen["text_cluster"],
        pairs=chosen["pairs"],
        kept=int(chosen["kept"]),
        num_empty=int(chosen["num_empty"]),
        image_index=chosen["image_index"],
        key=key,
        table=table,
        pair_image_labels=labels.get("image_labels"),
        pair_text_labels=labels.get("text_labels"),
        stage=stage,
    )


# --------------------------------------------------------------------------------------------------------------
# Synthesize: step 7 with unCLIP
# --------------------------------------------------------------------------------------------------------------


# The settings that change an unCLIP image (in the order of the synthesize stage's key).
UNCLIP_SETTINGS = ("num_inference_steps", "guidance_scale", "noise_level", "negative_prompt", "image_size", "seed")


def synthesize_key(config, selection_key: str | None, unclip_id) -> str | None:
    """The synthesize stage's key: the selection's, the decoder's identity and the settings of its images."""
    if unclip_id is None:
        return None
    return stage_key("synthesize", selection_key, unclip_id, *(getattr(config, name) for name in UNCLIP_SETTINGS))


def unclip_images(config, selection: Selection, *, key, ranks, cache_dir, device, dtype, timer=None) -> list:
    """unCLIP images for the prototypes this process owns, saved one by one; then all of them.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig`.
        selection: what :func:`select` chose.
        key: :func:`synthesize_key` of the run.
        ranks: the processes of the run; process ``r`` makes the images ``m`` with ``m % world == r``.
        cache_dir: the cache folder (None: nothing is cached).
        device, dtype: where and how a decoder named by id runs.
        timer: a :class:`~pds_hf.cache.StageTimer` that times loading the decoder as "load unCLIP".
    """
    by_id = isinstance(config.unclip_model, str)
    stage = open_stage(
        cache_dir,
        "synthesize",
        key,
        ranks=ranks,
        needs=" and an unCLIP model known by id (or with a `fingerprint` attribute)",
    )
    name = "image-{:06d}".format
    captions = selection.captions
    owned = [m for m in range(len(captions)) if ranks.owns(m)]
    mine = [m for m in owned if not stage.done(name(m))]
    log_found(stage, len(owned) - len(mine), len(owned), "synthesized images")
    if mine:
        with (timer or StageTimer())("load unCLIP"):
            pipe = load_unclip(
                config.unclip_model,
                revision=config.unclip_revision,
                device=device if by_id or config.device else None,
                dtype=dtype if by_id else None,
            )

        def save(indices, images):
            for m, image in zip(indices, images, strict=False):
                stage.save_image(name(m), image)

        synthesize_unclip(
            pipe,
            selection.image_embeds[mine],
            [captions[m] for m in mine],
            batch_size=config.synthesis_batch_size,
            indices=mine,
            on_batch=save,
            show_progress=ranks.is_main,
            **{setting: getattr(config, setting) for setting in UNCLIP_SETTINGS},
        )
    ranks.barrier()
    return [stage.load_image(name(m)) for m in range(len(captions))]
