"""Probes that read the planted image factors off pixels: what a (generated) image shows.

Chapter 08 generates images from edited CLIP embeddings and must say what they show. A small CNN with one
linear head per factor (shape, colour, texture, size, background, position by default) is trained on the
world's *real* train images, at the decoder's resolution, and then reads real test images (its accuracy:
how far its readings can be trusted) and generated ones (the decoder's fidelity; an edit's effect).

[ours] The probe is a CNN rather than a logistic regression on pixels: shape must be read wherever the
object is, which a linear model of pixels cannot do. Training blurs half of each batch and adds Gaussian pixel noise of
random strength (``augment``), so that the probe also reads the softer, noisier images a diffusion decoder
produces. Trained probes are artifacts (safetensors + JSON), keyed by their config, the training images and
labels, and this module's code version.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmlib.case_studies.t2i.tiny_decoder import to_resolution
from mmlib.core.artifacts import code_version, load_or_compute, stable_hash, tensor_fingerprint, to_jsonable
from mmlib.core.devices import torch_threads
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.stats import proportion_ci
from mmlib.core.validation import at_least, greater_than, validate_config

__all__ = ["IMAGE_FACTORS", "ProbeConfig", "FactorProbes", "TrainedProbes", "train_probes", "load_or_train_probes",
           "probe_table"]

ARTIFACT_KIND = "image_probes"
#: The factors drawn in the object field (always depicted): what a probe can read from any image.
IMAGE_FACTORS = ("shape", "colour", "texture", "size", "background", "position")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The probes' CNN and training schedule.

    Attributes
    ----------
    resolution : int
        Images are area-downsampled to this side (use the decoder's).
    factors : tuple of str
        The factors read (one head each).
    channels : tuple of int
        Channels of the 3x3 convolution stages (each followed by GELU; stride 2 from the second on).
    epochs, batch_size : int
    lr : float
        Adam, cosine-decayed to 0.
    augment : bool
        A 3x3 blur on half of each batch, and Gaussian pixel noise of a random std in ``[0, noise]`` (images in
        ``[-1, 1]``) on every image: generated images are softer and noisier than real ones.
    noise : float
    seed : int
    """

    resolution: int = 16
    factors: tuple[str, ...] = IMAGE_FACTORS
    channels: tuple[int, ...] = (32, 64, 64)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    augment: bool = True
    noise: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        validate_config(self)  # the types first, so that the checks below can compare
        if not self.factors:
            raise ConfigError("a probe needs at least one factor")
        if len(set(self.factors)) != len(self.factors):
            raise ConfigError(f"factors must be unique, got {self.factors}")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels must be positive integers, got {self.channels}")
        for name in ("resolution", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        validate_config(self, resolution=at_least(1), channels=at_least(1), epochs=at_least(1), batch_size=at_least(1),
                        lr=greater_than(0.0), noise=at_least(0.0))


class _CNN(nn.Module):
    def __init__(self, channels: Sequence[int], n_classes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1), nn.GELU()]
            c_in = c
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(4 * c_in, k) for k in n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


class FactorProbes:
    """Trained probes: uint8 images ``(n, S, S, 3)`` -> predicted value index per factor.

    Attributes
    ----------
    config : ProbeConfig
    n_classes : dict
        factor -> number of values.
    """

    def __init__(self, config: ProbeConfig, n_classes: Mapping[str, int], net: _CNN | None = None) -> None:
        missing = [f for f in config.factors if f not in n_classes]
        if missing:
            raise InputError(f"no number of values for factor(s) {missing}")
        self.config, self.n_classes = config, {f: int(n_classes[f]) for f in config.factors}
        if net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                net = _CNN(config.channels, [self.n_classes[f] for f in config.factors])
        self.net = net

    def _check_factors(self, factors: Sequence[str] | None) -> list[str]:
        factors = list(self.config.factors if factors is None else factors)
        unknown = [f for f in factors if f not in self.config.factors]
        if unknown:
            raise InputError(f"unknown factor(s) {unknown}; these probes read {list(self.config.factors)}")
        return factors

    @torch.inference_mode()
    def predict(self, images: np.ndarray, factors: Sequence[str] | None = None, batch_size: int = 1024
                ) -> dict[str, np.ndarray]:
        """Predicted value index ``(n,)`` per factor of uint8 images ``(n, S, S, 3)`` (any ``S >= resolution``)."""
        factors = self._check_factors(factors)
        self.net.eval()
        x = to_resolution(images, self.config.resolution)
        out: dict[str, list[np.ndarray]] = {f: [] for f in factors}
        for start in range(0, len(x), batch_size):
            logits = self.net(x[start:start + batch_size])
            for f in factors:
                out[f].append(logits[self.config.factors.index(f)].argmax(1).numpy())
        return {f: np.concatenate(v) if v else np.zeros(0, int) for f, v in out.items()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The CNN's weights (the tensor side of the artifact)."""
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def meta(self) -> dict[str, Any]:
        """The JSON side of the artifact: the config and the number of classes per factor."""
        return {"config": to_jsonable(self.config), "n_classes": self.n_classes}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> FactorProbes:
        """Rebuild the probes from :meth:`state_tensors` and :meth:`meta` (in eval mode)."""
        cfg = dict(meta["config"])
        cfg["factors"], cfg["channels"] = tuple(cfg["factors"]), tuple(cfg["channels"])
        probes = cls(ProbeConfig(**cfg), meta["n_classes"])
        probes.net.load_state_dict(dict(tensors))
        probes.net.eval()
        return probes


def _check_labels(images: np.ndarray, labels: Mapping[str, np.ndarray], config: ProbeConfig) -> dict[str, np.ndarray]:
    missing = [f for f in config.factors if f not in labels]
    if missing:
        raise InputError(f"no labels for factor(s) {missing} (given: {sorted(labels)})")
    out = {f: np.asarray(labels[f]).astype(np.int64) for f in config.factors}
    for f, y in out.items():
        if y.shape != (len(images),):
            raise InputError(f"labels of {f!r} have shape {y.shape}, expected ({len(images)},)")
    return out


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3).contiguous(), groups=3)


def _augment(x: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Half of the batch blurred, and every image given Gaussian pixel noise of a random std in ``[0, noise]``."""
    half = len(x) // 2
    x = torch.cat([_blur(x[:half]), x[half:]])
    std = noise * torch.rand(len(x), 1, 1, 1, generator=gen)
    return x + std * torch.randn(x.shape, generator=gen)


def train_probes(images: np.ndarray, labels: Mapping[str, np.ndarray], n_classes: Mapping[str, int],
                 config: ProbeConfig = ProbeConfig(), progress: bool = False, threads: int | None = 1
                 ) -> tuple[FactorProbes, dict[str, list[float]]]:
    """Train the probes on real images.

    Parameters
    ----------
    images : uint8 (n, S, S, 3)
    labels : dict
        factor -> ``(n,)`` value indices, for every factor of ``config.factors``.
    n_classes : dict
        factor -> number of values.

    Returns
    -------
    (FactorProbes, dict)
        The probes and the history (``epoch``, ``loss``: mean summed cross-entropy over the epoch).
    """
    y = _check_labels(images, labels, config)
    probes = FactorProbes(config, n_classes)
    x_all = to_resolution(images, config.resolution)
    gen = torch.Generator().manual_seed(config.seed)
    y_all = torch.stack([torch.from_numpy(y[f]) for f in config.factors], 1)
    history: dict[str, list[float]] = {"epoch": [], "loss": []}
    with torch_threads(threads):
        net = probes.net.train()
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        n_steps = config.epochs * math.ceil(len(x_all) / config.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / n_steps))))
        for epoch in tqdm(range(config.epochs), desc="probes", disable=not progress):
            order, losses = torch.randperm(len(x_all), generator=gen), []
            for start in range(0, len(x_all), config.batch_size):
                idx = order[start:start + config.batch_size]
                x = x_all[idx]
                if config.augment:
                    x = _augment(x, config.noise, gen)
                loss = sum(F.cross_entropy(logits, y_all[idx, k]) for k, logits in enumerate(net(x)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            history["epoch"].append(epoch + 1)
            history["loss"].append(float(np.mean(losses)))
        net.eval()
    return probes, history


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedProbes:
    """Probes with their training record (``seconds``: training wall time; ``trained_now``: False if loaded)."""

    probes: FactorProbes
    history: dict[str, list[float]]
    seconds: float
    key: str
    path: Path
    trained_now: bool


def load_or_train_probes(images: np.ndarray, labels: Mapping[str, np.ndarray], n_classes: Mapping[str, int],
                         config: ProbeConfig = ProbeConfig(), progress: bool = False,
                         root: Path | None = None) -> TrainedProbes:
    """The probes trained on ``(images, labels)`` with ``config``: loaded from the artifact store, or trained
    (:func:`train_probes`) and stored.
    """
    y = _check_labels(images, labels, config)
    data = tensor_fingerprint({"images": torch.as_tensor(np.ascontiguousarray(images)),
                               **{f"y_{f}": torch.from_numpy(v) for f, v in y.items()}})
    key = stable_hash("image_probes", config, data, {f: int(n_classes[f]) for f in config.factors},
                      code_version(__name__))
    trained_now = False

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        nonlocal trained_now
        started = time.perf_counter()
        probes, history = train_probes(images, y, n_classes, config, progress=progress)
        trained_now = True
        return probes.state_tensors(), {**probes.meta(), "history": history, "seconds": time.perf_counter() - started}

    art = load_or_compute(ARTIFACT_KIND, key, compute, root)
    return TrainedProbes(FactorProbes.from_parts(art.tensors, art.meta), art.meta["history"],
                         float(art.meta["seconds"]), key, art.path, trained_now)


def probe_table(probes: FactorProbes, images: np.ndarray, labels: Mapping[str, np.ndarray],
                factors: Sequence[str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Accuracy of the probes on ``images`` against ``labels`` (factor -> ``(n,)``), with Wilson intervals.

    Returns
    -------
    DataFrame: ``factor``, ``n``, ``accuracy``, ``ci_low``, ``ci_high``, ``chance``.
    """
    factors = probes._check_factors(factors)
    if len(images) == 0:
        raise InputError("no images to read: the group is empty")
    pred = probes.predict(images, factors)
    rows = []
    for f in factors:
        if f not in labels:
            raise InputError(f"no labels for factor {f!r} (given: {sorted(labels)})")
        y = np.asarray(labels[f])
        if y.shape != (len(images),):
            raise InputError(f"labels of {f!r} have shape {y.shape}, expected ({len(images)},)")
        k = int((pred[f] == y).sum())
        low, high = proportion_ci(k, len(y), confidence)
        rows.append(dict(factor=f, n=len(y), accuracy=k / len(y), ci_low=low, ci_high=high,
                         chance=1.0 / probes.n_classes[f]))
    return pd.DataFrame(rows)
