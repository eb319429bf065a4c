"""Streaming input: an IterableDataset distils to the same set as the map-style dataset, in two passes, resumably."""

import errno
import hashlib
import json
import logging
import os
import sys
import textwrap

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, Features, Image, IterableDataset, IterableDatasetDict, Value

import pds_hf
from pds_hf import DistillConfig, DistillProcessor
from pds_hf.sources import stream_fingerprint
from pds_hf.stream import ShardReadError
from pds_hf.testing import run_local_group


class Counting:
    """An encoder that counts the images and captions it encodes (and can refuse to), known by a fingerprint."""

    def __init__(self, inner, refuse=False):
        self.inner, self.refuse = inner, refuse
        self.images = self.texts = 0
        self.name = "counting-encoder"
        self.fingerprint = inner.fingerprint

    def encode_images(self, images):
        assert not self.refuse, "the encoder was called"
        self.images += len(images)
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        assert not self.refuse, "the encoder was called"
        self.texts += len(texts)
        return self.inner.encode_texts(texts)


@pytest.fixture(scope="module")
def config(tiny_encoder, tiny_pipe):
    return DistillConfig(
        num_pairs=6,
        clip_model=tiny_encoder,
        unclip_model=tiny_pipe,
        num_inference_steps=2,
        synthesis="retrieve",
        image_size=32,
        device="cpu",
        use_cache=False,
    )


@pytest.fixture(scope="module")
def map_style(shapes_ds, shapes_pairs_ds, config):
    """The map-style run of each (layout, settings), made once."""
    made = {}

    def run(layout, **changes):
        key = (layout, tuple(sorted(changes.items())))
        if key not in made:
            made[key] = DistillProcessor(config, **changes)(shapes_ds if layout == "image" else shapes_pairs_ds)
        return made[key]

    return run


def _pixels(ds):
    return [np.asarray(image).tobytes() for image in ds["image"]]


def assert_same_set(streamed, reference):
    assert streamed["caption"] == reference["caption"]
    assert streamed["support"] == reference["support"]
    for column in ("image_embedding", "text_embedding"):
        np.testing.assert_allclose(np.asarray(streamed[column]), np.asarray(reference[column]), atol=1e-5)
    assert _pixels(streamed) == _pixels(reference)


@pytest.mark.parametrize(
    "layout, num_shards, synthesis",
    [
        # unCLIP takes seconds per run even with the tiny pipeline: one case is fast, the others are marked slow.
        (layout, num_shards, synthesis)
        if synthesis == "retrieve" or (layout, num_shards) == ("image", 3)
        else pytest.param(layout, num_shards, synthesis, marks=pytest.mark.slow)
        for layout in ("image", "pair")
        for num_shards in (1, 3)
        for synthesis in ("retrieve", "unclip")
    ],
)
def test_stream_equals_map_style(layout, num_shards, synthesis, shapes_ds, shapes_pairs_ds, config, map_style):
    ds = shapes_ds if layout == "image" else shapes_pairs_ds
    # On disk (the session's cache) for three shards: the stages and the fetched images go through files.
    streamed = DistillProcessor(config, synthesis=synthesis, use_cache=num_shards > 1)(
        ds.to_iterable_dataset(num_shards=num_shards)
    )
    reference = map_style(layout, synthesis=synthesis)
    assert_same_set(streamed, reference)
    record = pds_hf.metadata(streamed)
    assert record["streaming"] is True
    source = record["source"]
    assert (source["num_rows"], source["n_shards"], source["layout"]) == (len(ds), num_shards, layout)
    assert (source["num_images"], source["num_pairs"], source["num_captions"]) == (60, 120, 95)


def test_one_large_shard_is_saved_in_chunks(shapes_ds, config, map_style, tmp_path):
    # A stream of one shard (to_iterable_dataset's default): its embeddings reach the disk every shard_size rows,
    # so memory holds one chunk, not the shard.
    streamed = DistillProcessor(config, use_cache=True, cache_dir=str(tmp_path), shard_size=16, encode_batch_size=8)(
        shapes_ds.to_iterable_dataset()
    )
    assert_same_set(streamed, map_style("image"))
    for what, total in (("image", 60), ("text", 95)):
        sizes = [len(np.load(path)["embeds"]) for path in sorted(tmp_path.glob(f"stream-*/shard-000000-{what}-*.npz"))]
        assert sum(sizes) == total and len(sizes) >= 4
        assert all(16 <= size < 16 + 2 * 8 for size in sizes[:-1])  # a chunk: shard_size rows and one batch's part


def test_first_seen_of_digest_rows_equals_the_dict_walk():
    from pds_hf.stream import _first_seen, _first_seen_rows

    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (50, 20), dtype=np.uint8)[rng.integers(0, 50, 400)]  # many repeats
    order = rng.permutation(400)
    ids, sources = _first_seen_rows(order, digests)
    expected_ids, expected_sources = _first_seen(order, [row.tobytes() for row in digests])
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(sources, expected_sources)


def test_images_repeated_across_shards_count_once(shapes_pairs_ds, config, map_style):
    # 7 shards of 120 rows: some image's two rows (one per caption) fall into two shards.
    counting = Counting(config.clip_model)
    streamed = DistillProcessor(config, clip_model=counting)(shapes_pairs_ds.to_iterable_dataset(num_shards=7))
    assert pds_hf.metadata(streamed)["source"]["num_images"] == 60
    assert counting.images < 120  # within a shard, a repeated image is encoded once
    assert_same_set(streamed, map_style("pair"))


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_baselines_fetch_the_same_real_images(method, shapes_pairs_ds, config, map_style):
    streamed = DistillProcessor(config, method=method)(shapes_pairs_ds.to_iterable_dataset(num_shards=3))
    assert_same_set(streamed, map_style("pair", method=method))


def test_second_pass_reads_only_the_shards_it_needs(shapes_ds, config):
    opened = []
    stream = shapes_ds.to_iterable_dataset(num_shards=6)
    original = IterableDataset.shard

    def spy(self, num_shards, index, contiguous=True):
        opened.append(index)
        return original(self, num_shards, index, contiguous)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IterableDataset, "shard", spy)
        small = DistillProcessor(config, num_pairs=2)(stream)
    encode_pass, fetch_pass = opened[:6], opened[6:]
    assert encode_pass == list(range(6))
    assert 1 <= len(fetch_pass) <= 2 and fetch_pass == sorted(set(fetch_pass))
    assert len(small) == 2


@pytest.mark.parametrize("layout", ["image", "pair"])
def test_given_embedding_columns_skip_the_encoder(layout, shapes_ds, shapes_pairs_ds, config, map_style):
    ds = shapes_ds if layout == "image" else shapes_pairs_ds
    encoded = ds.map(DistillProcessor(config).encode, batched=True, batch_size=16)
    refusing = Counting(config.clip_model, refuse=True)
    streamed = DistillProcessor(config, clip_model=refusing)(encoded.to_iterable_dataset(num_shards=3))
    assert_same_set(streamed, map_style(layout))
    assert pds_hf.metadata(streamed)["embeddings"]["given"] is True
    # An encoder known by an id that does not exist: loading it would fail.
    no_images = encoded.remove_columns("image").to_iterable_dataset(num_shards=2)
    small = DistillProcessor(config, clip_model="nobody/no-such-clip", synthesis="none")(no_images)
    assert small["caption"] == streamed["caption"] and small["image"] == [None] * 6


@pytest.mark.parametrize("layout", ["pair", "image"])
def test_bad_given_vectors_name_the_shard_and_row(layout, config):
    rng = np.random.default_rng(0)
    rows = 10
    captions = [f"caption {i}" if layout == "pair" else [f"caption {i}", f"other {i}"] for i in range(rows)]
    texts = [rng.normal(size=8).tolist() if layout == "pair" else rng.normal(size=(2, 8)).tolist() for _ in range(rows)]
    images = [rng.normal(size=8).tolist() for _ in range(rows)]
    settings = dict(clip_model="nobody/no-such-clip", synthesis="none", num_pairs=2)

    def stream(texts):
        return Dataset.from_dict(
            {"caption": captions, "image_embedding": images, "text_embedding": texts}
        ).to_iterable_dataset(num_shards=2)

    short = list(texts)
    short[7] = short[7][:5] if layout == "pair" else short[7][:1]  # row 2 of input shard 1
    message = (
        r"Input shard 1 of the stream: Column 'text_embedding' mixes vector sizes: 5 at row 2"
        if layout == "pair"
        else r"Input shard 1 of the stream: .*'text_embedding' has 1 vector\(s\) at input shard 1, row 2"
    )
    with pytest.raises(ValueError, match=message):
        DistillProcessor(config, **settings)(stream(short))
    assert len(DistillProcessor(config, **settings)(stream(texts))) == 2


def _flaky_stream(flag, rows_per_shard=8):
    """A generator-based stream of 4 shards whose shard 2 raises while ``flag`` exists."""
    colours = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(4 * rows_per_shard)]

    def generate(shards):
        for shard in shards:
            for i in range(rows_per_shard):
                if shard == 2 and i == 3 and flag.exists():
                    raise ConnectionError("the server closed the connection")
                row = shard * rows_per_shard + i
                yield {
                    "image": {"bytes": png_bytes(colours[row]), "path": None},
                    "caption": f"a square of colour {colours[row]}",
                }

    return IterableDataset.from_generator(
        generate, gen_kwargs={"shards": [0, 1, 2, 3]}, features=Features({"image": Image(), "caption": Value("string")})
    )


@pytest.mark.parametrize(
    "workers, encoded",
    [
        (0, 16 + 2),  # shards 0 and 1, and the batch of shard 2 read before it failed
        (1, 16),  # the feed reads 2 batches ahead: shard 2 fails before its first batch reaches the encoder
    ],
)
def test_a_failing_shard_is_named_and_the_rerun_resumes(workers, encoded, config, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    counting = Counting(config.clip_model)
    settings = dict(
        clip_model=counting,
        num_pairs=3,
        use_cache=True,
        cache_dir=str(tmp_path / "cache"),
        encode_batch_size=2,
        encode_workers=workers,
    )
    with pytest.raises(ShardReadError, match=r"input shard 2 \(of 4\).*after 2 row\(s\).*ConnectionError.*again"):
        DistillProcessor(config, **settings)(_flaky_stream(flag))
    assert counting.images == encoded
    flag.unlink()
    counting.images = 0
    small = DistillProcessor(config, **settings)(_flaky_stream(flag))
    assert counting.images == 16  # shards 2 and 3 only: 0 and 1 were kept
    assert len(small) == 3 and pds_hf.metadata(small)["source"]["num_rows"] == 32
    counting.images = counting.texts = 0
    DistillProcessor(config, **settings)(_flaky_stream(flag))
    assert counting.images == counting.texts == 0  # everything saved: nothing read again


def test_a_shard_that_ends_early_without_an_error_is_named(shapes_pairs_ds, config, tmp_path, monkeypatch):
    import datasets.config
    from datasets import load_dataset
    from datasets.packaged_modules.parquet.parquet import Parquet

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    files = []
    for i in range(3):  # 3 parquet files of 10 rows: their footers say how many rows each holds
        files.append(str(tmp_path / f"part-{i}.parquet"))
        shapes_pairs_ds.select(range(10 * i, 10 * i + 10)).to_parquet(files[-1])
    cut = set(shapes_pairs_ds.select(range(10, 20))["caption"])
    cast_table = Parquet._cast_table

    def drop_the_last_rows_of_file_1(self, table):  # a reader that stops early without an error
        table = cast_table(self, table)
        return table.slice(0, 6) if table["caption"][0].as_py() in cut else table

    monkeypatch.setattr(Parquet, "_cast_table", drop_the_last_rows_of_file_1)
    counting = Counting(config.clip_model)
    settings = dict(
        clip_model=counting, num_pairs=3, use_cache=True, cache_dir=str(tmp_path / "cache"), encode_workers=0
    )
    stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
    with pytest.raises(
        ShardReadError,
        match=r"Input shard 1 \(of 3\).*ended after 6 row\(s\), but its source "
        r"holds 10.*run the same call again",
    ):
        DistillProcessor(config, **settings)(stream)
    monkeypatch.setattr(Parquet, "_cast_table", cast_table)
    first = counting.images
    small = DistillProcessor(config, **settings)(stream)
    assert counting.images - first == 10  # shards 1 and 2 (5 distinct images each): shard 0 was kept
    assert pds_hf.metadata(small)["source"]["num_rows"] == 30


def test_a_stream_without_identity_is_not_cached(shapes_ds, config, tmp_path):
    class Opaque:
        def __reduce__(self):
            raise TypeError("cannot pickle")

    opaque = Opaque()
    stream = shapes_ds.to_iterable_dataset(num_shards=2)
    stream = stream.map(lambda row: row if opaque else None, features=stream.features)
    assert stream_fingerprint(stream) is None
    small = DistillProcessor(config, use_cache=True, cache_dir=str(tmp_path))(stream)
    assert len(small) == 6 and pds_hf.metadata(small)["source"]["fingerprint"] is None
    assert not any(path.name.startswith("stream-") for path in tmp_path.iterdir())


def test_the_fingerprint_follows_the_stream(shapes_ds):
    stream = shapes_ds.to_iterable_dataset(num_shards=3)
    assert stream_fingerprint(stream) == stream_fingerprint(shapes_ds.to_iterable_dataset(num_shards=3))
    assert stream_fingerprint(stream) != stream_fingerprint(shapes_ds.select(range(59)).to_iterable_dataset(3))
    upper = stream.map(lambda row: {"caption": [c.upper() for c in row["caption"]]})
    assert stream_fingerprint(upper) != stream_fingerprint(stream)
    from datasets.distributed import split_dataset_by_node

    assert stream_fingerprint(split_dataset_by_node(stream, rank=1, world_size=3)) != stream_fingerprint(stream)


def test_progress_counts_items_per_second_without_a_total(shapes_ds, config, caplog, monkeypatch):
    from pds_hf import progress

    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "_on_terminal", lambda: False)
    monkeypatch.setattr(progress, "_switched_off", lambda: False)
    with caplog.at_level(logging.INFO, logger="pds_hf.progress"):
        DistillProcessor(config, synthesis="none")(shapes_ds.to_iterable_dataset(num_shards=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Encoding the stream")]
    assert lines and lines[-1].startswith("Encoding the stream: 60 (") and "rows/s" in lines[-1]


def test_a_full_disk_names_the_stage_and_the_space(shapes_ds, config, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(
        OSError,
        match=r"writing shard-000000-image-000000\.npz of stage 'stream-[0-9a-f]+'.*needed about \d+ "
        r"bytes and \d+ bytes are free.*cache_dir",
    ) as caught:
        DistillProcessor(config, use_cache=True, cache_dir=str(tmp_path))(shapes_ds.to_iterable_dataset(num_shards=2))
    assert caught.value.errno == errno.ENOSPC


def test_decode_workers_feed_the_stream(shapes_pairs_ds, config, tmp_path, monkeypatch):
    import pds_hf.encode

    # One row per pair (images repeat), with two rows whose image does not decode.
    rows = shapes_pairs_ds.select(range(40)).cast_column("image", Image(decode=False)).to_dict()
    rows["image"][7:7] = [{"bytes": b"not an image", "path": None}]
    rows["caption"][7:7] = ["an unreadable picture"]
    rows["image"][25:25] = [{"bytes": rows["image"][3]["bytes"][:-30], "path": None}]  # cut short
    rows["caption"][25:25] = ["a picture cut short"]
    ds = Dataset.from_dict(rows, features=Features({"image": Image(), "caption": Value("string")}))
    settings = dict(num_pairs=4, encode_batch_size=4, rm_ratio=0.0)
    reference = DistillProcessor(config, encode_workers=0, **settings)(ds)

    decoders = tmp_path / "decoders"
    original = pds_hf.encode._prepare

    def prepare(stored, preprocess):  # the encode pass's decoding (the fetch pass decodes its picks in this process)
        with open(decoders, "a") as log:  # forked workers inherit this patch and append their own pid
            log.write(f"{os.getpid()}\n")
        return original(stored, preprocess)

    monkeypatch.setattr(pds_hf.encode, "_prepare", prepare)
    for workers in (0, 1, 2):
        decoders.write_text("")
        streamed = DistillProcessor(config, encode_workers=workers, **settings)(ds.to_iterable_dataset(num_shards=2))
        assert_same_set(streamed, reference)
        source = pds_hf.metadata(streamed)["source"]
        assert (source["skipped_images"], source["num_images"]) == (2, 20)
        pids = set(decoders.read_text().split())
        if workers:  # decoded in the workers only
            assert str(os.getpid()) not in pids and 1 <= len(pids) <= workers
        else:
            assert pids == {str(os.getpid())}


def test_bad_rows_of_a_stream_are_named_by_shard_and_row(config):
    rows = {
        "image": [{"bytes": png_bytes((i, 0, 0)), "path": None} for i in range(6)],
        "caption": ["a", "b", "c", "d", "", "f"],
    }
    features = Features({"image": Image(), "caption": Value("string")})
    stream = Dataset.from_dict(rows, features=features).to_iterable_dataset(num_shards=2)
    with pytest.raises(ValueError, match=r"Column 'caption' has 1 bad caption\(s\): input shard 1, row 1 is empty"):
        DistillProcessor(config, num_pairs=2)(stream)
    rows["caption"][4] = "e"
    rows["image"][4] = {"bytes": b"not an image", "path": None}
    stream = Dataset.from_dict(rows, features=features).to_iterable_dataset(num_shards=2)
    with pytest.raises(ValueError, match=r"Input shard 1 of the stream: .* undecodable image\(s\), at row\(s\) \[1\]"):
        DistillProcessor(config, num_pairs=2, on_bad_image="error")(stream)
    small = DistillProcessor(config, num_pairs=2, rm_ratio=0.0)(stream)
    assert pds_hf.metadata(small)["source"]["skipped_images"] == 1
    assert pds_hf.metadata(small)["source"]["num_images"] == 5


class Poisoned:
    """An encoder that returns NaN for one caption and for pure-blue images, as an fp16 overflow would."""

    def __init__(self, inner):
        self.inner, self.name, self.fingerprint = inner, "poisoned", None

    def encode_images(self, images):
        out = self.inner.encode_images(images)
        out[[np.asarray(image)[0, 0].tolist() == [0, 0, 255] for image in images]] = np.nan
        return out

    def encode_texts(self, texts):
        out = self.inner.encode_texts(texts)
        out[[text == "poison" for text in texts]] = np.nan
        return out


@pytest.mark.parametrize("what", ["image", "text"])
def test_nan_embeddings_name_the_row_of_the_dataset_or_of_the_shard(what, config):
    rows = {
        "image": [{"bytes": png_bytes((i, 0, 0)), "path": None} for i in range(10)],
        "caption": [f"caption {i}" for i in range(10)],
    }
    if what == "image":
        rows["image"][8] = {"bytes": png_bytes((0, 0, 255)), "path": None}
    else:
        rows["caption"][8] = "poison"
    ds = Dataset.from_dict(rows, features=Features({"image": Image(), "caption": Value("string")}))
    processor = DistillProcessor(config, clip_model=Poisoned(config.clip_model), num_pairs=2, encode_batch_size=3)
    with pytest.raises(
        ValueError,
        match=rf"NaN or inf {what} embeddings for 1 input\(s\), first at dataset "
        r"row\(s\) \[8\]",
    ):
        processor(ds)
    # Shards of 5 rows: row 8 is row 3 of input shard 1.
    with pytest.raises(
        ValueError,
        match=rf"NaN or inf {what} embeddings for 1 input\(s\), first at input shard 1 "
        r"row\(s\) \[3\]",
    ):
        processor(ds.to_iterable_dataset(num_shards=2))


def test_a_dict_of_streams_says_to_pick_a_split(shapes_ds):
    streams = IterableDatasetDict({"train": shapes_ds.to_iterable_dataset()})
    with pytest.raises(TypeError, match=r"IterableDatasetDict with splits \['train'\].*streaming=True"):
        pds_hf.distill(streams, num_pairs=2)


_TWO_PROCESS_SCRIPT = """
import hashlib, json, logging, sys
import numpy as np
import pds_hf
from pds_hf.demo import demo_dataset
from pds_hf.distributed import current_ranks
from pds_hf.testing import tiny_clip_encoder

logging.basicConfig(level=logging.WARNING)
logging.getLogger("pds_hf.stream").setLevel(logging.INFO)
encoder = tiny_clip_encoder(seed=0)
encoded = []
inner = encoder.encode_pixels  # the image batches, preprocessed by the decode workers
encoder.encode_pixels = lambda pixels: (encoded.append(len(pixels)), inner(pixels))[1]
config = pds_hf.DistillConfig(num_pairs=6, clip_model=encoder, synthesis="retrieve", image_size=32, device="cpu",
                              cache_dir=sys.argv[1])
stream = demo_dataset(60, side=32).to_iterable_dataset(num_shards=int(sys.argv[2]))
small = pds_hf.DistillProcessor(config)(stream)
print("RESULT", json.dumps({"rank": current_ranks().rank, "encoded": sum(encoded), "caption": list(small["caption"]),
                            "pixels": [hashlib.sha1(np.asarray(i).tobytes()).hexdigest() for i in small["image"]]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("num_shards, encoded", [(3, (40, 20)), (1, (30, 30))])
def test_two_processes_split_the_shards_and_agree(num_shards, encoded, shapes_ds, config, map_style, tmp_path):
    script = [sys.executable, "-c", textwrap.dedent(_TWO_PROCESS_SCRIPT), str(tmp_path), str(num_shards)]
    outputs = run_local_group(script, 2, timeout=300, OMP_NUM_THREADS="1")
    results, loaded = {}, {}
    for output in outputs:
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert lines, output[-3000:]
        result = json.loads(lines[0][len("RESULT ") :])
        results[result["rank"]] = result
        loaded[result["rank"]] = "Loading the embeddings of" in output
    assert loaded == {0: True, 1: False}  # only the main process loads what clustering needs
    # 3 shards of 20 images: rank 0 encodes shards 0 and 2, rank 1 shard 1. One shard: each takes every other row.
    assert (results[0]["encoded"], results[1]["encoded"]) == encoded
    reference = map_style("image")
    assert results[0]["caption"] == results[1]["caption"] == list(reference["caption"])
    expected = [hashlib.sha1(np.asarray(i).tobytes()).hexdigest() for i in reference["image"]]
    assert results[0]["pixels"] == results[1]["pixels"] == expected
