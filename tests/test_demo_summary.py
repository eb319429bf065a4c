"""The demo run of the command line: bad input fails before any model is built, the time of every stage adds up to
the total (in the summary and in the card), and the distilled pairs are printed."""

import contextlib
import io
import re
import time

import pytest
from datasets import load_dataset

from pds_hf.cli import main

STAGES = re.compile(r"^Stages: (?P<stages>.+) = (?P<total>\d+\.\d\d)s$", re.MULTILINE)


def _stages(line: str) -> dict:
    return {name: float(value) for name, value in re.findall(r"(\w[\w ]*?) (\d+\.\d\d)s(?:, |$)", line)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main(["distill", "--demo", "--output", str(out), "--num-pairs", "5", "--steps", "2"])
    wall = time.perf_counter() - start
    assert code == 0
    return out, printed.getvalue(), wall


@pytest.mark.parametrize("num_pairs", ["0", "-5", "1000"])
def test_a_bad_num_pairs_fails_before_any_model_is_built(num_pairs, tmp_path, capsys, monkeypatch):
    import pds_hf.testing

    built = []
    for name in ("tiny_clip_encoder", "tiny_unclip_pipeline"):
        monkeypatch.setattr(pds_hf.testing, name, lambda *args, name=name, **kwargs: built.append(name))
    assert main(["distill", "--demo", "--num-pairs", num_pairs, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"num[-_]pairs", err)
    if num_pairs == "1000":  # the fix names flags and a value that works: 480 pairs, 384 left after rm_ratio 0.2
        assert "pass --num-pairs 384 or fewer, or a smaller --rm-ratio" in err and "num_pairs" not in err
    assert built == []


def test_every_second_of_the_run_is_in_a_named_stage(demo_run):
    _, printed, wall = demo_run
    match = STAGES.search(printed)
    stages = _stages(match["stages"])
    total = float(match["total"])
    assert {"load data", "build demo models", "read", "encode", "select", "synthesize", "write output"} <= set(stages)
    assert abs(sum(stages.values()) - total) < 0.006
    assert f"into 5 pairs in {match['total']}s" in printed
    # Timed from outside the command: only parsing the command line and checking the folder are left out.
    assert wall - 1.5 <= total <= wall + 0.01


def test_the_card_lists_the_same_stages_up_to_writing(demo_run):
    out, printed, _ = demo_run
    stages = _stages(STAGES.search(printed)["stages"])
    card = (out / "README.md").read_text()
    table = card[card.index("| stage | seconds |") :]
    rows = dict(re.findall(r"^\| ([\w ]+) \| (\d+\.\d\d) \|$", table[: table.index("| total |") + 40], re.MULTILINE))
    total = float(rows.pop("total"))
    assert list(rows) == [name for name in stages if name != "write output"]
    assert all(abs(float(rows[name]) - stages[name]) < 0.006 for name in rows)
    assert abs(sum(float(value) for value in rows.values()) - total) < 0.006


def test_the_demo_prints_its_pairs(demo_run):
    out, printed, _ = demo_run
    small = load_dataset(str(out), split="train")
    lines = printed.splitlines()
    assert re.fullmatch(r"\s*row\s+support\s+caption", lines[0])
    for i, row in enumerate(small):
        assert re.fullmatch(rf"\s*{i}\s+{row['support']}\s+{re.escape(row['caption'])}", lines[1 + i])


def test_a_streamed_demo_card_still_names_the_demo_and_its_license(tmp_path, capsys):
    from huggingface_hub import DatasetCard

    out = tmp_path / "streamed"
    assert (
        main(["distill", "--demo", "--streaming", "--synthesis", "retrieve", "--num-pairs", "4", "--output", str(out)])
        == 0
    )
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert "| dataset | the pds-hf demo shapes (made in code by `pds_hf.demo.demo_dataset()`) |" in card.text
