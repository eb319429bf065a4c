"""Embedding columns read a block of rows at a time into the embedding store (issue 11): same values as reading
them whole, memory maps on a disk cache, reopened by a rerun, errors naming the column and row in any block."""

import logging

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, Features, Image, List, Value

import pds_hf.inputs as inputs
import pds_hf.processor
from pds_hf import DistillConfig, DistillProcessor
from pds_hf.cache import MemoryStage, Stage, StageTimer
from pds_hf.distributed import Ranks
from pds_hf.inputs import embeddings_from_columns, read_pairs
from pds_hf.sources import MappedSource

DIM = 8


def _pair_layout(rng, n=40):
    """One row per pair: 25 distinct images (rows 25+ repeat rows 0-14) and 30 distinct captions (rows 30+ repeat
    rows 0-9); every row has vectors of its own, so taking another occurrence than the first shows."""
    return Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes((i % 25 * 9, 40, 90)), "path": None} for i in range(n)],
            "caption": [f"caption {i % 30}" for i in range(n)],
            "image_embedding": rng.normal(size=(n, DIM)).astype(np.float32).tolist(),
            "text_embedding": rng.normal(size=(n, DIM)).astype(np.float32).tolist(),
        },
        features=Features(
            {
                "image": Image(),
                "caption": Value("string"),
                "image_embedding": List(Value("float32")),
                "text_embedding": List(Value("float32")),
            }
        ),
    )


def _image_layout(rng, n=30):
    """One row per image with 1 to 3 captions, repeated across and within rows, one vector per caption; row 4's
    image is null (skipped), so the image rows are not every row."""
    captions = [[f"caption {(i * 3 + j) % 41}" for j in range(1 + i % 3)] for i in range(n)]
    captions[6] = ["caption 2", "caption 2"]
    return Dataset.from_dict(
        {
            "image": [None if i == 4 else {"bytes": png_bytes((i * 7, 20, 30)), "path": None} for i in range(n)],
            "caption": captions,
            "image_embedding": rng.normal(size=(n, DIM)).astype(np.float32).tolist(),
            "text_embedding": [rng.normal(size=(len(row), DIM)).astype(np.float32).tolist() for row in captions],
        },
        features=Features(
            {
                "image": Image(),
                "caption": List(Value("string")),
                "image_embedding": List(Value("float32")),
                "text_embedding": List(List(Value("float32"))),
            }
        ),
    )


def _reference(ds, table):
    """The columns read whole, as before issue 11: each distinct image's row, each caption's first occurrence."""
    images = np.asarray(ds["image_embedding"], dtype=np.float32)[table.image_rows]
    if table.layout == "image":
        captions = [caption for row in ds["caption"] for caption in row]
        vectors = np.concatenate([np.asarray(row, dtype=np.float32) for row in ds["text_embedding"]])
    else:
        captions, vectors = ds["caption"], np.asarray(ds["text_embedding"], dtype=np.float32)
    first = {}
    for position, caption in enumerate(captions):
        first.setdefault(caption, position)
    return images, vectors[[first[text] for text in table.texts]]


def _read(ds, **kwargs):
    table = read_pairs(ds)
    return table, embeddings_from_columns(ds, table, "image_embedding", "text_embedding", "caption", **kwargs)


def _count_blocks(monkeypatch):
    seen = []
    reader = inputs._embedding_blocks

    def counting(*args):
        for start, block in reader(*args):
            seen.append((start, block.num_rows))
            yield start, block

    monkeypatch.setattr(inputs, "_embedding_blocks", counting)
    return seen


def _refuse_blocks(monkeypatch):
    def refuse(*args):
        raise AssertionError("the embedding columns were read in bulk")

    monkeypatch.setattr(inputs, "_embedding_blocks", refuse)


@pytest.mark.parametrize("layout", ["pair", "image", "shuffled", "fixed-size"])
@pytest.mark.parametrize("block_rows", [None, 7])
def test_blocks_equal_the_columns_read_whole(layout, block_rows, rng, monkeypatch):
    ds = _image_layout(rng) if layout in ("image", "fixed-size") else _pair_layout(rng)
    if layout == "shuffled":  # an indices mapping: each block is gathered, not sliced
        ds = ds.shuffle(seed=3)
    if layout == "fixed-size":  # Arrow fixed-size lists (List(..., length=d))
        ds = ds.cast(
            Features(
                {
                    **ds.features,
                    "image_embedding": List(Value("float32"), length=DIM),
                    "text_embedding": List(List(Value("float32"), length=DIM)),
                }
            )
        )
    if block_rows:
        monkeypatch.setattr(inputs, "EMBEDDING_BLOCK_ROWS", block_rows)
    blocks = _count_blocks(monkeypatch)
    table, (image_embeds, text_embeds) = _read(ds)

    want_images, want_texts = _reference(ds, table)
    assert image_embeds.dtype == text_embeds.dtype == np.float32
    np.testing.assert_array_equal(image_embeds, want_images)
    np.testing.assert_array_equal(text_embeds, want_texts)
    assert len(table.image_rows) < len(ds) and len(table.texts) < table.num_pairs  # repeats (or a null) were there
    assert [start for start, _ in blocks] == list(range(0, len(ds), block_rows or inputs.EMBEDDING_BLOCK_ROWS))
    assert sum(rows for _, rows in blocks) == len(ds)


def test_float16_store(rng):
    ds = _image_layout(rng)
    table, (image_embeds, text_embeds) = _read(ds, dtype="float16")
    want_images, want_texts = _reference(ds, table)
    assert image_embeds.dtype == text_embeds.dtype == np.float16
    np.testing.assert_array_equal(image_embeds, want_images.astype(np.float16))
    np.testing.assert_array_equal(text_embeds, want_texts.astype(np.float16))


def test_a_disk_stage_holds_memory_maps_that_a_rerun_reopens(rng, tmp_path, monkeypatch, caplog):
    ds = _pair_layout(rng)
    table, (image_embeds, text_embeds) = _read(ds, stage=Stage(tmp_path / "s"))
    assert isinstance(image_embeds, np.memmap) and isinstance(text_embeds, np.memmap)
    _refuse_blocks(monkeypatch)
    with caplog.at_level(logging.INFO, logger="pds_hf.inputs"):
        _, (again_images, again_texts) = _read(ds, stage=Stage(tmp_path / "s"))
    assert "Opening the stored embeddings" in caplog.text
    want_images, want_texts = _reference(ds, table)
    np.testing.assert_array_equal(again_images, want_images)
    np.testing.assert_array_equal(again_texts, want_texts)


def test_the_processor_selects_from_the_store_and_a_rerun_reads_no_column(rng, tmp_path, monkeypatch, caplog):
    ds = _pair_layout(rng)
    given = []
    select = pds_hf.processor.select

    def recording(config, table, image_embeds, text_embeds, **kwargs):
        given.append((config.embedding_dtype, image_embeds, text_embeds))
        return select(config, table, image_embeds, text_embeds, **kwargs)

    def run(dtype):
        return DistillProcessor(
            DistillConfig(
                num_pairs=3,
                rm_ratio=0.0,
                synthesis="none",
                device="cpu",
                use_cache=True,
                cache_dir=str(tmp_path),
                embedding_dtype=dtype,
                clip_model="nobody/no-such-clip",
            )
        )(ds)

    monkeypatch.setattr(pds_hf.processor, "select", recording)
    first = {dtype: run(dtype) for dtype in ("float32", "float16")}
    # One stage (the dtype is not part of its key), one store per dtype in it.
    assert len(list(tmp_path.glob("embeddings-*"))) == 1
    assert len(list(tmp_path.glob("embeddings-*/image_embeds*.npy"))) == 2
    _refuse_blocks(monkeypatch)
    with caplog.at_level(logging.INFO, logger="pds_hf.inputs"):
        second = {dtype: run(dtype) for dtype in ("float32", "float16")}
    assert caplog.text.count("Opening the stored embeddings") == 2
    assert all(first[dtype]["caption"] == second[dtype]["caption"] for dtype in first)
    want_images, want_texts = _reference(ds, read_pairs(ds))
    assert len(given) == 4
    for dtype, image_embeds, text_embeds in given:
        assert isinstance(image_embeds, np.memmap) and isinstance(text_embeds, np.memmap)
        assert image_embeds.dtype == text_embeds.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(image_embeds, want_images.astype(dtype))
        np.testing.assert_array_equal(text_embeds, want_texts.astype(dtype))


def test_only_the_main_process_reads_the_columns(rng, tmp_path, monkeypatch):
    ds = _pair_layout(rng)
    processor = DistillProcessor(DistillConfig(num_pairs=3, synthesis="none", use_cache=True, cache_dir=str(tmp_path)))
    source = MappedSource(ds, processor.config)
    source.read()
    _refuse_blocks(monkeypatch)
    second = dict(timer=StageTimer(), ranks=Ranks(rank=1, world=2))
    embedded = source.embeddings(processor.load_encoder, cache_dir=processor.cache_dir(), **second)
    assert embedded.image_embeds is None and embedded.text_embeds is None
    with pytest.raises(ValueError, match="over 2 processes .* needs use_cache=True"):
        source.embeddings(processor.load_encoder, cache_dir=None, **second)


def _with_row(ds, row, column, value):
    return ds.map(lambda item, i: {column: value} if i == row else {}, with_indices=True)


@pytest.mark.parametrize(
    "bad, message",
    [
        (("text_embedding", [float("nan")] * DIM), r"'text_embedding' holds NaN or inf at row\(s\) \[23\]"),
        (("image_embedding", [1.0] * (DIM - 1)), r"'image_embedding' mixes vector sizes: 7 at row 23 but 8 at row 0"),
        (("text_embedding", [1.0] * (DIM + 1)), r"'text_embedding' mixes vector sizes: 9 at row 23 but 8 at row 0"),
        (("image_embedding", None), r"'image_embedding' is empty \(null\) at row 23"),
        (("text_embedding", []), r"'text_embedding' holds an empty vector at row 23"),
    ],
)
def test_a_bad_value_in_a_later_block_names_the_column_and_row(bad, message, rng, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "EMBEDDING_BLOCK_ROWS", 7)
    ds = _with_row(_pair_layout(rng), 23, *bad)
    with pytest.raises(ValueError, match=message):
        _read(ds, stage=Stage(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing half-written is left to be reopened


def test_a_bad_caption_list_in_a_later_block_names_the_row(rng, monkeypatch):
    monkeypatch.setattr(inputs, "EMBEDDING_BLOCK_ROWS", 7)
    ds = _image_layout(rng)
    short = _with_row(ds, 20, "text_embedding", ds[20]["text_embedding"][:1])
    with pytest.raises(ValueError, match=r"'text_embedding' has 1 vector\(s\) at row 20 but the row has 3 caption"):
        _read(short)
    nan = [list(vector) for vector in ds[26]["text_embedding"]]
    nan[1][0] = float("nan")
    with pytest.raises(ValueError, match=r"'text_embedding' holds NaN or inf at row\(s\) \[26\]"):
        _read(_with_row(ds, 26, "text_embedding", nan))


def test_different_sizes_fail_before_any_bulk_read(rng, monkeypatch):
    ds = _pair_layout(rng)
    wide = ds.remove_columns("text_embedding").add_column(
        "text_embedding", rng.normal(size=(len(ds), DIM * 2)).astype(np.float32).tolist()
    )
    _refuse_blocks(monkeypatch)
    with pytest.raises(ValueError, match="'image_embedding' holds 8-d vectors but 'text_embedding' holds 16-d"):
        _read(wide)
    table = read_pairs(ds)
    assert embeddings_from_columns(ds, table, "image_embedding", "text_embedding", "caption", load=False) == (
        None,
        None,
    )


def test_a_table_of_another_dataset_is_refused(rng):
    ds = _pair_layout(rng)
    other = read_pairs(ds.map(lambda item: {"caption": item["caption"] + "!"}))
    with pytest.raises(ValueError, match=r"30 caption\(s\) of the table are not in column 'caption'"):
        embeddings_from_columns(ds, other, "image_embedding", "text_embedding", "caption", stage=MemoryStage())
