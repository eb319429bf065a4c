"""What a user sees when ``python -m pds_hf`` fails: one ``error:`` line on stderr, no traceback, the right exit code.

Every case runs as its own process, all of them started at once (each one pays for importing torch and the
libraries; run one after another they would take a minute).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "pds_hf"]
# Started with `python -c` so the test knows when the command is running: it prints "ready" first.
INTERRUPTIBLE = (
    "import sys; from pds_hf.cli import main; print('ready', flush=True); "
    "sys.exit(main(['distill', '--demo', '--num-pairs', '16', '--steps', '50', '--output', sys.argv[1]]))"
)


def _cases(tmp):
    src, data_folder, empty = tmp / "src", tmp / "parquet", tmp / "empty-model"
    offline = {"HF_HUB_OFFLINE": "1"}
    run = ["--num-pairs", "4", "--synthesis", "retrieve", "--device", "cpu"]
    # name: (arguments, extra environment, exit code, words the error line must hold)
    return {
        "missing folder": (
            ["distill", str(tmp / "nope"), "-o", str(tmp / "o1")],
            {},
            2,
            [str(tmp / "nope"), "no such folder"],
        ),
        "offline hub, unknown dataset": (
            ["distill", "nobody/no-such-dataset", "-o", str(tmp / "o2")],
            offline,
            1,
            ["nobody/no-such-dataset", "HF_HUB_OFFLINE"],
        ),
        "offline hub, unknown model": (
            ["distill", str(src), "--clip-model", "nobody/no-such-model", *run, "-o", str(tmp / "o3")],
            offline,
            1,
            ["--clip-model nobody/no-such-model", "HF_HUB_OFFLINE"],
        ),
        "model folder that cannot be loaded": (
            ["distill", str(src), "--clip-model", str(empty), *run, "-o", str(tmp / "o4")],
            {},
            2,
            [str(empty)],
        ),
        "split of a save_to_disk folder": (
            ["distill", str(src), "--split", "validation", "-o", str(tmp / "o5")],
            {},
            2,
            ["'validation'", "drop --split"],
        ),
        "split of a data folder": (
            ["distill", str(data_folder), "--split", "validation", "-o", str(tmp / "o6")],
            {},
            2,
            ["'train'", "--split"],
        ),
        "no dataset": (["distill", "-o", str(tmp / "o7")], {}, 2, ["--demo"]),
        "no output": (["distill", "--demo"], {}, 2, ["--output", "--push-to-hub"]),
        "unknown flag": (["distill", "--demo", "--frobnicate"], {}, 2, ["--frobnicate"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory, shapes_ds):
    tmp = tmp_path_factory.mktemp("cli-errors")
    shapes_ds.select(range(12)).save_to_disk(str(tmp / "src"))
    (tmp / "parquet").mkdir()
    shapes_ds.select(range(12)).to_parquet(str(tmp / "parquet" / "train.parquet"))
    (tmp / "empty-model").mkdir()
    cases = _cases(tmp)
    started = {
        name: subprocess.Popen(
            [*COMMAND, *argv], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (argv, env, _, _) in cases.items()
    }
    started["verbose"] = subprocess.Popen(
        [*COMMAND, "-v", *cases["missing folder"][0]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started["version"] = subprocess.Popen(
        [*COMMAND, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    interrupted = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, str(tmp / "o8")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert interrupted.stdout.readline() == "ready\n"
    time.sleep(2)  # inside the run by now: the demo takes far longer
    interrupted.send_signal(signal.SIGINT)
    started["interrupted"] = interrupted
    finished = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        finished[name] = process.returncode, out, err
    cases["interrupted"] = ([], {}, 130, ["interrupted", "run the same command again to resume"])
    return cases, finished


CASE_NAMES = [*_cases(Path("unused")), "interrupted"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_failure_is_one_error_line_and_its_exit_code(results, name):
    cases, finished = results
    _, _, expected_code, words = cases[name]
    code, _, err = finished[name]
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines and "error: " in lines[-1], err
    assert [line for line in lines if "error: " in line] == [lines[-1]], err
    assert all(word in lines[-1] for word in words), lines[-1]
    assert code == expected_code, err


def test_verbose_adds_the_traceback_above_the_same_line(results):
    cases, finished = results
    code, _, err = finished["verbose"]
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1] == finished["missing folder"][2].strip().splitlines()[-1]


def test_version(results):
    from pds_hf import __version__

    _, finished = results
    assert finished["version"][:2] == (0, f"pds-hf {__version__}\n")


# A command that has forked a worker (as image decoding does) when Ctrl-C reaches the terminal's process group.
FORKED = (
    "import os, time; from argparse import Namespace; from pds_hf.cli_base import _exit_on_interrupt\n"
    "with _exit_on_interrupt(Namespace(command='distill'), enabled=True):\n"
    "    if os.fork() == 0:\n"
    "        os.write(1, b'worker\\n'); time.sleep(60); os._exit(0)\n"
    "    os.write(1, b'ready\\n'); time.sleep(60)\n"
)  # one write each: lines not interleaved


def test_ctrl_c_with_a_forked_worker_prints_one_line():
    process = subprocess.Popen(
        [sys.executable, "-c", FORKED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # Both running their own code (a signal that reaches a child still starting up from fork() is dropped).
    assert sorted([process.stdout.readline(), process.stdout.readline()]) == ["ready\n", "worker\n"]
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does: every process of the group gets it
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: interrupted (Ctrl-C); run the same command again to resume: finished stages are kept in the cache."
    ]
