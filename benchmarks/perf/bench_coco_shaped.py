"""A COCO-shaped run end to end: N images x 5 captions (COCO train2017: 118,287 x 5), made in code.

Every image is a distinct small PNG (a colour and a bar pattern drawn from its index); its five captions come
from templates, distinct across the set as in COCO. The dataset is saved with ``save_to_disk`` and loaded back
(memory-mapped Arrow, as a downloaded set), then distilled by ``pds_hf.DistillProcessor`` with the tiny CLIP of
``pds_hf.testing`` (32-d embeddings), ``synthesis="retrieve"`` and M prototypes, caching on (so the embeddings
go through the on-disk store, ``pds_hf.store``). Reported: the time of each stage
(``pds_hf.metadata(result)["stages_seconds"]``), the total, and the peak anonymous resident memory of this
process during the run (``machine.AnonPeak``; decode workers are off by default so that all the work is
counted here; with workers, also the peak summed over this process and its children).

With ``--stream N_FILES`` the same set is written as N parquet files (``Dataset.to_parquet``, the Image feature
kept) and read back with ``load_dataset("parquet", ..., streaming=True)``: the streaming path
(``pds_hf.stream``: an encode pass over the input shards, steps 2-6, a fetch pass for the chosen images) with
the same settings. ``--compare`` also distils the map-style set in the same process (after the stream, each run
with its own cache) and says whether both give the same captions, supports and prototypes.

Usage:
    nice -n 10 python benchmarks/perf/bench_coco_shaped.py                     # 118,287 images, M = 1000
    python benchmarks/perf/bench_coco_shaped.py --images 2000 --prototypes 100  # a smoke run
    nice -n 10 python benchmarks/perf/bench_coco_shaped.py --stream 16          # streamed from 16 parquet files
    python benchmarks/perf/bench_coco_shaped.py --images 2000 --prototypes 100 --stream 16 --compare
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from machine import AnonPeak, append_results, markdown_table, memory_status  # noqa: E402

COCO_TRAIN_IMAGES = 118_287
CAPTIONS_PER_IMAGE = 5
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "brown"]
THINGS = ["dog", "cat", "bus", "train", "kite", "pizza", "bench", "horse", "boat", "clock", "giraffe", "surfer"]
PLACES = ["on a street", "in a kitchen", "near the sea", "in a park", "on a table", "in a field", "at night"]
TEMPLATES = [
    "a {colour} {thing} {place}, picture {i}",
    "photo {i}: the {thing} is {colour} and {place}",
    "there is a {colour} {thing} {place} in scene {i}",
    "close-up number {i} of a {thing} {place}",
    "{thing} {place} with {colour} tones (image {i})",
]


def image_png(i: int, side: int) -> bytes:
    """A PNG that no other index gives: its background colour spells the index, and bars vary with it."""
    import numpy as np
    from PIL import Image

    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[:] = (i & 255, (i >> 8) & 255, (i >> 16) & 255)
    step = 2 + i % 5
    pixels[:, ::step] = 255 - pixels[:, ::step]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def captions_of(i: int) -> list[str]:
    return [
        template.format(
            i=i,
            colour=COLOURS[(i + t) % len(COLOURS)],
            thing=THINGS[(i // 7 + t) % len(THINGS)],
            place=PLACES[(i // 3 + t) % len(PLACES)],
        )
        for t, template in enumerate(TEMPLATES)
    ]


def coco_shaped(num_images: int, folder: str, side: int):
    """Make the dataset (one row per image, ``caption`` a list of 5 strings), save it to ``folder``, load it back."""
    from datasets import Dataset, Features, Image, List, Value, load_from_disk

    features = Features({"image": Image(), "caption": List(Value("string"))})

    def rows():
        for i in range(num_images):
            yield {"image": {"bytes": image_png(i, side), "path": None}, "caption": captions_of(i)}

    Dataset.from_generator(rows, features=features, cache_dir=os.path.join(folder, "hf")).save_to_disk(
        os.path.join(folder, "coco-shaped")
    )
    return load_from_disk(os.path.join(folder, "coco-shaped"))


def parquet_stream(ds, folder: str, files: int):
    """Write ``ds`` as ``files`` parquet files (contiguous shards, in order) and stream them back."""
    from datasets import load_dataset

    paths = [os.path.join(folder, "parquet", f"train-{index:05d}-of-{files:05d}.parquet") for index in range(files)]
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    for index, path in enumerate(paths):
        ds.shard(num_shards=files, index=index, contiguous=True).to_parquet(path)
    return load_dataset("parquet", data_files=paths, split="train", streaming=True)


def distill(data, prototypes: int, workers: int, cache_dir: str) -> dict:
    """Distil ``data`` (a ``Dataset`` or an ``IterableDataset``); the result, its time, stages and memory."""
    import pds_hf
    from pds_hf import DistillConfig, DistillProcessor
    from pds_hf.testing import tiny_clip_encoder

    config = DistillConfig(
        num_pairs=prototypes,
        clip_model=tiny_clip_encoder(seed=0),
        synthesis="retrieve",
        image_size=32,
        device="cpu",
        encode_workers=workers,
        use_cache=True,
        cache_dir=cache_dir,
    )
    before = memory_status()["RssAnon"]
    started = time.perf_counter()
    with AnonPeak(children=workers > 0) as peak:
        result = DistillProcessor(config)(data)
    return {
        "result": result,
        "total_s": time.perf_counter() - started,
        "anon_before_mb": before,
        "anon_peak_mb": peak.peak_mb,
        "anon_peak_children_mb": peak.total_mb,
        "stages": pds_hf.metadata(result)["stages_seconds"],
    }


def same_selection(a, b) -> str:
    """Whether two distilled sets hold the same captions and supports, and how far apart their prototypes are."""
    import numpy as np

    equal = a["caption"] == b["caption"] and a["support"] == b["support"]
    gap = float(np.abs(np.asarray(a["image_embedding"]) - np.asarray(b["image_embedding"])).max())
    return f"{equal} (prototypes max diff {gap:.1e})"


def run(
    num_images: int, prototypes: int, side: int, workers: int, folder: str, stream: int, compare: bool
) -> list[dict]:
    """Make the set and distil it: map-style, or streamed from ``stream`` parquet files (then map-style too with
    ``compare``). One dict per run, the streamed one first."""
    started = time.perf_counter()
    ds = coco_shaped(num_images, folder, side)
    made = time.perf_counter() - started
    shape = {"images": num_images, "pairs": num_images * CAPTIONS_PER_IMAGE}
    runs = []
    if stream:
        started = time.perf_counter()
        streamed = parquet_stream(ds, folder, stream)
        written = time.perf_counter() - started
        out = distill(streamed, prototypes, workers, os.path.join(folder, "cache-stream"))
        runs.append({**shape, **out, "input": f"stream, {stream} parquet files", "made_s": made + written})
    if not stream or compare:
        out = distill(ds, prototypes, workers, os.path.join(folder, "cache-map"))
        runs.append({**shape, **out, "input": "map-style (Arrow on disk)", "made_s": made})
    if len(runs) == 2:
        runs[0]["same"] = same_selection(runs[0]["result"], runs[1]["result"])
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[COCO_TRAIN_IMAGES])
    parser.add_argument("--prototypes", type=int, default=1000)
    parser.add_argument("--side", type=int, default=16, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="decode workers (0: all work in this process)")
    parser.add_argument(
        "--stream",
        type=int,
        default=0,
        metavar="N_FILES",
        help="stream the set from N_FILES parquet files (0: map-style)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="with --stream, also distil the map-style set and compare the results"
    )
    parser.add_argument("--no-append", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.compare and not args.stream:
        parser.error("--compare compares a streamed run with the map-style one: pass --stream N_FILES too.")

    table = []
    for num_images in args.images:
        with tempfile.TemporaryDirectory(prefix="coco-shaped-") as folder:
            runs = run(num_images, args.prototypes, args.side, args.workers, folder, args.stream, args.compare)
        for out in runs:
            stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in out["stages"].items())
            row = [
                f"{out['images']:,}",
                f"{out['pairs']:,}",
                args.prototypes,
                out["input"],
                f"{out['made_s']:.0f}",
                f"{out['total_s']:.0f}",
                stages,
                f"{out['anon_before_mb']:.0f}",
                f"{out['anon_peak_mb']:.0f}",
            ]
            if args.workers:
                row.append(f"{out['anon_peak_children_mb']:.0f}")
            if args.compare:
                row.append(out.get("same", "(reference)"))
            row.append(f"{os.getloadavg()[0]:.1f}")
            print(row, flush=True)
            table.append(row)
    header = [
        "images",
        "pairs",
        "M",
        "input",
        "make set (s)",
        "distill (s)",
        "stages (s)",
        "anon RSS before (MB)",
        "anon RSS peak (MB)",
    ]
    if args.workers:
        header.append("peak Pss_Anon with workers (MB)")
    if args.compare:
        header.append("same captions and supports as map-style")
    body = markdown_table(header + ["load avg (1 min)"], table)
    body += (
        "\n\nTiny CLIP from pds_hf.testing (32-d), synthesis='retrieve', caching on (embeddings in the on-disk "
        "store), decode workers " + str(args.workers) + f", {args.side}px PNGs; the set is saved to disk and "
        "loaded back (memory-mapped Arrow) before the run; peak anonymous RSS is this process's during the run."
    )
    if args.stream:
        body += (
            f" Streamed: the set written as {args.stream} parquet files (make set includes writing them) and "
            "read with load_dataset('parquet', streaming=True); each run has its own cache"
            + (", the map-style run after the streamed one in the same process." if args.compare else ".")
        )
    if args.no_append:
        print(body)
    else:
        append_results("COCO-shaped run end to end (bench_coco_shaped.py)", body)


if __name__ == "__main__":
    main()
