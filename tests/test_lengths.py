"""expected_rows: the rows each unit of a stream must yield, from the source's metadata, equal to what it yields."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes
from datasets import (
    Dataset,
    Features,
    Image,
    IterableDataset,
    Value,
    concatenate_datasets,
    interleave_datasets,
    load_dataset,
)
from datasets.distributed import split_dataset_by_node
from datasets.packaged_modules.parquet.parquet import Parquet

from pds_hf.lengths import expected_rows

FILE_ROWS = [5, 7, 3]


def units(ds):
    """The units of work the stream is cut into: one per input shard."""
    return [ds.shard(num_shards=ds.n_shards, index=u) for u in range(ds.n_shards)]


def read(unit) -> int:
    return sum(1 for _ in unit)


def assert_exact(ds, want):
    """Every unit's expected rows are ``want`` and equal the rows it yields."""
    parts = units(ds)
    assert [expected_rows(unit) for unit in parts] == want
    assert [read(unit) for unit in parts] == want


@pytest.fixture
def parquet_files(tmp_path):
    """Three parquet files of 5, 7 and 3 rows, in row groups of 2 rows."""
    paths = []
    for i, n in enumerate(FILE_ROWS):
        path = tmp_path / f"part-{i}.parquet"
        table = pa.table({"caption": [f"caption {i}-{j}" for j in range(n)], "x": list(range(n))})
        pq.write_table(table, path, row_group_size=2)
        paths.append(str(path))
    return paths


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """Shards read in turn (a shuffle) from parquet wait 5 s after their reader threads; these files are tiny."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture
def parquet_stream(parquet_files):
    return load_dataset("parquet", data_files=parquet_files, split="train", streaming=True)


@pytest.fixture
def memory_stream():
    return Dataset.from_dict(
        {"caption": [f"caption {i}" for i in range(10)], "x": list(range(10))}
    ).to_iterable_dataset(num_shards=3)


def test_in_memory_shards(memory_stream):
    assert_exact(memory_stream, [4, 3, 3])
    assert expected_rows(memory_stream) == 10


def test_parquet_files_count_from_footers(parquet_stream):
    assert parquet_stream.n_shards == 3
    assert_exact(parquet_stream, FILE_ROWS)
    # IterableDataset.from_parquet and a column subset read the same footers.
    assert expected_rows(IterableDataset.from_parquet(parquet_stream._ex_iterable.kwargs["files"][1])) == 7


def test_parquet_row_groups_after_reshard(parquet_stream):
    resharded = parquet_stream.reshard()
    assert resharded.n_shards == 9  # one unit per row group of 2 rows
    assert_exact(resharded, [2, 2, 1, 2, 2, 2, 1, 2, 1])


def test_parquet_columns_keep_the_count(parquet_files):
    ds = load_dataset("parquet", data_files=parquet_files, split="train", streaming=True, columns=["x"])
    assert_exact(ds, FILE_ROWS)


ROW_KEEPING_STEPS = {
    "select_columns": lambda ds: ds.select_columns(["caption"]),
    "rename_column": lambda ds: ds.rename_column("caption", "text"),
    "remove_columns": lambda ds: ds.remove_columns("x"),
    "cast_column": lambda ds: ds.cast_column("x", Value("float64")),
    "map": lambda ds: ds.map(lambda row: {"y": row["x"] + 1}),
    "arrow_format": lambda ds: ds.with_format("arrow"),
    "torch_format_then_map": lambda ds: ds.with_format("torch").map(lambda row: {"y": row["x"] * 2}),
    "shuffle": lambda ds: ds.shuffle(seed=0, buffer_size=4),
    "shuffle_after_epoch": lambda ds: _with_epoch(ds.shuffle(seed=0, buffer_size=4), 3),
}


def _with_epoch(ds, epoch):
    ds.set_epoch(epoch)
    return ds


@pytest.mark.parametrize("step", list(ROW_KEEPING_STEPS))
@pytest.mark.parametrize("source", ["parquet_stream", "memory_stream"])
def test_steps_that_keep_every_row(step, source, request):
    ds = ROW_KEEPING_STEPS[step](request.getfixturevalue(source))
    parts = units(ds)
    counts = [expected_rows(unit) for unit in parts]
    assert counts == [read(unit) for unit in parts]
    # A shuffle reorders the shards, so only the counts as a whole are compared to the source's.
    assert sorted(counts) == sorted(FILE_ROWS if source == "parquet_stream" else [4, 3, 3])


def test_steps_that_change_the_count_in_a_known_way(parquet_stream):
    # take/skip are split over the shards (datasets' TakeExamplesIterable.shard_data_sources): 4 = 2 + 1 + 1.
    assert_exact(parquet_stream.take(4), [2, 1, 1])
    assert_exact(parquet_stream.skip(4), [3, 6, 2])
    assert_exact(parquet_stream.take(100), FILE_ROWS)
    assert_exact(parquet_stream.repeat(2), [10, 14, 6])
    assert_exact(concatenate_datasets([parquet_stream, parquet_stream]), FILE_ROWS * 2)


@pytest.mark.parametrize("strategy, world", [("examples", 4), ("examples", 2), ("shards", 3), ("auto", 3)])
def test_split_by_node(parquet_stream, strategy, world):
    parts = [split_dataset_by_node(parquet_stream, rank=r, world_size=world, strategy=strategy) for r in range(world)]
    counts = [expected_rows(part) for part in parts]
    assert counts == [read(part) for part in parts]
    assert sum(counts) == sum(FILE_ROWS)


def test_split_by_node_after_an_epoch_follows_the_shuffled_shards(parquet_stream):
    shuffled = parquet_stream.shuffle(seed=1, buffer_size=2)
    parts = [split_dataset_by_node(shuffled, rank=r, world_size=3, strategy="shards") for r in range(3)]
    for epoch in (0, 1, 2):
        for part in parts:
            part.set_epoch(epoch)
        assert [expected_rows(part) for part in parts] == [read(part) for part in parts]


UNKNOWABLE = {
    "filter": lambda ds: ds.filter(lambda row: row["x"] % 2 == 0),
    "batched_map": lambda ds: ds.map(
        lambda batch: {"caption": batch["caption"][:1], "x": batch["x"][:1]}, batched=True, batch_size=2
    ),
    "map_under_arrow_format": lambda ds: ds.with_format("arrow").map(lambda table: table.slice(0, 0)),
    "batch": lambda ds: ds.batch(batch_size=2),
    "interleave": lambda ds: interleave_datasets([ds, ds.skip(1)]),
    "repeat_forever": lambda ds: ds.repeat(None),
}


@pytest.mark.parametrize("step", list(UNKNOWABLE))
def test_steps_whose_count_is_only_known_by_reading(parquet_stream, step):
    ds = UNKNOWABLE[step](parquet_stream)
    assert [expected_rows(unit) for unit in units(ds)] == [None] * ds.n_shards


def test_generators_json_and_other_objects_are_unknown(tmp_path):
    def rows(n):
        yield from ({"caption": str(i)} for i in range(n))

    generated = IterableDataset.from_generator(rows, gen_kwargs={"n": 5})
    assert expected_rows(generated) is None
    assert expected_rows(generated.take(2)) is None
    assert expected_rows(generated.select_columns(["caption"])) is None

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"caption": str(i)}) + "\n" for i in range(5)))
    assert expected_rows(load_dataset("json", data_files=str(path), split="train", streaming=True)) is None

    assert expected_rows(Dataset.from_dict({"caption": ["a"]})) is None
    assert expected_rows(None) is None


def test_parquet_filters_and_skipped_bad_files_are_unknown(parquet_files):
    filtered = load_dataset("parquet", data_files=parquet_files, split="train", streaming=True, filters=[("x", ">", 1)])
    assert expected_rows(filtered) is None
    lenient = load_dataset("parquet", data_files=parquet_files, split="train", streaming=True, on_bad_files="skip")
    assert expected_rows(lenient) is None


def test_a_resumed_stream_is_unknown(memory_stream):
    unit = units(memory_stream)[0]
    for i, _ in enumerate(unit):
        if i == 1:
            state = unit.state_dict()
            break
    unit.load_state_dict(state)
    assert expected_rows(unit) is None
    assert read(unit) == 2


def test_arrow_files_count_from_batch_headers(tmp_path):
    schema = pa.schema([("caption", pa.string())])
    sizes = {"stream.arrow": [3, 1], "file.arrow": [2, 2, 4]}
    for name, batches in sizes.items():
        with pa.OSFile(str(tmp_path / name), "wb") as sink:
            writer = pa.ipc.new_stream if name == "stream.arrow" else pa.ipc.new_file
            with writer(sink, schema) as out:
                for n in batches:
                    out.write_batch(pa.record_batch({"caption": [str(i) for i in range(n)]}, schema=schema))
    files = [str(tmp_path / name) for name in sizes]
    assert_exact(load_dataset("arrow", data_files=files, split="train", streaming=True), [4, 8])
    assert_exact(IterableDataset.from_file(files[0]), [4])


def test_a_stream_cut_short_yields_fewer_rows_than_expected(parquet_stream, monkeypatch):
    """The count comes from the footers: a reader that silently drops rows shows as actual < expected."""
    parts = units(parquet_stream)
    cast_table = Parquet._cast_table

    def drop_last_row_group(self, table):
        table = cast_table(self, table)
        return table.slice(0, 0) if table["x"][0].as_py() == 6 else table

    monkeypatch.setattr(Parquet, "_cast_table", drop_last_row_group)
    assert [expected_rows(unit) for unit in parts] == FILE_ROWS
    assert [read(unit) for unit in parts] == [5, 6, 3]


def test_a_hub_parquet_dataset_counts_from_remote_footers(hub):
    images = [{"bytes": png_bytes((20 * i, 0, 0)), "path": None} for i in range(11)]
    data = Dataset.from_dict(
        {"image": images, "caption": [f"caption {i}" for i in range(11)]},
        features=Features({"image": Image(), "caption": Value("string")}),
    )
    data.push_to_hub("tester/lengths", token=hub.token, num_shards=3)
    stream = load_dataset("tester/lengths", split="train", streaming=True)
    assert stream.n_shards == 3
    assert all(str(file).startswith("hf://") for file in stream._ex_iterable.kwargs["files"])
    assert_exact(stream, [4, 4, 3])
    # Images decoded in threads (what image folders on the Hub get): a map that gives one row per row.
    assert_exact(stream.decode(num_threads=2), [4, 4, 3])
