"""Publishing a distilled set: one commit with data, card and preview; the same layout in a folder."""

import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_dataset
from datasets.data_files import EmptyDatasetError
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import DatasetCard, HfApi

import pds_hf
from pds_hf.publish import PublishError, dataset_card, push_to_hub, resolve_license, save_to_folder

REPO_FILES = {
    ".gitattributes",
    "README.md",
    "data/train-00000-of-00001.parquet",
    "members/train-00000-of-00001.parquet",
    "preview.png",
}


@pytest.fixture(scope="module")
def small(tiny_encoder):
    from pds_hf.demo import demo_dataset

    config = pds_hf.DistillConfig(
        num_pairs=4, clip_model=tiny_encoder, synthesis="retrieve", image_size=32, device="cpu"
    )
    source = demo_dataset(40, side=32)
    # A source with no name and no license, as most user datasets built in memory are (the demo's has both).
    source.info.builder_name = source.info.license = None
    return pds_hf.distill(source, config)


@pytest.fixture
def healthy(hub):
    yield hub
    assert hub.server_errors == [], "the hub test server raised:\n" + "\n".join(hub.server_errors)
    assert hub.blocked_requests == [], f"requests left 127.0.0.1: {hub.blocked_requests}"


def rows(ds):
    out = []
    for row in ds:
        row = dict(row)
        row["image"] = np.asarray(row["image"].convert("RGB"))
        out.append(row)
    return out


def assert_same_rows(got, want):
    assert got.features == want.features
    assert len(got) == len(want)
    for a, b in zip(rows(got), rows(want), strict=False):
        np.testing.assert_array_equal(a.pop("image"), b.pop("image"))
        assert a == b


def uploads(hub):
    """Requests that write something (repo creation, uploads, commits)."""
    return [
        r
        for r in hub.requests
        if r.method in ("PUT", "DELETE")
        or any(part in r.path for part in ("/repos/create", "/preupload/", "/commit/", "/lfs/"))
    ]


def test_push_then_load_dataset_gives_the_rows_and_the_card(healthy, small):
    hub = healthy
    commit = push_to_hub(
        small,
        "pds-org/shapes-pds-4",
        token=hub.token,
        license="mit",
        source="pds-org/shapes",
        source_revision="abc123",
        source_selection="rows with split == 'train'",
    )

    assert set(hub.repo_files("pds-org/shapes-pds-4")) == REPO_FILES
    assert [c.title for c in hub.commits("pds-org/shapes-pds-4")] == [
        "initial commit",
        "Upload 4 distilled pairs with pds-hf",
    ]
    assert commit.oid == hub.commits("pds-org/shapes-pds-4")[-1].oid
    assert not hub.is_private("pds-org/shapes-pds-4")

    loaded = load_dataset("pds-org/shapes-pds-4", split="train")
    assert_same_rows(loaded, small)
    assert loaded.features["text_embedding"].length == 32

    card = DatasetCard.load("pds-org/shapes-pds-4", repo_type="dataset")
    assert card.data.license == "mit"
    assert card.data.tags == ["dataset-distillation", "synthetic", "pds"]
    assert card.data.task_categories == ["image-to-text", "text-to-image"]
    assert card.data.size_categories == ["n<1K"]
    assert card.data.annotations_creators == ["machine-generated"]
    assert card.data.source_datasets == ["pds-org/shapes"]
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]},
        {"config_name": "members", "data_files": [{"split": "train", "path": "members/train-*"}]},
    ]
    infos = {info["config_name"]: info for info in card.data.dataset_info}
    assert infos["default"]["splits"][0]["num_examples"] == 4
    assert infos["members"]["splits"][0]["num_examples"] == int(sum(small["support"]))
    members = load_dataset("pds-org/shapes-pds-4", "members", split="train")
    assert members.to_pandas().equals(pds_hf.members(small).to_pandas())
    text = card.text
    from importlib.metadata import version

    for expected in (
        'load_dataset("pds-org/shapes-pds-4", split="train")',
        "![The first 4 pairs",
        "(preview.png)",
        "abc123",
        "rows with split == 'train'",
        small[0]["caption"],
        "pds-hf/tiny-random-clip",
        "| encode |",
        f"`datasets` {version('datasets')},",
        "Choi, Junhyeok and Mo, Sangwoo and Chae, Minwoo",
        "2602.19756",
        "## Cluster supports",
        "## Limitations",
        "Not evaluated",
        pds_hf.metadata(small)["source"]["fingerprint"],
    ):
        assert expected in text, expected
    assert hub.repo_files("pds-org/shapes-pds-4")["preview.png"].startswith(b"\x89PNG")


def test_later_pushes_keep_the_card_body_and_metadata(healthy, small):
    hub = healthy
    repo = "tester/shapes"
    push_to_hub(small, repo, token=hub.token, license="mit", max_shard_rows=2)
    assert {f for f in hub.repo_files(repo) if f.startswith("data/")} == {
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    }

    # Someone edits the card on the Hub: a section of their own, a name and a language.
    card = DatasetCard.load(repo, repo_type="dataset")
    card.data.pretty_name = "Shapes, distilled"
    card.data.language = ["en"]
    card.text = card.text.rstrip() + "\n\n## Notes\n\nWritten by hand.\n"
    card.push_to_hub(repo, token=hub.token)

    # pds-hf publishes a smaller set to the same repo, without naming the license again.
    three = small.select(range(3))
    push_to_hub(three, repo, token=hub.token)
    card = DatasetCard.load(repo, repo_type="dataset")
    assert card.data.pretty_name == "Shapes, distilled"
    assert card.data.language == ["en"]
    assert card.data.license == "mit"  # kept from the card already there
    assert "## Notes\n\nWritten by hand." in card.text
    assert "3 image-text pairs distilled" in card.text and "4 image-text pairs distilled" not in card.text
    assert card.text.count("<!-- pds-hf:begin") == 1
    assert card.data.dataset_info["splits"][0]["num_examples"] == 3
    assert {f for f in hub.repo_files(repo) if f.startswith("data/")} == {"data/train-00000-of-00001.parquet"}
    # A derived Dataset carries no members: the members config and its shard of the first push are gone.
    assert [config["config_name"] for config in card.data.configs] == ["default"]
    assert not [f for f in hub.repo_files(repo) if f.startswith("members/")]
    assert_same_rows(load_dataset(repo, split="train"), three)
    readme = hub.repo_files(repo)["README.md"]
    push_to_hub(three, repo, token=hub.token)
    assert hub.repo_files(repo)["README.md"] == readme  # publishing the same set again changes nothing

    # A plain Dataset.push_to_hub rewrites dataset_info/configs only.
    small.push_to_hub(repo, token=hub.token)
    card = DatasetCard.load(repo, repo_type="dataset")
    assert card.data.pretty_name == "Shapes, distilled" and card.data.license == "mit"
    assert card.data.tags == ["dataset-distillation", "synthetic", "pds"]
    assert "## Notes\n\nWritten by hand." in card.text and "3 image-text pairs distilled" in card.text
    assert card.data.dataset_info["splits"][0]["num_examples"] == 4
    assert_same_rows(load_dataset(repo, split="train"), small)


def test_a_failed_upload_leaves_no_repo_that_looks_complete(healthy, small):
    hub = healthy
    # 4xx: huggingface_hub retries a 5xx LFS PUT with waits.
    hub.fail_next("PUT", r"^/_lfs/upload/", status=403)
    with pytest.raises(PublishError, match="Nothing was committed: it exists but is empty"):
        push_to_hub(small, "tester/broken", token=hub.token, license="mit")
    assert [c.title for c in hub.commits("tester/broken")] == ["initial commit"]
    assert set(hub.repo_files("tester/broken")) == {".gitattributes"}
    with pytest.raises(EmptyDatasetError):
        load_dataset("tester/broken", split="train")

    # An existing set survives a commit that fails (the commit call is not retried).
    push_to_hub(small, "tester/broken", token=hub.token, license="mit")
    before = hub.repo_files("tester/broken")
    hub.fail_next("POST", r"^/api/datasets/tester/broken/commit/", status=500)
    with pytest.raises(PublishError, match=r"HTTP 500.*still holds its previous commit"):
        push_to_hub(small.select(range(2)), "tester/broken", token=hub.token)
    assert hub.repo_files("tester/broken") == before
    assert len(load_dataset("tester/broken", split="train")) == 4


def test_no_token_or_a_foreign_namespace_fails_before_any_work(healthy, small, monkeypatch):
    hub = healthy

    def must_not_run(*args, **kwargs):
        raise AssertionError("shards, preview or card were made before the checks")

    monkeypatch.setattr("pds_hf.publish.hub.write_repo", must_not_run)
    monkeypatch.setattr("pds_hf.publish.folder.render_card", must_not_run)

    with pytest.raises(PublishError, match="No Hugging Face token"):
        push_to_hub(small, "tester/x", license="mit")
    assert hub.requests == []

    with pytest.raises(PublishError, match="HTTP 401"):
        push_to_hub(small, "tester/x", token="hf_not_a_valid_token", license="mit")

    hub.create_repo("someone-else/existing")
    for repo in ("someone-else/new", "someone-else/existing"):
        with pytest.raises(PublishError, match="belongs to 'tester', who may write to tester, pds-org only"):
            push_to_hub(small, repo, token=hub.token, license="mit")
    assert uploads(hub) == []
    assert not hub.repo_exists("someone-else/new") and not hub.repo_exists("tester/x")
    assert len(hub.commits("someone-else/existing")) == 1


def test_private_flag_is_honoured(healthy, small):
    hub = healthy
    push_to_hub(small, "tester/secret", token=hub.token, license="mit", private=True)
    assert hub.is_private("tester/secret")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("tester/secret", split="train")
    assert len(load_dataset("tester/secret", split="train", token=hub.token)) == 4

    push_to_hub(small, "tester/secret", token=hub.token)  # None: visibility unchanged
    assert hub.is_private("tester/secret")
    push_to_hub(small, "tester/secret", token=hub.token, private=False)
    assert not hub.is_private("tester/secret")


def test_save_to_folder_writes_the_hub_layout(healthy, small, tmp_path):
    hub = healthy
    folder = tmp_path / "shapes-pds-4"
    save_to_folder(small, folder, repo_id="tester/same", license="mit")
    push_to_hub(small, "tester/same", token=hub.token, license="mit")

    on_disk = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    on_hub = hub.repo_files("tester/same")
    on_hub.pop(".gitattributes")
    assert on_disk == on_hub
    assert_same_rows(load_dataset(str(folder), split="train"), small)


def test_save_to_folder_is_all_or_nothing(small, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    folder = tmp_path / "out"
    monkeypatch.setattr("pds_hf.publish.folder.preview_grid", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_to_folder(small, folder)
    assert list(tmp_path.iterdir()) == []

    save_to_folder(small, folder, preview_pairs=0)
    assert not (folder / "preview.png").exists() and "preview.png" not in (folder / "README.md").read_text()
    readme = (folder / "README.md").read_text()
    save_to_folder(small, folder, preview_pairs=0, overwrite=True)
    assert (folder / "README.md").read_text() == readme
    with pytest.raises(RuntimeError, match="disk full"):
        save_to_folder(small, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (folder / "data" / "train-00000-of-00001.parquet").exists()


def test_license_comes_from_the_argument_then_the_source_card(healthy, small, tmp_path):
    hub = healthy
    hub.add_commit("tester/licensed-src", {"README.md": "---\nlicense: cc-by-4.0\n---\nA source.\n"})
    hub.add_commit("tester/bare-src", {"README.md": "---\npretty_name: Bare\n---\nNo license here.\n"})

    push_to_hub(small, "tester/a", token=hub.token, source="tester/licensed-src")
    card = DatasetCard.load("tester/a", repo_type="dataset")
    assert card.data.license == "cc-by-4.0"
    assert "taken from [tester/licensed-src]" in card.text

    push_to_hub(small, "tester/b", token=hub.token, source="tester/licensed-src", license="other")
    assert DatasetCard.load("tester/b", repo_type="dataset").data.license == "other"

    hub.clear_requests()
    for source in ("tester/bare-src", "tester/missing-src", None):
        with pytest.raises(PublishError, match="license of tester/c is unknown.*license="):
            push_to_hub(small, "tester/c", token=hub.token, source=source)
    assert uploads(hub) == [] and not hub.repo_exists("tester/c")

    local = tmp_path / "local-src"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: cc0-1.0\n---\n")
    assert resolve_license(source=str(local)).license == "cc0-1.0"
    Dataset.from_dict({"x": [1]}).save_to_disk(str(tmp_path / "disk-src"))
    assert resolve_license(source=str(tmp_path / "disk-src")).origin == "unknown"
    with pytest.raises(ValueError, match="license must be"):
        resolve_license(license=" ")

    save_to_folder(small, tmp_path / "unlicensed")  # a folder may be written before the license is settled
    card = DatasetCard.load(tmp_path / "unlicensed" / "README.md")
    assert card.data.license == "unknown" and "before sharing this set" in card.text


def test_card_includes_an_evaluation_report(small, tmp_path):
    report = "| pairs | IR@1 |\n|---|---|\n| 4 | 12.50 ± 1.00 |"
    card = dataset_card(small, license="mit", evaluation=report)
    assert report in card.text and "Evaluated only as reported above" in card.text

    path = tmp_path / "eval.md"
    path.write_text(report)

    class Report:
        def to_markdown(self):
            return report

    for evaluation in (path, str(path), Report()):
        assert report in dataset_card(small, license="mit", evaluation=evaluation).text
    with pytest.raises(FileNotFoundError, match="no such file"):
        dataset_card(small, license="mit", evaluation=Path(tmp_path / "missing.md"))
    with pytest.raises(ValueError, match="columns"):
        dataset_card(small.remove_columns(["support"]), license="mit")


def test_push_to_a_new_branch_leaves_main_alone(healthy, small):
    hub = healthy
    push_to_hub(small, "tester/branched", token=hub.token, license="mit")
    main_files = hub.repo_files("tester/branched")
    push_to_hub(small.select(range(2)), "tester/branched", token=hub.token, revision="smaller")
    assert hub.repo_files("tester/branched") == main_files
    assert len(load_dataset("tester/branched", split="train", revision="smaller")) == 2
    assert HfApi().dataset_info("tester/branched", revision="smaller").card_data.license == "mit"


def test_wheel_ships_the_card_template(tmp_path):
    """`pip install pds-hf` (a wheel, no checkout) must still find model_cards/dataset_card_template.md."""
    import subprocess
    import sys
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip("building the wheel without isolation needs setuptools>=68 (pyproject's build requirement)")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pds_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pds_hf/model_cards/dataset_card_template.md" in names
    assert "pds_hf/publish/card.py" in names and "pds_hf/evaluation/__init__.py" in names
    shipped = zipfile.ZipFile(wheel).read("pds_hf/model_cards/dataset_card_template.md").decode()
    assert shipped == (root / "model_cards" / "dataset_card_template.md").read_text()


def test_metadata_survives_publishing_through_the_card(healthy, small, tmp_path):
    """load_dataset loses a dataset's info; pds_hf.metadata reads the run record back from the card."""
    import json

    expected = json.loads(json.dumps(pds_hf.metadata(small), default=str))
    save_to_folder(small, tmp_path / "out")
    with pytest.raises(ValueError, match="pass its folder or Hub id"):
        pds_hf.metadata(load_dataset(str(tmp_path / "out"), split="train"))
    assert pds_hf.metadata(tmp_path / "out") == expected
    assert pds_hf.metadata(str(tmp_path / "out")) == expected

    hub = healthy
    push_to_hub(small, "tester/with-record", token=hub.token, license="mit")
    assert pds_hf.metadata("tester/with-record") == expected

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text("# some dataset\n")
    with pytest.raises(ValueError, match="holds no pds-hf run record"):
        pds_hf.metadata(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="has no README.md"):
        pds_hf.metadata(tmp_path)


def test_the_demo_card_names_its_source_its_license_and_its_random_models(tiny_encoder, tiny_pipe, tmp_path, caplog):
    from pds_hf.demo import demo_dataset

    config = pds_hf.DistillConfig(
        num_pairs=4, clip_model=tiny_encoder, unclip_model=tiny_pipe, num_inference_steps=1, image_size=32, device="cpu"
    )
    small = pds_hf.distill(demo_dataset(40, side=32), config)
    with caplog.at_level(logging.WARNING, logger="pds_hf"):
        save_to_folder(small, tmp_path / "demo")
    card = DatasetCard.load(tmp_path / "demo" / "README.md")
    assert card.data.license == "apache-2.0"
    assert "License unknown" not in caplog.text  # the warning agrees with the card
    text = card.text
    assert "unnamed" not in text and "made in code by `pds_hf.demo.demo_dataset()`" in text
    assert "| split | none (made in code) |" in text
    assert "Every image is synthetic and meaningless: a tiny Stable unCLIP with random weights" in text
    # The tiny models are named by the code that builds them, never linked as if they were Hub repositories.
    assert "`pds_hf.testing.tiny_clip_encoder()`" in text and "`pds_hf.testing.tiny_unclip_pipeline()`" in text
    assert "/pds-hf/tiny-random" not in text


def test_a_card_never_carries_a_local_path(tmp_path, shapes_ds, caplog):
    """A streamed run of a local folder, encoded by a model loaded from a local folder."""
    from datasets import load_from_disk

    from pds_hf.testing import save_tiny_clip

    shapes_ds.save_to_disk(str(tmp_path / "my-pairs"))
    stream = load_from_disk(str(tmp_path / "my-pairs")).to_iterable_dataset(num_shards=1)
    config = pds_hf.DistillConfig(
        num_pairs=4,
        clip_model=save_tiny_clip(tmp_path / "clip"),
        synthesis="none",
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    small = pds_hf.distill(stream, config)
    with caplog.at_level("WARNING", logger="pds_hf"):
        save_to_folder(small, tmp_path / "out", source=str(tmp_path / "my-pairs"), license="mit")
    text = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in text
    assert "a local folder (my-pairs)" in text and "a local folder (clip)" in text
    assert "| split | not recorded |" not in text
    assert any("encoder is recorded as 'a local folder (clip)'" in r.getMessage() for r in caplog.records)
    # The record read back from the card keeps everything else.
    assert pds_hf.metadata(tmp_path / "out")["source"]["num_pairs"] == 120


def test_a_set_made_with_a_loaded_encoder_says_its_name_loads_nothing(shapes_ds, caplog):
    from pds_hf.encode import TransformersEncoder
    from pds_hf.testing import tiny_clip_model

    encoder = TransformersEncoder(*tiny_clip_model())  # built in memory: known by its class name only
    config = pds_hf.DistillConfig(num_pairs=4, clip_model=encoder, synthesis="none", device="cpu")
    small = pds_hf.distill(shapes_ds, config)
    assert pds_hf.metadata(small)["models"]["encoder"] == "CLIPModel"
    with caplog.at_level("WARNING", logger="pds_hf"):
        card = dataset_card(small, license="mit")
    assert (
        "| encoder | `CLIPModel` is the class of a model passed as a loaded object, not a model id: the set "
        "cannot be remade from this card |"
    ) in card.text
    assert any("recorded as 'CLIPModel'" in r.getMessage() and "Hub id" in r.getMessage() for r in caplog.records)
