"""The settings of a distillation run, with the paper's values as defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

METHODS = ("pds", "random", "herding", "kcenter")

# Settings that say how one machine runs, never what comes out: they are kept out of every cache key and
# fingerprint, and a recipe saved on one machine does not carry them to another.
MACHINE_FIELDS = (
    "device",
    "encode_batch_size",
    "encode_workers",
    "shard_size",
    "synthesis_batch_size",
    "use_cache",
    "cache_dir",
    "barrier_timeout",
)


def _setting_repr(value) -> str:
    """A setting as one short piece of text: a plain value as Python writes it, a loaded object as
    ``<Class 'name'>`` (its ``name_or_path`` or ``name``), never the object's own, possibly page-long, repr."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return repr(value)
    name = getattr(value, "name_or_path", None) or getattr(value, "name", None)
    return f"<{type(value).__name__} {name!r}>" if isinstance(name, str) and name else f"<{type(value).__name__}>"


def _is_default(value, default) -> bool:
    # Defaults are plain values; a loaded object is never one (and may not compare with a string).
    plain = value is None or isinstance(value, (str, int, float, bool))
    return plain and value == default


@dataclass
class DistillConfig:
    """How :func:`pds_hf.distill` makes a distilled set. Defaults follow the PDS paper.

    Attributes:
        num_pairs: number of distilled pairs ``M`` (clusters per modality).
        method: ``"pds"`` (prototypes) or a baseline choosing real pairs: ``"random"``,
            ``"herding"``, ``"kcenter"``.
        synthesis: step 7: ``"unclip"`` (paper), ``"retrieve"`` (nearest real image), ``"retrieve-scored"`` (of
            the 8 real images nearest the image prototype, the one the encoder matches best with the text
            prototype; no decoder, see benchmarks/quality), ``"none"``.
        clip_model: encoder: Hub id, loaded transformers model, or object with encode_images/encode_texts.
        clip_processor: processor for a loaded transformers ``clip_model`` (loaded from its id if None).
        clip_revision: revision of ``clip_model`` when it is an id.
        unclip_model: Stable unCLIP decoder: Hub id or loaded ``StableUnCLIPImg2ImgPipeline``.
        unclip_revision: revision of ``unclip_model`` when it is an id.
        image_column: column of images in the source dataset.
        caption_column: column of captions (a string, or a list of strings per image).
        image_embedding_column: column of image embeddings (one vector per row). When the dataset has it and
            ``text_embedding_column``, encoding is skipped and these are used.
        text_embedding_column: column of caption embeddings (one vector per caption: a list of vectors when
            the row holds a list of captions).
        rm_ratio: fraction of pairs with the lowest image-text cosine similarity removed first.
        seed: seed of k-means, of the random baseline and of each pair's synthesis generator.
        empty: matched clusters that share no pair: ``"centroid"`` (use k-means centres) or ``"drop"``.
        kmeans_iterations: Lloyd iterations per k-means run.
        kmeans_restarts: k-means runs per modality; the lowest inertia is kept.
        kmeans_init: initial centres: ``"auto"`` (greedy k-means++ up to 2,000 clusters, afk-mc2 above, whose
            seeding grows linearly in k), ``"k-means++"``, ``"random"`` or ``"afk-mc2"``.
        normalize: cluster each modality on L2-normalised embeddings (cosine geometry; default),
            or, with False, on the raw ones as the reference code does. Prototypes are means of the
            raw embeddings either way. See :func:`pds_hf.prototypes_from_embeddings`.
        num_inference_steps: unCLIP denoising steps.
        guidance_scale: unCLIP classifier-free guidance scale.
        noise_level: noise added to the image embedding by Stable unCLIP.
        negative_prompt: unCLIP negative prompt; None for none (the pipeline then uses the empty prompt).
        image_size: side of the output images in pixels (LANCZOS); None keeps the native size.
        encode_batch_size: images or captions per encoder call.
        encode_workers: processes decoding and preprocessing images ahead of the encoder; None picks from
            the cores (:func:`pds_hf.encode.default_workers`), 0 decodes in the main thread.
        synthesis_batch_size: images per unCLIP call (does not change the images).
        device: ``"cuda"``, ``"cpu"``...; None picks CUDA when available.
        half_precision: run the models in float16 on a GPU (as the paper); None means yes on CUDA.
        on_bad_image: undecodable images: ``"skip"`` (warn and count) or ``"error"``.
        use_cache: save each stage under a fingerprint so an interrupted run resumes (needed for
            multi-process runs).
        cache_dir: where; None means ``$PDS_HF_CACHE``, else ``$HF_HOME/pds_hf``.
        shard_size: images (or captions) per encoding shard: the unit of resuming and of splitting
            work between processes (a stream's unit is its input shard, whose embeddings are saved in chunks
            of this many rows). A machine setting: it does not change the embeddings, and an encode stage keeps
            the size its first run cut it in.
        embedding_dtype: how the embeddings are stored for steps 2-6 (memory maps in the cache, see
            :mod:`pds_hf.store`): ``"float32"``, or ``"float16"`` for half the disk (the prototypes move about
            as much as with another k-means seed; measured in benchmarks/perf/RESULTS.md).
        barrier_timeout: seconds a process of a multi-process run waits for the others (e.g. while the
            main process clusters) before failing.
    """

    num_pairs: int = 100
    method: str = "pds"
    synthesis: str = "unclip"
    clip_model: Any = "openai/clip-vit-large-patch14"
    clip_processor: Any = None
    clip_revision: str | None = None
    unclip_model: Any = "stabilityai/stable-diffusion-2-1-unclip-small"
    unclip_revision: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    image_embedding_column: str = "image_embedding"
    text_embedding_column: str = "text_embedding"
    rm_ratio: float = 0.2
    seed: int = 42
    empty: str = "centroid"
    kmeans_iterations: int = 25
    kmeans_restarts: int = 1
    kmeans_init: str = "auto"
    normalize: bool = True
    num_inference_steps: int = 100
    guidance_scale: float = 5.0
    noise_level: int = 10
    negative_prompt: str | None = "text, watermark"
    image_size: int | None = 224
    encode_batch_size: int = 64
    encode_workers: int | None = None
    synthesis_batch_size: int = 8
    device: str | None = None
    half_precision: bool | None = None
    on_bad_image: str = "skip"
    use_cache: bool = True
    cache_dir: str | None = None
    shard_size: int = 10000
    embedding_dtype: str = "float32"
    barrier_timeout: float = 7200

    def __post_init__(self):
        from .cluster import INIT_METHODS
        from .prototypes import EMPTY_POLICIES
        from .store import EMBEDDING_DTYPES
        from .synthesize import SYNTHESIS_METHODS

        if isinstance(self.num_pairs, bool) or not isinstance(self.num_pairs, int) or self.num_pairs < 1:
            raise ValueError(f"num_pairs must be a positive integer, got {self.num_pairs!r}.")
        if not 0.0 <= self.rm_ratio < 1.0:
            raise ValueError(f"rm_ratio must be in [0, 1), got {self.rm_ratio!r}.")
        for name, allowed in (
            ("method", METHODS),
            ("synthesis", SYNTHESIS_METHODS),
            ("empty", EMPTY_POLICIES),
            ("kmeans_init", INIT_METHODS),
            ("on_bad_image", ("skip", "error")),
            ("embedding_dtype", EMBEDDING_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in (
            "encode_batch_size",
            "synthesis_batch_size",
            "num_inference_steps",
            "kmeans_iterations",
            "kmeans_restarts",
            "shard_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.encode_workers is not None and (
            isinstance(self.encode_workers, bool) or not isinstance(self.encode_workers, int) or self.encode_workers < 0
        ):
            raise ValueError(f"encode_workers must be None or an integer >= 0, got {self.encode_workers!r}.")
        if not self.barrier_timeout > 0:
            raise ValueError(f"barrier_timeout must be a positive number of seconds, got {self.barrier_timeout!r}.")

    def __repr__(self) -> str:
        """The settings that differ from the defaults, a loaded model named by its class and name.

        One line when it fits in 100 characters, else one line per setting. :meth:`to_dict` lists every setting.
        """
        changed = [
            f"{f.name}={_setting_repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if not _is_default(getattr(self, f.name), f.default)
        ]
        line = f"{type(self).__name__}({', '.join(changed)})"
        if len(line) <= 100:
            return line
        return f"{type(self).__name__}(\n" + "".join(f"    {item},\n" for item in changed) + ")"

    def replace(self, **changes) -> DistillConfig:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields; loaded models are replaced by their names."""
        from .encode import encoder_name

        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not isinstance(value, (str, int, float, bool)):
                value = getattr(value, "name_or_path", None) or encoder_name(value)
            out[field.name] = value
        return out

    def result_dict(self) -> dict:
        """:meth:`to_dict` less :data:`MACHINE_FIELDS`: the settings that can change the distilled set.

        What fingerprints and cache keys of a whole run are made of; two configs that differ only in
        device, batch sizes, workers or cache folder give the same ``result_dict()``.
        """
        return {k: v for k, v in self.to_dict().items() if k not in MACHINE_FIELDS}
