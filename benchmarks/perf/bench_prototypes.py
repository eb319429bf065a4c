"""Steps 2-5 (``prototypes_from_embeddings``) on a million pairs: wall time and peak memory.

Two layouts of the same 1M pairs (CLIP-like 768-d embeddings, ``synthetic.py``):

- ``pairs``: one image row and one text row per pair (``image_embeds`` is 1M x 768: the image of
  each pair repeated, as a user with a flat table would pass it). The worst case for memory: the
  inputs alone are 6.1 GB.
- ``dedup``: 200k distinct images with 5 captions each, passed with ``image_index`` (how
  ``pds_hf.distill`` calls it).

Each run is a fresh subprocess; its peak RSS (``ru_maxrss``) includes the inputs. The embeddings are
generated once and cached under ``cache/``.

Usage:
    python benchmarks/perf/bench_prototypes.py                    # 1M pairs, M = 1000, both layouts
    python benchmarks/perf/bench_prototypes.py --images 2000 --k 50   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from machine import CACHE, append_table  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def load_pairs(images: int, captions: int, seed: int = 0):
    from synthetic import clip_like_pairs

    CACHE.mkdir(exist_ok=True)
    stem = CACHE / f"clip_like_pairs_{images}x{captions}_{seed}"
    names = ("images", "texts", "pair_image")
    if not all((stem.parent / f"{stem.name}_{n}.npy").exists() for n in names):
        for name, array in zip(names, clip_like_pairs(images, captions, seed=seed), strict=False):
            np.save(stem.parent / f"{stem.name}_{name}.npy", array)
    return [np.load(stem.parent / f"{stem.name}_{n}.npy") for n in names]


def one_case(images: int, captions: int, k: int, layout: str, kwargs: dict) -> dict:
    from pds_hf.prototypes import prototypes_from_embeddings

    image_embeds, text_embeds, pair_image = load_pairs(images, captions)
    if layout == "pairs":
        flat = np.empty((len(pair_image), image_embeds.shape[1]), dtype=np.float32)
        for start in range(0, len(flat), 65536):
            flat[start : start + 65536] = image_embeds[pair_image[start : start + 65536]]
        image_embeds, index = flat, {}
    else:
        index = dict(image_index=pair_image)
    before = rss_mb()
    start = time.perf_counter()
    protos = prototypes_from_embeddings(image_embeds, text_embeds, k, **index, **kwargs)
    seconds = time.perf_counter() - start
    return dict(
        seconds=seconds,
        rss_before_mb=before,
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        num_pairs=int(len(pair_image)),
        prototypes=len(protos),
        num_empty=protos.num_empty,
        support=float(np.sum(protos.support)),
        finite=bool(np.isfinite(protos.image_embeds).all()),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200_000, help="distinct images")
    parser.add_argument("--captions", type=int, default=5, help="captions per image (pairs = images x captions)")
    parser.add_argument("--k", type=int, default=1000, help="num_pairs M")
    parser.add_argument("--layout", nargs="+", default=["pairs", "dedup"], choices=["pairs", "dedup"])
    parser.add_argument(
        "--kmeans",
        default="{}",
        help="JSON of extra keyword arguments, e.g. '{\"kmeans_max_points_per_centroid\": null}'",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(*json.loads(args.case))))
        return

    load_pairs(args.images, args.captions)  # generate the cache outside the measured processes
    kwargs = json.loads(args.kmeans)
    results = []
    for layout in args.layout:
        case = json.dumps([args.images, args.captions, args.k, layout, kwargs])
        done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(dict(r, layout=layout, k=args.k, settings=kwargs or "defaults"))
        print(results[-1], flush=True)
    append_table(
        "prototypes_from_embeddings at scale",
        "layout | pairs | M | k-means settings | seconds | RSS with inputs loaded (GB) | peak RSS (GB) | prototypes | "
        "empty intersections | all finite",
        "{layout} | {num_pairs:,} | {k} | {settings} | {seconds:.0f} | {rss_before_gb:.2f} | {peak_gb:.2f} | "
        "{prototypes} | {num_empty} | {finite}",
        [dict(r, rss_before_gb=r["rss_before_mb"] / 1024, peak_gb=r["peak_mb"] / 1024) for r in results],
    )


if __name__ == "__main__":
    main()
