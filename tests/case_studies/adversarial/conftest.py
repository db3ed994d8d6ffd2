"""Fixtures of the adversarial tests: pixels on the box's faces, random class embeddings, and a feature map with
weights (to check that attacks and defences never train it).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mmlib.feature_maps.base import FeatureMap
from mmlib.models.clip import ModelBundle


class LinearReLUMap(FeatureMap):
    """A tiny feature map with weights (``h = ReLU(W z)``), to check that attacks never train it."""

    kind = "raw"

    def __init__(self, dim: int, k: int, seed: int = 0) -> None:
        super().__init__(dim, k)
        self.layer = nn.Linear(dim, k, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)))

    def _encode(self, z, modality):
        return torch.relu(self.layer(z))

    def state_tensors(self):
        return {"W": self.layer.weight.detach()}

    @classmethod
    def from_state(cls, tensors, config):  # pragma: no cover - not stored by these tests
        raise NotImplementedError


def make_pixels(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """``n`` random images ``(n, 3, size, size)`` in [0, 1]; image 0 has pixels on both faces of the box."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0, 0, :2] = 0.0  # pixels on the box's faces: the attack must stay inside
    x[0, 1, :2] = 1.0
    return x


@pytest.fixture
def pixels() -> Callable[..., torch.Tensor]:
    """The :func:`make_pixels` function: ``pixels(n=4, size=16, seed=0)``."""
    return make_pixels


@pytest.fixture
def classes() -> Callable[..., torch.Tensor]:
    """``classes(bundle, k=3)``: ``k`` random class embeddings ``(k, d)`` in the bundle's embedding space (seed 1)."""
    def make(bundle: ModelBundle, k: int = 3) -> torch.Tensor:
        return torch.randn(k, bundle.embed_dim, generator=torch.Generator().manual_seed(1))
    return make


@pytest.fixture
def linear_relu_map() -> type[LinearReLUMap]:
    """The :class:`LinearReLUMap` class: ``linear_relu_map(dim, k, seed=0)``."""
    return LinearReLUMap
