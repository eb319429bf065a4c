"""Machine description and result logging shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
CACHE = Path(__file__).with_name("cache")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def versions(
    names=(
        "numpy",
        "scipy",
        "faiss-cpu",
        "faiss-gpu",
        "scikit-learn",
        "torch",
        "transformers",
        "diffusers",
        "datasets",
        "pillow",
    ),
) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(out)


def describe() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {ram_gib():.0f} GiB RAM, Python {platform.python_version()}, "
        f"{versions()}; load average at the end {', '.join(f'{v:.1f}' for v in load)}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_table(title: str, header: str, row: str, results: list[dict]) -> None:
    """Append the markdown table ``title`` to the results file: the columns named in ``header`` (``"a | b"``),
    one row per result, the cells of ``row`` (``"{n:,} | {seconds:.1f}"``) formatted with its values."""
    cells = row.split(" | ")
    rows = [[cell.format(**result) for cell in cells] for result in results]
    append_results(title, markdown_table(header.split(" | "), rows))


def append_results(title: str, body: str, path: Path = RESULTS) -> None:
    """Append one run (machine, command, table and notes) to the results file."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title} ({stamp})\n\n- Machine: {describe()}\n- Command: `{command()}`\n\n{body.rstrip()}\n"
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    with path.open("a") as f:
        f.write(text)
    print(text)


def memory_status() -> dict[str, float]:
    """This process's resident memory from ``/proc/self/status``, in MiB: ``RssAnon`` (anonymous
    pages: what a computation really holds), ``RssFile`` (file-backed pages, e.g. memory-mapped inputs
    the kernel may drop at will) and ``VmHWM`` (peak of the two together)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _pss_anon_mb(pid: int) -> float:
    """``Pss_Anon`` of a process in MiB (0 once it has exited): anonymous pages shared after a fork are split
    between the processes sharing them, so that a sum over processes counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class AnonPeak:
    """Samples ``RssAnon`` every ``interval`` seconds in a background thread while in the ``with`` block;
    ``peak_mb`` is the highest sample (numpy and faiss release the GIL, so the sampler keeps running
    through long calls).

    With ``children``, ``total_mb`` is also the peak of ``Pss_Anon`` summed over this process and its child
    processes (decode workers, say), sampled every ``children_interval`` seconds: reading ``smaps_rollup``
    walks the page tables, a CPU cost that would otherwise be counted as the measured work's.

    Example:
        ```py
        >>> with AnonPeak() as peak:
        ...     work()
        >>> peak.peak_mb
        >>> with AnonPeak(children=True) as peak:
        ...     work_in_a_pool()
        >>> peak.peak_mb, peak.total_mb
        ```
    """

    def __init__(self, interval: float = 0.05, *, children: bool = False, children_interval: float = 0.5):
        self.interval, self.children = interval, children
        self.every = max(1, round(children_interval / interval))
        self.peak_mb = self.total_mb = 0.0

    def _sample(self, with_children: bool = True):
        self.peak_mb = max(self.peak_mb, memory_status()["RssAnon"])
        if self.children and with_children:
            pids = [os.getpid(), *_children(os.getpid())]
            self.total_mb = max(self.total_mb, sum(_pss_anon_mb(pid) for pid in pids))

    def _run(self):
        tick = 0
        while not self._stop.wait(self.interval):
            tick += 1
            self._sample(with_children=tick % self.every == 0)

    def __enter__(self):
        import threading

        self.peak_mb = self.total_mb = 0.0
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
