"""Steps 2-6 out of core: ``prototypes_from_embeddings`` and ``retrieve_captions`` on memory-mapped
embeddings, with time and peak *anonymous* resident memory.

The pairs live on disk as ``.npy`` files (CLIP-like 768-d, pairs layout: each pair's image and
caption embedding, written by ``synthetic.clip_like_pairs_on_disk``): float32 for up to 2M pairs,
float16 for up to 10M. A run over N pairs opens the first N rows as memory maps. Pages of a memory
map are file-backed: the kernel drops them under pressure, so what a step really holds is its
anonymous memory (``RssAnon``), sampled every 50 ms in a background thread (``machine.AnonPeak``).
``VmHWM`` (anonymous + file-backed peak) is shown beside it. Each case is a fresh subprocess.

Cases:
- ``steps``: steps 2-5 (``prototypes_from_embeddings``, M prototypes) then step 6
  (``retrieve_captions`` over the N captions), the prototypes saved for the float16 comparison.
- ``nearest``: step 6 alone, M queries against the first N caption embeddings.
- ``--compare``: prototypes from the float16 file against those from the float32 file on the same
  first N pairs (the float16 file holds the float32 values rounded); with ``--seed S``, float32
  with k-means seed S instead: the control, how far the seed alone moves the result.
- ``--reference DIR``: steps 2-6 with the package found in ``DIR`` (e.g. ``git archive HEAD pds_hf``
  unpacked there) on in-memory arrays, against this checkout on the same pairs as memory maps.

Usage (each run appends its table to RESULTS.md):
    python benchmarks/perf/bench_outofcore.py --steps 1000000 2000000            # float32, M = 1000
    python benchmarks/perf/bench_outofcore.py --steps 1000000 --dtype float16
    python benchmarks/perf/bench_outofcore.py --nearest 1000000 10000000 --dtype float16
    python benchmarks/perf/bench_outofcore.py --compare 1000000                  # after both --steps runs
    python benchmarks/perf/bench_outofcore.py --steps 100000 --k 100 --seed 43   # the seed control ...
    python benchmarks/perf/bench_outofcore.py --compare 100000 --k 100 --seed 43  # ... compared
    mkdir /tmp/pds_head && git archive 5e52d80 pds_hf | tar -x -C /tmp/pds_head
    python benchmarks/perf/bench_outofcore.py --reference /tmp/pds_head --pairs 100000 --k 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from machine import CACHE, AnonPeak, append_table, memory_status  # noqa: E402

FILES = {"float32": 2_000_000, "float16": 10_000_000}
MEMORY_FIGURES = {"start_anon", "peak_protos", "peak_caption", "peak", "hwm"}
GB = 1 / 1024  # per MiB


class Captions:
    """Stands in for the list of N caption strings (only indexed by step 6)."""

    def __getitem__(self, i):
        return f"caption {i}"


def open_pairs(dtype: str, n: int):
    """The first ``n`` pairs of the ``dtype`` file, as memory maps. A file still being written (by
    another process) may be used up to the rows already written: the last row asked for must be set."""
    from synthetic import clip_like_pairs_on_disk

    folder = CACHE / f"pairs_{FILES[dtype]}_{dtype}"
    if (folder / "complete").exists() or not (folder / "texts.npy").exists():
        images, texts = clip_like_pairs_on_disk(folder, FILES[dtype], dtype=dtype)
    else:
        images, texts = (np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("images", "texts"))
    if n > len(images) or not (np.asarray(images[n - 1]).any() and np.asarray(texts[n - 1]).any()):
        raise SystemExit(f"{n} pairs asked but the {dtype} file holds fewer (written so far).")
    return images[:n], texts[:n]


def saved(dtype: str, n: int, k: int, seed: int = 42) -> Path:
    return CACHE / (f"outofcore_protos_{dtype}_{n}_{k}" + ("" if seed == 42 else f"_seed{seed}") + ".npz")


def steps_case(dtype: str, n: int, k: int, seed: int = 42) -> dict:
    from pds_hf.caption import retrieve_captions
    from pds_hf.prototypes import prototypes_from_embeddings

    images, texts = open_pairs(dtype, n)
    start_anon = memory_status()["RssAnon"]
    with AnonPeak() as peak_protos:
        start = time.perf_counter()
        protos = prototypes_from_embeddings(images, texts, k, seed=seed)
        protos_seconds = time.perf_counter() - start
    with AnonPeak() as peak_caption:
        start = time.perf_counter()
        _, caption_index = retrieve_captions(protos.text_embeds, texts, Captions())
        caption_seconds = time.perf_counter() - start
    save_result(saved(dtype, n, k, seed), protos, caption_index)
    return dict(
        protos_seconds=protos_seconds,
        caption_seconds=caption_seconds,
        start_anon=start_anon,
        peak_protos=peak_protos.peak_mb,
        peak_caption=peak_caption.peak_mb,
        hwm=memory_status()["VmHWM"],
        num_empty=protos.num_empty,
        finite=bool(np.isfinite(protos.image_embeds).all() and np.isfinite(protos.text_embeds).all()),
    )


def nearest_case(dtype: str, n: int, k: int) -> dict:
    from pds_hf.caption import nearest

    _, texts = open_pairs(dtype, n)
    queries = np.asarray(texts[:: max(1, n // k)][:k], dtype=np.float32) + 0.01
    start_anon = memory_status()["RssAnon"]
    with AnonPeak() as peak:
        start = time.perf_counter()
        nearest(queries, texts)
        seconds = time.perf_counter() - start
    return dict(seconds=seconds, start_anon=start_anon, peak=peak.peak_mb, hwm=memory_status()["VmHWM"])


def reference_case(package: str, n: int, k: int, in_memory: bool) -> dict:
    """Steps 2-6 with whichever ``pds_hf`` is first on the path; results saved for comparison."""
    from pds_hf.caption import retrieve_captions
    from pds_hf.prototypes import prototypes_from_embeddings

    images, texts = open_pairs("float32", n)
    if in_memory:
        images, texts = np.array(images), np.array(texts)
    start = time.perf_counter()
    protos = prototypes_from_embeddings(images, texts, k)
    _, caption_index = retrieve_captions(protos.text_embeds, texts, Captions())
    seconds = time.perf_counter() - start
    name = "reference" if package else "outofcore"
    save_result(CACHE / f"equal_{name}_{n}_{k}.npz", protos, caption_index)
    return dict(seconds=seconds)


def subprocess_case(*case, package: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package, str(ROOT)) if p))
    done = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
        cwd=package or ROOT,
    )
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(a: dict, b: dict) -> dict:
    """How far two runs' outputs are apart (prototypes in the same order when the clusterings agree)."""
    from pds_hf.filter import normalize

    same_order = a["image_embeds"].shape == b["image_embeds"].shape
    cosine = np.einsum("ij,ij->i", normalize(a["text_embeds"]), normalize(b["text_embeds"])) if same_order else None
    return dict(
        kept=float(np.mean(a["kept"] == b["kept"])),
        image_labels=float(np.mean(a["image_labels"] == b["image_labels"])),
        text_labels=float(np.mean(a["text_labels"] == b["text_labels"])),
        max_abs=float(
            max(np.abs(a["image_embeds"] - b["image_embeds"]).max(), np.abs(a["text_embeds"] - b["text_embeds"]).max())
        )
        if same_order
        else float("nan"),
        min_cosine=float(cosine.min()) if same_order else float("nan"),
        caption_index=float(np.mean(a["caption_index"] == b["caption_index"])),
        support=bool(np.array_equal(a["support"], b["support"])),
    )


def adjusted_rand_score(x: np.ndarray, y: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1: the same partition, whatever the numbering; ~0: chance)."""

    def pairs(counts):
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    together = pairs(np.unique(x * (int(y.max()) + 1) + y, return_counts=True)[1])
    in_x, in_y = pairs(np.bincount(x)), pairs(np.bincount(y))
    expected = in_x * in_y / pairs(np.array([len(x)]))
    return (together - expected) / ((in_x + in_y) / 2 - expected)


def storage_effect(n: int, k: int, other_dtype: str = "float16", other_seed: int = 42) -> dict:
    """float16 against float32 storage of the same first ``n`` pairs. With the float32 run's clusters
    and matching held fixed, the prototypes (means) computed from each storage show the rounding
    alone; the two full runs (saved by ``steps``) show it through k-means, whose local optimum moves
    with any perturbation, compared without regard to cluster numbering. ``other_dtype="float32"``
    with another ``other_seed`` is the control: how much k-means moves with its seed alone."""
    from pds_hf.align import align_clusters, sparse_count_table
    from pds_hf.filter import normalize
    from pds_hf.prototypes import _group_means

    a, b = dict(np.load(saved("float32", n, k))), dict(np.load(saved(other_dtype, n, k, other_seed)))
    kept = a["kept"]
    image_cluster, text_cluster = align_clusters(sparse_count_table(a["image_labels"][kept], a["text_labels"][kept], k))
    match_of_image = np.full(k, -1)
    match_of_image[image_cluster] = np.arange(k)
    text_of_image = np.full(k, -1)
    text_of_image[image_cluster] = text_cluster
    image_labels = np.maximum(a["image_labels"], 0)
    group = np.where(kept & (a["text_labels"] == text_of_image[image_labels]), match_of_image[image_labels], -1)
    weights = np.ones(n)
    means = {}
    for dtype in ("float32", other_dtype):
        images, texts = open_pairs(dtype, n)
        means[dtype] = [_group_means(table, np.arange(n), group, weights, k)[0] for table in (images, texts)]
    filled = _group_means(np.zeros((n, 1), np.float32), np.arange(n), group, weights, k)[1] > 0
    diffs = [np.abs(x[filled] - y[filled]) for x, y in zip(means["float32"], means[other_dtype], strict=False)]
    cosines = [
        np.einsum("ij,ij->i", normalize(x[filled]), normalize(y[filled]))
        for x, y in zip(means["float32"], means[other_dtype], strict=False)
    ]
    both = a["kept"] & b["kept"]
    nearest_cosine = (normalize(a["text_embeds"]) @ normalize(b["text_embeds"]).T).max(axis=1)
    return dict(
        kept=float(np.mean(a["kept"] == b["kept"])),
        fixed_max_abs=float(max(d.max() for d in diffs)),
        fixed_rel=float(
            max(
                d.max() / np.linalg.norm(x[filled], axis=1).mean()
                for d, x in zip(diffs, means["float32"], strict=False)
            )
        ),
        fixed_min_cosine=float(min(c.min() for c in cosines)),
        ari_image=adjusted_rand_score(a["image_labels"][both], b["image_labels"][both]),
        ari_text=adjusted_rand_score(a["text_labels"][both], b["text_labels"][both]),
        nearest_median=float(np.median(nearest_cosine)),
        nearest_p5=float(np.percentile(nearest_cosine, 5)),
    )


def save_result(path, protos, caption_index) -> None:
    """What the comparisons read of a run of steps 2-6: the prototypes, their labels, kept pairs and support, and
    the caption each prototype got."""
    np.savez(
        path,
        image_embeds=protos.image_embeds,
        text_embeds=protos.text_embeds,
        image_labels=protos.image_labels,
        text_labels=protos.text_labels,
        kept=protos.kept,
        caption_index=caption_index,
        support=protos.support,
    )


def in_gb(result: dict) -> dict:
    """A case's result with its memory figures (MiB, as measured) in GB."""
    return {key: value * GB if key in MEMORY_FIGURES else value for key, value in result.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[], help="pair counts N for steps 2-6")
    parser.add_argument("--nearest", type=int, nargs="*", default=[], help="candidate counts N for step 6 alone")
    parser.add_argument("--dtype", default="float32", choices=sorted(FILES), help="storage of the embeddings")
    parser.add_argument("--compare", type=int, nargs="*", default=[], help="N: float16 against float32 prototypes")
    parser.add_argument("--reference", help="folder holding the pds_hf package to compare with")
    parser.add_argument("--pairs", type=int, default=200_000, help="pairs for --reference")
    parser.add_argument("--k", type=int, default=1000, help="num_pairs M")
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="k-means seed of --steps; with --compare, compare "
        "float32 seed 42 against float32 with this seed (the control) instead of float16",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, *rest = json.loads(args.case)
        result = {"steps": steps_case, "nearest": nearest_case, "reference": reference_case}[kind](*rest)
        print(json.dumps(result))
        return

    if args.steps:
        results = []
        for n in args.steps:
            r = in_gb(subprocess_case("steps", args.dtype, n, args.k, args.seed))
            results.append(dict(r, n=n, dtype=args.dtype, k=args.k, total=r["protos_seconds"] + r["caption_seconds"]))
            print(results[-1], flush=True)
        append_table(
            "Steps 2-6 out of core on memory-mapped embeddings",
            "pairs N | storage | M | steps 2-5 (s) | step 6 (s) | total (s) | anon RSS before (GB) | "
            "peak anon RSS steps 2-5 (GB) | peak anon RSS step 6 (GB) | VmHWM incl. file pages (GB) | "
            "empty intersections | all finite",
            "{n:,} | {dtype} | {k} | {protos_seconds:.0f} | {caption_seconds:.0f} | {total:.0f} | {start_anon:.2f} | "
            "{peak_protos:.2f} | {peak_caption:.2f} | {hwm:.2f} | {num_empty} | {finite}",
            results,
        )
    if args.nearest:
        results = []
        for n in args.nearest:
            results.append(
                dict(in_gb(subprocess_case("nearest", args.dtype, n, args.k)), n=n, dtype=args.dtype, k=args.k)
            )
            print(results[-1], flush=True)
        append_table(
            "Nearest caption (step 6) out of core",
            "candidates N | storage | queries M | seconds | anon RSS before (GB) | peak anon RSS (GB) | "
            "VmHWM incl. file pages (GB)",
            "{n:,} | {dtype} | {k} | {seconds:.1f} | {start_anon:.2f} | {peak:.2f} | {hwm:.2f}",
            results,
        )
    if args.compare:
        results = []
        against = ("float32", args.seed) if args.seed != 42 else ("float16", 42)
        for n in args.compare:
            results.append(
                dict(storage_effect(n, args.k, *against), n=n, k=args.k, against="{} seed {}".format(*against))
            )
            print(results[-1], flush=True)
        append_table(
            "float16 storage against float32: effect on the prototypes",
            "pairs N | M | against float32 seed 42 | same kept pairs | same clusters: prototypes max abs diff | "
            "same clusters: max diff / mean prototype norm | same clusters: min cosine | "
            "image labels ARI of the two runs | text labels ARI | "
            "float32 seed 42 text prototype to the nearest other one: median cosine | 5th percentile",
            "{n:,} | {k} | {against} | {kept:.5f} | {fixed_max_abs:.2e} | {fixed_rel:.2e} | {fixed_min_cosine:.7f} | "
            "{ari_image:.3f} | {ari_text:.3f} | {nearest_median:.4f} | {nearest_p5:.4f}",
            results,
        )
    if args.reference:
        old = subprocess_case("reference", args.reference, args.pairs, args.k, True, package=args.reference)
        new = subprocess_case("reference", "", args.pairs, args.k, False)
        a, b = (dict(np.load(CACHE / f"equal_{name}_{args.pairs}_{args.k}.npz")) for name in ("reference", "outofcore"))
        c = compare(a, b)
        append_table(
            "Out of core against the reference code (equal results)",
            "pairs | M | reference (in memory) s | out of core (memory maps) s | same kept | same image labels | "
            "same text labels | prototypes max abs diff | same caption index | same support",
            "{pairs:,} | {k} | {old:.0f} | {new:.0f} | {kept} | {image_labels} | {text_labels} | {max_abs:.3g} | "
            "{caption_index} | {support}",
            [dict(c, pairs=args.pairs, k=args.k, old=old["seconds"], new=new["seconds"])],
        )


if __name__ == "__main__":
    main()
