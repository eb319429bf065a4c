"""The recipes in dataset_scripts/, run offline (--dry-run) on stand-ins shaped like the real sources."""

import importlib.util
from pathlib import Path

import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard

SCRIPTS = Path(__file__).resolve().parent.parent / "dataset_scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def flickr():
    return load_script("flickr30k_pds")


@pytest.fixture(scope="module")
def coco():
    return load_script("coco_karpathy_pds")


def test_flickr30k_dry_run_distills_the_karpathy_train_rows(flickr, tmp_path, capsys):
    code = flickr.main(
        ["--org", "pds-org", "--dry-run", "--sizes", "4", "8", "--synthesis", "retrieve", "--output-dir", str(tmp_path)]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "pds-org/flickr30k-pds-4: 4 pairs" in printed and "pds-org/flickr30k-pds-8: 8 pairs" in printed

    source = load_dataset(str(tmp_path / "nlphuji--flickr30k-stand-in"), split="test")
    assert source.features == flickr.source_features()  # the stand-in is typed like the real source
    train = sum(split == "train" for split in source["split"])
    assert 0 < train < len(source)
    assert len(flickr.to_pairs(source)) == train

    for size in (4, 8):
        folder = tmp_path / f"flickr30k-pds-{size}"
        small = load_dataset(str(folder), split="train")
        assert len(small) == size and small[0]["image"].size == (32, 32)
        card = DatasetCard.load(folder / "README.md")
        assert card.data.license == "unknown"
        assert f'load_dataset("pds-org/flickr30k-pds-{size}"' in card.text
        assert f"| rows | {train} (one row per image" in card.text  # only the Karpathy train rows were read
        assert flickr.SELECTION in card.text
        assert (folder / "preview.png").exists()


def test_coco_dry_run_reads_the_webdataset_layout(coco, tmp_path, capsys):
    code = coco.main(["--org", "pds-org", "--dry-run", "--sizes", "4", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    source = load_dataset(str(tmp_path / "undefined443--coco-karpathy-wds-stand-in"), split="train")
    assert set(source.column_names) == {"jpg", "json", "__key__", "__url__"}
    small = load_dataset(str(tmp_path / "coco-pds-4"), split="train")
    assert len(small) == 4 and small[0]["image"].size == (32, 32)  # made by the tiny unCLIP decoder
    card = DatasetCard.load(tmp_path / "coco-pds-4" / "README.md")
    assert "Every image is synthetic" in card.text and "tiny-random-unclip" in card.text


def test_coco_parquet_source_maps_one_row_per_caption(coco, tmp_path):
    folder = coco.write_dry_run_source(tmp_path / "src", coco.PARQUET, num_images=6)
    source = coco.load_source(str(folder), None)
    assert source.features == coco.parquet_features()
    pairs = coco.to_pairs(source, coco.PARQUET)
    assert pairs.column_names == ["image", "caption"]
    assert list(pairs["caption"]) == [row["raw"] for row in source["sentences"]]
    with pytest.raises(KeyError, match="sentences.raw"):
        coco.to_pairs(source.remove_columns(["sentences"]), coco.PARQUET)


@pytest.mark.parametrize("script", ["flickr30k_pds", "coco_karpathy_pds"])
def test_publishing_checks_token_and_license_before_reading_the_source(hub, script, capsys):
    recipe = load_script(script)
    assert recipe.main(["--org", "tester", "--sizes", "100"]) == 2  # no token
    assert "No Hugging Face token" in capsys.readouterr().err
    # The sources are not on the test server, so their licenses are unknown.
    assert recipe.main(["--org", "tester", "--sizes", "100", "--token", hub.token]) == 2
    assert "license of tester/" in capsys.readouterr().err
    assert not any("resolve" in r.path or "/commit/" in r.path for r in hub.requests)


def test_recipe_checks_output_folders_first_and_reuses_its_builds(flickr, tmp_path, capsys, monkeypatch):
    import pds_hf

    argv = ["--org", "pds-org", "--dry-run", "--sizes", "4", "--synthesis", "retrieve", "--output-dir", str(tmp_path)]
    assert flickr.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()

    def refuse(self, ds):
        raise AssertionError("distilled again")

    monkeypatch.setattr(pds_hf.DistillProcessor, "__call__", refuse)
    # The folder exists: refused before anything is read or distilled.
    assert flickr.main(argv) == 2
    assert "flickr30k-pds-4 exists (written by an earlier pds-hf run); pass --overwrite" in capsys.readouterr().err
    # With --overwrite the set is republished from the builder's cache: no distilling.
    assert flickr.main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
    assert "pds-org/flickr30k-pds-4: 4 pairs" in capsys.readouterr().out


def test_a_size_the_source_cannot_give_is_one_error_line(flickr, tmp_path, capsys):
    # The builder distills inside datasets' generation, which wraps the error; the recipe prints its cause.
    argv = [
        "--org",
        "pds-org",
        "--dry-run",
        "--sizes",
        "100000",
        "--synthesis",
        "retrieve",
        "--output-dir",
        str(tmp_path),
    ]
    assert flickr.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: num_pairs=100000 but the dataset has 60 usable pairs")
    assert "Traceback" not in err and "DatasetGenerationError" not in err
