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

import numpy as np

from .cache import STAGE_VERSIONS, StageTimer, default_cache_dir
from .config import DistillConfig
from .distributed import current_ranks
from .encode import encode_batch, encoder_name, load_encoder
from .members import remember, write_members
from .output import distilled_dataset, output_fingerprint, run_record
from .pretrained import RecipeMixin
from .schema import ENCODER_ID_PREFIX, read_run_record
from .sources import MappedSource, Source, check_columns, embedding_columns_present, source_for, spec_name
from .stages import Selection, select, synthesize_key, unclip_images
from .synthesize import REAL_IMAGE_METHODS, unclip_fingerprint

logger = logging.getLogger(__name__)

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
        return encode_batch(
            batch,
            lambda: self.load_encoder(rank),
            columns=(config.image_column, config.caption_column),
            output_columns=(config.image_embedding_column, config.text_embedding_column),
        )

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
        source = MappedSource(ds, self.config)
        return source.read(), source.given

    def cache_dir(self):
        """The folder the stages cache in: ``config.cache_dir`` or the default, None with ``use_cache=False``."""
        config = self.config
        return (config.cache_dir or default_cache_dir()) if config.use_cache else None

    # ------------------------------------------------------------------------------------------------------
    # The whole run
    # ------------------------------------------------------------------------------------------------------

    def __call__(self, ds):
        """Distill ``ds``: every step, or steps 2-7 when it carries the embedding columns.

        One path for both kinds of source (:mod:`pds_hf.sources`): the source is checked and encoded (or its
        embedding columns read), then the select and synthesize stages run (:mod:`pds_hf.stages`).

        Args:
            ds: a ``datasets.Dataset`` or a ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``)
                with an image column and a caption column, either one row per pair (caption is a string) or one row
                per image (caption is a list of strings); optionally with the embedding columns that :meth:`encode`
                adds (or that the dataset ships).

        Returns:
            A ``datasets.Dataset`` with one row per distilled pair: ``image``, ``caption`` (the retrieved real
            caption), ``image_embedding`` and ``text_embedding`` (the prototypes), ``support`` (real pairs
            averaged; 0 where the k-means centres were used), ``image_cluster`` and ``text_cluster``.
            ``pds_hf.metadata(result)`` gives the config, source and timings.

        Raises:
            pds_hf.stream.ShardReadError: an input shard of a stream could not be read to its end; the finished
                shards are kept, and running the same call again resumes from the failed one.
        """
        config = self.config
        source = source_for(ds, config)
        timer = StageTimer()
        ranks = current_ranks(config.barrier_timeout)
        cache_dir = self.cache_dir()
        embedded = source.embeddings(self.load_encoder, timer=timer, ranks=ranks, cache_dir=cache_dir)
        with timer("select"):
            selection = self._select(embedded, ranks, cache_dir)
        with timer("members"):
            members = self._members(selection, embedded, source, ranks)
        with timer("synthesize"):
            images = self.synthesize(selection, source, ranks=ranks, stages=timer)
        record = run_record(
            config,
            selection,
            encoder=embedded.encoder,
            encoder_revision=embedded.encoder_revision,
            stages=timer,
            world=ranks.world,
            **source.record(embedded.table, embedded.num_rows),
        )
        output = distilled_dataset(
            config, selection, images, record=record, fingerprint=self.output_fingerprint(selection)
        )
        remember(output, members)
        return output

    def _members(self, selection, embedded, source, ranks):
        """The members table of the run (:func:`pds_hf.members.write_members`): written by the main process into
        the select stage, then opened by the others."""
        config = self.config
        write = dict(
            stage=selection.stage,
            source_ds=source.ds if source.kind == "dataset" else None,
            image_column=config.image_column,
            caption_column=config.caption_column,
        )
        members = None
        if ranks.is_main:
            members = write_members(selection, embedded.image_embeds, embedded.text_embeds, **write)
        ranks.barrier()
        if members is None:
            members = write_members(selection, embedded.image_embeds, embedded.text_embeds, **write)
        return members

    # ------------------------------------------------------------------------------------------------------
    # Steps 2-6
    # ------------------------------------------------------------------------------------------------------

    def select(self, encoded) -> Selection:
        """Steps 2-6 from the embedding columns: filter, cluster, align, prototypes, nearest captions.

        Args:
            encoded: a ``datasets.Dataset`` (or a stream) with the caption column and the embedding columns (e.g.
                from ``ds.map(processor.encode, batched=True)``).

        Returns:
            A :class:`~pds_hf.stages.Selection`: prototypes, matched cluster labels, supports and retrieved captions.

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
        ranks = current_ranks(config.barrier_timeout)
        cache_dir = self.cache_dir()
        embedded = source_for(encoded, config).embeddings(
            self.load_encoder, timer=StageTimer(), ranks=ranks, cache_dir=cache_dir
        )
        return self._select(embedded, ranks, cache_dir)

    def _select(self, embedded, ranks, cache_dir) -> Selection:
        """The select stage (:func:`pds_hf.stages.select`) on what the encode stage gave."""
        return select(
            self.config,
            embedded.table,
            embedded.image_embeds,
            embedded.text_embeds,
            parent_key=embedded.key,
            ranks=ranks,
            cache_dir=cache_dir,
            store=embedded.store,
        )

    # ------------------------------------------------------------------------------------------------------
    # Step 7
    # ------------------------------------------------------------------------------------------------------

    def synthesize(self, selection: Selection, ds=None, *, ranks=None, stages=None) -> list:
        """Step 7: one image per selected pair (``config.synthesis``).

        Args:
            selection: what :meth:`select` returned.
            ds: the source dataset (or its :class:`~pds_hf.sources.Source`); needed for ``synthesis="retrieve"``
                and for baselines, whose images are the data's own.
            ranks: this process's place in a multi-process run (default: read from the launcher).
            stages: a :class:`~pds_hf.cache.StageTimer` that times loading the decoder as "load unCLIP".

        Returns:
            A list of ``len(selection)`` RGB PIL images (``None`` each with ``synthesis="none"``).
        """
        config = self.config
        ranks = current_ranks(config.barrier_timeout) if ranks is None else ranks
        if config.synthesis == "none":
            return [None] * len(selection)
        if config.method != "pds" or config.synthesis in REAL_IMAGE_METHODS:
            # A baseline's pairs are real: their images are the data's own; "retrieve" takes the nearest real ones.
            if ds is None:
                raise ValueError(
                    f"synthesis={config.synthesis!r} with method={config.method!r} takes images from the "
                    "source: pass it, processor.synthesize(selection, ds)."
                )
            source = ds if isinstance(ds, Source) else source_for(ds, config)
            return source.images(selection, ranks=ranks, cache_dir=self.cache_dir())
        device = self._device()
        return unclip_images(
            config,
            selection,
            key=self._unclip_key(selection),
            ranks=ranks,
            cache_dir=self.cache_dir(),
            device=device,
            dtype=self._dtype(device),
            timer=stages,
        )

    def _unclip_key(self, selection: Selection) -> str | None:
        """The synthesize stage's key (:func:`~pds_hf.stages.synthesize_key`), with the decoder's identity."""
        config = self.config
        by_id = isinstance(config.unclip_model, str)
        unclip_id = unclip_fingerprint(
            config.unclip_model, revision=config.unclip_revision, dtype=self._dtype(self._device()) if by_id else None
        )
        return synthesize_key(config, selection.key, unclip_id)

    def output_fingerprint(self, selection: Selection) -> str | None:
        """The fingerprint of the distilled dataset made from ``selection`` (see
        :func:`pds_hf.output.output_fingerprint`), or None when it cannot be known."""
        config = self.config
        if config.synthesis == "unclip" and config.method == "pds":
            images = self._unclip_key(selection) if selection.key is not None else None
        else:
            images = [config.synthesis, config.image_size]
        return output_fingerprint(selection.key, images)


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
