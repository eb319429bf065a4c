"""Frozen features, computed once per (model, dataset) and cached.

Neither the student's image network nor the text encoder trains during evaluation, so the features of
every image and caption are computed once; ``runs x epochs`` then only train the small heads of
:mod:`pds_hf.evaluation.train` on these arrays.

Two caches hold them:

- in memory, for the life of the process (the last :data:`MEMORY_ITEMS` arrays), so evaluating several
  distilled sets against one test set encodes the test set once;
- on disk, as ``.npy`` files named by a hash of (what was computed, the model's identity, the
  dataset's fingerprint, the column and the rows). By default under the pds_hf cache
  (``$PDS_HF_CACHE/features``, see :mod:`pds_hf.cache`), and not at all when ``datasets.disable_caching()`` is in
  effect. A model whose identity is unknown (an anonymous callable) is never cached beyond one call.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..filter import nonfinite_rows

logger = logging.getLogger(__name__)

MEMORY_ITEMS = 16
_MEMORY: OrderedDict[str, np.ndarray] = OrderedDict()


@dataclass
class RetrievalSet:
    """Frozen features of an image-text retrieval set (a test or validation split).

    Attributes:
        image_feats: ``(num_images, d_student)`` student features, one row per distinct image.
        text_feats: ``(num_captions, d_text)`` text features, one row per caption (an image with 5
            captions has 5 rows).
        caption_to_image: ``(num_captions,)`` index into ``image_feats`` of each caption's image.
        name: what the report calls this set.
    """

    image_feats: np.ndarray
    text_feats: np.ndarray
    caption_to_image: np.ndarray
    name: str = "test"

    def __post_init__(self):
        self.image_feats = np.asarray(self.image_feats, dtype=np.float32)
        self.text_feats = np.asarray(self.text_feats, dtype=np.float32)
        self.caption_to_image = np.asarray(self.caption_to_image, dtype=np.int64)
        if len(self.text_feats) != len(self.caption_to_image):
            raise ValueError(
                f"{self.name}: {len(self.text_feats)} caption features but "
                f"{len(self.caption_to_image)} caption_to_image entries."
            )

    @property
    def num_images(self) -> int:
        return len(self.image_feats)

    @property
    def num_captions(self) -> int:
        return len(self.text_feats)

    def describe(self) -> str:
        return f"{self.name} ({self.num_images:,} images, {self.num_captions:,} captions)"


def clear_memory_cache() -> None:
    """Forget the features held in memory (the disk cache is kept)."""
    _MEMORY.clear()


def resolve_cache_dir(cache_dir) -> Path | None:
    """``None``: the default folder (or no disk cache if datasets caching is disabled); ``False``: no disk
    cache; a path: that folder."""
    if cache_dir is False:
        return None
    if cache_dir is None:
        import datasets

        from ..cache import default_cache_dir

        if not datasets.is_caching_enabled():
            return None
        return default_cache_dir() / "features"
    return Path(cache_dir)


def feature_key(kind: str, model_key: str | None, ds, column: str, rows) -> str | None:
    """The cache key for ``kind`` features of ``ds[column]`` at ``rows`` by ``model_key``; ``None`` when the
    model or the dataset has no stable identity."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if model_key is None or fingerprint is None:
        return None
    rows_hash = hashlib.sha1(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()
    return hashlib.sha1(f"{kind}|{model_key}|{fingerprint}|{column}|{rows_hash}".encode()).hexdigest()


def _load(path: Path) -> np.ndarray | None:
    try:
        array = np.load(path)
    except (OSError, ValueError) as err:
        logger.warning("Ignoring unreadable cached features %s (%s); recomputing.", path, err)
        return None
    logger.info("Loaded cached features from %s", path)
    return array


def cached(key: str | None, compute, *, cache_dir: Path | None) -> np.ndarray:
    """Return the array stored under ``key``, or ``compute()`` it and store it (memory, then disk)."""
    if key is None:
        return compute()
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = cache_dir / f"{key}.npy" if cache_dir is not None else None
    array = _load(path) if path is not None and path.exists() else None
    if array is None:
        array = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a crash never leaves a truncated file under the final name.
            partial = path.with_suffix(f".{os.getpid()}.partial")
            with open(partial, "wb") as handle:
                np.save(handle, array)
            os.replace(partial, path)
    # Shared between callers: make it read-only so that no caller can change what the next one gets.
    array.flags.writeable = False
    _MEMORY[key] = array
    while len(_MEMORY) > MEMORY_ITEMS:
        _MEMORY.popitem(last=False)
    return array


def _progress(total: int, desc: str):
    from datasets.utils import tqdm

    return tqdm(total=total, desc=desc, unit="item")


def student_image_features(student, ds, rows, *, image_column: str, cache_dir: Path | None, desc: str) -> np.ndarray:
    """Features of the images at dataset ``rows`` by ``student`` (a :class:`~.student.Student`), cached."""
    from ..inputs import load_images

    rows = np.asarray(rows, dtype=np.int64)

    def compute():
        chunks = []
        with _progress(len(rows), desc) as bar:
            for start in range(0, len(rows), student.batch_size):
                batch_rows = rows[start : start + student.batch_size]
                images = load_images(ds, image_column, batch_rows)
                bad = [int(row) for row, image in zip(batch_rows, images, strict=True) if image is None]
                if bad:
                    raise ValueError(
                        f"Column {image_column!r} has image(s) that cannot be decoded at row(s) {bad[:5]}; "
                        "remove them first (ds.filter / ds.select)."
                    )
                chunks.append(
                    _finite(student.encode_images(images), what=f"student {student.name!r} features", rows=batch_rows)
                )
                bar.update(len(batch_rows))
        return np.concatenate(chunks)

    key = feature_key("student-images", student.cache_key, ds, image_column, rows)
    return cached(key, compute, cache_dir=cache_dir)


def encoder_text_features(
    encoder,
    texts: list[str],
    *,
    model_key: str | None,
    ds,
    caption_column: str,
    cache_dir: Path | None,
    batch_size: int,
    desc: str,
) -> np.ndarray:
    """``encoder.encode_texts`` of ``texts`` (the distinct captions of ``ds[caption_column]``), cached."""

    def compute():
        from ..encode import encode_text_batches

        with _progress(len(texts), desc) as bar:
            return encode_text_batches(encoder, texts, batch_size, bar, rows=np.arange(len(texts)), rows_of="caption")

    text_hash = hashlib.sha1("\n".join(texts).encode()).hexdigest()
    key = feature_key("encoder-texts", model_key, ds, f"{caption_column}|{text_hash}", np.arange(len(texts)))
    return cached(key, compute, cache_dir=cache_dir)


def _finite(array, *, what: str, rows) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"The {what} have shape {array.shape}; expected (n, d).")
    bad = nonfinite_rows(array)
    if bad.size:
        rows = list(rows)
        raise ValueError(f"The {what} hold NaN or inf for input(s) at row(s) {[int(rows[i]) for i in bad[:5]]}.")
    return array


def retrieval_set(
    ds,
    *,
    student,
    encoder,
    encoder_key: str | None,
    image_column: str,
    caption_column: str,
    cache_dir: Path | None,
    text_batch_size: int = 256,
    name: str = "test",
) -> RetrievalSet:
    """Read ``ds`` (either caption layout), and compute its frozen features as a :class:`RetrievalSet`.

    Images go through the student; captions through ``encoder.encode_texts``, each distinct string once.
    Every caption (pair) of an image is one query and one candidate.
    """
    from ..inputs import read_pairs

    table = read_pairs(ds, image_column=image_column, caption_column=caption_column)
    image_feats = student_image_features(
        student,
        ds,
        table.image_rows,
        image_column=image_column,
        cache_dir=cache_dir,
        desc=f"Student features ({name} images)",
    )
    text_feats = encoder_text_features(
        encoder,
        table.texts,
        model_key=encoder_key,
        ds=ds,
        caption_column=caption_column,
        cache_dir=cache_dir,
        batch_size=text_batch_size,
        desc=f"Text features ({name} captions)",
    )
    return RetrievalSet(
        image_feats=image_feats,
        text_feats=text_feats[table.pair_text],
        caption_to_image=table.pair_image,
        name=f"{name} set{_label(ds)}",
    )


def _label(ds) -> str:
    """`` `name[split]` `` for a dataset loaded by name, else nothing."""
    name = getattr(getattr(ds, "info", None), "dataset_name", None)
    split = getattr(ds, "split", None)
    if not name:
        return ""
    return f" `{name}[{split}]`" if split else f" `{name}`"
