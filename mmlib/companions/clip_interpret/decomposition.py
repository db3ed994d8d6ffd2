"""The per-layer, per-head decomposition of a ViT CLIP's image embedding (Gandelsman, Efros & Steinhardt, 2024).

In an open_clip :class:`~open_clip.transformer.VisionTransformer` the class token's residual stream is a sum: its
input (class embedding + position, after ``ln_pre``), plus, per layer, the attention output (a sum over heads of the
head outputs, plus the out-projection bias) and the MLP output. The image embedding is ``ln_post(stream) @ proj``.
``ln_post`` is linearised as in Gandelsman et al.: its centring (a linear map) and its division by the standard
deviation *of the full stream* are applied to every summand, its bias is kept as a separate term, and every summand
goes through the projection. The terms then sum to ``encode_image`` exactly (up to float rounding; checked by
:func:`decomposition_error`). A head's output for the class token is itself a sum over source tokens (attention
weight times the value vector, through the head's slice of the out-projection), which gives per-patch maps of a
head. The decomposition reads only the residual stream after the patch embedding (``visual._embeds``), so a
convolutional stem in place of ``conv1`` is fine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from PIL import Image
from torch import nn

from mmlib.core.errors import InputError, MmlibError, OutOfRangeError, UnsupportedModelError
from mmlib.core.validation import check_finite
from mmlib.data.world import World
from mmlib.models.clip import ModelBundle, TinyClipArch
from mmlib.models.training import images_to_tensor

__all__ = ["Head", "NotAViTError", "vision_transformer", "preprocess_images", "ImageDecomposition", "layer_index",
           "world_images", "decompose_images", "decomposition_error", "direct_effects"]

#: A head, as ``(layer, head)``.
Head = tuple[int, int]

class NotAViTError(MmlibError, TypeError):
    """The image tower is not an open_clip VisionTransformer (e.g. a ModifiedResNet or a timm tower)."""


def vision_transformer(model: ModelBundle | nn.Module) -> VisionTransformer:
    """The open_clip ViT image tower of ``model`` (a bundle, a CLIP or the tower itself), checked.

    Raises
    ------
    NotAViTError
        for any other image tower.
    NotImplementedError
        for ViT variants the decomposition does not cover (attentional pooling, average pooling, custom
        attention blocks).
    """
    module = model.model if isinstance(model, ModelBundle) else model
    visual = module if isinstance(module, VisionTransformer) else getattr(module, "visual", None)
    if not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__ if visual is not None else type(module).__name__
        raise NotAViTError(
            f"the per-head decomposition needs an open_clip VisionTransformer image tower, but this model's is "
            f"a {kind} (e.g. RN50's ModifiedResNet has no attention heads writing to a residual stream). "
            "Use a ViT model such as 'ViT-B-32'.")
    if visual.attn_pool is not None:
        raise UnsupportedModelError("ViTs with attentional pooling (CoCa-style) are not supported")
    if visual.pool_type != "tok":
        raise UnsupportedModelError(f"only class-token pooling is supported, not pool_type={visual.pool_type!r}")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
            raise UnsupportedModelError(f"block {i} is a {type(block).__name__}; only open_clip's "
                                      "ResidualAttentionBlock with nn.MultiheadAttention is supported")
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise UnsupportedModelError(f"block {i}: unsupported nn.MultiheadAttention options")
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise UnsupportedModelError(f"ln_post is a {type(visual.ln_post).__name__}, not a LayerNorm")
    return visual


def preprocess_images(bundle: ModelBundle, images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack ``bundle.preprocess`` of PIL images: ``(n, 3, H, W)``."""
    if len(images) == 0:
        raise InputError("no images")
    return torch.stack([bundle.preprocess(im) for im in images])


def world_images(bundle: ModelBundle, world: World, indices: Sequence[int] | np.ndarray,
                 arch: TinyClipArch | None = None) -> torch.Tensor:
    """Images of the generated world, preprocessed for ``bundle``'s image tower: ``(n, 3, H, W)``.

    Parameters
    ----------
    bundle : ModelBundle
    world : World
    indices : sequence of int
        Positions in the world (e.g. ``world.subset("test").index``).
    arch : TinyClipArch, optional
        The tiny CLIP's architecture: the uint8 images are normalised in one batch exactly as its preprocessing
        does (:func:`mmlib.models.training.images_to_tensor`). ``None`` (an open_clip model): each image goes
        through ``bundle.preprocess`` (resized to the model's input size).
    """
    indices = np.asarray(indices)
    if arch is not None:
        return images_to_tensor(world.images[indices], arch)
    return preprocess_images(bundle, [world.image(int(i)) for i in indices])


@dataclasses.dataclass(frozen=True)
class ImageDecomposition:
    """The image embeddings of ``n`` images as a sum of per-layer, per-head and other terms, ``d``-dim each.

    ``total() == embedding + heads.sum((1, 2)) + attn_biases.sum(1) + mlps.sum(1) + ln_bias`` equals
    ``encode_image`` (unnormalised). ``L`` layers, ``H`` heads, ``T = 1 + g_h g_w`` tokens (token 0 = class).

    Attributes
    ----------
    heads : Tensor
        ``(n, L, H, d)`` each head's direct contribution.
    mlps : Tensor
        ``(n, L, d)`` each MLP's contribution.
    attn_biases : Tensor
        ``(n, L, d)`` each attention layer's out-projection bias.
    embedding : Tensor
        ``(n, d)`` the class token's input to the transformer (class embedding + position, after ``ln_pre``).
    ln_bias : Tensor
        ``(n, d)`` ``ln_post``'s bias through the projection (the same row for every image until normalised).
    tokens : Tensor or None
        ``(n, len(token_layers), H, T, d)`` per-source-token contributions of the heads of ``token_layers``
        (summing over ``T`` gives ``heads``).
    token_layers : tuple of int
        Layers (non-negative indices) whose per-token contributions were kept.
    grid : tuple of int
        ``(g_h, g_w)`` patch grid.
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    attn_biases: torch.Tensor
    embedding: torch.Tensor
    ln_bias: torch.Tensor
    tokens: torch.Tensor | None
    token_layers: tuple[int, ...]
    grid: tuple[int, int]

    def __len__(self) -> int:
        return int(self.heads.shape[0])

    @property
    def n_layers(self) -> int:
        """Number of layers ``L``."""
        return int(self.heads.shape[1])

    @property
    def n_heads(self) -> int:
        """Heads per layer ``H``."""
        return int(self.heads.shape[2])

    @property
    def dim(self) -> int:
        """Embedding dimension ``d``."""
        return int(self.heads.shape[3])

    def rest(self) -> torch.Tensor:
        """Everything but the heads: embedding, attention biases, MLPs and LN bias, ``(n, d)``."""
        return self.embedding + self.attn_biases.sum(1) + self.mlps.sum(1) + self.ln_bias

    def total(self) -> torch.Tensor:
        """The image embeddings ``(n, d)`` (the sum of all terms)."""
        return self.heads.sum((1, 2)) + self.rest()

    def head(self, layer: int, head: int) -> torch.Tensor:
        """One head's contributions ``(n, d)``."""
        return self.heads[:, layer, head]

    def head_tokens(self, layer: int, head: int) -> torch.Tensor:
        """One head's per-token contributions ``(n, T, d)`` (its layer must be in ``token_layers``)."""
        layer = layer_index(layer, self.n_layers)
        if self.tokens is None or layer not in self.token_layers:
            raise InputError(f"no per-token contributions for layer {layer}: decompose with "
                             f"token_layers including {layer} (kept: {list(self.token_layers)})")
        return self.tokens[:, self.token_layers.index(layer), head]

    def normalized(self) -> ImageDecomposition:
        """Every term divided by the norm of its image's embedding (the terms sum to the unit embedding)."""
        norm = self.total().norm(dim=-1).clamp_min(1e-12)
        return dataclasses.replace(
            self, heads=self.heads / norm[:, None, None, None], mlps=self.mlps / norm[:, None, None],
            attn_biases=self.attn_biases / norm[:, None, None], embedding=self.embedding / norm[:, None],
            ln_bias=self.ln_bias / norm[:, None],
            tokens=None if self.tokens is None else self.tokens / norm[:, None, None, None, None])

    def select(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> ImageDecomposition:
        """The decomposition of a subset of the images."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return dataclasses.replace(
            self, heads=self.heads[index], mlps=self.mlps[index], attn_biases=self.attn_biases[index],
            embedding=self.embedding[index], ln_bias=self.ln_bias[index],
            tokens=None if self.tokens is None else self.tokens[index])


def layer_index(layer: int, n_layers: int) -> int:
    """The non-negative index of ``layer`` (negative indices count from the end); IndexError when out of range."""
    if not -n_layers <= layer < n_layers:
        raise OutOfRangeError(f"layer {layer} out of range for {n_layers} layers")
    return layer % n_layers


def _head_outputs(attn: nn.MultiheadAttention, x: torch.Tensor, tokens: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The class token's attention output split by head, before the out-projection bias.

    Parameters
    ----------
    x : Tensor
        ``(b, T, w)`` the attention input (after ``ln_1``), batch first.

    Returns
    -------
    heads : Tensor
        ``(b, H, w)``: head ``h``'s slice of the out-projection applied to its output for the class token.
    per_token : Tensor or None
        ``(b, H, T, w)``: the same split by source token (attention weight times projected value).
    """
    b, t, w = x.shape
    n_heads = attn.num_heads
    hd = w // n_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(w, dim=-1)
    q = q[:, :1].reshape(b, 1, n_heads, hd).transpose(1, 2)             # (b, H, 1, hd)
    k = k.reshape(b, t, n_heads, hd).transpose(1, 2)                     # (b, H, T, hd)
    v = v.reshape(b, t, n_heads, hd).transpose(1, 2)                     # (b, H, T, hd)
    weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)  # (b, H, 1, T)
    w_out = attn.out_proj.weight.reshape(w, n_heads, hd)                 # out = sum_h W_out[:, h] @ head_h
    if tokens:
        per_token = weights.squeeze(2).unsqueeze(-1) * torch.einsum("bhte,ohe->bhto", v, w_out)
        return per_token.sum(2), per_token
    return torch.einsum("bhe,ohe->bho", (weights @ v).squeeze(2), w_out), None


def _attention(block: ResidualAttentionBlock, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """The block's own attention on ``x (b, T, w)`` (batch first in and out)."""
    if batch_first:
        return block.attention(q_x=x)
    return block.attention(q_x=x.transpose(0, 1)).transpose(0, 1)


@torch.inference_mode()
def _decompose_batch(visual: VisionTransformer, images: torch.Tensor, token_layers: tuple[int, ...]
                     ) -> dict[str, torch.Tensor]:
    """All terms for one batch, in the tower's ``width`` space (before ``ln_post`` and the projection)."""
    x = visual._embeds(images)                                           # (b, T, w) after ln_pre
    batch_first = getattr(visual.transformer, "batch_first", True)
    terms: dict[str, list[torch.Tensor]] = {"heads": [], "mlps": [], "attn_biases": [], "tokens": []}
    embedding = x[:, 0]
    for layer, block in enumerate(visual.transformer.resblocks):
        h = block.ln_1(x)
        heads, per_token = _head_outputs(block.attn, h, layer in token_layers)
        bias = block.attn.out_proj.bias
        bias = torch.zeros_like(embedding) if bias is None else bias.unsqueeze(0).expand_as(embedding).clone()
        terms["heads"].append(block.ls_1(heads))
        terms["attn_biases"].append(block.ls_1(bias))
        if per_token is not None:
            terms["tokens"].append(block.ls_1(per_token))
        x = x + block.ls_1(_attention(block, h, batch_first))
        mlp = block.ls_2(block.mlp(block.ln_2(x)))
        terms["mlps"].append(mlp[:, 0])
        x = x + mlp
    out = {name: torch.stack(parts, 1) for name, parts in terms.items() if parts}
    out["embedding"] = embedding
    out["stream"] = x[:, 0]
    return out


def _through_ln_post(visual: VisionTransformer, term: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One summand through the linearised ``ln_post`` and the projection: ``(b, ..., w) -> (b, ..., d)``.

    ``std`` ``(b,)`` is the standard deviation of the full stream; the summand is centred over its own
    channels (centring is linear), divided by ``std``, scaled by the LN weight and projected.
    """
    ln = visual.ln_post
    centred = term - term.mean(-1, keepdim=True)
    scaled = centred / std.reshape(-1, *([1] * (term.dim() - 1)))
    if ln.weight is not None:
        scaled = scaled * ln.weight
    return scaled @ visual.proj if visual.proj is not None else scaled


def decompose_images(model: ModelBundle | nn.Module, images: torch.Tensor, token_layers: Sequence[int] = (),
                     batch_size: int = 64, progress: bool = False) -> ImageDecomposition:
    """Decompose ``encode_image`` of preprocessed images into per-layer, per-head and other terms.

    Parameters
    ----------
    model : ModelBundle, open_clip.CLIP or VisionTransformer
        A ViT CLIP (see :func:`vision_transformer`).
    images : Tensor
        ``(n, 3, H, W)`` preprocessed images (``bundle.preprocess``, see :func:`preprocess_images`).
    token_layers : sequence of int
        Layers whose heads' per-token contributions to keep (for heatmaps; memory ``n * H * T * d`` floats per
        layer). Negative indices count from the end.
    batch_size : int
    progress : bool

    Returns
    -------
    ImageDecomposition
        float32 on the CPU.
    """
    visual = vision_transformer(model)
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be preprocessed pixels (n, 3, H, W), got shape {tuple(images.shape)}; "
                         "use preprocess_images")
    check_finite(images, "images", hint="use preprocess_images on the PIL images")
    n_layers = len(visual.transformer.resblocks)
    keep = tuple(sorted({layer_index(layer, n_layers) for layer in token_layers}))
    param = next(visual.parameters())
    was_training = visual.training
    visual.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    try:
        starts = range(0, len(images), batch_size)
        for start in tqdm.tqdm(starts, desc="decompose", unit="batch", disable=not progress):
            batch = images[start:start + batch_size].to(device=param.device, dtype=param.dtype)
            with torch.inference_mode():
                parts = _decompose_batch(visual, batch, keep)
                stream = parts.pop("stream")
                ln = visual.ln_post
                std = torch.sqrt(stream.var(-1, unbiased=False) + ln.eps)
                bias = ln.bias if ln.bias is not None else torch.zeros_like(stream[0])
                proj_bias = bias @ visual.proj if visual.proj is not None else bias
                out = {name: _through_ln_post(visual, t, std) for name, t in parts.items()}
                out["ln_bias"] = proj_bias.expand(len(batch), -1)
            for name, t in out.items():
                chunks.setdefault(name, []).append(t.float().cpu())
    finally:
        visual.train(was_training)
    if not chunks:
        raise InputError("no images to decompose")
    merged = {name: torch.cat(parts) for name, parts in chunks.items()}
    grid = tuple(int(g) for g in visual.grid_size)
    n_tokens = merged["tokens"].shape[3] if "tokens" in merged else None
    if n_tokens is not None and n_tokens != 1 + grid[0] * grid[1]:
        side = int(round(math.sqrt(n_tokens - 1)))
        grid = (side, (n_tokens - 1) // side)
    return ImageDecomposition(heads=merged["heads"], mlps=merged["mlps"], attn_biases=merged["attn_biases"],
                              embedding=merged["embedding"], ln_bias=merged["ln_bias"],
                              tokens=merged.get("tokens"), token_layers=keep, grid=(grid[0], grid[1]))


def decomposition_error(model: ModelBundle | nn.Module, images: torch.Tensor, decomposition: ImageDecomposition,
                        batch_size: int = 256) -> dict[str, float]:
    """How far the decomposition's terms are from ``encode_image`` of the same images.

    Parameters
    ----------
    model : ModelBundle or open_clip.CLIP
        The model that was decomposed.
    images : Tensor
        ``(n, 3, H, W)`` the preprocessed images that were decomposed.
    decomposition : ImageDecomposition
        Of those images (in the same order).
    batch_size : int

    Returns
    -------
    dict
        ``max_abs``: the largest ``|sum of terms - encode_image|`` over images and dimensions; ``max_rel``: the
        largest ``||sum of terms - encode_image|| / ||encode_image||`` over images.
    """
    module = model.model if isinstance(model, ModelBundle) else model
    if len(images) != len(decomposition):
        raise InputError(f"{len(images)} images but a decomposition of {len(decomposition)}")
    param = next(module.parameters())
    with torch.inference_mode():
        direct = torch.cat([module.encode_image(images[i:i + batch_size].to(param.device, param.dtype)).float().cpu()
                            for i in range(0, len(images), batch_size)])
    diff = decomposition.total() - direct
    return {"max_abs": float(diff.abs().max()),
            "max_rel": float(diff.norm(dim=-1).div(direct.norm(dim=-1)).max())}


def direct_effects(decomposition: ImageDecomposition) -> pd.DataFrame:
    """The *direct effect* of every term: its projection on the image's own unit embedding, averaged over images.

    The terms of the unit embedding (:meth:`ImageDecomposition.normalized`) are projected on it, so the effects
    sum to 1.

    Returns
    -------
    DataFrame
        One row per term, heads first (``L{l}H{h}``), then MLPs (``L{l} MLP``), then the attention biases (summed
        over layers), the class-token input and ``ln_post``'s bias: ``term``, ``kind`` (``"head"``, ``"mlp"``,
        ``"other"``), ``layer`` (-1 for the fixed terms) and ``effect``.
    """
    unit = decomposition.normalized()
    direction = F.normalize(decomposition.total(), dim=-1)

    def effect(term: torch.Tensor) -> float:
        return float((term * direction).sum(-1).mean())

    n_layers, n_heads = decomposition.n_layers, decomposition.n_heads
    rows = [dict(term=f"L{la}H{h}", kind="head", layer=la, effect=effect(unit.heads[:, la, h]))
            for la in range(n_layers) for h in range(n_heads)]
    rows += [dict(term=f"L{la} MLP", kind="mlp", layer=la, effect=effect(unit.mlps[:, la])) for la in range(n_layers)]
    rows += [dict(term="attn biases", kind="other", layer=-1, effect=effect(unit.attn_biases.sum(1))),
             dict(term="class token input", kind="other", layer=-1, effect=effect(unit.embedding)),
             dict(term="ln_post bias", kind="other", layer=-1, effect=effect(unit.ln_bias))]
    return pd.DataFrame(rows)
