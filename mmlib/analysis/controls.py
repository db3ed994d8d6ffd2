"""Controls of the MDS analysis that exist for any corpus and any model.

The tiny profile's null world (every factor both shown and said, models trained on it) is a control that only a
generated world can have. These three exist for real CLIP on a real corpus too, and chapters 03-05 use them on both
profiles (chapter 03 checks on the tiny profile that they tell the same story as the null world):

* **random-init** (:func:`mmlib.pipeline.setup` with ``control="random-init"``): the same architecture at random
  initialisation, embedding the same data, with the same feature maps trained on its embeddings. *Question:* how much
  of the MDS distribution does the pipeline (architecture, data, map, score) produce with no learned modality
  structure at all?
* **shuffled** (:func:`shuffle_pairs`): the trained model's embeddings with the captions permuted across pairs, so
  that a caption no longer describes its image; the maps are trained on these pairs. *Question:* does a feature's MDS
  depend on the image and its caption belonging together, or only on the two modalities' marginal distributions?
* **swapped** (:func:`swap_modalities`, :func:`swap_z`): the trained maps' activations with each pair's image and
  text activations exchanged with probability 1/2 (a permutation of the modality labels within each pair). Each
  feature then scores as if its activations did not depend on the modality: its expected MDS is exactly 1/2 and its
  spread comes from its own activity. *Question:* is a feature's distance from 1/2 more than its activity alone would
  give, i.e. is it modality-dominant at all? :func:`swap_z` gives each feature's z statistic under this null
  exactly (mean and variance of the sign-flip distribution), with no draws.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mmlib.analysis.mds import _as_float
from mmlib.core.errors import InputError
from mmlib.core.validation import check_nonnegative
from mmlib.data.embeddings import Embeddings

#: The real-data controls, in the order chapters show them.
CONTROLS = ("random-init", "shuffled", "swapped")


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def shuffle_pairs(embeddings: Embeddings, seed: int = 0) -> Embeddings:
    """The same pairs with the captions (``text`` and ``text_tower`` rows) permuted by a seeded permutation.

    The images keep their order; a derangement is not forced (with ``n`` pairs about one caption stays with its own
    image, as in any uniform permutation). The result's ``key`` is the input's key with ``:shuffled-<seed>`` appended,
    so feature maps trained on it are stored apart from those of the real pairs.

    Parameters
    ----------
    embeddings : Embeddings
        ``n >= 2`` pairs.
    seed : int

    Returns
    -------
    Embeddings
    """
    if not isinstance(embeddings, Embeddings):
        raise InputError(f"shuffle_pairs takes Embeddings, got {type(embeddings).__name__}")
    n = len(embeddings.image)
    if n < 2:
        raise InputError(f"shuffle_pairs needs at least 2 pairs to permute, got {n}")
    perm = torch.randperm(n, generator=_generator(seed))
    text_tower = embeddings.text_tower[perm] if embeddings.text_tower is not None else None
    meta = {**embeddings.meta, "control": "shuffled", "shuffle_seed": int(seed)}
    return dataclasses.replace(embeddings, text=embeddings.text[perm], text_tower=text_tower, meta=meta,
                               key=f"{embeddings.key}:shuffled-{int(seed)}", path=None)


def swap_modalities(a_image: torch.Tensor, a_text: torch.Tensor, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange each pair's image and text activations with probability 1/2 (the same coin for every feature).

    Parameters
    ----------
    a_image, a_text : (n, K) tensors
        Activations of the same ``n`` pairs.
    seed : int

    Returns
    -------
    (a_image', a_text') : two new (n, K) tensors
        Row ``i`` is ``(a_text[i], a_image[i])`` where the coin fell, ``(a_image[i], a_text[i])`` otherwise.
    """
    a_image, a_text = _as_float(a_image, "a_image"), _as_float(a_text, "a_text")
    if a_image.shape != a_text.shape or a_image.ndim != 2:
        raise InputError(f"a_image {tuple(a_image.shape)} and a_text {tuple(a_text.shape)} must be (n, K) "
                         "activations of the same pairs")
    flip = (torch.rand(len(a_image), generator=_generator(seed)) < 0.5).unsqueeze(1)
    return torch.where(flip, a_text, a_image), torch.where(flip, a_image, a_text)


@dataclasses.dataclass(frozen=True, eq=False)
class SwapTest:
    """Each feature's paired MDS against the swap null (:func:`swap_z`).

    Attributes
    ----------
    z : (K,) float64 array
        ``sum(r - 1/2) / sqrt(sum((r - 1/2)^2))`` over the feature's active pairs, ``r = a_I / (a_I + a_T)``; NaN
        for a dead feature or one whose every active pair has ``r = 1/2``.
    n_active : (K,) int64 array
        Active pairs of each feature.
    """

    z: np.ndarray
    n_active: np.ndarray

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        """``(K,)`` bool: features whose MDS differs from 1/2 beyond the swap null (two-sided, Benjamini-Hochberg
        at false-discovery rate ``alpha`` over the features with a defined z).
        """
        from scipy.stats import false_discovery_control, norm

        if not 0 < alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
        out = np.zeros(len(self.z), dtype=bool)
        defined = np.isfinite(self.z)
        if defined.any():
            p = 2 * norm.sf(np.abs(self.z[defined]))
            out[defined] = false_discovery_control(p) <= alpha
        return out

    def min_active_for(self, z: float = 1.96) -> int:
        """The fewest active pairs with which a feature can reach ``|z|``: ``ceil(z^2)`` (all ``r`` at 0 or 1)."""
        return int(np.ceil(z * z))


def swap_z(a_image: torch.Tensor, a_text: torch.Tensor, eps: float = 0.0, chunk_size: int = 4096) -> SwapTest:
    """Each feature's z statistic against the swap null (see the module docstring), exactly, in chunks of pairs.

    Under the null, each active pair's ``r - 1/2`` keeps or flips its sign with probability 1/2, so
    ``sum(r - 1/2)`` has mean 0 and variance ``sum((r - 1/2)^2)``. A feature that fires on one side only on ``n``
    pairs has ``z = sqrt(n)``: it needs at least 4 active pairs to reach ``|z| = 1.96``.

    Parameters
    ----------
    a_image, a_text : (n, K) tensors
        Non-negative activations of the same pairs.
    eps : float
        Activity threshold on ``a_I + a_T`` (as in :func:`mmlib.analysis.mds.modality_dominance`).
    chunk_size : int
        Pairs per chunk (memory ``O(chunk_size * K)``).

    Returns
    -------
    SwapTest
    """
    a_image, a_text = _as_float(a_image, "a_image"), _as_float(a_text, "a_text")
    if a_image.shape != a_text.shape or a_image.ndim != 2:
        raise InputError(f"a_image {tuple(a_image.shape)} and a_text {tuple(a_text.shape)} must be (n, K) "
                         "activations of the same pairs")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    hint = "take |z| or ReLU(z) of raw dimensions first"
    check_nonnegative(a_image, "a_image", hint=hint)
    check_nonnegative(a_text, "a_text", hint=hint)
    k = a_image.shape[1]
    first, second = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    n_active = torch.zeros(k, dtype=torch.int64)
    for a_i, a_t in zip(a_image.split(chunk_size), a_text.split(chunk_size)):
        a_i, a_t = a_i.double(), a_t.double()
        t = a_i + a_t
        active = t > eps
        centred = torch.where(active, a_i / torch.where(active, t, 1.0) - 0.5, 0.0)
        first += centred.sum(0)
        second += centred.square().sum(0)
        n_active += active.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (first / second.sqrt()).numpy()
    z[second.numpy() == 0] = np.nan
    return SwapTest(z=z, n_active=n_active.numpy())
