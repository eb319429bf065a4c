"""A ``datasets.IterableDataset`` as a source: read in passes over its input shards, identified by its recipe."""

from __future__ import annotations

import logging

import numpy as np

from ..cache import fingerprint, open_stage
from ..stages import Embedded, stream_images_key, stream_key
from .base import Source, check_dataset_type

logger = logging.getLogger(__name__)


class _Unidentified(Exception):
    """Part of a stream's recipe cannot be hashed: the stream has no stable identity."""


def _describe(value):
    """A JSON-ready description of one part of a stream's recipe (raises :class:`_Unidentified`)."""
    import datasets
    from datasets.fingerprint import Hasher
    from datasets.iterable_dataset import _BaseExamplesIterable

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datasets.Dataset):
        return ["dataset", value._fingerprint]
    if isinstance(value, _BaseExamplesIterable):
        # The steps of the stream (files, generator, map/filter functions, shuffling seed...), not its state.
        return [type(value).__name__, {k: _describe(v) for k, v in sorted(vars(value).items()) if k[0] != "_"}]
    if isinstance(value, (list, tuple)):
        return [_describe(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    config_id = getattr(getattr(value, "__self__", None), "config_id", None)
    if isinstance(config_id, str):
        # A builder's generating method: its config id hashes the data files or the generator and its kwargs.
        return ["builder", type(value.__self__).__name__, config_id]
    try:
        return ["hash", Hasher.hash(value)]
    except Exception as err:
        raise _Unidentified(type(value).__name__) from err


def stream_fingerprint(ds) -> str | None:
    """A fingerprint of what ``ds`` yields, from its recipe (files, builder config, generator, steps), or None.

    An ``IterableDataset`` has no ``_fingerprint``: this one is built from the chain of its examples iterables
    (the source files or the generator and its kwargs, a map-style dataset's fingerprint, each ``map``/``filter``
    function, seeds) with the features and split. None when a part cannot be hashed: nothing is cached then.
    """
    own = getattr(ds, "_fingerprint", None)
    if isinstance(own, str) and own:
        return own
    info = ds.info
    try:
        recipe = _describe(ds._ex_iterable)
    except _Unidentified as err:
        logger.info("The stream cannot be fingerprinted (%s): its encoding is not cached, nothing resumes.", err)
        return None
    features = ds.features.to_dict() if ds.features is not None else None
    # A stream already split by node (split_dataset_by_node) yields only its part; a shuffled one depends on the epoch.
    return fingerprint(
        "stream",
        recipe,
        info.builder_name,
        info.config_name,
        info.dataset_name,
        str(ds.split) if ds.split is not None else None,
        features,
        repr(ds._distributed),
        ds.epoch,
    )


class StreamedSource(Source):
    """A ``datasets.IterableDataset`` (see :class:`~pds_hf.sources.base.Source`).

    A stream whose features are not declared has them read from its first rows, without consuming the stream
    the run iterates.

    Example:
        ```py
        >>> source = StreamedSource(ds.to_iterable_dataset(num_shards=2), pds_hf.DistillConfig())
        >>> source.check(), source.identity() == stream_fingerprint(source.ds)
        ('image', True)
        ```
    """

    kind = "stream"

    def __init__(self, ds, config):
        check_dataset_type(ds, streaming=True)
        if ds.features is None:
            ds = ds._resolve_features()
        super().__init__(ds, config)
        self.units = self.merged = self.key = None

    def identity(self) -> str | None:
        """:func:`stream_fingerprint` of the stream, computed once (it hashes the whole recipe)."""
        if not hasattr(self, "fingerprint"):
            self.fingerprint = stream_fingerprint(self.ds)
        return self.fingerprint

    def describe(self, table, num_rows: int) -> dict:
        return {**super().describe(table, num_rows), "n_shards": int(self.ds.n_shards)}

    def embeddings(self, load_encoder, *, timer, ranks, cache_dir):
        """The encode pass over the stream's input shards, split across processes, then the shards joined into one
        table in the stream's row order (see :mod:`pds_hf.stream`)."""
        from ..stream import Units, encode_pass, merge

        config = self.config
        layout = self.check()
        if self.given:
            embeddings = "given", config.image_embedding_column, config.text_embedding_column
            encoder, revision = self.given_encoder(), None
        else:
            from ..encode import encoder_name, model_fingerprint

            with timer("load encoder"):
                loaded = load_encoder()
            embeddings = "encoder", model_fingerprint(loaded)
            encoder, revision = encoder_name(loaded), getattr(loaded, "revision", config.clip_revision)
        self.units = Units.of(self.ds, ranks.world)
        self.key = stream_key(config, self.identity(), self.units.describe(), layout, self.has_images, embeddings)
        stage = open_stage(
            cache_dir,
            "stream",
            self.key,
            ranks=ranks,
            needs=", a stream that can be fingerprinted and an encoder known by id (or with a `fingerprint` attribute)",
        )
        with timer("read embeddings" if self.given else "encode"):
            encode_pass(config, load_encoder, self.units, stage, layout, self.given, self.has_images, ranks)
        ranks.barrier()
        with timer("read"):
            self.merged = merged = merge(
                stage,
                self.units,
                layout,
                dedup=layout == "pair" and self.has_images,
                with_embeddings=ranks.is_main,
                dtype=config.embedding_dtype,
            )
        table = merged.table
        if table.skipped_images:
            logger.warning(
                "Skipping %d undecodable image(s) in column %r, at row(s) %s%s of the stream.",
                len(table.skipped_images),
                config.image_column,
                table.skipped_images[:5],
                " ..." if len(table.skipped_images) > 5 else "",
            )
        self.check_sizes(table)
        return Embedded(
            table,
            merged.image_embeds,
            merged.text_embeds,
            self.key,
            encoder,
            revision,
            merged.num_rows,
            self.given,
            stage,
        )

    def images(self, selection, *, ranks, cache_dir) -> list:
        """A second pass over the stream: only the input shards that hold the chosen images, each up to its last
        one; an image is checked against the bytes the encode pass saw."""
        from ..stream import fetch_images

        if self.merged is None:
            raise ValueError(
                "A stream's images are fetched by the run that encoded it: call the processor on the stream, "
                "processor(stream), rather than processor.synthesize(selection, stream)."
            )
        stage = open_stage(cache_dir, "stream", stream_images_key(self.config, self.key))
        picks = np.asarray(selection.image_index, dtype=np.int64)
        return fetch_images(self.config, self.units, self.merged, picks, stage, ranks)
