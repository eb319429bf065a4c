"""The report's numbers and its markdown."""

import json
import sys

import pytest

from pds_hf.evaluation.metrics import METRIC_NAMES
from pds_hf.evaluation.report import EvaluationReport, comparison_markdown, plot_comparison
from pds_hf.evaluation.settings import TrainSettings

# The defaults, so the protocol sentence below also pins them to the reference code's values.
SETTINGS = TrainSettings().to_dict()


def make_report(values=(10.0, 20.0), selection="best mean recall on validation set (10 images, 50 captions)"):
    runs = [{name: value + i for i, name in enumerate(METRIC_NAMES)} for value in values]
    return EvaluationReport(
        runs=runs,
        selected_epochs=[60, 100][: len(values)],
        selection=selection,
        test="test set (1,000 images, 5,000 captions)",
        student="nf_resnet50",
        encoder="openai/clip-vit-large-patch14",
        num_pairs=100,
        seeds=[0, 1][: len(values)],
        settings=SETTINGS,
    )


def test_mean_and_population_std_over_runs():
    report = make_report()
    assert report.mean["IR@1"] == 15.0 and report.std["IR@1"] == 5.0
    assert report.mean["mean"] == 21.0 and list(report.mean) == list(METRIC_NAMES)


def test_markdown_table_and_notes():
    lines = make_report().to_markdown().splitlines()
    assert lines[0] == "| Student | Pairs | Runs | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | Mean |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == (
        "| nf_resnet50 | 100 | 2 | 15.00 ± 5.00 | 16.00 ± 5.00 | 17.00 ± 5.00 | 18.00 ± 5.00 "
        "| 19.00 ± 5.00 | 20.00 ± 5.00 | 21.00 ± 5.00 |"
    )
    notes = "\n".join(lines[3:])
    assert "- Test set: test set (1,000 images, 5,000 captions); every caption of an image counts" in notes
    assert (
        "- Epoch selection: best mean recall on validation set (10 images, 50 captions). "
        "Selected epochs: 60, 100." in notes
    )
    assert (
        "- Protocol: frozen student `nf_resnet50`, frozen text features from `openai/clip-vit-large-patch14`, "
        "trained a text head; InfoNCE with fixed temperature 0.07; SGD lr 0.2, momentum 0.9, weight decay "
        "0.0005, batch 128, 100 epochs, lr x0.1 from epoch 51."
    ) in notes
    assert "- Mean ± std (population) over 2 run(s), seeds 0, 1." in notes
    assert str(make_report()) == make_report().to_markdown()


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(make_report().to_dict()))
    assert data["mean"]["IR@1"] == 15.0 and data["std"]["mean"] == 5.0 and len(data["runs"]) == 2


def test_comparison_table_keeps_the_method_order_and_sorts_sizes():
    results = [
        ("random", 200, make_report((30.0,))),
        ("pds", 200, make_report((40.0,))),
        ("random", 100, make_report((20.0,))),
        ("pds", 100, make_report((25.0,))),
    ]
    rows = [line for line in comparison_markdown(results).splitlines() if line.startswith("| ") and "±" in line]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| random", "100"],
        ["| random", "200"],
        ["| pds", "100"],
        ["| pds", "200"],
    ]
    assert rows[0].endswith("| 26.00 ± 0.00 |")


def test_plot_is_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot_comparison([("pds", 100, make_report())], tmp_path / "plot.png") is False
    assert not (tmp_path / "plot.png").exists()
    assert "pip install matplotlib" in caplog.text


def test_plot_is_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    results = [
        ("pds", 100, make_report()),
        ("pds", 200, make_report((30.0, 32.0))),
        ("random", 100, make_report((5.0, 6.0))),
    ]
    assert plot_comparison(results, tmp_path / "plot.png") is True
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
