"""CLIP models: any open_clip model by name and pretrained tag (``paper``), and tiny CLIPs (``tiny``).

Every model reaches the rest of the book as a :class:`ModelBundle`: the open_clip module, its image
preprocessing (PIL -> ``(3, H, W)`` tensor), its tokenizer (captions -> ``(n, context_length)`` ids) and an
``identity`` string that determines its weights (used in cache keys).

Training of the tiny models lives in :mod:`mmlib.models.training`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image
from torch import nn

from mmlib.core.artifacts import read_tensors, stable_hash, tensor_fingerprint, write_tensors_atomic


class UnknownModelError(ValueError):
    """The model name is not an open_clip architecture."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: offline, or a tag the model does not have)."""


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A CLIP model with everything needed to embed images and captions.

    Attributes
    ----------
    model : open_clip.CLIP
        In eval mode.
    preprocess : callable
        PIL image -> float tensor ``(3, H, W)``.
    tokenizer : callable
        list of ``n`` captions -> long tensor ``(n, context_length)``.
    name : str
        Human-readable name, e.g. ``"ViT-B-32/openai"`` or ``"tiny-clip"``.
    identity : str
        A string that determines the weights exactly (for cache keys).
    """

    model: open_clip.CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    identity: str

    @property
    def embed_dim(self) -> int:
        """Dimension ``d`` of the joint embedding."""
        return int(self.model.text_projection.shape[1])


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` (with close names) unless ``name`` is an open_clip architecture."""
    models = open_clip.list_models()
    if name not in models:
        raise UnknownModelError(f"unknown open_clip model {name!r}.{_suggest(name, models)} "
                                "See open_clip.list_models() for all architectures.")


def load_open_clip(name: str, pretrained: str | None = "openai", device: str | torch.device = "cpu",
                   ) -> ModelBundle:
    """Load an open_clip model by architecture name and pretrained tag (the ``paper`` profile's path).

    Parameters
    ----------
    name : str
        An open_clip architecture, e.g. ``"ViT-B-32"``.
    pretrained : str or None
        A pretrained tag (``"openai"``), a path to a local checkpoint, or ``None`` for random weights
        (used by the offline tests of the real-architecture code path).
    device : str or torch.device

    Raises
    ------
    UnknownModelError
        if ``name`` is not an open_clip architecture (close names are suggested).
    WeightsUnavailableError
        if the weights cannot be loaded, e.g. offline.
    """
    check_model_name(name)
    if pretrained and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise WeightsUnavailableError(
                f"{name} has no pretrained tag {pretrained!r}.{_suggest(pretrained, tags)} "
                f"Known tags: {', '.join(tags) or 'none'}.")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                     device=device)
    except RuntimeError as err:
        raise WeightsUnavailableError(
            f"could not load pretrained weights {pretrained!r} for {name}: {err}\n"
            "This machine is offline or the weights are not cached. The 'paper' profile needs the real "
            "weights: run it on a machine with internet access (e.g. the book's Colab link), or pass "
            "pretrained='/path/to/open_clip_pytorch_model.bin' for a local checkpoint. The 'tiny' profile "
            "needs no download.") from err
    model.eval()
    identity = f"open_clip:{name}:{pretrained}" if pretrained else \
        f"open_clip:{name}:random:{tensor_fingerprint(model.state_dict())}"
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name),
                       name=f"{name}/{pretrained or 'random'}", identity=identity)


@dataclasses.dataclass(frozen=True)
class TinyClipArch:
    """Architecture of a tiny ViT CLIP (an ``open_clip.CLIP`` config).

    The vision tower is a ViT on ``image_size`` px images with ``patch_size`` px patches; the text tower
    is a causal transformer over open_clip's own BPE tokenizer, truncated to ``context_length`` tokens.

    ``stem_channels`` replaces the ViT's single patch-embedding convolution by a small convolutional stem
    ("early convolutions", Xiao et al., NeurIPS 2021): 3x3 stride-2 convolutions with these channel counts
    and GELUs, then a last 3x3 stride-2 convolution to ``vision_width``. It must halve the image
    ``log2(patch_size)`` times, so it outputs the same ``(b, vision_width, g, g)`` token grid as the patch
    convolution it replaces; everything after it is open_clip's own ``VisionTransformer``. ``()`` keeps the
    plain patch embedding. A tiny ViT trained from scratch learns shapes several times faster with the stem
    (chapter 00 reports the numbers).
    """

    embed_dim: int = 64
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 2
    vision_head_width: int = 32
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    stem_channels: tuple[int, ...] = (32, 64)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_head_width or self.text_width % self.text_heads:
            raise ValueError("widths must be multiples of the head width / number of heads")
        if self.stem_channels and 2 ** (len(self.stem_channels) + 1) != self.patch_size:
            raise ValueError(f"a stem of {len(self.stem_channels)} + 1 stride-2 convolutions downsamples by "
                             f"{2 ** (len(self.stem_channels) + 1)}, not by patch_size {self.patch_size}: give "
                             f"log2(patch_size) - 1 = {max(0, self.patch_size.bit_length() - 2)} stem channel "
                             "counts, or stem_channels=() for the plain patch embedding")

    def open_clip_config(self) -> dict:
        """The keyword arguments of ``open_clip.CLIP``."""
        return dict(
            embed_dim=self.embed_dim,
            vision_cfg=dict(image_size=self.image_size, patch_size=self.patch_size, width=self.vision_width,
                            layers=self.vision_layers, head_width=self.vision_head_width),
            text_cfg=dict(context_length=self.context_length, vocab_size=49408, width=self.text_width,
                          heads=self.text_heads, layers=self.text_layers),
        )


def conv_stem(channels: Sequence[int], width: int) -> nn.Sequential:
    """3x3 stride-2 convolutions ``3 -> channels[0] -> ... -> width`` with GELUs between them.

    Maps ``(b, 3, S, S)`` images to a ``(b, width, S / 2^(len(channels)+1), ...)`` token grid.
    """
    sizes = [3, *channels, width]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


def build_tiny_clip(arch: TinyClipArch, seed: int = 0) -> open_clip.CLIP:
    """A randomly initialised tiny CLIP (deterministic for a given ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**arch.open_clip_config(), output_dict=True)
        if arch.stem_channels:
            model.visual.conv1 = conv_stem(arch.stem_channels, arch.vision_width)
    return model


def tiny_bundle(model: open_clip.CLIP, arch: TinyClipArch, name: str = "tiny-clip") -> ModelBundle:
    """Wrap a tiny CLIP into a :class:`ModelBundle` (eval mode; identity = hash of config + weights)."""
    model.eval()
    preprocess = open_clip.image_transform(arch.image_size, is_train=False, mean=arch.mean, std=arch.std)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=arch.context_length)
    identity = f"tiny:{name}:{stable_hash(arch)}:{tensor_fingerprint(model.state_dict())}"
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, identity=identity)


def save_tiny_clip(path: Path, model: open_clip.CLIP, arch: TinyClipArch, extra: dict | None = None) -> None:
    """Save a tiny CLIP as ``<path>/model.safetensors`` + ``<path>/config.json`` (atomic writes)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_tensors_atomic(path / "model.safetensors", model.state_dict())
    tmp = path / ".config.json.tmp"
    tmp.write_text(json.dumps({"arch": dataclasses.asdict(arch), **(extra or {})}, indent=2))
    tmp.replace(path / "config.json")


def load_tiny_clip(path: Path, name: str = "tiny-clip") -> ModelBundle:
    """Reload a tiny CLIP saved by :func:`save_tiny_clip` (safetensors; no pickle)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    arch_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["arch"].items()}
    arch = TinyClipArch(**arch_fields)
    model = build_tiny_clip(arch)
    model.load_state_dict(read_tensors(path / "model.safetensors"))
    return tiny_bundle(model, arch, name=name)
