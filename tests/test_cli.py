"""The pds-hf command: the demo, a local dataset with local model folders, publishing, its errors, its logging."""

import argparse
import json
import logging
import subprocess
import sys

import pytest
from datasets import load_dataset

from pds_hf.cli import build_parser, main
from pds_hf.cli_base import run_command


def test_demo_writes_a_loadable_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--demo", "--output", "demo", "--num-pairs", "8", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Distilled 480 pairs (240 images" in printed and "into 8 pairs" in printed
    assert "Stages: " in printed and "synthesize" in printed
    # A path load_dataset reads as a folder from anywhere ('demo' alone is also a Hub id, found in its cache).
    assert f"load_dataset({str(out)!r}, split='train')" in printed
    small = load_dataset(str(out), split="train")
    assert len(small) == 8
    assert small[0]["image"].size == (64, 64)
    assert len(small[0]["text_embedding"]) == 32
    assert (out / "README.md").read_text().startswith("---\n")


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):
        assert main(["distill", "--demo", "--output", str(out), *overwrite]) == 2
        err = capsys.readouterr().err
        assert "holds files pds-hf did not write (keep.txt)" in err and "--overwrite" not in err, err
    assert (out / "keep.txt").read_text() == "mine"


def test_needs_a_dataset_or_demo(tmp_path, capsys):
    assert main(["distill", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "error: no dataset: name one (Hub id or folder), or pass --demo.\n"


def test_every_distill_flag_has_help():
    parser = build_parser()
    distill = parser._subparsers._group_actions[0].choices["distill"]
    undocumented = [action.option_strings or action.dest for action in distill._actions if not action.help]
    assert undocumented == []
    # A flag with a default (or a switch with both ways) says which it is.
    no_default = [
        action.option_strings
        for action in distill._actions
        if "default" not in action.help
        and ((action.nargs != 0 and action.default is not None) or isinstance(action, argparse.BooleanOptionalAction))
    ]
    assert no_default == []


def test_local_dataset_and_model_folders(tmp_path, shapes_ds, capsys, small_run):
    """The real loading code (from_pretrained on ids/paths), run on local folders of tiny models."""
    from pds_hf.testing import tiny_clip_model, tiny_unclip_pipeline

    model, processor = tiny_clip_model()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    tiny_unclip_pipeline().save_pretrained(tmp_path / "unclip")
    shapes_ds.save_to_disk(str(tmp_path / "src"))
    out = tmp_path / "out"
    unclip = ["--unclip-model", str(tmp_path / "unclip"), "--steps", "2"]
    code = main(
        [
            "distill",
            str(tmp_path / "src"),
            "--clip-model",
            str(tmp_path / "clip"),
            *unclip,
            *small_run,
            "--output",
            str(out),
        ]
    )
    assert code == 0
    small = load_dataset(str(out), split="train")
    assert len(small) == 4 and small[0]["image"].size == (32, 32)


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, shapes_ds, capsys):
    shapes_ds.rename_column("caption", "sentences").save_to_disk(str(tmp_path / "src"))
    code = main(["distill", str(tmp_path / "src"), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Pass --caption-column CAPTION_COLUMN to name the caption column." in err and "caption_column" not in err
    assert not (tmp_path / "out").exists()


def test_messages_name_flags_not_python_keywords(tmp_path, shapes_ds, capsys):
    """One translation for every error and log line of the command: Python's keywords become its flags."""
    from argparse import Namespace

    from pds_hf.cli_base import command_line_words, error_line

    shapes_ds.save_to_disk(str(tmp_path / "src"))
    assert main(["distill", str(tmp_path / "src"), "--image-column", "caption", "--output", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "error: Column 'caption' holds List(Value('string')), not images: pass --image-column IMAGE_COLUMN "
        "to name the column of images. A column of image file paths or bytes must be made an Image column "
        "first."
    )

    parser = build_parser()
    args = parser.parse_args(["distill", "me/pairs", "-o", "out"])
    assert error_line(
        ValueError(
            "Pass license='<Hub license id>', e.g. license='cc-by-4.0', or overwrite=True; "
            "normalize=False, num_inference_steps=5 and encode_batch_size=8. Not in code: "
            "load_dataset('./x', split='train'), nor in a path: /data/split=train/."
        ),
        args,
        parser,
    ) == (
        2,
        "Pass --license '<Hub license id>', e.g. --license cc-by-4.0, or --overwrite; --no-normalize, --steps 5 "
        "and --batch-size 8. Not in code: load_dataset('./x', split='train'), nor in a path: /data/split=train/.",
    )
    evaluate = parser.parse_args(["evaluate", "me/set"])
    assert error_line(ValueError("Pass train_image_head=True or drop embed_dim."), evaluate, parser)[1] == (
        "Pass --train-image-head or drop embed_dim."
    )
    assert command_line_words("pass use_cache=True (in Python: x = f(a=1))", parser) == "pass use_cache=True"

    def warn(args):
        logging.getLogger("pds_hf.publish.folder").warning("License unknown. Pass license=... before sharing.")
        return 0

    assert run_command(Namespace(func=warn, verbose=False, command="distill"), parser) == 0
    assert capsys.readouterr().err == "warning: License unknown. Pass --license LICENSE before sharing.\n"


@pytest.mark.parametrize("streaming", [(), ("--streaming",)])
def test_a_split_the_folder_lacks_is_named_with_the_fix(streaming, tmp_path, shapes_ds, capsys):
    shapes_ds.to_parquet(str(tmp_path / "train.parquet"))
    code = main(["distill", str(tmp_path), *streaming, "--split", "test", "--output", str(tmp_path / "out")])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'train'" in last and last.endswith("Pass one of them to --split.")


def test_entry_point_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "pds_hf.cli", "distill", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--num-pairs" in result.stdout


def test_demo_pushes_to_the_hub(hub, capsys):
    code = main(
        [
            "distill",
            "--demo",
            "--num-pairs",
            "4",
            "--steps",
            "2",
            "--push-to-hub",
            "tester/demo-pds",
            "--license",
            "cc0-1.0",
            "--token",
            hub.token,
            "--private",
        ]
    )
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
    assert code == 1
    assert "token" in capsys.readouterr().err.lower()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from pds_hf.testing import tiny_clip_model

    folder = tmp_path_factory.mktemp("models") / "clip"
    model, processor = tiny_clip_model()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def retrieve_run(source, clip_folder, small_run, *flags) -> list[str]:
    """``pds-hf distill`` of the folder ``source`` with the CLIP folder and retrieved images, as a small run."""
    return ["distill", str(source), "--clip-model", str(clip_folder), "--synthesis", "retrieve", *small_run, *flags]


@pytest.mark.parametrize("license_flag", [[], ["--license", "mit"]])
def test_a_local_dataset_pushes_to_the_hub_naming_its_source(
    hub, tmp_path, shapes_ds, clip_folder, capsys, license_flag, small_run
):
    """The publish path of the command, end to end: without --license the source folder's license is used."""
    source = tmp_path / "src"
    shapes_ds.save_to_disk(str(source))
    info = json.loads((source / "dataset_info.json").read_text())
    (source / "dataset_info.json").write_text(json.dumps({**info, "license": "cc-by-4.0"}))
    hub_flags = ["--push-to-hub", "tester/shapes-pds", "--token", hub.token, *license_flag]
    code = main(retrieve_run(source, clip_folder, small_run, *hub_flags))
    assert code == 0, capsys.readouterr().err
    readme = hub.repo_files("tester/shapes-pds")["README.md"].decode()
    assert f"license: {'mit' if license_flag else 'cc-by-4.0'}\n" in readme
    # The source by its folder's name (a reader cannot look up a local path), and not the run record.
    assert f"a local folder ({source.name})" in readme and str(source) not in readme and "'num_pairs'" not in readme
    assert len(load_dataset("tester/shapes-pds", split="train", token=hub.token)) == 4


def test_streaming_a_folder_of_parquet_files_gives_the_same_set(tmp_path, shapes_ds, clip_folder, capsys, small_run):
    import pds_hf

    source = tmp_path / "src"
    source.mkdir()
    for i in range(3):  # three input shards
        shapes_ds.shard(3, i, contiguous=True).to_parquet(str(source / f"part-{i}.parquet"))
    outputs = {}
    for flags in ((), ("--streaming",)):
        out = tmp_path / ("streamed" if flags else "loaded")
        code = main(retrieve_run(source, clip_folder, small_run, *flags, "--output", str(out)))
        assert code == 0, capsys.readouterr().err
        outputs[flags] = load_dataset(str(out), split="train"), pds_hf.metadata(str(out))
    (streamed, streamed_record), (loaded, loaded_record) = outputs[("--streaming",)], outputs[()]
    assert streamed["caption"] == loaded["caption"] and streamed["support"] == loaded["support"]
    assert streamed_record["streaming"] is True and streamed_record["source"]["n_shards"] == 3
    assert loaded_record.get("streaming") is not True


@pytest.mark.parametrize("flag, expected", [("--no-normalize", "False"), ("--normalize", "True")])
def test_normalize_flag_reaches_the_config(tmp_path, capsys, flag, expected):
    out = tmp_path / "demo"
    assert main(["distill", "--demo", "--output", str(out), "--num-pairs", "4", "--synthesis", "none", flag]) == 0
    card = (out / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("|") and "normalize" in line]
    assert rows and expected in rows[0], rows
    assert ("(each scaled to unit length)" in card) == (expected == "True")


# Progress and log lines
# ----------------------
# Under pytest stderr is not a terminal, as when a user redirects it to a file: progress comes as log lines.

PROGRESS_LINE = r"^{}: {} \([0-9.e+]+ {}s/s\)$"


def _progress_lines(caplog, desc):
    return [r.getMessage() for r in caplog.records if r.name == "pds_hf.progress" and r.getMessage().startswith(desc)]


def test_progress_logs_counts_and_rate_when_stderr_is_a_file(caplog):
    import re

    from pds_hf.progress import progress

    caplog.set_level(logging.INFO, logger="pds_hf")
    with progress(3, desc="Encoding images", every=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert [re.sub(r"\(.*\)", "(rate)", line) for line in _progress_lines(caplog, "Encoding images")] == [
        "Encoding images: 1/3 (rate)",
        "Encoding images: 2/3 (rate)",
        "Encoding images: 3/3 (rate)",
    ]
    assert all(
        re.match(PROGRESS_LINE.format("Encoding images", r"\d/3", "item"), line)
        for line in _progress_lines(caplog, "Encoding images")
    )
    assert list(progress(iter("ab"), desc="Reading rows", unit="row", every=0)) == ["a", "b"]
    assert re.match(PROGRESS_LINE.format("Reading rows", "2", "row"), _progress_lines(caplog, "Reading rows")[-1])


def test_progress_is_quiet_for_short_loops_when_disabled_or_switched_off(caplog, monkeypatch):
    import datasets

    from pds_hf.progress import LogProgress, progress

    caplog.set_level(logging.INFO, logger="pds_hf")
    bar = progress(range(5), desc="Short")
    assert isinstance(bar, LogProgress) and list(bar) == list(range(5))
    assert list(progress(range(5), desc="Hidden", disable=True, every=0)) == list(range(5))
    datasets.disable_progress_bars()
    try:
        with progress(2, desc="Switched off", every=0) as off:
            off.update(2)
    finally:
        datasets.enable_progress_bars()
    assert [r for r in caplog.records if r.name == "pds_hf.progress"] == []


def test_progress_is_a_tqdm_bar_on_a_terminal(monkeypatch):
    from datasets.utils import tqdm

    from pds_hf.progress import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress(2, desc="Encoding images") as bar:
        assert isinstance(bar, tqdm) and not bar.disable and bar.total == 2


def test_encoding_and_synthesis_report_progress(caplog, monkeypatch, shapes_ds, tiny_encoder, tiny_pipe):
    import numpy as np

    from pds_hf import progress
    from pds_hf.encode import encode_table
    from pds_hf.inputs import read_pairs
    from pds_hf.synthesize import synthesize_unclip

    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0)
    caplog.set_level(logging.INFO, logger="pds_hf")
    ds = shapes_ds.select(range(6))
    encode_table(tiny_encoder, ds, read_pairs(ds), batch_size=4)
    assert _progress_lines(caplog, "Encoding images")[-1].startswith("Encoding images: 6/6 (")
    assert _progress_lines(caplog, "Encoding captions")[-1].startswith("Encoding captions: 12/12 (")
    synthesize_unclip(
        tiny_pipe, np.zeros((2, 32), np.float32), ["a", "b"], num_inference_steps=1, batch_size=1, image_size=None
    )
    assert [line.split(" (")[0] for line in _progress_lines(caplog, "Synthesizing")] == [
        "Synthesizing images: 1/2",
        "Synthesizing images: 2/2",
    ]


def _run_logging(verbose, capsys):
    from argparse import Namespace

    from pds_hf.progress import progress

    def command(args):
        logging.getLogger("pds_hf.processor").info("resuming: 8 of 16 images already made")
        try:
            raise OSError("disk hiccup")
        except OSError:
            logging.getLogger("pds_hf.encode").warning("Retrying a shard", exc_info=True)
        logging.getLogger("transformers.utils.import_utils").warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
        )
        with progress(2, desc="Encoding images", every=0) as bar:
            bar.update(2)
        return 0

    assert run_command(Namespace(func=command, verbose=verbose)) == 0
    return capsys.readouterr().err


def test_the_command_shows_info_lines_one_line_each(capsys):
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    transformers_logger = logging.getLogger("transformers.utils.import_utils")
    transformers_logger.addHandler(handler)
    try:
        err = _run_logging(False, capsys)
        assert err.startswith(
            "resuming: 8 of 16 images already made\nwarning: Retrying a shard\nEncoding images: 2/2 ("
        )
        assert "Traceback" not in err and len(err.splitlines()) == 3
        assert seen == []  # the torchvision note is dropped, and shown under -v
        err = _run_logging(True, capsys)
        assert "Traceback" in err and "pds_hf.processor INFO: resuming: 8 of 16 images already made" in err
        assert len(seen) == 1
    finally:
        transformers_logger.removeHandler(handler)
    assert logging.getLogger("pds_hf").handlers == []


def test_error_lines_name_what_failed_and_pick_the_exit_code():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pds_hf.cli_base import CommandError, UsageError, error_line

    parser = build_parser()
    args = parser.parse_args(["distill", "me/pairs", "--clip-model", "me/clip", "-o", "out"])
    assert error_line(UsageError("bad flag"), args, parser) == (2, "bad flag")
    assert error_line(CommandError("no network"), args, parser) == (1, "no network")
    assert error_line(KeyError("The dataset has no caption column 'x'."), args, parser) == (
        2,
        "The dataset has no caption column 'x'.",
    )
    offline = OSError("We couldn't connect to 'https://huggingface.co'\nCheck your connection.")
    code, line = error_line(offline, args, parser)
    assert code == 1 and line.startswith("We couldn't connect to 'https://huggingface.co' Check your connection.")
    code, line = error_line(LocalEntryNotFoundError("me/clip is not in the cache"), args, parser)
    assert code == 1 and line.startswith("me/clip is not in the cache (LocalEntryNotFoundError); ")
    assert error_line(KeyboardInterrupt(), args, parser)[0] == 130
    code, line = error_line(RuntimeError("boom"), args, parser)
    assert code == 1 and line.startswith("RuntimeError: boom; rerun with -v")


def _raised(load, *args):
    try:
        load(*args)
    except Exception as err:  # noqa: BLE001 - the test looks at whatever the loader raised
        return err
    pytest.fail(f"{load.__name__} loaded")


def test_only_the_model_that_failed_to_load_is_named(monkeypatch):
    """A load error names the flag of the model whose loader raised it, not both models."""
    import diffusers
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pds_hf.cli_base import error_line
    from pds_hf.encode import TransformersEncoder, load_encoder
    from pds_hf.synthesize import load_unclip

    def no_connection(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache.")

    monkeypatch.setattr(TransformersEncoder, "from_pretrained", no_connection)
    monkeypatch.setattr(diffusers.StableUnCLIPImg2ImgPipeline, "from_pretrained", not_cached)
    parser = build_parser()
    args = parser.parse_args(
        ["distill", "me/pairs", "--clip-model", "me/clip", "--unclip-model", "me/unclip", "-o", "out"]
    )
    code, line = error_line(_raised(load_encoder, "me/clip"), args, parser)
    assert code == 1 and "--clip-model me/clip" in line and "--unclip-model" not in line, line
    code, line = error_line(_raised(load_unclip, "me/unclip"), args, parser)
    assert code == 1 and "--unclip-model me/unclip" in line and "--clip-model" not in line, line


def test_an_error_that_knows_its_option_is_shown_with_the_flag_and_its_exit_code():
    from pds_hf.cli_base import error_line

    class LoadError(OSError):  # the shape of pds_hf.hub_models.ModelLoadError
        option = "clip_model"

        def __init__(self, message, hub_unreachable):
            super().__init__(message)
            self.hub_unreachable = hub_unreachable

    parser = build_parser()
    args = parser.parse_args(["distill", "me/pairs", "--clip-model", "me/clip", "-o", "out"])
    assert error_line(
        LoadError(
            "Could not load clip_model='me/clip': no config.json; pass a folder written by save_pretrained.", False
        ),
        args,
        parser,
    ) == (2, "Could not load --clip-model me/clip: no config.json; pass a folder written by save_pretrained.")
    assert error_line(
        LoadError("Could not load clip_model='me/clip': the Hub could not be reached; unset HF_HUB_OFFLINE.", True),
        args,
        parser,
    ) == (1, "Could not load --clip-model me/clip: the Hub could not be reached; unset HF_HUB_OFFLINE.")


def test_verbose_errors_point_to_the_traceback_shown_not_to_v():
    from pds_hf.cli_base import error_line

    parser = build_parser()
    for flags, hint in (([], "rerun with -v for the traceback"), (["-v"], "the traceback is above")):
        args = parser.parse_args([*flags, "distill", "me/pairs", "-o", "out"])
        for err in (RuntimeError("boom"), OSError("disk hiccup")):
            line = error_line(err, args, parser)[1]
            assert hint in line and ("-v" in line) == (not flags), line


def test_log_lines_name_a_stage_by_its_folder_and_a_finished_one_is_reused(tmp_path, caplog, shapes_ds, tiny_encoder):
    from pds_hf.cache import MemoryStage, Stage, log_found
    from pds_hf.encode import encode_table
    from pds_hf.inputs import read_pairs

    caplog.set_level(logging.INFO, logger="pds_hf")
    stage = Stage(tmp_path / "encode-0123")
    assert str(stage) == str(tmp_path / "encode-0123") and "Stage(" not in str(MemoryStage())
    ds = shapes_ds.select(range(6))
    for _ in range(2):
        encode_table(tiny_encoder, ds, read_pairs(ds), batch_size=4, stage=stage)
    lines = [r.getMessage() for r in caplog.records if str(stage) in r.getMessage()]
    assert lines and not any("Stage(" in line for line in lines), lines

    caplog.clear()
    log_found(stage, 3, 3, "encoded image shards")
    log_found(stage, 1, 3, "encoded image shards")
    log_found(stage, 0, 3, "encoded image shards")
    assert [r.getMessage() for r in caplog.records] == [
        f"Reusing the finished result: all 3 encoded image shards found in {stage}.",
        f"Resuming: 1 of 3 encoded image shards found in {stage}.",
    ]
