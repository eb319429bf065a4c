"""Reading datasets into pairs: both layouts, deduplication, and every bad input named clearly."""

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, DatasetDict, Features, Image, List, Value

from pds_hf.inputs import read_pairs

RED, BLUE = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))


def _stored(blob):
    return None if blob is None else {"bytes": blob, "path": None}


def _pairs(images, captions):
    return Dataset.from_dict(
        {"image": [_stored(b) for b in images], "caption": captions},
        features=Features({"image": Image(), "caption": Value("string")}),
    )


def _per_image(images, captions):
    return Dataset.from_dict(
        {"image": [_stored(b) for b in images], "caption": captions},
        features=Features({"image": Image(), "caption": List(Value("string"))}),
    )


def test_pair_layout_dedupes_images_by_bytes():
    table = read_pairs(_pairs([RED, BLUE, RED], ["a red one", "a blue one", "also red"]))
    assert table.layout == "pair"
    assert table.image_rows.tolist() == [0, 1]
    assert table.pair_image.tolist() == [0, 1, 0]
    assert table.texts == ["a red one", "a blue one", "also red"]
    assert table.pair_rows.tolist() == [0, 1, 2]


def test_image_layout_makes_one_pair_per_caption_and_dedupes_texts():
    table = read_pairs(_per_image([RED, BLUE], [["red", "a square"], ["blue", "a square", "cobalt"]]))
    assert table.layout == "image"
    assert table.num_pairs == 5
    assert table.pair_image.tolist() == [0, 0, 1, 1, 1]
    assert table.texts == ["red", "a square", "blue", "cobalt"]
    assert table.pair_text.tolist() == [0, 1, 2, 1, 3]
    assert table.pair_rows.tolist() == [0, 0, 1, 1, 1]


def test_custom_column_names():
    ds = _pairs([RED, BLUE], ["x", "y"]).rename_columns({"image": "jpg", "caption": "txt"})
    assert read_pairs(ds, image_column="jpg", caption_column="txt").num_pairs == 2


def test_missing_column_names_the_columns_and_the_option():
    ds = _pairs([RED], ["x"]).rename_column("caption", "text")
    with pytest.raises(KeyError, match=r"no caption column 'caption'.*\['image', 'text'\].*caption_column="):
        read_pairs(ds)
    with pytest.raises(KeyError, match="image_column="):
        read_pairs(ds, image_column="img", caption_column="text")


def test_column_without_images():
    ds = Dataset.from_dict({"image": ["a.png"], "caption": ["x"]})
    with pytest.raises(TypeError, match=r"Column 'image' holds .*not images.*cast_column"):
        read_pairs(ds)


def test_caption_column_of_wrong_type():
    ds = Dataset.from_dict(
        {"image": [{"bytes": RED, "path": None}], "caption": [3]},
        features=Features({"image": Image(), "caption": Value("int64")}),
    )
    with pytest.raises(TypeError, match="Column 'caption' has feature"):
        read_pairs(ds)


@pytest.mark.parametrize(
    "captions,where",
    [
        (["fine", "  ", "ok"], r"row 1 is empty"),
        (["fine", None, "ok"], r"row 1 is NoneType"),
    ],
)
def test_bad_captions_name_the_row(captions, where):
    with pytest.raises(ValueError, match=rf"Column 'caption' has 1 bad caption\(s\): {where}.*ds.filter"):
        read_pairs(_pairs([RED, BLUE, RED], captions))


def test_bad_caption_inside_a_list_names_row_and_position():
    with pytest.raises(ValueError, match=r"row 1, caption 2 is empty.*row 2 has an empty caption list"):
        read_pairs(_per_image([RED, BLUE, RED], [["a"], ["b", "c", ""], []]))


def test_dataset_dict_and_iterable_are_refused_with_the_fix():
    ds = _pairs([RED], ["x"])
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train', 'test'\].*ds\['train'\]"):
        read_pairs(DatasetDict(train=ds, test=ds))
    with pytest.raises(TypeError, match="IterableDataset.*streaming=True.*from_generator"):
        read_pairs(ds.to_iterable_dataset())
    with pytest.raises(TypeError, match="Expected a datasets.Dataset"):
        read_pairs({"image": [], "caption": []})


def test_empty_dataset():
    with pytest.raises(ValueError, match="no rows"):
        read_pairs(_pairs([], []))


def test_reading_decodes_nothing_and_skips_only_null_images(caplog):
    # Reading compares stored bytes only; whether an image decodes is learnt once, when it is encoded
    # (tests/test_feed.py). A null image is known without decoding.
    ds = _pairs([RED, b"not an image", None, BLUE, b"not an image", None], ["a", "b", "c", "d", "e", "f"])
    with caplog.at_level("WARNING"):
        table = read_pairs(ds)
    assert "Skipping 2 empty (null) image(s)" in caplog.text and "[2, 5]" in caplog.text
    assert table.image_rows.tolist() == [0, 1, 3]
    assert table.pair_image.tolist() == [0, 1, 2, 1] and table.pair_rows.tolist() == [0, 1, 3, 4]
    assert table.skipped_images == [2, 5]
    with pytest.raises(ValueError, match=r"2 empty \(null\) or undecodable image\(s\), at row\(s\) \[2, 5\]"):
        read_pairs(ds, on_bad_image="error")
    per_image = read_pairs(_per_image([RED, None, RED], [["a"], ["b"], ["c", "d"]]))
    assert per_image.image_rows.tolist() == [0, 2] and per_image.pair_image.tolist() == [0, 1, 1]


def test_pair_layout_dedupe_hashes_only_equal_lengths():
    # Same length, different bytes: two images; a repeat of either, anywhere, is the same image.
    other_red = bytearray(RED)
    other_red[-20] ^= 1
    table = read_pairs(_pairs([RED, bytes(other_red), BLUE + b"\0" * 9, RED, bytes(other_red)], list("abcde")))
    assert table.image_rows.tolist() == [0, 1, 2]
    assert table.pair_image.tolist() == [0, 1, 2, 0, 1]


def test_without_images_renumbers():
    table = read_pairs(_per_image([RED, BLUE, RED], [["a"], ["b", "c"], ["d"]]))
    smaller = table.without_images(np.array([1]))
    assert smaller.image_rows.tolist() == [0, 2]
    assert smaller.pair_image.tolist() == [0, 1]
    assert smaller.pair_rows.tolist() == [0, 2]
    assert smaller.skipped_images == [1]
    # In the pair layout an image fills many rows: each row of a dropped image is listed.
    repeated = read_pairs(_pairs([RED, BLUE, RED], ["a", "b", "c"])).without_images(np.array([0]))
    assert repeated.skipped_images == [0, 2] and repeated.pair_rows.tolist() == [1]


def test_load_images_from_the_dataset_or_its_undecoded_view():
    from pds_hf.inputs import load_images, undecoded_images

    ds = _pairs([RED, b"not an image", BLUE], ["a", "b", "c"])
    view = undecoded_images(ds, "image")
    assert view.column_names == ["image"] and view.features["image"].decode is False
    for source in (ds, view):
        images = load_images(source, "image", [2, 1, 0])
        assert images[1] is None
        assert images[0].getpixel((0, 0)) == (0, 0, 255) and images[2].getpixel((0, 0)) == (255, 0, 0)
