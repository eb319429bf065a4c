"""Step 7 of PDS: one image per prototype.

``"unclip"`` (the paper) decodes the image prototype with Stable unCLIP
(``StableUnCLIPImg2ImgPipeline``), prompted with the retrieved caption. ``"retrieve"`` (the paper's
image-prototype-retrieval ablation) takes the real image nearest to the image prototype and needs no
decoder. ``"none"`` makes no image.

Each pair has its own generator seeded with ``seed + pair index``, so an image does not depend on
the batch size or on which process made it.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

logger = logging.getLogger(__name__)

SYNTHESIS_METHODS = ("unclip", "retrieve", "retrieve-scored", "none")
# The step-7 rules that take real images of the source instead of making new ones.
REAL_IMAGE_METHODS = ("retrieve", "retrieve-scored")


def load_unclip(spec, *, revision: str | None = None, device=None, dtype=None):
    """A ``StableUnCLIPImg2ImgPipeline`` from a model id, or ``spec`` itself if it is a pipeline.

    Args:
        spec: a Hub id or local folder (default in :class:`~pds_hf.DistillConfig`:
            ``stabilityai/stable-diffusion-2-1-unclip-small``), or a loaded pipeline.
        revision: model revision when ``spec`` is an id.
        device: move the pipeline there (``None``: leave it where it is).
        dtype: load in this dtype (``torch.float16`` on a GPU, as the paper does).

    Raises:
        pds_hf.hub_models.ModelLoadError: ``spec`` is an id or folder that cannot be loaded (``option`` is
            ``"unclip_model"``); what the message says, and when it fails at once, as for
            :func:`pds_hf.encode.load_encoder`.

    Example:
        ```py
        >>> pipe = load_unclip("stabilityai/stable-diffusion-2-1-unclip-small", device="cuda", dtype=torch.float16)
        ```
    """
    if isinstance(spec, str):
        from .hub_models import loading_model

        with loading_model("unclip_model", spec, revision, index_file="model_index.json", library="diffusers"):
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


@contextlib.contextmanager
def _no_step_bars(pipe):
    """The pipeline's per-step bar off for the block ("Synthesizing images" counts images), then as it was."""
    own = dict(getattr(pipe, "_progress_bar_config", None) or {})
    pipe.set_progress_bar_config(**{**own, "disable": True})
    try:
        yield
    finally:
        pipe.set_progress_bar_config(**own)


def synthesize_unclip(
    pipe,
    image_embeds,
    prompts: list[str],
    *,
    negative_prompt: str | None = "text, watermark",
    num_inference_steps: int = 100,
    guidance_scale: float = 5.0,
    noise_level: int = 10,
    seed: int = 42,
    batch_size: int = 8,
    image_size: int | None = 224,
    indices=None,
    on_batch=None,
    show_progress: bool = True,
):
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

    from .progress import library_output, progress

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
    with (
        progress(len(prompts), desc="Synthesizing images", unit="image", disable=not show_progress) as bar,
        library_output(),
        _no_step_bars(pipe),
    ):
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


def retrieve_scored_images(
    image_embeds, image_prototypes, text_prototypes, *, candidates: int = 8, chunk: int = 1024
) -> np.ndarray:
    """Step 7 without a decoder, checked by the teacher: of the real images nearest the image prototype,
    the one that matches the text prototype best.

    ``synthesis="retrieve"`` takes the single image nearest to the image prototype and never looks at
    the text prototype beside it. Here the ``candidates`` images nearest to the image prototype (cosine)
    are scored by the encoder that made the prototypes, ``cos(image, text prototype)``, and the best is
    taken: the distilled image stays close to the image prototype and agrees with the pair's text side.
    With ``candidates=1`` this is ``synthesis="retrieve"``. It holds a normalised copy of ``image_embeds``:
    for sets that fit in memory (``"retrieve"`` streams over memory-mapped embeddings in blocks).

    Args:
        image_embeds: ``(Ni, d)`` encoder embeddings of the distinct real images.
        image_prototypes: ``(M, d)`` image prototypes.
        text_prototypes: ``(M, d)`` text prototypes, row ``k`` beside image prototype ``k``.
        candidates: how many nearest images the teacher chooses from (the paper has no such step; 8 was
            fixed before it was measured, see benchmarks/quality/README.md).
        chunk: prototypes scored at once (memory: ``chunk x Ni`` floats; does not change the result).

    Returns:
        ``(M,)`` index into ``image_embeds`` of each prototype's image (the nearer image on ties). The caller
        loads them, e.g. ``load_images(ds, image_column, image_rows[index])``.

    Example:
        ```py
        >>> images = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> retrieve_scored_images(images, np.array([[1.0, 0.1]]), np.array([[0.6, 0.8]]), candidates=2)
        array([1])
        ```
    """
    from .filter import normalize

    image_embeds = np.asarray(image_embeds, np.float32)
    image_prototypes = np.asarray(image_prototypes, np.float32)
    text_prototypes = np.asarray(text_prototypes, np.float32)
    if not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}.")
    if len(image_prototypes) != len(text_prototypes):
        raise ValueError(
            f"{len(image_prototypes)} image prototypes but {len(text_prototypes)} text prototypes; "
            "pass the two sides of the same prototypes."
        )
    for name, protos in (("image", image_prototypes), ("text", text_prototypes)):
        if protos.ndim != 2 or protos.shape[1] != image_embeds.shape[1]:
            raise ValueError(
                f"The {name} prototypes have shape {protos.shape} but the image embeddings "
                f"{image_embeds.shape}; both must come from the same encoder (same width)."
            )
    images_unit = normalize(image_embeds)
    count = min(int(candidates), len(images_unit))
    best = np.empty(len(image_prototypes), dtype=np.int64)
    for start in range(0, len(image_prototypes), chunk):
        near = normalize(image_prototypes[start : start + chunk]) @ images_unit.T
        nearest = np.argsort(-near, axis=1, kind="stable")[:, :count]
        teacher = np.einsum("kd,kcd->kc", normalize(text_prototypes[start : start + chunk]), images_unit[nearest])
        best[start : start + chunk] = nearest[np.arange(len(nearest)), np.argmax(teacher, axis=1)]
    return best
