"""The project's error types: every error mmlib raises on purpose derives from :class:`MmlibError`.

A message names the input (argument, file, field, row) and says what to do. The command line
(``python -m mmlib``) turns any :class:`MmlibError` into one ``error:`` line and exit status 2, without a traceback;
anything else is a bug and keeps its traceback.

The classes also derive from the built-in type a caller would expect (``ValueError`` for bad input,
``RuntimeError`` for a corrupt artifact), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError", "ArtifactMismatchError", "ArtifactRootError", "ConfigError", "CorruptArtifactError",
    "InputError", "InputNotFoundError", "MissingKeyError", "MmlibError", "NonFiniteError", "OutOfRangeError",
    "UnsupportedModelError",
]


class MmlibError(Exception):
    """Base of every error mmlib raises on purpose (the message names the input and says what to do)."""


class InputError(MmlibError, ValueError):
    """An input given by the user (a tensor, a file, a value) is unusable."""


class ConfigError(InputError):
    """A configuration field has the wrong type or lies outside its allowed range."""


class NonFiniteError(InputError):
    """A tensor given by the user holds NaN or an infinity."""


class ArtifactRootError(InputError):
    """The artifact root is not a writable folder."""


class CorruptArtifactError(MmlibError, RuntimeError):
    """An artifact exists on disk but cannot be read back intact (truncated, edited, or another artifact's)."""


class ArtifactMismatchError(CorruptArtifactError):
    """An artifact folder or file holds another artifact than the one asked for (its recorded kind/key differ)."""


class MissingKeyError(InputError, KeyError):
    """A name the user asked for (a factor, a concept, a model, a column) does not exist; the message lists
    what does.
    """

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ArgumentTypeError(InputError, TypeError):
    """An argument has the wrong type (the message names it and the type expected)."""


class UnsupportedModelError(MmlibError, NotImplementedError):
    """The model (or feature map) lacks what the operation needs, e.g. a ViT image tower or a decoder."""


class OutOfRangeError(InputError, IndexError):
    """An index (a layer, a row) outside the valid range; the message gives the range."""
