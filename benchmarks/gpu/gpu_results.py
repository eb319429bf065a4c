"""Where the GPU benchmarks write their results: this folder's ``RESULTS.md``, with the table and append helpers of
``benchmarks/perf/machine.py`` (which also records the machine). Importing this module puts the repository root and
``benchmarks/perf`` on ``sys.path``, so a benchmark run as a script imports ``pds_hf`` from the checkout.

Example:
    ```py
    >>> from gpu_results import RESULTS, append_results, markdown_table
    >>> append_results("a title", markdown_table(["stage", "seconds"], [["encode", "1.0"]]), RESULTS)
    ```
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))
sys.path.insert(0, str(ROOT))

from machine import append_results, markdown_table  # noqa: E402

RESULTS = HERE / "RESULTS.md"
__all__ = ["RESULTS", "ROOT", "append_results", "markdown_table"]
