"""The ``paper`` profile's budget: per chapter, the corpus it needs and its GPU time on a T4 and on an A100.

Every number this module prints is computed when it runs (offline, in well under a minute on two CPU cores):

1. **FLOPs per unit of work are counted, not assumed.** Each expensive kind of work (a :class:`Probe`: a ViT-B-32
   image forward, one PGD step, one SAE training step, ...) is run here on the CPU, on the real architecture at
   random weights (``load_open_clip("ViT-B-32", "random")``, the real :func:`~mmlib.feature_maps.sae.train_sae`,
   :func:`~mmlib.case_studies.adversarial.zero_shot_attack`, ...), under ``torch.utils.flop_counter.FlopCounterMode``
   at two or three small sizes (batch or pairs). The count must be linear in the size (checked: a probe whose count
   is not raises :class:`NonLinearCountError`); FLOPs per unit is the slope. Models whose weights are not available
   offline or which are too large to run here (ViT-L-14, the UNet and VAE of Stable unCLIP) are counted the same way
   on PyTorch's ``meta`` device: the real module classes and shapes, no weights, no arithmetic. The ViT-B-32 image
   forward is counted both ways, and the agreement is reported (:attr:`Measurements.meta_agreement`).
2. **GPU seconds = FLOPs / (peak FLOP/s x** :data:`UTILISATION` **)**, with the datasheet peaks of :data:`PEAK_FLOPS`
   for the precision the code actually runs in (:func:`code_precision`: float32 weights, no autocast anywhere in
   mmlib; on an A100 matrix products stay FP32 and convolutions use TF32 where torch allows it, read from torch's
   settings at run time).
3. **CPU preprocessing is measured here.** On Colab (2 vCPUs, like the machine that builds the book) decoding the
   images can bound an extraction. The chapters embed with ``EmbedConfig``'s default ``num_workers=0``: the main
   process decodes a batch, then the GPU embeds it and the result is copied back (a synchronisation), so the two
   take turns and their times *add* (``overlap=False``); with DataLoader workers they would overlap (``max``).
4. **Units at the paper profile's sizes** come from :func:`mmlib.profiles.get_profile` (``"paper"``), the chapters'
   own parameters and constants (read from the notebooks at run time by :func:`notebook_values`, so the table follows
   any edit), and the corpus size, a parameter (default :data:`DEFAULT_PAIRS`).
5. **Artifacts are reused.** Every step is counted once, in the first chapter (in book order) that computes it; the
   later chapters that load it from the artifact store are listed in :attr:`Step.needed_by`, and
   :func:`chapter_totals` also gives what each chapter costs alone, on an empty artifact store.

Assumptions (each one also stated next to the numbers in :func:`budget_markdown`):

* ``FlopCounterMode`` counts matrix products, convolutions and attention; elementwise work (GELU, LayerNorm,
  softmax, optimiser updates, TopK selection) is left out. It is memory-bound, and :data:`UTILISATION` stands for it.
  The fused multi-head-attention fast path and the fused SDPA kernels of the CPU are switched off while counting
  (they hide their matrix products from the counter); the arithmetic is the same.
* :data:`UTILISATION` is one number for every step and both GPUs: a planning figure, not a measurement.
* Decoding is timed on this machine, one process, on synthetic JPEGs of the corpus' size (:data:`CC3M_IMAGE_SIZE`,
  quality :data:`JPEG_QUALITY`): smooth colour fields with noise. A Colab vCPU is assumed as fast as one core here.
* Steps the code runs on the CPU (chapter 03's sparsity sweep) are timed with the measured CPU rate of the same
  training step here, on one thread (the code's default).
* Analyses on stored embeddings (MDS, categories, removals, SpLiCE's solver, bootstraps) are not counted: they run
  on the CPU on ``(n, d)`` matrices and take seconds to minutes whatever the GPU.
* Chapter 07 trains one defence adapter per map and selection: it assumes every map has a seed whose three
  categories are all non-empty (:func:`~mmlib.case_studies.adversarial.first_complete_seed`), an upper bound.
* Chapter 08 generates with Stable unCLIP in float32 at its default 768 x 768 (a 96 x 96 latent), with
  classifier-free guidance (two UNet evaluations per step) when ``GUIDANCE > 1``. Its UNet is Stable Diffusion
  2.x's (:data:`UNCLIP_UNET`); its parameter count is checked against the published weight file
  (:data:`UNCLIP_UNET_FILE_BYTES`). The prompt's text encoder (once per batch) is left out.

Command line::

    python -m mmlib.reporting.gpu_budget --out book/_generated/gpu_budget [--pairs 100000]

writes ``gpu_budget.md`` (MyST Markdown to include in a page) and ``gpu_budget.json`` (every number).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import functools
import json
import logging
import math
import numbers
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from mmlib.core.console import OneLineErrorParser, run_command
from mmlib.core.devices import torch_threads
from mmlib.core.errors import InputError, InputNotFoundError, MmlibError
from mmlib.core.paths import NOTEBOOKS_DIR

__all__ = [
    "A100", "CC3M_IMAGE_SIZE", "CELEBA_IMAGE_SIZE", "CELEBA_PARTITIONS", "DEFAULT_PAIRS", "GPUS", "JPEG_QUALITY",
    "Measurement", "Measurements", "NonLinearCountError", "NotebookConstantError", "PEAK_FLOPS", "PROBES", "Probe",
    "Step", "T4", "UNCLIP_UNET", "UNCLIP_UNET_FILE_BYTES", "UNCLIP_VAE", "UTILISATION", "budget_markdown",
    "budget_table", "chapter_totals", "code_precision", "gpu_seconds", "main", "measure", "measure_decoding",
    "measure_probe", "notebook_values", "paper_steps", "write_budget",
]

# ------------------------------------------------------------------------------------------------- constants
T4, A100 = "T4", "A100"
#: The GPUs of the table (Colab's two usual GPU runtimes).
GPUS = (T4, A100)
#: Peak dense throughput in FLOP/s by GPU and precision, from NVIDIA's datasheets: "NVIDIA T4 Tensor Core GPU"
#: (8.1 TFLOPS single precision, 65 TFLOPS mixed precision FP16/FP32) and "NVIDIA A100 Tensor Core GPU" (19.5 TFLOPS
#: FP32, 156 TFLOPS TF32 Tensor Core, 312 TFLOPS BF16 and FP16 Tensor Core; dense, without structured sparsity).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    T4: {"fp32": 8.1e12, "fp16": 65e12},
    A100: {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
}
#: Share of the peak a step sustains (one planning figure for every step and GPU; covers the elementwise work the
#: FLOP counter leaves out, kernel launches and memory traffic).
UTILISATION = 0.4
#: Default corpus size: the CC3M subset the Colab page suggests (the head of the TSV, 100,000 rows).
DEFAULT_PAIRS = 100_000
#: Side of the corpus' images: the Colab page's ``img2dataset ... --image_size 256`` (its default resize mode,
#: "border", pads to a square).
CC3M_IMAGE_SIZE = 256
#: img2dataset's default JPEG quality (``encode_quality``).
JPEG_QUALITY = 95
#: CelebA's aligned and cropped faces (``img_align_celeba``), width x height.
CELEBA_IMAGE_SIZE = (178, 218)
#: Faces per CelebA partition (``list_eval_partition.txt``: 162,770 / 19,867 / 19,962; ``None``: all 202,599).
CELEBA_PARTITIONS: dict[str | None, int] = {"train": 162_770, "val": 19_867, "test": 19_962, None: 202_599}
#: Stable unCLIP's UNet: Stable Diffusion 2.x's (``v2-inference-v.yaml``: 320 channels x (1, 2, 4, 4), two
#: ResNet blocks per level, 64-channel attention heads, 1024-wide OpenCLIP-H text context, linear projections) with the
#: unCLIP image-embedding input (a projection class embedding of 2 x 768: the ViT-L-14 embedding and its noise
#: level), at the default 96 x 96 latent (768 px), as diffusers' ``UNet2DConditionModel`` arguments.
UNCLIP_UNET: dict[str, Any] = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    class_embed_type="projection", projection_class_embeddings_input_dim=2 * 768)
#: Its VAE (Stable Diffusion's ``AutoencoderKL``: 128 x (1, 2, 4, 4) channels, 4 latent channels, factor 8).
UNCLIP_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
#: Size of ``stabilityai/stable-diffusion-2-1-unclip-small``'s ``unet/diffusion_pytorch_model.safetensors`` on the
#: Hugging Face hub (3.48 GB, float32): the published size that :data:`UNCLIP_UNET`'s parameter count is checked on.
UNCLIP_UNET_FILE_BYTES = 3.48e9
#: Largest relative deviation of a count from a straight line through the origin (FLOPs linear in the size).
LINEARITY_TOLERANCE = 1e-3
#: Images decoded per kind when timing the CPU preprocessing (after one warm-up image).
DECODE_SAMPLES = 12


class NonLinearCountError(MmlibError, RuntimeError):
    """A probe's FLOP count is not proportional to its size: FLOPs per unit cannot be extrapolated from it."""


class NotebookConstantError(InputError):
    """A chapter no longer assigns, at the top level of a code cell, a literal constant the budget reads."""


# ------------------------------------------------------------------------------------------ the notebooks' sizes
_UNKNOWN = object()
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b}


def _literal(node: ast.expr, known: Mapping[str, Any]) -> Any:
    """The value of ``node`` if it is a literal, a known name, arithmetic on numbers, a tuple of those, the paper
    branch of ``x if <tiny> else y``, or a call with keyword arguments only (-> those that are such values); else
    ``_UNKNOWN``.
    """
    with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.literal_eval(node)
    if isinstance(node, ast.Name):
        return known.get(node.id, _UNKNOWN)
    if isinstance(node, ast.IfExp) and "tiny" in ast.unparse(node.test).lower():
        return _literal(node.orelse, known)  # the paper profile's branch
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left, known), _literal(node.right, known)
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (left, right)):
            with contextlib.suppress(ZeroDivisionError):
                return _ARITHMETIC[type(node.op)](left, right)
        return _UNKNOWN
    if isinstance(node, ast.Tuple):
        items = [_literal(e, known) for e in node.elts]
        return _UNKNOWN if any(v is _UNKNOWN for v in items) else tuple(items)
    if isinstance(node, ast.Call) and node.keywords and not node.args:  # a config built from keywords
        kwargs = {kw.arg: _literal(kw.value, known) for kw in node.keywords if kw.arg is not None}
        return {k: v for k, v in kwargs.items() if v is not _UNKNOWN}
    return _UNKNOWN


def _bind(target: ast.expr, node: ast.expr, values: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        value = _literal(node, values)
        if value is _UNKNOWN:
            values.pop(target.id, None)  # reassigned to something that is not a literal
        else:
            values[target.id] = value
    elif isinstance(target, ast.Tuple) and isinstance(node, ast.Tuple) and len(target.elts) == len(node.elts):
        for t, v in zip(target.elts, node.elts):
            _bind(t, v, values)


def notebook_values(path: str | os.PathLike) -> dict[str, Any]:
    """The literal constants a notebook assigns at the top level of its code cells, in execution order.

    Understands ``NAME = literal``, ``A, B = 1, 2``, arithmetic on numbers (``1 / 3``), names assigned before (e.g.
    a ``parameters`` cell's ``n_eval``), ``x if P.is_tiny else y`` (the paper profile's branch: ``y``) and calls
    (``DEF = DefenceConfig(batch_size=32, ...)`` -> ``{"batch_size": 32, ...}``). Anything else is left out.

    Raises
    ------
    InputNotFoundError
        if ``path`` is not a file; :class:`InputError` if it is not a notebook (JSON with ``cells``).
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise InputNotFoundError(f"notebook {path} does not exist; pass the repository's notebooks/ folder")
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a Jupyter notebook ({type(err).__name__}: {err})") from None
    values: dict[str, Any] = {}
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                _bind(statement.targets[0], statement.value, values)
    return values


class _Notebooks:
    """The chapters' notebooks (``NN_name.ipynb``) and their constants, read on demand."""

    def __init__(self, folder: Path) -> None:
        folder = Path(os.fspath(folder))
        self.paths = {p.stem: p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}
        if not self.paths:
            raise InputNotFoundError(f"no chapter notebooks (NN_*.ipynb) in {folder}; pass the repository's "
                                     "notebooks/ folder")
        self._values: dict[str, dict[str, Any]] = {}

    def chapter(self, number: str) -> str:
        """The notebook stem of chapter ``number`` (``"07"`` -> ``"07_adversarial"``)."""
        found = [stem for stem in self.paths if stem.startswith(f"{number}_")]
        if len(found) != 1:
            raise InputNotFoundError(f"expected one notebook {number}_*.ipynb, found {found or 'none'}")
        return found[0]

    def get(self, number: str, name: str) -> Any:
        """Constant ``name`` of chapter ``number`` (:class:`NotebookConstantError` if it is not a literal there)."""
        stem = self.chapter(number)
        if stem not in self._values:
            self._values[stem] = notebook_values(self.paths[stem])
        values = self._values[stem]
        if name not in values:
            raise NotebookConstantError(
                f"notebooks/{stem}.ipynb no longer assigns {name} a literal at the top level of a code cell; the GPU "
                "budget reads it (mmlib/reporting/gpu_budget.py): restore it or update the budget's steps")
        return values[name]


# ------------------------------------------------------------------------------------------------- counting
class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: everything is counted under ``"Global"`` only."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Counter(FlopCounterMode):
    """``FlopCounterMode`` without its per-module breakdown, whose backward hooks make ``torch.autograd.grad`` with
    respect to an input fail (as PGD computes it); the totals are the same.
    """

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


@contextlib.contextmanager
def _counting() -> Iterator[FlopCounterMode]:
    """A FLOP counter under which every attention shows its matrix products: the fused multi-head-attention fast
    path (taken without autograd) and the fused SDPA kernels of the CPU hide them from ``FlopCounterMode``; the
    math backend computes the same products in plain ``bmm``/``mm``.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), _Counter() as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _conv_flops(counter: FlopCounterMode) -> float:
    """FLOPs of the convolutions (forward and backward) among those ``counter`` counted."""
    counts = counter.get_flop_counts().get("Global", {})
    return float(sum(v for op, v in counts.items() if "convolution" in str(op)))


@dataclasses.dataclass(frozen=True)
class Probe:
    """A kind of expensive work whose FLOPs per unit are counted at small sizes.

    Attributes
    ----------
    name : str
        Key in :data:`PROBES` and in :attr:`Step.work`.
    unit : str
        What one unit is, e.g. ``"image"`` or ``"pair-epoch"`` (one pair seen once by a training run).
    what : str
        The code that runs, in words.
    sizes : tuple of int
        The sizes (in units) it is counted at (at least two).
    counted_on : {"cpu", "meta"}
        ``"cpu"``: run on real random-weight tensors (and timed); ``"meta"``: shapes only (not timed).
    run : callable
        ``run(lab, size)`` does the work of ``size`` units (:class:`_Lab` holds the models).
    needs : tuple of str
        The models (attributes of :class:`_Lab`) built before counting, so that building them is not counted.
    """

    name: str
    unit: str
    what: str
    sizes: tuple[int, ...]
    counted_on: str
    run: Callable[[_Lab, int], Any]
    needs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A probe's FLOP counts at its sizes.

    Attributes
    ----------
    probe, unit, counted_on : str
    sizes : tuple of int
    flops : tuple of float
        FLOPs counted at each size.
    conv_flops : tuple of float
        Of which convolutions (they may run in TF32 on an A100, see :func:`code_precision`).
    seconds : tuple of float
        Wall time of each run here (``counted_on == "cpu"``; 0 on ``meta``).
    """

    probe: str
    unit: str
    counted_on: str
    sizes: tuple[int, ...]
    flops: tuple[float, ...]
    conv_flops: tuple[float, ...]
    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.sizes)
        if n < 2 or not (len(self.flops) == len(self.conv_flops) == len(self.seconds) == n):
            raise InputError(f"Measurement {self.probe!r}: give at least two sizes, and one count, convolution count "
                             f"and time per size; got sizes {self.sizes}, flops {self.flops}")
        if len(set(self.sizes)) != n or min(self.sizes) < 1:
            raise InputError(f"Measurement {self.probe!r}: sizes must be distinct positive integers, got "
                             f"{self.sizes}")

    @property
    def flops_per_unit(self) -> float:
        """The slope of FLOPs against size (least squares through the origin)."""
        s = np.asarray(self.sizes, float)
        return float(s @ np.asarray(self.flops, float) / (s @ s))

    @property
    def conv_share(self) -> float:
        """Share of the FLOPs in convolutions."""
        total = sum(self.flops)
        return float(sum(self.conv_flops) / total) if total else 0.0

    @property
    def deviation(self) -> float:
        """Largest relative deviation of a count from ``size x flops_per_unit`` (0: exactly linear)."""
        slope = self.flops_per_unit
        return max(abs(f - slope * s) / max(f, 1.0) for s, f in zip(self.sizes, self.flops))

    @property
    def cpu_seconds_per_unit(self) -> float:
        """Wall seconds per unit here: the slope of time against size (fixed costs left out), or, if the timings
        are too noisy for a positive slope, all runs pooled.
        """
        slope = float(np.polyfit(np.asarray(self.sizes, float), np.asarray(self.seconds, float), 1)[0])
        return slope if slope > 0 else float(sum(self.seconds) / sum(self.sizes))


# ------------------------------------------------------------------------------------------------------- models
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence log records up to WARNING (open_clip announces that random weights are random)."""
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(before)


class _Lab:
    """The models the probes run on, built on first use: the paper profile's open_clip model at random weights
    (CPU), ViT-L-14 and Stable unCLIP's UNet and VAE on the meta device, and a paper-sized SAE map.
    """

    def __init__(self, notebooks: _Notebooks) -> None:
        self.notebooks = notebooks

    @functools.cached_property
    def profile(self) -> Any:
        from mmlib.profiles import get_profile
        return get_profile("paper")

    @functools.cached_property
    def bundle(self) -> Any:
        from mmlib.models.clip import RANDOM_WEIGHTS, load_open_clip
        with torch.random.fork_rng(devices=[]), _quiet():
            torch.manual_seed(0)
            return load_open_clip(self.profile.open_clip_model, RANDOM_WEIGHTS)

    @functools.cached_property
    def image_size(self) -> tuple[int, int]:
        size = self.bundle.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def images(self, n: int) -> torch.Tensor:
        """``n`` random pixel images in [0, 1] at the model's input size."""
        g = torch.Generator().manual_seed(n)
        return torch.rand((n, 3, *self.image_size), generator=g)

    @functools.cached_property
    def unclip_clip(self) -> Any:
        """Stable unCLIP's CLIP (open_clip ``ViT-L-14``), on the meta device."""
        import open_clip

        from mmlib.case_studies.t2i.unclip import UNCLIP_CLIP
        with _quiet():
            return open_clip.create_model(UNCLIP_CLIP[0], pretrained=None, device="meta")

    @functools.cached_property
    def unet(self) -> Any:
        from diffusers import UNet2DConditionModel
        with torch.device("meta"):
            return UNet2DConditionModel(**UNCLIP_UNET)

    @functools.cached_property
    def vae(self) -> Any:
        from diffusers import AutoencoderKL
        with torch.device("meta"):
            return AutoencoderKL(**UNCLIP_VAE)

    @functools.cached_property
    def fmap(self) -> Any:
        """An SAE map of the paper's size (one training step on random pairs): the defence's frozen map."""
        from mmlib.feature_maps.sae import train_sae
        d = self.bundle.embed_dim
        g = torch.Generator().manual_seed(1)
        pairs = torch.randn(2, self.profile.sae.batch_size, d, generator=g)
        config = dataclasses.replace(self.profile.sae, epochs=1, resample_at=())
        return train_sae((pairs[0], pairs[1]), config, progress=False, threads=1)[0]


def _pairs(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 7919 + d)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _train_map(lab: _Lab, n: int, kind: str, d: int | None = None) -> None:
    """One epoch of the paper profile's SAE (``kind="sae"``; resampling off), TopK SAE (the largest ``k`` of chapter
    02's sweep) or NCL head on ``n`` random pairs of width ``d`` (default: the model's).
    """
    from mmlib.feature_maps.ncl import train_ncl
    from mmlib.feature_maps.sae import train_sae
    P = lab.profile
    pairs = _pairs(n, d or lab.bundle.embed_dim)
    if kind == "ncl":
        train_ncl(pairs, dataclasses.replace(P.ncl, epochs=1), progress=False, threads=1)
        return
    config = dataclasses.replace(P.sae, epochs=1, resample_at=())
    if kind == "topk":
        config = dataclasses.replace(config, kind="topk", k=max(lab.notebooks.get("02", "TOPK_SWEEP")))
    train_sae(pairs, config, progress=False, threads=1)


def _pgd(lab: _Lab, n: int) -> None:
    """One PGD step (chapter 07's zero-shot attack) on ``n`` images."""
    from mmlib.case_studies import adversarial as adv
    d = lab.bundle.embed_dim
    classes = torch.randn(4, d, generator=torch.Generator().manual_seed(2))
    adv.zero_shot_attack(adv.image_encoder(lab.bundle), lab.images(n), np.zeros(n, dtype=int), classes,
                         adv.PGDConfig(eps=4 / 255, steps=1))


def _adapter(lab: _Lab, n: int) -> None:
    """One training step of chapter 07's defence adapter on a batch of ``n`` images, without its inner attack
    (``eps=0`` skips it; the attack's steps are counted by the ``vitb32_pgd`` probe).
    """
    from mmlib.case_studies import adversarial as adv
    defence = lab.notebooks.get("07", "DEF")
    fields = {f.name for f in dataclasses.fields(adv.DefenceConfig)}
    config = adv.DefenceConfig(**{**{k: v for k, v in defence.items() if k in fields}, "eps": 0.0, "steps": 1,
                                  "batch_size": n})
    mask = np.zeros(lab.fmap.n_features, dtype=bool)
    mask[::2] = True
    adv.train_alignment_adapter(lab.bundle, lab.fmap, lab.images(n), mask, config)


def _decompose(lab: _Lab, n: int) -> None:
    from mmlib.companions import clip_interpret as ci
    ci.decompose_images(lab.bundle, (lab.images(n) - 0.5) / 0.25, batch_size=n)


def _unet(lab: _Lab, n: int) -> None:
    latent = UNCLIP_UNET["sample_size"]
    unet = lab.unet
    unet(torch.empty(n, UNCLIP_UNET["in_channels"], latent, latent, device="meta"),
         torch.zeros(n, device="meta"),
         encoder_hidden_states=torch.empty(n, 77, UNCLIP_UNET["cross_attention_dim"], device="meta"),
         class_labels=torch.empty(n, UNCLIP_UNET["projection_class_embeddings_input_dim"], device="meta"))


def _vae_decode(lab: _Lab, n: int) -> None:
    latent = UNCLIP_UNET["sample_size"]
    lab.vae.decode(torch.empty(n, UNCLIP_VAE["latent_channels"], latent, latent, device="meta"))


def _meta_clip_image(lab: _Lab, n: int) -> None:
    lab.unclip_clip.encode_image(torch.empty(n, 3, *_visual_size(lab.unclip_clip), device="meta"))


def _meta_clip_text(lab: _Lab, n: int) -> None:
    model = lab.unclip_clip
    model.encode_text(torch.zeros(n, model.context_length, dtype=torch.long, device="meta"))


def _visual_size(model: Any) -> tuple[int, int]:
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _captions(n: int) -> list[str]:
    return [f"a photo of a red dog number {i} running along the beach" for i in range(n)]


#: Every probe, by name.
PROBES: dict[str, Probe] = {p.name: p for p in (
    Probe("vitb32_image", "image", "encode_image of the paper model at random weights", (1, 2), "cpu",
          lambda lab, n: lab.bundle.model.encode_image(lab.images(n)), ("bundle",)),
    Probe("vitb32_text", "caption", "encode_text of the paper model (full context length)", (1, 2, 4), "cpu",
          lambda lab, n: lab.bundle.model.encode_text(lab.bundle.tokenizer(_captions(n))), ("bundle",)),
    Probe("vitb32_pgd", "image x PGD step", "zero_shot_attack, one step: image forward and backward to the pixels",
          (1, 2), "cpu", _pgd, ("bundle",)),
    Probe("vitb32_adapter", "image x step", "train_alignment_adapter (chapter 07's DEF) without its inner attack: "
          "frozen forward, adapted forwards on the clean and adversarial images, backward into the last block",
          (1, 2), "cpu", _adapter, ("bundle", "fmap")),
    Probe("vitb32_decompose", "image", "decompose_images: the image tower split into per-layer, per-head terms",
          (1, 2), "cpu", _decompose, ("bundle",)),
    Probe("sae", "pair-epoch", "train_sae, the paper profile's SAE (relu_l1) on d-wide pairs", (256, 512), "cpu",
          lambda lab, n: _train_map(lab, n, "sae"), ("bundle",)),
    Probe("sae_topk", "pair-epoch", "train_sae, TopK at chapter 02's largest k", (256, 512), "cpu",
          lambda lab, n: _train_map(lab, n, "topk"), ("bundle",)),
    Probe("ncl", "pair-epoch", "train_ncl, the paper profile's NCL head", (256, 512), "cpu",
          lambda lab, n: _train_map(lab, n, "ncl"), ("bundle",)),
    Probe("sae_vitl14", "pair-epoch", "train_sae on ViT-L-14-wide pairs (chapter 08)", (256, 512), "cpu",
          lambda lab, n: _train_map(lab, n, "sae", d=int(lab.unclip_clip.text_projection.shape[1])),
          ("bundle", "unclip_clip")),
    Probe("vitl14_image", "image", "encode_image of open_clip ViT-L-14 (Stable unCLIP's CLIP)", (1, 2), "meta",
          _meta_clip_image, ("unclip_clip",)),
    Probe("vitl14_text", "caption", "encode_text of open_clip ViT-L-14", (1, 2), "meta", _meta_clip_text,
          ("unclip_clip",)),
    Probe("unet", "UNet evaluation", "Stable unCLIP's UNet on one 96 x 96 latent", (1, 2), "meta", _unet,
          ("unet",)),
    Probe("vae_decode", "image", "Stable unCLIP's VAE decoder, one 768 x 768 image", (1, 2), "meta", _vae_decode,
          ("vae",)),
)}


def measure_probe(name: str, lab: _Lab | None = None, sizes: Sequence[int] | None = None,
                  notebooks: str | os.PathLike = NOTEBOOKS_DIR) -> Measurement:
    """Count the FLOPs of probe ``name`` at ``sizes`` (default: the probe's) and check they are linear in the size.

    Runs on one torch thread, without autograd's side effects on the models (probes that need gradients ask for
    them). ``lab`` shares the models between probes (default: a new one).

    Raises
    ------
    InputError
        for an unknown probe or bad sizes.
    NonLinearCountError
        if a count deviates from ``size x flops_per_unit`` by more than :data:`LINEARITY_TOLERANCE`.
    """
    if name not in PROBES:
        raise InputError(f"unknown probe {name!r}; choose from {sorted(PROBES)}")
    probe = PROBES[name]
    sizes = tuple(probe.sizes if sizes is None else sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        raise InputError(f"probe {name!r}: give at least two positive integer sizes, got {sizes}")
    lab = lab or _Lab(_Notebooks(Path(os.fspath(notebooks))))
    flops, convs, seconds = [], [], []
    with torch_threads(1):
        for attr in probe.needs:
            getattr(lab, attr)
        for size in sizes:
            with _counting() as counter:
                started = time.perf_counter()
                probe.run(lab, int(size))
                elapsed = time.perf_counter() - started
            flops.append(float(counter.get_total_flops()))
            convs.append(_conv_flops(counter))
            seconds.append(elapsed if probe.counted_on == "cpu" else 0.0)
    result = Measurement(name, probe.unit, probe.counted_on, tuple(int(s) for s in sizes), tuple(flops),
                         tuple(convs), tuple(seconds))
    if not result.flops_per_unit > 0 or result.deviation > LINEARITY_TOLERANCE:
        raise NonLinearCountError(f"probe {name!r}: FLOPs {flops} at sizes {sizes} are not proportional to the size "
                                  f"(deviation {result.deviation:.2e} > {LINEARITY_TOLERANCE:g}); its cost per unit "
                                  "cannot be extrapolated")
    return result


# ------------------------------------------------------------------------------------------------ CPU decoding
def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photograph-like test image: a smooth random colour field plus pixel noise (JPEG-compresses like a photo,
    not like flat colour or white noise).
    """
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), mode="RGB")
    field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = field + rng.normal(0, 12, field.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")


def _median_seconds(calls: Sequence[Callable[[], Any]]) -> float:
    """Median wall time of ``calls`` (each timed once), after running the first once untimed (warm-up)."""
    calls[0]()
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))


def measure_decoding(bundle: Any, world_config: Any, samples: int = DECODE_SAMPLES) -> dict[str, float]:
    """CPU seconds per item of the preprocessing the chapters do in the main process, timed here (one thread).

    Returns ``{"cc3m_jpeg": ..., "celeba_jpeg": ..., "world_image": ..., "caption": ...}``: a corpus pair's image
    read by the corpus reader (:func:`mmlib.data.corpora.open_pairs` on a CSV of :data:`CC3M_IMAGE_SIZE`-px JPEGs
    written to a temporary folder) and ``bundle.preprocess``; a CelebA face (:data:`CELEBA_IMAGE_SIZE`) opened with
    PIL and preprocessed; an image of the generated world (``world_config``: the paper profile's test split)
    preprocessed; one caption tokenized (in batches of ``samples``).
    """
    from mmlib.data.corpora import open_pairs
    from mmlib.data.world import generate_world
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    with torch_threads(1), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, (w, h) in (("cc3m", (CC3M_IMAGE_SIZE, CC3M_IMAGE_SIZE)), ("celeba", CELEBA_IMAGE_SIZE)):
            for i in range(samples):
                _photo(rng, w, h).save(folder / f"{kind}_{i}.jpg", quality=JPEG_QUALITY)
        with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["filepath", "title"])
            writer.writerows([f"cc3m_{i}.jpg", c] for i, c in enumerate(_captions(samples)))
        corpus = open_pairs(folder / "pairs.csv")
        out["cc3m_jpeg"] = _median_seconds([functools.partial(
            lambda i: bundle.preprocess(corpus.image(i)), i) for i in range(samples)])
        out["celeba_jpeg"] = _median_seconds([functools.partial(
            lambda i: bundle.preprocess(Image.open(folder / f"celeba_{i}.jpg").convert("RGB")), i)
            for i in range(samples)])
    test = generate_world(dataclasses.replace(world_config, n_test=samples)).subset("test")
    with torch_threads(1):
        out["world_image"] = _median_seconds([functools.partial(lambda i: bundle.preprocess(test.image(i)), i)
                                              for i in range(samples)])
        captions = _captions(samples)
        out["caption"] = _median_seconds([lambda: bundle.tokenizer(captions)] * 3) / samples
    return out


# ----------------------------------------------------------------------------------------------- measurements
def code_precision(bundle: Any) -> dict[str, str]:
    """The precision the paper code computes in, per GPU and kind of operation (``"matmul"``, ``"conv"``).

    The models are loaded in float32 (the dtype of ``bundle``'s weights, read here; mmlib uses no autocast and the
    unCLIP pipeline is loaded without a ``torch_dtype``). On an A100 float32 products may run in TF32 where torch
    allows it: matrix products if ``torch.backends.cuda.matmul.allow_tf32`` and convolutions if
    ``torch.backends.cudnn.allow_tf32`` (torch's defaults: off and on; mmlib changes neither). The T4 has no TF32.
    Returns ``{"T4/matmul": ..., "T4/conv": ..., "A100/matmul": ..., "A100/conv": ...}``.
    """
    dtype = next(bundle.model.parameters()).dtype
    base = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype)
    if base is None:
        raise InputError(f"the model's weights are {dtype}; the budget knows float32, float16 and bfloat16")
    tf32 = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "conv": bool(torch.backends.cudnn.allow_tf32)}
    return {f"{gpu}/{op}": ("tf32" if base == "fp32" and tf32[op] and "tf32" in PEAK_FLOPS[gpu] else base)
            for gpu in GPUS for op in ("matmul", "conv")}


@dataclasses.dataclass(frozen=True)
class Measurements:
    """Everything :func:`budget_table` needs from this machine.

    Attributes
    ----------
    probes : mapping
        probe name -> :class:`Measurement`.
    decoding : mapping
        item kind -> CPU seconds per item (:func:`measure_decoding`).
    precision : mapping
        ``"<gpu>/<op>"`` -> precision (:func:`code_precision`).
    meta_agreement : float or None
        The ViT-B-32 image forward counted on the meta device / counted on the CPU (1: the meta counts are exact).
    seconds : float
        How long measuring took.
    machine : str
        Where it was measured (CPU count, platform).
    """

    probes: Mapping[str, Measurement]
    decoding: Mapping[str, float]
    precision: Mapping[str, str]
    meta_agreement: float | None = None
    seconds: float = 0.0
    machine: str = ""


def measure(notebooks: str | os.PathLike = NOTEBOOKS_DIR, probes: Sequence[str] | None = None) -> Measurements:
    """Count every probe (or those named) and time the CPU preprocessing; offline, about half a minute here."""
    started = time.perf_counter()
    lab = _Lab(_Notebooks(Path(os.fspath(notebooks))))
    measured = {name: measure_probe(name, lab) for name in (PROBES if probes is None else probes)}
    meta_agreement = None
    if "vitb32_image" in measured:
        import open_clip
        with _quiet():
            meta = open_clip.create_model(lab.profile.open_clip_model, pretrained=None, device="meta")
        with _counting() as counter:
            meta.encode_image(torch.empty(1, 3, *lab.image_size, device="meta"))
        meta_agreement = counter.get_total_flops() / measured["vitb32_image"].flops_per_unit
    decoding = measure_decoding(lab.bundle, lab.profile.world)
    return Measurements(measured, decoding, code_precision(lab.bundle), meta_agreement,
                        time.perf_counter() - started, _machine())


def _machine() -> str:
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} CPUs ({platform.machine()}){load}"


# ------------------------------------------------------------------------------------------------- the steps
@dataclasses.dataclass(frozen=True)
class Step:
    """One expensive step of a chapter at the paper profile's sizes.

    Attributes
    ----------
    chapter : str
        The notebook that computes it first (in book order), e.g. ``"07_adversarial"``.
    name : str
        What the step is, in a few words.
    units : float
        Its size in :attr:`unit` (what the table shows).
    unit : str
    work : mapping
        probe name (:data:`PROBES`) -> units of that probe the step does: the spec of how it is measured.
    decode : mapping
        item kind (:func:`measure_decoding`) -> items the CPU preprocesses in the step.
    runs_on : {"gpu", "cpu"}
        Where the code runs the step (``"cpu"``: it ignores ``profile.device``).
    needed_by : tuple of str
        The later chapters (notebook numbers) that load its artifact.
    corpus : bool
        Whether the step needs the paired corpus.
    how : str
        How its size is computed, in words (with the numbers).
    """

    chapter: str
    name: str
    units: float
    unit: str
    work: Mapping[str, float]
    decode: Mapping[str, float] = dataclasses.field(default_factory=dict)
    runs_on: str = "gpu"
    needed_by: tuple[str, ...] = ()
    corpus: bool = False
    how: str = ""

    def __post_init__(self) -> None:
        if self.runs_on not in ("gpu", "cpu"):
            raise InputError(f"Step {self.name!r}: runs_on must be 'gpu' or 'cpu', got {self.runs_on!r}")
        unknown = sorted(set(self.work) - set(PROBES))
        if unknown:
            raise InputError(f"Step {self.name!r}: unknown probe(s) {unknown}; choose from {sorted(PROBES)}")
        for what, mapping in (("work", self.work), ("decode", self.decode)):
            bad = {k: v for k, v in mapping.items() if not (isinstance(v, numbers.Real) and math.isfinite(v)
                                                            and v >= 0)}
            if bad:
                raise InputError(f"Step {self.name!r}: {what} must be finite non-negative counts, got {bad}")


def _check_pairs(pairs: Any) -> int:
    if isinstance(pairs, bool) or not isinstance(pairs, numbers.Integral) or pairs < 1:
        raise InputError(f"pairs (the corpus size) must be a positive integer, got {pairs!r}")
    return int(pairs)


def _chapter_label(stem: str) -> str:
    number, _, title = stem.partition("_")
    return f"{number} {title.replace('_', ' ')}"


def paper_steps(pairs: int = DEFAULT_PAIRS, notebooks: str | os.PathLike = NOTEBOOKS_DIR) -> list[Step]:
    """The expensive steps of chapters 00-10 on the paper profile with a corpus of ``pairs`` image-caption pairs.

    Sizes come from :func:`mmlib.profiles.get_profile` (``"paper"``) and the notebooks' constants; which chapter
    computes what, and which later chapters reuse it, from reading the notebooks and :mod:`mmlib.pipeline`.

    Raises
    ------
    InputError
        for a ``pairs`` that is not a positive integer; :class:`NotebookConstantError` if a chapter lost a constant.
    """
    from mmlib.case_studies.adversarial import SELECTIONS
    from mmlib.companions.clip_interpret import world_descriptions
    from mmlib.profiles import get_profile

    N = _check_pairs(pairs)
    nb = _Notebooks(Path(os.fspath(notebooks)))
    P = get_profile("paper")
    n_test, seeds = P.world.n_test, len(P.map_seeds)
    sae_units, ncl_units = N * P.sae.epochs, N * P.ncl.epochs
    ch = {k: nb.chapter(k) for k in ("00", "01", "02", "03", "06", "07", "08", "09", "10")}
    setup_users = ("02", "03", "04", "05", "06", "07", "09", "10")  # pipeline.setup() on the paper model
    map_users = ("03", "04", "05", "06", "07", "09", "10")  # map_grid on the corpus' world maps

    def embed(chapter: str, name: str, n: int, kind: str, how: str, model: str = "vitb32", **kw: Any) -> Step:
        return Step(ch[chapter], name, n, "pairs", {f"{model}_image": n, f"{model}_text": n},
                    {kind: n, "caption": n}, corpus=kind == "cc3m_jpeg", how=how, **kw)

    def maps(chapter: str, name: str, probe_units: Mapping[str, float], how: str, **kw: Any) -> Step:
        return Step(ch[chapter], name, sum(probe_units.values()), "pair-epochs", probe_units, corpus=True, how=how,
                    **kw)

    batch = f"batches of {P.embed_batch_size}, CPU decoding in the main process"
    steps = [
        embed("00", "embed the world's test split", n_test, "world_image",
              f"n_test = {n_test} pairs, image and caption; towers off, so its own key; {batch}"),
        embed("01", "embed the corpus, with the towers", N, "cc3m_jpeg",
              f"{N:,} pairs; towers on; later requests without the towers load its image and text embeddings "
              f"(the corpus is embedded once); {batch}", needed_by=map_users + ("02",)),
        embed("01", "embed the world's test split, with the towers", n_test, "world_image",
              f"n_test = {n_test} pairs: the key every later setup() loads", needed_by=setup_users),
        maps("02", f"train SAE and NCL maps, {seeds} seeds", {"sae": sae_units * seeds, "ncl": ncl_units * seeds},
             f"{N:,} pairs x {P.sae.epochs} epochs x {seeds} seeds per map (K = {P.sae.K}, batch "
             f"{P.sae.batch_size})", needed_by=map_users),
    ]
    l1_02 = [c for c in nb.get("02", "L1_SWEEP") if c != P.sae.l1_coef]  # the default λ is seed 0's map
    topk = nb.get("02", "TOPK_SWEEP")
    steps.append(maps("02", "SAE sparsity sweep", {"sae": sae_units * len(l1_02), "sae_topk": sae_units * len(topk)},
                      f"{len(l1_02)} new λ ({', '.join(f'{c:g}' for c in l1_02)}) and {len(topk)} TopK k "
                      f"({', '.join(map(str, topk))}; counted at k = {max(topk)}), seed 0, on profile.device"))
    steps += [
        embed("03", "random-init control: embed the corpus again", N, "cc3m_jpeg",
              f"{N:,} pairs with ViT-B-32 at random weights"),
        embed("03", "random-init control: embed the world's test split", n_test, "world_image",
              f"n_test = {n_test} pairs, towers on"),
        maps("03", "random-init control: SAE and NCL maps", {"sae": sae_units * seeds, "ncl": ncl_units * seeds},
             f"{seeds} seeds per map on the random-init embeddings"),
        maps("03", "shuffled-pairs control: SAE and NCL maps", {"sae": sae_units * seeds, "ncl": ncl_units * seeds},
             f"{seeds} seeds per map; the embeddings are reused, shuffled (the paper profile's baseline control)",
             needed_by=("04", "05")),
    ]
    l1_03 = nb.get("03", "L1_SWEEP")
    steps.append(maps("03", "SAE sparsity sweep", {"sae": sae_units * len(l1_03) * 2},
                      f"{len(l1_03)} λ x 2 setups (the corpus and the shuffled-pairs control), seed 0, on "
                      "profile.device"))
    partition, limit = nb.get("06", "celeba_partition"), nb.get("06", "celeba_limit")
    if partition not in CELEBA_PARTITIONS:
        raise NotebookConstantError(f"notebooks/{ch['06']}.ipynb: celeba_partition {partition!r} is not one of "
                                    f"{sorted(map(str, CELEBA_PARTITIONS))}")
    faces = CELEBA_PARTITIONS[partition] if limit is None else min(int(limit), CELEBA_PARTITIONS[partition])
    steps.append(embed("06", "embed CelebA's faces", faces, "celeba_jpeg",
                       f"CelebA partition {partition!r}: {faces:,} faces (celeba_limit {limit})"))

    n_eval, pgd_steps = nb.get("07", "n_eval"), nb.get("07", "pgd_steps")
    eps, n_def_eval, n_def_train = nb.get("07", "EPS_255"), nb.get("07", "N_DEF_EVAL"), nb.get("07", "N_DEF_TRAIN")
    defence = nb.get("07", "DEF")
    n_xm, xm_steps = nb.get("07", "N_XM"), nb.get("07", "XM_STEPS")
    adapters = len(nb.get("07", "MAPS")) * len(SELECTIONS)
    def_steps, def_batch, inner = defence["steps"], defence["batch_size"], defence["attack_steps"]
    steps += [
        Step(ch["07"], "PGD at every budget", len(eps) * n_eval * pgd_steps, "image x PGD step",
             {"vitb32_pgd": len(eps) * n_eval * pgd_steps, "vitb32_image": (len(eps) + 1) * n_eval + 2 * n_eval},
             {"world_image": n_eval},
             how=f"{len(eps)} budgets x n_eval = {n_eval} images x {pgd_steps} steps, plus the embeddings they are "
                 "scored and compared on"),
        Step(ch["07"], "train the defence adapters", adapters * def_steps, "steps",
             {"vitb32_adapter": adapters * def_steps * def_batch,
              "vitb32_pgd": adapters * def_steps * def_batch * inner},
             {"cc3m_jpeg": n_def_train}, corpus=True,
             how=f"{adapters} adapters (maps x selections; a complete seed for every map: an upper bound) x "
                 f"{def_steps} steps x batch {def_batch}, each with a {inner}-step inner attack; {n_def_train} corpus "
                 "images decoded"),
        Step(ch["07"], "attack every defended model", (adapters + 1) * n_def_eval * pgd_steps, "image x PGD step",
             {"vitb32_pgd": (adapters + 1) * n_def_eval * pgd_steps,
              "vitb32_image": (adapters + 1) * 2 * n_def_eval},
             how=f"{adapters} adapters and the undefended model x {n_def_eval} images x {pgd_steps} steps"),
        Step(ch["07"], "cross-modal steering", adapters * n_xm * xm_steps, "image x PGD step",
             {"vitb32_pgd": adapters * n_xm * xm_steps, "vitb32_image": (adapters * 2 + 2) * n_xm},
             how=f"{adapters} feature sets x {n_xm} images x {xm_steps} steps"),
    ]

    n_fid, n_ref, unclip_steps = nb.get("08", "N_FIDELITY"), nb.get("08", "N_REF"), nb.get("08", "STEPS")
    guidance, groups = nb.get("08", "GUIDANCE"), nb.get("08", "GROUPS")
    alphas = sum(a != 0 for a in nb.get("08", "ALPHAS"))
    generated = n_fid + seeds * n_ref * (1 + len(groups) * alphas)
    evals = unclip_steps * (2 if guidance > 1 else 1)
    steps += [
        embed("08", "embed the corpus with ViT-L-14", N, "cc3m_jpeg", f"{N:,} pairs with Stable unCLIP's CLIP",
              model="vitl14"),
        embed("08", "embed the world's test split with ViT-L-14", n_test, "world_image",
              f"n_test = {n_test} pairs, towers on", model="vitl14"),
        maps("08", f"train SAE maps on ViT-L-14, {seeds} seeds", {"sae_vitl14": sae_units * seeds},
             f"{N:,} pairs x {P.sae.epochs} epochs x {seeds} seeds"),
        Step(ch["08"], "Stable unCLIP: generate images", generated, "images",
             {"unet": generated * evals, "vae_decode": generated},
             how=f"{n_fid} + {seeds} seeds x {n_ref} references x (1 + {len(groups)} groups x {alphas} strengths; "
                 f"no group empty: an upper bound) images x {unclip_steps} steps x {evals // unclip_steps} UNet "
                 f"evaluations (guidance {guidance:g}), one VAE decode each"),
    ]
    vocabulary, n_audit = nb.get("09", "vocabulary_size"), nb.get("09", "N_AUDIT")
    steps += [
        Step(ch["09"], "encode the concept vocabulary", 2 * vocabulary, "captions",
             {"vitb32_text": 2 * vocabulary}, {"caption": 2 * vocabulary},
             how=f"vocabulary_size = {vocabulary} concepts, twice (build_splice centred, and raw)"),
        Step(ch["09"], "embed the audit's two generated worlds", 2 * n_audit, "images",
             {"vitb32_image": 2 * n_audit}, {"world_image": 2 * n_audit},
             how=f"n_audit = {n_audit} images of the spurious world and of its control"),
    ]
    n_images, pool = nb.get("10", "n_images"), len(world_descriptions(P.world.factors).texts)
    n_images = min(n_images, n_test)
    steps += [
        Step(ch["10"], "decompose the test images", n_images, "images",
             {"vitb32_decompose": n_images, "vitb32_image": n_images}, {"world_image": n_images},
             how=f"n_images = {n_images}, and encode_image again for the decomposition's error"),
        Step(ch["10"], "encode the TextSpan pool", pool, "captions", {"vitb32_text": pool}, {"caption": pool},
             how=f"{pool} world descriptions"),
    ]
    return steps


# ------------------------------------------------------------------------------------------------- the table
def gpu_seconds(flops: float, gpu: str, precision: str = "fp32", utilisation: float = UTILISATION) -> float:
    """Seconds a GPU needs for ``flops`` at ``utilisation`` of its peak in ``precision``:
    ``flops / (PEAK_FLOPS[gpu][precision] * utilisation)``.

    Raises
    ------
    InputError
        for negative or non-finite FLOPs, an unknown GPU or precision, or a utilisation outside ``(0, 1]``.
    """
    if isinstance(flops, bool) or not isinstance(flops, numbers.Real) or not math.isfinite(flops) or flops < 0:
        raise InputError(f"flops must be a finite non-negative number, got {flops!r}")
    if gpu not in PEAK_FLOPS:
        raise InputError(f"unknown GPU {gpu!r}; choose from {sorted(PEAK_FLOPS)}")
    if precision not in PEAK_FLOPS[gpu]:
        raise InputError(f"{gpu} has no peak for precision {precision!r}; known: {sorted(PEAK_FLOPS[gpu])}")
    if (isinstance(utilisation, bool) or not isinstance(utilisation, numbers.Real) or not math.isfinite(utilisation)
            or not 0 < utilisation <= 1):
        raise InputError(f"utilisation must be a share of the peak in (0, 1], got {utilisation!r}")
    return float(flops) / (PEAK_FLOPS[gpu][precision] * float(utilisation))


def _source(step: Step, measurements: Measurements) -> str:
    kinds = {measurements.probes[p].counted_on for p in step.work}
    if kinds == {"cpu"}:
        return "measured"
    return "estimated" if kinds == {"meta"} else "measured + estimated"


def _check_measured(steps: Sequence[Step], measurements: Measurements) -> None:
    missing = sorted({p for s in steps for p in s.work} - set(measurements.probes))
    missing_decode = sorted({k for s in steps for k in s.decode} - set(measurements.decoding))
    if missing or missing_decode:
        raise InputError(f"the measurements lack probe(s) {missing} and decoding kind(s) {missing_decode}; measure "
                         "them with measure()")


def budget_table(pairs: int = DEFAULT_PAIRS, measurements: Measurements | None = None,
                 utilisation: float = UTILISATION, overlap: bool = False,
                 notebooks: str | os.PathLike = NOTEBOOKS_DIR, steps: Sequence[Step] | None = None) -> pd.DataFrame:
    """The budget, one row per step and one ``total`` row per chapter (in book order).

    Parameters
    ----------
    pairs : int
        Corpus size (image-caption pairs).
    measurements : Measurements, optional
        Default: :func:`measure` (about half a minute).
    utilisation : float
        Share of the GPU's peak sustained, in ``(0, 1]``.
    overlap : bool
        Whether CPU preprocessing overlaps the GPU (DataLoader workers); the chapters' default is no: times add.
    steps : sequence of Step, optional
        Default: :func:`paper_steps` for ``pairs``.

    Returns
    -------
    DataFrame
        ``chapter``, ``step``, ``units``, ``unit``, ``flops_per_unit``, ``flops_source`` (``"measured"``: counted on
        the CPU at random weights; ``"estimated"``: counted from the architecture on the meta device),
        ``gflop`` (the step's total, in GFLOP), ``cpu_min`` (CPU preprocessing or CPU training), ``T4_min``,
        ``A100_min`` (wall minutes on each runtime), ``T4_bound``, ``A100_bound`` (``"GPU"``, ``"CPU decoding"`` or
        ``"CPU training"``), ``corpus``, ``needed_by``, ``how``. A total row has ``step == "total"``.
    """
    pairs = _check_pairs(pairs)
    gpu_seconds(0.0, T4, utilisation=utilisation)  # validates the utilisation before any work
    steps = list(paper_steps(pairs, notebooks) if steps is None else steps)
    measurements = measure(notebooks) if measurements is None else measurements
    _check_measured(steps, measurements)
    rows = []
    for step in steps:
        flops = sum(u * measurements.probes[p].flops_per_unit for p, u in step.work.items())
        row: dict[str, Any] = dict(chapter=_chapter_label(step.chapter), step=step.name, units=step.units,
                                   unit=step.unit, flops_per_unit=flops / step.units if step.units else 0.0,
                                   flops_source=_source(step, measurements), gflop=flops / 1e9)
        if step.runs_on == "cpu":
            cpu = sum(u * measurements.probes[p].cpu_seconds_per_unit for p, u in step.work.items())
        else:
            cpu = sum(n * measurements.decoding[k] for k, n in step.decode.items())
        row["cpu_min"] = cpu / 60
        for gpu in GPUS:
            if step.runs_on == "cpu":
                row[f"{gpu}_min"], row[f"{gpu}_bound"] = cpu / 60, "CPU training"
                continue
            gpu_s = 0.0
            for p, u in step.work.items():
                m = measurements.probes[p]
                total = u * m.flops_per_unit
                gpu_s += gpu_seconds(total * (1 - m.conv_share), gpu, measurements.precision[f"{gpu}/matmul"],
                                     utilisation)
                gpu_s += gpu_seconds(total * m.conv_share, gpu, measurements.precision[f"{gpu}/conv"], utilisation)
            row[f"{gpu}_min"] = (max(gpu_s, cpu) if overlap else gpu_s + cpu) / 60
            row[f"{gpu}_bound"] = "GPU" if gpu_s >= cpu else "CPU decoding"
        rows.append(dict(row, corpus=step.corpus, needed_by=", ".join(step.needed_by), how=step.how))
    table = pd.DataFrame(rows)
    totals = []
    for chapter, group in table.groupby("chapter", sort=False):
        totals.append(dict(chapter=chapter, step="total", gflop=group.gflop.sum(), cpu_min=group.cpu_min.sum(),
                           **{f"{gpu}_min": group[f"{gpu}_min"].sum() for gpu in GPUS}))
    out = pd.concat([table, pd.DataFrame(totals)], ignore_index=True)
    order = {c: i for i, c in enumerate(dict.fromkeys(table.chapter))}
    out["_order"] = out.chapter.map(order)
    out["_total"] = out.step == "total"
    return out.sort_values(["_order", "_total"], kind="stable").drop(columns=["_order", "_total"]).reset_index(
        drop=True)


def chapter_totals(table: pd.DataFrame, pairs: int, notebooks: str | os.PathLike = NOTEBOOKS_DIR) -> pd.DataFrame:
    """Per chapter (every chapter 00-10, in book order): the corpus it needs and its minutes on each GPU, run in book
    order (what it computes itself) and alone (also what it would compute instead of loading).

    ``table`` is :func:`budget_table`'s result (its step rows).
    """
    pairs = _check_pairs(pairs)
    nb = _Notebooks(Path(os.fspath(notebooks)))
    steps = table[table.step != "total"]
    rows = []
    for stem in nb.paths:
        number, label = stem.split("_", 1)[0], _chapter_label(stem)
        if not number.isdigit() or int(number) > 10:
            continue
        own = steps[steps.chapter == label]
        alone = steps[(steps.chapter == label) | steps.needed_by.str.split(", ").apply(lambda n: number in n)]
        rows.append(dict(chapter=label, corpus_pairs=pairs if alone.corpus.any() else 0,
                         **{f"{gpu}_min": own[f"{gpu}_min"].sum() for gpu in GPUS},
                         **{f"{gpu}_min_alone": alone[f"{gpu}_min"].sum() for gpu in GPUS}))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- Markdown
def _si(value: float) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def _minutes(value: float) -> str:
    return f"{value:,.1f}" if value >= 0.1 else ("0" if value == 0 else "< 0.1")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def budget_markdown(table: pd.DataFrame, totals: pd.DataFrame, measurements: Measurements, pairs: int,
                    utilisation: float = UTILISATION, overlap: bool = False) -> str:
    """The budget as MyST Markdown: the per-chapter and per-step tables and how they are made."""
    steps = table[table.step != "total"]
    chapter_rows = [[r.chapter, f"{r.corpus_pairs:,}" if r.corpus_pairs else "none",
                     _minutes(r.T4_min), _minutes(r.A100_min), _minutes(r.T4_min_alone), _minutes(r.A100_min_alone)]
                    for r in totals.itertuples()]
    step_rows = [[r.chapter, r.step, f"{r.units:,.0f} {r.unit}", f"{_si(r.flops_per_unit)} ({r.flops_source})",
                  _minutes(r.T4_min), _minutes(r.A100_min),
                  r.T4_bound if r.T4_bound == r.A100_bound else f"T4: {r.T4_bound}; A100: {r.A100_bound}",
                  r.how + (f"; reused by {r.needed_by}" if r.needed_by else "")] for r in steps.itertuples()]
    probe_rows = [[name, m.unit, _si(m.flops_per_unit), "CPU, random weights" if m.counted_on == "cpu" else
                   "meta device (no weights)", ", ".join(map(str, m.sizes)), f"{m.deviation:.1e}",
                   f"{m.conv_share:.0%}", PROBES[name].what if name in PROBES else ""]
                  for name, m in measurements.probes.items()]
    total = totals[[f"{gpu}_min" for gpu in GPUS]].sum()
    precision = ", ".join(f"{k} {v}" for k, v in measurements.precision.items())
    decode = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in measurements.decoding.items())
    peaks = "; ".join(f"{gpu}: " + ", ".join(f"{p} {v / 1e12:g} TFLOP/s" for p, v in PEAK_FLOPS[gpu].items())
                      for gpu in GPUS)
    agreement = ("" if measurements.meta_agreement is None else
                 f" Counted on the meta device, the ViT-B-32 image forward gives {measurements.meta_agreement:.4f} "
                 "times the CPU count.")
    parts = [
        f"Corpus: {pairs:,} pairs. The whole book in order takes about **{total['T4_min'] / 60:.1f} h on a T4** and "
        f"**{total['A100_min'] / 60:.1f} h on an A100** (estimated as below; measured in {measurements.seconds:.0f} s "
        f"on {measurements.machine}).",
        "",
        "### Per chapter",
        "",
        "In book order a chapter loads what earlier chapters stored; *alone* is its cost on an empty artifact store "
        "(every step it loads counted whole: an upper bound). A chapter needs the corpus when a step it computes or "
        "loads does: chapters 09 and 10 load chapter 02's SAE, so on the paper profile they take `pairs` too.",
        "",
        _markdown_table(["chapter", "corpus pairs", "T4 min", "A100 min", "T4 min (alone)", "A100 min (alone)"],
                        chapter_rows),
        "",
        "### Per step",
        "",
        _markdown_table(["chapter", "step", "units", "FLOPs per unit", "T4 min", "A100 min", "bound", "how"],
                        step_rows),
        "",
        "### How the numbers are made",
        "",
        _markdown_table(["probe", "unit", "FLOPs per unit", "counted on", "sizes", "deviation from linear",
                         "convolutions", "what runs"], probe_rows),
        "",
        "* FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the real code at small sizes "
        "(the sizes column), checked to be proportional to the size, and scaled to the paper's sizes. Matrix "
        "products, convolutions and attention are counted; elementwise work is not." + agreement,
        f"* GPU time = FLOPs / (peak x {utilisation:g}), with the datasheet peaks ({peaks}) in the precision the code "
        f"runs in: {precision}.",
        "* *estimated*: the model cannot run here (its weights are not available offline: ViT-L-14 and Stable "
        "unCLIP's UNet and VAE), so its FLOPs are counted from the architecture on PyTorch's meta device; Stable "
        "unCLIP at 768 x 768 in float32, two UNet evaluations per step under guidance.",
        f"* CPU preprocessing, measured here on one core: {decode}. The chapters decode in the main process, so "
        + ("it overlaps the GPU (the larger of the two counts)." if overlap else
           "decoding and the GPU take turns and their times add; *bound* names the larger."),
        "* Chapter 03's sparsity sweep is trained on the CPU by the code (one thread): its time is the CPU time per "
        "training step measured here (the slope over the two sizes), so it follows this machine's speed and load.",
        "* Not counted: analyses on stored embeddings (MDS, categories, removals, SpLiCE's solver, bootstraps), "
        "model and data downloads, and chapter 08's probes on 16 px images.",
    ]
    return "\n".join(parts) + "\n"


def write_budget(out: str | os.PathLike, pairs: int = DEFAULT_PAIRS, measurements: Measurements | None = None,
                 utilisation: float = UTILISATION, overlap: bool = False,
                 notebooks: str | os.PathLike = NOTEBOOKS_DIR) -> Path:
    """Write ``gpu_budget.md`` (MyST Markdown, for a book page to include) and ``gpu_budget.json`` into ``out``;
    returns the Markdown file.
    """
    pairs = _check_pairs(pairs)
    out = Path(os.fspath(out))
    measurements = measure(notebooks) if measurements is None else measurements
    table = budget_table(pairs, measurements, utilisation, overlap, notebooks)
    totals = chapter_totals(table, pairs, notebooks)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "gpu_budget.md"
    md.write_text(budget_markdown(table, totals, measurements, pairs, utilisation, overlap), encoding="utf-8")
    record = {"pairs": pairs, "utilisation": utilisation, "overlap": overlap, "peak_flops": PEAK_FLOPS,
              "precision": dict(measurements.precision), "decoding_seconds": dict(measurements.decoding),
              "meta_agreement": measurements.meta_agreement, "machine": measurements.machine,
              "measure_seconds": measurements.seconds,
              "probes": {k: dataclasses.asdict(m) | {"flops_per_unit": m.flops_per_unit}
                         for k, m in measurements.probes.items()},
              "steps": table.to_dict(orient="records"), "chapters": totals.to_dict(orient="records")}
    (out / "gpu_budget.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return md


# ---------------------------------------------------------------------------------------------- command line
def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    md = write_budget(args.out, args.pairs, utilisation=args.utilisation, overlap=args.overlap)
    print(f"==> GPU budget for {args.pairs:,} pairs in {time.perf_counter() - started:.1f} s; wrote {md}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmlib.reporting.gpu_budget --out DIR [--pairs N] [--utilisation U] [--overlap]``."""
    parser = OneLineErrorParser(prog="python -m mmlib.reporting.gpu_budget", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_budget.md and gpu_budget.json")
    parser.add_argument("--pairs", type=_positive_int, default=DEFAULT_PAIRS,
                        help=f"corpus size in image-caption pairs (default {DEFAULT_PAIRS:,})")
    parser.add_argument("--utilisation", type=_share, default=UTILISATION,
                        help=f"share of the GPU's peak sustained (default {UTILISATION})")
    parser.add_argument("--overlap", action="store_true",
                        help="assume CPU decoding overlaps the GPU (DataLoader workers); the chapters' default: no")
    return run_command(_run, parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.exit(main())
