"""What every ``pds-hf`` subcommand shares: its errors and exit codes, and the runner that shows its log lines and
turns an exception into one ``error:`` line in the words of the command's flags.

:mod:`pds_hf.cli` (``distill``, the parser, ``main``) and :mod:`pds_hf.evaluation.cli` (``evaluate``, ``compare``)
import this module; it imports neither, and is given the parser whose flags word the messages.

Example:
    ```py
    >>> from pds_hf.cli_base import UsageError, error_line
    >>> error_line(UsageError("no dataset: name one, or pass --demo."))
    (2, 'no dataset: name one, or pass --demo.')
    ```
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import sys
import threading
import traceback
from pathlib import Path

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# transformers warns on first use of CLIPImageProcessor when torchvision is absent; the PIL processor it falls back
# to gives the same inputs for CLIP, so the line is noise on every run. It is shown under -v.
_TORCHVISION_NOTE = "requires torchvision (not installed)"
_TORCHVISION_LOGGER = "transformers.utils.import_utils"

# Python keywords whose flag stores under another name (DistillConfig field: the flag's dest).
_KEYWORD_DESTS = {"encode_batch_size": "batch_size", "num_inference_steps": "steps"}
# A keyword argument in a message: `image_column=...`, `license='mit'`, `overwrite=True`, or a bare `license=`;
# not a part of a path (`/data/split=train/`) or of a longer name.
_KEYWORD = re.compile(r"(?<![\w./\\-])([a-z_][a-z0-9_]*)=(\.\.\.|'[^']*'|\"[^\"]*\"|[\w.+/-]+)?")
# How a message marks a fix that only Python has; the command line leaves it out.
_PYTHON_ONLY = "(in Python: "
# The functions that load each model of a distill run: an error raised through one concerns that model.
_MODEL_LOADERS = {"load_encoder": "--clip-model", "load_unclip": "--unclip-model"}


class UsageError(Exception):
    """A command line that cannot work as given (exit code 2); the message says what to change."""


class CommandError(Exception):
    """A run that failed for a reason outside the command line (exit code 1); the message says what to do."""


def one_line(text) -> str:
    """``text`` (an exception or a message) on one line: its lines stripped and joined by spaces, blank ones
    dropped; an error line and a log line never span several."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, so that a fix says to unset it rather than to check the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record arrives (pytest and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    """One line per record: the message in the command's words (:func:`command_line_words`), ``warning: `` before
    warnings, no traceback unless verbose."""

    def __init__(self, verbose: bool, parser: argparse.ArgumentParser | None):
        super().__init__("%(asctime)s %(name)s %(levelname)s: %(message)s" if verbose else "%(message)s")
        self.verbose, self.parser = verbose, parser

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            worded = command_line_words(record.getMessage(), self.parser)
            return super().format(logging.makeLogRecord({**record.__dict__, "msg": worded, "args": None}))
        message = command_line_words(one_line(record.getMessage()), self.parser)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def _not_torchvision_note(record: logging.LogRecord) -> bool:
    return _TORCHVISION_NOTE not in record.getMessage()


class _Logging:
    """Show the INFO lines of ``pds_hf`` (progress, resuming, ...) on stderr while a command runs; undo on exit."""

    def __init__(self, verbose: bool, parser: argparse.ArgumentParser | None):
        self.verbose = verbose
        self.handler = _StderrHandler()
        self.handler.setFormatter(_Formatter(verbose, parser))
        self.package = logging.getLogger("pds_hf")
        self.transformers = logging.getLogger(_TORCHVISION_LOGGER)

    def __enter__(self):
        self.saved = self.package.level, self.package.propagate
        self.package.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        self.package.propagate = False
        self.package.addHandler(self.handler)
        if self.verbose:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        else:
            self.transformers.addFilter(_not_torchvision_note)
        return self

    def __exit__(self, *exc_info):
        self.package.removeHandler(self.handler)
        self.package.setLevel(self.saved[0])
        self.package.propagate = self.saved[1]
        self.transformers.removeFilter(_not_torchvision_note)


def _hub_error_types() -> tuple:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return ConnectionError, HfHubHTTPError, LocalEntryNotFoundError


def _failed_model(err: BaseException, args, message: str) -> str:
    """``--clip-model X`` or ``--unclip-model Y``: the model a distill run failed to load, known by the loader the
    error was raised through; empty when it came through neither, or when ``message`` names that flag already."""
    if getattr(args, "command", None) != "distill" or args.demo:
        return ""
    called = {frame.name for frame in traceback.extract_tb(err.__traceback__) if "pds_hf" in Path(frame.filename).parts}
    option = next((option for loader, option in _MODEL_LOADERS.items() if loader in called), None)
    if option is None:
        return ""
    from pds_hf import DistillConfig

    field = option[2:].replace("-", "_")
    name = getattr(args, field) or getattr(DistillConfig(), field)
    return "" if option in message else f"{option} {name}"


def _paren_spans(text: str) -> list[tuple[int, int, bool]]:
    """``(start, end, is_call)`` of each balanced pair of parentheses in ``text``: a call's follows a name."""
    spans, opened = [], []
    for index, char in enumerate(text):
        if char == "(":
            opened.append((index, index > 0 and (text[index - 1].isalnum() or text[index - 1] in "_)]")))
        elif char == ")" and opened:
            start, call = opened.pop()
            spans.append((start, index + 1, call))
    return spans


def _flag_words(action: argparse.Action, value: str | None) -> str | None:
    """The flag (and value) that does what the Python keyword ``<dest>=<value>`` does; None when it has none."""
    flag = next(option for option in action.option_strings if option.startswith("--"))
    if action.nargs == 0:  # a switch
        if value in (None, "...", "True"):
            return flag
        return f"--no-{flag[2:]}" if value == "False" and isinstance(action, argparse.BooleanOptionalAction) else None
    if value is None:
        return flag
    if value == "...":
        return f"{flag} {action.metavar or action.dest.upper()}"
    quoted = value[0] in "'\"" and value[-1] == value[0]
    return f"{flag} {shlex.quote(value[1:-1]) if quoted else value}"


def command_line_words(message: str, parser: argparse.ArgumentParser | None) -> str:
    """``message`` with its fixes in the words of ``parser``'s command line rather than Python's.

    Errors are raised by Python code, which names its fixes as keyword arguments; a command line has flags. Each
    keyword that ``parser`` has a flag for becomes that flag (``image_column=...`` becomes ``--image-column
    IMAGE_COLUMN``, ``license='mit'`` ``--license mit``, ``overwrite=True`` ``--overwrite``), except inside code
    such as ``load_dataset(..., split='train')``; a fix that only Python has, written ``(in Python: ...)``, is left
    out. Every message the command prints goes through here, errors and log lines alike.

    Args:
        message: the text of an error or a log record.
        parser: the parser of the command that is running (a subcommand's, for ``pds-hf distill``); None: no
            keyword has a flag, only the Python-only fixes are left out.

    Example:
        ```py
        >>> command_line_words("Pass image_column=... to name the image column.", distill_parser)
        'Pass --image-column IMAGE_COLUMN to name the image column.'
        ```
    """
    flags = {
        action.dest: action
        for action in (parser._actions if parser is not None else ())
        if any(option.startswith("--") for option in action.option_strings)
    }
    flags.update({keyword: flags[dest] for keyword, dest in _KEYWORD_DESTS.items() if dest in flags})
    spans = _paren_spans(message)
    edits = [(start, end, "") for start, end, _ in spans if message.startswith(_PYTHON_ONLY, start)]
    code = [(start, end) for start, end, call in spans if call] + [(start, end) for start, end, _ in edits]
    for match in _KEYWORD.finditer(message):
        action = flags.get(match[1])
        if action is None or any(start < match.start() < end for start, end in code):
            continue
        words = _flag_words(action, match[2])
        if words is not None:
            edits.append((match.start(), match.end(), words))
    pieces, done = [], 0
    for start, end, words in sorted(edits):
        if start < done:  # inside a part already left out
            continue
        before = message[done:start]
        pieces += [before if words else before.rstrip(), words]
        done = end
    return "".join(pieces) + message[done:]


def _command_parser(parser: argparse.ArgumentParser | None, command: str | None) -> argparse.ArgumentParser | None:
    """The parser of subcommand ``command`` of ``parser`` (``parser`` itself when it has no such subcommand)."""
    if parser is None:
        return None
    subparsers = next((action for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)
    return parser if subparsers is None else subparsers.choices.get(command, parser)


def error_line(err: BaseException, args=None, parser: argparse.ArgumentParser | None = None) -> tuple[int, str]:
    """The exit code and the one-line message (without ``error: ``) for an exception a command raised.

    The message names flags, not Python keywords (:func:`command_line_words`). An error that knows the option it
    concerns (an ``option`` attribute naming a keyword, as ``pds_hf.hub_models.ModelLoadError`` has) already says
    what failed and the fix: it is shown as it is, with exit code 1 when the Hub could not be reached (its
    ``hub_unreachable``), else 2 (the option names something that cannot work).

    Args:
        err: the exception.
        args: the parsed command line: which command ran (its flags name the fixes), the model a failed load
            concerns, and whether ``-v`` shows the traceback.
        parser: the parser ``args`` came from; the flags of its ``args.command`` word the message. None: Python's
            keywords are left as they are.

    Example:
        ```py
        >>> error_line(UsageError("no dataset: name one, or pass --demo."))
        (2, 'no dataset: name one, or pass --demo.')
        ```
    """
    from pds_hf.publish import PublishError

    message = command_line_words(
        one_line(err.args[0] if isinstance(err, KeyError) and err.args else err),
        _command_parser(parser, getattr(args, "command", None)),
    )
    verbose = getattr(args, "verbose", False)
    if isinstance(err, KeyboardInterrupt):
        resume = (
            "; run the same command again to resume: finished stages are kept in the cache"
            if (getattr(args, "command", None) == "distill")
            else ""
        )
        return EXIT_INTERRUPTED, f"interrupted (Ctrl-C){resume}."
    if isinstance(err, UsageError):
        return EXIT_USAGE, message
    if isinstance(err, (CommandError, PublishError)):
        return EXIT_FAILURE, message
    if isinstance(getattr(err, "option", None), str):
        return (EXIT_FAILURE if getattr(err, "hub_unreachable", False) else EXIT_USAGE), message
    if isinstance(err, _hub_error_types()):
        model = _failed_model(err, args, message)
        what = f"could not load {model}: " if model else ""
        fix = (
            "unset HF_HUB_OFFLINE, or pass a local folder"
            if hub_offline()
            else "check the id, the network and the token"
        )
        return EXIT_FAILURE, f"{what}{message} ({type(err).__name__}); {fix}."
    if isinstance(err, (ValueError, TypeError, KeyError, FileExistsError, FileNotFoundError)):
        return EXIT_USAGE, message
    traceback_hint = "the traceback is above" if verbose else "rerun with -v for the traceback"
    if isinstance(err, OSError):
        model = _failed_model(err, args, message)
        what = f"while loading {model}: " if model else ""
        return EXIT_FAILURE, f"{what}{message} ({type(err).__name__}); {traceback_hint}."
    return EXIT_FAILURE, (
        f"{type(err).__name__}: {message}; {traceback_hint}, and report it if it looks like a bug in pds-hf."
    )


def run_command(args, parser: argparse.ArgumentParser | None = None) -> int:
    """Run ``args.func(args)`` with the CLI's logging, and turn an exception into one ``error:`` line and an exit
    code (the traceback too under ``-v``).

    Args:
        args: the parsed command line; ``func`` is the command's handler.
        parser: the parser ``args`` came from; log and error lines name its flags (:func:`error_line`).
    """
    verbose = getattr(args, "verbose", False)
    with (
        _Logging(verbose, _command_parser(parser, getattr(args, "command", None))),
        _exit_on_interrupt(args, enabled=not verbose),
    ):
        try:
            return args.func(args)
        except (Exception, KeyboardInterrupt) as err:
            code, message = error_line(err, args, parser)
            if verbose:
                traceback.print_exc()
            print(f"error: {message}", file=sys.stderr)
            return code


class _exit_on_interrupt:
    """While a command runs, Ctrl-C prints the one ``error:`` line and ends the process with code 130 at once.

    A KeyboardInterrupt raised where torch's C++ code is calling back into Python cannot cross that boundary
    and aborts the process ("terminate called ..."); ending from the signal handler never raises it. Every
    stage file is written under a temporary name and renamed, so what was finished is kept for the rerun.
    Under ``-v`` (and off the main thread) Ctrl-C raises as usual, to show where it stopped.

    Ctrl-C reaches every process of the terminal's group, and forked workers (image decoding) inherit the
    handler: they end quietly, so that the line is printed once, by the command's own process.
    """

    def __init__(self, args, *, enabled: bool):
        self.args, self.enabled, self.previous, self.pid, self.message = args, enabled, None, None, None

    def _handler(self, signum, frame):
        if os.getpid() == self.pid:
            print(f"error: {self.message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            # Worded now, so that the handler only prints (nothing to import while the process is interrupted).
            self.pid, self.message = os.getpid(), error_line(KeyboardInterrupt(), self.args)[1]
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
