"""Reading a streamed dataset (``datasets.IterableDataset``) in two passes: the work of a stream source.

``load_dataset(..., streaming=True)`` is the practical way into CC12M-, DataComp- or LAION-sized sets: nothing
is downloaded ahead, and no row can be read by index. :class:`~pds_hf.sources.StreamedSource` (what
``DistillProcessor(...)(stream)`` reads through) therefore works in passes:

1. **Encode pass.** The stream's input shards (``ds.shard(num_shards=ds.n_shards, index=s)``) are split across
   processes (shard ``s`` belongs to rank ``s % world``; with fewer shards than processes, rows are split with
   ``datasets.distributed.split_dataset_by_node``). Each shard's distinct images and captions are encoded once
   (or read from the embedding columns the stream carries) and saved with, for each pair, its image and caption,
   and for each image where to find it again: (input shard, offset within that shard) and the hash of its bytes.
   Images are decoded and preprocessed in ``DistillConfig.encode_workers`` processes, batches ahead of the
   encoder (:class:`~pds_hf.encode.DecodeFeed`), as for a map-style dataset. The embeddings reach the disk in
   chunks of ``DistillConfig.shard_size`` rows (memory holds one chunk, whatever the size of a shard), and a
   shard's index is saved last, as its completion marker: a run that fails on shard ``s`` (the stream raised,
   or ended before the rows its source holds, where the source tells: :func:`pds_hf.lengths.expected_rows`)
   keeps shards ``0..s-1`` and the next run starts from there.
2. **Steps 2-6** run in the select stage (:mod:`pds_hf.stages`) over the shards' embeddings, as for a map-style
   dataset (:func:`merge` joins the shards):
   images repeated across shards (same bytes) count once, captions are the distinct strings in stream order.
3. **Fetch pass** (``synthesis="retrieve"`` and the baselines only): the chosen real images are read again by
   (shard, offset): only the shards that hold them, each up to its last needed row.

The result equals the map-style run on the same rows in the same order.

Example:
    ```py
    >>> import pds_hf
    >>> from datasets import load_dataset
    >>> stream = load_dataset("pixparse/cc12m-wds", split="train", streaming=True)
    >>> stream = stream.rename_columns({"jpg": "image", "txt": "caption"})
    >>> small = pds_hf.DistillProcessor(num_pairs=1000, synthesis="retrieve")(stream)
    ```
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .cache import log_found
from .encode import encode_text_batches
from .inputs import PairTable, caption_lists, per_caption_vectors, vectors_from_column
from .sources.base import bad_images_error, check_not_empty
from .store import open_embeddings, write_embeddings

logger = logging.getLogger(__name__)

_SHARD = "shard-{:06d}".format
_CHUNK = "shard-{:06d}-{}-{:06d}".format  # (unit, "image" or "text", chunk): a unit's embeddings, in order
_IMAGE = "image-{:012d}".format
# Keys of a saved shard that every process reads; the embeddings are read by the main process only.
_INDEX_KEYS = (
    "num_rows",
    "image_offset",
    "image_digest",
    "caption_bytes",
    "caption_ends",
    "caption_offset",
    "caption_position",
    "pair_image",
    "pair_text",
    "pair_offset",
    "bad_offset",
    "image_chunks",
    "text_chunks",
    "image_dim",
    "text_dim",
)


class ShardReadError(RuntimeError):
    """Reading one input shard of a stream failed (an unreadable file, a connection lost, a stream cut short)."""


# ----------------------------------------------------------------------------------------------------------------
# The stream: its identity, its units of work, its columns
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Units:
    """How the stream is cut into units of work: its input shards, or (fewer shards than processes) row slices."""

    ds: object
    count: int
    by_rows: bool

    @classmethod
    def of(cls, ds, world: int) -> Units:
        shards = int(ds.n_shards)
        if shards < world:
            return cls(ds, world, True)
        return cls(ds, shards, False)

    def open(self, unit: int):
        if self.by_rows:
            from datasets.distributed import split_dataset_by_node

            return split_dataset_by_node(self.ds, rank=unit, world_size=self.count, strategy="examples")
        return self.ds.shard(num_shards=self.count, index=unit)

    def describe(self) -> list:
        return ["rows" if self.by_rows else "shards", self.count]

    def rows(self, unit: int, offsets: np.ndarray, rows_before: int) -> np.ndarray:
        """The row of the whole stream at ``offsets`` of ``unit`` (``rows_before``: rows of the units before it).

        A row slice ``u`` of ``w`` (``split_dataset_by_node``, strategy "examples") holds rows ``u, u + w, ...``.
        """
        return offsets * self.count + unit if self.by_rows else rows_before + offsets


def _batches(part, unit: int, units: int, batch_size: int):
    """``(first offset, arrow table)`` batches of one unit; a failure of the stream names the shard, and so does
    an end before the rows its source holds, where the source tells (:func:`pds_hf.lengths.expected_rows`)."""
    from .lengths import expected_rows

    expected = expected_rows(part)
    iterator = iter(part.iter(batch_size=batch_size))
    seen = 0
    while True:
        try:
            table = next(iterator)
        except StopIteration:
            break
        except Exception as err:
            raise ShardReadError(
                f"Reading input shard {unit} (of {units}) of the stream failed after {seen} row(s): "
                f"{type(err).__name__}: {err}. Shards that were finished are saved; run the same call again to "
                "resume from this shard (check the source file or connection if it fails again)."
            ) from err
        yield seen, table
        seen += table.num_rows
    if expected is not None and seen < expected:
        raise ShardReadError(
            f"Input shard {unit} (of {units}) of the stream ended after {seen} row(s), but its source holds "
            f"{expected} (a file cut short, a connection closed early?). Shards that were finished are saved; run "
            "the same call again to resume from this shard (check the source file or connection if it fails again)."
        )


# ----------------------------------------------------------------------------------------------------------------
# Pass 1: encode each unit
# ----------------------------------------------------------------------------------------------------------------


def _digest(blob, path) -> bytes:
    return hashlib.sha1(blob if blob is not None else f"path:{path}".encode()).digest()


def _pack(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one utf-8 byte array and the end of each (saved without pickling)."""
    encoded = [text.encode("utf-8") for text in texts]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def _unpack(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [raw[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist(), strict=False)]


_PENDING = -2  # an image first seen in a batch read but not finished yet


@dataclass
class _Batch:
    """One batch of a unit between :meth:`_UnitEncoder.read` and :meth:`_UnitEncoder.finish`."""

    start: int
    table: object
    captions: list
    # Per row: None (no image), ("fresh", j) (the batch's new image j) or ("seen", digest) (an earlier image).
    image_keys: list = field(default_factory=list)
    fresh: list = field(default_factory=list)  # (row in the batch, digest) of each new image
    stored: list = field(default_factory=list)  # (bytes, path) of each new image, for the decode feed


class _UnitEncoder:
    """Reads one unit of the stream into its distinct images and captions, their embeddings and its pairs.

    A batch is read (:meth:`read`: captions checked, images hashed, new images found), its new images are decoded
    in the decode feed's workers while later batches are read, and it is finished (:meth:`finish`) in order.
    """

    def __init__(self, config, layout: str, given: bool, has_images: bool, encoder, unit: int, stage, feed=None):
        self.config = config
        self.layout, self.given, self.has_images, self.encoder = layout, given, has_images, encoder
        self.unit, self.stage, self.feed = unit, stage, feed
        self.num_rows = 0
        self.image_offset: list[int] = []
        self.image_digest: list[bytes] = []
        self.seen_images: dict[bytes, int] = {}
        self.texts: dict[str, int] = {}
        # Embeddings not saved yet, saved chunks and the width of each modality's vectors.
        self.buffered: dict[str, list[np.ndarray]] = {"image": [], "text": []}
        self.chunks = {"image": 0, "text": 0}
        self.dims: dict[str, int] = {}
        self.text_first: list[tuple[int, int]] = []
        self.pairs: list[tuple[int, int, int]] = []
        self.bad_offset: list[int] = []

    def _where(self, offset: int) -> str:
        return f"input shard {self.unit}, row {offset}"

    def _named(self, read, *args) -> np.ndarray:
        """``read(*args)`` (a reader of embedding columns that names the row), its errors naming this input shard."""
        try:
            return read(*args)
        except (TypeError, ValueError) as err:
            raise type(err)(f"Input shard {self.unit} of the stream: {err}") from err

    def read(self, start: int, table) -> _Batch:
        """Read one batch of rows (an arrow table starting at ``start`` in this unit): check its captions and
        find its new images, to decode (see :meth:`finish`) unless the embeddings are given."""
        config = self.config
        captions = caption_lists(
            table.column(config.caption_column).to_pylist(),
            self.layout,
            config.caption_column,
            lambda i: self._where(start + i),
        )
        self.num_rows = start + table.num_rows
        batch = _Batch(start, table, captions)
        if not self.has_images:  # given embeddings, no image column: every row is an image of its own
            batch.fresh = [(i, bytes(20)) for i in range(table.num_rows)]
            batch.image_keys = [("fresh", i) for i in range(table.num_rows)]
            return batch
        images = table.column(config.image_column).combine_chunks()
        dedup = self.layout == "pair"
        for i, (blob, path) in enumerate(
            zip(images.field("bytes").to_pylist(), images.field("path").to_pylist(), strict=False)
        ):
            if blob is None and path is None:
                batch.image_keys.append(None)
                continue
            digest = _digest(blob, path)
            if dedup and digest in self.seen_images:
                batch.image_keys.append(("seen", digest))
                continue
            if dedup:
                self.seen_images[digest] = _PENDING
            batch.image_keys.append(("fresh", len(batch.fresh)))
            batch.fresh.append((i, digest))
            batch.stored.append((blob, path))
        return batch

    def finish(self, batch: _Batch, ok: np.ndarray, inputs=None, preprocessed: bool = False) -> None:
        """Number the images of a batch that decoded (positions ``ok`` of its new images; ``inputs``: their
        model inputs from the decode feed), mark the rows whose image did not, then add the batch's captions,
        pairs and embeddings. Batches are finished in the order they were read."""
        config = self.config
        start, table = batch.start, batch.table
        decoded = np.zeros(len(batch.fresh), dtype=bool)
        decoded[ok] = True
        fresh_index = []
        for (i, digest), good in zip(batch.fresh, decoded.tolist(), strict=False):
            index = -1
            if good:
                index = len(self.image_offset)
                self.image_offset.append(start + i)
                self.image_digest.append(digest)
            fresh_index.append(index)
            if self.layout == "pair" and self.has_images:
                self.seen_images[digest] = index
        image_of_row = []
        for i, key in enumerate(batch.image_keys):
            index = -1 if key is None else fresh_index[key[1]] if key[0] == "fresh" else self.seen_images[key[1]]
            if index < 0:
                self.bad_offset.append(start + i)
            image_of_row.append(index)

        bounds = np.cumsum([0] + [len(row) for row in batch.captions])
        new_texts, new_positions, new_offsets = [], [], []
        for i, row in enumerate(batch.captions):
            for position, caption in enumerate(row):
                if caption not in self.texts:
                    self.texts[caption] = len(self.texts)
                    self.text_first.append((start + i, position))
                    new_texts.append(caption)
                    new_positions.append(int(bounds[i]) + position)
                    new_offsets.append(start + i)
                if image_of_row[i] >= 0:
                    self.pairs.append((image_of_row[i], self.texts[caption], start + i))

        new_rows = [i for (i, _), good in zip(batch.fresh, decoded.tolist(), strict=False) if good]
        offsets = np.arange(start, start + table.num_rows, dtype=np.int64)
        if self.given:
            if new_rows:
                column = config.image_embedding_column
                vectors = self._named(vectors_from_column, table.column(column), column, offsets)
                self._keep("image", vectors[new_rows])
            if new_texts:
                self._keep("text", self._given_texts(table, batch.captions, offsets)[new_positions])
        else:
            if new_rows:
                self._keep(
                    "image",
                    self.feed.encode(
                        ok, inputs, preprocessed, row_ids=offsets[new_rows], rows_of=f"input shard {self.unit}"
                    ),
                )
            if new_texts:
                self._keep(
                    "text",
                    encode_text_batches(
                        self.encoder,
                        new_texts,
                        config.encode_batch_size,
                        rows=new_offsets,
                        rows_of=f"input shard {self.unit}",
                    ),
                )

    def _keep(self, what: str, vectors: np.ndarray) -> None:
        """Buffer a batch's new ``what`` embeddings; every ``DistillConfig.shard_size`` of them are saved as a
        chunk, so that memory holds one chunk whatever the size of the input shard."""
        dim = self.dims.setdefault(what, vectors.shape[1])
        if vectors.shape[1] != dim:
            raise ValueError(
                f"Input shard {self.unit} of the stream has {what} embeddings of different sizes "
                f"{sorted({dim, vectors.shape[1]})}; every embedding must come from one model."
            )
        self.buffered[what].append(vectors)
        if sum(len(part) for part in self.buffered[what]) >= self.config.shard_size:
            self._save_chunk(what)

    def _save_chunk(self, what: str) -> None:
        parts = self.buffered[what]
        if parts:
            self.stage.save_arrays(
                _CHUNK(self.unit, what, self.chunks[what]), embeds=np.concatenate(parts).astype(np.float32, copy=False)
            )
            self.chunks[what] += 1
            parts.clear()

    def _given_texts(self, table, captions, offsets) -> np.ndarray:
        """One vector per caption of the batch (flattened in row order), from the text embedding column."""
        name = self.config.text_embedding_column
        return self._named(
            per_caption_vectors,
            table.column(name),
            name,
            captions,
            offsets,
            self.layout,
            lambda i: self._where(int(offsets[i])),
        )

    def arrays(self, num_rows: int) -> dict:
        """What is saved for this unit (after its last embeddings, saved as chunks)."""
        for what in ("image", "text"):
            self._save_chunk(what)
        caption_bytes, caption_ends = _pack(list(self.texts))
        pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 3)
        first = np.asarray(self.text_first, dtype=np.int64).reshape(-1, 2)
        return dict(
            num_rows=np.int64(num_rows),
            image_offset=np.asarray(self.image_offset, dtype=np.int64),
            image_digest=np.frombuffer(b"".join(self.image_digest), dtype=np.uint8).reshape(-1, 20).copy(),
            caption_bytes=caption_bytes,
            caption_ends=caption_ends,
            caption_offset=first[:, 0].copy(),
            caption_position=first[:, 1].copy(),
            pair_image=pairs[:, 0].copy(),
            pair_text=pairs[:, 1].copy(),
            pair_offset=pairs[:, 2].copy(),
            bad_offset=np.asarray(self.bad_offset, dtype=np.int64),
            image_chunks=np.int64(self.chunks["image"]),
            text_chunks=np.int64(self.chunks["text"]),
            image_dim=np.int64(self.dims.get("image", 0)),
            text_dim=np.int64(self.dims.get("text", 0)),
        )


def _columns(ds, config, given: bool, has_images: bool):
    """The stream reduced to the columns the encode pass reads, its images left undecoded."""
    from datasets import Image

    names = [config.caption_column]
    if has_images:
        names.append(config.image_column)
    if given:
        names += [config.image_embedding_column, config.text_embedding_column]
    ds = ds.select_columns(names)
    if has_images:
        ds = ds.cast_column(config.image_column, Image(decode=False))
    return ds.with_format("arrow")


def _read_ahead(reader: _UnitEncoder, batches, read: deque):
    """Read ``batches`` of a unit, queueing each in ``read``, and yield each one's new images for the decode feed,
    which reads as far ahead as it decodes."""
    for start, table in batches:
        batch = reader.read(start, table)
        read.append(batch)
        yield batch.stored


def encode_pass(config, load_encoder, units: Units, stage, layout: str, given: bool, has_images: bool, ranks) -> None:
    """Pass 1: each process encodes the units it owns that are not saved yet (``load_encoder()`` gives the
    encoder, loaded only when a unit is left to encode).

    Images are decoded and preprocessed in ``DistillConfig.encode_workers`` processes, batches ahead of the encoder
    (:class:`~pds_hf.encode.DecodeFeed`, as for a map-style dataset); the results do not depend on their number.
    """
    from contextlib import nullcontext

    from .encode import DecodeFeed
    from .progress import progress

    owned = [u for u in range(units.count) if ranks.owns(u)]
    todo = [u for u in owned if not stage.done(_SHARD(u))]
    log_found(stage, len(owned) - len(todo), len(owned), "encoded input shards of this process")
    encoder = load_encoder() if todo and not given else None
    feed = DecodeFeed(encoder, config.encode_workers) if encoder is not None else None
    with (
        feed or nullcontext(),
        progress(None, desc="Encoding the stream", unit="row", disable=not ranks.is_main) as bar,
    ):
        for u in todo:
            part = _columns(units.open(u), config, given, has_images)
            reader = _UnitEncoder(config, layout, given, has_images, encoder, u, stage, feed)
            batches = _batches(part, u, units.count, config.encode_batch_size)
            if feed is None:  # the embeddings are given: nothing to decode
                for start, table in batches:
                    batch = reader.read(start, table)
                    reader.finish(batch, np.arange(len(batch.fresh)))
                    bar.update(table.num_rows)
            else:
                read = deque()
                for ok, inputs, preprocessed in feed(_read_ahead(reader, batches, read)):
                    batch = read.popleft()
                    reader.finish(batch, ok, inputs, preprocessed)
                    bar.update(batch.table.num_rows)
            if reader.bad_offset and config.on_bad_image == "error":
                raise bad_images_error(config.image_column, reader.bad_offset, f"Input shard {u} of the stream: ")
            stage.save_arrays(_SHARD(u), **reader.arrays(reader.num_rows))


# ----------------------------------------------------------------------------------------------------------------
# Merging the units into one table
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Merged:
    """The whole stream as one :class:`~pds_hf.inputs.PairTable`, with where each image lives."""

    table: PairTable
    image_unit: np.ndarray
    image_offset: np.ndarray
    image_digest: np.ndarray
    num_rows: int
    image_embeds: np.ndarray | None
    text_embeds: np.ndarray | None


def _first_seen(order: np.ndarray, keys: list) -> tuple[np.ndarray, list[int]]:
    """Walk entries in ``order``; equal keys share the id of the first. Returns each entry's id and the entry
    each id was first seen at."""
    ids = np.empty(len(keys), dtype=np.int64)
    seen: dict = {}
    sources: list[int] = []
    for entry in order.tolist():
        found = seen.get(keys[entry])
        if found is None:
            found = seen[keys[entry]] = len(sources)
            sources.append(entry)
        ids[entry] = found
    return ids, sources


def _first_seen_rows(order: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_first_seen` for keys that are the rows of an array (the images' 20-byte digests), without a Python
    object per entry: one stable sort of the keys."""
    flat = np.ascontiguousarray(keys[order]).view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)  # first: earliest in `order`
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first, kind="stable")] = np.arange(len(first))
    ids = np.empty(len(keys), dtype=np.int64)
    ids[order] = number[inverse.ravel()]
    return ids, order[np.sort(first)]


def merge(stage, units: Units, layout: str, dedup: bool, with_embeddings: bool, dtype: str = "float32") -> Merged:
    """Join the saved units in the stream's row order: a caption string is one caption and, ``dedup``, an image
    repeated across units (same bytes) is one image, numbered where it first appears, as for a map-style dataset.
    The embeddings are read (one unit at a time, into the store, stored as ``dtype``) only ``with_embeddings``."""
    parts = [stage.load_arrays(_SHARD(u), keys=_INDEX_KEYS) for u in range(units.count)]
    rows_before = np.cumsum([0] + [int(part["num_rows"]) for part in parts])
    captions, caption_row, caption_position, image_row = [], [], [], []
    for u, part in enumerate(parts):
        captions += _unpack(part["caption_bytes"], part["caption_ends"])
        caption_row.append(units.rows(u, part["caption_offset"], rows_before[u]))
        caption_position.append(part["caption_position"])
        image_row.append(units.rows(u, part["image_offset"], rows_before[u]))
    text_of, text_sources = _first_seen(
        np.lexsort((np.concatenate(caption_position), np.concatenate(caption_row))), captions
    )
    image_row = np.concatenate(image_row)
    image_order = np.argsort(image_row, kind="stable")
    if dedup:
        image_of, image_sources = _first_seen_rows(
            image_order, np.concatenate([part["image_digest"] for part in parts])
        )
    else:  # every image is its own: numbered in stream order
        image_of = np.empty(len(image_row), dtype=np.int64)
        image_of[image_order] = np.arange(len(image_row))
        image_sources = image_order
    text_start = np.cumsum([0] + [len(part["caption_ends"]) for part in parts])
    image_start = np.cumsum([0] + [len(part["image_offset"]) for part in parts])
    pair_image = np.concatenate([image_of[image_start[u] + part["pair_image"]] for u, part in enumerate(parts)])
    pair_text = np.concatenate([text_of[text_start[u] + part["pair_text"]] for u, part in enumerate(parts)])
    pair_rows = np.concatenate([units.rows(u, part["pair_offset"], rows_before[u]) for u, part in enumerate(parts)])
    order = np.argsort(pair_rows, kind="stable")  # the captions of one row stay in their order
    bad_rows = np.sort(
        np.concatenate([units.rows(u, part["bad_offset"], rows_before[u]) for u, part in enumerate(parts)])
    )
    image_unit = np.repeat(np.arange(units.count, dtype=np.int64), np.diff(image_start))
    image_sources = np.asarray(image_sources, dtype=np.int64)
    table = PairTable(
        image_rows=image_row[image_sources],  # the stream row where each distinct image first appears
        texts=[captions[e] for e in text_sources],
        pair_image=pair_image[order],
        pair_text=pair_text[order],
        pair_rows=pair_rows[order],
        layout=layout,
        skipped_images=bad_rows.tolist(),
    )
    check_not_empty(int(rows_before[-1]), "stream")
    image_embeds = text_embeds = None
    if with_embeddings:
        image_embeds, text_embeds = _gather_embeddings(
            stage, parts, image_sources, image_start, np.asarray(text_sources, dtype=np.int64), text_start, dtype
        )
    image_offset = np.concatenate([part["image_offset"] for part in parts])[image_sources]
    image_digest = np.concatenate([part["image_digest"] for part in parts])[image_sources]
    return Merged(
        table, image_unit[image_sources], image_offset, image_digest, int(rows_before[-1]), image_embeds, text_embeds
    )


def _gather_embeddings(stage, parts: list, image_sources, image_start, text_sources, text_start, dtype: str):
    """The ``(Ni, d)`` image and ``(Nt, d)`` caption embeddings, each row read from the unit it was first seen in,
    written once into the store of ``stage`` (memory maps on disk, see :mod:`pds_hf.store`) or reopened from it.

    ``parts`` are the units' saved indexes; their embeddings are read one saved chunk at a time.
    """
    if not len(image_sources):
        raise ValueError("No image of the stream could be decoded and encoded.")
    stored = open_embeddings(stage, dtype)
    if stored is not None:
        logger.info("Opening the stored embeddings of the stream in %s.", stage)
        return stored
    logger.info("Loading the embeddings of %d input shard(s) for clustering.", len(parts))
    dims = {}
    for name in ("image", "text"):
        for u, part in enumerate(parts):
            dim = int(part[f"{name}_dim"])
            if not dim:
                continue
            first, expected = dims.setdefault(name, (u, dim))
            if dim != expected:
                raise ValueError(
                    f"Input shard {u} of the stream has {dim}-d {name} embeddings but shard {first} "
                    f"{expected}-d ones; every embedding must come from one model."
                )
    dims.setdefault("text", dims["image"])
    if dims["image"][1] != dims["text"][1]:
        raise ValueError(
            f"The image embeddings have {dims['image'][1]} dimensions but the caption embeddings "
            f"{dims['text'][1]}; image and caption embeddings must come from one model (one space)."
        )
    wanted = {"image": (image_sources, image_start), "text": (text_sources, text_start)}

    def fill(image_embeds, text_embeds):
        targets = {"image": image_embeds, "text": text_embeds}
        for name, (sources, start) in wanted.items():
            # The rows wanted from each chunk are a slice of the sources in sorted order.
            order = np.argsort(sources, kind="stable")
            ordered = sources[order]
            for u, part in enumerate(parts):
                at = int(start[u])
                for chunk in range(int(part[f"{name}_chunks"])):
                    block = stage.load_arrays(_CHUNK(u, name, chunk), keys=("embeds",))["embeds"]
                    lo, hi = np.searchsorted(ordered, [at, at + len(block)])
                    mine = order[lo:hi]
                    targets[name][mine] = block[sources[mine] - at]
                    at += len(block)

    dim = dims["image"][1]
    return write_embeddings(stage, ((len(image_sources), dim), (len(text_sources), dim)), fill, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Pass 2: fetch the chosen real images
# ----------------------------------------------------------------------------------------------------------------


def fetch_pass(config, units: Units, merged: Merged, wanted: np.ndarray, stage, ranks) -> None:
    """Read the images ``wanted`` (global image ids) from the units this process owns, each unit only up to its
    last wanted row, and save them resized into ``stage``."""
    from datasets import Image

    from .inputs import decode_image
    from .synthesize import resize_image

    todo = sorted({int(i) for i in wanted if not stage.done(_IMAGE(int(i)))})
    by_unit: dict[int, dict[int, int]] = {}
    for image in todo:
        by_unit.setdefault(int(merged.image_unit[image]), {})[int(merged.image_offset[image])] = image
    for u, needed in sorted(by_unit.items()):
        if not ranks.owns(u):
            continue
        part = units.open(u).select_columns([config.image_column])
        part = part.cast_column(config.image_column, Image(decode=False)).with_format("arrow")
        last = max(needed)
        for start, table in _batches(part, u, units.count, config.encode_batch_size):
            column = table.column(config.image_column).combine_chunks()
            blobs, paths = column.field("bytes").to_pylist(), column.field("path").to_pylist()
            for i in range(table.num_rows):
                image = needed.get(start + i)
                if image is None:
                    continue
                if _digest(blobs[i], paths[i]) != merged.image_digest[image].tobytes():
                    raise ValueError(
                        f"Input shard {u}, row {start + i} of the stream holds another image than in the encode pass: "
                        "the stream must yield the same rows in the same order each time (no unseeded shuffle, no "
                        "source changing in between)."
                    )
                stage.save_image(_IMAGE(image), resize_image(decode_image(blobs[i], paths[i]), config.image_size))
            if start + table.num_rows > last:
                break
        missing = [offset for offset, image in needed.items() if not stage.done(_IMAGE(image))]
        if missing:
            raise ShardReadError(
                f"Input shard {u} of the stream ended before row {min(missing)}, which the encode "
                "pass read: the stream changed between passes."
            )


def fetch_images(config, units: Units, merged: Merged, wanted: np.ndarray, stage, ranks) -> list:
    """The images ``wanted`` (global image ids, in order, repeats allowed): each process fetches those in its units
    (:func:`fetch_pass`), then every process reads them all from ``stage``."""
    fetch_pass(config, units, merged, wanted, stage, ranks)
    ranks.barrier()
    return [stage.load_image(_IMAGE(int(i))) for i in wanted]
