"""Steps 2-6 on 1 process against 2 processes (issue 20): wall time, CPU seconds, memory and bytes per process.

The pairs are CLIP-like synthetic embeddings memory-mapped from ``.npy`` files (``synthetic.clip_like_pairs_on_disk``,
pairs layout: an image repeated for its 5 captions, one row per pair), float16, ``--dim`` dimensions. A run of
``W`` processes starts them as ``torchrun`` would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; gloo on the CPU),
each with ``OMP_NUM_THREADS=--threads`` (1 by default, so that 2 processes use the 2 cores that 1 process with
2 threads would). Each process opens the memory maps and runs:

- ``W = 1``: :func:`pds_hf.parallel.choose_on_slices`, which is today's one-process path;
- ``W > 1``: :func:`pds_hf.parallel.choose_on_slices` on its slice, counting with :class:`pds_hf.parallel.Comm`
  the payload bytes it hands to collectives (an all-reduce of B bytes counts B; the transport moves more).

Per process: wall seconds of the call, CPU seconds (user + system, all threads, from ``getrusage``), the peak of
``RssAnon`` sampled every 50 ms during the call (``machine.AnonPeak``: anonymous memory, what the process holds;
memory-mapped pages are file-backed and not counted) and ``VmHWM`` (anonymous + file-backed peak) at the end, the
bytes sent, and the time and bytes at the end of each step (``Comm.marks``). The 2-process result is checked
against the 1-process one: captions, supports, clusters and image rows identical, prototypes within 1e-6.

Usage (each run appends its table to RESULTS.md):
    python benchmarks/perf/bench_parallel_select.py --pairs 1000000 2000000 --dim 256 --k 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))  # this checkout's pds_hf, as the workers import it

from machine import CACHE, AnonPeak, append_results, markdown_table, memory_status  # noqa: E402

MiB = 1 << 20


def open_pairs(n: int, dim: int, dtype: str, size: int):
    """The first ``n`` pairs of a ``size``-pair file (written once), as memory maps."""
    from synthetic import clip_like_pairs_on_disk

    images, texts = clip_like_pairs_on_disk(CACHE / f"parallel_{size}_{dim}_{dtype}", size, dtype=dtype, d=dim)
    return images[:n], texts[:n]


class Captions:
    """Stands in for the list of N caption strings (only indexed by step 6)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return f"caption {i}"


def worker(args) -> None:
    """One process of a run: time steps 2-6 on its slice and print one JSON line."""
    from pds_hf import DistillConfig
    from pds_hf.distributed import Ranks
    from pds_hf.inputs import PairTable
    from pds_hf.parallel import Comm, choose_on_slices

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        from datetime import timedelta

        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=args.timeout))
    images, texts = open_pairs(args.n, args.dim, args.dtype, args.size)
    n = len(images)
    table = PairTable(
        image_rows=np.arange(n),
        texts=Captions(n),
        pair_image=np.arange(n),
        pair_text=np.arange(n),
        pair_rows=np.arange(n),
        layout="pair",
    )
    config = DistillConfig(num_pairs=args.k, synthesis="retrieve", seed=42)
    ranks = Ranks(rank=rank, world=world, timeout=args.timeout)
    start_anon = memory_status()["RssAnon"]
    comm = Comm(ranks, timeout=args.timeout)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with AnonPeak() as peak:
        chosen = choose_on_slices(config, table, images, texts, ranks, comm=comm)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    status = memory_status()
    if rank == 0:
        np.savez(args.out / f"result_{world}.npz", **{k: v for k, v in chosen.items() if k != "labels"})
    line = dict(
        rank=rank,
        world=world,
        wall=wall,
        cpu=cpu,
        start_anon_mb=start_anon,
        peak_anon_mb=peak.peak_mb,
        end_anon_mb=status["RssAnon"],
        hwm_mb=status["VmHWM"],
        bytes_sent=comm.bytes_sent,
        calls=comm.calls,
        marks=comm.marks,
    )
    print("RESULT " + json.dumps(line), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def run(n: int, world: int, args) -> list[dict]:
    from pds_hf.testing import run_local_group

    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(args.dim), "--k", str(args.k)]
    cmd += ["--dtype", args.dtype, "--size", str(args.size), "--out", str(args.out), "--timeout", str(args.timeout)]
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    try:
        outputs = run_local_group(
            cmd, world, timeout=args.timeout + 600, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=pythonpath
        )
    except RuntimeError as err:
        raise SystemExit(f"{world} processes failed: {err}") from err
    results = []
    for rank, output in enumerate(outputs):
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"rank {rank} of {world} printed no result:\n{output[-3000:]}")
        results.append(json.loads(lines[0][len("RESULT ") :]))
    return results


def same(a: Path, b: Path) -> str:
    one, two = np.load(a), np.load(b)
    exact = all(np.array_equal(one[k], two[k]) for k in ("caption_index", "image_index", "support", "image_cluster"))
    exact = exact and np.array_equal(one["text_cluster"], two["text_cluster"]) and int(one["kept"]) == int(two["kept"])
    gap = max(float(np.abs(one[k] - two[k]).max()) for k in ("image_embeds", "text_embeds"))
    return f"{'identical' if exact else 'DIFFERENT'}, prototypes within {gap:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--n", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--out", type=Path, default=CACHE / "parallel_out")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.size = max(args.pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    open_pairs(args.size, args.dim, args.dtype, args.size)  # written once, before any timing
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows, steps, checks = [], [], []
    for n in args.pairs:
        for world in args.worlds:
            results = run(n, world, args)
            for r in results:
                rows.append(
                    [
                        f"{n:,}",
                        world,
                        r["rank"],
                        f"{r['wall']:.1f}",
                        f"{r['cpu']:.1f}",
                        f"{r['peak_anon_mb']:.0f}",
                        f"{r['peak_anon_mb'] - r['start_anon_mb']:.0f}",
                        f"{r['hwm_mb']:.0f}",
                        f"{r['bytes_sent'] / MiB:.2f}",
                        r["calls"],
                    ]
                )
                if r["marks"]:
                    previous_t, previous_b = 0.0, 0
                    cells = []
                    for name, t, b in r["marks"]:
                        cells.append(f"{name} {t - previous_t:.1f} s / {(b - previous_b) / MiB:.2f} MiB")
                        previous_t, previous_b = t, b
                    steps.append(f"- N = {n:,}, rank {r['rank']} of {world}: " + "; ".join(cells))
            print(rows[-1], flush=True)
        if 1 in args.worlds:
            for world in args.worlds:
                if world > 1:
                    check = same(args.out / "result_1.npz", args.out / f"result_{world}.npz")
                    checks.append(f"- N = {n:,}: {world} processes against 1: {check}")
    header = [
        "N",
        "processes",
        "rank",
        "wall s",
        "CPU s",
        "peak anon MiB",
        "peak anon above start MiB",
        "VmHWM MiB",
        "sent MiB",
        "collectives",
    ]
    body = (
        f"{args.dim}-d {args.dtype} CLIP-like pairs memory-mapped from disk, M = {args.k}, synthesis 'retrieve', "
        f"OMP_NUM_THREADS={args.threads} per process, gloo on CPU.\n\n"
        + markdown_table(header, rows)
        + "\n\nSame result:\n"
        + "\n".join(checks)
        + "\n\nPer step (time and bytes sent since the previous step):\n"
        + "\n".join(steps)
        + "\n"
    )
    append_results("Steps 2-6 on 1 and 2 processes (bench_parallel_select.py)", body)


if __name__ == "__main__":
    main()
