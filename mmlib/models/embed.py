r"""Cached, resumable, torchrun-shardable extraction of CLIP embeddings.

:func:`embed_dataset` turns a :class:`~mmlib.data.protocol.PairDataset` and a :class:`~mmlib.models.clip.ModelBundle`
into :class:`Embeddings`: image and text embeddings ``(n, d)`` (exactly what ``model.encode_image`` /
``model.encode_text`` return, unnormalised) and optionally each tower's pooled activation before the
projection. The result is an artifact (kind ``"embeddings"``) keyed by the model identity, the
preprocessing, the tokenizer's context length, the dataset fingerprint and size, ``towers``, this module's
code version, and everything that changes the bytes of the result: the batch size, the device type and, on the
CPU, the torch thread count (batches of 8 and of 1 differ by ~1e-6). A second call with the same settings loads
it without touching the model.

Batches are aligned globally: batch ``k`` covers rows ``[k * batch_size, (k + 1) * batch_size)``. The work is
split into shards of ``shard_size`` pairs (a multiple of ``batch_size``, so a shard holds whole batches and the
shard size never changes the bytes), each written atomically to its own safetensors file; an interrupted run
resumes from the shards already on disk, and leftovers of a killed run (temporaries, resume shards of a key
whose artifact exists) are removed by the next run of the key. Under ``torchrun`` each rank computes the shards
``i`` with ``i % world_size == rank``, rank 0 merges them into the final artifact, and every rank returns
it. The same command line scales from a laptop to a multi-GPU node::

    torchrun --nproc_per_node 8 -m mmlib embed --wds 'cc3m/{00000..00331}.tar' \
        --open-clip ViT-B-32 --pretrained openai --towers

(``python -m mmlib.models.embed`` takes the same options.) Bad input (a tensor of the wrong shape, a model whose
output is not finite, a bad option, an unusable artifact root) raises an :class:`~mmlib.core.errors.MmlibError`
that names it, before any work where it can be known in advance.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import open_clip
import torch
import tqdm
from open_clip.transformer import VisionTransformer, text_global_pool
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn

from mmlib.core.artifacts import (
    CorruptArtifactError,
    artifact_path,
    code_version,
    ensure_artifact_root,
    load_artifact,
    read_tensors,
    remove_stale_temporaries,
    save_artifact,
    stable_hash,
    tensor_fingerprint,
    write_tensors_atomic,
)
from mmlib.core.console import OneLineErrorParser, run_command, show_progress
from mmlib.core.devices import parse_device, resolve_device
from mmlib.core.errors import ConfigError, InputError, NonFiniteError
from mmlib.core.validation import at_least, validate_config
from mmlib.data.embeddings import Embeddings
from mmlib.data.protocol import DatasetError, PairDataset
from mmlib.models.clip import ModelBundle

__all__ = ["EmbedConfig", "TowersUnsupportedError", "add_arguments", "context_length",
           "embed_dataset", "embed_splits", "embedding_key", "encode_pairs", "main", "run"]

KIND = "embeddings"
PARTS_KIND = "embeddings.parts"
#: Pairs per shard when ``EmbedConfig.shard_size`` is not given (rounded up to a multiple of the batch size).
DEFAULT_SHARD_PAIRS = 4096
#: Device types an extraction runs on.


class TowersUnsupportedError(InputError, NotImplementedError):
    """``towers=True`` was asked of a model whose towers cannot be split at the projection."""


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """How to run an extraction. Every field but ``num_workers`` and ``shard_size`` is part of the artifact key:
    ``towers`` changes what is stored, and the batch size and the device (with, on the CPU, the torch thread count
    at call time) change the last bits of the floats.

    Attributes
    ----------
    batch_size : int
        Pairs per forward pass (>= 1); batch ``k`` covers rows ``[k * batch_size, (k + 1) * batch_size)``.
    shard_size : int or None
        Pairs per resumable shard file (and per torchrun work unit): a multiple of ``batch_size``. ``None``: the
        smallest multiple of ``batch_size`` that is >= 4096. It never changes the result.
    towers : bool
        Also keep each tower's pooled activation before the projection.
    device : str
        ``"auto"`` (cuda, else mps, else cpu) or a torch device string of type cpu, cuda or mps; the model is
        moved there.
    num_workers : int
        DataLoader worker processes that decode and preprocess images (0: in the main process; > 0 needs a
        picklable dataset on platforms that spawn workers).

    Raises
    ------
    ConfigError
        for a field of the wrong type or out of range, or a ``shard_size`` that is not a multiple of ``batch_size``.
    """

    batch_size: int = 256
    shard_size: int | None = None
    towers: bool = False
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        validate_config(self, batch_size=at_least(1), shard_size=at_least(1), num_workers=at_least(0))
        parse_device(self.device, "EmbedConfig.device")
        for name in ("batch_size", "shard_size", "num_workers"):  # numpy integers -> int (the DataLoader wants int)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "towers", bool(self.towers))
        if self.shard_size is not None and self.shard_size % self.batch_size:
            fit = self.batch_size * math.ceil(self.shard_size / self.batch_size)
            raise ConfigError(f"EmbedConfig.shard_size ({self.shard_size}) must be a multiple of batch_size "
                              f"({self.batch_size}): use {fit}.")

    @property
    def rows_per_shard(self) -> int:
        """``shard_size``, or its default for ``None`` (the smallest multiple of ``batch_size`` >= 4096)."""
        if self.shard_size is not None:
            return self.shard_size
        return self.batch_size * math.ceil(DEFAULT_SHARD_PAIRS / self.batch_size)


# --------------------------------------------------------------------------------------------------- one batch

_NO_VISION_TOWER = ("towers=True needs an open_clip VisionTransformer image tower, not {} (ResNet and timm towers "
                    "fold the projection into their pooling); use towers=False (--towers off).")
_NO_TEXT_TOWER = ("towers=True needs an open_clip.CLIP text tower, not {} (e.g. CustomTextCLIP wraps a Hugging Face "
                  "or custom text encoder); use towers=False (--towers off).")


def _vision_with_tower(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (b, w_img), projected (b, d))`` in one pass, as ``VisionTransformer.forward`` computes them."""
    if not isinstance(visual, VisionTransformer):
        raise TowersUnsupportedError(_NO_VISION_TOWER.format(type(visual).__name__))
    x = visual._embeds(images)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    return pooled, (pooled @ visual.proj if visual.proj is not None else pooled)


def _text_with_tower(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (b, w_txt), projected (b, d))``: ``open_clip.CLIP.encode_text`` split at the projection."""
    if not isinstance(model, open_clip.CLIP):
        raise TowersUnsupportedError(_NO_TEXT_TOWER.format(type(model).__name__))
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is None:
        return pooled, pooled
    return pooled, (proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj)


def _size2(size: Any) -> tuple[int, int] | None:
    """An ``image_size`` attribute (int or pair) as ``(H, W)``, or ``None`` if unknown."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return None


def check_batch(bundle: ModelBundle, images: torch.Tensor, tokens: torch.Tensor) -> None:
    """Raise :class:`InputError` (:class:`NonFiniteError` for NaN/Inf pixels) unless ``images`` ``(b, 3, H, W)``
    and ``tokens`` ``(b, L)`` are a batch that ``bundle`` can embed: float pixels at the model's image size,
    integer token ids below its vocabulary size, ``L`` its context length, ``b >= 1`` on both sides.
    """
    model = bundle.model
    fix = f"build the batch with bundle.preprocess (stacked) and bundle.tokenizer of {bundle.name!r}"
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor (b, 3, H, W), got {type(images).__name__}; {fix}.")
    if not isinstance(tokens, torch.Tensor):
        raise InputError(f"tokens must be a torch.Tensor (b, L), got {type(tokens).__name__}; {fix}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must have shape (b, 3, H, W), got {tuple(images.shape)}; {fix}.")
    if not images.is_floating_point():
        raise InputError(f"images must hold floating-point pixels, got dtype {images.dtype}; {fix}.")
    expected = _size2(getattr(getattr(model, "visual", None), "image_size", None))
    if expected is not None and tuple(images.shape[2:]) != expected:
        raise InputError(f"images are {images.shape[2]}x{images.shape[3]} pixels but {bundle.name!r} expects "
                         f"{expected[0]}x{expected[1]}; {fix}.")
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise InputError(f"tokens must have shape (b, L) with L >= 1, got {tuple(tokens.shape)}; {fix}.")
    if tokens.dtype in (torch.bool,) or tokens.is_floating_point() or tokens.is_complex():
        raise InputError(f"tokens must hold integer token ids, got dtype {tokens.dtype}; {fix}.")
    if images.shape[0] == 0:
        raise InputError(f"the batch is empty (images {tuple(images.shape)}); pass at least one pair.")
    if tokens.shape[0] != images.shape[0]:
        raise InputError(f"images and tokens must hold the same number of pairs, got {images.shape[0]} images "
                         f"and {tokens.shape[0]} token rows; {fix}.")
    length = getattr(model, "context_length", None)
    if isinstance(length, int) and tokens.shape[1] != length:
        raise InputError(f"tokens have {tokens.shape[1]} positions but {bundle.name!r} has a context length of "
                         f"{length}; {fix}.")
    vocab = getattr(model, "vocab_size", None)
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (isinstance(vocab, int) and high >= vocab):
        raise InputError(f"tokens must be ids in [0, {vocab if isinstance(vocab, int) else 'vocab_size'}), got "
                         f"values in [{low}, {high}]; {fix}.")
    if not bool(torch.isfinite(images).all()):
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        rows = bad.nonzero().flatten().tolist()
        raise NonFiniteError(f"images hold non-finite pixels in {len(rows)} of {images.shape[0]} row(s) of the "
                             f"batch (rows {_rows_text(rows)}); check those images and bundle.preprocess.")


def _rows_text(rows: Sequence[int], limit: int = 10) -> str:
    """``"3, 5, 9"`` (the first ``limit`` rows, then ``", ... (n in all)"``)."""
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def check_outputs(bundle: ModelBundle, outputs: Mapping[str, torch.Tensor], first_row: int = 0) -> None:
    """Raise :class:`NonFiniteError` naming the model, the output and the dataset rows if any output of a batch
    whose first pair is dataset row ``first_row`` holds NaN or an infinity.
    """
    for name, value in outputs.items():
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        bad = (~finite).reshape(value.shape[0], -1).any(dim=1).nonzero().flatten() + first_row
        rows = bad.tolist()
        raise NonFiniteError(
            f"model {bundle.name!r} returned {int((~finite).sum())} non-finite value(s) in its {name!r} output for "
            f"{len(rows)} pair(s) of the batch of dataset rows {first_row}..{first_row + value.shape[0] - 1} "
            f"(dataset rows {_rows_text(rows)}); its weights or those inputs are broken: check the checkpoint "
            f"(torch.isfinite on its state dict) and the images and captions of those rows. Nothing was stored.")


def encode_pairs(bundle: ModelBundle, images: torch.Tensor, tokens: torch.Tensor,
                 towers: bool = False, *, first_row: int = 0) -> dict[str, torch.Tensor]:
    """Embed one batch of preprocessed images and tokenized captions.

    Parameters
    ----------
    bundle : ModelBundle
    images : Tensor
        ``(b, 3, H, W)`` output of ``bundle.preprocess``, stacked.
    tokens : Tensor
        ``(b, L)`` output of ``bundle.tokenizer``.
    towers : bool
        Also return the pooled activations before the projections.
    first_row : int
        Dataset row of the batch's first pair (only used to name rows in error messages).

    Returns
    -------
    dict of str to Tensor
        On the CPU, float32: ``"image"`` and ``"text"`` ``(b, d)``; with ``towers`` also ``"image_tower"``
        ``(b, w_img)`` and ``"text_tower"`` ``(b, w_txt)``, such that ``image == image_tower @ visual.proj``.

    Raises
    ------
    InputError
        if ``images`` or ``tokens`` do not have the shapes, dtypes and value ranges above (:func:`check_batch`).
    NonFiniteError
        if an input pixel or an output is NaN or infinite (naming the model and the rows).
    TowersUnsupportedError
        with ``towers=True`` for a model that is not an open_clip ``CLIP`` with a ViT image tower (also a
        ``NotImplementedError``).
    """
    check_batch(bundle, images, tokens)
    model = bundle.model
    param = next(model.visual.parameters())
    images = images.to(device=param.device, dtype=param.dtype)
    tokens = tokens.to(param.device)
    with torch.inference_mode():
        if towers:
            image_tower, image = _vision_with_tower(model.visual, images)
            text_tower, text = _text_with_tower(model, tokens)
            out = {"image": image, "text": text, "image_tower": image_tower, "text_tower": text_tower}
        else:
            out = {"image": model.encode_image(images), "text": model.encode_text(tokens)}
    out = {k: v.float().cpu() for k, v in out.items()}
    check_outputs(bundle, out, first_row)
    return out


# ------------------------------------------------------------------------------------------------- cache keys

def describe_preprocess(preprocess: Callable) -> str:
    """A stable description of an image transform (its repr, without memory addresses)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def context_length(tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> int:
    """The number of tokens ``tokenizer`` returns per text (its ``context_length``, or measured on ``""``)."""
    length = getattr(tokenizer, "context_length", None)
    return int(length) if length is not None else int(tokenizer([""]).shape[-1])


def embedding_key(bundle: ModelBundle, dataset: PairDataset, config: EmbedConfig | None = None) -> str:
    """The artifact key of ``bundle`` on ``dataset`` with ``config`` (default ``EmbedConfig()``).

    It covers the model identity, the preprocessing, the context length, the data (fingerprint and size), the code,
    and every setting that changes the bytes: ``towers``, the batch size, the device type and, on the CPU, the
    torch thread count now (:func:`torch.get_num_threads`). The shard size and the worker count are left out: they
    never change the result.
    """
    if config is None:
        config = EmbedConfig()
    if not isinstance(config, EmbedConfig):
        raise InputError(f"config must be an EmbedConfig, got {type(config).__name__}; pass "
                         f"EmbedConfig(towers=...) instead.")
    device = resolve_device(config.device).type
    threads = torch.get_num_threads() if device == "cpu" else None
    return stable_hash("embeddings", bundle.identity, describe_preprocess(bundle.preprocess),
                       context_length(bundle.tokenizer), dataset.fingerprint, len(dataset), bool(config.towers),
                       config.batch_size, device, threads, code_version(__name__))


def tensor_names(towers: bool) -> tuple[str, ...]:
    """Names of the tensors an extraction produces."""
    return ("image", "text", "image_tower", "text_tower") if towers else ("image", "text")


# ------------------------------------------------------------------------------------------------ distributed

@dataclasses.dataclass(frozen=True)
class _Ranks:
    """The place of this process in a (possibly single-process) torchrun job."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls, device: str) -> _Ranks:
        """Read ``WORLD_SIZE``; if > 1, initialise torch.distributed (gloo on CPU, nccl on CUDA) if needed.

        An initialised process group is left initialised for later calls (the CLI destroys it at exit).
        """
        dev = resolve_device(device, "EmbedConfig.device")
        raw = os.environ.get("WORLD_SIZE", "1")
        try:
            world_size = int(raw)
        except ValueError:
            raise InputError(f"the environment variable WORLD_SIZE must be an integer, got {raw!r}; unset it, or "
                             "start the extraction with torchrun, which sets it.") from None
        if world_size <= 1:
            return cls(0, 1, dev)
        import torch.distributed as dist
        if not dist.is_available():
            raise InputError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed; "
                             "run a single process (unset WORLD_SIZE) or install a torch with it.")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    timeout=timedelta(hours=2))
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    def _nccl(self) -> bool:
        import torch.distributed as dist
        return dist.get_backend() == "nccl"

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world_size > 1:
            import torch.distributed as dist
            if self._nccl():
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist
        t = torch.tensor([int(flag)], device=torch.device("cuda", torch.cuda.current_device())
                         if self._nccl() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())


# ----------------------------------------------------------------------------------------------------- shards

def _shard_path(parts: Path, index: int) -> Path:
    return parts / f"shard-{index:06d}.safetensors"


def _load_shard(path: Path, key: str, start: int, stop: int, names: tuple[str, ...]
                ) -> dict[str, torch.Tensor] | None:
    """A verified shard, or ``None`` if absent; raises :class:`CorruptArtifactError` if it does not check."""
    if not path.is_file():
        return None
    tensors = read_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CorruptArtifactError(f"{path} has an unreadable header ({err})") from err
    ok = (meta.get("key") == key and meta.get("start") == str(start) and meta.get("stop") == str(stop)
          and set(tensors) == set(names) and all(t.shape[0] == stop - start for t in tensors.values())
          and meta.get("digest") == tensor_fingerprint(tensors))
    if not ok:
        raise CorruptArtifactError(f"{path} does not match its recorded key, row range or checksum")
    return tensors


class _Rows(torch.utils.data.Dataset):
    """Rows ``start..stop`` of a PairDataset as ``(image (3, H, W), caption)`` for a DataLoader."""

    def __init__(self, dataset: PairDataset, preprocess: Callable, start: int, stop: int) -> None:
        self.dataset, self.preprocess, self.start, self.stop = dataset, preprocess, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        row = self.start + i
        raw = self.dataset.image(row)
        if not isinstance(raw, Image.Image):
            raise InputError(f"dataset.image({row}) returned a {type(raw).__name__}, not a PIL image; fix the dataset "
                             f"{type(self.dataset).__name__} so that every image is a PIL.Image (RGB).")
        image = self.preprocess(raw)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 \
                or not image.is_floating_point():
            what = (f"a {image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
                    else f"a {type(image).__name__}")
            raise InputError(f"the preprocessing of dataset row {row} returned {what}, not a float tensor "
                             "(3, H, W); pass the bundle's own preprocess (bundle.preprocess).")
        caption = self.dataset.caption(row)
        if not isinstance(caption, str):
            raise InputError(f"dataset.caption({row}) returned a {type(caption).__name__}, not a str; fix the "
                             f"dataset {type(self.dataset).__name__} so that every caption is a string.")
        return image, caption


class _Collate:
    """Stack images ``(b, 3, H, W)`` and tokenize captions ``(b, L)``."""

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        shapes = sorted({tuple(img.shape) for img, _ in batch})
        if len(shapes) > 1:
            raise InputError(f"the preprocessed images of one batch differ in shape ({', '.join(map(str, shapes))}); "
                             "use a preprocess that resizes every image to the model's size (bundle.preprocess).")
        return torch.stack([img for img, _ in batch]), self.tokenizer([cap for _, cap in batch])


def _compute_shard(bundle: ModelBundle, dataset: PairDataset, start: int, stop: int, config: EmbedConfig,
                   bar: tqdm.tqdm) -> dict[str, torch.Tensor]:
    """Embed rows ``start..stop`` in batches of ``config.batch_size`` (``start`` is a multiple of it, so batch
    ``k`` of the dataset always covers rows ``[k * b, (k + 1) * b)``, whatever the shard size).
    """
    loader = torch.utils.data.DataLoader(_Rows(dataset, bundle.preprocess, start, stop),
                                         batch_size=config.batch_size, shuffle=False,
                                         num_workers=config.num_workers, collate_fn=_Collate(bundle.tokenizer))
    chunks: dict[str, list[torch.Tensor]] = {}
    row = start
    for images, tokens in loader:
        for name, value in encode_pairs(bundle, images, tokens, config.towers, first_row=row).items():
            chunks.setdefault(name, []).append(value)
        row += images.shape[0]
        bar.update(images.shape[0])
    return {name: torch.cat(values) for name, values in chunks.items()}


def _try_load(key: str, root: Path | None, warn: bool) -> Embeddings | None:
    """The cached artifact, or ``None`` if absent or corrupt (a corrupt one is reported when ``warn``)."""
    try:
        return _from_artifact(key, root)
    except FileNotFoundError:
        return None
    except CorruptArtifactError as err:
        if warn:
            warnings.warn(f"{err}; recomputing {KIND}/{key}", RuntimeWarning, stacklevel=3)
        return None


def _from_artifact(key: str, root: Path | None) -> Embeddings:
    """The stored embeddings of ``key``, lazily: the artifact is verified (its stamp, or a hash if it has none,
    :func:`~mmlib.core.artifacts.load_artifact`) and mapped, and its values are not scanned again (they were
    checked finite before saving, :func:`check_outputs`), so a hit reads no row until it is used.
    """
    return Embeddings.from_verified_artifact(load_artifact(KIND, key, root))


# ---------------------------------------------------------------------------------------------- the pipeline

def embed_dataset(bundle: ModelBundle, dataset: PairDataset, config: EmbedConfig = EmbedConfig(),
                  root: Path | None = None, progress: bool = True) -> Embeddings:
    """Embed every pair of ``dataset`` with ``bundle``, cached and resumable.

    Parameters
    ----------
    bundle : ModelBundle
        The model (moved to ``config.device`` and run in eval mode; its train/eval mode is restored after).
    dataset : PairDataset
        ``n`` pairs.
    config : EmbedConfig
    root : Path, optional
        Artifact root (default :func:`mmlib.core.paths.artifacts_dir`).
    progress : bool
        Show a tqdm bar over pairs (rank 0 only).

    Returns
    -------
    Embeddings
        ``image``/``text`` ``(n, d)``, and with ``config.towers`` the pre-projection tower activations.

    Notes
    -----
    A cached result is returned without touching the model (the resume shards and temporaries a killed run may
    have left for its key are removed then). Without ``config.towers``, the same pairs already embedded *with* the
    towers are a cached result too (their ``image`` and ``text``, under that artifact's key): a corpus that one chapter
    embedded with the towers is not embedded again by the next. Otherwise the artifact root is checked first
    (:func:`~mmlib.core.artifacts.ensure_artifact_root`), then shards of ``config.rows_per_shard`` pairs are
    written to ``<root>/embeddings.parts/<key>-s<shard_size>/`` (valid shards from an interrupted run are reused;
    corrupt ones are recomputed with a ``RuntimeWarning``), merged into the artifact ``<root>/embeddings/<key>/``
    and removed. Batch ``k`` always covers rows ``[k * batch_size, (k + 1) * batch_size)``, so the result does not
    depend on the shard size. With ``WORLD_SIZE > 1`` (torchrun), torch.distributed is initialised if needed and
    left initialised; rank ``r`` computes the shards ``i % world_size == r``, rank 0 merges, and every rank
    returns the merged result.

    Raises
    ------
    InputError
        if an argument has the wrong type, a preprocessed image or caption is unusable, or ``WORLD_SIZE`` is bad.
    ConfigError
        if ``config.device`` names a device that is not available.
    ArtifactRootError
        if the artifact root is a file or not writable (checked before any work).
    TowersUnsupportedError
        if ``config.towers`` is asked of a model without a ViT image tower and an open_clip text tower.
    NonFiniteError
        if the model returns NaN or Inf for some pairs (their dataset rows are named; the run's shards are removed
        and nothing is stored).
    DatasetError
        if the dataset is empty or an image cannot be read.
    """
    root = _check_arguments(bundle, dataset, config, root)
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{dataset!r} has no pairs: nothing to embed. Check the data source.")
    ranks = _Ranks.from_env(config.device)
    key = embedding_key(bundle, dataset, config)
    cached = _try_load(key, root, warn=ranks.rank == 0)
    if cached is None and not config.towers:  # the same pairs embedded with the towers too: the corpus once
        with_towers = _try_load(embedding_key(bundle, dataset, dataclasses.replace(config, towers=True)), root,
                                warn=ranks.rank == 0)
        if with_towers is not None:
            cached = with_towers.without_towers()
    if ranks.all_true(cached is not None):
        if ranks.rank == 0:
            _remove_leftovers(key, root)  # of a run killed between saving the artifact and removing its shards
        return cached  # type: ignore[return-value]
    ensure_artifact_root(root)  # before any work: a root that is a file or read-only fails here, not after a shard
    if config.towers:
        _check_towers(bundle.model)
    if ranks.rank == 0:
        shutil.rmtree(artifact_path(KIND, key, root), ignore_errors=True)  # a corrupt one, if any
        remove_stale_temporaries(KIND, key, root)
    ranks.barrier()

    names = tensor_names(config.towers)
    shard_size = config.rows_per_shard
    parts = artifact_path(PARTS_KIND, f"{key}-s{shard_size}", root)
    n_shards = math.ceil(n / shard_size)
    bounds = [(i * shard_size, min(n, (i + 1) * shard_size)) for i in range(n_shards)]

    def shard_meta(i: int, tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
        start, stop = bounds[i]
        return {"key": key, "start": str(start), "stop": str(stop), "digest": tensor_fingerprint(tensors)}

    def load_valid(i: int) -> dict[str, torch.Tensor] | None:
        try:
            return _load_shard(_shard_path(parts, i), key, *bounds[i], names)
        except CorruptArtifactError as err:
            warnings.warn(f"{err}; recomputing shard {i}", RuntimeWarning, stacklevel=3)
            return None

    model = bundle.model
    was_training = model.training
    model.to(ranks.device).eval()
    mine = [i for i in range(n_shards) if i % ranks.world_size == ranks.rank]
    done: dict[int, dict[str, torch.Tensor]] = {}
    computed = 0
    started = time.perf_counter()
    try:
        with tqdm.tqdm(total=sum(b - a for a, b in (bounds[i] for i in mine)), unit="pair",
                       desc=f"embed {bundle.name}" + (f" [rank 0/{ranks.world_size}]"
                                                      if ranks.world_size > 1 else ""),
                       disable=not progress or ranks.rank != 0, dynamic_ncols=True) as bar:
            for i in mine:
                tensors = load_valid(i)
                if tensors is None:
                    tensors = _compute_shard(bundle, dataset, *bounds[i], config, bar)
                    write_tensors_atomic(_shard_path(parts, i), tensors, shard_meta(i, tensors))
                    computed += bounds[i][1] - bounds[i][0]
                else:
                    bar.update(bounds[i][1] - bounds[i][0])
                if ranks.rank == 0:
                    done[i] = tensors
            ranks.barrier()
            if ranks.rank == 0:
                for i in range(n_shards):  # other ranks' shards (recomputed here if they do not check)
                    if i not in done:
                        tensors = load_valid(i)
                        if tensors is None:
                            tensors = _compute_shard(bundle, dataset, *bounds[i], config, bar)
                            computed += bounds[i][1] - bounds[i][0]
                        done[i] = tensors
                merged = {name: torch.cat([done[i][name] for i in range(n_shards)]) for name in names}
                seconds = time.perf_counter() - started
                meta = {"model": bundle.name, "identity": bundle.identity, "dataset": type(dataset).__name__,
                        "dataset_fingerprint": dataset.fingerprint, "n": n, "dim": int(merged["image"].shape[1]),
                        "towers": config.towers, "preprocess": describe_preprocess(bundle.preprocess),
                        "context_length": context_length(bundle.tokenizer), "batch_size": config.batch_size,
                        "shard_size": shard_size, "device": str(ranks.device),
                        "torch_threads": torch.get_num_threads() if ranks.device.type == "cpu" else None,
                        "world_size": ranks.world_size, "seconds": round(seconds, 3),
                        "pairs_computed_rank0": computed,
                        "code_version": code_version(__name__)}
                if config.towers:
                    meta["tower_widths"] = [int(merged["image_tower"].shape[1]),
                                            int(merged["text_tower"].shape[1])]
                save_artifact(KIND, key, merged, meta, root)
                _remove_parts(parts)
                del done, merged
            ranks.barrier()
    except NonFiniteError:
        _remove_parts(parts)  # the model gives NaN/Inf: its shards are of no use to a rerun
        raise
    finally:
        model.train(was_training)
    return _from_artifact(key, root)


def _remove_parts(parts: Path) -> None:
    """Remove one resume folder, and ``embeddings.parts/`` itself once empty (another extraction may use it)."""
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()


def _remove_leftovers(key: str, root: Path | None) -> int:
    """On a cache hit: remove the resume shards of ``key`` (any shard size) and stale temporaries of the artifact,
    which a run killed between saving the artifact and cleaning up leaves behind; return how many were removed.
    Best effort: a read-only root is left as it is.
    """
    removed = 0
    with contextlib.suppress(OSError):
        removed += remove_stale_temporaries(KIND, key, root)
    folder = artifact_path(PARTS_KIND, key, root).parent
    if folder.is_dir():
        for parts in folder.iterdir():
            if parts.is_dir() and re.fullmatch(re.escape(key) + r"-s\d+", parts.name):
                _remove_parts(parts)
                removed += 1
        with contextlib.suppress(OSError):
            folder.rmdir()  # once empty
    return removed


def _check_arguments(bundle: object, dataset: object, config: object, root: object) -> Path | None:
    """Raise :class:`InputError` naming the argument of :func:`embed_dataset` that has the wrong type; return
    ``root`` as a ``Path`` (or ``None``).
    """
    if not isinstance(bundle, ModelBundle):
        raise InputError(f"bundle must be a ModelBundle (from load_tiny_clip, load_open_clip or tiny_bundle), got "
                         f"{type(bundle).__name__}.")
    missing = [name for name in ("fingerprint", "image", "caption", "__len__") if not hasattr(dataset, name)]
    if missing:
        raise InputError(f"dataset must be a PairDataset (len(), image(i), caption(i), fingerprint), but "
                         f"{type(dataset).__name__} lacks {', '.join(missing)}; wrap the data in a PairDataset "
                         "such as CsvPairs or WebDatasetPairs.")
    if not isinstance(dataset.fingerprint, str) or not dataset.fingerprint:  # type: ignore[attr-defined]
        raise InputError(f"dataset.fingerprint must be a non-empty str (it keys the cache), got "
                         f"{dataset.fingerprint!r} from {type(dataset).__name__}.")  # type: ignore[attr-defined]
    if not isinstance(config, EmbedConfig):
        raise InputError(f"config must be an EmbedConfig, got {type(config).__name__}; pass "
                         "EmbedConfig(batch_size=..., device=...).")
    if root is None:
        return None
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise InputError(f"root must be a folder path (str or Path) or None, got {root!r}.")
    return Path(root)


def _check_towers(model: nn.Module) -> None:
    """Raise :class:`TowersUnsupportedError` before any work if ``towers=True`` cannot be computed for ``model``."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise TowersUnsupportedError(_NO_VISION_TOWER.format(type(visual).__name__))
    if not isinstance(model, open_clip.CLIP):
        raise TowersUnsupportedError(_NO_TEXT_TOWER.format(type(model).__name__))


def embed_splits(bundle: ModelBundle, datasets: Mapping[str, PairDataset], config: EmbedConfig = EmbedConfig(),
                 root: Path | None = None, progress: bool = True) -> dict[str, Embeddings]:
    """:func:`embed_dataset` on each named split (e.g. ``{"train": ..., "test": ...}``), in order."""
    return {name: embed_dataset(bundle, ds, config, root, progress) for name, ds in datasets.items()}


# ------------------------------------------------------------------------------------------------------- CLI

def _count(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer >= ``minimum`` (argparse names the option in the message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    return parse


def _device_option(text: str) -> str:
    try:
        return parse_device(text, "the device")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the ``embed`` command (``python -m mmlib embed``, ``python -m mmlib.models.embed``)."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--csv", type=Path, help="CSV/TSV with columns 'filepath' and 'title'")
    data.add_argument("--wds", help="webdataset shards: a .tar path or brace pattern ('cc3m/{00000..00331}.tar')")
    parser.add_argument("--image-root", type=Path, help="folder for relative image paths of --csv "
                                                         "(default: the CSV's folder)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tiny-model", type=Path, help="folder written by mmlib.models.clip.save_tiny_clip")
    model.add_argument("--open-clip", metavar="NAME", help="open_clip architecture, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default=None,
                        help="pretrained tag or checkpoint path for --open-clip (default: openai); 'none' for "
                             "random weights")
    defaults = EmbedConfig()
    parser.add_argument("--batch-size", type=_count(1), default=defaults.batch_size,
                        help=f"pairs per forward pass; part of the cache key (default: {defaults.batch_size})")
    parser.add_argument("--shard-size", type=_count(1), default=None,
                        help="pairs per resumable shard, a multiple of --batch-size (default: the smallest "
                             f"multiple >= {DEFAULT_SHARD_PAIRS})")
    parser.add_argument("--num-workers", type=_count(0), default=defaults.num_workers,
                        help="DataLoader worker processes (default: 0, decode in the main process)")
    parser.add_argument("--towers", action="store_true", help="also keep the pre-projection activations")
    parser.add_argument("--device", type=_device_option, default=defaults.device,
                        help="'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps' (default: auto)")
    parser.add_argument("--root", type=Path, help="artifact root (default: $MMLIB_ARTIFACTS or <repo>/artifacts)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (bars are drawn only on a terminal anyway)")


def run(args: argparse.Namespace) -> int:
    """Run the ``embed`` command on parsed options: print the artifact folder (rank 0), return 0.

    Every check that needs no data or model (option combinations, the artifact root) comes before any work.

    Raises
    ------
    InputError
        (or another :class:`~mmlib.core.errors.MmlibError`) naming the option or file that is unusable.
    """
    if args.image_root is not None and args.csv is None:
        raise InputError("--image-root applies to --csv only; drop it, or give the corpus with --csv.")
    if args.image_root is not None and not args.image_root.is_dir():
        raise InputError(f"--image-root {args.image_root} is not a folder; pass the folder that holds the images.")
    if args.pretrained is not None and args.open_clip is None:
        raise InputError("--pretrained applies to --open-clip only (a --tiny-model folder holds its own weights); "
                         "drop it.")
    if args.shard_size is not None and args.shard_size % args.batch_size:
        fit = args.batch_size * math.ceil(args.shard_size / args.batch_size)
        raise InputError(f"--shard-size ({args.shard_size}) must be a multiple of --batch-size ({args.batch_size}):"
                         f" use --shard-size {fit}.")
    if args.tiny_model is not None and not (args.tiny_model / "config.json").is_file():
        raise InputError(f"--tiny-model {args.tiny_model} is not a folder written by save_tiny_clip (no "
                         "config.json); pass such a folder, or use --open-clip.")
    config = EmbedConfig(batch_size=args.batch_size, shard_size=args.shard_size, towers=args.towers,
                         device=args.device, num_workers=args.num_workers)
    resolve_device(config.device, "EmbedConfig.device")
    root = ensure_artifact_root(args.root)  # before loading anything: a bad root fails at once
    from mmlib.data.corpora import CsvPairs, WebDatasetPairs
    from mmlib.models.clip import load_open_clip, load_tiny_clip
    dataset: PairDataset = CsvPairs(args.csv, image_root=args.image_root) if args.csv is not None \
        else WebDatasetPairs(args.wds)
    if args.tiny_model is not None:
        bundle = load_tiny_clip(args.tiny_model)
    else:
        pretrained = args.pretrained if args.pretrained is not None else "openai"
        bundle = load_open_clip(args.open_clip, None if pretrained.lower() in ("none", "random") else pretrained)
    if config.towers:
        _check_towers(bundle.model)
    result = embed_dataset(bundle, dataset, config, root=root, progress=show_progress(args.no_progress))
    import torch.distributed as dist
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        print(result.path, flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python -m mmlib.models.embed`` (same as ``python -m mmlib embed``); returns
    the exit status. A bad option or input exits with status 2 and one ``error:`` line.
    """
    parser = OneLineErrorParser(
        prog="python -m mmlib.models.embed",
        description="Embed an image-caption corpus with a CLIP model into the artifact store (cached, "
                    "resumable; run under torchrun to shard the work). Prints the artifact folder. "
                    "Same as 'python -m mmlib embed'.")
    add_arguments(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
