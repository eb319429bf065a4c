"""The pds-hf command: the demo, a local dataset with local model folders, and its errors."""

import subprocess
import sys

import pytest
from datasets import load_dataset

from pds_hf.cli import main


def test_demo_writes_a_loadable_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["distill", "--demo", "--output", str(out), "--num-pairs", "8", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Distilled 480 pairs (240 images" in printed and "into 8 pairs" in printed
    assert "Stages: read" in printed and "synthesize" in printed
    small = load_dataset(str(out), split="train")
    assert len(small) == 8
    assert small[0]["image"].size == (64, 64)
    assert len(small[0]["text_embedding"]) == 32
    assert (out / "README.md").read_text().startswith("---\n")


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["distill", "--demo", "--output", str(out)])
    assert (out / "keep.txt").read_text() == "mine"


def test_needs_a_dataset_or_demo(tmp_path):
    with pytest.raises(SystemExit, match="--demo"):
        main(["distill", "--output", str(tmp_path / "x")])


def test_local_dataset_and_model_folders(tmp_path, shapes_ds, capsys):
    """The real loading code (from_pretrained on ids/paths), run on local folders of tiny models."""
    from pds_hf.testing import tiny_clip_model, tiny_unclip_pipeline

    model, processor = tiny_clip_model()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    tiny_unclip_pipeline().save_pretrained(tmp_path / "unclip")
    shapes_ds.save_to_disk(str(tmp_path / "src"))
    out = tmp_path / "out"
    code = main(["distill", str(tmp_path / "src"), "--clip-model", str(tmp_path / "clip"),
                 "--unclip-model", str(tmp_path / "unclip"), "--num-pairs", "4", "--steps", "2",
                 "--image-size", "32", "--device", "cpu", "--output", str(out)])
    assert code == 0
    small = load_dataset(str(out), split="train")
    assert len(small) == 4 and small[0]["image"].size == (32, 32)


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, shapes_ds, capsys):
    shapes_ds.rename_column("caption", "sentences").save_to_disk(str(tmp_path / "src"))
    code = main(["distill", str(tmp_path / "src"), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "caption_column" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_entry_point_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "pds_hf.cli", "distill", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--num-pairs" in result.stdout


def test_demo_pushes_to_the_hub(hub, capsys):
    code = main(["distill", "--demo", "--num-pairs", "4", "--steps", "2", "--push-to-hub", "tester/demo-pds",
                 "--license", "cc0-1.0", "--token", hub.token, "--private"])
    assert code == 0
    assert "Published" in capsys.readouterr().out
    files = hub.repo_files("tester/demo-pds")
    assert "README.md" in files and "preview.png" in files
    assert any(name.startswith("data/train-") for name in files)
    small = load_dataset("tester/demo-pds", split="train", token=hub.token)
    assert len(small) == 4


def test_push_without_token_fails_before_any_work(hub, capsys, monkeypatch):
    import pds_hf

    monkeypatch.setattr(pds_hf, "distill", lambda *a, **k: pytest.fail("distilled before checking the token"))
    code = main(["distill", "--demo", "--push-to-hub", "tester/x", "--license", "cc0-1.0"])
    assert code == 2
    assert "token" in capsys.readouterr().err.lower()


@pytest.mark.parametrize("flag, expected", [("--no-normalize", "False"), ("--normalize", "True")])
def test_normalize_flag_reaches_the_config(tmp_path, capsys, flag, expected):
    out = tmp_path / "demo"
    assert main(["distill", "--demo", "--output", str(out), "--num-pairs", "4", "--synthesis", "none", flag]) == 0
    card = (out / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("|") and "normalize" in line]
    assert rows and expected in rows[0], rows
    assert ("(each scaled to unit length)" in card) == (expected == "True")
