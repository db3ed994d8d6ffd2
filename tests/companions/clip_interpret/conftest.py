"""Fixtures of the CLIP-InterpreT tests: random images and a planted decomposition with per-token terms."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mmlib.companions.clip_interpret import ImageDecomposition


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` standard normal pixels (already "preprocessed")."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def planted_decomposition(n: int = 12, layers: int = 2, heads: int = 2, d: int = 8, grid: int = 2,
                          seed: int = 0) -> ImageDecomposition:
    """Random per-token head terms (the heads their sums), every other term zero."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, layers, heads, 1 + grid * grid, d, generator=g)
    zeros = torch.zeros(n, layers, d)
    return ImageDecomposition(heads=tokens.sum(3), mlps=zeros, attn_biases=zeros.clone(), embedding=torch.zeros(n, d),
                              ln_bias=torch.zeros(n, d), tokens=tokens, token_layers=tuple(range(layers)),
                              grid=(grid, grid))


@pytest.fixture(name="random_images")
def random_images_fixture() -> Callable[..., torch.Tensor]:
    """The :func:`random_images` function."""
    return random_images


@pytest.fixture(name="planted_decomposition")
def planted_decomposition_fixture() -> Callable[..., ImageDecomposition]:
    """The :func:`planted_decomposition` function."""
    return planted_decomposition
