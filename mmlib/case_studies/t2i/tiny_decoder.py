"""A small diffusion decoder conditioned on CLIP image embeddings (the tiny profile's unCLIP decoder).

Chapter 08 edits CLIP image embeddings in feature space and needs to *see* the edited embeddings. In the
tiny profile this module provides the generator: a denoising diffusion model (Ho et al., 2020) built from
diffusers components, ``UNet2DConditionModel`` (a small config) trained with a ``DDPMScheduler`` and sampled
with a ``DDIMScheduler`` (Song et al., 2021), conditioned on the tiny CLIP's image embedding ``z (d,)`` of
the image it reconstructs -- the decoder half of unCLIP (Ramesh et al., 2022) at toy scale.

Conditioning ([ours], ``DecoderConfig.conditioning``):

* ``"class"`` (default): the embedding enters through the UNet's *projection class embedding*
  (``class_embed_type="projection"``): a linear map of ``z`` added to the timestep embedding, i.e. a global
  FiLM-like signal at every resolution. Cheapest, and what unCLIP does with its image embedding too
  (projected and added to the timestep embedding).
* ``"cross"``: ``z`` as a single token ``encoder_hidden_states (b, 1, d)`` read by cross-attention blocks.
  (With one token, attention weights are all 1, so this is a learned per-layer projection of ``z`` added to
  every position: more parameters, the same information.)

Before the UNet the embedding is L2-normalised (an edited embedding may change norm; its direction is what
CLIP compares) and then standardised per dimension with the training embeddings' mean and standard deviation,
so that every direction is equally loud from the first step ([ours] ``cond_norm="l2_standardize"``; ``"l2"``:
L2-normalised and scaled to norm ``sqrt(d)``; ``"none"``: as given). The UNet's residual blocks apply the
resulting embedding as a per-channel scale and shift (FiLM, ``film=True``: diffusers'
``resnet_time_scale_shift="scale_shift"``) rather than as a bias only. Classifier-free guidance (Ho & Salimans,
2022): during training the conditioning is replaced by zeros with probability ``cond_drop``; sampling mixes the
conditional and unconditional predictions with ``guidance`` (1 = no guidance).

Images: the world's ``(n, S, S, 3)`` uint8 images are area-downsampled to ``resolution`` px (16 by default:
what trains in minutes on two CPU cores) and scaled to ``[-1, 1]``. The trained decoder is an artifact
(safetensors + JSON config) keyed by its config, a fingerprint of the images and embeddings, and this
module's code version.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmlib.core.artifacts import code_version, load_or_compute, stable_hash, tensor_fingerprint, to_jsonable
from mmlib.core.devices import torch_threads
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import at_least, between, greater_than, one_of, validate_config

__all__ = ["CONDITIONINGS", "DecoderConfig", "EmbeddingDecoder", "TrainedDecoder", "to_resolution", "to_uint8",
           "train_decoder", "decoder_key", "load_or_train_decoder"]

ARTIFACT_KIND = "decoders"
#: How the embedding reaches the UNet (see the module docstring).
CONDITIONINGS = ("class", "cross")
#: How the embedding is normalised before the UNet.
COND_NORMS = ("l2_standardize", "l2", "none")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture, noise schedule and training schedule of the decoder.

    Attributes
    ----------
    resolution : int
        Side of the generated images in px (the world's images are area-downsampled to it); a multiple of
        ``2 ** (len(channels) - 1)``.
    channels : tuple of int
        UNet ``block_out_channels`` (one resolution level each).
    layers_per_block : int
    norm_groups : int
        GroupNorm groups (must divide every channel count).
    conditioning : {"class", "cross"}
    cond_norm : {"l2_standardize", "l2", "none"}
        ``"l2_standardize"``: L2-normalised, then standardised per dimension with the training statistics;
        ``"l2"``: scaled to norm ``sqrt(d)``; ``"none"``: used as given.
    film : bool
        Timestep-plus-conditioning embedding applied as scale and shift in the residual blocks (else a bias).
    cond_drop : float
        Probability in ``[0, 1)`` of training with the null (zero) conditioning, for classifier-free guidance.
    timesteps : int
        Diffusion steps of the training noise schedule.
    beta_schedule : str
        diffusers beta schedule (``"squaredcos_cap_v2"``: the cosine schedule of Nichol & Dhariwal, 2021).
    steps : int
        Optimiser steps (fixed, so that training is deterministic; the wall time is measured).
    batch_size : int
    lr : float
        AdamW learning rate: linear warm-up over ``warmup`` steps, then cosine decay to 0.
    warmup : int
    weight_decay : float
    log_every : int
        Steps between history records (mean loss over the interval).
    seed : int
        Seeds the initialisation, the batch order, the noise and the conditioning drops.
    """

    resolution: int = 16
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    conditioning: str = "class"
    cond_norm: str = "l2_standardize"
    film: bool = True
    cond_drop: float = 0.1
    timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.0
    log_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        validate_config(self)  # the types first, so that the checks below can compare
        if self.conditioning not in CONDITIONINGS:
            raise ConfigError(f"unknown conditioning {self.conditioning!r}; choose one of {CONDITIONINGS}")
        if self.cond_norm not in COND_NORMS:
            raise ConfigError(f"unknown cond_norm {self.cond_norm!r}; choose one of {COND_NORMS}")
        if not self.channels or any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ConfigError(f"channels {self.channels} must be non-empty multiples of norm_groups={self.norm_groups}")
        if self.resolution < 4 or self.resolution % (2 ** (len(self.channels) - 1)):
            raise ConfigError(f"resolution {self.resolution} must be >= 4 and a multiple of "
                             f"2 ** (levels - 1) = {2 ** (len(self.channels) - 1)}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"cond_drop must lie in [0, 1), got {self.cond_drop}")
        for name in ("layers_per_block", "timesteps", "steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ConfigError("warmup and weight_decay must be >= 0")
        validate_config(self, resolution=at_least(4), channels=at_least(1), layers_per_block=at_least(1),
                        norm_groups=at_least(1), conditioning=one_of(*CONDITIONINGS), cond_norm=one_of(*COND_NORMS),
                        cond_drop=between(0.0, 1.0, high_open=True), timesteps=at_least(1), steps=at_least(1),
                        batch_size=at_least(1), lr=greater_than(0.0), warmup=at_least(0),
                        weight_decay=at_least(0.0), log_every=at_least(1))


    def unet_kwargs(self, embed_dim: int) -> dict[str, Any]:
        """Keyword arguments of ``diffusers.UNet2DConditionModel`` for embeddings of dimension ``embed_dim``."""
        levels = len(self.channels)
        common = dict(sample_size=self.resolution, in_channels=3, out_channels=3,
                      block_out_channels=tuple(self.channels), layers_per_block=self.layers_per_block,
                      norm_num_groups=self.norm_groups, cross_attention_dim=embed_dim,
                      resnet_time_scale_shift="scale_shift" if self.film else "default")
        if self.conditioning == "class":
            return dict(common, down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                        mid_block_type=None, class_embed_type="projection",
                        projection_class_embeddings_input_dim=embed_dim)
        # Cross-attention on every level below the full resolution, and in the middle block.
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
        up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
        return dict(common, down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
                    attention_head_dim=max(1, self.channels[-1] // 16))

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the training ``DDPMScheduler`` (the sampler is a ``DDIMScheduler`` from it)."""
        return dict(num_train_timesteps=self.timesteps, beta_schedule=self.beta_schedule,
                    prediction_type="epsilon", clip_sample=True)


# ----------------------------------------------------------------------------------------------- images

def to_resolution(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 images ``(n, S, S, 3)`` -> float ``(n, 3, r, r)`` in ``[-1, 1]`` (area-downsampled to ``r``).

    Raises
    ------
    ValueError
        for another shape, or a resolution above ``S``.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise InputError(f"images must be (n, S, S, 3) RGB arrays, got shape {tuple(x.shape)}")
    if resolution > x.shape[1]:
        raise InputError(f"cannot downsample {x.shape[1]} px images to {resolution} px")
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return F.interpolate(x, size=(resolution, resolution), mode="area") if resolution != x.shape[-1] else x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images ``(n, 3, r, r)`` in ``[-1, 1]`` -> uint8 ``(n, r, r, 3)``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------ the model

class EmbeddingDecoder:
    """A trained (or freshly built) diffusion decoder: CLIP image embedding ``(d,)`` -> image ``(r, r, 3)``.

    Attributes
    ----------
    unet : diffusers.UNet2DConditionModel
    config : DecoderConfig
    embed_dim : int
        ``d``: the dimension every conditioning embedding must have.
    cond_mean, cond_std : Tensor
        ``(d,)`` statistics of the L2-normalised training embeddings (``cond_norm="l2_standardize"``; zeros and
        ones until :meth:`fit_conditioning`).
    """

    def __init__(self, config: DecoderConfig, embed_dim: int, unet: Any | None = None) -> None:
        from diffusers import UNet2DConditionModel
        if embed_dim < 1:
            raise InputError(f"embed_dim must be positive, got {embed_dim}")
        self.config, self.embed_dim = config, int(embed_dim)
        self.cond_mean, self.cond_std = torch.zeros(self.embed_dim), torch.ones(self.embed_dim)
        if unet is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                unet = UNet2DConditionModel(**config.unet_kwargs(self.embed_dim))
        self.unet = unet

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.unet.parameters())
        return (f"EmbeddingDecoder(d={self.embed_dim}, {self.config.resolution} px, channels={self.config.channels}, "
                f"conditioning={self.config.conditioning!r}, {n / 1e6:.2f} M parameters)")

    def check_conditioning(self, z: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Validate conditioning embeddings ``(n, d)`` and return them as float32.

        Raises
        ------
        ValueError
            if ``z`` is not 2-D, has another dimension than ``embed_dim`` (the message says both), or holds
            NaN/Inf.
        """
        z = torch.as_tensor(z)
        if z.ndim != 2:
            raise InputError(f"conditioning embeddings must be a 2-D (n, d) tensor, got shape {tuple(z.shape)}")
        if z.shape[1] != self.embed_dim:
            raise InputError(f"conditioning embeddings have dimension {z.shape[1]} but this decoder was built for "
                             f"d={self.embed_dim} (expected {self.embed_dim}, got {z.shape[1]}): embed with the "
                             "model the decoder was trained on")
        z = z.float()
        if not bool(torch.isfinite(z).all()):
            raise InputError("conditioning embeddings contain NaN or Inf")
        return z

    def fit_conditioning(self, z: torch.Tensor) -> None:
        """Store the per-dimension mean and std ``(d,)`` of the L2-normalised training embeddings ``(n, d)``."""
        u = F.normalize(self.check_conditioning(z), dim=-1)
        self.cond_mean, self.cond_std = u.mean(0), u.std(0).clamp_min(1e-6)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """The UNet's conditioning vectors ``(n, d)`` of checked embeddings ``(n, d)`` (see ``cond_norm``)."""
        if self.config.cond_norm == "l2_standardize":
            return (F.normalize(z, dim=-1) - self.cond_mean) / self.cond_std
        if self.config.cond_norm == "l2":
            return F.normalize(z, dim=-1) * math.sqrt(self.embed_dim)
        return z

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction ``(n, 3, r, r)`` for noisy images ``x``, timesteps ``t (n,)`` and
        conditioning vectors ``c (n, d)`` (zeros = unconditional).
        """
        class_labels = c if self.config.conditioning == "class" else None
        return self.unet(x, t, encoder_hidden_states=c[:, None, :], class_labels=class_labels).sample

    def scheduler(self, kind: str = "ddim") -> Any:
        """A fresh ``DDIMScheduler`` (``"ddim"``) or ``DDPMScheduler`` (``"ddpm"``) with the training schedule."""
        from diffusers import DDIMScheduler, DDPMScheduler
        if kind not in ("ddim", "ddpm"):
            raise InputError(f"unknown scheduler {kind!r}; choose 'ddim' or 'ddpm'")
        ddpm = DDPMScheduler(**self.config.scheduler_kwargs())
        return ddpm if kind == "ddpm" else DDIMScheduler.from_config(ddpm.config)

    def initial_noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """Gaussian starting noise ``(n, 3, r, r)``, seeded (image ``i`` gets the same noise for every ``n > i``)."""
        r = self.config.resolution
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(n, 3 * r * r, generator=gen).reshape(n, 3, r, r) if n else torch.zeros(0, 3, r, r)

    def noise_for_seeds(self, seeds: np.ndarray | list[int]) -> torch.Tensor:
        """Starting noise ``(n, 3, r, r)`` with row ``i`` drawn from its own generator seeded ``seeds[i]`` (the
        same seed gives the same noise in any batch: common random numbers for the edits of one reference).
        """
        r = self.config.resolution
        rows = [torch.randn(3, r, r, generator=torch.Generator().manual_seed(int(s))) for s in np.asarray(seeds)]
        return torch.stack(rows) if rows else torch.zeros(0, 3, r, r)

    @torch.inference_mode()
    def sample(self, z: torch.Tensor | np.ndarray, steps: int = 20, guidance: float = 2.0, seed: int = 0,
               noise: torch.Tensor | None = None, batch_size: int = 256, progress: bool = False,
               seeds: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Generate one image per embedding with DDIM (deterministic, ``eta = 0``).

        Parameters
        ----------
        z : (n, d)
            Conditioning embeddings (CLIP image embeddings, edited or not).
        steps : int
            DDIM steps.
        guidance : float
            Classifier-free guidance scale ``w >= 0``: ``eps = eps_uncond + w (eps_cond - eps_uncond)``
            (``1``: the conditional model alone; ``0``: unconditional).
        seed : int
            Seeds the starting noise when ``noise`` is not given (see :meth:`initial_noise`).
        noise : (n, 3, r, r), optional
            The starting noise.
        seeds : (n,) ints, optional
            One noise seed per row (:meth:`noise_for_seeds`), e.g. the reference's index for every edit of
            that reference; used when ``noise`` is not given.

        Returns
        -------
        uint8 array ``(n, r, r, 3)``.
        """
        z = self.check_conditioning(z)
        if steps < 1 or steps > self.config.timesteps:
            raise InputError(f"steps must lie in [1, {self.config.timesteps}], got {steps}")
        if not (guidance >= 0 and math.isfinite(guidance)):
            raise InputError(f"guidance must be a finite number >= 0, got {guidance}")
        r = self.config.resolution
        if noise is None:
            if seeds is not None and len(seeds) != len(z):
                raise InputError(f"{len(seeds)} noise seeds for {len(z)} embeddings")
            noise = self.initial_noise(len(z), seed) if seeds is None else self.noise_for_seeds(seeds)
        noise = torch.as_tensor(noise).float()
        if tuple(noise.shape) != (len(z), 3, r, r):
            raise InputError(f"noise must have shape {(len(z), 3, r, r)}, got {tuple(noise.shape)}")
        self.unet.eval()
        out = []
        for start in tqdm(range(0, len(z), batch_size), desc="sampling", disable=not progress):
            c = self.condition(z[start:start + batch_size])
            x = noise[start:start + batch_size].clone()
            sched = self.scheduler("ddim")
            sched.set_timesteps(steps)
            for t in sched.timesteps:
                tt = t.expand(len(x))
                if guidance == 1.0:
                    eps = self.predict_noise(x, tt, c)
                elif guidance == 0.0:
                    eps = self.predict_noise(x, tt, torch.zeros_like(c))
                else:
                    both = self.predict_noise(torch.cat([x, x]), torch.cat([tt, tt]),
                                              torch.cat([c, torch.zeros_like(c)]))
                    cond, uncond = both.chunk(2)
                    eps = uncond + guidance * (cond - uncond)
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            out.append(to_uint8(x))
        return np.concatenate(out) if out else np.zeros((0, r, r, 3), np.uint8)

    # ---- storage
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The UNet's weights and the conditioning statistics (``cond.mean``, ``cond.std``)."""
        return {**{k: v.detach().cpu() for k, v in self.unet.state_dict().items()},
                "cond.mean": self.cond_mean, "cond.std": self.cond_std}

    def meta(self) -> dict[str, Any]:
        """The JSON side of the artifact: the config and the embedding dimension."""
        return {"config": to_jsonable(self.config), "embed_dim": self.embed_dim}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> EmbeddingDecoder:
        """Rebuild a decoder from :meth:`state_tensors` and :meth:`meta`."""
        cfg = dict(meta["config"])
        cfg["channels"] = tuple(cfg["channels"])
        decoder = cls(DecoderConfig(**cfg), int(meta["embed_dim"]))
        tensors = dict(tensors)
        decoder.cond_mean, decoder.cond_std = tensors.pop("cond.mean"), tensors.pop("cond.std")
        decoder.unet.load_state_dict(tensors)
        decoder.unet.eval()
        return decoder


# ------------------------------------------------------------------------------------------------ training

def _lr_factor(step: int, config: DecoderConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_decoder(images: np.ndarray, embeddings: torch.Tensor | np.ndarray, config: DecoderConfig = DecoderConfig(),
                  progress: bool = False, threads: int | None = 1) -> tuple[EmbeddingDecoder, dict[str, list[float]]]:
    """Train the decoder to generate ``images`` from their CLIP image ``embeddings`` (CPU, deterministic).

    Parameters
    ----------
    images : uint8 (n, S, S, 3)
    embeddings : (n, d)
        The conditioning of each image (its CLIP image embedding).
    config : DecoderConfig
    progress : bool
        A tqdm bar over steps.
    threads : int or None
        torch CPU threads while training (``None``: leave torch's setting).

    Returns
    -------
    (EmbeddingDecoder, dict)
        The decoder (eval mode) and its history: ``step``, ``loss`` (mean noise-prediction MSE over the last
        ``log_every`` steps), ``lr``, ``seconds`` (wall time so far).
    """
    x_all = to_resolution(images, config.resolution)
    decoder = EmbeddingDecoder(config, int(torch.as_tensor(embeddings).shape[-1]))
    z_all = decoder.check_conditioning(embeddings)
    if len(z_all) != len(x_all):
        raise InputError(f"{len(x_all)} images but {len(z_all)} embeddings")
    if len(x_all) < 2:
        raise InputError("need at least 2 images to train the decoder")
    with torch_threads(threads):
        decoder.fit_conditioning(z_all)
        return _train(decoder, x_all, decoder.condition(z_all), progress)


def _train(decoder: EmbeddingDecoder, x_all: torch.Tensor, c_all: torch.Tensor, progress: bool
           ) -> tuple[EmbeddingDecoder, dict[str, list[float]]]:
    config = decoder.config
    gen = torch.Generator().manual_seed(config.seed)
    sched = decoder.scheduler("ddpm")
    unet = decoder.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config))
    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "seconds": []}
    n, running, started = len(x_all), [], time.perf_counter()
    order, pos = torch.randperm(n, generator=gen), 0
    for step in tqdm(range(config.steps), desc="decoder", disable=not progress):
        if pos + config.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + config.batch_size]
        pos += config.batch_size
        x0, c = x_all[idx], c_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, config.timesteps, (len(idx),), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < config.cond_drop
        c = torch.where(drop[:, None], torch.zeros_like(c), c)
        loss = F.mse_loss(decoder.predict_noise(sched.add_noise(x0, noise, t), t, c), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        running.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history["step"].append(step + 1)
            history["loss"].append(float(np.mean(running)))
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            history["seconds"].append(time.perf_counter() - started)
            running = []
    unet.eval()
    return decoder, history


# ------------------------------------------------------------------------------------------------ artifacts

@dataclasses.dataclass(frozen=True, eq=False)
class TrainedDecoder:
    """A decoder with its training record.

    Attributes
    ----------
    decoder : EmbeddingDecoder
    history : dict
        See :func:`train_decoder`.
    seconds : float
        Training wall time (measured when it was trained, recorded with the artifact).
    load_average : tuple of float
        The machine's 1/5/15-minute load averages when training ended (other processes slow it down).
    key : str
    path : Path
        The artifact folder.
    trained_now : bool
        Whether this call trained it (False: reloaded).
    """

    decoder: EmbeddingDecoder
    history: dict[str, list[float]]
    seconds: float
    load_average: tuple[float, ...]
    key: str
    path: Path
    trained_now: bool


def decoder_key(images: np.ndarray, embeddings: torch.Tensor, config: DecoderConfig) -> str:
    """The artifact key: config, a fingerprint of the images and embeddings, and this module's version."""
    data = tensor_fingerprint({"images": torch.as_tensor(np.ascontiguousarray(images)),
                               "embeddings": torch.as_tensor(embeddings).float()})
    return stable_hash("decoder", config, data, code_version(__name__))


def load_or_train_decoder(images: np.ndarray, embeddings: torch.Tensor | np.ndarray,
                          config: DecoderConfig = DecoderConfig(), progress: bool = False,
                          root: Path | None = None) -> TrainedDecoder:
    """The decoder trained on ``(images, embeddings)`` with ``config``: loaded from the artifact store, or
    trained (:func:`train_decoder`) and stored (safetensors weights + JSON config and history).
    """
    embeddings = torch.as_tensor(embeddings).float()
    key = decoder_key(images, embeddings, config)
    trained_now = False

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        nonlocal trained_now
        started = time.perf_counter()
        decoder, history = train_decoder(images, embeddings, config, progress=progress)
        trained_now = True
        return decoder.state_tensors(), {**decoder.meta(), "history": history, "n": int(len(embeddings)),
                                         "seconds": time.perf_counter() - started, "load_average": os.getloadavg()}

    art = load_or_compute(ARTIFACT_KIND, key, compute, root)
    decoder = EmbeddingDecoder.from_parts(art.tensors, art.meta)
    return TrainedDecoder(decoder, art.meta["history"], float(art.meta["seconds"]),
                          tuple(art.meta.get("load_average", ())), key, art.path, trained_now)
