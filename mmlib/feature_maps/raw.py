"""Raw CLIP dimensions as a feature map: ``K = d`` features, activation ``|z|`` (default) or ``ReLU(z)``.

Raw dimensions are signed, so the MDS needs a non-negative activation ([ours], see the book's Method page). They have
no decoder and need no training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from mmlib.core.artifacts import to_jsonable
from mmlib.core.errors import ConfigError
from mmlib.core.validation import validate_config
from mmlib.feature_maps.base import ArgumentTypeError, FeatureMap, Source


@dataclasses.dataclass(frozen=True)
class RawConfig:
    """Raw CLIP dimensions as features.

    Attributes
    ----------
    activation : {"abs", "relu"}
        ``|z|`` (default: a dimension is "active" for large values of either sign) or ``ReLU(z)``.
    """

    activation: str = "abs"

    def __post_init__(self) -> None:
        validate_config(self)
        if self.activation not in ("abs", "relu"):
            raise ConfigError(f"RawConfig.activation must be 'abs' or 'relu', got {self.activation!r}.")


class RawDims(FeatureMap):
    """The ``d`` raw embedding dimensions as ``K = d`` features: ``|z|`` (default) or ``ReLU(z)``.

    No decoder (``has_decoder`` is False): ``|z|`` loses the sign and ``ReLU(z)`` the negative part, so
    neither is an autoencoder. Needs no training.
    """

    kind = "raw"
    has_decoder = False

    def __init__(self, input_dim: int, config: RawConfig = RawConfig(), source: Source | None = None) -> None:
        if not isinstance(config, RawConfig):
            raise ArgumentTypeError(f"RawDims: config must be a RawConfig, got {type(config).__name__}")
        super().__init__(input_dim, input_dim, hparams=to_jsonable(config), source=source)
        self.activation = config.activation

    @property
    def name(self) -> str:
        """A short display name, e.g. ``"raw-abs(K=64)"``."""
        return f"raw-{self.activation}(K={self.n_features})"

    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        return z.abs() if self.activation == "abs" else torch.relu(z)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """A placeholder tensor (raw dimensions have no weights; safetensors needs one tensor)."""
        return {"input_dim": torch.tensor([self.input_dim])}  # safetensors needs at least one tensor

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> RawDims:
        """Rebuild the map from its recorded config."""
        return cls(int(config["input_dim"]), RawConfig(**config.get("hparams", {})))
