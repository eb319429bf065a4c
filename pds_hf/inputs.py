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

    def without_images(self, bad: np.ndarray) -> "PairTable":
        """The same table minus the distinct images at positions ``bad`` and their pairs.

        Image indices are renumbered; texts are kept (an orphaned caption is harmless: it can still be
        retrieved as the nearest caption to a prototype).
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
            skipped_images=sorted(self.skipped_images + [int(r) for r in self.image_rows[bad]]),
        )


def check_dataset_type(ds) -> None:
    """Refuse what is not a single in-memory/on-disk ``datasets.Dataset``, saying what to do instead."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        raise TypeError(
            f"Got a DatasetDict with splits {splits}; distill one split, e.g. ds[{splits[0]!r}].distill(...) "
            f"or load_dataset(..., split={splits[0]!r})."
        )
    if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError(
            "Got an IterableDataset (streaming); clustering needs every pair at once. Load without "
            "streaming=True, or materialise it: Dataset.from_generator(lambda: (yield from ids), "
            "features=ids.features)."
        )
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"Expected a datasets.Dataset, got {type(ds).__name__}.")


def _caption_layout(ds, caption_column: str) -> str:
    from datasets import LargeList, List, Value

    feature = ds.features[caption_column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return "pair"
    if isinstance(feature, (List, LargeList)):
        inner = feature.feature
        if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
            return "image"
    raise TypeError(
        f"Column {caption_column!r} has feature {feature}; expected a string (one row per pair) or a list of "
        "strings (one row per image). Pass caption_column=... to name the right column."
    )


def check_columns(ds, image_column: str, caption_column: str) -> str:
    """Check both columns exist and hold images and captions; return the layout."""
    from datasets import Image

    check_dataset_type(ds)
    columns = list(ds.column_names)
    for name, role, option in ((image_column, "image", "image_column"), (caption_column, "caption", "caption_column")):
        if name not in columns:
            raise KeyError(
                f"The dataset has no {role} column {name!r}; its columns are {columns}. "
                f"Pass {option}=... to name the {role} column."
            )
    if not isinstance(ds.features[image_column], Image):
        raise TypeError(
            f"Column {image_column!r} holds {ds.features[image_column]}, not images. If it holds file paths "
            f"or bytes, cast it first: ds = ds.cast_column({image_column!r}, datasets.Image()); otherwise "
            "pass image_column=... to name the image column."
        )
    if len(ds) == 0:
        raise ValueError("The dataset has no rows.")
    return _caption_layout(ds, caption_column)


def _bad_caption(value) -> str | None:
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not value.strip():
        return "is empty"
    return None


def _read_captions(ds, caption_column: str, layout: str):
    """Return (texts, pair_text, pair_rows) after checking every caption."""
    values = ds.with_format(None)[caption_column]
    problems: list[str] = []
    index: dict[str, int] = {}
    pair_text: list[int] = []
    pair_rows: list[int] = []
    for row, value in enumerate(values):
        captions = [value] if layout == "pair" else value
        if layout == "image" and not captions:
            problems.append(f"row {row} has an empty caption list")
            continue
        for position, caption in enumerate(captions):
            why = _bad_caption(caption)
            if why:
                where = f"row {row}" if layout == "pair" else f"row {row}, caption {position}"
                problems.append(f"{where} {why} ({caption!r})")
                continue
            pair_text.append(index.setdefault(caption, len(index)))
            pair_rows.append(row)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ValueError(
            f"Column {caption_column!r} has {len(problems)} bad caption(s): {listed}{more}. Every caption must be "
            "a non-empty string; drop or fix those rows first, e.g. ds.filter(...)."
        )
    return list(index), np.asarray(pair_text, dtype=np.int64), np.asarray(pair_rows, dtype=np.int64)


def _image_blobs(ds, image_column: str, batch_size: int = 1000):
    """Yield (row, bytes or None, path or None) for each row, without decoding."""
    from datasets import Image

    raw = ds.select_columns([image_column]).cast_column(image_column, Image(decode=False)).with_format("arrow")
    row = 0
    for table in raw.iter(batch_size=batch_size):
        column = table.column(image_column).combine_chunks()
        for blob, path in zip(column.field("bytes").to_pylist(), column.field("path").to_pylist()):
            yield row, blob, path
            row += 1


def _opens(blob, path) -> bool:
    """Whether PIL recognises the image (reads the header only: cheap)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(blob) if blob is not None else path):
            return True
    except Exception:
        return False


def read_pairs(ds, *, image_column: str = "image", caption_column: str = "caption",
               on_bad_image: str = "skip") -> PairTable:
    """Check ``ds`` and build its :class:`PairTable`.

    Args:
        ds: a ``datasets.Dataset`` in one of the two layouts above.
        image_column: the column of images.
        caption_column: the column of captions (string, or list of strings).
        on_bad_image: ``"skip"`` drops pairs whose image bytes PIL cannot open (with a warning counting
            them); ``"error"`` raises, naming the rows.

    Raises:
        TypeError, KeyError, ValueError: on a wrong dataset type, missing or mistyped columns, bad
            captions or (with ``on_bad_image="error"``) undecodable images; each names the column,
            the row and the fix.
    """
    if on_bad_image not in ("skip", "error"):
        raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}.")
    layout = check_columns(ds, image_column, caption_column)
    texts, pair_text, pair_rows = _read_captions(ds, caption_column, layout)

    image_of_row = np.empty(len(ds), dtype=np.int64)
    image_rows: list[int] = []
    seen: dict[str, int] = {}
    bad_rows: list[int] = []
    for row, blob, path in _image_blobs(ds, image_column):
        if blob is None and path is None:
            key = None
        elif layout == "pair":
            # Rows of the pair layout repeat images; identical bytes are one image.
            key = hashlib.sha1(blob).hexdigest() if blob is not None else f"path:{path}"
        else:
            key = f"row:{row}"
        if key is None or (key not in seen and not _opens(blob, path)):
            bad_rows.append(row)
            image_of_row[row] = -1
            continue
        if key not in seen:
            seen[key] = len(image_rows)
            image_rows.append(row)
        image_of_row[row] = seen[key]

    if bad_rows:
        if on_bad_image == "error":
            raise ValueError(
                f"Column {image_column!r} has {len(bad_rows)} image(s) that cannot be decoded, at row(s) "
                f"{bad_rows[:_MAX_LISTED]}. Remove them (ds.select / ds.filter) or pass on_bad_image='skip'."
            )
        logger.warning("Skipping %d undecodable image(s) in column %r, at row(s) %s%s.", len(bad_rows),
                       image_column, bad_rows[:_MAX_LISTED], " ..." if len(bad_rows) > _MAX_LISTED else "")
    pair_image = image_of_row[pair_rows]
    keep = pair_image >= 0
    return PairTable(
        image_rows=np.asarray(image_rows, dtype=np.int64),
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
