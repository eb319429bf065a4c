"""Members: which real pairs each distilled pair stands for, checked against numpy by hand on the demo shapes."""

import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard

import pds_hf
from pds_hf.cache import MemoryStage, Stage
from pds_hf.members import carried_columns, remember, write_members
from pds_hf.processor import DistillProcessor


def encoded_selection(ds, tmp_path, tiny_encoder, **settings):
    """``(selection, image_embeds, text_embeds, encoded)``; the distinct embeddings read from the encoded columns
    here, not from the run's store."""
    config = pds_hf.DistillConfig(
        **{
            "num_pairs": 8,
            "clip_model": tiny_encoder,
            "synthesis": "none",
            "device": "cpu",
            "cache_dir": str(tmp_path / "cache"),
            **settings,
        }
    )
    processor = DistillProcessor(config)
    encoded = ds.map(processor.encode, batched=True)
    selection = processor.select(encoded)
    table = selection.table
    image_rows = np.asarray(encoded["image_embedding"], dtype=np.float32)
    by_caption = {}
    for captions, vectors in zip(encoded["caption"], encoded["text_embedding"], strict=True):
        if isinstance(captions, str):  # one caption per row: one vector per row
            captions, vectors = [captions], [vectors]
        for caption, vector in zip(captions, vectors, strict=True):
            by_caption.setdefault(caption, vector)
    image_embeds = image_rows[table.image_rows]
    text_embeds = np.asarray([by_caption[text] for text in table.texts], dtype=np.float32)
    return selection, image_embeds, text_embeds, encoded


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_encoder):
    from pds_hf.demo import demo_dataset

    ds = demo_dataset(60, side=32)
    tmp = tmp_path_factory.mktemp("members")
    selection, image_embeds, text_embeds, _ = encoded_selection(ds, tmp, tiny_encoder)
    members = write_members(selection, image_embeds, text_embeds, stage=Stage(tmp / "select"), source_ds=ds)
    return ds, selection, image_embeds, text_embeds, members, tmp


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_members_match_an_independent_computation_on_the_demo(demo):
    ds, selection, image_embeds, text_embeds, members, _ = demo
    table = selection.table
    got = members.to_pandas()
    assert len(selection) == 8 and selection.support.sum() > 0

    for m in range(len(selection)):
        # By hand: the pairs whose image cluster and text cluster are the matched ones of pair m.
        want = [
            p
            for p in range(table.num_pairs)
            if selection.pair_image_labels[p] == selection.image_cluster[m]
            and selection.pair_text_labels[p] == selection.text_cluster[m]
        ]
        mine = got[got["pair"] == m]
        assert len(mine) == len(want) == selection.support[m]
        assert sorted(zip(mine["source_row"], mine["caption_index"], strict=True)) == sorted(
            (int(table.pair_rows[p]), p - int(np.flatnonzero(table.pair_rows == table.pair_rows[p])[0])) for p in want
        )
        if want:
            # The prototypes are the mean embeddings of exactly these pairs (step 5).
            np.testing.assert_allclose(
                image_embeds[table.pair_image[want]].mean(0), selection.image_embeds[m], rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                text_embeds[table.pair_text[want]].mean(0), selection.text_embeds[m], rtol=1e-4, atol=1e-5
            )

    for row in got.itertuples():
        captions = ds[int(row.source_row)]["caption"]
        assert captions[row.caption_index] == row.caption
        p = next(
            p
            for p in range(table.num_pairs)
            if table.pair_rows[p] == row.source_row and table.texts[table.pair_text[p]] == row.caption
        )
        assert row.image_similarity == pytest.approx(
            cosine(image_embeds[table.pair_image[p]], selection.image_embeds[row.pair]), abs=1e-5
        )
        assert row.text_similarity == pytest.approx(
            cosine(text_embeds[table.pair_text[p]], selection.text_embeds[row.pair]), abs=1e-5
        )
    assert list(got["source_row"]) == sorted(got["source_row"])  # source order


def test_blocks_memory_and_the_cache_give_the_same_table(demo):
    _, selection, image_embeds, text_embeds, members, tmp = demo
    small_blocks = write_members(selection, image_embeds, text_embeds, stage=MemoryStage(), block_pairs=7)
    base = members.remove_columns([c for c in members.column_names if c not in small_blocks.column_names])
    assert small_blocks.data.table.equals(base.data.table)

    files = sorted((tmp / "select").glob("members-*.arrow"))
    assert len(files) == 1 and (tmp / "select" / f"{files[0].stem}.done").is_file()
    before = files[0].stat().st_mtime_ns
    again = write_members(selection, image_embeds + 1, text_embeds, stage=Stage(tmp / "select"), source_ds=demo[0])
    assert files[0].stat().st_mtime_ns == before  # reused, not rewritten (the shifted embeddings are not read)
    assert again.data.table.equals(members.data.table)


def test_a_baselines_member_is_the_chosen_row(shapes_pairs_ds, tmp_path, tiny_encoder):
    selection, image_embeds, text_embeds, _ = encoded_selection(
        shapes_pairs_ds, tmp_path, tiny_encoder, method="herding"
    )
    members = write_members(selection, image_embeds, text_embeds, stage=MemoryStage(), source_ds=shapes_pairs_ds)
    assert len(members) == len(selection) == 8
    by_pair = sorted(zip(members["pair"], members["source_row"], members["caption_index"], strict=True))
    assert by_pair == [(m, int(selection.table.pair_rows[p]), 0) for m, p in enumerate(selection.pairs)]
    assert [shapes_pairs_ds[row]["caption"] for _, row, _ in by_pair] == selection.captions
    np.testing.assert_allclose(members["image_similarity"], 1.0, atol=1e-5)
    np.testing.assert_allclose(members["text_similarity"], 1.0, atol=1e-5)


def test_id_url_and_license_columns_are_carried(shapes_ds, tmp_path, tiny_encoder):
    n = len(shapes_ds)
    ds = (
        shapes_ds.add_column("img_id", list(range(100, 100 + n)))
        .add_column("flickr_url", [f"https://example.org/{i}.jpg" for i in range(n)])
        .add_column("license", ["cc-by-4.0"] * n)
        .add_column("sentids", [[f"s{i}a", f"s{i}b"] for i in range(n)])
        .add_column("colour_name", ["x"] * n)
        .add_column("valid", [True] * n)
    )
    assert carried_columns(ds.features, layout="image", exclude=("image", "caption")) == {
        "img_id": "value",
        "flickr_url": "value",
        "license": "value",
        "sentids": "at_caption",
    }
    assert "sentids" not in carried_columns(ds.features, layout="pair")
    selection, image_embeds, text_embeds, _ = encoded_selection(ds, tmp_path, tiny_encoder)
    members = write_members(selection, image_embeds, text_embeds, stage=MemoryStage(), source_ds=ds)
    assert members.column_names[6:] == ["img_id", "flickr_url", "license", "sentids"]
    for row in members:
        assert row["img_id"] == 100 + row["source_row"]
        assert row["flickr_url"] == f"https://example.org/{row['source_row']}.jpg"
        assert row["sentids"] == f"s{row['source_row']}{'ab'[row['caption_index']]}"


def test_remember_then_publish_both_configs_and_the_card_counts(tmp_path, tiny_encoder):
    from pds_hf.demo import demo_dataset

    ds = demo_dataset(60, side=32)
    config = dict(num_pairs=8, clip_model=tiny_encoder, synthesis="retrieve", image_size=32, device="cpu")
    small = pds_hf.distill(ds, pds_hf.DistillConfig(**config, cache_dir=str(tmp_path / "cache")))
    selection, image_embeds, text_embeds, _ = encoded_selection(ds, tmp_path, tiny_encoder, **config)
    members = write_members(selection, image_embeds, text_embeds, stage=MemoryStage(), source_ds=ds)

    with pytest.raises(ValueError, match="carries no members"):
        pds_hf.members(small.select(range(len(small))))  # a derived Dataset
    remember(small, members)
    assert pds_hf.members(small) is members
    assert pds_hf.members.write_members is write_members  # the module stays reachable under its name
    assert pds_hf.metadata(small)["members"]["represented"] == int(selection.support.sum())

    folder = pds_hf.save_to_folder(small, tmp_path / "out")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
        "members/train-00000-of-00001.parquet",
        "preview.png",
    ]
    assert len(load_dataset(str(folder), split="train")) == 8
    loaded = load_dataset(str(folder), "members", split="train")
    assert loaded.to_pandas().equals(members.to_pandas())
    assert pds_hf.members(str(folder)).to_pandas().equals(members.to_pandas())

    card = DatasetCard.load(folder / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default", "members"]
    record = pds_hf.metadata(str(folder))
    source_pairs, kept = record["source"]["num_pairs"], record["kept_pairs"]
    represented = len(members)
    assert (
        f"Of the {source_pairs} source pairs, {represented} are represented (members of a row),\n"
        f"{source_pairs - kept} were dropped by the filter" in card.text
    )
    assert f"and {kept - represented} were kept but fell" in card.text
    assert "The images are real images of" in card.text

    # Published again without members: the members config and its shards are gone.
    pds_hf.save_to_folder(small, folder, overwrite=True, members=False)
    card = DatasetCard.load(folder / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default"]
    assert not (folder / "members").exists()
    with pytest.raises(ValueError, match="no 'members' config"):
        pds_hf.members(str(folder))


def test_preview_shows_each_pairs_closest_member_beside_it(demo):
    from datasets import Dataset

    from pds_hf.publish.preview import preview_grid

    ds, selection, _, _, members, _ = demo
    small = Dataset.from_dict(
        {"image": [None] * len(selection), "caption": selection.captions, "support": selection.support.tolist()}
    )
    plain = preview_grid(small, num_pairs=4, columns=4, tile=64)
    grid = preview_grid(small, num_pairs=4, columns=4, tile=64, members=members, source=ds)
    assert plain.width == 8 + 4 * 72 and grid.width == 8 + 2 * (64 + 8 + 64 + 8)  # two pairs a row, members beside
    got = members.to_pandas()
    for pair in (0, 1):  # the first grid row: cells at y = 8
        mine = got[got["pair"] == pair]
        left = 8 + pair * (64 + 8 + 64 + 8) + 64 + 8
        thumb = np.asarray(grid.crop((left, 8, left + 30, 8 + 30)).convert("RGB"), dtype=np.float64)
        if mine.empty:
            continue
        # By hand: the member with the highest image + text similarity, its source image's mean colour.
        best = mine.iloc[int(np.argmax(mine["image_similarity"] + mine["text_similarity"]))]
        want = np.asarray(ds[int(best["source_row"])]["image"].convert("RGB"), dtype=np.float64)
        np.testing.assert_allclose(thumb.mean((0, 1)), want.mean((0, 1)), atol=4)
    assert (selection.support[:2] > 0).any()


def test_map_style_and_streamed_sources_give_the_same_members(shapes_ds, tmp_path, tiny_encoder):
    ds = shapes_ds.add_column("img_id", list(range(len(shapes_ds))))
    config = pds_hf.DistillConfig(
        num_pairs=8, clip_model=tiny_encoder, synthesis="none", device="cpu", cache_dir=str(tmp_path / "cache")
    )
    mapped = pds_hf.members(pds_hf.distill(ds, config)).to_pandas()
    streamed = pds_hf.members(pds_hf.distill(ds.to_iterable_dataset(num_shards=3), config)).to_pandas()
    assert list(mapped["img_id"]) == list(mapped["source_row"])  # carried from the map-style source only
    assert list(streamed.columns) == list(mapped.columns[:6])
    assert len(mapped) > 0 and streamed.equals(mapped[streamed.columns])
