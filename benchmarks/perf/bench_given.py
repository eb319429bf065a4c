"""Distilling from given embedding columns: peak *anonymous* resident memory of reading the columns, and of
steps 2-6, on a memory-mapped ``datasets.Dataset``.

The dataset (one row per pair, ``caption`` strings, ``image_embedding`` and ``text_embedding`` as lists of
float32, no image column) is written once, a block at a time, as an Arrow file in the benchmark cache and opened
memory-mapped with ``Dataset.from_file``, as ``load_from_disk`` would. Each case runs in a fresh subprocess:

- ``read``: the reading of the embedding columns (``MappedSource.embeddings``) alone;
- ``distill``: ``DistillProcessor(config)(ds)``, steps 2-6 with ``synthesis="none"`` and ``num_pairs=M``.

``RssAnon`` is sampled every 50 ms (``machine.AnonPeak``). With ``--reference DIR`` the same cases also run with
the package found in ``DIR`` (e.g. ``git archive HEAD pds_hf`` unpacked there, from before the columns were read
in blocks), and the distilled captions of both are compared.

Usage (appends its table to RESULTS.md):
    mkdir /tmp/pds_head && git archive HEAD pds_hf | tar -x -C /tmp/pds_head
    python benchmarks/perf/bench_given.py --rows 1000000 --dim 256 --k 100 --reference /tmp/pds_head
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from machine import CACHE, AnonPeak, append_results, markdown_table, memory_status  # noqa: E402


def dataset_file(rows: int, dim: int, block: int = 100_000) -> Path:
    """The Arrow file of the benchmark dataset, written once (a block of rows in memory at a time)."""
    import pyarrow as pa
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    path = CACHE / f"given_{rows}_{dim}.arrow"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    features = Features(
        {
            "caption": Value("string"),
            "image_embedding": List(Value("float32")),
            "text_embedding": List(Value("float32")),
        }
    )
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with ArrowWriter(features=features, path=str(tmp)) as writer:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim)
            columns = {"caption": pa.array([f"caption {i}" for i in range(start, start + n)])}
            for name in ("image_embedding", "text_embedding"):
                values = pa.array(rng.standard_normal(n * dim, dtype=np.float32))
                columns[name] = pa.ListArray.from_arrays(offsets, values)
            writer.write_table(pa.table(columns))
        writer.finalize()
    tmp.rename(path)
    return path


def run_case(case: str, path: str, k: int) -> dict:
    """One case in this process; returns its numbers as a dict."""
    from datasets import Dataset

    from pds_hf import DistillConfig, DistillProcessor
    from pds_hf.cache import StageTimer
    from pds_hf.distributed import Ranks
    from pds_hf.sources import MappedSource

    ds = Dataset.from_file(path)
    cache = tempfile.mkdtemp(dir=CACHE, prefix="given-stage-")
    config = DistillConfig(num_pairs=k, synthesis="none", device="cpu", use_cache=True, cache_dir=cache)
    processor = DistillProcessor(config)
    before = memory_status()["RssAnon"]
    start = time.perf_counter()
    try:
        with AnonPeak() as peak:
            if case == "read":
                embedded = MappedSource(ds, config).embeddings(
                    processor.load_encoder, timer=StageTimer(), ranks=Ranks(), cache_dir=processor.cache_dir()
                )
                image_embeds, text_embeds = embedded.image_embeds, embedded.text_embeds
                digest, shapes = "", [list(image_embeds.shape), list(text_embeds.shape)]
            else:
                result = processor(ds)
                chosen = json.dumps([list(result["caption"]), list(result["support"])])
                digest = hashlib.sha1(chosen.encode()).hexdigest()[:12]
                shapes = []
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "seconds": time.perf_counter() - start,
        "before_gb": before / 1024,
        "peak_gb": peak.peak_mb / 1024,
        "digest": digest,
        "shapes": shapes,
        "hwm_gb": memory_status()["VmHWM"] / 1024,
    }


def in_subprocess(case: str, path: Path, k: int, package: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package or str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, "--file", str(path), "--k", str(k)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=100, help="num_pairs (M)")
    parser.add_argument("--reference", help="a folder holding an older pds_hf package to compare with")
    parser.add_argument("--case", choices=["read", "distill"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.file, args.k)))
        return
    path = dataset_file(args.rows, args.dim)
    versions = [("this checkout", None)] + ([(f"reference {args.reference}", args.reference)] if args.reference else [])
    rows, digests = [], []
    for label, package in versions:
        for case in ("read", "distill"):
            got = in_subprocess(case, path, args.k, package)
            print(label, case, got, flush=True)
            rows.append(
                [
                    label,
                    case,
                    f"{args.rows:,}",
                    args.dim,
                    args.k,
                    f"{got['seconds']:.0f}",
                    f"{got['before_gb']:.2f}",
                    f"{got['peak_gb']:.2f}",
                    f"{got['hwm_gb']:.2f}",
                ]
            )
            if case == "distill":
                digests.append(got["digest"])
    table = markdown_table(
        [
            "code",
            "case",
            "rows N",
            "d",
            "M",
            "seconds",
            "anon RSS before (GB)",
            "peak anon RSS (GB)",
            "VmHWM incl. file pages (GB)",
        ],
        rows,
    )
    same = (
        ""
        if len(digests) < 2
        else (
            f"\nDistilled captions and supports identical in both: {len(set(digests)) == 1} ({', '.join(digests)}).\n"
        )
    )
    size = path.stat().st_size / 2**30
    append_results(
        "Distilling from given embedding columns (bench_given.py)",
        f"Embedding columns as float32 lists in a memory-mapped Arrow file ({size:.1f} GB), one row per "
        "pair, distinct captions; `read` = checks + reading the embedding columns, `distill` = the whole "
        f'run, steps 2-6, `synthesis="none"`.\n\n{table}\n{same}',
    )


if __name__ == "__main__":
    main()
