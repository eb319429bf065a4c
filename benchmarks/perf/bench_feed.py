"""Feed rate of the encode stage: images/s that decode workers hand to the model, by number of workers.

A ``datasets.Dataset`` of 500x375 JPEGs (textured, made in code, one row per image) goes through
``pds_hf.encode.encode_table`` with ``workers`` = 0 (decode in the main thread), 1, 2, ... With ``--stream``,
the same rows go through the streaming encode pass instead (``pds_hf.stream.encode_pass``, what
``DistillProcessor(...)(stream)`` runs first, on one process with nothing cached) as
``ds.to_iterable_dataset(num_shards=...)``, with ``DistillConfig.encode_workers`` = 0, 1, 2, ...; ``--before
DIR`` adds the pass of an older ``pds_hf`` unpacked in ``DIR`` (run in a child process, workers 0). Two encoders:

- ``no forward``: the 224 px preprocessing of openai/clip-vit-large-patch14 (``CLIPImageProcessor()``'s
  defaults: shortest edge 224, bicubic, centre crop 224, CLIP mean/std) and no model at all: the rate is
  the feed's own ceiling, what a GPU fast enough to keep up would be given;
- ``tiny model``: a random 2-layer CLIP of width 32 with ViT-L/14's input (224 px, patch 14) behind the
  same preprocessing, forward included.

Beside wall time (noisy here: the 2-core machine is shared), CPU time is counted: the main process's
and its workers' (``os.times``; the pool's workers are reaped when ``encode_table`` or the pass returns). CPU
milliseconds per image in the workers staying flat from 1 to 2 workers is the scaling shown; the
projection for ``w`` workers on a machine with a core for each worker and one for the main process is
``min(w / worker_cpu_per_image, 1 / main_cpu_per_image)`` (``no forward``: the feed's ceiling).

Peak anonymous resident memory is sampled: ``RssAnon`` of the main process, and ``Pss_Anon`` summed over
the main process and its workers (a forked worker shares its parent's pages until it writes them; PSS
counts a shared page once in the sum): ``machine.AnonPeak`` with ``children=True``.

Usage:
    python benchmarks/perf/bench_feed.py                         # 1024 images, workers 0 1 2
    python benchmarks/perf/bench_feed.py --images 64 --workers 0 1   # a smoke run
    python benchmarks/perf/bench_feed.py --stream                # the streaming encode pass
    mkdir /tmp/pds_old && git archive b39d0e3 pds_hf | tar -x -C /tmp/pds_old
    python benchmarks/perf/bench_feed.py --stream --before /tmp/pds_old   # and as it was at b39d0e3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
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
    return Dataset.from_dict(
        {"image": images, "caption": [f"picture {i}" for i in range(num_images)]}, features=features
    )


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
        text_config=dict(
            small,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(small, image_size=224, patch_size=14),
        projection_dim=32,
    )
    torch.manual_seed(0)
    return TransformersEncoder(
        CLIPModel(config), CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    )


def best_run(run, repeats: int):
    """Best wall time of ``repeats`` calls of ``run()``, with that call's peak memory and CPU seconds (main,
    workers)."""
    best = (float("inf"), None, None, None)
    for _ in range(repeats):
        with AnonPeak(children=True) as sampler:
            before, start = os.times(), time.perf_counter()
            run()
            seconds, after = time.perf_counter() - start, os.times()
        main_cpu = after.user + after.system - before.user - before.system
        worker_cpu = after.children_user + after.children_system - before.children_user - before.children_system
        if seconds < best[0]:
            best = (seconds, sampler, main_cpu, worker_cpu)
    return best


def map_run(encoder, ds, table, workers: int, batch_size: int):
    """The map-style encode stage: ``encode_table`` over the rows read by ``read_pairs``."""
    from pds_hf.encode import encode_table

    return lambda: encode_table(encoder, ds, table, batch_size=batch_size, workers=workers)


def stream_run(encoder, ds, workers: int, batch_size: int, shards: int):
    """The streaming encode pass over ``ds.to_iterable_dataset(num_shards=shards)``, as a stream source runs
    it on one process with nothing cached (each call starts from an empty in-memory stage)."""
    from pds_hf import DistillProcessor
    from pds_hf.cache import MemoryStage
    from pds_hf.distributed import Ranks
    from pds_hf.stream import Units, encode_pass

    processor = DistillProcessor(clip_model=encoder, encode_workers=workers, encode_batch_size=batch_size)
    units = Units.of(ds.to_iterable_dataset(num_shards=shards), 1)
    config = processor.config
    return lambda: encode_pass(config, processor.load_encoder, units, MemoryStage(), "pair", False, True, Ranks())


def measure(args) -> list[dict]:
    """Time each encoder with each number of workers; one record per run, CPU seconds per image."""
    from datasets.utils.logging import disable_progress_bar

    from pds_hf.inputs import read_pairs

    disable_progress_bar()
    ds = jpeg_dataset(args.images)
    table = None if args.stream else read_pairs(ds)
    encoders = {"no forward": PreprocessOnly(), "tiny model": tiny_model_224()}
    records = []
    for name, encoder in encoders.items():
        for workers in args.workers:
            run = (
                stream_run(encoder, ds, workers, args.batch_size, args.shards)
                if args.stream
                else map_run(encoder, ds, table, workers, args.batch_size)
            )
            seconds, peak, main_cpu, worker_cpu = best_run(run, args.repeats)
            records.append(
                dict(
                    encoder=name,
                    workers=workers,
                    seconds=seconds,
                    main=main_cpu / args.images,
                    worker=worker_cpu / args.images,
                    peak_mb=peak.peak_mb,
                    total_mb=peak.total_mb,
                )
            )
    return records


def measure_before(args) -> list[dict]:
    """:func:`measure` with the ``pds_hf`` in ``args.before`` and no workers, in a child process."""
    command = [
        sys.executable,
        __file__,
        "--stream",
        "--package",
        args.before,
        "--images",
        str(args.images),
        "--batch-size",
        str(args.batch_size),
        "--shards",
        str(args.shards),
        "--repeats",
        str(args.repeats),
        "--workers",
        "0",
    ]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table_row(record: dict, images: int, package: str | None = None) -> list:
    """One row of the results table (led by ``package`` when given)."""
    workers, seconds = record["workers"], record["seconds"]
    return ([package] if package is not None else []) + [
        record["encoder"],
        workers,
        f"{seconds:.2f}",
        f"{images / seconds:.1f}",
        f"{images / seconds / workers:.1f}" if workers else "-",
        f"{1e3 * record['main']:.2f}",
        f"{1e3 * record['worker']:.2f}" if workers else "-",
        f"{record['peak_mb']:.0f}",
        f"{record['total_mb']:.0f}",
    ]


def projection(records: list[dict], project: list[int]) -> str:
    """The projected images/s on 16 cores from the ``no forward`` runs with workers (empty if none)."""
    cpu = {r["workers"]: (r["main"], r["worker"]) for r in records if r["encoder"] == "no forward" and r["workers"]}
    if not cpu:
        return ""
    fed = sorted(cpu)
    main_s = cpu[fed[0]][0]
    worker_s = max(cpu[w][1] for w in fed)
    projected = [[w, f"{min(w / worker_s, 1 / main_s):.0f}"] for w in project]
    return (
        f"\n\nProjection for 16 cores (one core per worker, one for the main process; no forward): "
        f"workers' CPU per image {worker_s * 1e3:.2f} ms (the largest measured over {fed} workers), main "
        f"process's CPU per image {main_s * 1e3:.2f} ms (with {fed[0]} worker(s); its ceiling "
        f"{1 / main_s:.0f} images/s). Projected images/s = min(w / workers' CPU per image, "
        "1 / main CPU per image):\n\n" + markdown_table(["workers on 16 cores", "projected images/s"], projected)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is kept)")
    parser.add_argument("--project", type=int, nargs="+", default=[8, 15], help="worker counts to project to")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="time the streaming encode pass over ds.to_iterable_dataset(num_shards=--shards)",
    )
    parser.add_argument("--shards", type=int, default=2, help="input shards of the stream (with --stream)")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="with --stream: also time the pass of the pds_hf package in DIR (an older version, "
        "e.g. unpacked by git archive), with no workers, in a child process",
    )
    parser.add_argument(
        "--package",
        metavar="DIR",
        help="import pds_hf from DIR and print the records as JSON instead of appending them (what --before runs)",
    )
    args = parser.parse_args()
    if args.before and not args.stream:
        parser.error("--before times the streaming pass: add --stream.")

    if args.package:
        sys.path.insert(0, str(Path(args.package).resolve()))
        print(json.dumps(measure(args)))
        return
    records = measure(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header = [
        "encoder",
        "workers",
        "seconds",
        "images/s",
        "images/s per worker",
        "main CPU ms/image",
        "workers' CPU ms/image",
        "peak RssAnon main (MB)",
        "peak Pss_Anon main + workers (MB)",
    ]
    if args.stream:
        rows = [table_row(r, args.images, "this checkout") for r in records]
        if args.before:
            rows += [table_row(r, args.images, f"before ({args.before})") for r in measure_before(args)]
        body = markdown_table(["pds_hf", *header], rows)
        body += (
            f"\n\n{args.images} JPEGs of 500x375 as ds.to_iterable_dataset(num_shards={args.shards}), batch "
            f"{args.batch_size} (encode_batch_size), best of {args.repeats}; the whole encode pass "
            "(pds_hf.stream.encode_pass: reading the shards, hashing the images, captions too). "
            f"This machine has {cores} cores, shared by the main process, the workers and other jobs (see "
            "the load average): wall times are noisy, CPU times are not."
        )
        title = "Streaming encode pass feed rate by decode workers (bench_feed --stream)"
    else:
        body = markdown_table(header, [table_row(r, args.images) for r in records])
        body += (
            f"\n\n{args.images} JPEGs of 500x375, batch {args.batch_size}, best of {args.repeats}; the "
            "whole encode_table call (captions too: a few ms). This machine has "
            f"{cores} cores, shared by the main process, the workers and other jobs (see the load average): "
            "wall times are noisy, CPU times are not."
        )
        title = "Encode feed rate by decode workers (bench_feed)"
    append_results(title, body + projection(records, args.project))


if __name__ == "__main__":
    main()
