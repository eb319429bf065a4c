"""The encode feed: decode workers, decode failures found once, one loader, and the barrier timeout."""

import os
import sys
import textwrap
import threading

import numpy as np
import pytest
from datasets import Dataset, Features, Image, Value

from pds_hf.cache import Stage
from pds_hf.distributed import Ranks
from pds_hf.encode import default_workers, encode_table
from pds_hf.inputs import read_pairs
from pds_hf.testing import run_local_group


@pytest.fixture(scope="module")
def with_bad_images(shapes_ds):
    """The shapes images (20 of them, one row per pair) plus two that cannot be decoded."""
    rows = shapes_ds.select(range(20)).cast_column("image", Image(decode=False))
    stored = [{"bytes": row["image"]["bytes"], "path": None} for row in rows]
    truncated = stored[3]["bytes"][:-30]  # PNG header intact, data cut: fails only when decoded
    stored[5:5] = [{"bytes": b"not an image", "path": None}]
    stored[12:12] = [{"bytes": truncated, "path": None}]
    captions = [f"caption {i}" for i in range(len(stored))]
    return Dataset.from_dict(
        {"image": stored, "caption": captions}, features=Features({"image": Image(), "caption": Value("string")})
    )


def test_same_embeddings_with_0_1_and_2_workers(tiny_encoder, with_bad_images, caplog, monkeypatch):
    import pds_hf.encode

    results = []
    # Pixel batches come back through shared memory; (2, "pipe"): as arrays through the pipe, as when
    # /dev/shm is small. Forked workers see the patched check.
    for workers, transfer in ((0, None), (1, "shm"), (2, "shm"), (2, "pipe")):
        shm = transfer == "shm"
        monkeypatch.setattr(pds_hf.encode, "_room_in_shared_memory", lambda nbytes, depth, shm=shm: shm)
        with caplog.at_level("WARNING", logger="pds_hf.encode"):
            results.append(
                encode_table(
                    tiny_encoder,
                    with_bad_images,
                    read_pairs(with_bad_images),
                    batch_size=4,
                    shard_size=7,
                    workers=workers,
                )
            )
        assert "Skipping 2 image(s) of column 'image' that failed to decode, at row(s) [5, 12]" in caplog.text
        caplog.clear()
    for table, image_embeds, text_embeds in results:
        assert table.skipped_images == [5, 12] and len(table.image_rows) == 20
        assert image_embeds.shape == (20, 32) and np.isfinite(image_embeds).all()
        np.testing.assert_array_equal(image_embeds, results[0][1])
        np.testing.assert_array_equal(text_embeds, results[0][2])
    expected = tiny_encoder.encode_images([with_bad_images[int(r)]["image"] for r in results[0][0].image_rows[:4]])
    np.testing.assert_allclose(results[0][1][:4], expected, atol=1e-5)


def test_undecodable_image_raises_in_the_encode_pass(tiny_encoder, with_bad_images):
    with pytest.raises(ValueError, match=r"2 empty \(null\) or undecodable image\(s\), at row\(s\) \[5, 12\]"):
        encode_table(tiny_encoder, with_bad_images, read_pairs(with_bad_images), on_bad_image="error", workers=1)


def test_workers_decode_for_an_encoder_without_preprocessing(with_bad_images):
    class MeanColour:  # takes PIL images only: the workers decode, this process encodes
        def encode_images(self, images):
            return np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) for image in images])

        def encode_texts(self, texts):
            return np.ones((len(texts), 3), np.float32)

    table = read_pairs(with_bad_images)
    _, by_workers, _ = encode_table(MeanColour(), with_bad_images, table, batch_size=3, workers=2)
    _, in_thread, _ = encode_table(MeanColour(), with_bad_images, table, batch_size=3, workers=0)
    np.testing.assert_array_equal(by_workers, in_thread)


def _die(stored):
    os._exit(1)


def test_a_dead_worker_says_what_to_lower(tiny_encoder, with_bad_images, monkeypatch):
    import pds_hf.encode

    monkeypatch.setattr(pds_hf.encode, "_prepare_in_worker", _die)
    with pytest.raises(RuntimeError, match="decode worker died.*encode_workers"):
        encode_table(tiny_encoder, with_bad_images, read_pairs(with_bad_images), workers=1)


def test_workers_setting_is_checked():
    from pds_hf import DistillConfig

    assert 1 <= default_workers() <= 8
    with pytest.raises(ValueError, match="encode_workers must be None or an integer >= 0"):
        DistillConfig(encode_workers=-1)
    with pytest.raises(ValueError, match="workers must be None or an integer >= 0, got 1.5"):
        encode_table(None, None, None, workers=1.5)


class _ThreadRanks(Ranks):
    """A process of a 2-process run played by a thread: the barrier waits for the other thread."""

    def __init__(self, rank, meeting):
        super().__init__(rank=rank, world=2)
        self.meeting = meeting

    def barrier(self):
        self.meeting.wait(timeout=60)


def test_only_the_main_process_loads_the_embeddings(tiny_encoder, with_bad_images, tmp_path, caplog):
    table = read_pairs(with_bad_images)
    meeting, results = threading.Barrier(2), {}

    def run(rank):
        results[rank] = encode_table(
            tiny_encoder,
            with_bad_images,
            table,
            batch_size=4,
            shard_size=6,
            stage=Stage(tmp_path),
            ranks=_ThreadRanks(rank, meeting),
            workers=0,
            load=rank == 0,
        )

    with caplog.at_level("INFO", logger="pds_hf.encode"):
        threads = [threading.Thread(target=run, args=(rank,), name=f"rank{rank}") for rank in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    loaders = [r.threadName for r in caplog.records if r.getMessage() == "loading 8 encoded shards"]
    assert loaders == ["rank0"]
    (main_table, image_embeds, text_embeds), (other_table, none_images, none_texts) = results[0], results[1]
    assert none_images is None and none_texts is None
    # The failed images (at shards of either process) are dropped from both tables alike.
    assert other_table.skipped_images == main_table.skipped_images == [5, 12]
    np.testing.assert_array_equal(other_table.image_rows, main_table.image_rows)
    np.testing.assert_array_equal(other_table.pair_image, main_table.pair_image)
    assert image_embeds.shape == (20, 32) and text_embeds.shape == (22, 32)
    _, single_embeds, _ = encode_table(tiny_encoder, with_bad_images, table, batch_size=4, workers=0)
    np.testing.assert_allclose(single_embeds, image_embeds, atol=1e-5)  # other batches: float reordering only


_BARRIER_SCRIPT = """
import sys, time
from pds_hf.distributed import current_ranks

ranks = current_ranks(timeout=2)
if ranks.rank == 1 and sys.argv[1] == "late":
    time.sleep(8)
try:
    ranks.barrier()
    print("MET", ranks.rank)
except TimeoutError as err:
    print("TIMEOUT", ranks.rank, err)
"""


def _two_processes(mode: str) -> str:
    """What rank 0 of two processes running the barrier script in ``mode`` printed."""
    return run_local_group([sys.executable, "-c", textwrap.dedent(_BARRIER_SCRIPT), mode], 2, timeout=120)[0]


@pytest.mark.slow
def test_barrier_meets_and_times_out_naming_the_setting():
    assert "MET 0" in _two_processes("prompt")
    main = _two_processes("late")
    assert "TIMEOUT 0" in main and "raise DistillConfig.barrier_timeout (--barrier-timeout)" in main, main


def test_single_process_barrier_is_free():
    assert Ranks(timeout=0.001).barrier() is None  # no process group: returns at once
