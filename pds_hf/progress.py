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

The libraries pds-hf calls draw bars of their own (datasets' "Map", transformers' "Loading weights", diffusers'
"Loading pipeline components" and per-step bars, huggingface_hub's downloads). Inside :func:`library_output`
they follow the same rule: drawn on a terminal, off when stderr goes to a file (where pds-hf's log lines tell how
far the work got). pds-hf's model loaders and writers run inside it; ``pds-hf`` runs whole commands inside it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0


# transformers' note on first use of a CLIP image processor without torchvision: the PIL processor it falls back
# to gives CLIP the same inputs, so inside library_output the note is noise and is dropped.
TORCHVISION_NOTE = "requires torchvision (not installed)"
TORCHVISION_LOGGER = "transformers.utils.import_utils"
# True while a library_output() block has switched datasets' bars off: that is pds-hf's doing, not the user's
# choice, so pds-hf's own log lines keep going.
_datasets_off_by_policy = False


def _switched_off() -> bool:
    from datasets.utils import are_progress_bars_disabled

    return are_progress_bars_disabled() and not _datasets_off_by_policy


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

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str,
        unit: str = "item",
        every: float | None = None,
    ):
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


def progress(
    iterable_or_total: Iterable | int | None = None,
    *,
    desc: str,
    unit: str = "item",
    disable: bool = False,
    every: float | None = None,
):
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


def _not_torchvision_note(record: logging.LogRecord) -> bool:
    return TORCHVISION_NOTE not in record.getMessage()


def _library_switches() -> list[tuple[str, Callable[[bool], None]]]:
    """``(name, turn)`` for each library whose bars are on now: ``turn(False)`` switches them off, ``turn(True)``
    back on.

    Only libraries already imported are touched (importing transformers or diffusers just to silence them
    would cost seconds), and a library whose bars an environment variable forces on is left alone.
    """
    from datasets import config as datasets_config
    from datasets import utils as datasets_utils
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import utils as hub_utils

    switches = []
    if datasets_config.HF_DATASETS_DISABLE_PROGRESS_BARS is None and not datasets_utils.are_progress_bars_disabled():
        switches.append(
            (
                "datasets",
                lambda on: datasets_utils.enable_progress_bars() if on else datasets_utils.disable_progress_bars(),
            )
        )
    if hub_constants.HF_HUB_DISABLE_PROGRESS_BARS is None and not hub_utils.are_progress_bars_disabled():
        switches.append(
            (
                "huggingface_hub",
                lambda on: hub_utils.enable_progress_bars() if on else hub_utils.disable_progress_bars(),
            )
        )
    hub_off = hub_utils.are_progress_bars_disabled()

    def switch(library, on: bool) -> None:
        if not on:
            library.disable_progress_bar()
            return
        library.enable_progress_bar()
        if hub_off:  # transformers' switch turns huggingface_hub's on too: keep the user's choice for it
            hub_utils.disable_progress_bars()

    for name, module in (("transformers", "transformers.utils.logging"), ("diffusers", "diffusers.utils.logging")):
        library = sys.modules.get(module)
        if library is not None and library.is_progress_bar_enabled():
            switches.append((name, lambda on, library=library: switch(library, on)))
    return switches


@contextlib.contextmanager
def library_output():
    """Inside: the bars of datasets, huggingface_hub, transformers and diffusers follow pds-hf's progress rule.

    On a terminal they are left as they are; when stderr goes to a file they are switched off (a bar redrawn
    with carriage returns is unreadable there), and switched back on when the block ends. pds-hf's own
    :func:`progress` keeps logging its lines either way. transformers' note that torchvision is missing is
    dropped (harmless for CLIP). Blocks nest; the user's own switches (``disable_progress_bars()``,
    ``HF_DATASETS_DISABLE_PROGRESS_BARS``, ``HF_HUB_DISABLE_PROGRESS_BARS``) are kept.

    Example:
        ```py
        >>> from pds_hf.progress import library_output
        >>> with library_output():
        ...     model = AutoModel.from_pretrained(path)   # no "Loading weights" bar in a log file
        ```
    """
    global _datasets_off_by_policy

    note = logging.getLogger(TORCHVISION_LOGGER)
    note.addFilter(_not_torchvision_note)
    switched = [] if _on_terminal() else _library_switches()
    outer = _datasets_off_by_policy
    try:
        for name, turn in switched:
            turn(False)
            _datasets_off_by_policy = _datasets_off_by_policy or name == "datasets"
        yield
    finally:
        for _, turn in reversed(switched):
            turn(True)
        _datasets_off_by_policy = outer
        note.removeFilter(_not_torchvision_note)
