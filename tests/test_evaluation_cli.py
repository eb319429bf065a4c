"""pds-hf evaluate / compare, on tiny generated data with tiny random models."""

import argparse
import json
import sys

import pytest

from pds_hf.evaluation.cli import add_parsers, main

FAST = ["--runs", "1", "--epochs", "2", "--eval-every", "1", "--no-cache", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("fresh_evaluation_cache", "one_torch_thread")  # fixtures of conftest.py


def test_subcommands_plug_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="pds-hf")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "evaluate",
            "me/distilled",
            "--test",
            "me/flickr",
            "--validation",
            "me/flickr",
            "--validation-split",
            "val",
            "--student",
            "vit_tiny_patch16_224",
            "--runs",
            "3",
        ]
    )
    assert args.func.__name__ == "evaluate_command"
    assert (args.distilled, args.test, args.test_split, args.validation_split, args.runs) == (
        "me/distilled",
        "me/flickr",
        "test",
        "val",
        3,
    )
    args = parser.parse_args(["compare", "me/flickr", "--test", "me/flickr", "--num-pairs", "10", "20"])
    assert args.func.__name__ == "compare_command" and args.num_pairs == [10, 20]
    assert args.methods == ["pds", "random", "herding", "kcenter"]


def test_pds_hf_command_has_them():
    from pds_hf.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--demo"])
    assert args.func.__name__ == "evaluate_command"


def test_evaluate_demo_prints_and_writes_the_report(tmp_path, capsys):
    report, data = tmp_path / "report.md", tmp_path / "report.json"
    assert main(["evaluate", "--demo", *FAST, "--output", str(report), "--json", str(data)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| Student | Pairs | Runs | IR@1 |")
    assert report.read_text() in printed
    assert "validation set (24 images, 48 captions)" in report.read_text()
    assert json.loads(data.read_text())["num_pairs"] == 8


def test_evaluate_reads_folders(tmp_path, capsys):
    import pds_hf
    from pds_hf.demo import demo_dataset
    from pds_hf.testing import tiny_clip_encoder

    train = demo_dataset(30, seed=0, side=32)
    distilled = pds_hf.distill(
        train, num_pairs=5, clip_model=tiny_clip_encoder(), synthesis="retrieve", image_size=32, device="cpu"
    )
    distilled.save_to_disk(str(tmp_path / "distilled"))
    demo_dataset(12, seed=5, side=32).save_to_disk(str(tmp_path / "test"))
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "distilled"),
                "--test",
                str(tmp_path / "test"),
                "--demo",
                "--validation",
                "0.4",
                *FAST,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| pds-hf/tiny-random-student | 3 | 1 |" in printed
    assert "2 held-out distilled pairs" in printed and "(12 images, 24 captions)" in printed


def test_evaluate_needs_data_or_demo(capsys):
    assert main(["evaluate", "me/distilled"]) == 2
    assert capsys.readouterr().err == "error: missing --test (or pass --demo to try it on tiny generated data).\n"


def test_a_timm_student_without_timm_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["evaluate", "me/distilled", "--test", "me/test", "--student", "nf_resnet50"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install timm" in err and len(err.splitlines()) == 1


def test_compare_demo_writes_table_json_and_plot_or_says_why_not(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--demo",
                "--methods",
                "pds",
                "kcenter",
                "--num-pairs",
                "4",
                "8",
                *FAST,
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    table = (out / "comparison.md").read_text()
    assert table.startswith("| Method | Pairs | IR@1 |")
    rows = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| ") and "±" in line]
    assert rows == [["| pds", "4"], ["| pds", "8"], ["| kcenter", "4"], ["| kcenter", "8"]]
    assert len(json.loads((out / "comparison.json").read_text())) == 4
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot was written" in printed and not (out / "comparison.png").exists()
    else:
        assert (out / "comparison.png").exists()


def test_compare_demo_default_sizes_fit_the_demo_set(tmp_path, capsys):
    assert main(["compare", "--demo", "--methods", "random", *FAST, "--output-dir", str(tmp_path)]) == 0
    assert [entry["num_pairs"] for entry in json.loads((tmp_path / "comparison.json").read_text())] == [8, 16, 32]
