"""The k-means assignment step (each process's pass over its slice, issue 20) on CUDA against faiss on the CPU.

Each process of a multi-process selection assigns the rows of its slice to the M centres broadcast to it: on a
process with a GPU that pass can run there. This times, on ``--rows`` CLIP-like rows (random here: the cost does
not depend on the values) of ``--dim`` dimensions against ``--k`` centres, unit-normalised as PDS clusters them:

- ``faiss-cpu``: :func:`pds_hf.cluster.assign` with an exact flat index (what runs today);
- ``torch``: :func:`pds_hf.cluster.assign_torch` on ``cuda`` (float16 rows sent, scaled and multiplied in
  float32), with the rows in host memory as a memory map would give them;
- ``faiss-gpu``: ``faiss.GpuIndexFlatL2`` when faiss has GPUs.

and reports rows per second, and how many labels differ from faiss-cpu's (near ties only: two centres within
float32 rounding). Projection: rows/s per GPU x 64 processes against 1B / 64 = 15.6M rows per process.

Usage:
    python benchmarks/gpu/bench_assign.py                       # on a CUDA machine: about a minute
    python benchmarks/gpu/bench_assign.py --rows 2000000 --k 1000 --dim 768
    python benchmarks/gpu/bench_assign.py --quick               # CPU only, small: checks that it runs
Results are printed and appended to benchmarks/gpu/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gpu_results import RESULTS, append_results, markdown_table


def rows_and_centres(n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float16)
    for start in range(0, n, 1_000_000):
        stop = min(start + 1_000_000, n)
        x[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return x, centres


def timed(fn, repeat: int = 1):
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return out, best


def main() -> None:
    import torch

    from pds_hf.cluster import assign, assign_torch, centre_index

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--cpu-rows", type=int, default=200_000, help="rows faiss-cpu assigns (it is the slow one)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dim, args.k, args.cpu_rows = 20_000, 64, 50, 20_000
    x, centres = rows_and_centres(args.rows, args.dim, args.k)
    cpu_rows = min(args.cpu_rows, args.rows)
    (cpu_labels, _), cpu_s = timed(
        lambda: assign(centre_index(centres), x[:cpu_rows], normalize=True, chunk=args.chunk)
    )
    rows = [["faiss-cpu (flat, exact)", f"{cpu_rows:,}", f"{cpu_s:.2f}", f"{cpu_rows / cpu_s:,.0f}", "-"]]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    gpu_name = torch.cuda.get_device_name(0) if cuda else "none"
    n = args.rows if cuda else cpu_rows
    assign_torch(centres, x[: args.chunk], normalize=True, chunk=args.chunk, device=device)  # warm up
    if cuda:
        torch.cuda.synchronize()
    (labels, _), torch_s = timed(lambda: assign_torch(centres, x[:n], normalize=True, chunk=args.chunk, device=device))
    differ = int((labels[:cpu_rows] != cpu_labels).sum())
    rows.append(
        [f"torch on {device} (fp16 rows, fp32 math)", f"{n:,}", f"{torch_s:.2f}", f"{n / torch_s:,.0f}", differ]
    )
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        gpus = 0
    if gpus:
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), args.dim)
        index.add(centres)
        (gpu_labels, _), faiss_s = timed(lambda: assign(index, x, normalize=True, chunk=args.chunk))
        differ = int((gpu_labels[:cpu_rows] != cpu_labels).sum())
        rows.append(["faiss-gpu (flat)", f"{args.rows:,}", f"{faiss_s:.2f}", f"{args.rows / faiss_s:,.0f}", differ])
    fastest = max(float(r[3].replace(",", "")) for r in rows)
    per_process = 1_000_000_000 / 64
    body = (
        f"{args.dim}-d float16 rows in host memory, k = {args.k}, unit-normalised, blocks of {args.chunk}; "
        f"GPU: {gpu_name}; torch {torch.__version__}"
        + (" (--quick: CPU only, not real timings)" if args.quick else "")
        + ".\n\n"
        + markdown_table(
            ["assignment", "rows", "seconds", "rows/s", f"labels differing from faiss-cpu's (first {cpu_rows:,})"], rows
        )
        + f"\n\nProjection: 1B pairs on 64 processes is {per_process:,.0f} rows per process per modality; at the "
        f"fastest rate above, {per_process / fastest:,.0f} s per modality.\n"
    )
    append_results("k-means assignment on CUDA (bench_assign.py)" + (" --quick" if args.quick else ""), body, RESULTS)


if __name__ == "__main__":
    main()
