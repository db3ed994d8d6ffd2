"""Multimodal non-negative contrastive learning (NCL) head on frozen embeddings (Method page, `method-feature-maps`).

NCL (Wang et al., ICLR 2024) makes contrastive features non-negative, which makes them sparse and
monosemantic. The multimodal version [ours] trains a head on frozen CLIP embeddings::

    f_m = nonneg(head_m(z_m / ||z_m||))          (K,)   head: Linear, or Linear-GELU-Linear
    loss = ClipLoss(f_image / ||f_image||, f_text / ||f_text||, exp(t))         t learnable

``nonneg`` is ReLU or "rep_relu" (ReLU forward, GELU gradient backward, :func:`rep_relu`); ``ClipLoss``
is open_clip's symmetric image-text InfoNCE. One head is shared by both modalities (default) or each
modality has its own; either way the contrastive loss aligns feature ``k`` across the modalities, so the
map has ``K`` features. There is no decoder: NCL features are not a reconstruction of ``z``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmlib.core.artifacts import to_jsonable
from mmlib.core.devices import resolve_device, torch_threads
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, greater_than, one_of, validate_config
from mmlib.feature_maps._training import (
    History,
    Liveness,
    PairData,
    check_loss,
    iterate_batches,
    linear_decay_lr,
    schedule_rules,
    training_data,
)
from mmlib.feature_maps.base import MODALITIES, ArgumentTypeError, FeatureMap, Source

__all__ = ["NCLConfig", "NCLMap", "train_ncl", "rep_relu"]

_MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class NCLConfig:
    """How a multimodal NCL head is built and trained.

    Attributes
    ----------
    K : int
        Output features.
    head : {"linear", "mlp"}
        ``Linear(d, K)`` or ``Linear(d, hidden) -> GELU -> Linear(hidden, K)``.
    hidden : int or None
        Width of the MLP's hidden layer (default ``K``).
    nonneg : {"relu", "rep_relu"}
        The non-negative output: ReLU, or ReLU forward with a GELU gradient backward.
    shared : bool
        One head for both modalities (default) or one per modality.
    epochs, batch_size : int
        Passes over the data and pairs per step (the in-batch negatives of the InfoNCE).
    lr, weight_decay : float
        AdamW; the learning rate decays linearly to 0 over the last ``lr_decay`` fraction of the steps.
    lr_decay : float
    temperature : float
        Initial temperature (the logit scale ``1 / temperature`` is learnt, capped at 100 as in CLIP).
    dead_window : int
        A feature is dead when it has not fired in the last ``dead_window`` steps (logged).
    log_every, chunk_size : int
        Steps between history records; rows per chunk for data in memory.
    seed : int
    """

    K: int = 512
    head: str = "linear"
    hidden: int | None = None
    nonneg: str = "relu"
    shared: bool = True
    epochs: int = 10
    batch_size: int = 256
    lr: float = 5e-3
    weight_decay: float = 0.0
    lr_decay: float = 0.2
    temperature: float = 0.07
    dead_window: int = 100
    log_every: int = 20
    chunk_size: int = 65536
    seed: int = 0

    def __post_init__(self) -> None:
        rules = schedule_rules()
        del rules["batch_size"]  # checked below, with the reason
        validate_config(self, head=one_of("linear", "mlp"), hidden=at_least(1), nonneg=one_of("relu", "rep_relu"),
                        weight_decay=at_least(0.0), temperature=greater_than(0.0), **rules)
        if self.K < 1:
            raise ConfigError(f"NCLConfig.K (output features) must be a positive integer, got {self.K}.")
        if self.batch_size < 2:
            raise ConfigError(f"NCLConfig.batch_size must be at least 2 (in-batch negatives), got {self.batch_size}.")

    @property
    def n_heads(self) -> int:
        """1 if shared, else 2 (image, text)."""
        return 1 if self.shared else 2


class _RepReLU(torch.autograd.Function):
    """ReLU forward, GELU gradient backward (the "RepReLU" of NCL)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x.square()) / math.sqrt(2.0 * math.pi)
        return grad * (cdf + x * pdf)


def rep_relu(x: torch.Tensor) -> torch.Tensor:
    """``ReLU(x)`` whose gradient is that of ``GELU(x)`` (exact erf form), so negative inputs still learn."""
    return _RepReLU.apply(x)


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> nn.Parameter:
    """``nn.Linear``'s default initialisation: uniform in ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)


class _Heads(nn.Module):
    """``M`` stacked heads (``M = 1`` shared, ``2`` per modality) mapping ``(M, rows, d)`` to ``(M, rows, K)``
    pre-activations.
    """

    def __init__(self, n_heads: int, dim: int, n_features: int, head: str, hidden: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.head = head
        width = hidden if head == "mlp" else dim
        if head == "mlp":
            self.W1 = _uniform((n_heads, hidden, dim), dim, generator)
            self.b1 = _uniform((n_heads, hidden), dim, generator)
        self.W = _uniform((n_heads, n_features, width), width, generator)
        self.b = _uniform((n_heads, n_features), width, generator)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "mlp":
            x = F.gelu(torch.baddbmm(self.b1[:, None], x, self.W1.transpose(1, 2)))
        return torch.baddbmm(self.b[:, None], x, self.W.transpose(1, 2))


class NCLMap(FeatureMap):
    """A trained multimodal NCL head as a feature map: ``encode`` returns the non-negative (unnormalised)
    features ``(n, K)`` of L2-normalised embeddings; no decoder.

    Attributes
    ----------
    heads : nn.Module
        The stacked head(s) (``M = 1`` shared, ``2`` per modality) and the learnt ``logit_scale``.
    train_config : NCLConfig
    """

    kind = "ncl"
    has_decoder = False

    def __init__(self, heads: _Heads, config: NCLConfig, source: Source | None = None) -> None:
        n_heads, n_features, _ = heads.W.shape
        dim = heads.W1.shape[2] if config.head == "mlp" else heads.W.shape[2]
        super().__init__(dim, n_features, hparams=to_jsonable(config), source=source)
        self.heads = heads.eval().requires_grad_(False)
        self.train_config = config

    @property
    def name(self) -> str:
        """A short display name with the head's kind, ``K`` and non-negativity."""
        c = self.train_config
        return f"ncl-{c.head}-{c.nonneg}(K={self.n_features}{'' if c.shared else ', per-modality'})"

    @property
    def logit_scale(self) -> float:
        """The learnt logit scale (``1 / temperature``)."""
        return float(self.heads.logit_scale.exp())

    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        s = 0 if self.train_config.shared else MODALITIES.index(modality)
        out = self.heads(F.normalize(z, dim=-1)[None].expand(self.heads.W.shape[0], -1, -1))[s]
        return torch.relu(out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The head's weights (what :meth:`save` writes)."""
        return {k: v.detach() for k, v in self.heads.state_dict().items()}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> NCLMap:
        """Rebuild a head from :meth:`state_tensors` and :meth:`config`."""
        ncl_config = NCLConfig(**config["hparams"])
        n_heads, n_features, width = tensors["W"].shape
        dim = tensors["W1"].shape[2] if "W1" in tensors else width
        if (dim, n_features) != (config["input_dim"], config["n_features"]) or n_heads != ncl_config.n_heads:
            raise InputError(f"NCL tensors (W {tuple(tensors['W'].shape)}) do not match the recorded "
                             f"d={config['input_dim']}, K={config['n_features']}, shared={ncl_config.shared}")
        heads = _Heads(n_heads, dim, n_features, ncl_config.head, width, torch.Generator().manual_seed(0))
        heads.load_state_dict(dict(tensors))
        return cls(heads, ncl_config)


def train_ncl(data: PairData, config: NCLConfig = NCLConfig(), source: Source | None = None,
              progress: bool = True, threads: int | None = 1, device: str | torch.device = "cpu"
              ) -> tuple[NCLMap, dict[str, list[float]]]:
    """Train a multimodal NCL head on frozen paired embeddings.

    Parameters
    ----------
    data : PairData
        :class:`~mmlib.data.embeddings.Embeddings`, an ``(image (n, d), text (n, d))`` pair, or a function returning an
        iterable of such chunks (streamed).
    config : NCLConfig
    source : Source, optional
        What the data are (default: read from ``data``).
    progress : bool
        Show a tqdm bar over steps.
    threads : int or None
        torch CPU threads during training (``None``: leave torch's setting; see
        :func:`mmlib.feature_maps.sae.train_sae`).
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); the returned map is on the CPU.

    Returns
    -------
    (NCLMap, dict)
        The map and its history per logged step: ``step``, ``loss`` (InfoNCE), ``l0`` (active features per
        sample), ``logit_scale``, ``dead`` (fraction of features silent for ``dead_window`` steps), ``lr``.
    """
    if not isinstance(config, NCLConfig):
        raise ArgumentTypeError(f"train_ncl: config must be an NCLConfig, got {type(config).__name__}")
    if source is not None and not isinstance(source, Source):
        raise ArgumentTypeError(f"train_ncl: source must be a Source or None, got {type(source).__name__}")
    with torch_threads(threads):
        return _train(data, config, source, progress, resolve_device(device))


def _train(data: PairData, config: NCLConfig, source: Source | None, progress: bool, device: torch.device
           ) -> tuple[NCLMap, dict[str, list[float]]]:
    chunks, stats, source = training_data(data, config.chunk_size, source)
    gen = torch.Generator().manual_seed(config.seed)
    heads = _Heads(config.n_heads, stats.dim, config.K, config.head, config.hidden or config.K, gen)
    with torch.no_grad():
        heads.logit_scale.fill_(math.log(1.0 / config.temperature))
    heads.to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    loss_fn = open_clip.ClipLoss()
    nonneg = rep_relu if config.nonneg == "rep_relu" else torch.relu
    total = config.epochs * stats.steps_per_epoch(config.batch_size, min_batch=2)
    liveness = Liveness(config.n_heads, config.K, config.dead_window, device)
    step = 0
    heads.train()
    with tqdm(total=total, desc=f"NCL {config.head} K={config.K}", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        history = History(("loss", "l0", "logit_scale"), config.log_every, total, bar)
        for _ in range(config.epochs):
            for z in iterate_batches(chunks, config.batch_size, gen, min_batch=2):
                step += 1
                lr = linear_decay_lr(step, total, config.lr, config.lr_decay)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                b = z.shape[1]
                x = F.normalize(z.to(device), dim=-1).reshape(config.n_heads, -1, stats.dim)
                f = nonneg(heads(x))                              # (M, rows, K)
                img, txt = F.normalize(f.reshape(2, b, -1), dim=-1)
                scale = heads.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
                loss = loss_fn(img, txt, scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                active = f.detach() > 0
                dead = liveness.update(active.any(1), step)
                loss_value = check_loss(float(loss.detach()), step, config, "NCL")
                history.add(step, float(dead.float().mean()), lr, loss=loss_value,
                            l0=float(active.sum()) / (2 * b), logit_scale=float(scale.detach()))
                bar.update(1)
    with torch.no_grad():
        heads.logit_scale.clamp_(max=_MAX_LOGIT_SCALE)
    return NCLMap(heads.cpu(), config, source), history.data
