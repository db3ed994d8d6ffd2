r"""Cached, resumable, torchrun-shardable extraction of CLIP embeddings.

:func:`embed_dataset` turns a :class:`~mmlib.data.protocol.PairDataset` and a :class:`~mmlib.models.clip.ModelBundle`
into :class:`Embeddings`: image and text embeddings ``(n, d)`` (exactly what ``model.encode_image`` /
``model.encode_text`` return, unnormalised) and optionally each tower's pooled activation before the
projection. The result is an artifact (kind ``"embeddings"``) keyed by the model identity, the
preprocessing, the tokenizer's context length, the dataset fingerprint and size, ``towers`` and this module's
code version; a second call loads it without touching the model.

The work is split into shards of ``shard_size`` pairs, each written atomically to its own safetensors file;
an interrupted run resumes from the shards already on disk. Under ``torchrun`` each rank computes the shards
``i`` with ``i % world_size == rank``, rank 0 merges them into the final artifact, and every rank returns
it. The same command line scales from a laptop to a multi-GPU node::

    torchrun --nproc_per_node 8 -m mmlib.models.embed --wds 'cc3m/{00000..00331}.tar' \
        --open-clip ViT-B-32 --pretrained openai --towers
"""

from __future__ import annotations

import argparse
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

import open_clip
import torch
import tqdm
from open_clip.transformer import VisionTransformer, text_global_pool
from safetensors import SafetensorError, safe_open
from torch import nn

from mmlib.core.artifacts import (
    CorruptArtifactError,
    artifact_path,
    code_version,
    load_artifact,
    read_tensors,
    save_artifact,
    stable_hash,
    tensor_fingerprint,
    write_tensors_atomic,
)
from mmlib.core.devices import resolve_device
from mmlib.data.embeddings import Embeddings
from mmlib.data.protocol import DatasetError, PairDataset
from mmlib.models.clip import ModelBundle

__all__ = ["EmbedConfig", "encode_pairs", "embedding_key", "embed_dataset", "embed_splits", "context_length", "main"]

KIND = "embeddings"
PARTS_KIND = "embeddings.parts"


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """How to run an extraction (none of these fields but ``towers`` changes the result or the key).

    Attributes
    ----------
    batch_size : int
        Pairs per forward pass.
    shard_size : int
        Pairs per resumable shard file (and per torchrun work unit).
    towers : bool
        Also keep each tower's pooled activation before the projection.
    device : str
        ``"auto"`` (cuda, else mps, else cpu) or a torch device string; the model is moved there.
    num_workers : int
        DataLoader worker processes that decode and preprocess images (0: in the main process; > 0 needs a
        picklable dataset on platforms that spawn workers).
    """

    batch_size: int = 256
    shard_size: int = 4096
    towers: bool = False
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


# --------------------------------------------------------------------------------------------------- one batch

def _vision_with_tower(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (b, w_img), projected (b, d))`` in one pass, as ``VisionTransformer.forward`` computes them."""
    if not isinstance(visual, VisionTransformer):
        raise NotImplementedError(
            f"towers=True needs an open_clip VisionTransformer image tower, not {type(visual).__name__} "
            "(ResNet and timm towers fold the projection into their pooling); use towers=False.")
    x = visual._embeds(images)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    return pooled, (pooled @ visual.proj if visual.proj is not None else pooled)


def _text_with_tower(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (b, w_txt), projected (b, d))``: ``open_clip.CLIP.encode_text`` split at the projection."""
    if not isinstance(model, open_clip.CLIP):
        raise NotImplementedError(
            f"towers=True needs an open_clip.CLIP text tower, not {type(model).__name__} (e.g. CustomTextCLIP "
            "wraps a Hugging Face or custom text encoder); use towers=False.")
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


def encode_pairs(bundle: ModelBundle, images: torch.Tensor, tokens: torch.Tensor,
                 towers: bool = False) -> dict[str, torch.Tensor]:
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

    Returns
    -------
    dict of str to Tensor
        On the CPU, float32: ``"image"`` and ``"text"`` ``(b, d)``; with ``towers`` also ``"image_tower"``
        ``(b, w_img)`` and ``"text_tower"`` ``(b, w_txt)``, such that ``image == image_tower @ visual.proj``.

    Raises
    ------
    NotImplementedError
        with ``towers=True`` for a model that is not an open_clip ``CLIP`` with a ViT image tower.
    """
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
    return {k: v.float().cpu() for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- cache keys

def describe_preprocess(preprocess: Callable) -> str:
    """A stable description of an image transform (its repr, without memory addresses)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def context_length(tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> int:
    """The number of tokens ``tokenizer`` returns per text (its ``context_length``, or measured on ``""``)."""
    length = getattr(tokenizer, "context_length", None)
    return int(length) if length is not None else int(tokenizer([""]).shape[-1])


def embedding_key(bundle: ModelBundle, dataset: PairDataset, towers: bool = False) -> str:
    """The artifact key of ``bundle`` on ``dataset``: identity, preprocessing, context length, data, code.

    Batch size, shard size and device are deliberately not part of it.
    """
    return stable_hash("embeddings", bundle.identity, describe_preprocess(bundle.preprocess),
                       context_length(bundle.tokenizer), dataset.fingerprint, len(dataset), bool(towers),
                       code_version(__name__))


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
        dev = resolve_device(device)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(0, 1, dev)
        import torch.distributed as dist
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed; "
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
        return self.preprocess(self.dataset.image(self.start + i)), self.dataset.caption(self.start + i)


class _Collate:
    """Stack images ``(b, 3, H, W)`` and tokenize captions ``(b, L)``."""

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([img for img, _ in batch]), self.tokenizer([cap for _, cap in batch])


def _compute_shard(bundle: ModelBundle, dataset: PairDataset, start: int, stop: int, config: EmbedConfig,
                   bar: tqdm.tqdm) -> dict[str, torch.Tensor]:
    """Embed rows ``start..stop`` in batches of ``config.batch_size``."""
    loader = torch.utils.data.DataLoader(_Rows(dataset, bundle.preprocess, start, stop),
                                         batch_size=config.batch_size, shuffle=False,
                                         num_workers=config.num_workers, collate_fn=_Collate(bundle.tokenizer))
    chunks: dict[str, list[torch.Tensor]] = {}
    for images, tokens in loader:
        for name, value in encode_pairs(bundle, images, tokens, config.towers).items():
            chunks.setdefault(name, []).append(value)
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
    art = load_artifact(KIND, key, root)
    t = art.tensors
    return Embeddings(image=t["image"], text=t["text"], key=key, meta=art.meta,
                      image_tower=t.get("image_tower"), text_tower=t.get("text_tower"), path=art.path)


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
    A cached result is returned without touching the model. Otherwise shards of ``config.shard_size`` pairs
    are written to ``<root>/embeddings.parts/<key>-s<shard_size>/`` (valid shards from an interrupted run
    are reused; corrupt ones are recomputed with a ``RuntimeWarning``), merged into the artifact
    ``<root>/embeddings/<key>/`` and removed. With ``WORLD_SIZE > 1`` (torchrun), torch.distributed is
    initialised if needed and left initialised; rank ``r`` computes the shards ``i % world_size == r``,
    rank 0 merges, and every rank returns the merged result.

    Raises
    ------
    DatasetError
        if the dataset is empty or an image cannot be read.
    """
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{dataset!r} has no pairs: nothing to embed. Check the data source.")
    key = embedding_key(bundle, dataset, config.towers)
    ranks = _Ranks.from_env(config.device)
    cached = _try_load(key, root, warn=ranks.rank == 0)
    if ranks.all_true(cached is not None):
        return cached  # type: ignore[return-value]
    if ranks.rank == 0:
        shutil.rmtree(artifact_path(KIND, key, root), ignore_errors=True)  # a corrupt one, if any

    names = tensor_names(config.towers)
    parts = artifact_path(PARTS_KIND, f"{key}-s{config.shard_size}", root)
    n_shards = math.ceil(n / config.shard_size)
    bounds = [(i * config.shard_size, min(n, (i + 1) * config.shard_size)) for i in range(n_shards)]

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
                        "shard_size": config.shard_size, "device": str(ranks.device),
                        "world_size": ranks.world_size, "seconds": round(seconds, 3),
                        "pairs_computed_rank0": computed,
                        "code_version": code_version(__name__)}
                if config.towers:
                    meta["tower_widths"] = [int(merged["image_tower"].shape[1]),
                                            int(merged["text_tower"].shape[1])]
                save_artifact(KIND, key, merged, meta, root)
                shutil.rmtree(parts, ignore_errors=True)
                try:
                    parts.parent.rmdir()  # only if no other extraction is in progress
                except OSError:
                    pass
                del done, merged
            ranks.barrier()
    finally:
        model.train(was_training)
    return _from_artifact(key, root)


def embed_splits(bundle: ModelBundle, datasets: Mapping[str, PairDataset], config: EmbedConfig = EmbedConfig(),
                 root: Path | None = None, progress: bool = True) -> dict[str, Embeddings]:
    """:func:`embed_dataset` on each named split (e.g. ``{"train": ..., "test": ...}``), in order."""
    return {name: embed_dataset(bundle, ds, config, root, progress) for name, ds in datasets.items()}


# ------------------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmlib.models.embed",
        description="Embed an image-caption corpus with a CLIP model into the artifact store (cached, "
                    "resumable; run under torchrun to shard the work). Prints the artifact folder.")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--csv", type=Path, help="CSV/TSV with columns 'filepath' and 'title'")
    data.add_argument("--wds", help="webdataset shards: a .tar path or brace pattern ('cc3m/{00000..00331}.tar')")
    parser.add_argument("--image-root", type=Path, help="folder for relative image paths of --csv "
                                                         "(default: the CSV's folder)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tiny-model", type=Path, help="folder written by mmlib.models.clip.save_tiny_clip")
    model.add_argument("--open-clip", metavar="NAME", help="open_clip architecture, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default="openai",
                        help="pretrained tag or checkpoint path for --open-clip; 'none' for random weights")
    defaults = EmbedConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--towers", action="store_true", help="also keep the pre-projection activations")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--root", type=Path, help="artifact root (default: $MMLIB_ARTIFACTS or <repo>/artifacts)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.image_root is not None and args.csv is None:
        parser.error("--image-root applies to --csv only")
    from mmlib.data.corpora import CsvPairs, WebDatasetPairs
    from mmlib.models.clip import WeightsUnavailableError, load_open_clip, load_tiny_clip
    try:
        dataset: PairDataset = CsvPairs(args.csv, image_root=args.image_root) if args.csv is not None \
            else WebDatasetPairs(args.wds)
        if args.tiny_model is not None:
            if not (args.tiny_model / "config.json").is_file():
                raise FileNotFoundError(f"{args.tiny_model} is not a folder written by save_tiny_clip "
                                        "(no config.json)")
            bundle = load_tiny_clip(args.tiny_model)
        else:
            pretrained = None if args.pretrained.lower() in ("none", "random") else args.pretrained
            bundle = load_open_clip(args.open_clip, pretrained)
        config = EmbedConfig(batch_size=args.batch_size, shard_size=args.shard_size, towers=args.towers,
                             device=args.device, num_workers=args.num_workers)
        result = embed_dataset(bundle, dataset, config, root=args.root, progress=not args.no_progress)
    except (DatasetError, WeightsUnavailableError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    import torch.distributed as dist
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        print(result.path, flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
