"""One progress rule for pds-hf and the libraries it calls: bars on a terminal, log lines or nothing in a file."""

import os
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    from pds_hf.testing import save_tiny_clip, save_tiny_unclip

    root = tmp_path_factory.mktemp("models")
    return save_tiny_clip(root / "clip"), save_tiny_unclip(root / "unclip")


def _env(tmp_path) -> dict:
    # Local folders only: nothing may reach for the Hub.
    return {
        **os.environ,
        "PDS_HF_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
    }


def _run_logging_to_a_file(args: list[str], tmp_path):
    """Python with ``args``, its stderr written to a file (no terminal): the finished process and that file's text."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        result = subprocess.run(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env(tmp_path), timeout=600
        )
    return result, log.read_text()


def _assert_no_bars(log: str) -> None:
    assert "\r" not in log and "it/s" not in log, log
    for bar in (
        "Loading weights",
        "Loading pipeline components",
        "Map",
        "Writing parquet shards",
        "Generating train split",
        "torchvision",
    ):
        assert bar not in log, log


def test_the_command_writes_no_bars_into_a_log_file(tmp_path, shapes_ds, model_folders, small_run):
    clip, unclip = model_folders
    (tmp_path / "src").mkdir()
    shapes_ds.to_parquet(str(tmp_path / "src" / "train.parquet"))
    models = ["--clip-model", clip, "--unclip-model", unclip, "--steps", "2"]
    result, text = _run_logging_to_a_file(
        ["-m", "pds_hf", "distill", str(tmp_path / "src"), *models, *small_run, "--output", str(tmp_path / "out")],
        tmp_path,
    )
    assert result.returncode == 0, text
    _assert_no_bars(text)
    assert "Wrote" in result.stdout


def test_python_loading_and_synthesis_write_no_bars_into_a_log_file(tmp_path, model_folders):
    clip, unclip = model_folders
    script = textwrap.dedent(f"""
        import numpy as np
        from pds_hf.encode import load_encoder
        from pds_hf.synthesize import load_unclip, synthesize_unclip

        encoder = load_encoder({clip!r})
        pipe = load_unclip({unclip!r})
        pipe.set_progress_bar_config(leave=True)  # a user's pipeline, its per-step bars on
        synthesize_unclip(pipe, np.zeros((2, 32), np.float32), ["a", "b"], num_inference_steps=2, image_size=None)
        assert pipe._progress_bar_config == {{"leave": True}}, pipe._progress_bar_config
        print("done")
    """)
    result, text = _run_logging_to_a_file(["-c", script], tmp_path)
    assert result.returncode == 0 and result.stdout == "done\n", text
    _assert_no_bars(text)


def test_library_output_switches_bars_off_in_a_file_and_back_on(caplog, monkeypatch):
    import logging

    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled as hub_off

    from pds_hf import progress as module

    monkeypatch.setattr(module, "_on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="pds_hf")
    assert not datasets.utils.are_progress_bars_disabled() and not hub_off()
    with module.library_output():
        assert datasets.utils.are_progress_bars_disabled() and hub_off()
        with module.library_output():  # nested: still off, and back on only when the outer block ends
            pass
        assert datasets.utils.are_progress_bars_disabled()
        with module.progress(3, desc="Counting", every=0) as bar:  # pds-hf's own lines go on
            bar.update(3)
    assert not datasets.utils.are_progress_bars_disabled() and not hub_off()
    assert "Counting: 3/3" in caplog.text

    datasets.disable_progress_bars()  # the user's choice stands, and silences pds-hf too
    try:
        with module.library_output():
            assert module.progress(3, desc="Quiet").disable
        assert datasets.utils.are_progress_bars_disabled()
    finally:
        datasets.enable_progress_bars()
