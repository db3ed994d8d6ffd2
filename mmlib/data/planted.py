"""A planted sparse dictionary: paired image/text embeddings with known modality-specific and shared atoms.

The method-level test bed of the feature maps and of the MDS (the world of :mod:`mmlib.data.world` tests the
whole pipeline; this one tests the methods on embeddings whose generating atoms are known)::

    z_image = c_image @ D + gap_image + noise        z_text = c_text @ D + gap_text + noise

``D`` ``(A, d)`` holds unit atoms of three planted classes: ``"shared"`` atoms appear in both the image and
the text of a pair (same coefficient, or jittered), ``"image"`` atoms only in images, ``"text"`` atoms only
in texts. Codes are sparse and non-negative: each atom is active in a pair independently with probability
``p``, chosen so that an embedding has ``sparsity`` active atoms on average (averaged over the two
modalities), with coefficients uniform in ``coef_range``. ``gap_image = +gap/2 u``, ``gap_text = -gap/2 u``
for a random unit vector ``u`` mimic the modality gap (the centroids are ``gap`` apart).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.core.artifacts import stable_hash
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, between, check_finite, validate_config
from mmlib.data.embeddings import Embeddings

__all__ = ["ATOM_CLASSES", "PlantedConfig", "PlantedData", "generate_planted", "atom_recovery"]

#: Planted classes, in the order the atoms are laid out in the dictionary.
ATOM_CLASSES: tuple[str, str, str] = ("shared", "image", "text")


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    """Parameters of a planted dictionary.

    Attributes
    ----------
    d : int
        Embedding dimension.
    n_shared, n_image, n_text : int
        Atoms of each planted class.
    sparsity : float
        Expected number of active atoms per embedding (averaged over the two modalities).
    noise : float
        Expected norm of the isotropic Gaussian noise added to every embedding (std ``noise / sqrt(d)``).
    gap : float
        Distance between the image and the text centroid offsets.
    jitter : float
        Log-normal jitter of a shared atom's text coefficient around its image coefficient (0: equal).
    coef_range : (float, float)
        Active coefficients are uniform in this range (``0 <= low <= high``).
    seed : int
    """

    d: int = 64
    n_shared: int = 32
    n_image: int = 16
    n_text: int = 16
    sparsity: float = 3.0
    noise: float = 0.05
    gap: float = 1.0
    jitter: float = 0.0
    coef_range: tuple[float, float] = (0.5, 1.5)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.coef_range, list):
            object.__setattr__(self, "coef_range", tuple(self.coef_range))
        validate_config(self, d=at_least(1), noise=at_least(0.0), gap=at_least(0.0), jitter=at_least(0.0),
                        coef_range=at_least(0.0), seed=between(0, 2 ** 64 - 1))
        if min(self.n_shared, self.n_image, self.n_text) < 0 or self.n_atoms == 0:
            raise ConfigError(f"PlantedConfig atom counts (n_shared, n_image, n_text) must be >= 0 with at least one "
                              f"atom, got n_shared={self.n_shared}, n_image={self.n_image}, n_text={self.n_text}.")
        most = self.n_shared + (self.n_image + self.n_text) / 2
        if not 0 < self.sparsity <= most:
            raise ConfigError(f"PlantedConfig.sparsity (expected active atoms per embedding) must lie in (0, {most:g}] "
                              f"(n_shared + (n_image + n_text) / 2), got {self.sparsity}.")
        if len(self.coef_range) != 2:
            raise ConfigError(f"PlantedConfig.coef_range must be a (low, high) pair, got {self.coef_range!r}.")
        low, high = self.coef_range
        if not 0 <= low <= high:
            raise ConfigError(f"PlantedConfig.coef_range must satisfy 0 <= low <= high, got {self.coef_range}.")

    @property
    def n_atoms(self) -> int:
        """``A``: all atoms."""
        return self.n_shared + self.n_image + self.n_text

    @property
    def p_active(self) -> float:
        """Probability that an atom is active in a pair."""
        return self.sparsity / (self.n_shared + (self.n_image + self.n_text) / 2)


@dataclasses.dataclass(frozen=True)
class PlantedData:
    """Paired embeddings generated from a planted dictionary.

    Attributes
    ----------
    image, text : Tensor
        ``(n, d)`` float32 embeddings of the pairs.
    dictionary : Tensor
        ``(A, d)`` unit atoms.
    codes_image, codes_text : Tensor
        ``(n, A)`` non-negative true codes (zero on the other modality's atoms).
    atom_class : ndarray
        ``(A,)`` ``"shared"``, ``"image"`` or ``"text"``.
    gap_vectors : Tensor
        ``(2, d)`` the image and the text offset.
    config : PlantedConfig
    """

    image: torch.Tensor
    text: torch.Tensor
    dictionary: torch.Tensor
    codes_image: torch.Tensor
    codes_text: torch.Tensor
    atom_class: np.ndarray
    gap_vectors: torch.Tensor
    config: PlantedConfig

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def key(self) -> str:
        """A fingerprint of the generating config and ``n`` (equal keys, equal data)."""
        return stable_hash("planted", self.config, len(self))

    @property
    def meta(self) -> dict[str, Any]:
        """Embeddings-like metadata: the "model" is the planted generator."""
        return {"model": "planted", "identity": f"planted:{self.key}", "n": len(self), "dim": self.config.d}

    def as_embeddings(self) -> Embeddings:
        """The pairs as :class:`~mmlib.data.embeddings.Embeddings` (key and identity from the config)."""
        return Embeddings(image=self.image, text=self.text, key=self.key, meta=self.meta)


def generate_planted(config: PlantedConfig, n: int) -> PlantedData:
    """``n`` pairs from the planted dictionary of ``config`` (deterministic given ``config.seed``)."""
    if not isinstance(config, PlantedConfig):
        raise InputError(f"generate_planted: config must be a PlantedConfig, got {type(config).__name__}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)) or n < 1:
        raise InputError(f"generate_planted: n must be a positive integer (number of pairs), got {n!r}.")
    rng = np.random.default_rng(config.seed)
    c = config
    dictionary = rng.standard_normal((c.n_atoms, c.d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    atom_class = np.array(["shared"] * c.n_shared + ["image"] * c.n_image + ["text"] * c.n_text)
    active = rng.random((n, c.n_atoms)) < c.p_active
    low, high = c.coef_range
    coef = np.where(active, rng.uniform(low, high, (n, c.n_atoms)), 0.0)
    codes_image = np.where(atom_class == "text", 0.0, coef)
    jitter = np.exp(c.jitter * rng.standard_normal((n, c.n_atoms))) if c.jitter > 0 else 1.0
    codes_text = np.where(atom_class == "image", 0.0, np.where(atom_class == "shared", coef * jitter, coef))
    u = rng.standard_normal(c.d)
    u /= np.linalg.norm(u)
    gaps = np.stack([u * c.gap / 2, -u * c.gap / 2])
    noise = rng.standard_normal((2, n, c.d)) * (c.noise / np.sqrt(c.d))
    image = codes_image @ dictionary + gaps[0] + noise[0]
    text = codes_text @ dictionary + gaps[1] + noise[1]
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return PlantedData(image=f32(image), text=f32(text), dictionary=f32(dictionary), codes_image=f32(codes_image),
                       codes_text=f32(codes_text), atom_class=atom_class, gap_vectors=f32(gaps), config=config)


def atom_recovery(decoder: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Best-match cosine ``(A,)`` of each true atom ``(A, d)`` with the learned directions ``(K, d)``.

    Each true atom is matched to its most similar learned direction (several atoms may share one); a value
    near 1 means the atom was recovered.
    """
    decoder, true = torch.as_tensor(decoder).float(), torch.as_tensor(true).float()
    if decoder.ndim != 2 or true.ndim != 2 or decoder.shape[1] != true.shape[1]:
        raise InputError(f"atom_recovery: decoder (K, d) and true atoms (A, d) must share d, got "
                         f"{tuple(decoder.shape)} and {tuple(true.shape)}; pass the map's dictionary and the "
                         "planted dictionary of the same embedding space.")
    check_finite(decoder, "atom_recovery: decoder", hint="pass the directions of a trained (finite) map")
    check_finite(true, "atom_recovery: true", hint="pass the planted dictionary")
    return (F.normalize(true, dim=1) @ F.normalize(decoder, dim=1).T).max(dim=1).values
