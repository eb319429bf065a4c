"""Recipes (pds_hf.pretrained): to_dict / from_dict, save_pretrained / push_to_hub / from_pretrained, repr."""

import json
import logging
import re

import pytest

from pds_hf import DistillConfig, DistillProcessor

# Spelled out here rather than read from pds_hf.config, so that the test checks the package against the list.
MACHINE = {
    "device": "cuda:3",
    "encode_batch_size": 7,
    "encode_workers": 3,
    "synthesis_batch_size": 2,
    "use_cache": False,
    "cache_dir": "/data/pds-cache",
    "barrier_timeout": 5.0,
}
RECIPE = {
    "num_pairs": 37,
    "rm_ratio": 0.1,
    "clip_model": "org/clip",
    "clip_revision": "abc",
    "synthesis": "retrieve",
    "seed": 7,
}


@pytest.fixture
def processor():
    return DistillProcessor(**RECIPE, **MACHINE)


def saved_config(payload: dict) -> dict:
    assert set(payload) == {"pds_hf_version", "config", "loaded_objects"}
    return payload["config"]


def test_to_dict_and_json_string_hold_the_recipe_without_machine_settings(processor, tmp_path):
    recipe = processor.to_dict()
    config = saved_config(recipe)
    assert recipe["loaded_objects"] == []
    assert {k: config[k] for k in RECIPE} == RECIPE
    assert not set(config) & set(MACHINE)
    assert config["embedding_dtype"] == "float32" and config["kmeans_init"] == "auto"  # defaults are written out
    assert json.loads(processor.to_json_string()) == recipe
    assert processor.save_pretrained(tmp_path).read_text(encoding="utf-8") == processor.to_json_string()

    back = DistillProcessor.from_dict(recipe)
    assert back.config == DistillConfig(**RECIPE)
    assert DistillProcessor.from_dict(recipe, device="cpu").config.device == "cpu"
    assert DistillProcessor.from_dict({"num_pairs": 5, "device": "cuda:1"}).config == DistillConfig(num_pairs=5)


def test_machine_settings_of_a_saved_recipe_stay_on_its_machine(processor, tmp_path, caplog):
    path = processor.save_pretrained(tmp_path)
    # A recipe written by an older version, or by hand, may still hold them: they are not taken either.
    payload = json.loads(path.read_text())
    payload["config"].update(MACHINE)
    path.write_text(json.dumps(payload))
    with caplog.at_level(logging.INFO, logger="pds_hf"):
        back = DistillProcessor.from_pretrained(tmp_path)
    defaults = DistillConfig()
    assert {k: getattr(back.config, k) for k in MACHINE} == {k: getattr(defaults, k) for k in MACHINE}
    assert back.config == DistillConfig(**RECIPE)
    assert "encode_batch_size" in caplog.text
    assert DistillProcessor.from_pretrained(tmp_path, encode_batch_size=9).config.encode_batch_size == 9


def test_repr_names_loaded_models_in_a_few_short_lines(tiny_encoder):
    processor = DistillProcessor(clip_model=tiny_encoder.model, clip_processor=tiny_encoder.processor, num_pairs=5)
    assert repr(processor) == (
        "DistillProcessor(DistillConfig(num_pairs=5, clip_model=<CLIPModel>, clip_processor=<CLIPProcessor>))"
    )
    assert repr(DistillConfig()) == "DistillConfig()"

    config = DistillConfig(
        clip_model=tiny_encoder, num_pairs=5, synthesis="retrieve", device="cpu", negative_prompt=None, image_size=32
    )
    lines = repr(config).splitlines()
    assert lines[0] == "DistillConfig(" and lines[-1] == ")"
    assert "    clip_model=<TransformersEncoder 'pds-hf/tiny-random-clip'>," in lines
    assert len(lines) == 2 + 6 and max(map(len, lines)) <= 100


def test_from_pretrained_of_a_missing_folder_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape("No folder ./no/such/folder,")):
        DistillProcessor.from_pretrained("./no/such/folder")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone"))):
        DistillProcessor.from_pretrained(tmp_path / "gone")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape("file.json is a file")):
        DistillProcessor.from_pretrained("file.json")


def test_save_pretrained_replaces_its_own_file_only(processor, tmp_path):
    path = processor.save_pretrained(tmp_path)
    processor.replace(num_pairs=8).save_pretrained(tmp_path)
    assert json.loads(path.read_text())["config"]["num_pairs"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distill_config.json"]  # no temporary file left

    other = tmp_path / "theirs"
    other.mkdir()
    (other / "distill_config.json").write_text('{"not": "a pds-hf recipe"}')
    foreign = re.escape("theirs/distill_config.json exists and was not written by pds-hf")
    with pytest.raises(FileExistsError, match=foreign):
        processor.save_pretrained(other)
    assert (other / "distill_config.json").read_text() == '{"not": "a pds-hf recipe"}'


def test_push_to_hub_then_from_pretrained(hub, processor, tmp_path):
    processor.push_to_hub("tester/recipe", token=hub.token)
    uploaded = json.loads(hub.repo_files("tester/recipe", repo_type="model")["distill_config.json"])
    assert {k: saved_config(uploaded)[k] for k in RECIPE} == RECIPE and not set(uploaded["config"]) & set(MACHINE)
    assert DistillProcessor.from_pretrained("tester/recipe").config == DistillConfig(**RECIPE)

    # On a branch, and as a dataset repo beside a published set; main keeps the first recipe.
    processor.replace(num_pairs=11).push_to_hub("tester/recipe", revision="m11", token=hub.token)
    assert DistillProcessor.from_pretrained("tester/recipe", revision="m11").config.num_pairs == 11
    assert DistillProcessor.from_pretrained("tester/recipe").config.num_pairs == 37
    processor.push_to_hub("pds-org/set-recipe", repo_type="dataset", token=hub.token)
    assert hub.repo_exists("pds-org/set-recipe", repo_type="dataset")
    assert DistillProcessor.from_pretrained("pds-org/set-recipe").config.num_pairs == 37


def test_save_pretrained_with_push_to_hub(hub, processor, tmp_path):
    path = processor.save_pretrained(
        tmp_path / "local", push_to_hub=True, repo_id="tester/saved", token=hub.token, commit_message="my recipe"
    )
    assert hub.repo_files("tester/saved", repo_type="model")["distill_config.json"] == path.read_bytes()
    assert hub.commits("tester/saved", repo_type="model")[-1].title == "my recipe"
    # Without repo_id the folder's name is the repository's, as in transformers.
    processor.save_pretrained(tmp_path / "named-after-folder", push_to_hub=True, token=hub.token)
    assert hub.repo_exists("tester/named-after-folder", repo_type="model")
    assert DistillProcessor.from_pretrained("tester/saved").config == DistillConfig(**RECIPE)


def test_local_files_only_reads_the_cache_and_never_the_network(hub, processor):
    hub.clear_requests()
    offline = r"tester/recipe is not in the local Hub cache.*\(local_files_only=True\)"
    with pytest.raises(FileNotFoundError, match=offline):
        DistillProcessor.from_pretrained("tester/recipe", local_files_only=True)
    assert hub.requests == []

    processor.push_to_hub("tester/recipe", token=hub.token)
    DistillProcessor.from_pretrained("tester/recipe")  # fills the cache
    hub.clear_requests()
    back = DistillProcessor.from_pretrained("tester/recipe", local_files_only=True)
    assert back.config == DistillConfig(**RECIPE) and hub.requests == []


def test_from_pretrained_of_a_hub_id_without_a_recipe_says_where_it_looked(hub):
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(
            "No pds-hf recipe found for tester/nothing; looked for distill_config.json in the Hub dataset repo"
        ),
    ):
        DistillProcessor.from_pretrained("tester/nothing")
