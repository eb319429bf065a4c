"""Step 1 of PDS: encode images and captions into one embedding space.

Any object with ``encode_images(list_of_PIL) -> (n, d)`` and ``encode_texts(list_of_str) -> (n, d)``
is an encoder. :class:`TransformersEncoder` adapts a transformers model that has
``get_image_features`` / ``get_text_features`` (CLIP, SigLIP) and its processor; :func:`load_encoder`
turns whatever the user passed (a model id, a loaded model, an encoder object) into one.

The features are the projected ones and are *not* L2-normalised, as in the reference code.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np

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
        # Loaded by id, the model is known by what was loaded: its results can be cached and resumed.
        encoder.fingerprint = f"{model_id}@{revision or 'main'}:{encoder.dtype}"
        return encoder

    def preprocess_images(self, images: list):
        """The model's input tensor for a list of PIL images (resize, crop, normalise).

        Split from :meth:`encode_pixels` so that the encode stage can run it in a background thread,
        beside image decoding, while the model works on the previous batch.
        """
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

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
    """
    if isinstance(spec, str):
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


def check_embeddings(array, *, what: str, expected_rows: int, row_ids=None) -> np.ndarray:
    """Validate an encoder's output: shape ``(expected_rows, d)`` and finite values.

    ``row_ids`` maps output rows to dataset rows so that an error can name the row to fix.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != expected_rows:
        raise ValueError(
            f"The encoder returned {what} embeddings of shape {array.shape}; expected ({expected_rows}, d)."
        )
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        rows = [int(row_ids[i]) if row_ids is not None else int(i) for i in bad[:5]]
        raise ValueError(
            f"The encoder returned NaN or inf {what} embeddings for {bad.size} input(s), first at dataset "
            f"row(s) {rows}. Check the encoder (fp16 overflow is a common cause: try dtype=torch.float32) "
            "or remove those rows."
        )
    return array


def _progress(total: int, desc: str, *, disable: bool = False):
    from datasets.utils import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=disable or None)


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _prepare(encoder, view, image_column: str, rows):
    """Decode a batch and, when the encoder can, preprocess it: the work of the background thread."""
    from .inputs import load_images

    images = load_images(view, image_column, rows)
    ok = np.asarray([i for i, image in enumerate(images) if image is not None], dtype=np.int64)
    kept = [images[i] for i in ok]
    if ok.size and hasattr(encoder, "preprocess_images") and hasattr(encoder, "encode_pixels"):
        return ok, encoder.preprocess_images(kept), True
    return ok, kept, False


def _encode_image_rows(encoder, view, image_column: str, rows, batch_size: int, bar):
    """Encode the images at dataset ``rows``; a row that fails to decode gets NaN and is listed.

    Images are decoded (and preprocessed, for encoders that split that step out) in a background
    thread while the encoder runs on the previous batch.
    """
    from concurrent.futures import ThreadPoolExecutor

    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    embeds, failed = None, []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_prepare, encoder, view, image_column, batches[0]) if batches else None
        for b, batch_rows in enumerate(batches):
            ok, inputs, preprocessed = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(_prepare, encoder, view, image_column, batches[b + 1])
            failed.extend(b * batch_size + i for i in sorted(set(range(len(batch_rows))) - set(ok.tolist())))
            if ok.size:
                out = encoder.encode_pixels(inputs) if preprocessed else encoder.encode_images(inputs)
                out = check_embeddings(out, what="image", expected_rows=ok.size, row_ids=batch_rows[ok])
                if embeds is None:
                    embeds = np.full((len(rows), out.shape[1]), np.nan, dtype=np.float32)
                embeds[b * batch_size + ok] = out
            bar.update(len(batch_rows))
    if embeds is None:  # every image of this shard failed: its width is unknown until another shard
        embeds = np.full((len(rows), 0), np.nan, dtype=np.float32)
    return embeds, np.asarray(failed, dtype=np.int64)


def _encode_texts(encoder, texts: list[str], batch_size: int, bar) -> np.ndarray:
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        chunks.append(check_embeddings(encoder.encode_texts(batch), what="text", expected_rows=len(batch)))
        bar.update(len(batch))
    return np.concatenate(chunks)


def encode_table(encoder, ds, table, *, image_column: str = "image", batch_size: int = 64,
                 on_bad_image: str = "skip", shard_size: int = 10000, stage=None, ranks=None):
    """Encode each distinct image and each distinct caption of a :class:`~pds_hf.inputs.PairTable` once.

    The work is cut into shards of ``shard_size`` images (or captions). Each process encodes the
    shards it owns (see :mod:`pds_hf.distributed`) and saves each one, with its dataset rows, into
    ``stage`` with a completion marker; shards already done (an interrupted earlier run with the
    same fingerprint) are loaded, not recomputed. Every process then reads all shards.

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

    Returns:
        ``(table, image_embeds, text_embeds)``: the table (minus images that failed to decode, when
        ``on_bad_image="skip"``), ``(Ni, d)`` image and ``(Nt, d)`` text embeddings as float32.
    """
    from .cache import MemoryStage
    from .distributed import Ranks
    from .inputs import undecoded_images

    stage = MemoryStage() if stage is None else stage
    ranks = Ranks() if ranks is None else ranks
    rows = table.image_rows
    image_shards, text_shards = _shards(len(rows), shard_size), _shards(len(table.texts), shard_size)
    todo_images = [s for s in range(len(image_shards)) if ranks.owns(s) and not stage.done(f"images-{s:06d}")]
    todo_texts = [s for s in range(len(text_shards)) if ranks.owns(s) and not stage.done(f"texts-{s:06d}")]
    skipped = len([s for s in range(len(image_shards)) if ranks.owns(s)]) - len(todo_images)
    if skipped:
        logger.info("Resuming: %d encoded image shard(s) found in %s.", skipped, stage)

    total = sum(image_shards[s][1] - image_shards[s][0] for s in todo_images)
    view = undecoded_images(ds, image_column) if todo_images else None
    with _progress(total, "Encoding images", disable=not ranks.is_main) as bar:
        for s in todo_images:
            start, stop = image_shards[s]
            embeds, failed = _encode_image_rows(encoder, view, image_column, rows[start:stop], batch_size, bar)
            stage.save_arrays(f"images-{s:06d}", embeds=embeds, rows=rows[start:stop], failed=failed + start)
            if failed.size and on_bad_image == "error" and ranks.world == 1:
                _raise_failed(image_column, rows[failed + start])
    total = sum(text_shards[s][1] - text_shards[s][0] for s in todo_texts)
    with _progress(total, "Encoding captions", disable=not ranks.is_main) as bar:
        for s in todo_texts:
            start, stop = text_shards[s]
            stage.save_arrays(f"texts-{s:06d}", embeds=_encode_texts(encoder, table.texts[start:stop], batch_size, bar))
    ranks.barrier()

    image_parts = [stage.load_arrays(f"images-{s:06d}") for s in range(len(image_shards))]
    failed = np.concatenate([part["failed"] for part in image_parts]) if image_parts else np.zeros(0, np.int64)
    dims = {part["embeds"].shape[1] for part in image_parts if part["embeds"].shape[1]}
    if not dims:
        raise ValueError(f"No image of column {image_column!r} could be decoded and encoded.")
    if len(dims) > 1:
        raise ValueError(f"The encoder returned image embeddings of different sizes {sorted(dims)}.")
    dim = dims.pop()
    image_embeds = np.concatenate([part["embeds"] if part["embeds"].shape[1] else
                                   np.full((len(part["rows"]), dim), np.nan, np.float32) for part in image_parts])
    text_embeds = np.concatenate([stage.load_arrays(f"texts-{s:06d}")["embeds"] for s in range(len(text_shards))])
    if text_embeds.shape[1] != dim:
        raise ValueError(f"The encoder's image embeddings have {dim} dimensions but its text embeddings "
                         f"{text_embeds.shape[1]}; both must live in one space.")
    if failed.size:
        if on_bad_image == "error":
            _raise_failed(image_column, rows[failed])
        logger.warning("Skipping %d image(s) of column %r that failed to decode, at row(s) %s.",
                       failed.size, image_column, rows[failed][:5].tolist())
        keep = np.ones(len(rows), dtype=bool)
        keep[failed] = False
        table = table.without_images(failed)
        image_embeds = image_embeds[keep]
    return table, image_embeds, text_embeds


def _raise_failed(image_column: str, bad_rows) -> None:
    raise ValueError(f"Column {image_column!r}: {len(bad_rows)} image(s) failed to decode, at row(s) "
                     f"{list(map(int, bad_rows[:5]))}. Remove them or pass on_bad_image='skip'.")
