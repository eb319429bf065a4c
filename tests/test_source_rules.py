"""Every input rule gives the same answer for a Dataset and for a stream of the same rows (pds_hf.sources).

Each case builds rows, runs ``DistillProcessor`` on them as a ``Dataset`` and as
``to_iterable_dataset(num_shards=2)``, and compares: the same distilled set, or the same error type with the same
message once the words a stream adds are taken out ("stream" for "dataset", "input shard s, row r" for "row n").
"""

import re

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, Features, Image, IterableDataset, List, Value

from pds_hf import DistillConfig, DistillProcessor
from pds_hf.config import METHODS

ROWS = 12
DIM = 8


@pytest.fixture(scope="module")
def config(tiny_encoder):
    return DistillConfig(
        num_pairs=2, clip_model=tiny_encoder, image_size=16, device="cpu", use_cache=False, synthesis="none"
    )


def rows(layout="pair", *, embeddings=False, images=True):
    """Twelve rows with distinct images and captions (two captions a row in the "image" layout)."""
    rng = np.random.default_rng(0)
    columns, features = {}, {}
    if images:
        columns["image"] = [{"bytes": png_bytes((20 * i, 255 - 20 * i, 7 * i)), "path": None} for i in range(ROWS)]
        features["image"] = Image()
    if layout == "pair":
        columns["caption"] = [f"a shape number {i}" for i in range(ROWS)]
        features["caption"] = Value("string")
    else:
        columns["caption"] = [[f"a shape number {i}", f"another view {i}"] for i in range(ROWS)]
        features["caption"] = List(Value("string"))
    if embeddings:
        columns["image_embedding"] = rng.normal(size=(ROWS, DIM)).tolist()
        features["image_embedding"] = List(Value("float32"))
        shape = (ROWS, DIM) if layout == "pair" else (ROWS, 2, DIM)
        columns["text_embedding"] = rng.normal(size=shape).tolist()
        features["text_embedding"] = List(Value("float32")) if layout == "pair" else List(List(Value("float32")))
    return columns, features


def changed(columns, features, column, row, value, feature=None):
    columns = {name: list(values) for name, values in columns.items()}
    features = dict(features)
    if row is None:
        columns[column] = value
    else:
        columns[column][row] = value
    if feature is not None:
        features[column] = feature
    return columns, features


def dropped(columns, features, column):
    return {k: v for k, v in columns.items() if k != column}, {k: v for k, v in features.items() if k != column}


def case_rows():
    """(name, (columns, features), settings) for every rule."""
    plain = rows()
    given = rows(embeddings=True)
    given_image = rows("image", embeddings=True)
    nan = list(given[0]["image_embedding"][9])
    nan[3] = float("nan")
    nan_text = list(given[0]["text_embedding"][4])
    nan_text[0] = float("nan")
    cases = [
        ("encoded, one row per pair", plain, {}),
        ("encoded, one row per image", rows("image"), {}),
        ("encoded, retrieve", plain, {"synthesis": "retrieve"}),
        ("no image column", dropped(*plain, "image"), {}),
        ("no caption column", dropped(*plain, "caption"), {}),
        ("image column of strings", changed(*plain, "image", None, ["x.png"] * ROWS, Value("string")), {}),
        ("caption column of integers", changed(*plain, "caption", None, list(range(ROWS)), Value("int64")), {}),
        ("empty caption", changed(*plain, "caption", 8, "  "), {}),
        ("None caption", changed(*plain, "caption", 3, None), {}),
        ("empty caption list", changed(*rows("image"), "caption", 7, []), {}),
        ("num_pairs too large", plain, {"num_pairs": 11}),
        ("no rows", ({name: [] for name in plain[0]}, plain[1]), {}),
        ("a null image, skipped", changed(*plain, "image", 5, None), {}),
        ("a null image, on_bad_image=error", changed(*plain, "image", 5, None), {"on_bad_image": "error"}),
        ("an undecodable image, skipped", changed(*plain, "image", 6, {"bytes": b"not a png", "path": None}), {}),
        (
            "an undecodable image, on_bad_image=error",
            changed(*plain, "image", 6, {"bytes": b"not a png", "path": None}),
            {"on_bad_image": "error"},
        ),
        (
            "a caption column of lists of integers",
            changed(*plain, "caption", None, [[i] for i in range(ROWS)], List(Value("int64"))),
            {},
        ),
        ("given: image vector too short", changed(*given, "image_embedding", 8, [0.5] * 5), {}),
        ("given: caption vector too short", changed(*given, "text_embedding", 8, [0.5] * 5), {}),
        ("given: NaN in an image vector", changed(*given, "image_embedding", 9, nan), {}),
        ("given: NaN in a caption vector", changed(*given, "text_embedding", 4, nan_text), {}),
        ("given: caption vectors missing", dropped(*given, "text_embedding"), {}),
        ("given: image vectors missing", dropped(*given, "image_embedding"), {}),
        ("given: one vector for two captions", changed(*given_image, "text_embedding", 8, [[0.5] * DIM]), {}),
        ("given: one row per image", given_image, {}),
    ]
    for method in METHODS:
        for synthesis in ("none", "retrieve"):
            settings = {"method": method, "synthesis": synthesis}
            cases.append((f"given, {method}, {synthesis}", given, settings))
            cases.append((f"given without images, {method}, {synthesis}", dropped(*given, "image"), settings))
    return cases


CASES = case_rows()


def no_rows():
    yield from ()


def normalised(message: str) -> str:
    """The message without the words that only say where a stream's row is."""
    message = re.sub(r"^Input shard \d+ of the stream: ", "", message)
    message = re.sub(r"input shard \d+, row \d+", "row N", message, flags=re.IGNORECASE)
    message = re.sub(r"\brows? \d+", "row N", message)
    message = re.sub(r"row\(s\) \[[\d, ]+\]", "row N", message)
    return message.replace("stream", "dataset")


def outcome(processor, ds):
    """("made", the distilled columns) or ("error", type, normalised message)."""
    try:
        made = processor(ds)
    except (KeyError, TypeError, ValueError) as err:
        return "error", type(err).__name__, normalised(str(err.args[0]) if err.args else str(err))
    return "made", {
        "caption": made["caption"],
        "support": made["support"],
        "image_embedding": np.asarray(made["image_embedding"]),
        "text_embedding": np.asarray(made["text_embedding"]),
        "image": [None if image is None else np.asarray(image).tobytes() for image in made["image"]],
    }


def assert_same(streamed, mapped):
    if streamed[0] == "error" or mapped[0] == "error":
        assert streamed == mapped
        return
    # The encoder sees the stream's images in other batches: its vectors may differ in the last float bits.
    for column in ("image_embedding", "text_embedding"):
        np.testing.assert_allclose(streamed[1].pop(column), mapped[1].pop(column), atol=1e-5)
    assert streamed == mapped


@pytest.mark.parametrize("name, data, settings", CASES, ids=[case[0] for case in CASES])
def test_a_dataset_and_a_stream_agree(name, data, settings, config):
    columns, features = data
    ds = Dataset.from_dict(columns, features=Features(features))
    processor = DistillProcessor(config, **settings)
    mapped = outcome(processor, ds)
    # to_iterable_dataset cannot shard no rows: the empty stream comes from a generator.
    stream = (
        ds.to_iterable_dataset(num_shards=2)
        if len(ds)
        else IterableDataset.from_generator(no_rows, features=ds.features)
    )
    streamed = outcome(processor, stream)
    assert_same(streamed, mapped)
