"""Feed rate of the encode stage: images/s that decode workers hand to the model, by number of workers.

A ``datasets.Dataset`` of 500x375 JPEGs (textured, made in code, one row per image) goes through
``pds_hf.encode.encode_table`` with ``workers`` = 0 (decode in the main thread), 1, 2, ... Two encoders:

- ``no forward``: the 224 px preprocessing of openai/clip-vit-large-patch14 (``CLIPImageProcessor()``'s
  defaults: shortest edge 224, bicubic, centre crop 224, CLIP mean/std) and no model at all: the rate is
  the feed's own ceiling, what a GPU fast enough to keep up would be given;
- ``tiny model``: a random 2-layer CLIP of width 32 with ViT-L/14's input (224 px, patch 14) behind the
  same preprocessing, forward included.

Beside wall time (noisy here: the 2-core machine is shared), CPU time is counted: the main process's
and its workers' (``os.times``; the pool's workers are reaped when ``encode_table`` returns). CPU
milliseconds per image in the workers staying flat from 1 to 2 workers is the scaling shown; the
projection for ``w`` workers on a machine with a core for each worker and one for the main process is
``min(w / worker_cpu_per_image, 1 / main_cpu_per_image)`` (``no forward``: the feed's ceiling).

Peak anonymous resident memory is sampled: ``RssAnon`` of the main process, and ``Pss_Anon`` summed over
the main process and its workers (a forked worker shares its parent's pages until it writes them; PSS
counts a shared page once in the sum): ``machine.AnonPeak`` with ``children=True``.

Usage:
    python benchmarks/perf/bench_feed.py                         # 1024 images, workers 0 1 2
    python benchmarks/perf/bench_feed.py --images 64 --workers 0 1   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from machine import AnonPeak, append_results, markdown_table  # noqa: E402


def jpeg_dataset(num_images: int, seed: int = 0):
    """One row per image: a 500x375 JPEG (quality 90) with waves and noise, and one caption."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    images = []
    for i in range(num_images):
        a, b, c = rng.random(3) * 0.1
        base = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], axis=-1)
        pixels = ((base * 0.4 + 0.5) * 255 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(), "caption": Value("string")})
    return Dataset.from_dict({"image": images, "caption": [f"picture {i}" for i in range(num_images)]},
                             features=features)


class PreprocessOnly:
    """An encoder with ViT-L/14's 224 px preprocessing and no model: ``encode_pixels`` returns zeros."""

    def __init__(self):
        from transformers import CLIPImageProcessor

        from pds_hf.encode import ImagePreprocessor

        self.image_preprocessor = ImagePreprocessor(CLIPImageProcessor())

    def preprocess_images(self, images):
        return self.image_preprocessor(images)

    def encode_pixels(self, pixel_values):
        return np.zeros((len(pixel_values), 8), np.float32)

    def encode_images(self, images):
        return self.encode_pixels(self.preprocess_images(images))

    def encode_texts(self, texts):
        return np.zeros((len(texts), 8), np.float32)


def tiny_model_224():
    """A 2-layer, 32-wide random CLIP on 224 px inputs with patch 14 (256 patches, as ViT-L/14)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pds_hf.encode import TransformersEncoder
    from pds_hf.testing import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(small, vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(small, image_size=224, patch_size=14), projection_dim=32)
    torch.manual_seed(0)
    return TransformersEncoder(CLIPModel(config), CLIPProcessor(image_processor=CLIPImageProcessor(),
                                                                  tokenizer=tokenizer))


def time_encode(encoder, ds, table, workers: int, batch_size: int, repeats: int):
    """Best wall time of ``repeats`` runs, with that run's peak memory and CPU seconds (main, workers)."""
    from pds_hf.encode import encode_table

    best = (float("inf"), None, None, None)
    for _ in range(repeats):
        with AnonPeak(children=True) as sampler:
            before, start = os.times(), time.perf_counter()
            encode_table(encoder, ds, table, batch_size=batch_size, workers=workers)
            seconds, after = time.perf_counter() - start, os.times()
        main_cpu = after.user + after.system - before.user - before.system
        worker_cpu = (after.children_user + after.children_system - before.children_user
                      - before.children_system)
        if seconds < best[0]:
            best = (seconds, sampler, main_cpu, worker_cpu)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is kept)")
    parser.add_argument("--project", type=int, nargs="+", default=[8, 15], help="worker counts to project to")
    args = parser.parse_args()

    from datasets.utils.logging import disable_progress_bar

    from pds_hf.inputs import read_pairs

    disable_progress_bar()
    ds = jpeg_dataset(args.images)
    table = read_pairs(ds)
    encoders = {"no forward": PreprocessOnly(), "tiny model": tiny_model_224()}
    rows, cpu = [], {}
    for name, encoder in encoders.items():
        for workers in args.workers:
            seconds, peak, main_cpu, worker_cpu = time_encode(encoder, ds, table, workers, args.batch_size,
                                                              args.repeats)
            cpu[name, workers] = (main_cpu / args.images, worker_cpu / args.images)
            per_worker = f"{args.images / seconds / workers:.1f}" if workers else "-"
            rows.append([name, workers, f"{seconds:.2f}", f"{args.images / seconds:.1f}", per_worker,
                         f"{1e3 * main_cpu / args.images:.2f}",
                         f"{1e3 * worker_cpu / args.images:.2f}" if workers else "-",
                         f"{peak.peak_mb:.0f}", f"{peak.total_mb:.0f}"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    body = markdown_table(["encoder", "workers", "seconds", "images/s", "images/s per worker",
                           "main CPU ms/image", "workers' CPU ms/image", "peak RssAnon main (MB)",
                           "peak Pss_Anon main + workers (MB)"], rows)
    body += (f"\n\n{args.images} JPEGs of 500x375, batch {args.batch_size}, best of {args.repeats}; the whole "
             f"encode_table call (captions too: a few ms). This machine has {cores} cores, shared by the main "
             "process, the workers and other jobs (see the load average): wall times are noisy, CPU times are not.")
    fed = [w for w in args.workers if w and ("no forward", w) in cpu]
    if fed:
        main_s = cpu["no forward", fed[0]][0]
        worker_s = max(cpu["no forward", w][1] for w in fed)
        projected = [[w, f"{min(w / worker_s, 1 / main_s):.0f}"] for w in args.project]
        body += (f"\n\nProjection for 16 cores (one core per worker, one for the main process; no forward): "
                 f"workers' CPU per image {worker_s * 1e3:.2f} ms (the largest measured over {fed} workers), main "
                 f"process's CPU per image {main_s * 1e3:.2f} ms (with {fed[0]} worker(s); its ceiling "
                 f"{1 / main_s:.0f} images/s). Projected images/s = min(w / workers' CPU per image, "
                 "1 / main CPU per image):\n\n")
        body += markdown_table(["workers on 16 cores", "projected images/s"], projected)
    append_results("Encode feed rate by decode workers (bench_feed)", body)


if __name__ == "__main__":
    main()
