"""Text-to-image editing in feature space (Method page, `claim-5-7a` / `claim-5-7b`).

Move a reference image's ImgD / TextD / CrossD features toward a text prompt's, decode to an embedding, generate,
and read what the image shows.

The paper's claim: larger interventions on TextD features give stronger control of high-level semantics,
while ImgD interventions keep more of the reference image's visual detail. The edit ([ours] where the paper
is silent) on a feature map ``g`` with a decoder (the SAE):

    h_ref = g(z_ref, image)            h_p = g(z_prompt, prompt_modality)                 (K,) each
    h'    = h_ref  outside the group S;  (1 - alpha) h_ref + alpha * scale * h_p  on S     alpha in [0, 1]
    z'    = z_ref + decode(h', image) - decode(h_ref, image)                              (keep_residual)

``alpha = 1, scale = 1`` *replaces* the group's activations by the prompt's; ``scale`` > 1 amplifies the
prompt's activations (the "scaling" intervention). ``keep_residual=True`` (default) keeps the SAE's
reconstruction error of the reference, so that ``alpha = 0`` returns ``z_ref`` exactly and only the edit
changes the embedding; ``False`` decodes ``h'`` alone. The edited embedding conditions a generator (the
tiny profile's :class:`mmlib.case_studies.t2i.tiny_decoder.EmbeddingDecoder`, or a real unCLIP pipeline via
:class:`mmlib.case_studies.t2i.unclip.UnCLIPDecoder`), and probes (:mod:`mmlib.case_studies.t2i.image_probes`)
read the generated images:

* **semantic control**: the probe reads the prompt's value of the edited factor;
* **detail preservation**: the probe reads the reference's value of factors the prompt does not name (by
  default the image-only / image-ladder factors position, background and size).

Every group is compared with a size-matched random set of alive features (``"random:<group>"``, see
:func:`mmlib.analysis.categories.group_masks`). :func:`scale_sweep` repeats the sweep at ``alpha = 1`` with the
prompt's activations amplified (the "scaling" intervention).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.core.errors import ConfigError, InputError, UnsupportedModelError
from mmlib.core.validation import at_least, between, check_finite, one_of, validate_config
from mmlib.feature_maps.base import FeatureMapLike, check_modality

__all__ = ["Generator", "EditConfig", "EditResult", "edit_features", "edit_embedding", "edit_sweep", "scale_sweep"]


class Generator(Protocol):
    """What :func:`edit_sweep` generates with: embeddings ``(n, d)`` -> uint8 images ``(n, H, W, 3)``."""

    embed_dim: int

    def sample(self, z: torch.Tensor, *, seeds: np.ndarray, steps: int, guidance: float) -> np.ndarray:
        """Images ``(n, H, W, 3)`` uint8 from embeddings ``(n, d)``, one noise seed per row."""
        ...


class _Probes(Protocol):
    def predict(self, images: np.ndarray, factors: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 <= float(alpha) <= 1.0):
        raise InputError(f"alpha (intervention strength) must lie in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_mask(mask: np.ndarray | torch.Tensor, n_features: int) -> torch.Tensor:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_features,):
        raise InputError(f"the feature group must be a boolean mask of shape ({n_features},), "
                         f"got dtype {mask.dtype} and shape {mask.shape}")
    return torch.from_numpy(mask)


def edit_features(h_ref: torch.Tensor, h_prompt: torch.Tensor, mask: np.ndarray | torch.Tensor, alpha: float,
                  scale: float = 1.0) -> torch.Tensor:
    """Move the activations of the group ``mask`` toward the prompt's.

    Parameters
    ----------
    h_ref : (n, K)
        The references' activations.
    h_prompt : (n, K) or (K,)
        The prompt's activations (one prompt for all references when 1-D).
    mask : (K,) bool
        The group ``S`` (e.g. ``categories.mask("TextD")``).
    alpha : float in [0, 1]
        Strength: 0 leaves ``h_ref`` unchanged, 1 replaces the group by ``scale * h_prompt``.
    scale : float >= 0
        Multiplies the prompt's activations.

    Returns
    -------
    (n, K): ``h_ref`` outside ``S``, ``(1 - alpha) h_ref + alpha scale h_prompt`` on ``S``.
    """
    alpha = _check_alpha(alpha)
    if not (scale >= 0 and math.isfinite(scale)):
        raise InputError(f"scale must be a finite number >= 0, got {scale!r}")
    h_ref, h_prompt = torch.as_tensor(h_ref).float(), torch.as_tensor(h_prompt).float()
    if h_ref.ndim != 2:
        raise InputError(f"reference activations must be (n, K), got shape {tuple(h_ref.shape)}")
    if h_prompt.ndim == 1:
        h_prompt = h_prompt.expand_as(h_ref)
    if h_prompt.shape != h_ref.shape:
        raise InputError(f"prompt activations {tuple(h_prompt.shape)} do not match the references' "
                         f"{tuple(h_ref.shape)}")
    check_finite(h_ref, "h_ref")
    check_finite(h_prompt, "h_prompt")
    s = _check_mask(mask, h_ref.shape[1])
    target = (1 - alpha) * h_ref + alpha * scale * h_prompt
    return torch.where(s[None, :], target, h_ref)


def edit_embedding(feature_map: FeatureMapLike, z_ref: torch.Tensor, z_prompt: torch.Tensor,
                   mask: np.ndarray | torch.Tensor, alpha: float, scale: float = 1.0, prompt_modality: str = "text",
                   keep_residual: bool = True) -> torch.Tensor:
    """Edited image embeddings ``(n, d)``: the references' with group ``mask`` moved toward the prompt's.

    Parameters
    ----------
    feature_map : a map with a decoder (SAE)
    z_ref : (n, d)
        Reference image embeddings.
    z_prompt : (n, d) or (d,)
        Prompt embeddings (text embeddings for ``prompt_modality="text"``).
    mask, alpha, scale : see :func:`edit_features`.
    prompt_modality : {"text", "image"}
        The side of the map the prompt is encoded with (``"image"`` for an image-space prompt, e.g. the output
        of a prior).
    keep_residual : bool
        Keep the map's reconstruction error of the reference (``alpha = 0`` then returns ``z_ref`` exactly).

    Raises
    ------
    NotImplementedError
        for a map without a decoder (NCL, raw ``|z|``): the edit cannot be brought back to an embedding.
    """
    if not feature_map.has_decoder:
        raise UnsupportedModelError(f"{getattr(feature_map, 'name', type(feature_map).__name__)} has no decoder: "
                                  "editing needs a map that decodes features to embeddings (an SAE)")
    check_modality(prompt_modality)
    z_ref = torch.as_tensor(z_ref).float()
    z_prompt = torch.as_tensor(z_prompt).float()
    z_ref, z_prompt = torch.as_tensor(z_ref), torch.as_tensor(z_prompt)
    check_finite(z_ref, "z_ref")
    check_finite(z_prompt, "z_prompt")
    if z_prompt.ndim == 1:
        z_prompt = z_prompt[None]
    h_ref = feature_map.encode(z_ref, "image")
    h_prompt = feature_map.encode(z_prompt, prompt_modality)
    h_edit = edit_features(h_ref, h_prompt[0] if len(h_prompt) == 1 else h_prompt, mask, alpha, scale)
    decoded = feature_map.decode(h_edit, "image")
    return z_ref + decoded - feature_map.decode(h_ref, "image") if keep_residual else decoded


@dataclasses.dataclass(frozen=True)
class EditConfig:
    """One editing experiment.

    Attributes
    ----------
    alphas : tuple of float
        Intervention strengths in ``[0, 1]`` (``0`` is the unedited reference, generated once).
    scale : float
        Multiplier of the prompt's activations (see :func:`edit_features`).
    prompt_modality : {"text", "image"}
    keep_residual : bool
    steps : int
        Sampling steps of the generator.
    guidance : float
        Classifier-free guidance scale of the generator.
    """

    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    scale: float = 1.0
    prompt_modality: str = "text"
    keep_residual: bool = True
    steps: int = 20
    guidance: float = 2.0

    def __post_init__(self) -> None:
        validate_config(self)  # the types first, so that the checks below can compare
        if not self.alphas:
            raise ConfigError("give at least one intervention strength alpha")
        for a in self.alphas:
            try:
                _check_alpha(a)
            except InputError as err:
                raise ConfigError(f"EditConfig.alphas: {err}") from None
        if not (self.scale >= 0 and math.isfinite(self.scale)):
            raise ConfigError(f"scale must be a finite number >= 0, got {self.scale!r}")
        try:
            check_modality(self.prompt_modality)
        except ValueError as err:
            raise ConfigError(f"EditConfig.prompt_modality: {err}") from None
        if self.steps < 1 or self.guidance < 0:
            raise ConfigError(f"steps must be >= 1 and guidance >= 0, got {self.steps} and {self.guidance}")
        validate_config(self, alphas=between(0.0, 1.0), scale=at_least(0.0), prompt_modality=one_of("text", "image"),
                        steps=at_least(1), guidance=at_least(0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class EditResult:
    """An editing sweep.

    Attributes
    ----------
    table : DataFrame
        One row per (reference, group, alpha): ``ref`` (position in the inputs), ``group``, ``alpha``,
        ``n_features`` (group size), ``shift`` (cosine distance between the edited and the reference
        embedding), ``control`` (the probe reads the prompt's value of the edited factor), ``changed`` (it no
        longer reads the reference's value), one ``keep_<factor>`` column per preserved factor, and
        ``preserved`` (their mean).
    images : dict
        ``(group, alpha)`` -> uint8 ``(n_ref, H, W, 3)``; ``alpha = 0`` is stored once as ``("reference", 0.0)``.
    """

    table: pd.DataFrame
    images: dict[tuple[str, float], np.ndarray]


def edit_sweep(generator: Generator, probes: _Probes, feature_map: FeatureMapLike, z_ref: torch.Tensor,
               z_prompt: torch.Tensor, groups: Mapping[str, np.ndarray], factor: str, target: np.ndarray,
               reference: Mapping[str, np.ndarray], config: EditConfig = EditConfig(),
               noise_seeds: np.ndarray | None = None) -> EditResult:
    """Edit every reference toward its prompt, per group and strength; generate; read with the probes.

    Parameters
    ----------
    generator : Generator
        E.g. :class:`mmlib.case_studies.t2i.tiny_decoder.EmbeddingDecoder`.
    probes : object with ``predict(images, factors) -> {factor: (n,)}``
    feature_map : a map with a decoder
    z_ref : (n, d)
        Reference image embeddings.
    z_prompt : (n, d)
        Each reference's prompt embedding.
    groups : name -> (K,) bool mask (see :func:`group_masks`)
    factor : str
        The factor the prompt names (semantic control is read on it).
    target : (n,) int
        The value of ``factor`` each prompt asks for.
    reference : dict
        factor -> ``(n,)`` the references' values: ``factor`` itself (for ``changed``) and the factors whose
        preservation is measured (every other key).
    noise_seeds : (n,) int, optional
        The generator's noise seed per reference (default ``0..n-1``): every edit of a reference starts from
        the same noise.
    """
    z_ref = torch.as_tensor(z_ref).float()
    z_prompt = torch.as_tensor(z_prompt).float()
    n = len(z_ref)
    if n == 0:
        raise InputError("no references to edit: the group of references is empty")
    if z_prompt.shape != z_ref.shape:
        raise InputError(f"one prompt embedding per reference: got {tuple(z_prompt.shape)} for {tuple(z_ref.shape)}")
    if not groups:
        raise InputError("no feature groups to edit")
    target = np.asarray(target)
    if target.shape != (n,):
        raise InputError(f"target must have shape ({n},), got {target.shape}")
    if factor not in reference:
        raise InputError(f"reference values of the edited factor {factor!r} are needed (given: {sorted(reference)})")
    keep = [f for f in reference if f != factor]
    for f, v in reference.items():
        if np.asarray(v).shape != (n,):
            raise InputError(f"reference values of {f!r} must have shape ({n},), got {np.asarray(v).shape}")
    seeds = np.arange(n) if noise_seeds is None else np.asarray(noise_seeds)
    if seeds.shape != (n,):
        raise InputError(f"noise_seeds must have shape ({n},), got {seeds.shape}")
    for mask in groups.values():
        _check_mask(mask, feature_map.n_features)

    # Every (group, alpha) embedding; alpha = 0 is the reference for every group (generated once).
    jobs: list[tuple[str, float]] = [("reference", 0.0)]
    embeddings = [z_ref if config.keep_residual else
                  feature_map.decode(feature_map.encode(z_ref, "image"), "image")]
    for g, mask in groups.items():
        for a in config.alphas:
            if a == 0.0:
                continue
            jobs.append((g, float(a)))
            embeddings.append(edit_embedding(feature_map, z_ref, z_prompt, mask, a, config.scale,
                                             config.prompt_modality, config.keep_residual))
    z_all = torch.cat(embeddings)
    images = generator.sample(z_all, seeds=np.tile(seeds, len(jobs)), steps=config.steps, guidance=config.guidance)
    pred = probes.predict(images, [factor, *keep])
    shift = 1 - F.cosine_similarity(z_all, z_ref.repeat(len(jobs), 1), dim=1).numpy()
    rows, by_job = [], {}
    for j, (g, a) in enumerate(jobs):
        sl = slice(j * n, (j + 1) * n)
        by_job[(g, a)] = images[sl]
        names = list(groups) if g == "reference" else [g]
        for name in names:  # the reference is alpha = 0 of every group
            block = dict(ref=np.arange(n), group=name, alpha=a, n_features=int(groups[name].sum()), shift=shift[sl],
                         control=pred[factor][sl] == target,
                         changed=pred[factor][sl] != np.asarray(reference[factor]))
            for f in keep:
                block[f"keep_{f}"] = pred[f][sl] == np.asarray(reference[f])
            rows.append(pd.DataFrame(block))
    table = pd.concat(rows, ignore_index=True)
    table["preserved"] = table[[f"keep_{f}" for f in keep]].mean(axis=1) if keep else np.nan
    return EditResult(table.sort_values(["group", "alpha", "ref"], ignore_index=True), by_job)


def scale_sweep(generator: Generator, probes: _Probes, feature_map: FeatureMapLike, z_ref: torch.Tensor,
                z_prompt: torch.Tensor, groups: Mapping[str, np.ndarray], factor: str, target: np.ndarray,
                reference: Mapping[str, np.ndarray], scales: Sequence[float], config: EditConfig = EditConfig(),
                noise_seeds: np.ndarray | None = None) -> pd.DataFrame:
    """The "scaling" intervention: each group replaced by the prompt's activations times ``scale`` (``alpha = 1``).

    One :func:`edit_sweep` per scale, with ``config``'s sampling settings and ``alphas=(1.0,)``.

    Parameters
    ----------
    generator, probes, feature_map, z_ref, z_prompt, groups, factor, target, reference, noise_seeds
        As for :func:`edit_sweep` (``z_ref`` and ``z_prompt`` ``(n, d)``, ``target`` ``(n,)``).
    scales : sequence of float >= 0
        Multipliers of the prompt's activations.
    config : EditConfig
        Sampling steps, guidance, prompt modality and residual handling; its ``alphas`` and ``scale`` are replaced.

    Returns
    -------
    DataFrame
        The rows of :attr:`EditResult.table` at ``alpha = 1`` (``n * len(groups)`` per scale), with a ``scale``
        column.
    """
    if not scales:
        raise InputError("give at least one scale")
    tables = []
    for sc in scales:
        result = edit_sweep(generator, probes, feature_map, z_ref, z_prompt, groups, factor, target, reference,
                            dataclasses.replace(config, alphas=(1.0,), scale=float(sc)), noise_seeds)
        tables.append(result.table[result.table.alpha == 1.0].assign(scale=float(sc)))
    return pd.concat(tables, ignore_index=True)
