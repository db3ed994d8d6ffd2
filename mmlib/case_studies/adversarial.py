"""Adversarial attack and defence seen through the feature categories (Method page, `claim-5-6a` / `claim-5-6b`).

Three parts, one per question of the chapter:

* **(a) attack.** L∞ projected gradient descent (PGD, Madry et al. 2018) on images in pixel space ``[0, 1]``,
  before the model's normalisation, against zero-shot classification with fixed class text embeddings
  (:func:`zero_shot_attack`). :class:`ImageEncoder` is the differentiable forward: resize to the tower's input
  size (a no-op for the tiny 32-px world and for an already preprocessed 224-px tensor), the bundle's own
  mean/std normalisation, the image tower, and an optional adapter. :func:`category_shift` then asks which
  feature category (ImgD / TextD / CrossD, from the MDS) moves most between benign and adversarial images,
  against size-matched random feature sets.
* **(b) v1 defence, alignment training on selected features.** FARE-style unsupervised adversarial fine-tuning
  (Schlarmann et al., ICML 2024) restricted to one category: an adapter on the image tower is trained so that
  the feature-map activations of adversarial images (regenerated against the current model at every step)
  match those of the clean images under the frozen original model, *only on the selected features*
  (:func:`alignment_loss`, :func:`train_alignment_adapter`, cached by :func:`load_or_train_adapter`).
* **(c) v3 cross-modal adversarial examples.** Perturbations that steer the selected category's activations of
  an image toward a target (by default the activations of another pair's *caption*) while penalising change
  of every other feature (:func:`steering_attack`); their effect across modalities is read from image->text
  and text->image retrieval ranks (:func:`mmlib.analysis.retrieval.retrieval_ranks`, :func:`cross_modal_effect`).

Feature maps are applied differentiably through their own ``_encode`` (the public ``encode`` runs without
gradients); the map's weights are never updated.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from mmlib.analysis.categories import check_group_masks, random_feature_mask
from mmlib.analysis.retrieval import retrieval_ranks
from mmlib.core.artifacts import code_version, load_or_compute, stable_hash, tensor_fingerprint
from mmlib.core.devices import effective_threads
from mmlib.core.stats import mean_bootstrap_ci
from mmlib.feature_maps.base import FeatureMap, check_modality
from mmlib.models.clip import ModelBundle

__all__ = ["PGDConfig", "ImageEncoder", "image_encoder", "to_pixels", "feature_activations", "zero_shot_logits",
           "pgd_attack", "zero_shot_attack", "noise_attack", "category_shift", "alignment_loss", "ADAPTERS",
           "INNER_OBJECTIVES", "DefenceConfig", "TrainedAdapter", "train_alignment_adapter",
           "load_or_train_adapter", "feature_scale", "steering_attack", "cross_modal_effect"]

ARTIFACT_KIND = "adversarial_adapters"
#: Where the defence's trainable parameters sit (see :class:`DefenceConfig`).
ADAPTERS: tuple[str, ...] = ("last_block", "linear")
#: What the inner maximisation of the defence attacks (see :class:`DefenceConfig`).
INNER_OBJECTIVES: tuple[str, ...] = ("masked", "embedding")


# ------------------------------------------------------------------------------------------------- attack
@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """An L∞ PGD attack in pixel space ``[0, 1]``.

    Attributes
    ----------
    eps : float
        Budget: every pixel moves by at most ``eps`` (e.g. ``4 / 255``); must lie in ``[0, 1]``.
    steps : int
        Gradient-sign steps (>= 1).
    step_size : float or None
        Step length; ``None`` gives ``2.5 eps / steps`` (Madry et al.'s rule).
    random_start : bool
        Start from a uniform random point of the ``eps`` ball (seeded by ``seed``).
    seed : int
    """

    eps: float = 4 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"attack budget eps must lie in [0, 1] (pixel units; e.g. 4/255 = {4 / 255:.4f}), "
                             f"got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"PGD steps must be a positive integer, got {self.steps!r}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"PGD step_size must be positive (or None for 2.5 eps / steps), got {self.step_size!r}")

    @property
    def alpha(self) -> float:
        """The step length actually used."""
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps


class LinearAdapter(nn.Module):
    """Residual linear adapter on the image embedding: ``z + z W^T + b``, zero-initialised (identity at start)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.linear(z)


class ImageEncoder(nn.Module):
    """Differentiable pixels ``(b, 3, H, W)`` in ``[0, 1]`` -> image embeddings ``(b, d)``.

    Resizes to the tower's input size when ``H, W`` differ (bilinear), normalises with the bundle's mean/std,
    runs the image tower, then the optional ``adapter`` (an ``nn.Module`` on ``(b, d)``).

    Attributes
    ----------
    visual : nn.Module
        The image tower (``model.visual`` of an ``open_clip.CLIP``).
    mean, std : Tensor
        ``(1, 3, 1, 1)`` buffers.
    image_size : tuple of int
    logit_scale : float
        The model's learned logit scale (``exp(logit_scale)``; 100 when the model has none).
    adapter : nn.Module or None
    """

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float],
                 image_size: tuple[int, int], logit_scale: float = 100.0, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))
        self.image_size = tuple(int(s) for s in image_size)
        self.logit_scale = float(logit_scale)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (b, 3, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        z = self.visual((x - self.mean) / self.std)
        if isinstance(z, (tuple, list)):  # towers that also return tokens
            z = z[0]
        return self.adapter(z) if self.adapter is not None else z

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings ``(n, d)`` of pixels ``(n, 3, H, W)``, without gradients, in batches."""
        device = self.mean.device
        return torch.cat([self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def _normalize_transform(bundle: ModelBundle) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for t in getattr(bundle.preprocess, "transforms", [bundle.preprocess]):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    raise ValueError(f"cannot find the mean/std normalisation in {bundle.name}'s preprocess ({bundle.preprocess}); "
                     "pass a bundle whose preprocess ends with torchvision's Normalize")


def image_encoder(bundle: ModelBundle, adapter: nn.Module | None = None, visual: nn.Module | None = None
                  ) -> ImageEncoder:
    """The differentiable pixel -> embedding forward of ``bundle`` (its own normalisation), in eval mode.

    ``visual`` replaces the bundle's image tower (e.g. a fine-tuned copy); ``adapter`` acts on the embedding.
    """
    model = bundle.model
    visual = model.visual if visual is None else visual
    size = getattr(model.visual, "image_size", None)
    if size is None:
        raise ValueError(f"{bundle.name}'s image tower has no image_size attribute")
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean, std = _normalize_transform(bundle)
    scale = float(model.logit_scale.detach().exp()) if getattr(model, "logit_scale", None) is not None else 100.0
    device = next(model.parameters()).device
    return ImageEncoder(visual, mean, std, size, scale, adapter).to(device).eval()


def to_pixels(bundle: ModelBundle, images: np.ndarray | Sequence[Image.Image]) -> torch.Tensor:
    """Images as the tower sees them, in pixel space: ``(n, 3, S, S)`` float in ``[0, 1]``.

    Each image goes through the bundle's own ``preprocess`` (resize, crop, normalise) and the normalisation is
    undone, so that an attack on these pixels is an attack on the preprocessed tensor (224 px for ViT-B-32;
    the tiny world's 32-px images pass unchanged).

    Parameters
    ----------
    images : uint8 array ``(n, H, W, 3)`` or a sequence of PIL images
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (n, H, W, 3), got {images.shape}")
        images = [Image.fromarray(np.ascontiguousarray(im), mode="RGB") for im in images]
    if len(images) == 0:
        raise ValueError("no images given")
    mean, std = _normalize_transform(bundle)
    x = torch.stack([bundle.preprocess(im) for im in images]).float()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


@contextlib.contextmanager
def _frozen(module_owner: Any) -> Iterator[None]:
    """Temporarily turn off ``requires_grad`` of every parameter of the ``nn.Module`` attributes of an object."""
    modules = [v for v in vars(module_owner).values() if isinstance(v, nn.Module)]
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _map_device(fmap: FeatureMap) -> torch.device:
    """Where the map's tensors live (maps loaded from the artifact store are on the CPU)."""
    for value in vars(fmap).values():
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, nn.Module):
            tensor = next(iter(value.parameters()), None)
            if tensor is not None:
                return tensor.device
    return torch.device("cpu")


def feature_activations(fmap: FeatureMap, z: torch.Tensor, modality: str = "image") -> torch.Tensor:
    """Differentiable activations ``(n, K)`` of embeddings ``z`` ``(n, d)`` (the map's weights stay frozen).

    The map runs where its tensors are (the CPU for stored maps); the result comes back to ``z``'s device, with
    gradients flowing through the transfer (an image tower on a GPU with a map on the CPU works).
    """
    check_modality(modality)
    if z.ndim != 2 or z.shape[1] != fmap.input_dim:
        raise ValueError(f"embeddings of shape {tuple(z.shape)} for a feature map with d={fmap.input_dim} "
                         f"(expected (n, {fmap.input_dim}))")
    with _frozen(fmap):
        return fmap._encode(z.float().to(_map_device(fmap)), modality).to(z.device)


def zero_shot_logits(z: torch.Tensor, class_emb: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """Logits ``(n, k)``: ``scale`` times the cosine of images ``(n, d)`` with classes ``(k, d)``, or with the
    best prompt of each class for ``(k, p, d)`` (as :func:`mmlib.analysis.zero_shot.zero_shot_predict` scores them).
    """
    if class_emb.ndim not in (2, 3) or class_emb.shape[-1] != z.shape[-1]:
        raise ValueError(f"class embeddings of shape {tuple(class_emb.shape)} do not fit images of shape "
                         f"{tuple(z.shape)}: expected (k, {z.shape[-1]}) or (k, p, {z.shape[-1]})")
    sims = torch.einsum("nd,k...d->nk...", F.normalize(z.float(), dim=-1),
                        F.normalize(class_emb.float().to(z.device), dim=-1))
    return scale * (sims.amax(-1) if class_emb.ndim == 3 else sims)


def _check_pixels(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected pixels of shape (n, 3, H, W), got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("no images to attack (empty batch)")
    if not x.is_floating_point() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError("pixels must be floats in [0, 1] (before the model's normalisation; see to_pixels)")
    return x.float()


def pgd_attack(encoder: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               config: PGDConfig, batch_size: int = 256) -> torch.Tensor:
    """Maximise ``loss_fn`` over the L∞ ball of radius ``config.eps`` around ``x``, inside ``[0, 1]``.

    Parameters
    ----------
    encoder : nn.Module
        Pixels ``(b, 3, H, W)`` -> embeddings ``(b, d)`` (e.g. :class:`ImageEncoder`); its weights are not touched.
    x : (n, 3, H, W) float tensor in [0, 1]
    loss_fn : callable
        ``loss_fn(embeddings (b, d), index (b,))`` -> per-sample loss ``(b,)`` to maximise; ``index`` are the
        rows of ``x`` in the batch (to look up labels or targets).
    config : PGDConfig
    batch_size : int

    Returns
    -------
    (n, 3, H, W) adversarial pixels with ``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``; deterministic for a seed.
    """
    x = _check_pixels(x)
    if config.eps == 0:
        return x.clone()
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    start = torch.zeros_like(x)
    if config.random_start:
        g = torch.Generator().manual_seed(int(config.seed))
        start = (torch.rand(x.shape, generator=g) * 2 - 1) * config.eps
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        idx = torch.arange(i, min(i + batch_size, len(x)))
        adv = (xb + start[i:i + batch_size].to(device)).clamp(0.0, 1.0)
        for _ in range(config.steps):
            adv.requires_grad_(True)
            loss = loss_fn(encoder(adv), idx).sum()
            grad, = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + config.alpha * grad.sign()
                adv = torch.min(torch.max(adv, xb - config.eps), xb + config.eps).clamp(0.0, 1.0)
        out[i:i + batch_size] = adv.detach().cpu()
    return out


def zero_shot_attack(encoder: ImageEncoder, x: torch.Tensor, labels: torch.Tensor | np.ndarray,
                     class_emb: torch.Tensor, config: PGDConfig, batch_size: int = 256) -> torch.Tensor:
    """Untargeted PGD against zero-shot classification: maximise the cross-entropy of the true class.

    Parameters
    ----------
    x : (n, 3, H, W) pixels in [0, 1]
    labels : (n,) int class of each image
    class_emb : (k, d) or (k, p, d) class text embeddings (fixed)
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels")
    k = class_emb.shape[0]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}) for {k} classes, got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    scale = getattr(encoder, "logit_scale", 100.0)

    def loss(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(zero_shot_logits(z, class_emb, scale), labels[idx].to(z.device), reduction="none")
    return pgd_attack(encoder, x, loss, config, batch_size)


def noise_attack(x: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """Control perturbation of the same budget: every pixel moved by ``±eps`` at random (then clipped to [0, 1])."""
    x = _check_pixels(x)
    PGDConfig(eps=eps)  # validates eps
    g = torch.Generator().manual_seed(int(seed))
    sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    return (x + eps * sign).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------ which category moves most
def feature_scale(h: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Per-feature scale ``(K,)``: the standard deviation of clean activations ``(n, K)``; features that never
    vary on these samples get ``inf`` (they then count as zero change).
    """
    s = torch.as_tensor(h).float().std(0)
    return torch.where(s > floor, s, torch.full_like(s, float("inf")))


def category_shift(h_clean: torch.Tensor, h_adv: torch.Tensor, groups: Mapping[str, np.ndarray],
                   alive: np.ndarray | None = None, n_random: int = 200, seed: int = 0, confidence: float = 0.95,
                   normalise: str = "std") -> pd.DataFrame:
    """How much each feature group's activations move between benign and adversarial images.

    Per image ``i`` and group ``G``, the change is ``mean_{k in G} |h_adv[i, k] - h_clean[i, k]| / s_k``:

    * ``normalise="std"`` (default): ``s_k`` is feature ``k``'s standard deviation over the clean images, so
      every feature's change is in units of its own natural variation (groups of different sizes and scales
      compare);
    * ``normalise="relative"``: the change is ``sum_G |dh| / sum_G h_clean`` instead (share of the group's
      activation mass that moves; images where the group is silent are left out).

    Each group is compared with ``n_random`` random sets of as many alive features.

    Parameters
    ----------
    h_clean, h_adv : (n, K) activations of the same images, benign and adversarial
    groups : name -> (K,) bool mask (e.g. ``{"ImgD": cats.mask("ImgD"), ...}``)
    alive : (K,) bool; random sets are drawn from these (default all)

    Returns
    -------
    DataFrame, one row per group: ``group``, ``n_features``, ``change`` (mean over images), ``ci_low``,
    ``ci_high`` (bootstrap over images), ``random_mean``, ``random_low``, ``random_high`` (central interval of
    the random sets' mean change), ``ratio`` (change / random_mean) and ``p_greater`` (empirical one-sided
    p-value that the group moves more than random sets: ``(1 + #{random >= change}) / (1 + R)``).
    """
    h_clean, h_adv = torch.as_tensor(h_clean).float(), torch.as_tensor(h_adv).float()
    if h_clean.shape != h_adv.shape or h_clean.ndim != 2:
        raise ValueError(f"clean {tuple(h_clean.shape)} and adversarial {tuple(h_adv.shape)} activations must be "
                         "the same (n, K) shape")
    if normalise not in ("std", "relative"):
        raise ValueError(f"unknown normalise {normalise!r}; choose 'std' or 'relative'")
    n_features = h_clean.shape[1]
    groups = check_group_masks(groups, n_features)
    alive = np.ones(n_features, bool) if alive is None else np.asarray(alive, bool)
    alive_idx = np.flatnonzero(alive)
    delta = (h_adv - h_clean).abs()
    if normalise == "std":
        per_feature = (delta / feature_scale(h_clean)).numpy()  # (n, K)

        def per_image(mask: np.ndarray) -> np.ndarray:
            return per_feature[:, mask].mean(1)
    else:
        d_np, c_np = delta.numpy(), h_clean.numpy()

        def per_image(mask: np.ndarray) -> np.ndarray:
            mass = c_np[:, mask].sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(mass > 0, d_np[:, mask].sum(1) / mass, np.nan)
    rows = []
    tail = 100 * (1 - confidence) / 2
    for g, (name, mask) in enumerate(groups.items()):
        k = int(mask.sum())
        values = per_image(mask)
        change = float(np.nanmean(values))
        low, high = mean_bootstrap_ci(values, seed=seed, confidence=confidence)
        rng = np.random.default_rng([seed, g])
        random = []
        if k <= len(alive_idx):
            for _ in range(n_random):
                rand = random_feature_mask(rng, alive_idx, k, n_features)
                random.append(float(np.nanmean(per_image(rand))))
        r = np.asarray(random)
        r_low, r_high = np.percentile(r, [tail, 100 - tail]) if len(r) else (np.nan, np.nan)
        r_mean = float(r.mean()) if len(r) else np.nan
        rows.append(dict(group=name, n_features=k, change=change, ci_low=low, ci_high=high, random_mean=r_mean,
                         random_low=float(r_low), random_high=float(r_high),
                         ratio=change / r_mean if r_mean else np.nan,
                         p_greater=(1 + int((r >= change).sum())) / (1 + len(r)) if len(r) else np.nan))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- defence
def alignment_loss(h_adv: torch.Tensor, h_clean: torch.Tensor, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-sample squared distance ``(n,)`` between activations ``(n, K)``, counted on the selected features only:
    ``sum_{k in mask} (h_adv[:, k] - h_clean[:, k])^2`` (FARE's loss, restricted to one feature set).

    Raises
    ------
    ValueError
        for shapes that differ, a mask that is not a ``(K,)`` boolean, or an empty mask.
    """
    if h_adv.shape != h_clean.shape or h_adv.ndim != 2:
        raise ValueError(f"activations must share one (n, K) shape, got {tuple(h_adv.shape)} and "
                         f"{tuple(h_clean.shape)}")
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.dtype != torch.bool or mask.shape != (h_adv.shape[1],):
        raise ValueError(f"the feature selection must be a boolean mask of shape ({h_adv.shape[1]},), got dtype "
                         f"{mask.dtype} and shape {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("the feature selection is empty: nothing to align")
    idx = torch.nonzero(mask.to(h_adv.device)).flatten()
    return ((h_adv.index_select(1, idx) - h_clean.index_select(1, idx)) ** 2).sum(1)


@dataclasses.dataclass(frozen=True)
class DefenceConfig:
    """Alignment training on selected features (the v1 defence), FARE-style.

    Attributes
    ----------
    adapter : {"last_block", "linear"}
        [ours] What is trained: ``"last_block"`` (default) fine-tunes a copy of the image tower's last
        transformer block, its final LayerNorm and its projection (everything before stays frozen);
        ``"linear"`` trains a zero-initialised residual linear adapter ``z + W z + b`` on the image embedding.
    eps : float
        The training attack's budget (L∞, pixel units).
    attack_steps : int
        PGD steps of the inner maximisation (regenerated against the current model at every step).
    inner : {"masked", "embedding"}
        [ours] What the inner attack maximises: ``"masked"`` (default, FARE's min-max on one objective): the
        same masked feature distance as the outer loss; ``"embedding"``: FARE's full embedding distance to the
        clean embedding of the frozen model.
    keep_weight : float
        [ours] Weight of a clean-preservation term: the squared distance, on *all* features, between the clean
        images' activations under the trained and the frozen model (same units as the alignment loss). Without it
        (``0``, pure masked FARE) nothing constrains the features outside the selection, and AdamW's normalised
        steps move the block even when the masked loss is already ~0 (e.g. TextD features silent on images),
        which costs clean accuracy for reasons unrelated to the selection.
    steps, batch_size, lr, weight_decay : training schedule (AdamW, constant learning rate).
    seed : int
        Seeds batch order and the attacks' random starts.
    """

    adapter: str = "last_block"
    eps: float = 4 / 255
    attack_steps: int = 2
    inner: str = "masked"
    keep_weight: float = 1.0
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.adapter!r}; choose one of {ADAPTERS}")
        if self.inner not in INNER_OBJECTIVES:
            raise ValueError(f"unknown inner objective {self.inner!r}; choose one of {INNER_OBJECTIVES}")
        PGDConfig(eps=self.eps, steps=self.attack_steps)  # validates the budget and steps
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.keep_weight >= 0:
            raise ValueError(f"keep_weight must be non-negative, got {self.keep_weight}")


def _trainable_tower(visual: nn.Module, adapter: str) -> tuple[nn.Module, nn.Module | None, list[str]]:
    """A copy of the tower (or the tower itself) plus adapter, and the names of the trainable parameters."""
    if adapter == "last_block" and getattr(getattr(visual, "transformer", None), "resblocks", None) is None:
        raise ValueError(f"adapter 'last_block' needs an open_clip VisionTransformer tower (transformer.resblocks), "
                         f"not {type(visual).__name__}; use adapter='linear'")
    tower = copy.deepcopy(visual).requires_grad_(False)  # a frozen copy: the bundle's own model is never touched
    if adapter == "linear":
        dim = int(visual.output_dim) if hasattr(visual, "output_dim") else int(visual.proj.shape[1])
        return tower, LinearAdapter(dim), ["adapter.linear.weight", "adapter.linear.bias"]
    last = len(tower.transformer.resblocks) - 1
    names = []
    for name, p in tower.named_parameters():
        if name.startswith(f"transformer.resblocks.{last}.") or name.startswith("ln_post.") or name == "proj":
            p.requires_grad_(True)
            names.append(f"visual.{name}")
    return tower, None, names


def _build_encoder(bundle: ModelBundle, adapter: str) -> tuple[ImageEncoder, list[str]]:
    tower, head, names = _trainable_tower(bundle.model.visual, adapter)
    enc = image_encoder(bundle, adapter=head, visual=tower)
    enc.requires_grad_(False)
    params = dict(enc.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    return enc, names


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedAdapter:
    """A defended image encoder and how it was trained.

    Attributes
    ----------
    encoder : ImageEncoder
        The defended pixels -> embedding forward (the bundle's tower with the trained part).
    config : DefenceConfig
    selection : str
        Display name of the aligned feature set (e.g. ``"TextD"``).
    n_selected : int
        Number of aligned features.
    history : dict
        Per step: ``"loss"`` (the total), ``"align"`` (the masked adversarial term), ``"keep"`` (the clean term).
    seconds : float
        Training wall time, measured when it was trained (recorded with the artifact).
    key : str or None
        Artifact key (``None`` if not stored).
    """

    encoder: ImageEncoder
    config: DefenceConfig
    selection: str
    n_selected: int
    history: dict[str, list[float]]
    seconds: float
    key: str | None = None


def _check_selection(mask: np.ndarray, fmap: FeatureMap) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (fmap.n_features,):
        raise ValueError(f"the feature selection must be a boolean mask of shape ({fmap.n_features},), got dtype "
                         f"{mask.dtype} and shape {mask.shape}")
    if not mask.any():
        raise ValueError("the feature selection is empty: nothing to align")
    return mask


def train_alignment_adapter(bundle: ModelBundle, fmap: FeatureMap, x_train: torch.Tensor, mask: np.ndarray,
                            config: DefenceConfig = DefenceConfig(), selection: str = "selected",
                            progress: bool = False) -> TrainedAdapter:
    """Train the v1 defence: align adversarial and clean activations on the features in ``mask`` only.

    Each step draws ``batch_size`` clean images ``x``, computes their target activations ``g(f_0(x))`` under the
    frozen original model ``f_0``, builds adversarial images against the current model ``f`` with
    ``attack_steps`` PGD steps (L∞, ``eps``, random start), and minimises
    ``mean_i sum_{k in mask} (g(f(x_adv))_ik - g(f_0(x))_ik)^2``
    ``+ keep_weight * mean_i sum_k (g(f(x))_ik - g(f_0(x))_ik)^2``
    (the second term keeps the clean images where the original model put them, see :class:`DefenceConfig`).

    Parameters
    ----------
    bundle : ModelBundle
        The model to defend (left untouched: the trained part is a copy or an added adapter).
    fmap : FeatureMap
        The feature map ``g`` (trained on this model's embeddings), frozen.
    x_train : (n, 3, H, W) clean training pixels in [0, 1]
    mask : (K,) bool, the selected features
    """
    mask = _check_selection(mask, fmap)
    x_train = _check_pixels(x_train)
    torch.manual_seed(config.seed)
    original = image_encoder(bundle)
    enc, names = _build_encoder(bundle, config.adapter)
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    device = original.mean.device
    sel = torch.from_numpy(mask)
    history: dict[str, list[float]] = {"loss": [], "align": [], "keep": []}
    everything = torch.ones(fmap.n_features, dtype=torch.bool)
    started = time.perf_counter()
    for step in tqdm(range(config.steps), desc=f"align {selection}", disable=not progress):
        idx = torch.randint(len(x_train), (config.batch_size,), generator=g)
        x = x_train[idx].to(device)
        with torch.no_grad():
            z0 = original(x)
            h0 = feature_activations(fmap, z0)
        if config.inner == "masked":
            def inner(z: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
                return alignment_loss(feature_activations(fmap, z), h0[i], sel)
        else:
            def inner(z: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
                return ((z - z0[i]) ** 2).sum(1)
        x_adv = pgd_attack(enc, x, inner, PGDConfig(eps=config.eps, steps=config.attack_steps,
                                                    seed=config.seed * 1_000_003 + step)).to(device)
        align = alignment_loss(feature_activations(fmap, enc(x_adv)), h0, sel).mean()
        keep = (alignment_loss(feature_activations(fmap, enc(x)), h0, everything).mean() if config.keep_weight > 0
                else torch.zeros(()))
        loss = align + config.keep_weight * keep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for name, value in (("loss", loss), ("align", align), ("keep", keep)):
            history[name].append(float(value.detach()))
    enc.eval()
    return TrainedAdapter(enc, config, selection, int(mask.sum()), history, time.perf_counter() - started)


def _fmap_fingerprint(fmap: FeatureMap) -> str:
    return tensor_fingerprint(fmap.state_tensors())


def load_or_train_adapter(bundle: ModelBundle, fmap: FeatureMap, x_train: torch.Tensor, mask: np.ndarray,
                          config: DefenceConfig = DefenceConfig(), selection: str = "selected",
                          progress: bool = False) -> TrainedAdapter:
    """:func:`train_alignment_adapter`, stored as an artifact (kind ``adversarial_adapters``).

    The key covers the config, the model identity, the feature map's tensors, the selected features, the
    training pixels and this module's code version; the trained parameters are stored as safetensors.
    """
    mask = _check_selection(mask, fmap)
    x_train = _check_pixels(x_train)
    key = stable_hash("adversarial_adapter", config, bundle.identity, _fmap_fingerprint(fmap),
                      tensor_fingerprint({"mask": torch.from_numpy(mask.astype(np.uint8)), "x": x_train}),
                      {"threads": effective_threads(None)}, code_version(__name__))
    trained: list[TrainedAdapter] = []

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = train_alignment_adapter(bundle, fmap, x_train, mask, config, selection, progress)
        trained.append(t)
        state = {name: p.detach().cpu() for name, p in t.encoder.named_parameters() if p.requires_grad}
        return state, {"config": config, "selection": selection, "n_selected": t.n_selected,
                       "history": t.history, "seconds": t.seconds, "model": bundle.identity}

    art = load_or_compute(ARTIFACT_KIND, key, compute)
    if trained:
        return dataclasses.replace(trained[0], key=key)
    enc, names = _build_encoder(bundle, config.adapter)
    missing = sorted(set(names) - set(art.tensors))
    if missing:
        raise ValueError(f"stored adapter {key} lacks parameters {missing}")
    params = dict(enc.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(art.tensors[name].to(params[name].device))
    enc.eval()
    meta = art.meta
    return TrainedAdapter(enc, config, meta["selection"], int(meta["n_selected"]),
                          {k: list(v) for k, v in meta["history"].items()}, float(meta["seconds"]), key)


# ------------------------------------------------------------------------------- cross-modal adversaries
def steering_attack(encoder: nn.Module, fmap: FeatureMap, x: torch.Tensor, target: torch.Tensor, mask: np.ndarray,
                    config: PGDConfig, scale: torch.Tensor | None = None, penalty: float = 1.0,
                    alive: np.ndarray | None = None, batch_size: int = 256) -> torch.Tensor:
    """A perturbation that moves only the selected features, toward a target (the v3 cross-modal attack).

    Maximises ``-mean_{k in S} ((h_k - t_k)/s_k)^2 - penalty * mean_{k alive, not in S} ((h_k - h0_k)/s_k)^2``
    over the L∞ ball: the selected features ``S`` of the adversarial image (``h``) are pulled toward the
    target activations ``t`` (e.g. another pair's *caption*: a cross-modal target), every other alive feature
    is held at its clean value ``h0``; ``s_k`` is a per-feature scale (:func:`feature_scale`).

    Parameters
    ----------
    x : (n, 3, H, W) pixels in [0, 1]
    target : (n, K) target activations, one row per image
    mask : (K,) bool, the steered features ``S``
    scale : (K,) per-feature scale (default 1); features with an infinite scale count for nothing
    penalty : float >= 0
    alive : (K,) bool; features outside it are ignored by the penalty (default all)
    """
    x = _check_pixels(x)
    mask = _check_selection(mask, fmap)
    target = torch.as_tensor(target).float()
    if target.shape != (len(x), fmap.n_features):
        raise ValueError(f"target activations must be ({len(x)}, {fmap.n_features}), got {tuple(target.shape)}")
    if penalty < 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    scale = torch.ones(fmap.n_features) if scale is None else torch.as_tensor(scale).float()
    if scale.shape != (fmap.n_features,):
        raise ValueError(f"scale must be ({fmap.n_features},), got {tuple(scale.shape)}")
    alive = np.ones(fmap.n_features, bool) if alive is None else np.asarray(alive, bool)
    sel = torch.from_numpy(mask)
    rest = torch.from_numpy(alive & ~mask)
    inv = 1.0 / scale
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    with torch.no_grad():
        h0 = torch.cat([feature_activations(fmap, encoder(x[i:i + batch_size].to(device))).cpu()
                        for i in range(0, len(x), batch_size)])

    def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = feature_activations(fmap, z)
        w = inv.to(h.device)
        pull = (((h - target[idx].to(h.device)) * w)[:, sel.to(h.device)] ** 2).mean(1)
        hold = (((h - h0[idx].to(h.device)) * w)[:, rest.to(h.device)] ** 2)
        hold = hold.mean(1) if hold.shape[1] else torch.zeros_like(pull)
        return -pull - penalty * hold
    return pgd_attack(encoder, x, objective, config, batch_size)


def cross_modal_effect(image_clean: torch.Tensor, image_adv: torch.Tensor, text: torch.Tensor,
                       target: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """Retrieval ranks of ``n`` paired images before and after a perturbation, in both directions.

    Parameters
    ----------
    image_clean, image_adv : (n, d) embeddings of the benign and perturbed images (pair ``i`` = caption ``i``)
    text : (n, d) caption embeddings (the retrieval gallery / queries)
    target : (n,) index of each image's target caption (the pair it was steered toward)

    Returns
    -------
    DataFrame, one row per image: ``i2t_own_clean/adv`` (rank of its own caption among the ``n`` captions),
    ``i2t_target_clean/adv`` (rank of the target caption), ``t2i_own_clean/adv`` (rank of image ``i`` for its
    own caption among the ``n`` images, with image ``i`` replaced by its perturbed version), and
    ``t2i_target_clean/adv`` (rank of image ``i`` for the target caption, in the same gallery).
    """
    n = len(image_clean)
    if image_adv.shape != image_clean.shape or text.shape != image_clean.shape:
        raise ValueError(f"clean {tuple(image_clean.shape)}, adversarial {tuple(image_adv.shape)} and caption "
                         f"{tuple(text.shape)} embeddings must share one (n, d) shape")
    target = np.asarray(target)
    if target.shape != (n,):
        raise ValueError(f"expected one target per image ({n},), got {target.shape}")
    own = np.arange(n)
    img_c, img_a = F.normalize(image_clean.float(), dim=-1), F.normalize(image_adv.float(), dim=-1)
    txt = F.normalize(text.float(), dim=-1)
    gallery = img_c @ txt.T  # (n images, n captions)

    def t2i(captions: np.ndarray, images: torch.Tensor) -> np.ndarray:
        """Rank of image i (given as ``images[i]``) for caption ``captions[i]`` among the clean images j != i."""
        sims = gallery[:, captions].T  # (n, n): caption captions[i] vs every clean image
        mine = (images * txt[captions]).sum(1, keepdim=True)
        others = sims > mine
        others[torch.arange(n), torch.arange(n)] = False
        return others.sum(1).numpy()
    return pd.DataFrame({
        "i2t_own_clean": retrieval_ranks(image_clean, text, own),
        "i2t_own_adv": retrieval_ranks(image_adv, text, own),
        "i2t_target_clean": retrieval_ranks(image_clean, text, target),
        "i2t_target_adv": retrieval_ranks(image_adv, text, target),
        "t2i_own_clean": t2i(own, img_c), "t2i_own_adv": t2i(own, img_a),
        "t2i_target_clean": t2i(target, img_c), "t2i_target_adv": t2i(target, img_a),
    })
