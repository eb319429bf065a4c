"""Evaluating a distilled image-text set the way the paper does, with honest epoch selection.

Train a student (frozen image network + frozen text features + trained projection head) on the
distilled pairs, then score image-text retrieval on a test set: IR@1/5/10, TR@1/5/10 and their mean,
mean ± std over runs, with the epoch selected on a validation split (never on the test split).

Example:
    ```py
    >>> from pds_hf.evaluation import evaluate
    >>> report = evaluate(distilled, test, encoder="openai/clip-vit-large-patch14", student="nf_resnet50",
    ...                   runs=5, validation=val)
    >>> print(report.to_markdown())
    ```

Modules, in the order the protocol runs: :mod:`.student` (the frozen image network),
:mod:`.features` (frozen features, cached), :mod:`.settings` and :mod:`.train` (the heads), :mod:`.metrics` (recall@K),
:mod:`.report`, and :mod:`.protocol` (all of it, as :func:`evaluate`). :mod:`.cli` adds the
``evaluate`` and ``compare`` subcommands to ``pds-hf``.

Names are imported on first use, so that ``import pds_hf.evaluation`` does not import torch.
"""

import importlib

_EXPORTS = {
    "evaluate": "protocol",
    "evaluate_features": "protocol",
    "TRAIN_DEFAULTS": "protocol",
    "TrainSettings": "settings",
    "EvaluationReport": "report",
    "comparison_markdown": "report",
    "plot_comparison": "report",
    "RetrievalSet": "features",
    "clear_memory_cache": "features",
    "retrieval_metrics": "metrics",
    "retrieval_ranks": "metrics",
    "METRIC_NAMES": "metrics",
    "Student": "student",
    "load_student": "student",
    "tiny_student": "student",
    "ProjectionHead": "train",
    "ContrastiveHeads": "train",
    "TrainResult": "train",
    "train_heads": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
