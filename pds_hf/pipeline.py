"""``distill``: the PDS steps in order, from a ``datasets.Dataset`` to a distilled one.

encode -> filter -> cluster -> align -> prototypes -> caption -> synthesize
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import numpy as np

from .cache import default_cache_dir, fingerprint, open_stage
from .caption import retrieve_captions
from .config import DistillConfig
from .distributed import current_ranks
from .encode import encode_table, encoder_name, load_encoder, model_fingerprint
from .inputs import check_columns, load_images, read_pairs
from .prototypes import prototypes_from_embeddings
from .schema import output_features, read_run_record, run_record_info
from .synthesize import load_unclip, resize_image, retrieve_images, synthesize_unclip, unclip_fingerprint

logger = logging.getLogger(__name__)

def metadata(ds, *, revision: str | None = None, token=None) -> dict:
    """How a distilled set was made (config, source, models, timings).

    Args:
        ds: the ``Dataset`` that :func:`distill` returned (read from its info), or where a distilled set
            was written: a folder from :func:`save_to_folder` or a Hub dataset id from
            :func:`push_to_hub` (read from its dataset card, because parquet files do not keep a
            dataset's info).
        revision: Hub revision, when ``ds`` is a Hub id.
        token: Hub token, when ``ds`` is a private Hub id.

    Example:
        ```py
        >>> small = pds_hf.distill(ds, num_pairs=10)
        >>> pds_hf.metadata(small)["config"]["num_pairs"]
        10
        >>> pds_hf.metadata("me/flickr30k-pds-100")["source"]["id"]  # after push_to_hub
        'nlphuji/flickr30k'
        ```
    """
    if isinstance(ds, (str, os.PathLike)):
        from .publish import metadata_from_card

        return metadata_from_card(ds, revision=revision, token=token)
    return read_run_record(ds)


class _Stages:
    """Wall-clock seconds per stage, for the summary and the dataset card."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
        logger.info("%s took %.2fs", name, self.seconds[name])


def _resolve_device(config: DistillConfig, ranks):
    import torch

    device = config.device or (str(ranks.device) if ranks.device is not None else None)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    half = config.half_precision if config.half_precision is not None else device.startswith("cuda")
    return device, (torch.float16 if half else None)


def _source_info(ds, table) -> dict:
    info = ds.info
    return {
        "dataset": info.dataset_name or info.builder_name,
        "config": info.config_name,
        "split": str(ds.split) if ds.split is not None else None,
        "fingerprint": ds._fingerprint,
        "num_rows": len(ds),
        "num_pairs": int(table.num_pairs),
        "num_images": int(len(table.image_rows)),
        "num_captions": int(len(table.texts)),
        "layout": table.layout,
        "skipped_images": len(table.skipped_images),
    }


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("pds-hf", "datasets", "transformers", "diffusers", "torch", "faiss-cpu", "faiss-gpu"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def _select(config: DistillConfig, table, image_embeds, text_embeds) -> dict:
    """Steps 2-6 (or a baseline's choice of real pairs) as plain arrays, ready to cache."""
    if config.method == "pds":
        protos = prototypes_from_embeddings(
            image_embeds, text_embeds, config.num_pairs, rm_ratio=config.rm_ratio, seed=config.seed,
            empty=config.empty, image_index=table.pair_image, text_index=table.pair_text,
            kmeans_iterations=config.kmeans_iterations, kmeans_restarts=config.kmeans_restarts,
            kmeans_init=config.kmeans_init, normalize=config.normalize)
        _, caption_index = retrieve_captions(protos.text_embeds, text_embeds, table.texts)
        return dict(image_embeds=protos.image_embeds, text_embeds=protos.text_embeds,
                    support=np.asarray(protos.support, dtype=np.int64), image_cluster=protos.image_cluster,
                    text_cluster=protos.text_cluster, caption_index=caption_index, pairs=np.zeros(0, np.int64),
                    kept=np.int64(protos.kept.sum()), num_empty=np.int64(protos.num_empty))
    from .baselines import select_pairs

    chosen = np.asarray(select_pairs(config.method, image_embeds[table.pair_image], text_embeds[table.pair_text],
                                     config.num_pairs, seed=config.seed), dtype=np.int64)
    return dict(image_embeds=image_embeds[table.pair_image[chosen]], text_embeds=text_embeds[table.pair_text[chosen]],
                support=np.ones(len(chosen), np.int64), image_cluster=np.full(len(chosen), -1, np.int64),
                text_cluster=np.full(len(chosen), -1, np.int64), caption_index=table.pair_text[chosen],
                pairs=chosen, kept=np.int64(-1), num_empty=np.int64(-1))


def distill(ds, config: DistillConfig | None = None, **overrides):
    """Distill an image-text dataset into ``num_pairs`` pairs with PDS.

    Each stage saves its results under a fingerprint of its inputs (see :mod:`pds_hf.cache`), so a
    run that is killed and started again with the same arguments resumes where it stopped. Under
    ``accelerate launch`` (or ``torchrun``), encoding and synthesis are split across the processes,
    the main process clusters, and every process returns the same dataset.

    Args:
        ds: a ``datasets.Dataset`` with an image column and a caption column, either one row per
            pair (caption is a string) or one row per image (caption is a list of strings).
        config: a :class:`DistillConfig`; defaults are the paper's.
        **overrides: fields of :class:`DistillConfig` to change, e.g. ``num_pairs=100``.

    Returns:
        A ``datasets.Dataset`` with one row per distilled pair: ``image``, ``caption`` (the retrieved
        real caption), ``image_embedding`` and ``text_embedding`` (the prototypes), ``support``
        (real pairs averaged; 0 where the k-means centres were used), ``image_cluster`` and
        ``text_cluster``. ``pds_hf.metadata(result)`` gives the config, source and timings.

    Example:
        ```py
        >>> import pds_hf
        >>> from datasets import load_dataset
        >>> ds = load_dataset("nlphuji/flickr30k", split="test")
        >>> small = pds_hf.distill(ds, num_pairs=100)          # or ds.distill(num_pairs=100)
        >>> small = pds_hf.distill(ds, num_pairs=100, synthesis="retrieve")   # no decoder needed
        ```
    """
    from datasets import Dataset

    config = (config or DistillConfig()).replace(**overrides) if overrides else (config or DistillConfig())
    stages = _Stages()
    ranks = current_ranks()

    # Cheap checks first, so that bad input fails before any model is loaded.
    check_columns(ds, config.image_column, config.caption_column)
    with stages("read"):
        table = read_pairs(ds, image_column=config.image_column, caption_column=config.caption_column,
                           on_bad_image=config.on_bad_image)
    left = table.num_pairs - int(np.floor(config.rm_ratio * table.num_pairs)) if config.method == "pds" else table.num_pairs
    if config.num_pairs > left:
        raise ValueError(
            f"num_pairs={config.num_pairs} but the dataset has {table.num_pairs} usable pairs"
            + (f", {left} after removing rm_ratio={config.rm_ratio} of them" if config.method == "pds" else "")
            + "; lower num_pairs" + (" or rm_ratio." if config.method == "pds" else ".")
        )

    device, dtype = _resolve_device(config, ranks)
    encoder = load_encoder(config.clip_model, processor=config.clip_processor, revision=config.clip_revision,
                           device=device if isinstance(config.clip_model, str) or config.device else None,
                           dtype=dtype if isinstance(config.clip_model, str) else None)
    cache_dir = (config.cache_dir or default_cache_dir()) if config.use_cache else None
    encode_key = _key(model_fingerprint(encoder), "encode", ds._fingerprint, config.image_column,
                      config.caption_column, config.on_bad_image, config.shard_size)
    encode_stage = open_stage(cache_dir, "encode", encode_key)
    if ranks.world > 1 and encode_stage.path is None:
        raise ValueError(
            f"A run over {ranks.world} processes shares its work through the cache, which needs use_cache=True and "
            "an encoder known by id (or with a `fingerprint` attribute), so that every process reads the same results.")
    with stages("encode"):
        table, image_embeds, text_embeds = encode_table(
            encoder, ds, table, image_column=config.image_column, batch_size=config.encode_batch_size,
            on_bad_image=config.on_bad_image, shard_size=config.shard_size, stage=encode_stage, ranks=ranks)

    select_key = _key(encode_key, "select", config.method, config.num_pairs, config.rm_ratio, config.seed,
                      config.empty, config.kmeans_iterations, config.kmeans_restarts, config.kmeans_init,
                      "unit-norm" if config.normalize else "raw")
    select_stage = open_stage(cache_dir, "select", select_key)
    with stages("select"):
        if not select_stage.done("selection") and ranks.is_main:
            select_stage.save_arrays("selection", **_select(config, table, image_embeds, text_embeds))
        ranks.barrier()
        chosen = select_stage.load_arrays("selection")
    image_protos, text_protos = chosen["image_embeds"], chosen["text_embeds"]
    captions = [table.texts[i] for i in chosen["caption_index"]]
    num = len(captions)

    with stages("synthesize"):
        if config.synthesis == "none":
            images = [None] * num
        elif config.method != "pds":
            # A baseline's pairs are real: their images are the data's own.
            images = [resize_image(image, config.image_size)
                      for image in load_images(ds, config.image_column, table.pair_rows[chosen["pairs"]])]
        elif config.synthesis == "retrieve":
            images, _ = retrieve_images(ds, config.image_column, table.image_rows, image_embeds, image_protos,
                                        image_size=config.image_size)
        else:
            images = _synthesize(config, image_protos, captions, select_key, cache_dir, ranks, device, dtype)

    meta = {
        "config": config.to_dict(),
        "source": _source_info(ds, table),
        "models": {
            "encoder": encoder_name(encoder),
            "encoder_revision": getattr(encoder, "revision", config.clip_revision),
            "unclip": config.to_dict()["unclip_model"] if config.synthesis == "unclip" and config.method == "pds" else None,
            "unclip_revision": config.unclip_revision,
        },
        "kept_pairs": int(chosen["kept"]) if config.method == "pds" else None,
        "empty_intersections": int(chosen["num_empty"]) if config.method == "pds" else None,
        "processes": ranks.world,
        "stages_seconds": stages.seconds,
        "versions": _versions(),
    }
    features = output_features(image_protos.shape[1])
    info = run_record_info(meta, features)
    return Dataset.from_dict(
        {
            "image": images,
            "caption": captions,
            "image_embedding": np.asarray(image_protos, dtype=np.float32),
            "text_embedding": np.asarray(text_protos, dtype=np.float32),
            "support": chosen["support"],
            "image_cluster": chosen["image_cluster"],
            "text_cluster": chosen["text_cluster"],
        },
        features=features,
        info=info,
    )


def _key(parent: str | None, *parts) -> str | None:
    """A stage fingerprint, or None (no caching) when the parent stage's identity is unknown."""
    return None if parent is None else fingerprint(parent, *parts)


def _synthesize(config, image_protos, captions, select_key, cache_dir, ranks, device, dtype):
    """unCLIP images for the prototypes this process owns, saved one by one; then all of them."""
    unclip_id = unclip_fingerprint(config.unclip_model, revision=config.unclip_revision,
                                   dtype=dtype if isinstance(config.unclip_model, str) else None)
    key = None if unclip_id is None else _key(
        select_key, "synthesize", unclip_id, config.num_inference_steps, config.guidance_scale, config.noise_level,
        config.negative_prompt, config.image_size, config.seed)
    stage = open_stage(cache_dir, "synthesize", key)
    if ranks.world > 1 and stage.path is None:
        raise ValueError("A multi-process run needs an unCLIP model known by id (or with a `fingerprint` attribute).")
    name = "image-{:06d}".format
    mine = [m for m in range(len(captions)) if ranks.owns(m) and not stage.done(name(m))]
    if mine:
        pipe = load_unclip(config.unclip_model, revision=config.unclip_revision,
                           device=device if isinstance(config.unclip_model, str) or config.device else None,
                           dtype=dtype if isinstance(config.unclip_model, str) else None)

        def save(indices, images):
            for m, image in zip(indices, images):
                stage.save_image(name(m), image)

        synthesize_unclip(
            pipe, image_protos[mine], [captions[m] for m in mine], negative_prompt=config.negative_prompt,
            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
            noise_level=config.noise_level, seed=config.seed, batch_size=config.synthesis_batch_size,
            image_size=config.image_size, indices=mine, on_batch=save, show_progress=ranks.is_main)
    ranks.barrier()
    return [stage.load_image(name(m)) for m in range(len(captions))]
