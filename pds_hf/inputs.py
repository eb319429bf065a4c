"""Reading an image-text dataset into pairs, with every check done before expensive work.

Two layouts are understood, told apart by the caption column's feature:

- one row per pair: ``image`` (Image) and ``caption`` (string); an image repeated over rows is found
  by its bytes and encoded once;
- one row per image: ``image`` and ``caption`` as a list of strings (nlphuji/flickr30k, the COCO
  Karpathy sets); an image with 5 captions makes 5 pairs.

The result is a :class:`PairTable`: distinct images (by dataset row), distinct caption strings, and for
each pair the index of its image and of its caption. Later steps work on those indices, so each image
and each caption string is encoded once while clustering still counts an image once per caption.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


@dataclass
class PairTable:
    """The pairs of a dataset, by index.

    Attributes:
        image_rows: ``(Ni,)`` dataset row holding each distinct image.
        texts: the ``Nt`` distinct caption strings.
        pair_image: ``(N,)`` index into ``image_rows`` of each pair's image.
        pair_text: ``(N,)`` index into ``texts`` of each pair's caption.
        pair_rows: ``(N,)`` dataset row of each pair.
        layout: ``"pair"`` (one row per pair) or ``"image"`` (one row per image, list of captions).
        skipped_images: dataset rows whose image could not be decoded and was skipped.
    """

    image_rows: np.ndarray
    texts: list[str]
    pair_image: np.ndarray
    pair_text: np.ndarray
    pair_rows: np.ndarray
    layout: str
    skipped_images: list[int] = field(default_factory=list)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_image)

    def without_images(self, bad: np.ndarray) -> PairTable:
        """The same table minus the distinct images at positions ``bad`` and their pairs.

        Image indices are renumbered; texts are kept (an orphaned caption is harmless: it can still be
        retrieved as the nearest caption to a prototype). Every dataset row of a dropped image is added to
        ``skipped_images``.
        """
        bad = np.asarray(bad, dtype=np.int64)
        if bad.size == 0:
            return self
        keep_image = np.ones(len(self.image_rows), dtype=bool)
        keep_image[bad] = False
        new_index = np.cumsum(keep_image) - 1
        keep_pair = keep_image[self.pair_image]
        return PairTable(
            image_rows=self.image_rows[keep_image],
            texts=self.texts,
            pair_image=new_index[self.pair_image[keep_pair]],
            pair_text=self.pair_text[keep_pair],
            pair_rows=self.pair_rows[keep_pair],
            layout=self.layout,
            # Every row that held a dropped image (in the pair layout an image may fill many rows).
            skipped_images=sorted(
                set(self.skipped_images) | set(self.image_rows[bad].tolist()) | set(self.pair_rows[~keep_pair].tolist())
            ),
        )


def _bad_caption(value) -> str | None:
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not value.strip():
        return "is empty"
    return None


def caption_lists(values: list, layout: str, caption_column: str, where) -> list[list[str]]:
    """Each row's captions as a list (of one in the ``"pair"`` layout), after checking every caption.

    ``where(i)`` names row ``i`` of ``values`` in the error (``"row 12"``, ``"input shard 3, row 40"``).

    Raises:
        ValueError: listing the captions that are not strings or are empty, and the empty caption lists, by row
            (and position in the row's list).
    """
    problems: list[str] = []
    rows: list[list[str]] = []
    for i, value in enumerate(values):
        captions = [value] if layout == "pair" else (value or [])
        if layout == "image" and not captions:
            problems.append(f"{where(i)} has an empty caption list")
        for position, caption in enumerate(captions):
            why = _bad_caption(caption)
            if why:
                at = where(i) if layout == "pair" else f"{where(i)}, caption {position}"
                problems.append(f"{at} {why} ({caption!r})")
        rows.append(captions)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ValueError(
            f"Column {caption_column!r} has {len(problems)} bad caption(s): {listed}{more}. Every caption must be "
            "a non-empty string; drop or fix those rows first, e.g. ds.filter(...)."
        )
    return rows


def _read_captions(ds, caption_column: str, layout: str):
    """Return (texts, pair_text, pair_rows) after checking every caption."""
    rows = caption_lists(ds.with_format(None)[caption_column], layout, caption_column, lambda row: f"row {row}")
    index: dict[str, int] = {}
    pair_text: list[int] = []
    pair_rows: list[int] = []
    for row, captions in enumerate(rows):
        for caption in captions:
            pair_text.append(index.setdefault(caption, len(index)))
            pair_rows.append(row)
    return list(index), np.asarray(pair_text, dtype=np.int64), np.asarray(pair_rows, dtype=np.int64)


def _image_columns(ds, image_column: str, batch_size: int = 10000) -> list:
    """The stored ``bytes`` and ``path`` of the image column as Arrow arrays, a dict per chunk (no decoding)."""
    from datasets import Image

    raw = ds.select_columns([image_column]).cast_column(image_column, Image(decode=False)).with_format("arrow")
    columns = []
    for table in raw.iter(batch_size=batch_size):
        # Chunk by chunk: combining them would copy every byte. flatten() carries a null image (a null
        # struct) over to both of its fields, sharing their data.
        for chunk in table.column(image_column).chunks:
            columns.append(dict(zip([f.name for f in chunk.type], chunk.flatten(), strict=False)))
    return columns


def _image_keys(columns: list) -> list:
    """One identity per row's stored image, for the one-row-per-pair layout; None for a null image.

    Identical bytes are one image. Only blobs whose length is shared with another blob can be
    duplicates, so only those are hashed (straight from the Arrow buffers, without copying); every other
    row is its own image. An image stored as a path only is known by its path.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = np.concatenate(
        [np.asarray(pc.fill_null(pc.binary_length(column["bytes"]), -1), dtype=np.int64) for column in columns]
    )
    sizes, counts = np.unique(lengths[lengths >= 0], return_counts=True)
    shared = np.isin(lengths, sizes[counts > 1])
    keys: list = []
    for column in columns:
        blobs, paths = column["bytes"], column["path"].to_pylist()
        _, offsets, data = blobs.buffers()
        offsets = np.frombuffer(offsets, dtype=np.int64 if pa.types.is_large_binary(blobs.type) else np.int32)
        offsets = offsets[blobs.offset : blobs.offset + len(blobs) + 1]
        data = memoryview(data if data is not None else b"")
        for i, path in enumerate(paths):
            row = len(keys)
            if lengths[row] < 0:
                keys.append(None if path is None else ("path", path))
            elif shared[row]:
                keys.append(("sha1", hashlib.sha1(data[offsets[i] : offsets[i + 1]]).digest()))
            else:
                keys.append(("row", row))
    return keys


def _image_index(ds, image_column: str, layout: str):
    """``(image_of_row, image_rows)``: each row's distinct image (-1 for a null one) and each image's first row."""
    import pyarrow.compute as pc

    columns = _image_columns(ds, image_column)
    if layout != "pair":  # one row per image: every stored image is its own
        null = np.concatenate(
            [np.asarray(pc.and_(column["bytes"].is_null(), column["path"].is_null())) for column in columns]
        )
        image_rows = np.flatnonzero(~null)
        image_of_row = np.where(null, -1, np.cumsum(~null) - 1)
        return image_of_row.astype(np.int64), image_rows.astype(np.int64)
    image_of_row = np.empty(len(ds), dtype=np.int64)
    image_rows: list[int] = []
    seen: dict = {}
    for row, key in enumerate(_image_keys(columns)):
        if key is None:
            image_of_row[row] = -1
            continue
        if key not in seen:
            seen[key] = len(image_rows)
            image_rows.append(row)
        image_of_row[row] = seen[key]
    return image_of_row, np.asarray(image_rows, dtype=np.int64)


def read_pairs(
    ds,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    on_bad_image: str = "skip",
    require_images: bool = True,
) -> PairTable:
    """Check ``ds`` and build its :class:`PairTable`.

    Images are not decoded here: the stored bytes are only compared (one row per pair) to find repeated
    images. Whether each distinct image decodes is learnt once, when it is encoded
    (:func:`pds_hf.encode.encode_table` drops or reports the ones that do not). A null image is
    known without decoding and is handled here.

    Args:
        ds: a ``datasets.Dataset`` in one of the two layouts above.
        image_column: the column of images.
        caption_column: the column of captions (string, or list of strings).
        on_bad_image: ``"skip"`` drops pairs whose image is null (empty), with a warning counting them;
            ``"error"`` raises, naming the rows.
        require_images: with False and no image column (embeddings given, images never needed), each row
            counts as its own image.

    Raises:
        TypeError, KeyError, ValueError: on a wrong dataset type, missing or mistyped columns, bad
            captions or (with ``on_bad_image="error"``) null images; each names the column, the row and
            the fix.

    Example:
        ```py
        >>> from datasets import load_dataset
        >>> from pds_hf.inputs import read_pairs
        >>> table = read_pairs(load_dataset("nlphuji/flickr30k", split="test"), caption_column="caption")
        >>> table.num_pairs, len(table.image_rows), len(table.texts)
        ```
    """
    if on_bad_image not in ("skip", "error"):
        raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}.")
    from .sources.base import check_columns

    layout = check_columns(ds, image_column, caption_column, require_images=require_images)
    texts, pair_text, pair_rows = _read_captions(ds, caption_column, layout)
    if image_column not in ds.column_names:
        return PairTable(
            image_rows=np.arange(len(ds), dtype=np.int64),
            texts=texts,
            pair_image=pair_rows.copy(),
            pair_text=pair_text,
            pair_rows=pair_rows,
            layout=layout,
        )

    image_of_row, image_rows = _image_index(ds, image_column, layout)
    bad_rows = np.flatnonzero(image_of_row < 0).tolist()
    if bad_rows:
        if on_bad_image == "error":
            from .sources.base import bad_images_error

            raise bad_images_error(image_column, bad_rows)
        logger.warning(
            "Skipping %d empty (null) image(s) in column %r, at row(s) %s%s.",
            len(bad_rows),
            image_column,
            bad_rows[:_MAX_LISTED],
            " ..." if len(bad_rows) > _MAX_LISTED else "",
        )
    pair_image = image_of_row[pair_rows]
    keep = pair_image >= 0
    return PairTable(
        image_rows=image_rows,
        texts=texts,
        pair_image=pair_image[keep],
        pair_text=pair_text[keep],
        pair_rows=pair_rows[keep],
        layout=layout,
        skipped_images=bad_rows,
    )


def decode_image(blob, path):
    """Decode one stored image to RGB PIL (raises on failure)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(blob) if blob is not None else path) as image:
        return image.convert("RGB")


def undecoded_images(ds, image_column: str):
    """``ds`` reduced to its image column, which yields stored bytes/paths instead of decoded images.

    Build it once and pass it to :func:`load_images` for many batches: casting is not free.
    """
    from datasets import Image

    return ds.select_columns([image_column]).cast_column(image_column, Image(decode=False)).with_format(None)


def load_images(ds, image_column: str, rows) -> list:
    """Decode the images at dataset ``rows`` to RGB PIL images (undecodable ones become ``None``).

    ``ds`` may be the source dataset or its :func:`undecoded_images` view (faster over many calls).
    """
    if getattr(ds.features[image_column], "decode", True) or len(ds.column_names) > 1:
        ds = undecoded_images(ds, image_column)
    subset = ds.select(list(map(int, rows)))
    images = []
    for item in subset[image_column]:
        try:
            images.append(decode_image(item.get("bytes"), item.get("path")))
        except Exception:
            images.append(None)
    return images


def _refuse_nulls(column, name: str, at: str, need: str, place) -> None:
    """A ValueError naming the first null of ``column`` (``at`` formatted with ``place(position)``)."""
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(
            f"Column {name!r} is empty (null) at {at.format(place(first))}; {need}. Drop that row or encode it."
        )


def vectors_from_column(column, name: str, rows, dim: int | None = None, dim_row: int | None = None) -> np.ndarray:
    """A pyarrow list-of-float column as an ``(n, d)`` float32 array, checked row by row.

    ``rows`` gives the dataset row of each entry (for the error messages). ``dim`` is the size every vector
    must have, first seen at dataset row ``dim_row`` (a later block of a column read in blocks); without it,
    the first entry sets the size. Used by the map-style reader and by the stream, block by block.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (
        pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)
    ) or not (pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)):
        raise TypeError(
            f"Column {name!r} holds {column.type}; expected one list of floats (a vector) per "
            f"{'caption' if 'text' in name else 'row'}."
        )
    _refuse_nulls(column, name, "row {}", "every row needs an embedding", lambda first: int(rows[first]))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return np.zeros((0, 0), np.float32)
    if dim is None:
        dim, dim_row = int(lengths[0]), int(rows[0])
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(
            f"Column {name!r} holds an empty vector at row {int(rows[empty[0]])}; every row needs an "
            "embedding with at least one value. Drop that row or encode it."
        )
    odd = np.flatnonzero(lengths != dim)
    if odd.size:
        at = int(odd[0])
        raise ValueError(
            f"Column {name!r} mixes vector sizes: {int(lengths[at])} at row {int(rows[at])} but {dim} at row "
            f"{dim_row}. Every embedding must have the same dimension; re-encode the column with one model."
        )
    values = column.flatten() if not pa.types.is_fixed_size_list(column.type) else column.values
    matrix = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), dim)
    from .filter import nonfinite_rows

    bad = nonfinite_rows(matrix)
    if bad.size:
        raise ValueError(
            f"Column {name!r} holds NaN or inf at row(s) {[int(rows[i]) for i in bad[:_MAX_LISTED]]} "
            f"({bad.size} in all). Drop or re-encode those rows."
        )
    return matrix


def caption_vector_counts(column, name: str, captions, where) -> np.ndarray:
    """Check a list-of-vectors column against its rows' caption lists; return the vectors per row.

    ``captions`` holds each row's list of captions; ``where(i)`` says where row ``i`` is, for the errors.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (
        pa.types.is_list(column.type.value_type)
        or pa.types.is_large_list(column.type.value_type)
        or pa.types.is_fixed_size_list(column.type.value_type)
    ):
        raise TypeError(
            f"Column {name!r} holds {column.type}; with a list of captions per row it needs a list of "
            "vectors per row, one per caption."
        )
    _refuse_nulls(column, name, "{}", "every caption needs an embedding", where)
    counts = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = [i for i, row in enumerate(captions) if counts[i] != len(row)]
    if wrong:
        i = wrong[0]
        raise ValueError(
            f"Column {name!r} has {counts[i]} vector(s) at {where(i)} but the row has "
            f"{len(captions[i])} caption(s); give one embedding per caption."
        )
    return counts


# Dataset rows read at a time from the embedding columns: peak memory is one block of vectors (with 768-d float32
# vectors, 48 MiB per caption a row holds), whatever the number of rows.
EMBEDDING_BLOCK_ROWS = 16384


def _embedding_blocks(ds, columns: list, block_rows: int):
    """``(start, table)`` for each block of ``block_rows`` dataset rows: ``columns`` of rows ``start`` onwards, as
    an Arrow table (zero-copy slices of a memory-mapped dataset)."""
    arrow = ds.select_columns(columns).with_format("arrow")
    for start in range(0, len(ds), block_rows):
        yield start, arrow[start : start + block_rows]


def per_caption_vectors(
    column, name: str, captions: list, rows, layout: str, where, dim: int | None = None, dim_row: int | None = None
) -> np.ndarray:
    """The checked vectors of caption embedding column ``name``, one per caption, flattened in row order.

    In the ``"pair"`` layout each row holds one vector; in the ``"image"`` layout a list of vectors, one per caption
    of the row's list in ``captions``. ``rows`` gives each row's number and ``where(i)`` where row ``i`` is, for
    the errors; ``dim`` and ``dim_row`` as for :func:`vectors_from_column`.
    """
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if layout != "image":
        return vectors_from_column(column, name, rows, dim, dim_row)
    counts = caption_vector_counts(column, name, captions, where)
    return vectors_from_column(column.flatten(), name, np.repeat(rows, counts), dim, dim_row)


def _caption_vectors(
    block, start: int, name: str, caption_column: str, layout: str, dim: int | None = None, dim_row: int | None = None
):
    """``(vectors, captions)``: the checked vectors of column ``name`` of an Arrow ``block`` of dataset rows from
    ``start`` on, one per caption, and the captions, both flattened in caption order."""
    values = block.column(caption_column).to_pylist()
    vectors = per_caption_vectors(
        block.column(name),
        name,
        values,
        np.arange(start, start + block.num_rows),
        layout,
        lambda i: f"row {start + i}",
        dim,
        dim_row,
    )
    return vectors, ([caption for value in values for caption in value] if layout == "image" else values)


def embeddings_from_columns(
    ds,
    table: PairTable,
    image_embedding_column: str,
    text_embedding_column: str,
    caption_column: str,
    *,
    stage=None,
    dtype: str = "float32",
    load: bool = True,
):
    """The ``(Ni, d)`` image and ``(Nt, d)`` caption embeddings of ``table``, read from ``ds``'s columns.

    The image column holds one vector per row; the caption column one vector per caption (a list of
    vectors, one per caption, in the one-row-per-image layout). A repeated image or caption takes the
    embedding of its first occurrence. Every shape, size and value is checked, naming the column and row.

    The columns are read :data:`EMBEDDING_BLOCK_ROWS` rows at a time and written into the store of ``stage``
    (see :mod:`pds_hf.store`), so memory holds one block, not the columns: on a disk stage the result is a pair of
    memory maps, which a later call with the same stage opens without reading the columns again. The vector sizes
    of both columns are compared first, from one row each, before anything is read in bulk.

    Args:
        ds: a ``datasets.Dataset`` holding both embedding columns.
        table: its :class:`PairTable` (from :func:`read_pairs`).
        image_embedding_column: the column of image vectors.
        text_embedding_column: the column of caption vectors.
        caption_column: the column of captions.
        stage: a :class:`~pds_hf.cache.Stage` to keep the embeddings in (default: a
            :class:`~pds_hf.cache.MemoryStage`, in memory).
        dtype: ``"float32"`` or ``"float16"``: how the embeddings are stored and returned.
        load: with False (a process of a multi-process run that does not cluster), only the sizes are compared
            and nothing is read or returned.

    Returns:
        ``(image_embeds, text_embeds)`` in ``dtype``: read-only ``np.memmap`` on a disk stage, else ``np.ndarray``;
        ``(None, None)`` when ``load`` is False.

    Raises:
        TypeError, ValueError: a column of the wrong type, a null, a vector of another size or holding NaN or
            inf, a row whose vectors and captions differ in number, or image and caption vectors of different
            sizes; each names the column and the dataset row.

    Example:
        ```py
        >>> from pds_hf.cache import open_stage
        >>> from pds_hf.inputs import embeddings_from_columns, read_pairs
        >>> table = read_pairs(ds, require_images=False)
        >>> image_embeds, text_embeds = embeddings_from_columns(
        ...     ds, table, "image_embedding", "text_embedding", "caption",
        ...     stage=open_stage("/tmp/cache", "embeddings", "0123abcd"), dtype="float16")
        >>> type(image_embeds).__name__, image_embeds.dtype
        ('memmap', dtype('float16'))
        ```
    """
    from .cache import MemoryStage
    from .store import open_embeddings, write_embeddings

    stage = MemoryStage() if stage is None else stage
    if load:
        stored = open_embeddings(stage, dtype)
        if stored is not None:
            logger.info("Opening the stored embeddings in %s.", stage)
            return stored
    arrow = ds.with_format("arrow")
    # Both sizes from one row each, so that a mismatch is reported before any bulk read.
    image_order = np.argsort(table.image_rows, kind="stable")
    image_rows = table.image_rows[image_order]
    first_row = int(image_rows[0]) if len(image_rows) else 0
    image_dim = vectors_from_column(
        arrow[first_row : first_row + 1][image_embedding_column], image_embedding_column, [first_row]
    ).shape[1]
    text_dim = _caption_vectors(arrow[0:1], 0, text_embedding_column, caption_column, table.layout)[0].shape[1]
    if image_dim != text_dim:
        raise ValueError(
            f"Column {image_embedding_column!r} holds {image_dim}-d vectors but {text_embedding_column!r} holds "
            f"{text_dim}-d ones; image and caption embeddings must come from one model (one space)."
        )
    if not load:
        return None, None

    def fill(image_embeds, text_embeds):
        # Each distinct caption takes the vector of its first occurrence: it leaves `wanted` when found.
        wanted = {text: i for i, text in enumerate(table.texts)}
        columns = [image_embedding_column, text_embedding_column, caption_column]
        for start, block in _embedding_blocks(ds, columns, EMBEDDING_BLOCK_ROWS):
            lo, hi = np.searchsorted(image_rows, [start, start + block.num_rows])
            if hi > lo:
                picked = block.column(image_embedding_column).take(image_rows[lo:hi] - start)
                image_embeds[image_order[lo:hi]] = vectors_from_column(
                    picked, image_embedding_column, image_rows[lo:hi], image_dim, first_row
                )
            vectors, captions = _caption_vectors(
                block, start, text_embedding_column, caption_column, table.layout, text_dim, 0
            )
            found = [(wanted.pop(caption), at) for at, caption in enumerate(captions) if caption in wanted]
            if found:
                index, at = np.asarray(found, dtype=np.int64).T
                text_embeds[index] = vectors[at]
        if wanted:
            raise ValueError(
                f"{len(wanted)} caption(s) of the table are not in column {caption_column!r}, e.g. "
                f"{next(iter(wanted))!r}; build the table from this dataset: read_pairs(ds)."
            )

    return write_embeddings(stage, ((len(image_rows), image_dim), (len(table.texts), text_dim)), fill, dtype=dtype)
