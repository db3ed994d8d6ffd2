"""Command-line plumbing shared by ``python -m mmlib`` and ``python -m mmlib.models.embed``.

The contract of both commands: a bad option or input (any :class:`~mmlib.core.errors.MmlibError`, any argparse
error) prints exactly one line ``error: <message>`` on stderr and exits with status 2, without a traceback; an
interrupt prints one line and exits with 130. Warnings and log records raised while a command runs (e.g. open_clip's
"No pretrained weights loaded" for ``--pretrained none``, torch's pickle-protocol notice) are collected and printed
after a successful run as one ``warning:`` line each, and dropped when the command fails, so that a failure is
always one line. Progress bars are drawn only on a terminal.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from mmlib.core.errors import MmlibError

__all__ = ["OneLineErrorParser", "one_line", "run_command", "show_progress"]


def one_line(message: object) -> str:
    """An error message on one line (an error re-raised from a DataLoader worker keeps only its last line)."""
    text = str(message).strip()
    if "Original Traceback" in text:  # torch's ExceptionWrapper: '<Caught X in worker>\nTraceback ...\nX: msg'
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line ``error: <message>`` on stderr and exit status 2 (no usage
    block); subparsers inherit it.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>`` and exit with status 2."""
        self.exit(2, f"error: {one_line(message)}\n")


def show_progress(no_progress: bool) -> bool:
    """Whether a command draws progress bars: not with ``--no-progress``, and only when stderr is a terminal."""
    return not no_progress and sys.stderr.isatty()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(one_line(record.getMessage()))


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``handler(args)`` under the command-line contract above; return the exit status."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    collect = _Collect()
    root.handlers, root.level = [collect], logging.WARNING
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            status = int(handler(args))
    except MmlibError as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing partial was stored; rerun the same command to resume", file=sys.stderr,
              flush=True)
        return 130
    finally:
        root.handlers, root.level = saved_handlers, saved_level
    seen: set[str] = set()
    for line in [*collect.lines, *(one_line(w.message) for w in caught)]:
        if line not in seen:
            seen.add(line)
            print(f"warning: {line}", file=sys.stderr)
    return status
