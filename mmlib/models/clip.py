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
import math
import numbers
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image
from torch import nn

from mmlib.core.artifacts import file_sha256, read_tensors, stable_hash, tensor_fingerprint, write_tensors_atomic
from mmlib.core.devices import resolve_device
from mmlib.core.errors import ConfigError, CorruptArtifactError, InputError, MmlibError
from mmlib.core.validation import at_least, check_finite, validate_config


class UnknownModelError(InputError):
    """The model name is not an open_clip architecture."""


class WeightsUnavailableError(MmlibError, RuntimeError):
    """Pretrained weights could not be loaded (typically: offline, or a tag the model does not have)."""


class CheckpointError(WeightsUnavailableError, InputError):
    """A local checkpoint given as ``pretrained`` is not a usable checkpoint file (a folder, not a state dict, a
    pickle that is not plain tensors, or weights of another architecture).
    """


class TinyModelError(InputError):
    """A path given as a tiny-model folder is not one written by :func:`save_tiny_clip`."""


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
    if not isinstance(name, str):
        raise UnknownModelError(f"the open_clip model name must be a string such as 'ViT-B-32', got {name!r} "
                                f"({type(name).__name__}).")
    models = open_clip.list_models()
    if name not in models:
        raise UnknownModelError(f"unknown open_clip model {name!r}.{_suggest(name, models)} "
                                "See open_clip.list_models() for all architectures.")


_SAFE_FORMATS = ("pass a .safetensors file, or a state dict saved with torch.save(model.state_dict(), path) that "
                 "torch.load(path, weights_only=True) reads")


def _summary(err: BaseException, n_lines: int = 1) -> str:
    """The first ``n_lines`` of ``err``'s message, without any advice about ``weights_only`` (never passed on)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "WeightsUnpickler" not in line]
    text = " ".join(lines[:n_lines]) if lines else type(err).__name__
    return text[:300] + (" ..." if len(text) > 300 else "")


def _check_checkpoint_file(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"pretrained {str(path)!r} is a directory; a checkpoint FILE is expected: {_SAFE_FORMATS}"
                              " (e.g. pretrained='/path/to/open_clip_pytorch_model.bin').")
    if not path.is_file():
        raise CheckpointError(f"pretrained {str(path)!r} is not a regular file; {_SAFE_FORMATS}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); re-download it. Then {_SAFE_FORMATS}.")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable; check its permissions.")


def _checkpoint_error(path: Path, name: str, err: BaseException) -> CheckpointError:
    """The :class:`CheckpointError` for a checkpoint file that open_clip could not load (torch's advice dropped)."""
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err):
        return CheckpointError(f"checkpoint {path} holds pickled Python objects besides tensors, which are not loaded "
                               f"(they could run code); {_SAFE_FORMATS}.")
    text = str(err)
    if (isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in text) or isinstance(err, AssertionError):
        return CheckpointError(f"checkpoint {path} does not hold {name} weights ({_summary(err, 2)}); pass a "
                               f"checkpoint of a {name} model, or the architecture name it was trained with.")
    if isinstance(err, (StopIteration, AttributeError)):  # an empty dict, or no dict at all
        return CheckpointError(f"checkpoint {path} does not hold a state dict of tensors ({type(err).__name__}: "
                               f"{_summary(err)}); {_SAFE_FORMATS}.")
    return CheckpointError(f"checkpoint {path} is not a readable checkpoint ({type(err).__name__}: {_summary(err)}); "
                           f"{_SAFE_FORMATS}.")


#: The ``pretrained`` value that asks :func:`load_open_clip` for random weights (explicitly; never a fallback).
RANDOM_WEIGHTS = "random"


def load_open_clip(name: str, pretrained: str | None = "openai", device: str | torch.device = "cpu",
                   ) -> ModelBundle:
    """Load an open_clip model by architecture name and pretrained tag (the ``paper`` profile's path).

    Parameters
    ----------
    name : str
        An open_clip architecture, e.g. ``"ViT-B-32"``.
    pretrained : str or None
        A pretrained tag (``"openai"``), a path to a local checkpoint file (``.safetensors``, or a state dict saved
        with ``torch.save`` that loads with ``weights_only=True``), or ``"random"`` (:data:`RANDOM_WEIGHTS`; ``None``
        means the same) for the architecture at random initialisation, seeded by torch's global seed: the
        offline smoke run of the ``paper`` profile and its tests, and a control without learned structure.
    device : str or torch.device

    Raises
    ------
    UnknownModelError
        if ``name`` is not an open_clip architecture (close names are suggested).
    CheckpointError
        if ``pretrained`` is a local path that is a folder, or not a loadable checkpoint of ``name`` (torch's advice
        to load untrusted pickles is never passed on).
    WeightsUnavailableError
        if the weights of a tag cannot be loaded, e.g. offline.
    InputError
        for a ``pretrained`` that is neither a string nor ``None`` (or is empty), or an unknown/unavailable device.
    """
    check_model_name(name)
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if pretrained == RANDOM_WEIGHTS:
        pretrained = None
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained.strip()):
        raise InputError(f"pretrained must be a tag such as 'openai', the path of a checkpoint file, or None for "
                         f"random weights; got {pretrained!r}.")
    resolve_device(device)
    tags = open_clip.list_pretrained_tags_by_model(name)
    checkpoint: Path | None = None
    if pretrained and pretrained not in tags:
        local = Path(pretrained).expanduser()
        if not local.exists():
            raise WeightsUnavailableError(
                f"{name} has no pretrained tag {pretrained!r}, and no file {pretrained!r} exists."
                f"{_suggest(pretrained, tags)} Known tags: {', '.join(tags) or 'none'}.")
        _check_checkpoint_file(local)
        checkpoint = local
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(checkpoint) if checkpoint is not None else pretrained, device=device)
    except Exception as err:  # noqa: BLE001 - every failure of a local checkpoint is the file's
        if checkpoint is not None:
            raise _checkpoint_error(checkpoint, name, err) from None
        if not isinstance(err, RuntimeError) or "Weights only load failed" in str(err):
            raise WeightsUnavailableError(
                f"the cached weights {pretrained!r} of {name} are unreadable ({type(err).__name__}: {_summary(err)}); "
                "delete them from the open_clip / Hugging Face cache and retry.") from None
        raise WeightsUnavailableError(
            f"could not load pretrained weights {pretrained!r} for {name}: {_summary(err)}\n"
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
        positive = {f.name: at_least(1) for f in dataclasses.fields(self) if f.name not in ("mean", "std")}
        validate_config(self, **positive)
        for field in ("mean", "std"):
            value = getattr(self, field)
            if (not isinstance(value, (tuple, list)) or len(value) != 3
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                               for v in value)):
                raise ConfigError(f"TinyClipArch.{field} must be three finite numbers (one per RGB channel), got "
                                  f"{value!r}.")
        if not all(v > 0 for v in self.std):
            raise ConfigError(f"TinyClipArch.std must be positive in every channel, got {self.std!r}.")
        if self.image_size % self.patch_size:
            raise ConfigError(f"TinyClipArch.image_size {self.image_size} is not a multiple of patch_size "
                              f"{self.patch_size}; change one of them.")
        if self.vision_width % self.vision_head_width:
            raise ConfigError(f"TinyClipArch.vision_width {self.vision_width} must be a multiple of "
                              f"vision_head_width {self.vision_head_width}.")
        if self.text_width % self.text_heads:
            raise ConfigError(f"TinyClipArch.text_width {self.text_width} must be a multiple of text_heads "
                              f"{self.text_heads}.")
        if self.stem_channels and 2 ** (len(self.stem_channels) + 1) != self.patch_size:
            raise ConfigError(f"TinyClipArch.stem_channels: a stem of {len(self.stem_channels)} + 1 stride-2 "
                              f"convolutions downsamples by "
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


#: config.json keys written by :func:`save_tiny_clip` itself (``extra`` must not use them).
_RESERVED_KEYS = ("arch", "weights_sha256", "format")
_WEIGHTS, _CONFIG = "model.safetensors", "config.json"


def save_tiny_clip(path: Path, model: open_clip.CLIP, arch: TinyClipArch, extra: dict | None = None) -> None:
    """Save a tiny CLIP as ``<path>/model.safetensors`` + ``<path>/config.json`` (atomic writes).

    ``config.json`` holds the architecture, ``extra`` and the SHA-256 of ``model.safetensors``, which
    :func:`load_tiny_clip` verifies.

    Raises
    ------
    InputError
        if ``path`` is a file, ``arch`` is not a :class:`TinyClipArch`, the model's weights do not fit ``arch`` or are
        not finite, or ``extra`` uses a reserved key or is not JSON-serialisable (nothing is written then).
    """
    path = Path(path)
    if not isinstance(arch, TinyClipArch):
        raise InputError(f"save_tiny_clip: arch must be a TinyClipArch, got {type(arch).__name__}.")
    if not isinstance(model, nn.Module):
        raise InputError(f"save_tiny_clip: model must be an open_clip.CLIP, got {type(model).__name__}.")
    if extra is not None and not isinstance(extra, dict):
        raise InputError(f"save_tiny_clip: extra must be a dict or None, got {type(extra).__name__}.")
    reserved = sorted(set(extra or {}) & set(_RESERVED_KEYS))
    if reserved:
        raise InputError(f"save_tiny_clip: extra must not use the reserved key(s) {reserved}; rename them.")
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in build_tiny_clip(arch).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise InputError(f"save_tiny_clip: the model's weights do not fit arch ({len(diff)} tensor(s) differ, first: "
                         f"{diff[0]!r} {got.get(diff[0])} vs {expected.get(diff[0])}); pass the arch it was built "
                         "with.")
    for key, tensor in state.items():
        check_finite(tensor, f"save_tiny_clip: weight {key!r}", hint="the model diverged; do not save it")
    try:
        text = json.dumps({"arch": dataclasses.asdict(arch), **(extra or {})}, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"save_tiny_clip: extra is not JSON-serialisable ({err}); pass plain numbers, strings, "
                         "lists and dicts.") from None
    if path.exists() and not path.is_dir():
        raise InputError(f"save_tiny_clip: {path} is a file; pass a folder path (it is created if missing).")
    path.mkdir(parents=True, exist_ok=True)
    write_tensors_atomic(path / _WEIGHTS, state)
    config = json.loads(text)
    config.update(format=1, weights_sha256=file_sha256(path / _WEIGHTS))
    tmp = path / ".config.json.tmp"
    try:
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(path / _CONFIG)
    except BaseException:
        (path / _WEIGHTS).unlink(missing_ok=True)  # weights without their config are no model: leave none
        raise
    finally:
        tmp.unlink(missing_ok=True)


def load_tiny_clip(path: Path, name: str = "tiny-clip") -> ModelBundle:
    """Reload a tiny CLIP saved by :func:`save_tiny_clip` (safetensors; no pickle), verifying its checksum.

    Raises
    ------
    TinyModelError
        if ``path`` does not exist, is a file, or lacks ``config.json`` (not written by :func:`save_tiny_clip`).
    CorruptArtifactError
        if ``model.safetensors`` is missing, does not match the SHA-256 recorded in ``config.json`` (or the folder
        predates the checksum: re-save it), ``config.json`` is unreadable or its architecture is invalid, or the
        weights do not fit the architecture (the message names both files).
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"load_tiny_clip: name must be a non-empty string, got {name!r}.")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise TinyModelError(f"load_tiny_clip: path must be the folder written by save_tiny_clip, got {path!r}.")
    path = Path(path).expanduser()
    hint = "pass the folder written by mmlib.models.clip.save_tiny_clip (model.safetensors + config.json)"
    if not path.exists():
        raise TinyModelError(f"tiny model folder {path} does not exist; {hint}.")
    if not path.is_dir():
        raise TinyModelError(f"tiny model folder {path} is a file, not a folder; {hint}.")
    config_path, weights_path = path / _CONFIG, path / _WEIGHTS
    if not config_path.is_file():
        raise TinyModelError(f"{path} has no {_CONFIG}: it is not a folder written by save_tiny_clip; {hint}.")
    if not weights_path.is_file():
        raise CorruptArtifactError(f"{weights_path} is missing (its {_CONFIG} is there); the tiny model folder is "
                                   "incomplete: save it again with save_tiny_clip.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptArtifactError(f"{config_path} is not readable JSON ({err}); save the model again with "
                                   "save_tiny_clip.") from None
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise CorruptArtifactError(f"{config_path} has no 'arch' object; it was not written by save_tiny_clip (or was "
                                   "edited): save the model again.")
    recorded = config.get("weights_sha256")
    if recorded is None:
        raise CorruptArtifactError(f"{config_path} records no checksum of {_WEIGHTS} (written by an older "
                                   "version): re-save the model with save_tiny_clip(path, model, arch) so that its "
                                   "weights can be verified.")
    if not isinstance(recorded, str) or file_sha256(weights_path) != recorded:
        raise CorruptArtifactError(f"{weights_path} does not match the SHA-256 recorded in {config_path}: the weights "
                                   "were changed or damaged after saving. Restore the folder or save the model again.")
    fields = {f.name for f in dataclasses.fields(TinyClipArch)}
    unknown = sorted(set(config["arch"]) - fields)
    if unknown:
        raise CorruptArtifactError(f"{config_path}: unknown architecture field(s) {unknown}; expected a subset of "
                                   f"{sorted(fields)}. Save the model again.")
    try:
        arch = TinyClipArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["arch"].items()})
    except ConfigError as err:
        raise CorruptArtifactError(f"{config_path}: invalid architecture ({err}); save the model again.") from None
    model = build_tiny_clip(arch)
    tensors = read_tensors(weights_path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise CorruptArtifactError(f"the weights in {weights_path} do not fit the architecture in {config_path} "
                                   f"({_summary(err, 2)}); the two files come from different models: save the model "
                                   "again.") from None
    return tiny_bundle(model, arch, name=name)
