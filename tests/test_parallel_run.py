"""A whole run on 2 gloo processes selects on slices (issue 20) and gives the one-process distilled set.

The demo dataset (60 images, 2 captions each) is encoded with the tiny CLIP encoder and distilled (steps 2-6, then
the nearest real image) by a ``DistillProcessor`` in 1 process and in 2 processes started as ``torchrun`` starts
them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; gloo on the CPU). Each process records whether its
select stage went through :func:`pds_hf.parallel.choose_on_slices`; the two distilled sets must agree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from pds_hf.testing import run_local_group

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def worker(out: Path) -> None:
    """One process: distill the demo set with the tiny encoder, spying on choose_on_slices; save the result."""
    import pds_hf
    import pds_hf.parallel.select as slices
    from pds_hf.demo import demo_dataset
    from pds_hf.distributed import current_ranks
    from pds_hf.testing import tiny_clip_encoder

    calls = []
    original = slices.choose_on_slices

    def spy(config, table, image_embeds, text_embeds, ranks, **kwargs):
        calls.append(ranks.world)
        return original(config, table, image_embeds, text_embeds, ranks, **kwargs)

    slices.choose_on_slices = spy
    for method, synthesis in (("pds", "retrieve"), ("herding", "retrieve")):
        result = pds_hf.distill(
            demo_dataset(60, side=32),
            clip_model=tiny_clip_encoder(seed=0),
            unclip_model=None,
            num_pairs=8,
            method=method,
            synthesis=synthesis,
            image_size=32,
            device="cpu",
            cache_dir=str(out / f"cache-{method}"),
            barrier_timeout=120,
        )
        rank = current_ranks().rank
        record = dict(
            rank=rank,
            parallel=list(calls),
            caption=list(result["caption"]),
            support=list(map(int, result["support"])),
            image_cluster=list(map(int, result["image_cluster"])),
            text_cluster=list(map(int, result["text_cluster"])),
            image_embedding=np.asarray(result["image_embedding"], dtype=np.float64).tolist(),
            text_embedding=np.asarray(result["text_embedding"], dtype=np.float64).tolist(),
            pixels=[np.asarray(image).tolist() for image in result["image"]],
        )
        (out / f"{method}.{rank}.json").write_text(json.dumps(record))
        calls.clear()


def run(world: int, out: Path, timeout: float = 300) -> None:
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    run_local_group(
        [sys.executable, str(HERE), str(out)], world, timeout=timeout, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath
    )


@pytest.mark.slow
def test_two_processes_select_on_slices_and_match_one(tmp_path):
    run(1, tmp_path / "one")
    run(2, tmp_path / "two")
    for method in ("pds", "herding"):
        one = json.loads((tmp_path / "one" / f"{method}.0.json").read_text())
        assert one["parallel"] == []  # one process: today's path
        for rank in (0, 1):
            two = json.loads((tmp_path / "two" / f"{method}.{rank}.json").read_text())
            assert two["parallel"] == [2], f"{method}: rank {rank} did not select on its slice"
            for key in ("caption", "support", "image_cluster", "text_cluster", "pixels"):
                assert two[key] == one[key], f"{method} rank {rank}: {key}"
            for key in ("image_embedding", "text_embedding"):
                np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-6, err_msg=f"{method}: {key}")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    worker(out)
