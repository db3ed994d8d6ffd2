"""The command-line contract: a failure is one ``error:`` line and status 2; warnings and log records of a
successful run come after it as one ``warning:`` line each; a failed run prints nothing but its error.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import pytest

from mmlib.core.console import OneLineErrorParser, run_command
from mmlib.core.errors import ConfigError


def _noisy(fail: bool):
    def handler(args: argparse.Namespace) -> int:
        logging.getLogger("open_clip").warning("No pretrained weights loaded for model 'ViT-B-32'.")
        warnings.warn("Detected pickle protocol 4\nin the checkpoint", UserWarning, stacklevel=1)
        warnings.warn("Detected pickle protocol 4\nin the checkpoint", UserWarning, stacklevel=1)
        if fail:
            raise ConfigError("EmbedConfig.batch_size must be in [1, inf),\n got 0.")
        print("/artifacts/embeddings/abc")
        return 0
    return handler


def test_a_failure_is_exactly_one_line(capsys):
    assert run_command(_noisy(fail=True), argparse.Namespace()) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: EmbedConfig.batch_size must be in [1, inf), got 0.\n"


def test_warnings_of_a_successful_run_follow_it_once_each(capsys):
    assert run_command(_noisy(fail=False), argparse.Namespace()) == 0
    out, err = capsys.readouterr()
    assert out == "/artifacts/embeddings/abc\n"
    assert err.splitlines() == ["warning: No pretrained weights loaded for model 'ViT-B-32'.",
                                "warning: Detected pickle protocol 4 in the checkpoint"]


def test_an_interrupt_is_one_line(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert run_command(interrupted, argparse.Namespace()) == 130
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_bug_keeps_its_traceback():
    def buggy(args):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_command(buggy, argparse.Namespace())


def test_logging_is_restored():
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    run_command(_noisy(fail=True), argparse.Namespace())
    assert (root.handlers, root.level) == before


def test_parser_errors_are_one_line(capsys):
    parser = OneLineErrorParser(prog="x")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "abc"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'abc'\n"
