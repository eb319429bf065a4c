"""Step 7 of PDS: one image per prototype.

``"unclip"`` (the paper) decodes the image prototype with Stable unCLIP
(``StableUnCLIPImg2ImgPipeline``), prompted with the retrieved caption. ``"retrieve"`` (the paper's
image-prototype-retrieval ablation) takes the real image nearest to the image prototype and needs no
decoder. ``"none"`` makes no image.

Each pair has its own generator seeded with ``seed + pair index``, so an image does not depend on
the batch size or on which process made it.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

SYNTHESIS_METHODS = ("unclip", "retrieve", "none")


def load_unclip(spec, *, revision: str | None = None, device=None, dtype=None):
    """A ``StableUnCLIPImg2ImgPipeline`` from a model id, or ``spec`` itself if it is a pipeline.

    Args:
        spec: a Hub id or local folder (default in :class:`~pds_hf.DistillConfig`:
            ``stabilityai/stable-diffusion-2-1-unclip-small``), or a loaded pipeline.
        revision: model revision when ``spec`` is an id.
        device: move the pipeline there (``None``: leave it where it is).
        dtype: load in this dtype (``torch.float16`` on a GPU, as the paper does).
    """
    if isinstance(spec, str):
        from diffusers import StableUnCLIPImg2ImgPipeline

        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(spec, revision=revision, torch_dtype=dtype)
        pipe.fingerprint = unclip_fingerprint(spec, revision=revision, dtype=dtype)
    else:
        pipe = spec
    if device is not None:
        pipe = pipe.to(device)
    return pipe


def unclip_fingerprint(spec, *, revision: str | None = None, dtype=None) -> str | None:
    """The cache identity of a decoder: from its id (without loading it), or a pipeline's ``fingerprint``."""
    if isinstance(spec, str):
        return f"{spec}@{revision or 'main'}:{dtype}"
    from .encode import model_fingerprint

    return model_fingerprint(spec)


def unclip_embedding_dim(pipe) -> int:
    """The size of ``image_embeds`` the pipeline's UNet expects (half its class-embedding input)."""
    return int(pipe.unet.config.projection_class_embeddings_input_dim) // 2


def resize_image(image, size: int | None):
    """``image`` as a ``size`` x ``size`` square (LANCZOS); unchanged when ``size`` is None."""
    from PIL import Image

    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.LANCZOS)


def synthesize_unclip(pipe, image_embeds, prompts: list[str], *, negative_prompt: str | None = "text, watermark",
                      num_inference_steps: int = 100, guidance_scale: float = 5.0, noise_level: int = 10,
                      seed: int = 42, batch_size: int = 8, image_size: int | None = 224, indices=None,
                      on_batch=None, show_progress: bool = True):
    """Decode image prototypes into images with Stable unCLIP.

    Args:
        pipe: a ``StableUnCLIPImg2ImgPipeline``.
        image_embeds: ``(M, d)`` image prototypes; ``d`` must match the pipeline (768 for ViT-L/14).
        prompts: the ``M`` retrieved captions.
        negative_prompt: what the images should not show, the same for every prototype; ``None`` for
            none (the pipeline then uses the empty prompt).
        num_inference_steps, guidance_scale, noise_level: passed to the pipeline.
        seed: the prototype with index ``i`` uses a generator seeded with ``seed + i``.
        batch_size: prototypes decoded per pipeline call (does not change the images).
        image_size: output side in pixels (LANCZOS resize); ``None`` keeps the pipeline's size.
        indices: the global index of each prototype (default ``0..M-1``), when the work is split.
        on_batch: called as ``on_batch(indices, images)`` after each batch, e.g. to save them.
        show_progress: show a progress bar.

    Returns:
        A list of ``M`` RGB PIL images.

    Example:
        ```py
        >>> from pds_hf.testing import tiny_unclip_pipeline
        >>> images = synthesize_unclip(tiny_unclip_pipeline(), np.zeros((2, 32)), ["a cat", "a dog"],
        ...                            num_inference_steps=2, image_size=None)
        >>> images[0].size
        (32, 32)
        ```
    """
    import torch

    from .progress import progress

    image_embeds = np.asarray(image_embeds, dtype=np.float32)
    indices = list(range(len(prompts))) if indices is None else [int(i) for i in indices]
    expected = unclip_embedding_dim(pipe)
    if image_embeds.shape[1] != expected:
        raise ValueError(
            f"The image prototypes have {image_embeds.shape[1]} dimensions but the unCLIP pipeline expects "
            f"{expected}; the encoder must be the one the decoder was trained on (CLIP ViT-L/14 for "
            "stable-diffusion-2-1-unclip-small), or use synthesis='retrieve'."
        )
    device = pipe.device
    dtype = pipe.unet.dtype
    generator_device = "cpu" if device.type == "mps" else device
    images = []
    with progress(len(prompts), desc="Synthesizing images", unit="image", disable=not show_progress) as bar:
        for start in range(0, len(prompts), batch_size):
            stop = min(start + batch_size, len(prompts))
            generators = [torch.Generator(generator_device).manual_seed(seed + i) for i in indices[start:stop]]
            out = pipe(
                prompt=list(prompts[start:stop]),
                negative_prompt=None if negative_prompt is None else [negative_prompt] * (stop - start),
                image_embeds=torch.from_numpy(image_embeds[start:stop]).to(device, dtype),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level,
                generator=generators,
                output_type="pil",
            )
            batch = [resize_image(image.convert("RGB"), image_size) for image in out.images]
            if on_batch is not None:
                on_batch(indices[start:stop], batch)
            images.extend(batch)
            bar.update(stop - start)
    return images


def retrieve_images(ds, image_column: str, image_rows, image_embeds, image_prototypes, *,
                    image_size: int | None = 224):
    """The real image nearest (cosine) to each image prototype, and its dataset row.

    Args:
        ds: the source dataset.
        image_column: its image column.
        image_rows: ``(Ni,)`` dataset row of each distinct image.
        image_embeds: ``(Ni, d)`` their embeddings.
        image_prototypes: ``(M, d)`` image prototypes.
        image_size: output side in pixels; ``None`` keeps the original image.
    """
    from .caption import nearest
    from .inputs import load_images

    rows = np.asarray(image_rows)[nearest(image_prototypes, image_embeds)]
    return [resize_image(image, image_size) for image in load_images(ds, image_column, rows)], rows


def retrieve_pair_images(image_embeds, text_embeds, pair_image, pair_text, image_prototypes, text_prototypes, *,
                         chunk: int = 1024) -> np.ndarray:
    """Step 7 without a decoder, by real pairs: the image of the real pair nearest to *both* prototypes.

    ``synthesis="retrieve"`` takes the image nearest to the image prototype alone; on small clean data that
    image often belongs to a different concept than the text prototype beside it. Here every real pair
    ``p`` is scored ``cos(image_p, image prototype) + cos(caption_p, text prototype)`` (teacher embeddings)
    and the best pair's image is taken, so the distilled image is one that the teacher has seen captioned
    like the text prototype.

    Args:
        image_embeds: ``(Ni, d)`` embeddings of the distinct images.
        text_embeds: ``(Nt, d)`` embeddings of the distinct captions.
        pair_image: ``(P,)`` index into ``image_embeds`` of each real pair's image.
        pair_text: ``(P,)`` index into ``text_embeds`` of each real pair's caption.
        image_prototypes: ``(M, d)`` image prototypes.
        text_prototypes: ``(M, d)`` text prototypes, row ``k`` beside image prototype ``k``.
        chunk: prototypes scored at once (memory: ``chunk x P`` floats; does not change the result).

    Returns:
        ``(M,)`` index into ``image_embeds`` of each prototype's image (the first best pair on ties). The
        caller loads those images, e.g. ``load_images(ds, image_column, image_rows[index])``.

    Example:
        ```py
        >>> images = np.array([[1.0, 0.0], [0.8, 0.6]])
        >>> texts = np.array([[0.0, 1.0], [1.0, 0.0]])
        >>> retrieve_pair_images(images, texts, np.array([0, 1]), np.array([0, 1]),
        ...                      np.array([[1.0, 0.1]]), np.array([[1.0, 0.0]]))
        array([1])
        ```
    """
    from .filter import normalize

    image_embeds, text_embeds = np.asarray(image_embeds, np.float32), np.asarray(text_embeds, np.float32)
    pair_image, pair_text = np.asarray(pair_image, np.int64), np.asarray(pair_text, np.int64)
    image_prototypes = np.asarray(image_prototypes, np.float32)
    text_prototypes = np.asarray(text_prototypes, np.float32)
    if len(pair_image) != len(pair_text) or not len(pair_image):
        raise ValueError(f"pair_image and pair_text must be equally long and not empty; got {len(pair_image)} and "
                         f"{len(pair_text)}: pass the pair table's pair_image and pair_text.")
    if len(image_prototypes) != len(text_prototypes):
        raise ValueError(f"{len(image_prototypes)} image prototypes but {len(text_prototypes)} text prototypes; "
                         "pass the two sides of the same prototypes.")
    for name, index, size in (("pair_image", pair_image, len(image_embeds)), ("pair_text", pair_text, len(text_embeds))):
        bad = np.flatnonzero((index < 0) | (index >= size))
        if bad.size:
            raise ValueError(f"{name} at pair {int(bad[0])} is {int(index[bad[0]])}, outside 0..{size - 1}; it must "
                             "index the embeddings passed beside it.")
    for name, protos, embeds in (("image", image_prototypes, image_embeds), ("text", text_prototypes, text_embeds)):
        if protos.shape[1] != embeds.shape[1]:
            raise ValueError(f"The {name} prototypes have {protos.shape[1]} dimensions but the {name} embeddings "
                             f"{embeds.shape[1]}; both must come from the same encoder.")
    images_unit, texts_unit = normalize(image_embeds), normalize(text_embeds)
    best = np.empty(len(image_prototypes), dtype=np.int64)
    for start in range(0, len(image_prototypes), chunk):
        stop = start + chunk
        scores = (normalize(image_prototypes[start:stop]) @ images_unit.T)[:, pair_image]
        scores += (normalize(text_prototypes[start:stop]) @ texts_unit.T)[:, pair_text]
        best[start:stop] = pair_image[np.argmax(scores, axis=1)]
    return best
