"""Checks of user input shared by every layer: finite tensors and typed, ranged configuration fields.

* :func:`check_finite` rejects NaN / +-Inf in a tensor or array with a :class:`~mmlib.core.errors.NonFiniteError`
  that names the argument, the number of bad entries and the first bad row/column.
* :func:`validate_config` checks every field of a configuration dataclass against its type annotation (``int``,
  ``float``, ``bool``, ``str``, ``X | None``, ``tuple[X, ...]``, ``Literal[...]``) and an optional :class:`Range` or
  :func:`one_of` rule per field, raising :class:`~mmlib.core.errors.ConfigError` that names the class, the field,
  the value and what is allowed. Config dataclasses call it from ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlib.core.errors import ArgumentTypeError, ConfigError, InputError, NonFiniteError

__all__ = ["Range", "as_path", "at_least", "between", "check_finite", "check_nonnegative", "greater_than", "is_int",
           "one_of", "validate_config"]


# ----------------------------------------------------------------------------------------------- tensors

def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _position(index: tuple[int, ...]) -> str:
    if len(index) == 1:
        return f"index {index[0]}"
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    return "index " + str(tuple(int(i) for i in index))


def check_finite(x: Any, name: str, hint: str = "remove or impute the bad rows first") -> Any:
    """Return ``x`` unchanged if every entry is finite; otherwise raise :class:`NonFiniteError`.

    Parameters
    ----------
    x : Tensor or array-like
        Any shape; non-float dtypes are finite by construction and pass without a scan.
    name : str
        How the caller's argument is called (``"activations"``), used in the message.
    hint : str
        What the user should do, appended to the message.

    Raises
    ------
    NonFiniteError
        naming ``name``, the count of non-finite entries and the first one (row and column for a matrix).
    """
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()):
            return x
        bad = ~torch.isfinite(x.detach())
        if not bool(bad.any()):
            return x
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        value = x.detach()[first].item()
        count = int(bad.sum())
    else:
        arr = _as_numpy(x)
        if arr.dtype.kind not in "fc":
            return x
        bad = ~np.isfinite(arr)
        if not bad.any():
            return x
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = arr[first].item()
        count = int(bad.sum())
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    raise NonFiniteError(f"{name} holds {count} non-finite value(s) (first: {value} at {_position(first)} of a "
                         f"{shape} array); {hint}.")


def check_nonnegative(x: Any, name: str, hint: str = "pass non-negative feature activations") -> Any:
    """``x`` if finite and ``>= 0`` everywhere (:class:`NonFiniteError` / :class:`InputError` otherwise)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
        low, high = torch.aminmax(x.detach())  # one pass; NaN propagates and fails both tests
        if bool(low >= 0) and bool(torch.isfinite(high)):
            return x
    check_finite(x, name)
    arr = x.detach() if isinstance(x, torch.Tensor) else _as_numpy(x)
    neg = arr < 0
    if bool(neg.any()):
        first = tuple(int(i) for i in (neg.nonzero()[0].tolist() if isinstance(neg, torch.Tensor)
                                       else np.argwhere(neg)[0]))
        raise InputError(f"{name} must be non-negative, but holds {int(neg.sum())} negative value(s) (first: "
                         f"{arr[first].item()} at {_position(first)}); {hint}.")
    return x


# ------------------------------------------------------------------------------------------------- paths

def as_path(value: Any, name: str, error: type[InputError] = ArgumentTypeError) -> Path:
    """``value`` as an expanded :class:`~pathlib.Path` if it is a non-empty ``str`` or path-like.

    Raises
    ------
    InputError
        of class ``error`` (a reader passes its own, e.g. ``DatasetError``), naming ``name``: for a value that is
        not a path, or an empty one.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name} must be a path (str or pathlib.Path), got {value!r} ({type(value).__name__}).")
    if not str(value).strip():
        raise error(f"{name} is an empty path; pass the path of the file or folder.")
    return Path(value).expanduser()


# ----------------------------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class Range:
    """An allowed interval ``low <= value <= high`` (either end open or absent); applied to each element of
    a tuple field.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        left = "-inf" if self.low is None else f"{self.low:g}"
        right = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{left}, {right}" \
               f"{')' if self.high_open or self.high is None else ']'}"


def at_least(low: float) -> Range:
    """``[low, inf)``."""
    return Range(low=low)


def greater_than(low: float) -> Range:
    """``(low, inf)``."""
    return Range(low=low, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    """``[low, high]`` (ends open on request)."""
    return Range(low, high, low_open, high_open)


@dataclasses.dataclass(frozen=True)
class _OneOf:
    values: tuple[Any, ...]

    def __contains__(self, value: Any) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


def one_of(*values: Any) -> _OneOf:
    """The value must equal one of ``values``."""
    return _OneOf(tuple(values))


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _type_problem(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` as an instance of the annotation ``hint`` (``None``: nothing, or unchecked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return None if is_int(value) else "an integer"
    if hint is float:
        if not _is_real(value):
            return "a number"
        return None if math.isfinite(float(value)) else "a finite number"
    if hint is bool:
        return None if isinstance(value, (bool, np.bool_)) else "True or False"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        if any(p is None for p in problems):
            return None
        return " or ".join(p for p in problems if p) + (" or None" if type(None) in args else "")
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return "a tuple"
        element = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if element is not None:
            for item in value:
                problem = _type_problem(item, element)
                if problem:
                    return f"a tuple of {problem.removeprefix('a ').removeprefix('an ')}s"
        return None
    return None


def validate_config(obj: Any, **rules: Range | _OneOf) -> None:
    """Check each field of the dataclass ``obj`` against its annotation and its rule in ``rules``.

    Parameters
    ----------
    obj : dataclass instance
        Typically ``self`` in ``__post_init__``.
    **rules : Range or one_of(...)
        Per-field allowed values (a :class:`Range` applies to numbers and to each element of a tuple).

    Raises
    ------
    ConfigError
        ``"<Class>.<field> must be <what>, got <value>"`` for the first field that fails.
    """
    cls = type(obj)
    unknown = set(rules) - {f.name for f in dataclasses.fields(obj)}
    if unknown:
        raise TypeError(f"validate_config: {cls.__name__} has no field(s) {sorted(unknown)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check the rules only
        hints = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        where = f"{cls.__name__}.{field.name}"
        problem = _type_problem(value, hints.get(field.name))
        if problem:
            raise ConfigError(f"{where} must be {problem}, got {value!r} ({type(value).__name__}).")
        rule = rules.get(field.name)
        if rule is None or value is None:
            continue
        items: Sequence[Any] = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(rule, Range) and not _is_real(item):
                raise ConfigError(f"{where} must be a number in {rule}, got {item!r} ({type(item).__name__}).")
            if isinstance(rule, Range) and not math.isfinite(float(item)) and not (
                    math.isinf(float(item)) and item in rule):
                raise ConfigError(f"{where} must be a finite number in {rule}, got {item!r}.")
            if item not in rule:
                allowed = str(rule) if isinstance(rule, _OneOf) else f"in {rule}"
                raise ConfigError(f"{where} must be {allowed}, got {item!r}.")
