"""Alignment at scale: sparse count table + sparse assignment, against the dense Hungarian solver.

Cluster labels for ``--pairs`` kept pairs are drawn so that the table looks like a real one: image
cluster sizes are log-normal; a pair's caption falls in the text cluster matched to its image
cluster with probability 0.5, in one of a few "neighbouring" text clusters with probability 0.3,
and anywhere with probability 0.2 (``--noise uniform`` instead sends half of the pairs anywhere,
a harder table). Each case runs in a fresh subprocess so that its peak RSS is its own.

Usage:
    python benchmarks/perf/bench_align.py                          # M = 1000, 2000, 10000, 50000
    python benchmarks/perf/bench_align.py --k 50000 --pairs 2000000
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

from machine import append_table  # noqa: E402


def labels(k: int, n: int, noise: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0.0, 1.0, size=k)
    image = rng.choice(k, size=n, p=sizes / sizes.sum())
    match = rng.permutation(k)
    text = match[image]
    draw = rng.random(n)
    if noise == "uniform":
        anywhere = draw < 0.5
    else:
        near = (draw >= 0.5) & (draw < 0.8)
        text[near] = match[(image[near] + rng.integers(1, 6, size=int(near.sum()))) % k]
        anywhere = draw >= 0.8
    text[anywhere] = rng.integers(0, k, size=int(anywhere.sum()))
    return image, text


def one_case(k: int, n: int, noise: str, dense: bool) -> dict:
    from scipy.optimize import linear_sum_assignment

    from pds_hf.align import count_table, max_weight_matching, sparse_count_table

    image, text = labels(k, n, noise)
    start = time.perf_counter()
    table = sparse_count_table(image, text, k)
    rows, cols = max_weight_matching(table)
    seconds = time.perf_counter() - start
    total = float(table[rows, cols].sum())
    out = dict(k=k, pairs=n, noise=noise, nnz=int(table.nnz), sparse_seconds=seconds, sparse_total=total)
    out["sparse_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dense:
        start = time.perf_counter()
        counts = count_table(image, text, k)
        d_rows, d_cols = linear_sum_assignment(counts, maximize=True)
        out["dense_seconds"] = time.perf_counter() - start
        out["dense_total"] = float(counts[d_rows, d_cols].sum())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1000, 2000, 10000, 50000])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--noise", nargs="+", default=["neighbours", "uniform"], choices=["neighbours", "uniform"])
    parser.add_argument("--dense-max", type=int, default=2000, help="also run the dense solver up to this M")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        k, n, noise, dense = json.loads(args.case)
        print(json.dumps(one_case(k, n, noise, dense)))
        return

    results = []
    for noise in args.noise:
        for k in args.k:
            case = json.dumps([k, args.pairs, noise, k <= args.dense_max])
            done = subprocess.run(
                [sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            same = "-" if "dense_total" not in r else ("yes" if r["dense_total"] == r["sparse_total"] else "NO")
            dense = f"{r['dense_seconds']:.1f}" if "dense_seconds" in r else "-"
            results.append(dict(r, pairs=args.pairs, noise=noise, dense=dense, same=same))
            print(results[-1], flush=True)
    append_table(
        "Alignment: sparse count table and matching",
        "M | pairs | caption noise | non-zero cells | sparse table + matching (s) | peak RSS of that process (MB) | "
        "dense table + Hungarian (s) | matched total | total = dense",
        "{k} | {pairs:,} | {noise} | {nnz:,} | {sparse_seconds:.1f} | {sparse_peak_mb:.0f} | {dense} | "
        "{sparse_total:.0f} | {same}",
        results,
    )


if __name__ == "__main__":
    main()
