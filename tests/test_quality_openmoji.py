"""Fast checks of the second quality dataset (benchmarks/quality/openmoji.py, on a handful of made-up emoji
in a package-shaped tarball) and of the teacher-scored offline step 7 (pds_hf.synthesize.retrieve_scored_images)."""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pds_hf.synthesize import retrieve_scored_images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))


def _svg(color: str, shape: str = '<rect x="10" y="10" width="40" height="30"') -> bytes:
    return (f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">{shape} fill="{color}"/></svg>').encode()


def _entry(hexcode, annotation, order, *, tags="", openmoji_tags="", group="objects", skintone=""):
    return {
        "emoji": "?",
        "hexcode": hexcode,
        "group": group,
        "subgroups": "things",
        "annotation": annotation,
        "tags": tags,
        "openmoji_tags": openmoji_tags,
        "skintone": skintone,
        "order": order,
    }


def _tarball(tmp_path) -> Path:
    entries = [
        _entry("1F600", "grinning face", 1, tags="face, grin, happy", openmoji_tags="smile, happy"),
        _entry("1F600-1F3FF", "grinning face: dark skin tone", 2, skintone=5),
        _entry("1F3FB", "light skin tone", 3, group="component"),
        _entry("1F34E", "red apple", 4, tags="apple, fruit"),
        _entry("E000", "Red Apple!", 5, tags="apple, fruit", group="extras-openmoji"),  # both captions taken
        _entry("1F34F", "green apple", 6, tags="fruit"),  # one keyword: no keyword caption
        _entry("1F4A1", "light bulb", 7, tags="bulb, idea, light"),
        _entry("1F4A2", "anger symbol", 8, tags="angry, comic"),  # same picture as 1F4A1: merged into it
        _entry("1F4A3", "bomb", 9, tags="comic, explosion"),  # no SVG in the package
    ]
    svgs = {
        "1F600": _svg("#FCEA2B", '<circle cx="36" cy="36" r="23"'),
        "1F600-1F3FF": _svg("#5C3D2E"),
        "1F3FB": _svg("#F1D0B0"),
        "1F34E": _svg("#EA5A47"),
        "E000": _svg("#D22F27", '<circle cx="30" cy="30" r="9"'),
        "1F34F": _svg("#5C9E31"),
        "1F4A1": _svg("#3F3F3F"),
        "1F4A2": _svg("#3F3F3F"),
    }
    path = tmp_path / "openmoji-test.tgz"
    with tarfile.open(path, "w:gz") as archive:
        files = {
            "package/data/openmoji.json": json.dumps(entries).encode(),
            **{f"package/color/svg/{code}.svg": data for code, data in svgs.items()},
            "package/black/svg/1F600.svg": _svg("#000000"),
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_openmoji_build_selects_captions_and_splits(tmp_path):
    pytest.importorskip("cairosvg")
    import openmoji

    splits, manifest = openmoji.build(
        tmp_path / "cache", size=32, seed=0, tarball=_tarball(tmp_path), test_images=1, validation_images=1
    )
    counts = manifest["counts"]
    assert counts["skin-tone variant (dropped)"] == 1 and counts["component (dropped)"] == 1
    assert counts["missing or unusable SVG (dropped)"] == 1 and counts["identical image (merged)"] == 1
    assert counts["emoji without a caption (dropped)"] == 1  # E000: its annotation and keywords repeat 1F34E's
    rows = {row["hexcode"]: row for split in splits.values() for row in split}
    assert sorted(rows) == ["1F34E", "1F34F", "1F4A1", "1F600"]
    assert rows["1F600"]["caption"] == ["grinning face", "face, grin, happy, smile"]
    assert rows["1F34F"]["caption"] == ["green apple"]
    assert rows["1F4A1"]["caption"] == ["light bulb", "anger symbol", "bulb, idea, light", "angry, comic"]
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [2, 1, 1]
    image = splits["train"][0]["image"]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent background became white
    again, _ = openmoji.build(
        tmp_path / "cache", size=32, seed=0, tarball=_tarball(tmp_path), test_images=1, validation_images=1
    )
    assert again["train"]["hexcode"] == splits["train"]["hexcode"]


def test_openmoji_build_refuses_too_few_images(tmp_path):
    pytest.importorskip("cairosvg")
    import openmoji

    with pytest.raises(RuntimeError, match="test_images"):
        openmoji.build(tmp_path / "cache", size=32, tarball=_tarball(tmp_path), test_images=3, validation_images=1)


def test_retrieve_scored_images_lets_the_teacher_choose_among_the_nearest():
    # Image 0 is nearest the first image prototype but unlike its text prototype; image 1, the second
    # nearest, matches the text prototype. Image 3 matches it best of all but is not among the 2 nearest.
    images = np.array([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    image_protos = np.array([[1.0, 0.1, 0.0], [0.0, 0.1, 1.0]])
    text_protos = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert retrieve_scored_images(images, image_protos, text_protos, candidates=2).tolist() == [1, 2]
    assert retrieve_scored_images(images, image_protos, text_protos, candidates=4).tolist() == [3, 2]
    # One candidate is synthesis="retrieve": the nearest image, whatever the text prototype says.
    assert retrieve_scored_images(images, image_protos, text_protos, candidates=1).tolist() == [0, 2]
    # Scale does not matter (cosine), nor does chunking; more candidates than images is allowed.
    assert retrieve_scored_images(5 * images, image_protos, 3 * text_protos, candidates=2, chunk=1).tolist() == [1, 2]
    assert retrieve_scored_images(images, image_protos, text_protos, candidates=50).tolist() == [3, 2]


def test_retrieve_scored_images_names_bad_input():
    images = np.eye(3)
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        retrieve_scored_images(images, np.eye(3), np.eye(3), candidates=0)
    with pytest.raises(ValueError, match="3 image prototypes but 2 text prototypes"):
        retrieve_scored_images(images, np.eye(3), np.eye(3)[:2])
    with pytest.raises(ValueError, match="text prototypes have shape"):
        retrieve_scored_images(images, np.eye(3), np.ones((3, 4)))
