"""Steps 2-6 on every process (issue 20): 2 and 3 gloo processes on CPU give the one-process result.

Each run starts ``W`` Python processes (this file, run as a script) that join one gloo group on 127.0.0.1 and
a free port, run :func:`pds_hf.parallel.choose_on_slices` on every case below, and save what each returns.
The parent compares every process's dict with :func:`pds_hf.steps.choose` run on one process: captions,
supports, clusters, image rows, the kept count and each pair's labels identical, prototypes within 1e-6.
Every wait is bounded (60 s for the group, a timeout on the processes).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from pds_hf.inputs import PairTable
from pds_hf.testing import run_local_group

HERE = Path(__file__).resolve()


def _table(pair_image, pair_text, num_images, num_texts, layout):
    return PairTable(
        image_rows=np.arange(num_images),
        texts=[f"caption {i}" for i in range(num_texts)],
        pair_image=np.asarray(pair_image, dtype=np.int64),
        pair_text=np.asarray(pair_text, dtype=np.int64),
        pair_rows=np.arange(len(pair_image)),
        layout=layout,
    )


def make_cases():
    """name -> (config fields, table, image_embeds, text_embeds). Small, with ties, shared images, empties."""
    rng = np.random.default_rng(7)
    d = 12
    cases = {}
    # One row per pair, 1,440 pairs (more than 4 clusters x 256 points kept: k-means fits on a sample). The
    # pair 270th by similarity is repeated 20 times at the start and 20 at the end, so the filter's cut (288
    # removed) falls inside a run of 41 tied pairs that starts in the first slice and ends in the last.
    centres = rng.normal(size=(6, d))
    images = (centres[rng.integers(6, size=1400)] + 0.6 * rng.normal(size=(1400, d))).astype(np.float32)
    texts = (images + 0.8 * rng.normal(size=(1400, d))).astype(np.float32)
    from pds_hf.filter import pair_similarity

    tied = int(np.argsort(pair_similarity(images, texts), kind="stable")[270])
    images = np.concatenate([np.repeat(images[tied : tied + 1], 20, axis=0), images, images[[tied] * 20]])
    texts = np.concatenate([np.repeat(texts[tied : tied + 1], 20, axis=0), texts, texts[[tied] * 20]])
    pairs = _table(np.arange(1440), np.arange(1440), 1440, 1440, "pair")
    # One row per image, 5 captions each (an image's pairs can fall in two slices).
    shared_images = (centres[rng.integers(6, size=250)] + 0.6 * rng.normal(size=(250, d))).astype(np.float32)
    shared_texts = (np.repeat(shared_images, 5, axis=0) + 0.9 * rng.normal(size=(1250, d))).astype(np.float32)
    shared = _table(np.repeat(np.arange(250), 5), np.arange(1250), 250, 1250, "image")
    # Few pairs, many clusters, image and text unrelated: matched clusters that share no pair.
    sparse_images = rng.normal(size=(70, d)).astype(np.float32)
    sparse_texts = rng.normal(size=(70, d)).astype(np.float32)
    sparse = _table(np.arange(70), np.arange(70), 70, 70, "pair")
    for dtype in ("float32", "float16"):
        cast = np.dtype(dtype)
        cases[f"pair-{dtype}-scored"] = (
            dict(num_pairs=4, synthesis="retrieve-scored"),
            pairs,
            images.astype(cast),
            texts.astype(cast),
        )
        cases[f"image-{dtype}"] = (
            dict(num_pairs=4, synthesis="retrieve"),
            shared,
            shared_images.astype(cast),
            shared_texts.astype(cast),
        )
        cases[f"image-{dtype}-k12-scored"] = (
            dict(num_pairs=12, synthesis="retrieve-scored", rm_ratio=0.3),
            shared,
            shared_images.astype(cast),
            shared_texts.astype(cast),
        )
        # The same read in blocks of 97 rows (BLOCKS), as a memory-mapped table much larger than memory is.
        cases[f"image-{dtype}-k12-scored-blocks"] = cases[f"image-{dtype}-k12-scored"]
        for method in ("random", "herding", "kcenter"):
            cases[f"image-{dtype}-{method}"] = (
                dict(num_pairs=9, method=method),
                shared,
                shared_images.astype(cast),
                shared_texts.astype(cast),
            )
            cases[f"pair-{dtype}-{method}"] = (dict(num_pairs=7, method=method), pairs, images.astype(cast), texts)
    # Every pair twice (the second copy in later slices): each nearest caption and image, each greedy step of
    # herding and k-center is a tie between processes, which the lower row must win.
    base_images = (centres[rng.integers(6, size=150)] + 0.6 * rng.normal(size=(150, d))).astype(np.float32)
    base_texts = (base_images + 0.8 * rng.normal(size=(150, d))).astype(np.float32)
    doubled = (
        _table(np.arange(300), np.arange(300), 300, 300, "pair"),
        np.tile(base_images, (2, 1)),
        np.tile(base_texts, (2, 1)),
    )
    # Read in blocks of 97 rows, so that the caption and image searches split across processes too.
    cases["doubled-scored-blocks"] = (dict(num_pairs=6, synthesis="retrieve-scored"), *doubled)
    cases["doubled-retrieve-blocks"] = (dict(num_pairs=6, synthesis="retrieve"), *doubled)
    cases["doubled-herding"] = (dict(num_pairs=8, method="herding"), *doubled)
    cases["doubled-kcenter"] = (dict(num_pairs=8, method="kcenter"), *doubled)
    for name, fields in (
        ("sparse-drop", dict(empty="drop")),
        ("sparse-centroid", dict(empty="centroid")),
        ("sparse-centroid-raw", dict(empty="centroid", normalize=False)),
    ):
        cases[name] = (dict(num_pairs=20, synthesis="retrieve", **fields), sparse, sparse_images, sparse_texts)
    return cases


BLOCKS = 97


def _config(fields):
    from pds_hf import DistillConfig

    return DistillConfig(**fields)


def worker(out: Path) -> None:
    """One process of a run: join the gloo group the launcher's env names, run every case, save each result."""
    from datetime import timedelta

    import torch.distributed as dist

    from pds_hf.distributed import Ranks
    from pds_hf.parallel import Comm, choose_on_slices

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    ranks = Ranks(rank=rank, world=world, timeout=60.0)
    comm = Comm(ranks, timeout=60.0)
    only = os.environ.get("PARALLEL_CASES")
    for name, (fields, table, image_embeds, text_embeds) in make_cases().items():
        if only and name not in only.split(","):
            continue
        try:
            chunk = BLOCKS if name.endswith("-blocks") else 65536
            result = choose_on_slices(
                _config(fields), table, image_embeds, text_embeds, ranks, comm=comm, labels="all", chunk=chunk
            )
        except ValueError as err:
            result = {"error": str(err)}
        (out / f"{name}.{rank}.pkl").write_bytes(pickle.dumps(result))
    (out / f"bytes.{rank}.txt").write_text(str(comm.bytes_sent))
    dist.destroy_process_group()


def launch(world: int, out: Path, *, cases: str | None = None, timeout: float = 240) -> None:
    """Start ``world`` worker processes as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and wait."""
    pythonpath = os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")])
    extra = {"PARALLEL_CASES": cases} if cases else {}
    run_local_group(
        [sys.executable, str(HERE), str(out)],
        world,
        timeout=timeout,
        OMP_NUM_THREADS="1",
        PYTHONPATH=pythonpath,
        **extra,
    )


def reference(name):
    """The one-process dict (steps.choose, what a single process runs)."""
    from pds_hf.steps import choose

    fields, table, image_embeds, text_embeds = make_cases()[name]
    try:
        return choose(_config(fields), table, image_embeds, text_embeds)
    except ValueError as err:
        return {"error": str(err)}


def assert_same(got: dict, want: dict, name: str) -> None:
    assert got.keys() == want.keys(), name
    if "error" in want:
        assert got["error"] == want["error"], name
        return
    for key in ("caption_index", "image_index", "support", "image_cluster", "text_cluster", "pairs", "kept"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
    assert int(got["num_empty"]) == int(want["num_empty"]), name
    for key in ("image_embeds", "text_embeds"):
        assert got[key].dtype == want[key].dtype, f"{name}: {key}"
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=f"{name}: {key}")
    if "labels" in want:
        for key in ("image_labels", "text_labels"):
            np.testing.assert_array_equal(got["labels"][key], want["labels"][key], err_msg=f"{name}: {key}")


# A few seconds by default: 3 processes (uneven slices, an image's captions in two slices) on one case of each
# kind; every case on 2 and on 3 processes is marked slow.
FAST = (
    "pair-float16-scored",
    "image-float32-k12-scored",
    "image-float16-k12-scored-blocks",
    "sparse-centroid",
    "image-float16-herding",
    "pair-float32-kcenter",
    "image-float32-random",
    "doubled-scored-blocks",
    "doubled-retrieve-blocks",
    "doubled-herding",
    "doubled-kcenter",
)
RUNS: dict = {}


def results(world: int, names, tmp_path_factory) -> Path:
    """The folder of the results of one run of ``world`` processes on the cases ``names`` (run once per session)."""
    key = (world, tuple(names))
    if key not in RUNS:
        out = tmp_path_factory.mktemp(f"world{world}")
        launch(world, out, cases=",".join(names))
        RUNS[key] = out
    return RUNS[key]


def check(world: int, out: Path, name: str) -> None:
    want = reference(name)
    for rank in range(world):
        got = pickle.loads((out / f"{name}.{rank}.pkl").read_bytes())
        assert_same(got, want, f"{name} on rank {rank} of {world}")


@pytest.mark.parametrize("name", FAST)
def test_three_processes_return_the_one_process_result(name, tmp_path_factory):
    check(3, results(3, FAST, tmp_path_factory), name)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(make_cases()))
def test_every_case_on_2_and_3_processes(world, name, tmp_path_factory):
    check(world, results(world, list(make_cases()), tmp_path_factory), name)


def test_the_cases_reach_every_path():
    """The data exercise what they are meant to: a sampled k-means fit, ties at the cut, empty matches."""
    from pds_hf.cluster import DEFAULT_MAX_POINTS_PER_CENTROID
    from pds_hf.filter import pair_similarity

    cases = make_cases()
    fields, table, images, texts = cases["pair-float32-scored"]
    kept = int(len(table.pair_image) * (1 - 0.2))
    assert kept > fields["num_pairs"] * DEFAULT_MAX_POINTS_PER_CENTROID
    similarity = np.sort(pair_similarity(images, texts, table.pair_image, table.pair_text))
    cut = int(0.2 * len(similarity))
    assert similarity[cut - 1] == similarity[cut]  # the last removed and the first kept are tied
    assert int(reference("sparse-drop")["num_empty"]) > 0
    assert int(reference("sparse-centroid")["num_empty"]) > 0


def test_sortable_keys_order_as_the_floats_do():
    from pds_hf.parallel import sortable_keys

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=500), [0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 3.4e38, -3.4e38]])
    values = np.concatenate([values, values[:50]]).astype(np.float32)  # ties too
    keys = sortable_keys(values)
    np.testing.assert_array_equal(np.argsort(keys, kind="stable"), np.argsort(values, kind="stable"))
    assert keys[values == 0.0].tolist() == [keys[values == 0.0][0]] * int((values == 0.0).sum())


def test_aligned_bounds_split_on_whole_blocks():
    from pds_hf.parallel import aligned_bounds

    assert aligned_bounds(1000, 3, 100).tolist() == [0, 300, 600, 1000]
    assert aligned_bounds(1000, 3, 97).tolist() == [0, 291, 582, 1000]
    assert aligned_bounds(50, 3, 97).tolist() == [0, 0, 0, 50]  # a small table: one process searches it


def test_run_local_group_gives_each_rank_its_environment_and_names_a_failed_rank():
    # Each process prints its RANK, WORLD_SIZE and X, then exits with the status its rank's argument gives.
    script = (
        "import os, sys; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['X']); "
        "sys.exit(int(sys.argv[1 + int(os.environ['RANK'])]))"
    )
    assert run_local_group([sys.executable, "-c", script, "0", "0"], 2, timeout=60, X="x") == ["0 2 x\n", "1 2 x\n"]
    with pytest.raises(RuntimeError) as raised:
        run_local_group([sys.executable, "-c", script, "0", "3"], 2, timeout=60, X="y")
    assert str(raised.value) == "rank 1 exited 3:\n1 2 y\n"


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
