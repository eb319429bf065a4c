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
        return encoder

    def encode_images(self, images: list) -> np.ndarray:
        torch = self._torch
        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            feats = _features(self.model.get_image_features(pixel_values=pixel_values))
        return feats.float().cpu().numpy()

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


def _progress(total: int, desc: str):
    from datasets.utils import tqdm

    return tqdm(total=total, desc=desc, unit="item")


def encode_table(encoder, ds, table, *, image_column: str = "image", batch_size: int = 64,
                 on_bad_image: str = "skip"):
    """Encode each distinct image and each distinct caption of a :class:`~pds_hf.inputs.PairTable` once.

    Images are decoded in a background thread while the encoder runs on the previous batch.

    Returns:
        ``(table, image_embeds, text_embeds)``: the table (minus images that failed to decode, when
        ``on_bad_image="skip"``), ``(Ni, d)`` image and ``(Nt, d)`` text embeddings as float32.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .inputs import load_images

    rows = table.image_rows
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    image_embeds, failed = None, []
    with ThreadPoolExecutor(max_workers=1) as pool, _progress(len(rows), "Encoding images") as bar:
        pending = pool.submit(load_images, ds, image_column, batches[0]) if batches else None
        for b, batch_rows in enumerate(batches):
            images = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(load_images, ds, image_column, batches[b + 1])
            ok = np.asarray([i for i, image in enumerate(images) if image is not None], dtype=np.int64)
            failed.extend(b * batch_size + i for i, image in enumerate(images) if image is None)
            if ok.size:
                out = check_embeddings(encoder.encode_images([images[i] for i in ok]), what="image",
                                       expected_rows=ok.size, row_ids=batch_rows[ok])
                if image_embeds is None:
                    image_embeds = np.full((len(rows), out.shape[1]), np.nan, dtype=np.float32)
                image_embeds[b * batch_size + ok] = out
            bar.update(len(batch_rows))
    if image_embeds is None:
        raise ValueError(f"No image of column {image_column!r} could be decoded and encoded.")
    if failed:
        bad_rows = [int(rows[i]) for i in failed]
        if on_bad_image == "error":
            raise ValueError(f"Column {image_column!r}: {len(failed)} image(s) failed to decode, at row(s) "
                             f"{bad_rows[:5]}. Remove them or pass on_bad_image='skip'.")
        logger.warning("Skipping %d image(s) of column %r that failed to decode, at row(s) %s.",
                       len(failed), image_column, bad_rows[:5])
        keep = np.ones(len(rows), dtype=bool)
        keep[failed] = False
        table = table.without_images(np.asarray(failed))
        image_embeds = image_embeds[keep]
    dim = image_embeds.shape[1]

    text_chunks = []
    texts = table.texts
    with _progress(len(texts), "Encoding captions") as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            text_chunks.append(check_embeddings(encoder.encode_texts(batch), what="text",
                                                expected_rows=len(batch)))
            bar.update(len(batch))
    text_embeds = np.concatenate(text_chunks)
    if text_embeds.shape[1] != dim:
        raise ValueError(f"The encoder's image embeddings have {dim} dimensions but its text embeddings "
                         f"{text_embeds.shape[1]}; both must live in one space.")
    return table, image_embeds, text_embeds
