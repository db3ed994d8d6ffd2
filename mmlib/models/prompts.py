"""Class prompts and their text embeddings: what zero-shot classification compares images with.

:func:`class_prompt_sets` writes, for each value of a factor, the prompts that name it (alone, or together with each
value of a context factor), :func:`class_embeddings` embeds them in one of three readings ("joint", "ensemble",
"single"), and :func:`zero_shot_report` scores a model's image embeddings against them per factor. These need the
model's text tower; the scoring itself is :mod:`mmlib.analysis.zero_shot`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.errors import InputError
from mmlib.core.stats import proportion_ci
from mmlib.core.validation import check_finite
from mmlib.data.world import Factor, WorldSplit, compose_caption
from mmlib.models.clip import ModelBundle


@torch.inference_mode()
def encode_texts(bundle: ModelBundle, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Text embeddings ``(k, d)`` (unnormalised) of ``texts``."""
    if isinstance(texts, str):
        raise InputError(f"texts must be a list of strings, got one string {texts[:40]!r}; wrap it in a list.")
    if len(texts) == 0:
        raise InputError("texts is empty: no texts to encode; pass at least one string.")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"texts[{bad}] must be a string, got {texts[bad]!r} ({type(texts[bad]).__name__}).")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    device = next(bundle.model.parameters()).device
    chunks = [bundle.model.encode_text(bundle.tokenizer(list(texts[i:i + batch_size])).to(device)).float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


#: How class prompts are read (the paper leaves zero-shot prompting open; see the Reproduction notes, row 19).
PROMPT_READINGS = ("joint", "ensemble", "single")


def prompt_context(factors: Sequence[Factor], factor: Factor) -> tuple[Factor, ...]:
    """The other object factors that every caption names (``p_mention = 1`` for every value).

    World captions always name these (e.g. the colour of a shape), so a prompt that names the class alone
    ("a photo of a circle") lies off the caption distribution; :func:`class_prompt_sets` names them too.
    """
    return tuple(f for f in factors if f.name != factor.name and f.kind == "object" and min(f.p_mention) == 1.0)


def class_prompt_sets(factor: Factor, context: Sequence[Factor] = (), template: str = "a photo of",
                      ) -> list[list[str]]:
    """Per value of ``factor``, one prompt per combination of the ``context`` factors' canonical words.

    With no context: one prompt per value, as :func:`class_prompts`. Returns ``k`` lists of ``p`` prompts.
    """
    combos = list(itertools.product(*[[(f.name, syn[0]) for syn in f.synonyms] for f in context]))
    return [[compose_caption({**dict(combo), factor.name: factor.synonyms[v][0]}, prefix=template)
             for combo in combos] for v in range(len(factor.values))]


def class_embeddings(encode: Callable[[list[str]], torch.Tensor], factor: Factor,
                     factors: Sequence[Factor] = (), reading: str = "joint", template: str = "a photo of",
                     ) -> torch.Tensor:
    """Class embeddings of ``factor`` under a prompt ``reading``.

    Parameters
    ----------
    encode : callable
        list of ``m`` texts -> ``(m, d)`` embeddings (e.g. ``lambda t: encode_texts(bundle, t)``).
    factors : the world's factors (the context is :func:`prompt_context` of them).
    reading : str
        ``"joint"`` (default): ``(k, p, d)``, one prompt per value of the context factors, scored by the best
        prompt (zero-shot over the joint label space); ``"ensemble"``: ``(k, d)``, the normalised mean of
        those prompts (CLIP's prompt ensembling); ``"single"``: ``(k, d)``, the class named alone.
    """
    if reading not in PROMPT_READINGS:
        raise InputError(f"unknown prompt reading {reading!r}; choose one of {PROMPT_READINGS}")
    context = () if reading == "single" else prompt_context(factors, factor)
    sets = class_prompt_sets(factor, context, template)
    k, p = len(sets), len(sets[0])
    emb = F.normalize(encode([t for prompts in sets for t in prompts]).float(), dim=-1).reshape(k, p, -1)
    if reading == "joint":
        return emb
    return F.normalize(emb.mean(1), dim=-1)


def zero_shot_report(bundle: ModelBundle, image_emb: torch.Tensor, split: WorldSplit,
                     factors: Sequence[str] | None = None, readings: Sequence[str] = ("joint",)) -> pd.DataFrame:
    """Zero-shot accuracy per factor on the images where the factor is depicted, with 95 % Wilson CIs.

    Parameters
    ----------
    image_emb : (n, d) tensor
        Image embeddings of ``split`` (same order).
    factors : names; default all factors that are depicted somewhere in the split.
    readings : prompt readings (see :func:`class_embeddings`), one row per factor and reading.
    """
    image_emb = torch.as_tensor(image_emb)
    if image_emb.ndim != 2:
        raise InputError(f"image_emb must be a (n, d) matrix, got shape {tuple(image_emb.shape)}.")
    if len(image_emb) != len(split):
        raise InputError(f"image_emb has {len(image_emb)} rows for a split of {len(split)} pairs; embed the same "
                         "split, in its order.")
    check_finite(image_emb, "image_emb", hint="re-embed the images; NaN rows cannot be scored")
    if isinstance(readings, str):
        readings = (readings,)
    unknown = [r for r in readings if r not in PROMPT_READINGS]
    if unknown or not readings:
        raise InputError(f"readings must name one or more of {PROMPT_READINGS}, got {list(readings)!r}.")
    if factors is not None:
        if isinstance(factors, str):
            factors = (factors,)
        names = [f.name for f in split.world.factors]
        missing = [f for f in factors if f not in names]
        if missing:
            raise InputError(f"factors: unknown factor(s) {missing}; the world's factors are {names}.")
    rows = []
    for f in split.world.factors:
        if factors is not None and f.name not in factors:
            continue
        shown = split.depicted(f.name)
        if factors is None and not shown.any():
            continue
        labels = split.values(f.name)[shown]
        for reading in readings:
            classes = class_embeddings(lambda t: encode_texts(bundle, t), f, split.world.factors, reading)
            acc = zero_shot_accuracy(image_emb[torch.from_numpy(shown)], classes, labels)
            low, high = proportion_ci(round(acc * len(labels)), len(labels)) if len(labels) else (np.nan, np.nan)
            rows.append(dict(factor=f.name, role=f.role, reading=reading, n=int(len(labels)), accuracy=acc,
                             ci_low=low, ci_high=high, chance=1.0 / len(f.values)))
    return pd.DataFrame(rows)


def caption_scale(captions: torch.Tensor) -> float:
    """The mean L2 norm of caption embeddings ``(n, d)``: the scale a feature map's input normalisation is
    fitted to.
    """
    captions = torch.as_tensor(captions)
    if captions.ndim != 2 or len(captions) == 0:
        raise InputError(f"captions: expected caption embeddings (n, d) with n >= 1, got shape "
                         f"{tuple(captions.shape)}")
    check_finite(captions, "captions", hint="re-embed the captions")
    scale = float(captions.float().norm(dim=1).mean())
    if scale == 0:
        raise InputError("captions are all zero vectors: their mean norm is 0, no scale to fit class embeddings to.")
    return scale


def caption_scaled(class_emb: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Class embeddings ``(k, d)`` or ``(k, p, d)``, each set to the mean norm of the caption embeddings
    ``(n, d)`` (:func:`caption_scale`).

    Class prompts are compared with images by cosine, so their norm does not matter there; a feature map, however,
    was fitted to caption embeddings at their own scale (an SAE fed unit vectors sees almost no signal), so prompts
    that go through a map must first be put on that scale.
    """
    class_emb = check_finite(torch.as_tensor(class_emb), "class_emb", hint="re-embed the class prompts")
    return F.normalize(class_emb.float(), dim=-1) * caption_scale(captions)
