"""The v1 defence: alignment training on selected features, and its artifact cache.

FARE-style unsupervised adversarial fine-tuning (Schlarmann et al., ICML 2024) restricted to one category: an
adapter on the image tower is trained so that the feature-map activations of adversarial images (regenerated against
the current model at every step) match those of the clean images under the frozen original model, *only on the
selected features* (:func:`alignment_loss`, :func:`train_alignment_adapter`), cached as an artifact of kind
``adversarial_adapters`` by :func:`load_or_train_adapter`.

The artifact key covers this module's code version, i.e. its import closure (this module, ``attacks`` and the layers
below): how the defences are *evaluated* lives in :mod:`~mmlib.case_studies.adversarial.evaluation`, outside that
closure, so that editing a table does not retrain the adapters.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmlib.case_studies.adversarial.attacks import (
    ImageEncoder,
    PGDConfig,
    _check_pixels,
    feature_activations,
    image_encoder,
    pgd_attack,
)
from mmlib.core.artifacts import code_version, load_or_compute, stable_hash, tensor_fingerprint
from mmlib.core.devices import effective_threads
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, between, check_finite, greater_than, one_of, validate_config
from mmlib.feature_maps.base import FeatureMap
from mmlib.models.clip import ModelBundle

__all__ = ["alignment_loss", "ADAPTERS", "INNER_OBJECTIVES", "DefenceConfig", "LinearAdapter", "TrainedAdapter",
           "train_alignment_adapter", "load_or_train_adapter"]

ARTIFACT_KIND = "adversarial_adapters"
#: Where the defence's trainable parameters sit (see :class:`DefenceConfig`).
ADAPTERS: tuple[str, ...] = ("last_block", "linear")
#: What the inner maximisation of the defence attacks (see :class:`DefenceConfig`).
INNER_OBJECTIVES: tuple[str, ...] = ("masked", "embedding")


def alignment_loss(h_adv: torch.Tensor, h_clean: torch.Tensor, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-sample squared distance ``(n,)`` between activations ``(n, K)``, counted on the selected features only:
    ``sum_{k in mask} (h_adv[:, k] - h_clean[:, k])^2`` (FARE's loss, restricted to one feature set).

    Raises
    ------
    ValueError
        for shapes that differ, a mask that is not a ``(K,)`` boolean, or an empty mask.
    """
    if h_adv.shape != h_clean.shape or h_adv.ndim != 2:
        raise InputError(f"activations must share one (n, K) shape, got {tuple(h_adv.shape)} and "
                         f"{tuple(h_clean.shape)}")
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.dtype != torch.bool or mask.shape != (h_adv.shape[1],):
        raise InputError(f"the feature selection must be a boolean mask of shape ({h_adv.shape[1]},), got dtype "
                         f"{mask.dtype} and shape {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise InputError("the feature selection is empty: nothing to align")
    check_finite(h_adv, "h_adv")
    check_finite(h_clean, "h_clean")
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
            raise ConfigError(f"unknown adapter {self.adapter!r}; choose one of {ADAPTERS}")
        if self.inner not in INNER_OBJECTIVES:
            raise ConfigError(f"unknown inner objective {self.inner!r}; choose one of {INNER_OBJECTIVES}")
        try:  # the budget and steps, as an attack would check them
            PGDConfig(eps=self.eps, steps=self.attack_steps)
        except ConfigError as err:
            raise ConfigError(str(err).replace("PGDConfig.steps", "DefenceConfig.attack_steps")
                              .replace("PGDConfig.eps", "DefenceConfig.eps")) from None
        validate_config(self)  # the types, so that the checks below can compare
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not self.keep_weight >= 0:
            raise ConfigError(f"keep_weight must be non-negative, got {self.keep_weight}")
        validate_config(self, adapter=one_of(*ADAPTERS), eps=between(0.0, 1.0), attack_steps=at_least(1),
                        inner=one_of(*INNER_OBJECTIVES), keep_weight=at_least(0.0), steps=at_least(1),
                        batch_size=at_least(1), lr=greater_than(0.0), weight_decay=at_least(0.0))


class LinearAdapter(nn.Module):
    """Residual linear adapter on the image embedding: ``z + z W^T + b``, zero-initialised (identity at start)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The adapted embeddings ``(b, d)`` of embeddings ``(b, d)``."""
        return z + self.linear(z)


def _trainable_tower(visual: nn.Module, adapter: str) -> tuple[nn.Module, nn.Module | None, list[str]]:
    """A copy of the tower (or the tower itself) plus adapter, and the names of the trainable parameters."""
    if adapter == "last_block" and getattr(getattr(visual, "transformer", None), "resblocks", None) is None:
        raise InputError(f"adapter 'last_block' needs an open_clip VisionTransformer tower (transformer.resblocks), "
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
        raise InputError(f"the feature selection must be a boolean mask of shape ({fmap.n_features},), got dtype "
                         f"{mask.dtype} and shape {mask.shape}")
    if not mask.any():
        raise InputError("the feature selection is empty: nothing to align")
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
        raise InputError(f"stored adapter {key} lacks parameters {missing}")
    params = dict(enc.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(art.tensors[name].to(params[name].device))
    enc.eval()
    meta = art.meta
    return TrainedAdapter(enc, config, meta["selection"], int(meta["n_selected"]),
                          {k: list(v) for k, v in meta["history"].items()}, float(meta["seconds"]), key)
