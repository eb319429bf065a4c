"""Step 1 of PDS: encode images and captions into one embedding space.

Any object with ``encode_images(list_of_PIL) -> (n, d)`` and ``encode_texts(list_of_str) -> (n, d)``
is an encoder. :class:`TransformersEncoder` adapts a transformers model that has
``get_image_features`` / ``get_text_features`` (CLIP, SigLIP) and its processor; :func:`load_encoder`
turns whatever the user passed (a model id, a loaded model, an encoder object) into one.

The features are the projected ones and are *not* L2-normalised, as in the reference code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .cache import log_found
from .filter import nonfinite_rows
from .sources.base import bad_images_error
from .store import open_embeddings, write_embeddings

logger = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    """What :func:`pds_hf.distill` needs from an image-text encoder."""

    def encode_images(self, images: list) -> np.ndarray:
        """Return an ``(len(images), d)`` array for a list of RGB PIL images."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Return an ``(len(texts), d)`` array for a list of strings."""


def _features(output: Any):
    # transformers 5 returns an output object whose pooler_output is the projected embedding;
    # older versions (and some custom models) return the tensor itself.
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        return output.pooler_output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class ImagePreprocessor:
    """A transformers processor's image half as a picklable callable: PIL images in, pixel tensor out.

    It holds the processor only (not the model), so that decode workers (see :func:`encode_table`) can
    run it in other processes. An encoder that offers it as ``image_preprocessor`` (with
    ``encode_pixels``) gets its preprocessing done there.

    Args:
        processor: a transformers processor or image processor.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images: list):
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


class TransformersEncoder:
    """Encoder over a transformers model with ``get_image_features`` / ``get_text_features``.

    Args:
        model: a loaded model, e.g. ``CLIPModel`` or ``SiglipModel``.
        processor: its processor (image processor + tokenizer). When ``None``, it is loaded from
            ``model.name_or_path``.
        device: where to run; defaults to the model's device.
        dtype: run in this dtype (e.g. ``torch.float16`` on a GPU); outputs are always float32.

    Example:
        ```py
        >>> from pds_hf.encode import TransformersEncoder
        >>> enc = TransformersEncoder.from_pretrained("openai/clip-vit-large-patch14", device="cuda")
        >>> enc.encode_texts(["a dog on a beach"]).shape
        (1, 768)
        ```
    """

    def __init__(self, model, processor=None, *, device=None, dtype=None):
        import torch

        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise TypeError(
                f"{type(model).__name__} has no get_image_features/get_text_features; pass a CLIP- or "
                "SigLIP-like model, or an object with encode_images/encode_texts."
            )
        if processor is None:
            from transformers import AutoProcessor

            name = getattr(model, "name_or_path", "")
            try:
                processor = AutoProcessor.from_pretrained(name)
            except Exception as err:
                raise ValueError(
                    f"Could not load a processor for model {name!r} ({err}); pass processor=... explicitly."
                ) from err
        self.model = model.eval()
        self.processor = processor
        self.image_preprocessor = ImagePreprocessor(processor)
        if device is not None:
            self.model.to(device)
        if dtype is not None:
            self.model.to(dtype)
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.name = getattr(model, "name_or_path", None) or type(model).__name__
        # SigLIP was trained on text padded to a fixed length; CLIP on the longest in the batch.
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        self._text_padding = "max_length" if model_type.startswith("siglip") else True
        self._torch = torch

    @classmethod
    def from_pretrained(cls, model_id: str, *, revision: str | None = None, device=None, dtype=None):
        """Load ``AutoModel`` and ``AutoProcessor`` for ``model_id`` from the Hub or a local folder."""
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(model_id, revision=revision)
        processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        encoder = cls(model, processor, device=device, dtype=dtype)
        encoder.name = model_id
        encoder.revision = revision
        # Loaded by id, the model is known by what was loaded: its results can be cached and resumed. From the Hub,
        # that is the commit the revision resolved to (a moving branch such as main then recomputes once it moves).
        commit = getattr(model.config, "_commit_hash", None)
        encoder.fingerprint = f"{model_id}@{commit or revision or 'main'}:{encoder.dtype}"
        return encoder

    def preprocess_images(self, images: list):
        """The model's input tensor for a list of PIL images (resize, crop, normalise).

        Split from :meth:`encode_pixels` so that the encode stage can run it in decode workers (as
        :attr:`image_preprocessor`), while the model works on earlier batches.
        """
        return self.image_preprocessor(images)

    def encode_pixels(self, pixel_values) -> np.ndarray:
        """Projected image features of a preprocessed batch."""
        torch = self._torch
        with torch.inference_mode():
            feats = _features(self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype)))
        return feats.float().cpu().numpy()

    def encode_images(self, images: list) -> np.ndarray:
        return self.encode_pixels(self.preprocess_images(images))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        inputs = tokenizer(list(texts), padding=self._text_padding, truncation=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            feats = _features(self.model.get_text_features(**inputs))
        return feats.float().cpu().numpy()


def load_encoder(spec, *, processor=None, revision: str | None = None, device=None, dtype=None) -> Encoder:
    """Turn ``spec`` into an :class:`Encoder`.

    Args:
        spec: a Hub model id or local path, a loaded transformers model with
            ``get_image_features``/``get_text_features``, or an object that already has
            ``encode_images``/``encode_texts`` (returned as is).
        processor: the processor to use with a loaded model.
        revision: model revision when ``spec`` is an id.
        device, dtype: where and in which dtype to run a transformers model.

    Raises:
        pds_hf.hub_models.ModelLoadError: ``spec`` is an id or folder that cannot be loaded; the message names it
            and its revision, says when the Hub could not be reached, and the fix (``option`` is
            ``"clip_model"``). Without an answer from the Hub, a model not in the local cache fails at once.

    Example:
        ```py
        >>> encoder = load_encoder("openai/clip-vit-large-patch14", device="cuda")
        >>> encoder.encode_texts(["a dog"]).shape
        (1, 768)
        ```
    """
    if isinstance(spec, str):
        from .hub_models import loading_model

        with loading_model("clip_model", spec, revision, index_file="config.json", library="transformers"):
            return TransformersEncoder.from_pretrained(spec, revision=revision, device=device, dtype=dtype)
    if hasattr(spec, "encode_images") and hasattr(spec, "encode_texts"):
        return spec
    return TransformersEncoder(spec, processor, device=device, dtype=dtype)


def model_fingerprint(model) -> str | None:
    """The identity under which a model's outputs may be cached, or None (then nothing is cached).

    Models loaded by id carry one; for a model or encoder object built in memory, set a
    ``fingerprint`` attribute (a string that changes whenever its outputs would) to enable resuming.
    """
    value = getattr(model, "fingerprint", None)
    return value if isinstance(value, str) and value else None


def encoder_name(encoder) -> str:
    """A printable identity for provenance: the model id where known, else the class name."""
    return getattr(encoder, "name", None) or type(encoder).__name__


def check_embeddings(array, *, what: str, expected_rows: int, row_ids=None, rows_of: str = "dataset") -> np.ndarray:
    """Validate an encoder's output: shape ``(expected_rows, d)`` with ``d > 0``, and finite values.

    ``row_ids`` maps output rows to rows of ``rows_of`` (the dataset, or e.g. one input shard of a stream) so that
    an error can name the row to fix.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != expected_rows or array.shape[1] == 0:
        raise ValueError(
            f"The encoder returned {what} embeddings of shape {array.shape}; expected ({expected_rows}, d) with d > 0."
        )
    bad = nonfinite_rows(array)
    if bad.size:
        rows = [int(row_ids[i]) if row_ids is not None else int(i) for i in bad[:5]]
        raise ValueError(
            f"The encoder returned NaN or inf {what} embeddings for {bad.size} input(s), first at {rows_of} "
            f"row(s) {rows}. Check the encoder (fp16 overflow is a common cause: try dtype=torch.float32) "
            "or remove those rows."
        )
    return array


def _progress(total: int, desc: str, *, disable: bool = False):
    from .progress import progress

    return progress(total, desc=desc, disable=disable)


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def default_workers() -> int:
    """Decode workers when none are set: the cores this process may use (shared with the other processes
    of a multi-process run on the same machine) but one, left to the model; at least 1, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1))


def _stored_images(view, image_column: str, rows) -> list:
    """The stored ``(bytes, path)`` of the images at dataset ``rows`` of an undecoded view (no decoding)."""
    return [(item.get("bytes"), item.get("path")) for item in view.select(list(map(int, rows)))[image_column]]


def _prepare(stored: list, preprocess):
    """Decode stored images and, with ``preprocess``, preprocess them: the work of a decode worker.

    Returns ``(ok, inputs)``: the positions that decoded, and their preprocessed batch (or PIL images
    when ``preprocess`` is None).
    """
    from .inputs import decode_image

    ok, images = [], []
    for i, (blob, path) in enumerate(stored):
        if blob is None and path is None:
            continue
        try:
            images.append(decode_image(blob, path))
        except Exception:
            continue
        ok.append(i)
    ok = np.asarray(ok, dtype=np.int64)
    return ok, (preprocess(images) if preprocess is not None and ok.size else images)


_worker_preprocess = None
_worker_depth = 1


def _start_worker(preprocess, depth: int) -> None:
    """Decode worker set-up: one torch thread (a worker of a process that ran torch must not use
    torch's thread pool), the preprocessing to run, and how many batches may be in flight."""
    global _worker_preprocess, _worker_depth
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _worker_preprocess, _worker_depth = preprocess, depth


def _room_in_shared_memory(nbytes: int, depth: int) -> bool:
    """Whether ``/dev/shm`` has room for ``depth`` + 2 batches of ``nbytes`` (Docker gives it 64 MB unless
    told ``--shm-size``)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= (depth + 2) * nbytes


def _prepare_in_worker(stored: list):
    """:func:`_prepare` in a worker. A tensor goes back through shared memory, as with torch's DataLoader,
    where ``/dev/shm`` has room for the batches in flight; else as a numpy array through the pipe (about
    five times more of the main process's time per batch)."""
    ok, inputs = _prepare(stored, _worker_preprocess)
    if hasattr(inputs, "numpy") and not _room_in_shared_memory(inputs.nbytes, _worker_depth):
        return ok, inputs.numpy(), True
    return ok, inputs, False


def _decode_pool(workers: int, preprocess, depth: int):
    """``workers`` decode processes for ``depth`` batches in flight. Forked where the platform can (as
    torch's DataLoader does: workers touch no GPU and run torch with one thread), so that a script need not
    guard its ``__main__``; spawned elsewhere."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=_start_worker, initargs=(preprocess, depth)
    )


class DecodeFeed:
    """Decoded (and preprocessed) image batches for an encoder, in order, from ``workers`` processes.

    Used as a context manager (the worker processes end with it). Called on an iterable of batches of stored
    images (lists of ``(bytes, path)``, as an undecoded ``datasets.Image`` column holds them), it yields for each
    batch, in order, ``(ok, inputs, preprocessed)``: the positions that decoded and their model inputs. With
    workers, up to ``2 * workers`` batches are decoded ahead (the iterable is read that far ahead); with
    ``workers=0`` each batch is decoded in this thread when asked for. :meth:`encode` turns one such batch into
    embeddings. The map-style encode stage (:func:`encode_table`) and a stream's encode pass
    (:mod:`pds_hf.stream`) both read their images through it, so their results do not depend on ``workers``.

    Args:
        encoder: an :class:`Encoder`. When it offers a picklable ``image_preprocessor`` and ``encode_pixels`` (as
            :class:`TransformersEncoder` does), the workers preprocess too.
        workers: decode processes; None for :func:`default_workers`, 0 for none.

    Example:
        ```py
        >>> with DecodeFeed(encoder, workers=2) as feed:
        ...     for ok, inputs, preprocessed in feed(batches_of_stored_images):
        ...         embeds = feed.encode(ok, inputs, preprocessed)
        ```
    """

    def __init__(self, encoder, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"workers must be None or an integer >= 0, got {workers!r}.")
        self.encoder = encoder
        self.workers = default_workers() if workers is None else workers
        self.depth = 2 * self.workers
        self.pool = None
        if not self.workers:
            self.preprocess = encoder.preprocess_images if _splits_preprocessing(encoder) else None
        elif hasattr(encoder, "encode_pixels"):
            self.preprocess = getattr(encoder, "image_preprocessor", None)
        else:
            self.preprocess = None

    def __enter__(self) -> DecodeFeed:
        if self.workers:
            self.pool = _decode_pool(self.workers, self.preprocess, self.depth)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __call__(self, stored_batches):
        if self.pool is None:
            for stored in stored_batches:
                ok, inputs = _prepare(stored, self.preprocess)
                yield ok, inputs, self.preprocess is not None and ok.size > 0
            return
        from concurrent.futures.process import BrokenProcessPool

        pending, upcoming = deque(), iter(stored_batches)
        for stored in upcoming:
            pending.append(self.pool.submit(_prepare_in_worker, stored))
            if len(pending) >= self.depth:
                break
        while pending:
            try:
                ok, inputs, as_array = pending.popleft().result()
            except BrokenProcessPool as err:
                raise RuntimeError(
                    "An image decode worker died (killed for memory?). Lower DistillConfig.encode_workers or "
                    "encode_batch_size, or pass encode_workers=0 to decode in the main process."
                ) from err
            stored = next(upcoming, None)
            if stored is not None:
                pending.append(self.pool.submit(_prepare_in_worker, stored))
            if as_array:
                import torch

                inputs = torch.from_numpy(inputs)
            yield ok, inputs, self.preprocess is not None and ok.size > 0

    def encode(self, ok, inputs, preprocessed: bool, row_ids=None, rows_of: str = "dataset") -> np.ndarray:
        """The ``(len(ok), d)`` embeddings of one batch from the feed (``row_ids``: their rows of ``rows_of``, for
        errors)."""
        encoder = self.encoder
        if not preprocessed and _splits_preprocessing(encoder):
            inputs, preprocessed = encoder.preprocess_images(inputs), True
        out = encoder.encode_pixels(inputs) if preprocessed else encoder.encode_images(inputs)
        return check_embeddings(out, what="image", expected_rows=ok.size, row_ids=row_ids, rows_of=rows_of)


def _encode_image_rows(feed: DecodeFeed, batches, rows, batch_size: int, bar):
    """Encode the images at dataset ``rows`` from ``batches`` (what ``feed`` yields, a batch of ``batch_size``
    rows each); a row that fails to decode gets NaN and is listed."""
    embeds, failed = None, []
    for b in range(0, len(rows), batch_size):
        batch_rows = rows[b : b + batch_size]
        ok, inputs, preprocessed = next(batches)
        failed.extend(b + i for i in sorted(set(range(len(batch_rows))) - set(ok.tolist())))
        if ok.size:
            out = feed.encode(ok, inputs, preprocessed, row_ids=batch_rows[ok])
            if embeds is None:
                embeds = np.full((len(rows), out.shape[1]), np.nan, dtype=np.float32)
            embeds[b + ok] = out
        bar.update(len(batch_rows))
    if embeds is None:  # every image of this shard failed: its width is unknown until another shard
        embeds = np.full((len(rows), 0), np.nan, dtype=np.float32)
    return embeds, np.asarray(failed, dtype=np.int64)


def _splits_preprocessing(encoder) -> bool:
    return hasattr(encoder, "preprocess_images") and hasattr(encoder, "encode_pixels")


def encode_batch(batch: dict, load_encoder, *, columns: tuple, output_columns: tuple) -> dict:
    """Embed one batch of rows: what ``DistillProcessor.encode`` (a batched ``map`` function) returns.

    Args:
        batch: the rows, as ``map(..., batched=True)`` passes them.
        load_encoder: returns the encoder; called once the batch's columns are checked.
        columns: the ``(image, caption)`` column names.
        output_columns: the ``(image embedding, text embedding)`` column names to return.

    Returns:
        One image vector per row, and one text vector per caption (a list of vectors per row when the row holds a
        list of captions); each distinct caption of the batch is encoded once.
    """
    from .inputs import caption_lists

    image_column, caption_column = columns
    for name, option in ((image_column, "image_column"), (caption_column, "caption_column")):
        if name not in batch:
            raise KeyError(
                f"The dataset has no column {name!r} (its columns: {sorted(batch)}); pass "
                f"{option}=... to the processor."
            )
    images = []
    for position, image in enumerate(batch[image_column]):
        if image is None or not hasattr(image, "convert"):
            raise ValueError(
                f"Column {image_column!r}: item {position} of this batch is "
                f"{type(image).__name__}, not a decoded image. Drop rows without images first "
                f"(ds.filter(lambda x: x is not None, input_columns={image_column!r}))."
            )
        images.append(image.convert("RGB"))
    captions = batch[caption_column]
    nested = bool(captions) and isinstance(captions[0], (list, tuple))
    rows = caption_lists(captions, "image" if nested else "pair", caption_column, lambda i: f"item {i} of this batch")
    flat = [c for row in rows for c in row]
    encoder = load_encoder()
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
    image_out, text_out = output_columns
    return {image_out: image_embeds, text_out: text_column}


def encode_text_batches(
    encoder, texts: list[str], batch_size: int, bar=None, rows=None, rows_of: str = "dataset"
) -> np.ndarray:
    """Encode ``texts`` in batches (``rows``: the row of ``rows_of`` of each, for errors; ``bar``: a progress bar
    to advance). Used by the map-style encode stage and by the stream's."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        chunks.append(
            check_embeddings(
                encoder.encode_texts(batch),
                what="text",
                expected_rows=len(batch),
                row_ids=None if rows is None else rows[start : start + batch_size],
                rows_of=rows_of,
            )
        )
        if bar is not None:
            bar.update(len(batch))
    return np.concatenate(chunks)


def _first_rows(table) -> np.ndarray:
    """The first dataset row of each distinct caption of a :class:`~pds_hf.inputs.PairTable`."""
    rows = np.empty(len(table.texts), dtype=np.int64)
    rows[table.pair_text[::-1]] = table.pair_rows[::-1]  # the last write wins: the first pair of each caption
    return rows


def recorded_shard_size(stage, shard_size: int, ranks) -> int:
    """The shard size of ``stage``'s shards: the one its first run recorded, else ``shard_size`` (then recorded).

    The shards are how the work is cut, not what it computes, so the size is not in the stage's key: a rerun with
    another ``shard_size`` finds the first run's shards and keeps cutting the work as they are cut.
    """
    if not stage.done("shards") and ranks.is_main:
        stage.save_json("shards", {"shard_size": int(shard_size)})
    ranks.barrier()
    recorded = int(stage.load_json("shards")["shard_size"])
    if recorded != shard_size:
        logger.info(
            "The encode stage %s is cut in shards of %d (shard_size=%d is kept for new stages).",
            stage,
            recorded,
            shard_size,
        )
    return recorded


def encode_table(
    encoder,
    ds,
    table,
    *,
    image_column: str = "image",
    batch_size: int = 64,
    on_bad_image: str = "skip",
    shard_size: int = 10000,
    stage=None,
    ranks=None,
    workers: int | None = None,
    load: bool = True,
    dtype: str = "float32",
):
    """Encode each distinct image and each distinct caption of a :class:`~pds_hf.inputs.PairTable` once.

    The work is cut into shards of ``shard_size`` images (or captions). Each process encodes the
    shards it owns (see :mod:`pds_hf.distributed`) and saves each one, with its dataset rows, into
    ``stage`` with a completion marker; shards already done (an interrupted earlier run with the
    same fingerprint) are loaded, not recomputed. After every process is done, the embeddings are read
    back from all shards (only where ``load``): on a disk stage, once, into the store of :mod:`pds_hf.store`
    (``image_embeds.npy``, ``text_embeds.npy``), returned as memory maps and reopened by a rerun.

    Images are decoded, and preprocessed when the encoder offers a picklable ``image_preprocessor``
    (as :class:`TransformersEncoder` does), in ``workers`` processes, batches ahead of the model and
    handed to it in order; the results do not depend on ``workers``. This is also where an image is
    found not to decode: it is dropped, or reported with ``on_bad_image="error"``.

    Args:
        encoder: an :class:`Encoder`.
        ds: the source dataset.
        table: its :class:`~pds_hf.inputs.PairTable`.
        image_column: the image column.
        batch_size: images or captions per encoder call.
        on_bad_image: ``"skip"`` or ``"error"`` for images that fail to decode.
        shard_size: images or captions per saved shard.
        stage: a :class:`~pds_hf.cache.Stage` to save shards in (default: in memory).
        ranks: this process's :class:`~pds_hf.distributed.Ranks` (default: a single process).
        workers: decode processes; None for :func:`default_workers` (from the cores), 0 to decode in
            this thread, between the model's batches.
        load: read the embeddings back. With False (a process of a multi-process run that does not
            cluster), only the small index of each image shard is read, to drop the failed images.
        dtype: how the embeddings are stored and returned: ``"float32"`` or ``"float16"`` (half the disk).

    Returns:
        ``(table, image_embeds, text_embeds)``: the table (minus images that failed to decode, when
        ``on_bad_image="skip"``), ``(Ni, d)`` image and ``(Nt, d)`` text embeddings in ``dtype`` (read-only
        ``np.memmap`` on a disk stage); both embeddings are None when ``load`` is False.

    Example:
        ```py
        >>> from pds_hf.encode import TransformersEncoder, encode_table
        >>> from pds_hf.inputs import read_pairs
        >>> encoder = TransformersEncoder.from_pretrained("openai/clip-vit-large-patch14", device="cuda")
        >>> table, image_embeds, text_embeds = encode_table(encoder, ds, read_pairs(ds), workers=8)
        ```
    """
    from .cache import MemoryStage
    from .distributed import Ranks
    from .inputs import undecoded_images

    feed = DecodeFeed(encoder, workers)
    stage = MemoryStage() if stage is None else stage
    ranks = Ranks() if ranks is None else ranks
    rows = table.image_rows
    shard_size = recorded_shard_size(stage, shard_size, ranks)
    image_shards, text_shards = _shards(len(rows), shard_size), _shards(len(table.texts), shard_size)
    todo_images = [s for s in range(len(image_shards)) if ranks.owns(s) and not stage.done(f"images-{s:06d}")]
    todo_texts = [s for s in range(len(text_shards)) if ranks.owns(s) and not stage.done(f"texts-{s:06d}")]
    owned = len([s for s in range(len(image_shards)) if ranks.owns(s)])
    log_found(stage, owned - len(todo_images), owned, "encoded image shards")

    total = sum(image_shards[s][1] - image_shards[s][0] for s in todo_images)
    if todo_images:
        view = undecoded_images(ds, image_column)
        stored = (
            _stored_images(view, image_column, rows[start : min(start + batch_size, image_shards[s][1])])
            for s in todo_images
            for start in range(image_shards[s][0], image_shards[s][1], batch_size)
        )
        with feed, _progress(total, "Encoding images", disable=not ranks.is_main) as bar:
            batches = feed(stored)
            for s in todo_images:
                start, stop = image_shards[s]
                embeds, failed = _encode_image_rows(feed, batches, rows[start:stop], batch_size, bar)
                stage.save_arrays(f"images-{s:06d}", embeds=embeds, rows=rows[start:stop], failed=failed + start)
                if failed.size and on_bad_image == "error" and ranks.world == 1:
                    raise bad_images_error(image_column, rows[failed + start])
    total = sum(text_shards[s][1] - text_shards[s][0] for s in todo_texts)
    text_rows = _first_rows(table) if todo_texts else None
    with _progress(total, "Encoding captions", disable=not ranks.is_main) as bar:
        for s in todo_texts:
            start, stop = text_shards[s]
            stage.save_arrays(
                f"texts-{s:06d}",
                embeds=encode_text_batches(encoder, table.texts[start:stop], batch_size, bar, text_rows[start:stop]),
            )
    ranks.barrier()

    failed = [stage.load_arrays(f"images-{s:06d}", keys=["failed"])["failed"] for s in range(len(image_shards))]
    failed = np.concatenate(failed) if failed else np.zeros(0, np.int64)
    if not load:
        return _drop_failed(table, failed, image_column, on_bad_image), None, None

    stored = open_embeddings(stage, dtype)
    if stored is None:
        logger.info("loading %d encoded shards", len(image_shards) + len(text_shards))
        stored = _store_shards(stage, image_shards, text_shards, failed, image_column, dtype)
    else:
        logger.info("Opening the stored embeddings in %s.", stage)
    image_embeds, text_embeds = stored
    return _drop_failed(table, failed, image_column, on_bad_image), image_embeds, text_embeds


def _store_shards(stage, image_shards, text_shards, failed, image_column: str, dtype: str):
    """Write the saved shards of ``stage`` into its store (see :mod:`pds_hf.store`), one shard in memory at a time,
    without the images at positions ``failed``; returns ``(image_embeds, text_embeds)``."""
    dim = next(
        (
            width
            for s in range(len(image_shards))
            if (width := stage.load_arrays(f"images-{s:06d}", keys=["embeds"])["embeds"].shape[1])
        ),
        None,
    )
    if dim is None:
        raise ValueError(f"No image of column {image_column!r} could be decoded and encoded.")
    text_dim = stage.load_arrays("texts-000000", keys=["embeds"])["embeds"].shape[1] if text_shards else dim
    if text_dim != dim:
        raise ValueError(
            f"The encoder's image embeddings have {dim} dimensions but its text embeddings "
            f"{text_dim}; both must live in one space."
        )

    def fill(image_embeds, text_embeds):
        at = 0
        for s, (start, stop) in enumerate(image_shards):
            part = stage.load_arrays(f"images-{s:06d}", keys=["embeds", "failed"])
            keep = np.ones(stop - start, dtype=bool)
            keep[part["failed"] - start] = False
            if part["embeds"].shape[1] not in (0, dim):
                raise ValueError(
                    f"The encoder returned image embeddings of different sizes "
                    f"{sorted({dim, part['embeds'].shape[1]})}."
                )
            if keep.any():
                image_embeds[at : at + int(keep.sum())] = part["embeds"][keep]
                at += int(keep.sum())
        for s, (start, stop) in enumerate(text_shards):
            embeds = stage.load_arrays(f"texts-{s:06d}", keys=["embeds"])["embeds"]
            if embeds.shape[1] != dim:
                raise ValueError(
                    f"The encoder's image embeddings have {dim} dimensions but its text embeddings "
                    f"{embeds.shape[1]}; both must live in one space."
                )
            text_embeds[start:stop] = embeds

    num_images = image_shards[-1][1] - failed.size if image_shards else 0
    num_texts = text_shards[-1][1] if text_shards else 0
    return write_embeddings(stage, ((num_images, dim), (num_texts, dim)), fill, dtype=dtype)


def _drop_failed(table, failed, image_column: str, on_bad_image: str):
    """``table`` without the distinct images at positions ``failed`` (with a warning), or the error."""
    if not failed.size:
        return table
    rows = table.image_rows
    if on_bad_image == "error":
        raise bad_images_error(image_column, rows[failed])
    logger.warning(
        "Skipping %d image(s) of column %r that failed to decode, at row(s) %s.",
        failed.size,
        image_column,
        rows[failed][:5].tolist(),
    )
    return table.without_images(failed)
