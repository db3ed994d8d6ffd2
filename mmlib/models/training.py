"""Training tiny CLIPs on the generated world (the ``tiny`` profile's models).

* **CLIP**: open_clip's own symmetric InfoNCE loss (``open_clip.ClipLoss``) with a learnable temperature.
* **DeCLIP-like** ([ours], Method page `method-setting`): in the spirit of DeCLIP (Li et al., ICLR 2022), each step
  takes ``batch_size / 2`` pairs and two augmented views of each image (random translation by up to ``shift`` px
  and brightness jitter), so it costs about as much as a CLIP step of ``batch_size`` pairs. The CLIP loss is
  averaged over both views (DeCLIP's multi-view supervision), plus two intra-modal self-supervised terms:
  image augmentation consistency (InfoNCE between the embeddings of the two views) and masked-token
  prediction on the text tower (15 % of word tokens replaced by a mask id and predicted from the tower's
  token states through the tied token-embedding matrix; open_clip's text tower is causal, so a masked
  token is predicted from its left context). The prediction is a softmax over the token ids that occur in
  the training captions (a restricted vocabulary: the world uses ~150 of open_clip's 49 408 tokens, and the
  full softmax made the model 3x slower to train).

Trained models are artifacts (safetensors + JSON) keyed by the architecture, the training config, the world
fingerprint and this module's code version, so a notebook reloads them instead of retraining.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.artifacts import artifact_path, code_version, load_or_compute, stable_hash, to_jsonable
from mmlib.core.devices import effective_threads, torch_threads
from mmlib.core.errors import ConfigError, CorruptArtifactError, InputError
from mmlib.core.validation import at_least, between, greater_than, validate_config
from mmlib.data.world import World
from mmlib.models.clip import ModelBundle, TinyClipArch, build_tiny_clip, tiny_bundle
from mmlib.models.prompts import class_embeddings

SOT_ID, EOT_ID = 49406, 49407
MASK_ID = 49405  # an unused-in-the-world BPE id below EOT (open_clip pools the text tower at argmax id)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a tiny CLIP is trained.

    Attributes
    ----------
    steps : int
    batch_size : int
        Images per step: ``batch_size`` pairs for CLIP; ``batch_size / 2`` pairs in two views each for the
        DeCLIP-like variant.
    lr : float
        Peak AdamW learning rate (linear warm-up over ``warmup`` steps, then cosine decay to 0).
    weight_decay : float
    seed : int
        Seeds the initialisation, the batch order and the augmentations.
    declip : bool
        Add the DeCLIP-like intra-modal terms.
    image_ssl_weight, text_mlm_weight : float
        Weights of the two DeCLIP-like terms.
    mask_prob : float
        Fraction of word tokens masked for the text term.
    shift : int
        Maximum translation (px) of the image augmentation.
    ssl_temperature : float
        Temperature of the image-image InfoNCE.
    threads : int or None
        torch CPU threads during training (``None``: torch's setting, the machine's cores). Training is
        bit-identical for a fixed count only, so the effective count is part of the model's artifact key.
    stop_at : tuple of (factor, accuracy) pairs
        A quality target: training stops at the first check (every ``stop_every`` steps) where every named factor's
        validation zero-shot accuracy (joint prompts) has reached its accuracy. ``()``: train all ``steps``. The
        learning-rate schedule stays that of ``steps``, so a stopped model is taken mid-schedule. Chapter 03 uses it
        to train a world model only as far as the null world's model gets (a quality-matched control).
    stop_every : int
        Steps between two checks of ``stop_at``.
    """

    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 60
    seed: int = 0
    declip: bool = False
    image_ssl_weight: float = 0.5
    text_mlm_weight: float = 0.5
    mask_prob: float = 0.15
    shift: int = 2
    ssl_temperature: float = 0.1
    threads: int | None = None
    stop_at: tuple[tuple[str, float], ...] = ()
    stop_every: int = 10

    def __post_init__(self) -> None:
        validate_config(self, steps=at_least(1), batch_size=at_least(2), lr=greater_than(0),
                        weight_decay=at_least(0), warmup=at_least(0), seed=at_least(0),
                        image_ssl_weight=at_least(0), text_mlm_weight=at_least(0),
                        mask_prob=between(0, 1, low_open=True, high_open=True), shift=at_least(0),
                        ssl_temperature=greater_than(0), threads=at_least(1), stop_every=at_least(1))
        try:
            targets = tuple((factor, float(accuracy)) for factor, accuracy in self.stop_at)
        except (TypeError, ValueError):
            raise ConfigError(f"TrainConfig.stop_at must be (factor, accuracy) pairs, e.g. (('shape', 0.5),), got "
                              f"{self.stop_at!r}.") from None
        for (factor, accuracy), (_, given) in zip(targets, self.stop_at):
            if not isinstance(factor, str) or not factor or isinstance(given, bool) or not 0 < accuracy <= 1:
                raise ConfigError(f"TrainConfig.stop_at: each pair is a factor name and an accuracy in (0, 1], got "
                                  f"{(factor, accuracy)!r}.")
        if len({f for f, _ in targets}) != len(targets):
            raise ConfigError(f"TrainConfig.stop_at names a factor twice: {self.stop_at!r}.")
        object.__setattr__(self, "stop_at", targets)
        if self.declip and (self.batch_size < 4 or self.batch_size % 2):
            raise ConfigError(f"TrainConfig.batch_size: the DeCLIP-like batch holds two views per pair: batch_size "
                              f"must be even and at least 4, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained tiny CLIP, its training history and where it is stored."""

    bundle: ModelBundle
    arch: TinyClipArch
    train: TrainConfig
    history: dict[str, list[float]]
    seconds: float
    path: Path

    @property
    def steps_run(self) -> int:
        """Steps actually trained: ``train.steps``, or fewer where ``train.stop_at`` stopped the training."""
        return len(self.history["step"])


def images_to_tensor(images: np.ndarray, arch: TinyClipArch) -> torch.Tensor:
    """uint8 ``(n, S, S, 3)`` -> normalised float ``(n, 3, S, S)``, exactly as the bundle's preprocess does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(arch.mean).view(1, 3, 1, 1)
    std = torch.tensor(arch.std).view(1, 3, 1, 1)
    return (x - mean) / std


def text_token_states(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token states ``(n, L, width)`` of open_clip's text tower (before pooling and projection)."""
    x = model.token_embedding(tokens)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation (edge-replicated, up to ``shift`` px) and brightness jitter of ``(b, 3, S, S)``."""
    b, c, s, _ = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(s)[None])[:, None, :, None]  # (b, 1, s, 1)
    cols = (ox[:, None] + torch.arange(s)[None])[:, None, None, :]  # (b, 1, 1, s)
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    scale = 1.0 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    return out * scale


def _mask_tokens(tokens: torch.Tensor, prob: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random ``prob`` share of word tokens by :data:`MASK_ID`; return masked tokens and the mask."""
    words = (tokens != 0) & (tokens != SOT_ID) & (tokens != EOT_ID)
    mask = words & (torch.rand(tokens.shape, generator=gen) < prob)
    return tokens.masked_fill(mask, MASK_ID), mask


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.inference_mode()
def quick_zero_shot(model: open_clip.CLIP, images: torch.Tensor, world: World, split_index: np.ndarray,
                    factor: str, tokenizer: Callable, reading: str = "joint",
                    image_emb: torch.Tensor | None = None) -> float:
    """Zero-shot accuracy of ``factor`` on pre-normalised images ``(n,3,S,S)`` where it is depicted.

    ``reading`` is the prompt reading of :func:`mmlib.models.prompts.class_embeddings`. ``image_emb`` ``(n, d)``,
    if given, are the images' embeddings already computed (several factors are evaluated on one pass).
    """
    depicted = world.latents.depicted[factor][split_index]
    if not depicted.any():
        return float("nan")
    emb = model.encode_image(images) if image_emb is None else image_emb
    classes = class_embeddings(lambda texts: model.encode_text(tokenizer(texts)), world.factor(factor),
                               world.factors, reading)
    return zero_shot_accuracy(emb[torch.from_numpy(depicted)], classes,
                              world.latents.values[factor][split_index][depicted])


def train_tiny_clip(world: World, arch: TinyClipArch = TinyClipArch(), cfg: TrainConfig = TrainConfig(),
                    progress: bool = True, eval_factors: tuple[str, ...] = ("shape", "colour"),
                    eval_every: int = 100) -> tuple[open_clip.CLIP, dict[str, list[float]]]:
    """Train a tiny CLIP on the world's train split; return the model (eval mode) and its history.

    History keys: ``step``, ``loss`` (total), ``clip_loss``, ``ssl_loss``, ``mlm_loss``, ``lr`` (every step),
    ``eval_step``, ``val_zs_<factor>`` (validation zero-shot accuracy, joint prompt reading) and
    ``val_zs1_<factor>`` (the class named alone) every ``eval_every`` steps and at the last step (``step`` has
    fewer than ``cfg.steps`` entries when ``cfg.stop_at`` stopped the training).
    """
    _check_train_inputs(world, arch, cfg, eval_factors, eval_every)
    with torch_threads(cfg.threads):
        return _train(world, arch, cfg, progress, eval_factors, eval_every)


def _check_train_inputs(world, arch, cfg, eval_factors=(), eval_every=1) -> None:
    if not isinstance(world, World):
        raise InputError(f"world must be a mmlib.data.world.World (generate_world(...)), got {type(world).__name__}.")
    if not isinstance(arch, TinyClipArch):
        raise InputError(f"arch must be a TinyClipArch, got {type(arch).__name__}.")
    if not isinstance(cfg, TrainConfig):
        raise InputError(f"cfg must be a TrainConfig, got {type(cfg).__name__}.")
    if isinstance(eval_factors, str) or not all(isinstance(f, str) for f in eval_factors):
        raise InputError(f"eval_factors must be a tuple of factor names, got {eval_factors!r}.")
    names = [f.name for f in world.factors]
    unknown = [f for f in eval_factors if f not in names]
    if unknown:
        raise InputError(f"eval_factors: unknown factor(s) {unknown}; the world's factors are {names}.")
    if not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1:
        raise InputError(f"eval_every must be a positive number of steps, got {eval_every!r}.")
    unknown = [f for f, _ in cfg.stop_at if f not in names]
    if unknown:
        raise InputError(f"TrainConfig.stop_at: unknown factor(s) {unknown}; the world's factors are {names}.")
    unseen = [f for f, _ in cfg.stop_at if not world.latents.depicted[f][world.indices("val")].any()]
    if unseen:
        raise InputError(f"TrainConfig.stop_at: {unseen} is never depicted in the validation split, so its zero-shot "
                         "accuracy cannot be measured: name a factor the images show.")


def _train(world, arch, cfg, progress, eval_factors, eval_every):
    if world.config.image_size != arch.image_size:
        raise InputError(f"world images are {world.config.image_size} px but the model expects "
                         f"{arch.image_size} px: use the same image_size in WorldConfig and TinyClipArch")
    train_idx, val_idx = world.indices("train"), world.indices("val")
    if len(train_idx) < (cfg.batch_size // 2 if cfg.declip else cfg.batch_size):
        raise InputError(f"train split has {len(train_idx)} pairs, fewer than one batch "
                         f"({cfg.batch_size} images): raise WorldConfig.n_train or lower TrainConfig.batch_size")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=arch.context_length)
    images = images_to_tensor(world.images[train_idx], arch)
    tokens = tokenizer([world.captions[i] for i in train_idx])
    val_images = images_to_tensor(world.images[val_idx], arch)

    model = build_tiny_clip(arch, seed=cfg.seed)
    model.train()
    loss_fn = open_clip.ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98),
                            fused=True)  # one fused kernel: the 3.2 M-entry token table made the loop 15 % slower
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list[float]] = {k: [] for k in ("step", "loss", "clip_loss", "ssl_loss", "mlm_loss",
                                                       "lr", "eval_step")}
    for f in eval_factors:
        history[f"val_zs_{f}"] = []
        history[f"val_zs1_{f}"] = []
    # Masked-token prediction: softmax over the token ids of the training captions only.
    vocab = torch.unique(tokens)
    vocab = vocab[(vocab != 0) & (vocab != SOT_ID) & (vocab != EOT_ID)]
    to_vocab = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long)
    to_vocab[vocab] = torch.arange(len(vocab))
    n = len(train_idx)
    pairs_per_step = cfg.batch_size // 2 if cfg.declip else cfg.batch_size
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    bar = tqdm(range(cfg.steps), desc=f"train {'DeCLIP-like' if cfg.declip else 'CLIP'}", disable=not progress,
               mininterval=2.0)
    for step in bar:
        if cursor + pairs_per_step > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        batch = perm[cursor:cursor + pairs_per_step]
        cursor += pairs_per_step
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        x, t = images[batch], tokens[batch]
        ssl = mlm = torch.zeros(())
        if cfg.declip:
            b = len(batch)
            views = model.encode_image(_augment(torch.cat([x, x]), cfg.shift, gen), normalize=True)  # (2b, d)
            z1, z2 = views[:b], views[b:]
            text_features = model.encode_text(t, normalize=True)
            scale = model.logit_scale.exp()
            clip_loss = 0.5 * (loss_fn(z1, text_features, scale) + loss_fn(z2, text_features, scale))
            logits = z1 @ z2.T / cfg.ssl_temperature
            target = torch.arange(b)
            ssl = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            masked, mask = _mask_tokens(t, cfg.mask_prob, gen)
            if mask.any():
                states = text_token_states(model, masked)[mask]
                mlm = F.cross_entropy(states @ model.token_embedding.weight[vocab].T, to_vocab[t[mask]])
            loss = clip_loss + cfg.image_ssl_weight * ssl + cfg.text_mlm_weight * mlm
        else:
            out = model(x, t)
            clip_loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            loss = clip_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        for key, value in (("step", step), ("loss", loss), ("clip_loss", clip_loss), ("ssl_loss", ssl),
                           ("mlm_loss", mlm), ("lr", _lr_at(step, cfg))):
            history[key].append(float(value.detach()) if torch.is_tensor(value) else float(value))
        check = bool(cfg.stop_at) and (step + 1) % cfg.stop_every == 0
        due = (step + 1) % eval_every == 0 or step + 1 == cfg.steps
        if not (check or due):
            continue
        model.eval()
        with torch.inference_mode():
            val_emb = model.encode_image(val_images)
        stop = check and all(quick_zero_shot(model, val_images, world, val_idx, factor, tokenizer, image_emb=val_emb)
                             >= accuracy for factor, accuracy in cfg.stop_at)
        if due or stop:
            history["eval_step"].append(step + 1)
            for f in eval_factors:
                for key, reading in ((f"val_zs_{f}", "joint"), (f"val_zs1_{f}", "single")):
                    history[key].append(quick_zero_shot(model, val_images, world, val_idx, f, tokenizer,
                                                        reading=reading, image_emb=val_emb))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}",
                            **{f: f"{history[f'val_zs_{f}'][-1]:.2f}" for f in eval_factors})
        model.train()
        if stop:
            break
    model.eval()
    return model, history


def model_key(world: World, arch: TinyClipArch, cfg: TrainConfig) -> str:
    """Cache key of a trained tiny model: architecture, training config, the effective torch thread count, the
    world and the code that trains it (:func:`~mmlib.core.artifacts.code_version`).
    """
    return stable_hash("tiny-clip", arch, cfg, {"threads": effective_threads(cfg.threads)}, world.fingerprint,
                       code_version(__name__))


def load_or_train(world: World, arch: TinyClipArch = TinyClipArch(), cfg: TrainConfig = TrainConfig(),
                  root=None, progress: bool = True, name: str | None = None) -> TrainedModel:
    """Load the trained tiny model for (world, arch, cfg) from the artifact store, or train and store it.

    The artifact ``tiny_clip/<key>`` holds the weights (safetensors), and ``meta.json`` the architecture,
    the training config, the history and the training time.
    """
    _check_train_inputs(world, arch, cfg)
    if name is not None and (not isinstance(name, str) or not name):
        raise InputError(f"load_or_train: name must be a non-empty string or None, got {name!r}.")
    key = model_key(world, arch, cfg)
    name = name or ("declip-like" if cfg.declip else "clip")

    def compute():
        start = time.perf_counter()
        model, history = train_tiny_clip(world, arch, cfg, progress=progress)
        seconds = time.perf_counter() - start
        meta = {"arch": to_jsonable(arch), "train": to_jsonable(cfg), "world": world.fingerprint,
                "history": history, "seconds": seconds, "name": name}
        return model.state_dict(), meta

    artifact = load_or_compute("tiny_clip", key, compute, root=root)
    model = build_tiny_clip(arch, seed=cfg.seed)
    try:
        model.load_state_dict(artifact.tensors)
    except RuntimeError as err:
        where = artifact_path("tiny_clip", key, root)
        raise CorruptArtifactError(f"the stored weights in {where} do not fit the architecture they are keyed by "
                                   f"({str(err).splitlines()[0]}); delete the folder to retrain.") from None
    bundle = tiny_bundle(model, arch, name=name)
    return TrainedModel(bundle=bundle, arch=arch, train=cfg, history=artifact.meta["history"],
                        seconds=float(artifact.meta["seconds"]), path=artifact_path("tiny_clip", key, root))
