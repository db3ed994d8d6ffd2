"""The attack: L∞ projected gradient descent on pixels, the differentiable image encoder, and the controls.

L∞ projected gradient descent (PGD, Madry et al. 2018) on images in pixel space ``[0, 1]``, before the model's
normalisation, against zero-shot classification with fixed class text embeddings (:func:`zero_shot_attack`).
:class:`ImageEncoder` is the differentiable forward: resize to the tower's input size (a no-op for the tiny 32-px
world and for an already preprocessed 224-px tensor), the bundle's own mean/std normalisation, the image tower, and
an optional adapter (:mod:`~mmlib.case_studies.adversarial.defence` trains one). :func:`to_pixels` puts images in
the pixel space the attacks work in; :func:`noise_attack` is the random control of the same budget.

Feature maps are applied differentiably through their own ``_encode`` (:func:`feature_activations`; the public
``encode`` runs without gradients); the map's weights are never updated.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, between, check_finite, greater_than, validate_config
from mmlib.feature_maps.base import FeatureMap, check_modality
from mmlib.models.clip import ModelBundle

__all__ = ["PGDConfig", "ImageEncoder", "image_encoder", "to_pixels", "feature_activations", "zero_shot_logits",
           "pgd_attack", "zero_shot_attack", "noise_attack"]


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
            raise ConfigError(f"PGDConfig.eps must lie in [0, 1] (the attack budget in pixel units; e.g. 4/255 = "
                              f"{4 / 255:.4f}), got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"PGDConfig.steps must be a positive integer, got {self.steps!r}")
        validate_config(self)  # the types (step_size, random_start, seed) before comparing step_size
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"PGDConfig.step_size must be positive (or None for 2.5 eps / steps), "
                              f"got {self.step_size!r}")
        validate_config(self, eps=between(0.0, 1.0), steps=at_least(1), step_size=greater_than(0.0))

    @property
    def alpha(self) -> float:
        """The step length actually used."""
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps



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
        """Embeddings ``(b, d)`` of pixels ``(b, 3, H, W)`` in ``[0, 1]``, differentiably."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected pixels of shape (b, 3, H, W), got {tuple(x.shape)}")
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
    raise InputError(f"cannot find the mean/std normalisation in {bundle.name}'s preprocess ({bundle.preprocess}); "
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
        raise InputError(f"{bundle.name}'s image tower has no image_size attribute")
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
            raise InputError(f"expected uint8 images of shape (n, H, W, 3), got {images.shape}")
        images = [Image.fromarray(np.ascontiguousarray(im), mode="RGB") for im in images]
    if len(images) == 0:
        raise InputError("no images given")
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
    z = torch.as_tensor(z)
    if z.ndim != 2 or z.shape[1] != fmap.input_dim:
        raise InputError(f"embeddings of shape {tuple(z.shape)} for a feature map with d={fmap.input_dim} "
                         f"(expected (n, {fmap.input_dim}))")
    check_finite(z, "z")
    with _frozen(fmap):
        return fmap._encode(z.float().to(_map_device(fmap)), modality).to(z.device)


def zero_shot_logits(z: torch.Tensor, class_emb: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """Logits ``(n, k)``: ``scale`` times the cosine of images ``(n, d)`` with classes ``(k, d)``, or with the
    best prompt of each class for ``(k, p, d)`` (as :func:`mmlib.analysis.zero_shot.zero_shot_predict` scores them).
    """
    z, class_emb = torch.as_tensor(z), torch.as_tensor(class_emb)
    if class_emb.ndim not in (2, 3) or class_emb.shape[-1] != z.shape[-1]:
        raise InputError(f"class embeddings of shape {tuple(class_emb.shape)} do not fit images of shape "
                         f"{tuple(z.shape)}: expected (k, {z.shape[-1]}) or (k, p, {z.shape[-1]})")
    if not np.isfinite(scale):
        raise InputError(f"scale must be a finite number, got {scale!r}")
    check_finite(class_emb, "class_emb")
    sims = torch.einsum("nd,k...d->nk...", F.normalize(z.float(), dim=-1),
                        F.normalize(class_emb.float().to(z.device), dim=-1))
    return scale * (sims.amax(-1) if class_emb.ndim == 3 else sims)


def _check_pixels(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"expected pixels of shape (n, 3, H, W), got {tuple(x.shape)}")
    if len(x) == 0:
        raise InputError("no images to attack (empty batch)")
    if x.is_floating_point():
        check_finite(x, "x", hint="pass pixels in [0, 1] (see to_pixels)")
    if not x.is_floating_point() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise InputError("pixels must be floats in [0, 1] (before the model's normalisation; see to_pixels)")
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
    class_emb = check_finite(torch.as_tensor(class_emb), "class_emb")
    labels = torch.as_tensor(np.asarray(labels)).long()
    if len(labels) != len(x):
        raise InputError(f"{len(x)} images but {len(labels)} labels")
    k = class_emb.shape[0]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise InputError(f"labels must lie in [0, {k}) for {k} classes, got range "
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
