"""CLIP-InterpreT: per-head decomposition of a ViT CLIP's image embedding, TextSpan, and five analyses.

Gandelsman, Efros & Steinhardt (ICLR 2024), "Interpreting CLIP's Image Representation via Text-Based
Decomposition", and Madasu, Gandelsman, Lal & Howard (2024, arXiv:2409.06579), "Quantifying and Enabling the
Interpretability of CLIP-like Models" (CLIP-InterpreT).

**Decomposition.** In an open_clip :class:`~open_clip.transformer.VisionTransformer` the class token's residual
stream is a sum: its input (class embedding + position, after ``ln_pre``), plus, per layer, the attention
output (a sum over heads of the head outputs, plus the out-projection bias) and the MLP output. The image
embedding is ``ln_post(stream) @ proj``. ``ln_post`` is linearised as in Gandelsman et al.: its centring (a
linear map) and its division by the standard deviation *of the full stream* are applied to every summand, its
bias is kept as a separate term, and every summand goes through the projection. The terms then sum to
``encode_image`` exactly (up to float rounding). A head's output for the class token is itself a sum over
source tokens (attention weight times the value vector, through the head's slice of the out-projection),
which gives per-patch maps of a head (:func:`head_heatmap`). The decomposition reads only the residual
stream after the patch embedding (``visual._embeds``), so a convolutional stem in place of ``conv1`` is fine.

**TextSpan** (:func:`textspan`): for one head, greedily pick the text whose embedding direction explains the
most variance of the head's (centred) outputs over a set of images, project it out of the outputs and of all
texts, repeat. **Metrics** [ours, after Madasu et al., whose head labels come from ChatGPT in-context
learning]: a head's *property* is the factor most of its TextSpan texts name (in the generated world every
text's factor is known); *consistency* (their association score) is the share of its texts naming that
property; *entanglement* is the share of labelled heads whose property is shared with another head.

**Analyses** (CLIP-InterpreT's five): property-based nearest neighbours (:func:`property_nearest_neighbors`),
per-head topic segmentation (:func:`head_heatmap`), contrastive segmentation (:func:`contrastive_heatmap`),
per-head nearest neighbours of an image (:func:`head_image_neighbors`) and of a text
(:func:`head_text_neighbors`). :func:`head_feature_projections` ties heads to the book's monosemantic features.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from PIL import Image
from torch import nn

from mmlib.data.world import Factor, compose_caption, default_factors
from mmlib.models.clip import ModelBundle

__all__ = [
    "NotAViTError", "vision_transformer", "ImageDecomposition", "decompose_images", "preprocess_images",
    "TextPool", "world_descriptions", "TextSpanResult", "textspan", "textspan_heads", "head_properties",
    "interpretability_scores", "property_heads", "head_embeddings", "nearest_neighbors",
    "property_nearest_neighbors", "head_image_neighbors", "head_text_neighbors", "head_heatmap",
    "contrastive_heatmap", "upsample_heatmap", "head_feature_projections", "attribution_by_category",
]

Head = tuple[int, int]


# ------------------------------------------------------------------------------------------------ the model

class NotAViTError(TypeError):
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
        raise NotImplementedError("ViTs with attentional pooling (CoCa-style) are not supported")
    if visual.pool_type != "tok":
        raise NotImplementedError(f"only class-token pooling is supported, not pool_type={visual.pool_type!r}")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
            raise NotImplementedError(f"block {i} is a {type(block).__name__}; only open_clip's "
                                      "ResidualAttentionBlock with nn.MultiheadAttention is supported")
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise NotImplementedError(f"block {i}: unsupported nn.MultiheadAttention options")
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise NotImplementedError(f"ln_post is a {type(visual.ln_post).__name__}, not a LayerNorm")
    return visual


def preprocess_images(bundle: ModelBundle, images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack ``bundle.preprocess`` of PIL images: ``(n, 3, H, W)``."""
    if len(images) == 0:
        raise ValueError("no images")
    return torch.stack([bundle.preprocess(im) for im in images])


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
        return int(self.heads.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.heads.shape[2])

    @property
    def dim(self) -> int:
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
        layer = _layer_index(layer, self.n_layers)
        if self.tokens is None or layer not in self.token_layers:
            raise ValueError(f"no per-token contributions for layer {layer}: decompose with "
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


def _layer_index(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} out of range for {n_layers} layers")
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
    n_layers = len(visual.transformer.resblocks)
    keep = tuple(sorted({_layer_index(layer, n_layers) for layer in token_layers}))
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
        raise ValueError("no images to decompose")
    merged = {name: torch.cat(parts) for name, parts in chunks.items()}
    grid = tuple(int(g) for g in visual.grid_size)
    n_tokens = merged["tokens"].shape[3] if "tokens" in merged else None
    if n_tokens is not None and n_tokens != 1 + grid[0] * grid[1]:
        side = int(round(math.sqrt(n_tokens - 1)))
        grid = (side, (n_tokens - 1) // side)
    return ImageDecomposition(heads=merged["heads"], mlps=merged["mlps"], attn_biases=merged["attn_biases"],
                              embedding=merged["embedding"], ln_bias=merged["ln_bias"],
                              tokens=merged.get("tokens"), token_layers=keep, grid=(grid[0], grid[1]))


# ------------------------------------------------------------------------------------------------- TextSpan

@dataclasses.dataclass(frozen=True)
class TextPool:
    """A pool of text descriptions for TextSpan, with the property (factor) each names where known.

    Attributes
    ----------
    texts : tuple of str
    properties : tuple of (str or None)
    values : tuple of (int or None)
        Index of the factor value named.
    """

    texts: tuple[str, ...]
    properties: tuple[str | None, ...]
    values: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("the text pool is empty")
        if not len(self.texts) == len(self.properties) == len(self.values):
            raise ValueError("one property and one value per text")

    def __len__(self) -> int:
        return len(self.texts)


def world_descriptions(factors: Sequence[Factor] | None = None,
                       templates: Sequence[str] = ("a photo of",)) -> TextPool:
    """Descriptions of the generated world in its own caption grammar, one per factor synonym and template.

    E.g. ``"a photo of a red object"``, ``"a photo of an object on a black background"``; each labelled with
    its factor (the property TextSpan's heads are scored against).
    """
    factors = tuple(default_factors() if factors is None else factors)
    texts, props, values = [], [], []
    for template in templates:
        for f in factors:
            for v, synonyms in enumerate(f.synonyms):
                for word in synonyms:
                    text = compose_caption({f.name: word}, prefix=template)
                    if text not in texts:
                        texts.append(text)
                        props.append(f.name)
                        values.append(v)
    return TextPool(tuple(texts), tuple(props), tuple(values))


@dataclasses.dataclass(frozen=True)
class TextSpanResult:
    """TextSpan's texts for one head.

    Attributes
    ----------
    layer, head : int
    indices : tuple of int
        Positions in the text pool, in the order chosen.
    texts : tuple of str
    explained : tuple of float
        Share of the head's (centred) output variance explained after each text, cumulative.
    """

    layer: int
    head: int
    indices: tuple[int, ...]
    texts: tuple[str, ...]
    explained: tuple[float, ...]


def textspan(outputs: torch.Tensor, text_emb: torch.Tensor, k: int = 5, rank: int | None = None
             ) -> tuple[list[int], list[float]]:
    """The TextSpan greedy basis of one component's outputs (Gandelsman et al. 2024, Algorithm 1).

    Parameters
    ----------
    outputs : Tensor
        ``(n, d)`` the component's contributions over ``n`` images.
    text_emb : Tensor
        ``(m, d)`` text embeddings (normalised here).
    k : int
        Texts to pick.
    rank : int, optional
        Project the texts onto the top-``rank`` right singular vectors of ``outputs`` first (the paper uses 80
        for ViT-L/H); ``None``: no projection.

    Returns
    -------
    indices : list of int
        Chosen texts in order (at most ``min(k, m)``; stops early when nothing is left to explain).
    explained : list of float
        Cumulative share of the centred outputs' variance explained after each pick.
    """
    data = outputs.double()
    texts = F.normalize(text_emb.double(), dim=-1)
    if data.shape[1] != texts.shape[1]:
        raise ValueError(f"outputs have d={data.shape[1]} but texts d={texts.shape[1]}")
    if rank is not None:
        _, _, vh = torch.linalg.svd(data, full_matrices=False)
        basis = vh[:rank]
        texts = texts @ basis.T @ basis
    data = data - data.mean(0, keepdim=True)
    total = float((data ** 2).sum())
    chosen: list[int] = []
    explained: list[float] = []
    if total == 0.0:
        return chosen, explained
    for _ in range(min(k, len(texts))):
        spread = (data @ texts.T).std(0)
        if chosen:
            spread[chosen] = -1.0
        j = int(spread.argmax())
        t = texts[j]
        norm = float(t @ t)
        if spread[j] <= 0 or norm < 1e-12:
            break
        data = data - torch.outer(data @ t / norm, t)
        texts = texts - torch.outer(texts @ t / norm, t)
        chosen.append(j)
        explained.append(1.0 - float((data ** 2).sum()) / total)
    return chosen, explained


def textspan_heads(decomposition: ImageDecomposition, text_emb: torch.Tensor, texts: Sequence[str] | TextPool,
                   layers: Sequence[int] | None = None, k: int = 5, rank: int | None = None,
                   progress: bool = False) -> list[TextSpanResult]:
    """:func:`textspan` for every head of the given layers (default: all).

    Parameters
    ----------
    decomposition : ImageDecomposition
        Over a set of images (the more varied, the better).
    text_emb : Tensor
        ``(m, d)`` embeddings of ``texts``.
    texts : sequence of str or TextPool
    """
    pool = texts.texts if isinstance(texts, TextPool) else tuple(texts)
    if len(pool) != len(text_emb):
        raise ValueError(f"{len(pool)} texts but {len(text_emb)} text embeddings")
    layers = range(decomposition.n_layers) if layers is None else [_layer_index(la, decomposition.n_layers)
                                                                     for la in layers]
    heads = [(la, h) for la in layers for h in range(decomposition.n_heads)]
    results = []
    for la, h in tqdm.tqdm(heads, desc="TextSpan", unit="head", disable=not progress):
        idx, explained = textspan(decomposition.head(la, h), text_emb, k, rank)
        results.append(TextSpanResult(la, h, tuple(idx), tuple(pool[i] for i in idx), tuple(explained)))
    return results


def head_properties(results: Sequence[TextSpanResult], properties: Sequence[str | None] | TextPool,
                    min_consistency: float = 0.0) -> pd.DataFrame:
    """Label each head with the property most of its TextSpan texts name, and score its consistency.

    Parameters
    ----------
    results : sequence of TextSpanResult
    properties : sequence or TextPool
        The property of every text in the pool (``None``: unknown; ignored in the vote).
    min_consistency : float
        Heads whose consistency is below this get no property (``None``).

    Returns
    -------
    DataFrame
        One row per head: ``layer``, ``head``, ``property``, ``consistency`` (share of the head's texts naming
        the property: Madasu et al.'s association score, with known labels instead of ChatGPT's),
        ``explained`` (variance explained by all its texts) and ``texts`` (joined by ``" | "``).
    """
    props = properties.properties if isinstance(properties, TextPool) else tuple(properties)
    rows = []
    for r in results:
        named = [props[i] for i in r.indices if props[i] is not None]
        prop, consistency = None, 0.0
        if named:
            counts = Counter(named)
            best = max(counts.values())
            prop = next(p for p in named if counts[p] == best)  # ties: the earliest-picked property
            consistency = best / len(r.indices)
        if consistency < min_consistency:
            prop = None
        rows.append(dict(layer=r.layer, head=r.head, property=prop, consistency=consistency,
                         explained=r.explained[-1] if r.explained else 0.0, texts=" | ".join(r.texts)))
    return pd.DataFrame(rows)


def interpretability_scores(table: pd.DataFrame) -> dict[str, float]:
    """Model-level scores from :func:`head_properties` [ours, after Madasu et al.].

    Returns
    -------
    dict
        ``association``: mean consistency over heads; ``entanglement``: share of labelled heads whose property
        is also another head's; ``disentanglement``: ``1 - entanglement``; ``distinct_properties``;
        ``labelled_heads``; ``heads``.
    """
    labelled = table["property"].dropna()
    counts = labelled.value_counts()
    shared = float(labelled.map(counts).gt(1).mean()) if len(labelled) else float("nan")
    return {"association": float(table["consistency"].mean()) if len(table) else float("nan"),
            "entanglement": shared, "disentanglement": 1.0 - shared,
            "distinct_properties": float(labelled.nunique()), "labelled_heads": float(len(labelled)),
            "heads": float(len(table))}


def property_heads(table: pd.DataFrame, prop: str) -> list[Head]:
    """The ``(layer, head)`` pairs labelled with property ``prop`` in a :func:`head_properties` table."""
    rows = table[table["property"] == prop]
    return [(int(la), int(h)) for la, h in zip(rows["layer"], rows["head"])]


# ------------------------------------------------------------------------------------------------- analyses

def _as_heads(heads: Head | Sequence[Head]) -> list[Head]:
    if len(heads) == 2 and all(isinstance(x, (int, np.integer)) for x in heads):
        return [(int(heads[0]), int(heads[1]))]  # type: ignore[index]
    out = [(int(la), int(h)) for la, h in heads]  # type: ignore[misc]
    if not out:
        raise ValueError("no heads given")
    return out


def head_embeddings(decomposition: ImageDecomposition, heads: Head | Sequence[Head]) -> torch.Tensor:
    """The summed contributions ``(n, d)`` of the given heads: each image in a head subspace."""
    return sum(decomposition.head(la, h) for la, h in _as_heads(heads))  # type: ignore[return-value]


def nearest_neighbors(query: torch.Tensor, database: torch.Tensor, k: int = 5,
                      exclude: torch.Tensor | Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbours of ``query (q, d)`` among ``database (n, d)``.

    ``exclude`` ``(q,)``: for each query, a database index to skip (e.g. the query image itself).

    Returns
    -------
    indices, scores : Tensor
        ``(q, k)`` each, best first.
    """
    scores = F.normalize(query.float(), dim=-1) @ F.normalize(database.float(), dim=-1).T
    if exclude is not None:
        exclude = torch.as_tensor(np.asarray(exclude), dtype=torch.long)
        scores[torch.arange(len(scores)), exclude] = -math.inf
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.indices, top.values


def property_nearest_neighbors(database: ImageDecomposition, heads: Sequence[Head], query_indices: Sequence[int],
                               k: int = 5, query: ImageDecomposition | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-InterpreT's property-based search: neighbours in the subspace of the heads of one property.

    Parameters
    ----------
    database : ImageDecomposition
    heads : sequence of (layer, head)
        E.g. :func:`property_heads` of ``"colour"``.
    query_indices : sequence of int
        Images of ``query`` (default: of ``database``, the image itself then excluded).
    query : ImageDecomposition, optional
    """
    source = database if query is None else query
    q = head_embeddings(source.select(query_indices), heads)
    exclude = query_indices if query is None else None
    return nearest_neighbors(q, head_embeddings(database, heads), k, exclude)


def head_image_neighbors(database: ImageDecomposition, layer: int, head: int, query_indices: Sequence[int],
                         k: int = 5, query: ImageDecomposition | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head nearest neighbours of images: cosine of one head's contributions."""
    return property_nearest_neighbors(database, [(layer, head)], query_indices, k, query)


def head_text_neighbors(database: ImageDecomposition, layer: int, head: int, text_emb: torch.Tensor, k: int = 5
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head nearest neighbours of texts ``(q, d)``: the images whose head contribution is closest to each."""
    text_emb = text_emb.unsqueeze(0) if text_emb.dim() == 1 else text_emb
    return nearest_neighbors(text_emb, database.head(layer, head), k)


def head_heatmap(decomposition: ImageDecomposition, heads: Head | Sequence[Head], text_emb: torch.Tensor
                 ) -> torch.Tensor:
    """Per-head topic segmentation: each patch's contribution through the heads, dotted with a text.

    Parameters
    ----------
    decomposition : ImageDecomposition
        With per-token terms for the heads' layers (``token_layers``).
    heads : (layer, head) or sequence of them
        Summed.
    text_emb : Tensor
        ``(d,)`` a text embedding (normalised here).

    Returns
    -------
    Tensor
        ``(n, g_h, g_w)`` (the class token's own share is left out).
    """
    text = F.normalize(text_emb.float().reshape(-1), dim=0)
    total = sum(decomposition.head_tokens(la, h) for la, h in _as_heads(heads))  # (n, T, d)
    scores = total[:, 1:] @ text                                                # type: ignore[index]
    return scores.reshape(len(decomposition), *decomposition.grid)


def contrastive_heatmap(decomposition: ImageDecomposition, heads: Head | Sequence[Head], text_emb: torch.Tensor,
                        other_emb: torch.Tensor) -> torch.Tensor:
    """Contrastive segmentation: the heatmap of one text minus that of another, ``(n, g_h, g_w)``."""
    return head_heatmap(decomposition, heads, text_emb) - head_heatmap(decomposition, heads, other_emb)


def upsample_heatmap(heatmap: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of heatmaps ``(n, g_h, g_w)`` to image size ``(n, H, W)`` (for overlays)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(heatmap.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def head_feature_projections(decomposition: ImageDecomposition, directions: torch.Tensor,
                             activations: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Which heads write each feature: the mean projection of each head's contribution on each direction.

    Parameters
    ----------
    decomposition : ImageDecomposition
        Use ``decomposition.normalized()`` if the features live on unit-norm embeddings.
    directions : Tensor
        ``(K, d)`` the features' directions in the embedding space (e.g. SAE decoder rows).
    activations : Tensor, optional
        ``(n, K)`` non-negative feature activations on the same images: the mean over images is then weighted
        by each feature's activation (what the head writes when the feature fires).
    normalize : bool
        Use unit-norm directions.

    Returns
    -------
    Tensor
        ``(K, L, H)``.
    """
    dirs = directions.float()
    if dirs.shape[1] != decomposition.dim:
        raise ValueError(f"directions have d={dirs.shape[1]} but the decomposition d={decomposition.dim}")
    if normalize:
        dirs = F.normalize(dirs, dim=-1)
    n = len(decomposition)
    if activations is None:
        weights = torch.full((n, dirs.shape[0]), 1.0 / n)
    else:
        if activations.shape != (n, dirs.shape[0]):
            raise ValueError(f"activations must be (n, K) = ({n}, {dirs.shape[0]}), got {tuple(activations.shape)}")
        act = activations.float().clamp_min(0)
        weights = act / act.sum(0, keepdim=True).clamp_min(1e-12)
    proj = torch.einsum("nlhd,kd->nlhk", decomposition.heads, dirs)           # (n, L, H, K)
    return torch.einsum("nlhk,nk->klh", proj, weights)


def attribution_by_category(projections: torch.Tensor, categories: Sequence[str]) -> pd.DataFrame:
    """Aggregate :func:`head_feature_projections` ``(K, L, H)`` per feature category (e.g. ImgD/TextD/CrossD).

    Returns
    -------
    DataFrame
        One row per (category, layer, head): ``features`` (count), ``projection`` (mean over the category's
        features) and ``share`` (mean over features of the head's projection divided by the sum of absolute
        projections over all heads).
    """
    if len(categories) != projections.shape[0]:
        raise ValueError(f"{len(categories)} categories for {projections.shape[0]} features")
    k, n_layers, n_heads = projections.shape
    flat = projections.reshape(k, -1)
    share = flat / flat.abs().sum(1, keepdim=True).clamp_min(1e-12)
    cats = np.asarray(categories, dtype=object)
    rows = []
    for cat in pd.unique(cats):
        mask = torch.from_numpy(cats == cat)
        mean_proj = flat[mask].mean(0)
        mean_share = share[mask].mean(0)
        for j in range(n_layers * n_heads):
            rows.append(dict(category=cat, layer=j // n_heads, head=j % n_heads, features=int(mask.sum()),
                             projection=float(mean_proj[j]), share=float(mean_share[j])))
    return pd.DataFrame(rows)
