"""A ``datasets.Dataset`` as a source: its rows are read by index, its identity is datasets' fingerprint."""

from __future__ import annotations

from ..cache import open_stage
from ..stages import Embedded, embeddings_key, encode_key
from .base import Source, check_dataset_type, check_not_empty


class MappedSource(Source):
    """A map-style ``datasets.Dataset`` (see :class:`~pds_hf.sources.base.Source`).

    Example:
        ```py
        >>> source = MappedSource(ds, pds_hf.DistillConfig())
        >>> source.check(), source.identity() == ds._fingerprint
        ('image', True)
        ```
    """

    kind = "dataset"

    def __init__(self, ds, config):
        check_dataset_type(ds)
        super().__init__(ds, config)
        self.table = None

    def check_rows(self) -> None:
        check_not_empty(len(self.ds), self.kind)

    def identity(self) -> str:
        """datasets' own fingerprint of the dataset (its cache key for every transform)."""
        return self.ds._fingerprint

    def read(self):
        """Check the dataset (:meth:`check`) and read its pairs into a :class:`~pds_hf.inputs.PairTable`, whose
        size is checked against ``num_pairs`` (:meth:`check_sizes`); once."""
        if self.table is None:
            from ..inputs import read_pairs

            config = self.config
            self.check()
            table = read_pairs(
                self.ds,
                image_column=config.image_column,
                caption_column=config.caption_column,
                on_bad_image=config.on_bad_image,
                require_images=self.needs_images,
            )
            self.check_sizes(table)
            self.table = table
        return self.table

    def embeddings(self, load_encoder, *, timer, ranks, cache_dir):
        """The encode stage of a dataset: its rows split into shards across processes (see
        :func:`pds_hf.encode.encode_table`), or its embedding columns read a block at a time."""
        config = self.config
        with timer("read"):
            table = self.read()
        if self.given:
            from ..inputs import embeddings_from_columns

            key = embeddings_key(config, self.identity())
            stage = open_stage(cache_dir, "embeddings", key, ranks=ranks)
            with timer("read embeddings"):
                # Only the main process selects: the others never read the columns.
                image_embeds, text_embeds = embeddings_from_columns(
                    self.ds,
                    table,
                    config.image_embedding_column,
                    config.text_embedding_column,
                    config.caption_column,
                    stage=stage,
                    dtype=config.embedding_dtype,
                    load=ranks.is_main,
                )
            return Embedded(
                table, image_embeds, text_embeds, key, self.given_encoder(), None, len(self.ds), True, stage
            )
        from ..encode import encode_table, encoder_name, model_fingerprint

        with timer("load encoder"):
            encoder = load_encoder()
        key = encode_key(config, model_fingerprint(encoder), self.identity())
        stage = open_stage(
            cache_dir,
            "encode",
            key,
            ranks=ranks,
            needs=" and an encoder known by id (or with a `fingerprint` attribute)",
        )
        with timer("encode"):
            table, image_embeds, text_embeds = encode_table(
                encoder,
                self.ds,
                table,
                image_column=config.image_column,
                batch_size=config.encode_batch_size,
                on_bad_image=config.on_bad_image,
                shard_size=config.shard_size,
                stage=stage,
                ranks=ranks,
                workers=config.encode_workers,
                dtype=config.embedding_dtype,
                # Only the main process selects: the others never load the embeddings.
                load=ranks.is_main,
            )
        revision = getattr(encoder, "revision", config.clip_revision)
        return Embedded(
            table, image_embeds, text_embeds, key, encoder_name(encoder), revision, len(self.ds), store=stage
        )

    def images(self, selection, *, ranks, cache_dir) -> list:
        """Read by row from the dataset."""
        from ..inputs import load_images
        from ..synthesize import resize_image

        config = self.config
        rows = selection.table.image_rows[selection.image_index]
        return [resize_image(image, config.image_size) for image in load_images(self.ds, config.image_column, rows)]
