"""What an evaluation reports: per-run recalls, their mean ± std, and how the epoch was selected."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import METRIC_NAMES

logger = logging.getLogger(__name__)


def _fmt(value: float) -> str:
    return f"{value:.2f}"


@dataclass
class EvaluationReport:
    """Retrieval results of a student trained on a distilled set, over several runs.

    Attributes:
        runs: one ``{"IR@1": ..., ..., "mean": ...}`` dict (percentages) per run, on the test set.
        selected_epochs: the epoch each run's test numbers come from.
        selection: how the epoch was selected, in words (which split, or "last epoch").
        test: the test set, in words (name, images, captions).
        student: the student's image network.
        encoder: the encoder of the text features.
        num_pairs: training pairs the student saw.
        seeds: the seed of each run.
        settings: the training settings (epochs, lr, temperature, ...).
        validation_histories: per run, the ``(epoch, metrics)`` validation checks.
    """

    runs: list[dict]
    selected_epochs: list[int]
    selection: str
    test: str
    student: str
    encoder: str
    num_pairs: int
    seeds: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    validation_histories: list[list] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        """Mean over runs of each metric."""
        return {name: float(np.mean([run[name] for run in self.runs])) for name in METRIC_NAMES}

    @property
    def std(self) -> dict[str, float]:
        """Standard deviation over runs of each metric (population, ``ddof=0``, as the reference code)."""
        return {name: float(np.std([run[name] for run in self.runs])) for name in METRIC_NAMES}

    def to_dict(self) -> dict:
        """Everything as plain Python (JSON-serialisable), with ``mean`` and ``std`` added."""
        return {**asdict(self), "mean": self.mean, "std": self.std}

    def table_row(self, *first_cells: str) -> str:
        """One markdown row: ``first_cells``, then each metric as ``mean ± std``."""
        mean, std = self.mean, self.std
        cells = list(first_cells) + [f"{_fmt(mean[name])} ± {_fmt(std[name])}" for name in METRIC_NAMES]
        return "| " + " | ".join(cells) + " |"

    def protocol(self) -> str:
        """The training protocol in one sentence."""
        s = self.settings
        heads = "text and image heads" if s.get("train_image_head") else "a text head"
        temperature = (
            f"learned temperature (initial {s.get('temperature')})"
            if s.get("learn_temperature")
            else f"fixed temperature {s.get('temperature')}"
        )
        decay_epoch = s.get("lr_decay_epoch")
        decays = decay_epoch is not None and decay_epoch <= s.get("epochs", decay_epoch)
        decay = f", lr x{s.get('lr_decay')} from epoch {decay_epoch}" if decays else ""
        return (
            f"frozen student `{self.student}`, frozen text features from `{self.encoder}`, trained {heads}; "
            f"InfoNCE with {temperature}; SGD lr {s.get('lr')}, momentum {s.get('momentum')}, "
            f"weight decay {s.get('weight_decay')}, batch {s.get('batch_size')}, {s.get('epochs')} epochs{decay}."
        )

    def to_markdown(self) -> str:
        """A markdown table of IR@1/5/10, TR@1/5/10 and their mean (each mean ± std over runs), followed by
        the test set, how the epoch was selected, and the protocol.

        Example:
            ```py
            >>> print(report.to_markdown())
            | Student | Pairs | Runs | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | Mean |
            |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
            | nf_resnet50 | 100 | 5 | 7.90 ± 0.21 | ... |
            ...
            ```
        """
        header = "| Student | Pairs | Runs | " + " | ".join(h if h != "mean" else "Mean" for h in METRIC_NAMES) + " |"
        align = "|---|---:|---:|" + "---:|" * len(METRIC_NAMES)
        seeds = ", ".join(map(str, self.seeds)) if self.seeds else "n/a"
        lines = [
            header,
            align,
            self.table_row(self.student, str(self.num_pairs), str(len(self.runs))),
            "",
            f"- Test set: {self.test}; every caption of an image counts as a match; ties count against the model.",
            f"- Epoch selection: {self.selection}. Selected epochs: {', '.join(map(str, self.selected_epochs))}.",
            f"- Protocol: {self.protocol()}",
            f"- Mean ± std (population) over {len(self.runs)} run(s), seeds {seeds}.",
        ]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _by_method(results):
    """``{method: [(num_pairs, report), ...]}``, methods in order of first appearance, sizes ascending."""
    grouped: dict[str, list] = {}
    for method, num_pairs, report in results:
        grouped.setdefault(method, []).append((num_pairs, report))
    return {method: sorted(points, key=lambda point: point[0]) for method, points in grouped.items()}


def comparison_markdown(results: list[tuple[str, int, EvaluationReport]]) -> str:
    """A markdown table with one row per ``(method, num_pairs, report)``: methods in the order given, sizes
    ascending."""
    header = "| Method | Pairs | " + " | ".join(h if h != "mean" else "Mean" for h in METRIC_NAMES) + " |"
    align = "|---|---:|" + "---:|" * len(METRIC_NAMES)
    rows = [
        report.table_row(method, str(num_pairs))
        for method, points in _by_method(results).items()
        for num_pairs, report in points
    ]
    lines = [header, align, *rows]
    if results:
        first = results[0][2]
        lines += [
            "",
            f"- Test set: {first.test}.",
            f"- Epoch selection: {first.selection}.",
            f"- Protocol: {first.protocol()}",
            f"- Mean ± std over {len(first.runs)} run(s).",
        ]
    return "\n".join(lines) + "\n"


def plot_comparison(results: list[tuple[str, int, EvaluationReport]], path) -> bool:
    """Plot mean recall (± std) against the number of pairs, one line per method, to ``path`` (PNG).

    Returns ``False``, with a logged message, when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, so no plot was written; `pip install matplotlib` to get one.")
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    for method, points in _by_method(results).items():
        axes.errorbar(
            [n for n, _ in points],
            [r.mean["mean"] for _, r in points],
            yerr=[r.std["mean"] for _, r in points],
            marker="o",
            capsize=3,
            label=method,
        )
    sizes = sorted({n for _, n, _ in results})
    axes.set_xscale("log")
    axes.minorticks_off()
    axes.set_xticks(sizes, [str(n) for n in sizes])
    axes.set_xlabel("number of pairs")
    axes.set_ylabel("mean recall (%)")
    axes.legend()
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return True
