"""The quality benchmark's small-pool option (benchmarks/quality/grid.py ``pool_splits``): a seeded subset of the
train images, and one caption per image in every split, as issue 18's small set had."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

datasets = pytest.importorskip("datasets")


def _splits():
    # Row i's captions name i, so a kept row shows which image it was; image 3 of train has a single caption.
    def split(name, n):
        return datasets.Dataset.from_dict(
            {
                "caption": [
                    [f"{name} {i} first"] if i == 3 else [f"{name} {i} first", f"{name} {i} second"] for i in range(n)
                ],
                "row": list(range(n)),
            }
        )

    return datasets.DatasetDict(train=split("train", 12), validation=split("validation", 4), test=split("test", 5))


def test_pool_keeps_a_seeded_subset_of_train_and_every_first_caption():
    pytest.importorskip("torch")
    import grid

    splits = _splits()
    pooled = grid.pool_splits(splits, train_images=5, one_caption=True)
    # The subset, worked out here: the first 5 of numpy's permutation of 12 seeded with 0, in train order.
    expected = sorted(np.random.default_rng(0).permutation(12)[:5].tolist())
    assert pooled["train"]["row"] == expected
    assert pooled["train"]["caption"] == [[f"train {i} first"] for i in expected]
    # Validation and test keep every image, each with its first caption only.
    assert pooled["validation"]["caption"] == [[f"validation {i} first"] for i in range(4)]
    assert pooled["test"]["caption"] == [[f"test {i} first"] for i in range(5)]
    # The input is unchanged.
    assert len(splits["train"]) == 12 and splits["test"]["caption"][0] == ["test 0 first", "test 0 second"]


def test_pool_without_one_caption_keeps_all_captions_and_refuses_a_pool_larger_than_train():
    pytest.importorskip("torch")
    import grid

    pooled = grid.pool_splits(_splits(), train_images=12)
    assert pooled["train"]["row"] == list(range(12))
    assert sum(len(c) for c in pooled["train"]["caption"]) == 23
    with pytest.raises(ValueError, match=r"train_images=13, but the train split has 12 images; pass a number from 1"):
        grid.pool_splits(_splits(), train_images=13)
