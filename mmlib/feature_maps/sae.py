"""Multimodal sparse autoencoder (Method page, `method-feature-maps`): one SAE trained on image and text embeddings.

Model, for a modality ``m`` with normalised input ``x = (z - mu_m) / s_m`` (see ``normalize``)::

    h = ReLU(W_e (x - b_d) + b_e)        (K,)   TopK variant: keep the k largest, zero the rest
    x_hat = W_d h + b_d                   (d,)
    loss = sum_m  mean_batch ||x_m - x_hat_m||² + lambda ||h_m||_1       (summed over m in {image, text})

Decoder columns are renormalised to unit norm after every step; ``b_d`` starts at the data mean and
``W_e`` at ``W_dᵀ``. Dead latents (not fired for ``dead_window`` steps) are resampled toward high-loss
inputs for ``relu_l1`` (Bricken et al., 2023) and revived by the AuxK loss for ``topk`` (Gao et al., 2024);
their fraction is logged. Training streams the data in chunks (:func:`mmlib.feature_maps._training.pair_chunks`).
TopK training never forms the dense ``(b, K)`` codes: only the encoder product is dense, the decoder and the whole
backward cost ``O(b k d)`` (:func:`_topk_sae_loss`), and the top-k itself is searched by groups (:func:`_topk`).

With ``shared=False`` one SAE per modality is trained; the map then has ``2K`` features, the image SAE's
latents first and the text SAE's last, so that a feature index means one latent whatever the modality
(an image activates only the first block, a text only the second).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmlib.core.artifacts import to_jsonable
from mmlib.core.devices import resolve_device, torch_threads
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, between, one_of, validate_config
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

__all__ = ["SAEConfig", "SAEMap", "train_sae", "NORMALIZATIONS"]

#: Per-modality input normalisation applied before the SAE (and undone after the decoder).
NORMALIZATIONS = ("none", "scale", "center", "center_scale")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """How a multimodal SAE is built and trained.

    Attributes
    ----------
    K : int
        Latents per SAE (dictionary size; the paper profile uses ``8 d``).
    kind : {"relu_l1", "topk"}
        ReLU with an L1 penalty (the paper's kind) or TopK (Gao et al., 2024).
    k : int
        Active latents per sample for ``topk`` (``1 <= k <= K``; ignored by ``relu_l1``).
    l1_coef : float
        ``lambda`` of the L1 penalty (``relu_l1`` only; ignored by ``topk``).
    normalize : {"scale", "none", "center", "center_scale"}
        Per-modality normalisation before the SAE, from statistics of the training data stored in the map
        and undone by ``decode``: ``"scale"`` (default) divides each modality by the root of its mean squared
        norm (keeps the modality gap, makes ``lambda`` scale-free); ``"center"`` subtracts each modality's
        mean (removes the gap); ``"center_scale"`` does both (unit mean squared norm after centring);
        ``"none"`` uses the embeddings as they are.
    shared : bool
        One SAE for both modalities (default) or one per modality.
    epochs, batch_size : int
        Passes over the data and pairs per step (a step sees ``batch_size`` images and their texts).
    lr : float
        Adam learning rate, decayed linearly to 0 over the last ``lr_decay`` fraction of the steps (the
        defaults are tuned on the planted dictionary, 8000 pairs; lower ``lr`` for long runs).
    lr_decay : float
    resample_at : tuple of float
        Fractions of training at which dead latents are resampled (``relu_l1``; empty: never).
    dead_window : int
        A latent is dead when it has not fired in the last ``dead_window`` steps.
    aux_coef : float
        Weight of the AuxK loss (``topk``; 0 disables it).
    aux_k : int or None
        Dead latents used by AuxK per sample (default ``d // 2``).
    log_every : int
        Steps between history records.
    chunk_size : int
        Rows per chunk when the data are tensors in memory (rows are shuffled within a chunk).
    seed : int
        Seeds the initialisation, the batch order and the resampling.
    """

    K: int = 512
    kind: str = "relu_l1"
    k: int = 8
    l1_coef: float = 0.1
    normalize: str = "scale"
    shared: bool = True
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    lr_decay: float = 0.2
    resample_at: tuple[float, ...] = (0.25, 0.5)
    dead_window: int = 100
    aux_coef: float = 1 / 32
    aux_k: int | None = None
    log_every: int = 20
    chunk_size: int = 65536
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resample_at, list):
            object.__setattr__(self, "resample_at", tuple(self.resample_at))
        validate_config(self, kind=one_of("relu_l1", "topk"), l1_coef=at_least(0.0), normalize=one_of(*NORMALIZATIONS),
                        resample_at=between(0.0, 1.0, low_open=True, high_open=True), aux_coef=at_least(0.0),
                        aux_k=at_least(1), **schedule_rules())
        if self.K < 1:
            raise ConfigError(f"SAEConfig.K (dictionary size) must be a positive integer, got {self.K}.")
        if self.kind == "topk" and not 1 <= self.k <= self.K:
            raise ConfigError(f"SAEConfig.k (active latents of a TopK SAE) must lie in [1, K={self.K}], got {self.k}.")

    @property
    def n_sae(self) -> int:
        """Number of SAEs: 1 if shared, else 2 (image, text)."""
        return 1 if self.shared else 2


# ----------------------------------------------------------------------------------- sparse TopK kernels
# A TopK SAE needs one dense product, the encoder's (every latent competes for the top k), and nothing else dense:
# only k of the K latents of a row carry a value and a gradient. The autograd functions below keep the rest in
# O(b k d) instead of O(b K d): forward by gathering (pre-activations, decoder columns: ``embedding_bag``), backward
# by scattering (``index_add_`` into the weight rows that were used). Stacked SAEs ``(M, ...)`` are handled at once by
# offsetting the latents of SAE ``s`` by ``s K`` into the ``M K`` stacked weight rows.

#: Column groups of the grouped top-k (:func:`_topk`): torch's CPU top-k is cheap on rows this short.
_TOPK_GROUPS = 32


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries along the last dimension of ``x`` ``(..., K)``: values and int64 indices
    ``(..., k)``, largest first, as ``x.topk(k)`` (the same values; among tied entries possibly other indices).

    torch's CPU top-k selects within a copy of every row: by a partial sort for ``K >= 64 k``, else by a selection
    that costs more than the encoder product itself for ``K`` in the hundreds (``k = 8``, ``K = 256``: 5 times
    more). There, when ``K`` is a multiple of ``G = 32`` and ``k <= G / 4``, column ``c`` is put in group ``c mod G``:
    the ``k`` largest entries lie in the ``k`` groups with the largest maxima (an entry of another group is exceeded
    by those ``k`` maxima), so only their ``k K / G`` columns are searched, by the same rule, until a row is at most
    ``G`` long. Exact and deterministic; group maxima are one vectorised pass.
    """
    n_cols = x.shape[-1]
    if n_cols <= _TOPK_GROUPS or n_cols % _TOPK_GROUPS or 4 * k > _TOPK_GROUPS or n_cols >= 64 * k:
        return x.topk(k, dim=-1)
    per_group = n_cols // _TOPK_GROUPS
    rows = x.reshape(-1, per_group, _TOPK_GROUPS)                                    # (R, B, G): column G b + g
    groups = rows.amax(1).topk(k, dim=-1, sorted=False).indices[:, None, :]         # (R, 1, k)
    candidates = rows.gather(2, groups.expand(-1, per_group, -1))                   # (R, B, k)
    values, picked = _topk(candidates.view(len(rows), per_group * k), k)
    columns = groups + torch.arange(0, n_cols, _TOPK_GROUPS, device=x.device)[:, None]  # (R, B, k) their columns
    indices = columns.view(len(rows), per_group * k).gather(1, picked)
    return values.view(*x.shape[:-1], k), indices.view(*x.shape[:-1], k)


def _stacked_rows(indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Latent indices ``(M, b, j)`` of ``M`` stacked SAEs -> indices ``(M b, j)`` into their ``M K`` stacked rows."""
    n_sae, _, j = indices.shape
    if n_sae > 1:
        indices = indices + torch.arange(0, n_sae * n_latents, n_latents, device=indices.device)[:, None, None]
    return indices.reshape(-1, j)


def _row_dots(table: torch.Tensor, rows: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``(R, j)`` dot products of ``table`` rows ``rows`` ``(R, j)`` with ``vectors`` ``(R, d)``, row by row."""
    picked = table.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)
    return (picked * vectors[:, None, :]).sum(-1)


def _scatter_rows(n_rows: int, rows: torch.Tensor, weights: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``(n_rows, d)`` sums of ``weights[i, j] vectors[i]`` into row ``rows[i, j]`` (``rows``, ``weights`` ``(R, j)``;
    ``vectors`` ``(R, d)``): the gradient of a table read at ``rows`` with weights.
    """
    outer = (weights[:, :, None] * vectors[:, None, :]).reshape(-1, vectors.shape[1])
    return vectors.new_zeros(n_rows, vectors.shape[1]).index_add_(0, rows.reshape(-1), outer)


def _decoder_rows(W_d: torch.Tensor) -> torch.Tensor:
    """The decoder columns of ``W_d`` ``(M, d, K)`` as the contiguous rows ``(M K, d)`` of one table."""
    return W_d.transpose(1, 2).reshape(-1, W_d.shape[1]).contiguous()


def _decoder_grad(grad_rows: torch.Tensor, W_d: torch.Tensor) -> torch.Tensor:
    """Gradient rows ``(M K, d)`` of :func:`_decoder_rows` -> the gradient of ``W_d`` ``(M, d, K)``."""
    n_sae, dim, n_latents = W_d.shape
    return grad_rows.view(n_sae, n_latents, dim).transpose(1, 2).contiguous()


class _TopKSAELoss(torch.autograd.Function):
    """A TopK SAE's squared reconstruction error, with an ``O(b k d)`` decoder and backward (see
    :func:`_topk_sae_loss`).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W_e: torch.Tensor, b_e: torch.Tensor, W_d: torch.Tensor, b_d: torch.Tensor,
                k: int, weight: float) -> tuple[torch.Tensor, ...]:
        n_latents = W_e.shape[1]
        xc = x - b_d[:, None]
        pre = torch.baddbmm(b_e[:, None], xc, W_e.transpose(1, 2))
        top, indices = _topk(pre, k)
        values = torch.relu(top)
        rows = _stacked_rows(indices, n_latents)
        weights = values.view(rows.shape)
        table = _decoder_rows(W_d)
        residual = xc.sub_(F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum").view(x.shape))
        loss = residual.square().sum().mul_(weight)           # residual = x - b_d - sum_j v_j W_d[:, idx_j]
        ctx.save_for_backward(x, W_e, W_d, b_d, weights, rows, table, residual)
        ctx.weight = weight
        ctx.mark_non_differentiable(residual, values, indices, pre)
        return loss, residual, values, indices, pre

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x, W_e, W_d, b_d, weights, rows, table, residual = ctx.saved_tensors
        n_sae, n_latents, dim = W_e.shape
        grad = residual * (-2.0 * ctx.weight * grad_loss)                       # of x_hat, (M, b, d)
        g = grad.view(-1, dim)                                                    # (M b, d)
        grad_top = _row_dots(table, rows, g).mul_(weights > 0)                    # (M b, k), through the ReLU
        grad_W_d = _decoder_grad(_scatter_rows(n_sae * n_latents, rows, weights, g), W_d)
        xc = (x - b_d[:, None]).view(-1, dim)
        grad_W_e = _scatter_rows(n_sae * n_latents, rows, grad_top, xc).view(W_e.shape)
        grad_b_e = W_e.new_zeros(n_sae * n_latents).index_add_(0, rows.reshape(-1), grad_top.reshape(-1))
        grad_b_e = grad_b_e.view(n_sae, n_latents)
        grad_b_d = grad.sum(1) - torch.bmm(grad_b_e[:, None, :], W_e)[:, 0]     # decoder bias, and -b_d in xc
        return None, grad_W_e, grad_b_e, grad_W_d, grad_b_d, None, None


def _topk_sae_loss(x: torch.Tensor, W_e: torch.Tensor, b_e: torch.Tensor, W_d: torch.Tensor, b_d: torch.Tensor,
                   k: int, weight: float = 1.0) -> tuple[torch.Tensor, ...]:
    """The squared reconstruction error of ``M`` stacked TopK SAEs on inputs ``x`` ``(M, b, d)``, differentiable in
    the weights with a sparse backward.

    Parameters
    ----------
    x : Tensor
        ``(M, b, d)`` inputs (no gradient).
    W_e, b_e, W_d, b_d : Tensor
        ``(M, K, d)``, ``(M, K)``, ``(M, d, K)``, ``(M, d)``: the SAEs' weights.
    k : int
        Active latents per sample.
    weight : float
        Factor of the loss.

    Returns
    -------
    loss : Tensor
        ``weight * sum ||x - x_hat||²`` (a scalar) of the reconstructions ``x_hat = sum_j values_j
        W_d[:, indices_j] + b_d``.
    residual : Tensor
        ``(M, b, d)`` ``x - x_hat``.
    values, indices : Tensor
        ``(M, b, k)`` the codes: ReLU'd top-``k`` pre-activations and their latents (int64).
    pre : Tensor
        ``(M, b, K)`` pre-activations ``(x - b_d) W_eᵀ + b_e`` (for the AuxK loss).

    Only ``loss`` has a gradient. Only the encoder product is dense (``O(b K d)``). The decoder sums ``k`` columns per
    sample (``embedding_bag``); the backward gathers those columns for the code gradients and scatters
    (``index_add_``) into the ``k`` used rows of ``W_e``, ``b_e`` and columns of ``W_d`` per sample; ``b_d`` gets the
    summed gradient of ``x_hat`` minus the ``W_e`` rows weighted by ``b_e``'s gradient.
    """
    return _TopKSAELoss.apply(x, W_e, b_e, W_d, b_d, k, weight)


class _PreAt(torch.autograd.Function):
    """Pre-activations at chosen latents, with the gradient of the encoder restricted to them (see :func:`_pre_at`)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, x: torch.Tensor, W_e: torch.Tensor, b_e: torch.Tensor, b_d: torch.Tensor,
                indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, W_e, b_d, indices)
        return pre.gather(-1, indices)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, W_e, b_d, indices = ctx.saved_tensors
        n_sae, n_latents, dim = W_e.shape
        rows = _stacked_rows(indices, n_latents)     # (M b, j)
        g = grad.reshape(rows.shape).contiguous()    # (M b, j)
        grad_x = grad_W_e = grad_b_e = grad_b_d = None
        if ctx.needs_input_grad[2]:  # W_e[idx_ij] += g_ij (x_i - b_d)
            xc = (x - b_d[:, None]).reshape(-1, dim)
            grad_W_e = _scatter_rows(n_sae * n_latents, rows, g, xc).view(W_e.shape)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:  # b_e[idx_ij] += g_ij
            grad_b_e = W_e.new_zeros(n_sae * n_latents).index_add_(0, rows.reshape(-1), g.reshape(-1))
            grad_b_e = grad_b_e.view(n_sae, n_latents)
        if ctx.needs_input_grad[4]:  # - sum_ij g_ij W_e[idx_ij] = - sum_l grad_b_e[l] W_e[l]
            grad_b_d = -torch.bmm(grad_b_e[:, None, :], W_e)[:, 0]
        if ctx.needs_input_grad[1]:  # x_i: sum_j g_ij W_e[idx_ij]
            grad_x = F.embedding_bag(rows, W_e.reshape(-1, dim), per_sample_weights=g, mode="sum").view(x.shape)
        return None, grad_x, grad_W_e, grad_b_e if ctx.needs_input_grad[3] else None, grad_b_d, None


def _pre_at(pre: torch.Tensor, x: torch.Tensor, W_e: torch.Tensor, b_e: torch.Tensor, b_d: torch.Tensor,
            indices: torch.Tensor) -> torch.Tensor:
    """Pre-activations ``pre = (x - b_d) W_eᵀ + b_e`` at latents ``indices``, differentiable with a sparse backward.

    Parameters
    ----------
    pre : Tensor
        ``(M, b, K)`` the pre-activations, already computed (without gradient) from the other arguments.
    x : Tensor
        ``(M, b, d)`` inputs.
    W_e, b_e, b_d : Tensor
        ``(M, K, d)``, ``(M, K)`` and ``(M, d)``: the encoders and decoder biases of the ``M`` stacked SAEs.
    indices : Tensor
        ``(M, b, j)`` latents (int64).

    Returns
    -------
    Tensor
        ``(M, b, j)`` ``pre`` gathered at ``indices``. Its backward touches only the ``j`` chosen rows of ``W_e`` and
        entries of ``b_e`` per sample (``index_add_``); ``b_d`` gets minus the ``W_e`` rows weighted by the
        gradient of ``b_e`` (and ``x``, if it needs one, its rows' sum by ``embedding_bag``).
    """
    return _PreAt.apply(pre, x, W_e, b_e, b_d, indices)


class _SparseDecode(torch.autograd.Function):
    """Sparse codes times the decoder, forward and backward in ``O(b j d)`` (see :func:`_sparse_decode`)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, indices: torch.Tensor, W_d: torch.Tensor) -> torch.Tensor:
        table = _decoder_rows(W_d)                                   # (M K, d)
        rows = _stacked_rows(indices, W_d.shape[2])                  # (M b, j)
        weights = values.reshape(rows.shape).contiguous()
        ctx.save_for_backward(W_d, weights, rows, table)
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum").view(*values.shape[:2], -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        W_d, weights, rows, table = ctx.saved_tensors
        g = grad.reshape(-1, W_d.shape[1]).contiguous()  # (M b, d)
        grad_values = grad_W_d = None
        if ctx.needs_input_grad[0]:  # <g_i, W_d[:, idx_ij]>
            grad_values = _row_dots(table, rows, g).view(weights.shape).view(*grad.shape[:2], -1)
        if ctx.needs_input_grad[2]:  # W_d[:, idx_ij] += v_ij g_i
            grad_W_d = _decoder_grad(_scatter_rows(len(table), rows, weights, g), W_d)
        return grad_values, None, grad_W_d


def _sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_d: torch.Tensor) -> torch.Tensor:
    """``(M, b, d)`` sum over ``j`` of ``values[m, i, j] W_d[m, :, indices[m, i, j]]`` (no bias).

    Equals the dense ``h W_dᵀ`` of the codes ``h`` ``(M, b, K)`` that hold ``values`` ``(M, b, j)`` at ``indices``
    (int64) and zeros elsewhere, in ``O(b j d)``: forward by ``embedding_bag`` over the decoder columns, backward by
    gathering them (gradient of ``values``) and ``index_add_`` into them (gradient of ``W_d`` ``(M, d, K)``).
    """
    return _SparseDecode.apply(values, indices, W_d)


# ------------------------------------------------------------------------------------------- the model

class _SAE(nn.Module):
    """``M`` stacked SAEs (``M = 1`` shared, ``2`` per modality) on normalised inputs.

    Parameters ``W_e (M, K, d)``, ``b_e (M, K)``, ``W_d (M, d, K)``, ``b_d (M, d)``.
    """

    def __init__(self, n_sae: int, dim: int, n_latents: int, kind: str, k: int, generator: torch.Generator) -> None:
        super().__init__()
        w_d = torch.randn(n_sae, dim, n_latents, generator=generator)
        w_d /= w_d.norm(dim=1, keepdim=True)
        self.W_d = nn.Parameter(w_d)
        self.W_e = nn.Parameter(w_d.transpose(1, 2).clone())
        self.b_e = nn.Parameter(torch.zeros(n_sae, n_latents))
        self.b_d = nn.Parameter(torch.zeros(n_sae, dim))
        self.kind, self.k = kind, k

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``(M, b, K)`` of inputs ``(M, b, d)``."""
        return torch.baddbmm(self.b_e[:, None], x - self.b_d[:, None], self.W_e.transpose(1, 2))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Codes ``(M, b, K)``: ReLU, or the ReLU of the top ``k`` pre-activations."""
        if self.kind == "topk":
            values, indices = _topk(pre, self.k)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return torch.relu(pre)

    def topk_loss(self, x: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, ...]:
        """The TopK SAE's ``weight * sum ||x - x_hat||²`` on inputs ``(M, b, d)`` without dense codes
        (:func:`_topk_sae_loss`: loss, residual, values, indices, pre-activations).
        """
        return _topk_sae_loss(x, self.W_e, self.b_e, self.W_d, self.b_d, self.k, weight)

    def encode_one(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """Codes ``(n, K)`` of SAE ``s`` for inputs ``(n, d)``."""
        return self.activate(torch.addmm(self.b_e[s], x - self.b_d[s], self.W_e[s].T)[None])[0]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(M, b, d)`` of codes ``(M, b, K)``."""
        return torch.baddbmm(self.b_d[:, None], h, self.W_d.transpose(1, 2))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder columns."""
        self.W_d /= self.W_d.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------- the map

class SAEMap(FeatureMap):
    """A trained multimodal SAE as a feature map (``has_decoder`` is True).

    ``encode`` normalises ``z`` with its modality's stored statistics and returns the codes ``(n, K)``
    (``(n, 2K)`` block layout when not shared); ``decode`` reconstructs in the original embedding space.

    Attributes
    ----------
    model : nn.Module
        The stacked SAE(s): ``W_e (M, K, d)``, ``b_e (M, K)``, ``W_d (M, d, K)``, ``b_d (M, d)``.
    norm_mean, norm_scale : Tensor
        ``(2, d)`` and ``(2,)``: the per-modality normalisation (image, text).
    train_config : SAEConfig
    """

    kind = "sae"
    has_decoder = True

    def __init__(self, model: _SAE, norm_mean: torch.Tensor, norm_scale: torch.Tensor, config: SAEConfig,
                 source: Source | None = None) -> None:
        n_sae, dim, n_latents = model.W_d.shape
        super().__init__(dim, n_sae * n_latents, hparams=to_jsonable(config), source=source)
        self.model = model.eval().requires_grad_(False)
        self.norm_mean = norm_mean.float()    # (2, d)
        self.norm_scale = norm_scale.float()  # (2,)
        self.train_config = config

    @property
    def name(self) -> str:
        """A short display name with the SAE's kind, ``K`` and sparsity setting."""
        c = self.train_config
        sparsity = f"k={c.k}" if c.kind == "topk" else f"λ={c.l1_coef:g}"
        return f"sae-{c.kind}(K={self.n_features}, {sparsity}{'' if c.shared else ', per-modality'})"

    @property
    def n_latents(self) -> int:
        """Latents per SAE (``K`` of the config)."""
        return int(self.model.W_d.shape[2])

    def _index(self, modality: str) -> tuple[int, int]:
        m = MODALITIES.index(modality)
        return m, 0 if self.train_config.shared else m

    def normalize_input(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Embeddings ``(n, d)`` in the SAE's input space: ``(z - mu_m) / s_m``."""
        m, _ = self._index(modality)
        return (z - self.norm_mean[m]) / self.norm_scale[m]

    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        m, s = self._index(modality)
        x = self.normalize_input(z, modality)
        h = self.model.encode_one(x, s)
        if self.train_config.shared:
            return h
        out = torch.zeros(len(z), self.n_features)
        out[:, s * self.n_latents:(s + 1) * self.n_latents] = h
        return out

    def _decode(self, h: torch.Tensor, modality: str) -> torch.Tensor:
        m, s = self._index(modality)
        if not self.train_config.shared:
            h = h[:, s * self.n_latents:(s + 1) * self.n_latents]
        x_hat = h @ self.model.W_d[s].T + self.model.b_d[s]
        return x_hat * self.norm_scale[m] + self.norm_mean[m]

    @property
    def dictionary(self) -> torch.Tensor:
        """Unit decoder directions ``(n_features, d)`` (also the directions in the original space, since the
        normalisation scales isotropically).
        """
        return self.model.W_d.detach().permute(0, 2, 1).reshape(self.n_features, self.input_dim).clone()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The SAE's weights and normalisation statistics (what :meth:`save` writes)."""
        return {**{k: v.detach() for k, v in self.model.state_dict().items()},
                "norm_mean": self.norm_mean, "norm_scale": self.norm_scale}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> SAEMap:
        """Rebuild an SAE from :meth:`state_tensors` and :meth:`config`."""
        hp = dict(config["hparams"])
        hp["resample_at"] = tuple(hp.get("resample_at", ()))
        sae_config = SAEConfig(**hp)
        n_sae, dim, n_latents = tensors["W_d"].shape
        if (dim, n_sae * n_latents) != (config["input_dim"], config["n_features"]) or n_sae != sae_config.n_sae:
            raise InputError(f"SAE tensors of shape {tuple(tensors['W_d'].shape)} do not match the recorded "
                             f"d={config['input_dim']}, K={config['n_features']}, shared={sae_config.shared}")
        model = _SAE(n_sae, dim, n_latents, sae_config.kind, sae_config.k, torch.Generator().manual_seed(0))
        model.load_state_dict({k: tensors[k] for k in ("W_d", "W_e", "b_e", "b_d")})
        return cls(model, tensors["norm_mean"], tensors["norm_scale"], sae_config)


# ------------------------------------------------------------------------------------------------ training

def _normalization(stats: Any, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-modality ``(mean (2, d), scale (2,))`` of the chosen normalisation."""
    zeros, ones = torch.zeros_like(stats.mean), torch.ones(2)
    if mode == "none":
        return zeros, ones
    if mode == "scale":
        return zeros, stats.sq_norm.sqrt().clamp_min(1e-12)
    if mode == "center":
        return stats.mean.clone(), ones
    return stats.mean.clone(), stats.centered_sq_norm.sqrt().clamp_min(1e-12)


def _group(x: torch.Tensor, n_sae: int) -> torch.Tensor:
    """``(2, b, ...)`` per-modality rows -> ``(M, rows, ...)`` per-SAE rows (both modalities pooled if shared)."""
    return x.reshape(n_sae, -1, *x.shape[2:])


def _reset_adam(optimizer: torch.optim.Optimizer, param: nn.Parameter, index: tuple) -> None:
    state = optimizer.state.get(param, {})
    for name in ("exp_avg", "exp_avg_sq"):
        if name in state:
            state[name][index] = 0.0


@torch.no_grad()
def _resample(model: _SAE, optimizer: torch.optim.Optimizer, dead: torch.Tensor, recent: torch.Tensor,
              generator: torch.Generator) -> int:
    """Resample dead latents toward high-loss inputs (Bricken et al., 2023); return how many.

    ``dead`` ``(M, K)`` bool; ``recent`` ``(M, r, d)`` recent normalised inputs of each SAE. A dead latent's
    decoder column becomes a recent input (minus ``b_d``) drawn with probability proportional to its
    squared reconstruction loss, unit-normalised; its encoder row that direction scaled to 0.2 times the
    mean norm of the alive encoder rows; its encoder bias 0; its Adam state is reset.
    """
    total = 0
    for s in range(dead.shape[0]):
        idx = torch.nonzero(dead[s]).flatten()
        if len(idx) == 0:
            continue
        x = recent[s]
        loss = (x - model.decode(model.activate(model.pre(x[None])))[0]).square().sum(-1)
        weights = loss.square() + 1e-12
        pick = torch.multinomial(weights.cpu(), len(idx), replacement=len(idx) > len(x), generator=generator)
        pick = pick.to(x.device)
        direction = x[pick] - model.b_d[s]
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead[s]
        enc_norm = model.W_e[s][alive].norm(dim=1).mean() if bool(alive.any()) else x.new_tensor(1.0)
        model.W_d[s][:, idx] = direction.T
        model.W_e[s][idx] = direction * 0.2 * enc_norm
        model.b_e[s][idx] = 0.0
        _reset_adam(optimizer, model.W_d, (s, slice(None), idx))
        _reset_adam(optimizer, model.W_e, (s, idx))
        _reset_adam(optimizer, model.b_e, (s, idx))
        total += len(idx)
    return total


def _aux_loss(model: _SAE, x: torch.Tensor, residual: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK (Gao et al., 2024): the ``aux_k`` largest dead latents reconstruct the ``residual``.

    Shapes: inputs ``x`` and ``residual`` ``(M, b, d)`` (``x - x_hat``, detached); ``pre`` ``(M, b, K)`` (no
    gradient) as returned by :meth:`_SAE.topk_loss`; ``dead`` ``(M, K)``. Returns each SAE's mean squared
    error divided by the residual's mean squared norm (a scale-free term), summed over SAEs; its gradient reaches
    the encoder through the chosen pre-activations and the decoder through their columns (sparse kernels).
    """
    total = pre.new_zeros(())
    for s in range(dead.shape[0]):
        idx = torch.nonzero(dead[s]).flatten()
        if len(idx) == 0:
            continue
        one = slice(s, s + 1)
        latents = idx[_topk(pre[s][:, idx], min(aux_k, len(idx)))[1]][None]             # (1, b, k_aux)
        values = torch.relu(_pre_at(pre[one], x[one], model.W_e[one], model.b_e[one], model.b_d[one], latents))
        estimate = _sparse_decode(values, latents, model.W_d[one])[0]
        err = (residual[s] - estimate).square().sum(-1).mean()
        total = total + err / residual[s].square().sum(-1).mean().clamp_min(1e-12)
    return total


def train_sae(data: PairData, config: SAEConfig = SAEConfig(), source: Source | None = None,
              progress: bool = True, threads: int | None = 1, device: str | torch.device = "cpu"
              ) -> tuple[SAEMap, dict[str, list[float]]]:
    """Train a multimodal SAE on paired image and text embeddings.

    Parameters
    ----------
    data : PairData
        :class:`~mmlib.data.embeddings.Embeddings`, an ``(image (n, d), text (n, d))`` pair, or a function returning an
        iterable of such chunks (streamed; memory does not grow with ``n``).
    config : SAEConfig
    source : Source, optional
        What the data are (default: read from ``data`` by :func:`mmlib.feature_maps.base.source_of`).
    progress : bool
        Show a tqdm bar over steps.
    threads : int or None
        torch CPU threads during training (``None``: leave torch's setting). One thread is the default: these
        matrices are small, and several threads slow down badly on cores shared with other processes.
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); the returned map is on the CPU. Deterministic on
        the CPU only.

    Returns
    -------
    (SAEMap, dict)
        The map and its history: per logged step ``step``, ``loss``, ``mse`` (mean over modalities of the
        per-sample squared error in the normalised space), ``l0`` (active latents per sample), ``dead``
        (fraction of latents not fired in the last ``dead_window`` steps), ``lr``, and ``resampled``
        (latents resampled at each resampling step, with ``resample_step``).
    """
    if not isinstance(config, SAEConfig):
        raise ArgumentTypeError(f"train_sae: config must be an SAEConfig, got {type(config).__name__}")
    if source is not None and not isinstance(source, Source):
        raise ArgumentTypeError(f"train_sae: source must be a Source or None, got {type(source).__name__}")
    with torch_threads(threads):
        return _train(data, config, source, progress, resolve_device(device))


def _train(data: PairData, config: SAEConfig, source: Source | None, progress: bool, device: torch.device
           ) -> tuple[SAEMap, dict[str, list[float]]]:
    chunks, stats, source = training_data(data, config.chunk_size, source)
    n_sae = config.n_sae
    gen = torch.Generator().manual_seed(config.seed)
    norm_mean, norm_scale = _normalization(stats, config.normalize)
    model = _SAE(n_sae, stats.dim, config.K, config.kind, config.k, gen)
    with torch.no_grad():  # b_d = mean of the normalised data (pooled over modalities if shared)
        centre = (stats.mean - norm_mean) / norm_scale[:, None]
        model.b_d.copy_(centre.mean(0, keepdim=True) if config.shared else centre)
    model.to(device)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)  # one kernel per tensor
    total = config.epochs * stats.steps_per_epoch(config.batch_size)
    resample_steps = {max(1, round(f * total)) for f in config.resample_at} if config.kind == "relu_l1" else set()
    aux_k = config.aux_k or max(1, stats.dim // 2)
    liveness = Liveness(n_sae, config.K, config.dead_window, device)
    recent: collections.deque[torch.Tensor] = collections.deque(maxlen=max(1, math.ceil(4096 / config.batch_size)))
    resampled: dict[str, list[float]] = {"resample_step": [], "resampled": []}

    def normalized() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # each chunk once, not each batch
        for img, txt in chunks():
            yield (img - norm_mean[0]) / norm_scale[0], (txt - norm_mean[1]) / norm_scale[1]

    step = 0
    model.train()
    with tqdm(total=total, desc=f"SAE {config.kind} K={config.K}", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        history = History(("loss", "mse", "l0"), config.log_every, total, bar)
        for _ in range(config.epochs):
            for z in iterate_batches(normalized, config.batch_size, gen):
                step += 1
                lr = linear_decay_lr(step, total, config.lr, config.lr_decay)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = _group(z.to(device), n_sae)  # (M, rows, d)
                if config.kind == "topk":
                    # the sum over modalities of their mean squared error (pairs: both have z.shape[1] rows)
                    loss, residual, values, indices, pre = model.topk_loss(x, 1 / z.shape[1])
                    recon = loss
                    active = values.reshape(-1) > 0
                    liveness.fire(_stacked_rows(indices, config.K).reshape(-1)[active], step)
                    dead = liveness.dead_if_any(step)
                    if config.aux_coef > 0 and dead is not None:
                        loss = loss + config.aux_coef * _aux_loss(model, x, residual, pre, dead, aux_k)
                    active_count = active.sum()
                else:
                    h = model.activate(model.pre(x))
                    x_hat = model.decode(h)
                    active_count = (h.detach() > 0).sum()
                    recon = (x - x_hat).square().sum(-1).reshape(2, -1).mean(1).sum()  # over modalities
                    loss = recon + config.l1_coef * h.sum(-1).reshape(2, -1).mean(1).sum()
                    dead = liveness.update(h.detach().amax(1) > 0, step)
                for param in params:
                    param.grad = None
                loss.backward()
                optimizer.step()
                model.normalize_decoder()
                if resample_steps:
                    recent.append(x.detach())
                if step in resample_steps:
                    resampled["resampled"].append(_resample(model, optimizer, dead, torch.cat(list(recent), 1), gen))
                    resampled["resample_step"].append(step)
                    liveness.revive(dead, step)
                loss_value = check_loss(float(loss.detach()), step, config, "SAE")
                mse_value = (loss_value if recon is loss else float(recon.detach())) / 2  # mean over modalities
                history.add(step, lambda: 0.0 if dead is None else float(dead.float().mean()), lr, loss=loss_value,
                            mse=mse_value, l0=float(active_count) / (2 * z.shape[1]))
                bar.update(1)
    return SAEMap(model.cpu(), norm_mean, norm_scale, config, source), {**history.data, **resampled}
