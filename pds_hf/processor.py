"""``DistillProcessor``: the one object that runs PDS over a ``datasets.Dataset``.

encode -> filter -> cluster -> align -> prototypes -> caption -> synthesize

Held like a transformers processor: configured once (a :class:`~pds_hf.DistillConfig`), saved with
:meth:`DistillProcessor.save_pretrained`, rebuilt with :meth:`DistillProcessor.from_pretrained` (also from a
published distilled set, whose card carries the run record), and called on a dataset to do the work. Its
stages can be run alone:

- :meth:`DistillProcessor.encode` is a batched ``map`` function that adds ``image_embedding`` and
  ``text_embedding`` columns (cached by datasets' fingerprints, reusable for every ``num_pairs``);
- :meth:`DistillProcessor.select` runs steps 2-6 from those columns;
- :meth:`DistillProcessor.synthesize` runs step 7 on a selection.

``pds_hf.distill`` and ``Dataset.distill`` are thin wrappers over ``DistillProcessor(config)(ds)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .cache import (
    STAGE_VERSIONS,
    StageTimer,
    default_cache_dir,
    dtype_key,
    fingerprint,
    log_found,
    open_stage,
    stage_key,
)
from .caption import nearest, retrieve_captions
from .config import DistillConfig
from .distributed import current_ranks
from .encode import encode_table, encoder_name, load_encoder, model_fingerprint
from .inputs import caption_lists, load_images, read_pairs
from .pretrained import RecipeMixin
from .prototypes import prototypes_from_embeddings
from .schema import ENCODER_ID_PREFIX, output_features, read_run_record, recorded_encoder, run_record_info
from .sources import MappedSource, check_columns, embedding_columns_present, spec_name
from .synthesize import (
    REAL_IMAGE_METHODS,
    load_unclip,
    resize_image,
    retrieve_scored_images,
    synthesize_unclip,
    unclip_fingerprint,
)

logger = logging.getLogger(__name__)

# The version of what a run returns (its columns and how they are made from the stages): part of its fingerprint.
OUTPUT_VERSION = 1


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

    def __len__(self) -> int:
        return len(self.captions)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("pds-hf", "datasets", "transformers", "diffusers", "torch", "faiss-cpu", "faiss-gpu"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


# Set in a process forked from this one (the workers of ``map(num_proc=N)`` on Linux), and only there.
os.register_at_fork(after_in_child=_mark_forked)


def _single_threaded_cpu() -> None:
    """In a forked worker process of ``map(num_proc=N)``: one CPU thread each.

    A process forked from one that already ran torch on CPU hangs in its first multi-threaded op (the
    OpenMP pool does not survive fork), and N workers with one thread each use N cores anyway. A process that
    was not forked (a new Python process, a spawned worker) keeps torch's threads.
    """
    import torch

    torch.set_num_threads(1)


def _model_identity(spec):
    """What names a model for a fingerprint: its id, a loaded object's ``fingerprint``, else the object itself."""
    if spec is None or isinstance(spec, str):
        return spec
    value = getattr(spec, "fingerprint", None)
    return value if isinstance(value, str) and value else spec


def _encoder_settings(config) -> tuple:
    """The settings a loaded encoder depends on: two configs that agree here may share one."""
    return (config.clip_model, config.clip_processor, config.clip_revision, config.half_precision)


class DistillProcessor(RecipeMixin):
    """Distill an image-text dataset into ``num_pairs`` pairs with PDS.

    Args:
        config: a :class:`~pds_hf.DistillConfig`; defaults are the paper's.
        **overrides: fields of :class:`~pds_hf.DistillConfig` to change, e.g. ``num_pairs=100``.

    Calling the processor on a ``datasets.Dataset`` runs every step. When the dataset already carries the
    embedding columns (``image_embedding_column`` / ``text_embedding_column``, e.g. after
    ``ds.map(processor.encode, batched=True)``, or a web dataset that ships CLIP embeddings), encoding is
    skipped and the encoder is never loaded.

    Each stage saves its results under a fingerprint of its inputs (see :mod:`pds_hf.cache`), so a run that
    is killed and started again with the same arguments resumes where it stopped. Under ``accelerate launch``
    (or ``torchrun``), encoding and synthesis are split across the processes, the main process clusters,
    and every process returns the same dataset.

    Example:
        ```py
        >>> import pds_hf
        >>> from datasets import load_dataset
        >>> ds = load_dataset("nlphuji/flickr30k", split="test")
        >>> processor = pds_hf.DistillProcessor(num_pairs=100)
        >>> encoded = ds.map(processor.encode, batched=True, batch_size=64)      # embeddings as columns
        >>> small = processor(encoded)                                           # no encoding again
        >>> smaller = processor.replace(num_pairs=50)(encoded)                   # reuse them for any M
        >>> processor.save_pretrained("./my-recipe")
        ```
    """

    def __init__(self, config: DistillConfig | None = None, **overrides):
        config = config or DistillConfig()
        if not isinstance(config, DistillConfig):
            raise TypeError(
                f"config must be a pds_hf.DistillConfig, got {type(config).__name__}; pass settings "
                "as keyword arguments, e.g. DistillProcessor(num_pairs=100)."
            )
        self.config = config.replace(**overrides) if overrides else config
        self._encoders: dict = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __getstate__(self):
        # Loaded models stay in their process: pickling (datasets' map with num_proc) carries the settings only,
        # and each process loads its own encoder once. datasets' fingerprint hash does not come here: it hashes
        # encode_identity() (see _register_fingerprint_hash below).
        return {"config": self.config}

    def __setstate__(self, state):
        self.config = state["config"]
        self._encoders = {}
        if _forked:
            _single_threaded_cpu()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _register_fingerprint_hash(cls)

    def encode_identity(self) -> dict:
        """What the embeddings of :meth:`encode` depend on, and nothing else.

        The model (id, or a loaded object's ``fingerprint``), its revision and processor, the precision, the
        column names and the encode stage's version; not the device, the batch sizes, the workers, the cache
        folder or the process. ``datasets`` hashes this for ``ds.map(processor.encode)``, so a second process (or
        a processor that differs only in machine settings) finds the first one's cache file.
        """
        config = self.config
        return {
            "clip_model": _model_identity(config.clip_model),
            "clip_revision": config.clip_revision,
            "clip_processor": _model_identity(config.clip_processor),
            "half_precision": config.half_precision,
            "columns": [
                config.image_column,
                config.caption_column,
                config.image_embedding_column,
                config.text_embedding_column,
            ],
            "version": STAGE_VERSIONS["encode"],
        }

    def replace(self, **changes) -> DistillProcessor:
        """A processor with some settings changed.

        Loaded encoders are shared with ``self`` only when the settings they depend on (``clip_model``,
        ``clip_processor``, ``clip_revision``, ``half_precision``) are unchanged; otherwise the new processor loads
        its own.
        """
        other = type(self)(self.config.replace(**changes))
        if _encoder_settings(other.config) == _encoder_settings(self.config):
            other._encoders = self._encoders
        return other

    # ------------------------------------------------------------------------------------------------------
    # Step 1 as a map function
    # ------------------------------------------------------------------------------------------------------

    def _device(self, rank=None):
        import torch

        config = self.config
        if config.device:
            return config.device
        if rank is not None and torch.cuda.is_available():
            return f"cuda:{int(rank) % torch.cuda.device_count()}"
        ranks = current_ranks(self.config.barrier_timeout)
        if ranks.device is not None:
            return str(ranks.device)
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self, device: str):
        import torch

        half = self.config.half_precision
        half = device.startswith("cuda") if half is None else half
        return torch.float16 if half else None

    def load_encoder(self, rank=None):
        """The encoder of this process (device by ``rank``), loaded on first use and kept."""
        config = self.config
        device = self._device(rank)
        if device not in self._encoders:
            by_id = isinstance(config.clip_model, str)
            self._encoders[device] = load_encoder(
                config.clip_model,
                processor=config.clip_processor,
                revision=config.clip_revision,
                device=device if by_id or config.device else None,
                dtype=self._dtype(device) if by_id else None,
            )
        return self._encoders[device]

    def encode(self, batch: dict, rank: int | None = None) -> dict:
        """Step 1 as a batched ``Dataset.map`` function: add image and caption embeddings as columns.

        Adds ``image_embedding`` (one vector per row) and ``text_embedding`` (one vector per caption: a list
        of vectors when the row holds a list of captions), named by ``config.image_embedding_column`` and
        ``config.text_embedding_column``. The encoder loads once per process. With ``with_rank=True`` and
        ``num_proc=N``, process ``r`` runs on GPU ``r`` (modulo the GPUs present); under ``accelerate
        launch`` each process uses its own device.

        Args:
            batch: a batch of rows, as ``map(..., batched=True)`` passes it.
            rank: the process's rank, as ``map(..., with_rank=True)`` passes it.

        Example:
            ```py
            >>> processor = pds_hf.DistillProcessor()
            >>> encoded = ds.map(processor.encode, batched=True, batch_size=64)
            >>> encoded = ds.map(processor.encode, batched=True, with_rank=True, num_proc=8)   # 8 GPUs
            ```
        """
        config = self.config
        for name, option in ((config.image_column, "image_column"), (config.caption_column, "caption_column")):
            if name not in batch:
                raise KeyError(
                    f"The dataset has no column {name!r} (its columns: {sorted(batch)}); pass "
                    f"{option}=... to the processor."
                )
        images = []
        for position, image in enumerate(batch[config.image_column]):
            if image is None or not hasattr(image, "convert"):
                raise ValueError(
                    f"Column {config.image_column!r}: item {position} of this batch is "
                    f"{type(image).__name__}, not a decoded image. Drop rows without images first "
                    f"(ds.filter(lambda x: x is not None, input_columns={config.image_column!r}))."
                )
            images.append(image.convert("RGB"))
        captions = batch[config.caption_column]
        nested = bool(captions) and isinstance(captions[0], (list, tuple))
        rows = caption_lists(
            captions, "image" if nested else "pair", config.caption_column, lambda i: f"item {i} of this batch"
        )
        flat = [c for row in rows for c in row]
        encoder = self.load_encoder(rank)
        from .encode import check_embeddings

        image_embeds = (
            check_embeddings(encoder.encode_images(images), what="image", expected_rows=len(images))
            if images
            else np.zeros((0, 0), np.float32)
        )
        distinct = list(dict.fromkeys(flat))
        position = {text: i for i, text in enumerate(distinct)}
        text_embeds = (
            check_embeddings(encoder.encode_texts(distinct), what="text", expected_rows=len(distinct))
            if distinct
            else np.zeros((0, 0), np.float32)
        )
        per_caption = text_embeds[[position[c] for c in flat]] if flat else text_embeds
        if nested:
            bounds = np.cumsum([0] + [len(row) for row in captions])
            text_column = [per_caption[bounds[i] : bounds[i + 1]] for i in range(len(captions))]
        else:
            text_column = per_caption
        return {config.image_embedding_column: image_embeds, config.text_embedding_column: text_column}

    def embed(self, ds, **map_kwargs):
        """``ds.map(self.encode, batched=True)`` whose embedding columns record the encoder.

        The columns' features carry the encoder's name (``Feature.id``), which survives saving to parquet
        and pushing to the Hub, so that a later run with another encoder warns instead of mixing spaces.

        Args:
            ds: a ``datasets.Dataset`` with the image and caption columns.
            **map_kwargs: passed to ``Dataset.map`` (``batch_size`` defaults to ``encode_batch_size``;
                ``num_proc``, ``with_rank``, ``desc``...).
        """
        from datasets import Features, List, Value

        config = self.config
        layout = check_columns(ds, config.image_column, config.caption_column)
        encoder = self.load_encoder()
        dim = int(np.asarray(encoder.encode_texts(["a photo"])).shape[1])
        tag = ENCODER_ID_PREFIX + (spec_name(config.clip_model, config.clip_revision) or encoder_name(encoder))
        # The tag sits on the innermost Value: datasets keeps a Value's id through map, parquet and the Hub.
        vector = List(Value("float32", id=tag), length=dim)
        features = Features(
            {
                **ds.features,
                config.image_embedding_column: vector,
                config.text_embedding_column: vector if layout == "pair" else List(vector),
            }
        )
        map_kwargs.setdefault("batch_size", config.encode_batch_size)
        map_kwargs.setdefault("desc", "Encoding")
        return ds.map(self.encode, batched=True, features=features, **map_kwargs)

    # ------------------------------------------------------------------------------------------------------
    # Checks: everything that can fail before a model is loaded
    # ------------------------------------------------------------------------------------------------------

    def check_inputs(self, ds):
        """Check ``ds`` against the settings and read its pairs; fails before any model is loaded.

        Returns:
            ``(table, given)``: the :class:`~pds_hf.inputs.PairTable`, and whether ``ds`` carries the
            embedding columns (then encoding is skipped).
        """
        source, table = self.read_source(ds)
        return table, source.given

    def read_source(self, ds):
        """``(source, table)``: the :class:`~pds_hf.sources.MappedSource` of ``ds``, checked by its rules (see
        :mod:`pds_hf.sources`), and its pairs, whose number is checked against ``num_pairs``."""
        config = self.config
        source = MappedSource(ds, config)
        source.check()
        table = read_pairs(
            ds,
            image_column=config.image_column,
            caption_column=config.caption_column,
            on_bad_image=config.on_bad_image,
            require_images=source.needs_images,
        )
        source.check_sizes(table)
        return source, table

    # ------------------------------------------------------------------------------------------------------
    # The whole run
    # ------------------------------------------------------------------------------------------------------

    def cache_dir(self):
        """The folder the stages cache in: ``config.cache_dir`` or the default, None with ``use_cache=False``."""
        config = self.config
        return (config.cache_dir or default_cache_dir()) if config.use_cache else None

    def _encoded(self, source, table, stages, ranks):
        """``(table, image_embeds, text_embeds, key, encoder_name)`` from the columns or from the encoder."""
        config = self.config
        ds = source.ds
        if source.given:
            from .inputs import embeddings_from_columns

            # embedding_dtype is not in the key: the stage holds one store per dtype (see pds_hf.store).
            key = stage_key(
                "embeddings",
                source.identity(),
                config.image_column,
                config.caption_column,
                config.image_embedding_column,
                config.text_embedding_column,
                config.on_bad_image,
            )
            stage = open_stage(self.cache_dir(), "embeddings", key, ranks=ranks)
            with stages("read embeddings"):
                # Only the main process clusters: the others never read the columns.
                image_embeds, text_embeds = embeddings_from_columns(
                    ds,
                    table,
                    config.image_embedding_column,
                    config.text_embedding_column,
                    config.caption_column,
                    stage=stage,
                    dtype=config.embedding_dtype,
                    load=ranks.is_main,
                )
            name = (
                recorded_encoder(ds.features[config.image_embedding_column])
                or f"given column {config.image_embedding_column!r}"
            )
            return table, image_embeds, text_embeds, key, name
        with stages("load encoder"):
            encoder = self.load_encoder()
        # embedding_dtype is not in the key: the shards are float32 whatever it is, and the stage holds one merged
        # store per dtype (see pds_hf.store), so a float16 rerun of an encoded source encodes nothing.
        key = stage_key(
            "encode",
            model_fingerprint(encoder),
            source.identity(),
            config.image_column,
            config.caption_column,
            config.on_bad_image,
            config.shard_size,
        )
        stage = open_stage(
            self.cache_dir(),
            "encode",
            key,
            ranks=ranks,
            needs=" and an encoder known by id (or with a `fingerprint` attribute)",
        )
        with stages("encode"):
            table, image_embeds, text_embeds = encode_table(
                encoder,
                ds,
                table,
                image_column=config.image_column,
                batch_size=config.encode_batch_size,
                on_bad_image=config.on_bad_image,
                shard_size=config.shard_size,
                stage=stage,
                ranks=ranks,
                workers=config.encode_workers,
                dtype=config.embedding_dtype,
                # Only the main process clusters: the others never load the embeddings.
                load=ranks.is_main,
            )
        return table, image_embeds, text_embeds, key, encoder_name(encoder)

    def __call__(self, ds):
        """Distill ``ds``: every step, or steps 2-7 when it carries the embedding columns.

        Args:
            ds: a ``datasets.Dataset`` with an image column and a caption column, either one row per pair
                (caption is a string) or one row per image (caption is a list of strings); optionally with
                the embedding columns that :meth:`encode` adds (or that the dataset ships).

        Returns:
            A ``datasets.Dataset`` with one row per distilled pair: ``image``, ``caption`` (the retrieved real
            caption), ``image_embedding`` and ``text_embedding`` (the prototypes), ``support`` (real pairs
            averaged; 0 where the k-means centres were used), ``image_cluster`` and ``text_cluster``.
            ``pds_hf.metadata(result)`` gives the config, source and timings.
        """
        from datasets import IterableDataset

        if isinstance(ds, IterableDataset):
            from .stream import distill_stream

            return distill_stream(self, ds)
        stages = StageTimer()
        ranks = current_ranks(self.config.barrier_timeout)
        with stages("read"):
            source, table = self.read_source(ds)
        given = source.given
        table, image_embeds, text_embeds, key, encoder = self._encoded(source, table, stages, ranks)
        with stages("select"):
            selection = self.select_embeddings(table, image_embeds, text_embeds, key, ranks)
        with stages("synthesize"):
            images = self.synthesize(selection, ds, ranks=ranks, stages=stages)
        extra = {}
        if given:
            extra["embeddings"] = {
                "given": True,
                "image_column": self.config.image_embedding_column,
                "text_column": self.config.text_embedding_column,
            }
        return self.to_dataset(
            selection,
            images,
            source=source.describe(selection.table, len(ds)),
            encoder=encoder,
            encoder_revision=None if given else getattr(self.load_encoder(), "revision", self.config.clip_revision),
            stages=stages,
            ranks=ranks,
            **extra,
        )

    def to_dataset(
        self,
        selection: Selection,
        images: list,
        *,
        source: dict,
        encoder: str,
        encoder_revision=None,
        stages=None,
        ranks=None,
        **record_extra,
    ):
        """The distilled ``Dataset``: one row per selected pair, with the run record in its info.

        Args:
            selection: what steps 2-6 chose.
            images: one image (or None) per pair, from step 7.
            source: what was read (dataset, split, fingerprint, counts), for the run record.
            encoder: the encoder's name (or where the embeddings came from); ``encoder_revision`` its revision.
            stages: the seconds per stage; ``ranks``: the processes of the run.
            **record_extra: more entries for the run record.
        """
        from datasets import Dataset

        config = self.config
        ranks = current_ranks(self.config.barrier_timeout) if ranks is None else ranks
        record = {
            "config": config.to_dict(),
            "source": source,
            "models": {
                "encoder": encoder,
                "encoder_revision": encoder_revision,
                "unclip": (
                    config.to_dict()["unclip_model"]
                    if config.synthesis == "unclip" and config.method == "pds"
                    else None
                ),
                "unclip_revision": config.unclip_revision,
            },
            "kept_pairs": int(selection.kept) if config.method == "pds" else None,
            "empty_intersections": int(selection.num_empty) if config.method == "pds" else None,
            "processes": ranks.world,
            "stages_seconds": stages.seconds if stages is not None else {},
            "versions": _versions(),
            **record_extra,
        }
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
            },
            features=features,
            info=run_record_info(record, features),
        )
        # Two runs that make the same set give it the same fingerprint, so datasets caches what follows (a map).
        return Dataset(made.data, info=made.info, split=made.split, fingerprint=self.output_fingerprint(selection))

    # ------------------------------------------------------------------------------------------------------
    # Steps 2-6
    # ------------------------------------------------------------------------------------------------------

    def select(self, encoded) -> Selection:
        """Steps 2-6 from the embedding columns: filter, cluster, align, prototypes, nearest captions.

        Args:
            encoded: a ``datasets.Dataset`` with the caption column and the embedding columns (e.g. from
                ``ds.map(processor.encode, batched=True)``).

        Returns:
            A :class:`Selection`: prototypes, matched cluster labels, supports and retrieved captions.

        Example:
            ```py
            >>> selection = processor.select(encoded)
            >>> selection.captions[:3], selection.support[:3]
            ```
        """
        config = self.config
        if not embedding_columns_present(encoded, config.image_embedding_column, config.text_embedding_column):
            raise KeyError(
                f"select needs the embedding columns {config.image_embedding_column!r} and "
                f"{config.text_embedding_column!r}; add them first: encoded = ds.map(processor.encode, batched=True)."
            )
        source, table = self.read_source(encoded)
        ranks = current_ranks(self.config.barrier_timeout)
        table, image_embeds, text_embeds, key, _ = self._encoded(source, table, StageTimer(), ranks)
        return self.select_embeddings(table, image_embeds, text_embeds, key, ranks)

    def select_embeddings(self, table, image_embeds, text_embeds, parent_key, ranks) -> Selection:
        """Steps 2-6 on embeddings already read or encoded, cached as the select stage under ``parent_key``.

        Args:
            table: the :class:`~pds_hf.inputs.PairTable` the embeddings belong to.
            image_embeds, text_embeds: one row per distinct image and caption of ``table``.
            parent_key: the key of the stage the embeddings come from (``None``: nothing is cached).
            ranks: this process's place in a multi-process run; the main process computes, the others wait.

        Used by :meth:`__call__`, :meth:`select` and the stream, so that all three cache one select stage.
        """
        config = self.config
        key = stage_key(
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
        stage = open_stage(self.cache_dir(), "select", key)
        if not stage.done("selection") and ranks.is_main:
            chosen = self._choose(table, image_embeds, text_embeds)
            labels = chosen.pop("labels", None)
            if labels is not None:
                stage.save_arrays("labels", **labels)
            stage.save_arrays("selection", **chosen)
        ranks.barrier()
        chosen = stage.load_arrays("selection")
        labels = stage.load_arrays("labels") if stage.done("labels") else {}
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
        )

    def _choose(self, table, image_embeds, text_embeds) -> dict:
        """Steps 2-6 (or a baseline's choice of real pairs) as plain arrays, ready to cache."""
        config = self.config
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

    # ------------------------------------------------------------------------------------------------------
    # Step 7
    # ------------------------------------------------------------------------------------------------------

    def synthesize(self, selection: Selection, ds=None, *, ranks=None, stages=None) -> list:
        """Step 7: one image per selected pair (``config.synthesis``).

        Args:
            selection: what :meth:`select` returned.
            ds: the source dataset; needed for ``synthesis="retrieve"`` and for baselines, whose images are
                the data's own.
            ranks: this process's place in a multi-process run (default: read from the launcher).
            stages: a :class:`~pds_hf.cache.StageTimer` that times loading the decoder as "load unCLIP".

        Returns:
            A list of ``len(selection)`` RGB PIL images (``None`` each with ``synthesis="none"``).
        """
        config = self.config
        ranks = current_ranks(self.config.barrier_timeout) if ranks is None else ranks
        num = len(selection)
        if config.synthesis == "none":
            return [None] * num
        if (config.method != "pds" or config.synthesis in REAL_IMAGE_METHODS) and ds is None:
            raise ValueError(
                f"synthesis={config.synthesis!r} with method={config.method!r} takes images from the "
                "source: pass it, processor.synthesize(selection, ds)."
            )
        if config.method != "pds" or config.synthesis in REAL_IMAGE_METHODS:
            # A baseline's pairs are real: their images are the data's own; "retrieve" takes the nearest real ones.
            rows = selection.table.image_rows[selection.image_index]
            return [resize_image(image, config.image_size) for image in load_images(ds, config.image_column, rows)]
        return self.unclip_images(selection, ranks, stages)

    def _unclip_key(self, selection: Selection) -> str | None:
        """The synthesize stage's key: the selection's, the decoder's identity and the settings of its images."""
        config = self.config
        by_id = isinstance(config.unclip_model, str)
        unclip_id = unclip_fingerprint(
            config.unclip_model, revision=config.unclip_revision, dtype=self._dtype(self._device()) if by_id else None
        )
        return (
            None
            if unclip_id is None
            else stage_key(
                "synthesize",
                selection.key,
                unclip_id,
                config.num_inference_steps,
                config.guidance_scale,
                config.noise_level,
                config.negative_prompt,
                config.image_size,
                config.seed,
            )
        )

    def output_fingerprint(self, selection: Selection) -> str | None:
        """The fingerprint of the distilled dataset made from ``selection``, or None when it cannot be known.

        Derived, as datasets derives a transform's, from what makes the result: the selection's key (source
        fingerprint, encoder, steps 2-6 settings, stage versions) and how step 7 makes the images. None (datasets
        then draws a random one) when a part has no identity: a loaded model without a ``fingerprint``.
        """
        config = self.config
        if selection.key is None:
            return None
        if config.synthesis == "unclip" and config.method == "pds":
            images = self._unclip_key(selection)
            if images is None:
                return None
        else:
            images = [config.synthesis, config.image_size]
        return fingerprint("distilled", OUTPUT_VERSION, selection.key, images)

    def unclip_images(self, selection: Selection, ranks, stages=None) -> list:
        """unCLIP images for the prototypes this process owns, saved one by one; then all of them.

        The synthesize stage of :meth:`synthesize` and of the stream (keyed by :meth:`_unclip_key`).
        """
        config = self.config
        device = self._device()
        dtype = self._dtype(device)
        by_id = isinstance(config.unclip_model, str)
        key = self._unclip_key(selection)
        stage = open_stage(
            self.cache_dir(),
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
            with (stages or StageTimer())("load unCLIP"):
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
                negative_prompt=config.negative_prompt,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                noise_level=config.noise_level,
                seed=config.seed,
                batch_size=config.synthesis_batch_size,
                image_size=config.image_size,
                indices=mine,
                on_batch=save,
                show_progress=ranks.is_main,
            )
        ranks.barrier()
        return [stage.load_image(name(m)) for m in range(len(captions))]


def _hashed_as(kind: str, identity: dict):
    """Stands for a processor inside datasets' fingerprint hash only; never called to rebuild one."""
    raise TypeError(f"{kind} was pickled for a fingerprint hash; pickle the processor itself to send it.")


def _register_fingerprint_hash(cls) -> None:
    """Make datasets hash a processor of class ``cls`` by :meth:`DistillProcessor.encode_identity`.

    ``Dataset.map`` fingerprints its function by pickling it with datasets' own pickler, which is used for
    hashing only; there a processor is reduced to what changes its embeddings, so that the hash is the same
    in every process and for any device, batch size or cache folder. Pickling for transport (``num_proc``)
    keeps the whole config. Without that pickler (another datasets version), the config is hashed.
    """
    try:
        from datasets.utils._dill import pklregister
    except ImportError:
        return

    def save(pickler, obj):
        pickler.save_reduce(_hashed_as, (type(obj).__qualname__, obj.encode_identity()), obj=obj)

    pklregister(cls)(save)


_register_fingerprint_hash(DistillProcessor)


def distill(ds, config: DistillConfig | None = None, **overrides):
    """Distill an image-text dataset into ``num_pairs`` pairs with PDS: ``DistillProcessor(config, **overrides)(ds)``.

    Args:
        ds: a ``datasets.Dataset`` with an image column and a caption column, either one row per pair (caption
            is a string) or one row per image (caption is a list of strings), optionally with embedding columns.
        config: a :class:`DistillConfig`; defaults are the paper's.
        **overrides: fields of :class:`DistillConfig` to change, e.g. ``num_pairs=100``.

    Returns:
        The distilled ``datasets.Dataset`` (see :meth:`DistillProcessor.__call__`).

    Example:
        ```py
        >>> import pds_hf
        >>> from datasets import load_dataset
        >>> ds = load_dataset("nlphuji/flickr30k", split="test")
        >>> small = pds_hf.distill(ds, num_pairs=100)          # or ds.distill(num_pairs=100)
        >>> small = pds_hf.distill(ds, num_pairs=100, synthesis="retrieve")   # no decoder needed
        ```
    """
    return DistillProcessor(config, **overrides)(ds)


def metadata(ds, *, revision: str | None = None, token=None) -> dict:
    """How a distilled set was made (config, source, models, timings).

    Args:
        ds: the ``Dataset`` that :func:`distill` returned (read from its info), or where a distilled set was
            written: a folder from :func:`save_to_folder` or a Hub dataset id from :func:`push_to_hub` (read from
            its dataset card, because parquet files do not keep a dataset's info).
        revision: Hub revision, when ``ds`` is a Hub id.
        token: Hub token, when ``ds`` is a private Hub id.

    Example:
        ```py
        >>> small = pds_hf.distill(ds, num_pairs=10)
        >>> pds_hf.metadata(small)["config"]["num_pairs"]
        10
        >>> pds_hf.metadata("me/flickr30k-pds-100")["source"]["id"]  # after push_to_hub
        'nlphuji/flickr30k'
        ```
    """
    if isinstance(ds, (str, os.PathLike)):
        from .publish import metadata_from_card

        return metadata_from_card(ds, revision=revision, token=token)
    return read_run_record(ds)
