"""Shared input checks: non-finite tensors and typed, ranged config fields."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlib.core.errors import ConfigError, InputError, NonFiniteError
from mmlib.core.validation import (
    at_least,
    between,
    check_finite,
    check_nonnegative,
    greater_than,
    one_of,
    validate_config,
)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("as_tensor", [True, False])
def test_check_finite_names_argument_and_position(bad, as_tensor):
    x = np.zeros((4, 5), dtype=np.float32)
    x[2, 3] = bad
    x[3, 1] = bad
    with pytest.raises(NonFiniteError, match=r"activations holds 2 non-finite value\(s\) \(first: .* at row 2, "
                                             r"column 3 of a \(4, 5\) array\)"):
        check_finite(torch.from_numpy(x) if as_tensor else x, "activations")


def test_check_finite_passes_finite_and_integer_input():
    x = torch.randn(3, 2)
    assert check_finite(x, "x") is x
    assert check_finite(torch.arange(3), "ids") is not None
    with pytest.raises(NonFiniteError, match="index 1"):
        check_finite(torch.tensor([0.0, float("nan")]), "v")
    with pytest.raises(NonFiniteError, match=r"index \(0, 1, 0\)"):
        check_finite(torch.tensor([[[0.0], [float("inf")]]]), "cube")
    with pytest.raises(NonFiniteError):
        check_finite(torch.tensor([float("nan")], dtype=torch.bfloat16), "half")


@given(st.integers(0, 5), st.integers(0, 6), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_any_single_non_finite_entry_is_found(row, col, bad):
    x = torch.rand(6, 7)
    x[row, col] = bad
    with pytest.raises(NonFiniteError, match=f"row {row}, column {col}"):
        check_finite(x, "x")


def test_check_nonnegative():
    with pytest.raises(InputError, match="must be non-negative.*row 1, column 0"):
        check_nonnegative(torch.tensor([[0.0, 1.0], [-1e-3, 0.0]]), "a_image")
    with pytest.raises(NonFiniteError):
        check_nonnegative(torch.tensor([float("nan")]), "a_image")


@dataclasses.dataclass(frozen=True)
class _Config:
    n: int = 3
    noise: float = 0.1
    sizes: tuple[int, ...] = (1, 2)
    device: str | None = None
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    lr: float = 1e-3
    kind: str = "x"

    def __post_init__(self) -> None:
        validate_config(self, n=at_least(1), noise=between(0, 1), sizes=at_least(1), lr=greater_than(0),
                        kind=one_of("x", "y"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"n": "3"}, "_Config.n must be an integer, got '3' (str)"),
    ({"n": 2.0}, "_Config.n must be an integer, got 2.0 (float)"),
    ({"n": True}, "_Config.n must be an integer, got True (bool)"),
    ({"n": 0}, "_Config.n must be in [1, inf), got 0"),
    ({"noise": float("nan")}, "_Config.noise must be a finite number, got nan"),
    ({"noise": -0.1}, "_Config.noise must be in [0, 1], got -0.1"),
    ({"noise": "0.1"}, "_Config.noise must be a number"),
    ({"sizes": (1, 0)}, "_Config.sizes must be in [1, inf), got 0"),
    ({"sizes": (1, 2.5)}, "_Config.sizes must be a tuple of integers"),
    ({"sizes": 3}, "_Config.sizes must be a tuple"),
    ({"device": 3}, "_Config.device must be a string or None"),
    ({"flag": 1}, "_Config.flag must be True or False"),
    ({"mode": "c"}, "_Config.mode must be one of 'a', 'b'"),
    ({"lr": 0.0}, "_Config.lr must be in (0, inf), got 0.0"),
    ({"kind": "z"}, "_Config.kind must be one of 'x', 'y', got 'z'"),
])
def test_validate_config_names_class_field_value_and_range(changes, message):
    with pytest.raises(ConfigError) as err:
        _Config(**changes)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_validate_config_accepts_valid_and_numpy_values():
    _Config(n=np.int64(4), noise=np.float32(0.5), sizes=[3, 4], device="cpu", flag=np.bool_(True))
    with pytest.raises(TypeError, match="no field"):
        validate_config(_Config(), nothing=at_least(0))
