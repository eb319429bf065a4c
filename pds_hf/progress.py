"""Progress of long loops: a bar on a terminal, a log line every few seconds when output goes to a file.

A tqdm bar redrawn in place is unreadable in a log file, and tqdm hides itself when stderr is not a terminal, so
a redirected run showed nothing for minutes. :func:`progress` draws the usual bar on a terminal (the one of
``datasets``, so ``datasets.disable_progress_bars()`` and ``HF_DATASETS_DISABLE_PROGRESS_BARS=1`` switch it
off) and otherwise logs ``desc: n/total (x items/s)`` through the ``pds_hf.progress`` logger every few seconds.
The ``pds-hf`` command shows those lines; a program that configures logging at INFO for ``pds_hf`` gets them too.

Example:
    ```py
    >>> from pds_hf.progress import progress
    >>> with progress(1000, desc="Encoding images") as bar:
    ...     for start in range(0, 1000, 64):
    ...         bar.update(min(64, 1000 - start))
    >>> squares = [i * i for i in progress(range(10), desc="Squaring")]
    ```
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0


def _switched_off() -> bool:
    from datasets.utils import are_progress_bars_disabled

    return are_progress_bars_disabled()


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class LogProgress:
    """Counts items and logs ``desc: n/total (x items/s)`` at most every ``every`` seconds.

    It has the part of the tqdm interface the package uses: iterate over it (when made from an iterable),
    ``update(n)``, ``close()``, and ``with``. On close, a last line is logged when the loop ran long enough to
    have logged before and the count moved since, so a log file shows that it finished; short loops stay silent.

    Args:
        iterable: items to yield while counting them, or None to count with ``update``.
        total: number of items expected, or None when unknown (then only the count and rate are logged).
        desc: what is being done, e.g. ``"Encoding images"``.
        unit: the name of one item, e.g. ``"image"``; the rate is per ``unit + "s"``.
        every: seconds between lines (default :data:`LOG_EVERY_SECONDS`).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "item",
                 every: float | None = None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.every = LOG_EVERY_SECONDS if every is None else every
        self.n = 0
        self._start = self._last = time.monotonic()
        self._logged_n = None
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items, and log a line when ``every`` seconds passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._log(now)

    def close(self) -> None:
        """Log the final count if a line was logged before and the count moved since; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._logged_n is not None and self._logged_n != self.n:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        logger.info("%s: %s (%.3g %ss/s)", self.desc, count, self.n / elapsed, self.unit)
        self._logged_n = self.n


def progress(iterable_or_total: Iterable | int | None = None, *, desc: str, unit: str = "item",
             disable: bool = False, every: float | None = None):
    """A progress display for a long loop: a tqdm bar on a terminal, else a log line every ``every`` seconds.

    Args:
        iterable_or_total: an iterable to wrap (its ``len()`` is the total when it has one), or the number of
            items to come (then call ``update(n)``), or None when that number is unknown.
        desc: what is being done, shown before the count.
        unit: the name of one item.
        disable: show nothing (e.g. on every process but the main one). Nothing is shown either when
            ``datasets`` progress bars are switched off (``datasets.disable_progress_bars()``).
        every: seconds between log lines when stderr is not a terminal (default :data:`LOG_EVERY_SECONDS`).

    Returns:
        An object to iterate over (when given an iterable) or to ``update(n)``; use it in a ``with`` block
        (or call ``close()``) so the display ends.

    Example:
        ```py
        >>> with progress(len(prompts), desc="Synthesizing images", unit="image") as bar:
        ...     for batch in batches:
        ...         bar.update(len(batch))
        ```
    """
    from datasets.utils import tqdm

    if isinstance(iterable_or_total, int):
        iterable, total = None, iterable_or_total
    else:
        iterable = iterable_or_total
        total = len(iterable) if hasattr(iterable, "__len__") else None
    if disable or _switched_off():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if _on_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, every=every)
