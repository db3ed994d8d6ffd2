"""What the trainable feature maps (SAE, NCL) share: streamed training data, schedules, liveness and history.

Training data is a :data:`PairData` (Embeddings, an ``(image, text)`` pair, or a callable returning chunks),
streamed in chunks by :func:`pair_chunks` so that memory does not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import numpy as np
import torch

from mmlib.core.errors import InputError
from mmlib.core.validation import Range, at_least, between, greater_than, is_int
from mmlib.feature_maps.base import ArgumentTypeError, Source, check_embeddings, check_pairs, source_of

#: Training data: Embeddings (``.image``, ``.text``), an ``(image (n, d), text (n, d))`` pair of tensors or
#: arrays, a callable returning an iterable of such pairs (chunks), or a re-iterable of chunks (a list).
# (a runtime type alias: `Union` rather than `X | Y`, which would be evaluated here)
PairData = Union[Any, tuple[torch.Tensor, torch.Tensor],  # noqa: UP007
                 Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def pair_chunks(data: PairData, chunk_size: int = 65536) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """A restartable stream of checked ``(image (c, d), text (c, d))`` float32 chunks of ``data``.

    Each call of the returned function starts a new pass. Tensors held in memory are cut into chunks of
    ``chunk_size`` rows; a callable is called once per pass; a one-shot iterator (e.g. a generator object)
    cannot be read twice and is refused.

    Raises
    ------
    InputError
        (during a pass) if a chunk is not an ``(image, text)`` pair of aligned 2-D tensors of one ``d``;
        for tensors in memory, at once, naming the first bad row of the whole data.
    NonFiniteError
        (during a pass; at once for tensors in memory) if a chunk holds NaN/Inf.
    ArgumentTypeError
        if ``data`` is none of the accepted forms (also a ``TypeError``).
    """
    if not is_int(chunk_size) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if hasattr(data, "image") and hasattr(data, "text"):
        image, text = check_pairs(data)
        data = (image, text)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        image, text = check_pairs(data)

        def checked() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for i in range(0, len(image), chunk_size):
                yield image[i:i + chunk_size], text[i:i + chunk_size]
        return checked
    if callable(data):
        def raw() -> Iterator[Any]:
            try:
                chunks = iter(data())
            except TypeError as err:
                raise ArgumentTypeError(f"the training-data function must return an iterable of (image, text) "
                                        f"chunks ({err})") from err
            return chunks
    elif isinstance(data, Iterable):
        if iter(data) is data:
            raise ArgumentTypeError("a one-shot iterator cannot be read once per epoch: pass a function that "
                                    "returns a fresh iterable of (image, text) chunks")
        raw = lambda: iter(data)  # noqa: E731
    else:
        raise ArgumentTypeError(f"cannot read training pairs from {type(data).__name__}: pass Embeddings, an "
                                "(image, text) pair of (n, d) tensors, or a function returning (image, text) chunks")

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        width = None
        for c, chunk in enumerate(raw()):
            if not (isinstance(chunk, (tuple, list)) and len(chunk) == 2):
                raise InputError(f"chunk {c} of the training data must be an (image, text) pair of (n, d) tensors, "
                                 f"got {type(chunk).__name__}")
            img = check_embeddings(chunk[0], width, f"image embeddings (chunk {c})", "chunk 0 has")
            txt = check_embeddings(chunk[1], img.shape[1], f"text embeddings (chunk {c})", "its image embeddings have")
            if len(img) != len(txt):
                raise InputError(f"chunk {c} has {len(img)} image but {len(txt)} text embeddings: pairs must align")
            width = img.shape[1]
            yield img, txt
    return stream


@dataclasses.dataclass(frozen=True)
class DataStats:
    """Statistics of paired training data from one streamed pass.

    Attributes
    ----------
    n, dim : int
        Number of pairs and embedding dimension ``d``.
    chunk_sizes : tuple of int
        Rows per chunk (to count the steps of an epoch).
    mean : Tensor
        ``(2, d)`` per-modality mean (image, text).
    sq_norm : Tensor
        ``(2,)`` per-modality mean squared norm ``E||z||²``.
    centered_sq_norm : Tensor
        ``(2,)`` per-modality mean squared norm around the mean ``E||z - mean||²``.
    """

    n: int
    dim: int
    chunk_sizes: tuple[int, ...]
    mean: torch.Tensor
    sq_norm: torch.Tensor
    centered_sq_norm: torch.Tensor

    def steps_per_epoch(self, batch_size: int, min_batch: int = 1) -> int:
        """Batches of at most ``batch_size`` rows per pass (chunk remainders below ``min_batch`` dropped)."""
        return sum(c // batch_size + (c % batch_size >= min_batch) for c in self.chunk_sizes)


def data_stats(chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> DataStats:
    """One pass over ``chunks`` (see :func:`pair_chunks`), accumulated in float64."""
    n, sizes = 0, []
    total = sq = None
    for img, txt in chunks():
        z = torch.stack([img, txt]).double()  # (2, c, d)
        total = z.sum(1) if total is None else total + z.sum(1)
        sq = z.square().sum((1, 2)) if sq is None else sq + z.square().sum((1, 2))
        n += len(img)
        sizes.append(len(img))
    if n == 0 or total is None or sq is None:
        raise InputError("the training data holds no pairs: pass at least one (image, text) pair")
    mean = total / n
    sq_norm = sq / n
    centered = (sq_norm - mean.square().sum(1)).clamp_min(0.0)
    return DataStats(n=n, dim=int(mean.shape[1]), chunk_sizes=tuple(sizes), mean=mean.float(),
                     sq_norm=sq_norm.float(), centered_sq_norm=centered.float())


def training_data(data: PairData, chunk_size: int, source: Source | None = None
                  ) -> tuple[Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], DataStats, Source]:
    """The chunk stream (:func:`pair_chunks`), its statistics (:func:`data_stats`, one pass) and its
    :class:`Source` (given, or read from ``data``; ``n`` filled in).
    """
    chunks = pair_chunks(data, chunk_size)
    stats = data_stats(chunks)
    source = source or source_of(data)
    if source.n is None:
        source = dataclasses.replace(source, n=stats.n)
    return chunks, stats, source


def iterate_batches(chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], batch_size: int,
                    generator: torch.Generator, min_batch: int = 1) -> Iterator[torch.Tensor]:
    """One pass of shuffled batches ``(2, b, d)`` (image, text) of paired rows.

    Rows are shuffled within each chunk (with ``generator``), so only one chunk is in memory at a time;
    a chunk's last batch may be smaller, and is dropped if below ``min_batch`` rows.
    """
    for img, txt in chunks():
        perm = torch.randperm(len(img), generator=generator)
        z = torch.stack([img, txt])
        for i in range(0, len(img), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) >= min_batch:
                yield z.index_select(1, idx)


def schedule_rules(min_batch: int = 1) -> dict[str, Range]:
    """The :func:`~mmlib.core.validation.validate_config` rules of the training-schedule fields shared by the
    trainable maps' configs: ``epochs``, ``batch_size`` (at least ``min_batch``), ``dead_window``, ``log_every`` and
    ``chunk_size`` (integers >= 1), ``lr`` (finite, > 0) and ``lr_decay`` (in [0, 1]).
    """
    return dict(epochs=at_least(1), batch_size=at_least(min_batch), dead_window=at_least(1), log_every=at_least(1),
                chunk_size=at_least(1), lr=greater_than(0.0), lr_decay=between(0.0, 1.0),
                seed=between(-(2 ** 63), 2 ** 64 - 1))


def check_loss(value: float, step: int, config: Any, what: str) -> float:
    """``value`` if finite; otherwise training diverged: raise :class:`InputError` naming the step and ``lr``."""
    if not math.isfinite(value):
        raise InputError(f"{what} training diverged at step {step}: the loss is {value}. Lower "
                         f"{type(config).__name__}.lr (now {config.lr:g}) or rescale the embeddings.")
    return value


def linear_decay_lr(step: int, total: int, lr: float, decay: float) -> float:
    """Learning rate at ``step`` (1-based) of ``total``: ``lr``, decayed linearly to 0 over the last
    ``decay`` fraction of the steps.
    """
    return lr * min(1.0, (total - step + 1) / max(1.0, decay * total))


class Liveness:
    """When each latent of ``M`` groups last fired; a latent is dead after ``window`` silent steps."""

    def __init__(self, n_groups: int, n_latents: int, window: int, device: str | torch.device = "cpu") -> None:
        self.last = torch.zeros(n_groups, n_latents, dtype=torch.long, device=device)
        self.window = window
        self._next_check = window  # no latent can be dead before this step (see dead_if_any)

    def update(self, fired: torch.Tensor, step: int) -> torch.Tensor:
        """Record the latents that ``fired`` ``(M, K)`` bool at ``step``; return the dead mask ``(M, K)``."""
        self.last.masked_fill_(fired, step)
        return self.dead(step)

    def fire(self, latents: torch.Tensor, step: int) -> None:
        """Record that the latents ``latents`` (int64 indices into the flattened ``(M K,)`` latents, repeats
        allowed) fired at ``step``.
        """
        self.last.view(-1).index_fill_(0, latents, step)

    def dead(self, step: int) -> torch.Tensor:
        """Dead mask ``(M, K)`` at ``step``."""
        return (step - self.last) >= self.window

    def dead_if_any(self, step: int) -> torch.Tensor | None:
        """The dead mask ``(M, K)`` at ``step`` if a latent is dead, else ``None``.

        Firing times only grow, so no latent dies before the oldest one plus ``window``: after a check finds none
        dead, the steps before that one are answered without looking.
        """
        if step < self._next_check:
            return None
        dead = self.dead(step)
        if bool(dead.any()):
            return dead
        self._next_check = int(self.last.min()) + self.window
        return None

    def revive(self, mask: torch.Tensor, step: int) -> None:
        """Count the latents of ``mask`` ``(M, K)`` as fired at ``step`` (after resampling them)."""
        self.last[mask] = step


class History:
    """Training curves: per-step values averaged over each ``log_every`` window, plus ``step``, ``dead``
    (fraction of dead latents) and ``lr`` at the window's end; shown on a tqdm ``bar`` if given.
    """

    def __init__(self, names: Iterable[str], log_every: int, total: int, bar: Any = None) -> None:
        self.names = tuple(names)
        self.log_every, self.total, self.bar = log_every, total, bar
        self.data: dict[str, list[float]] = {k: [] for k in ("step", *self.names, "dead", "lr")}
        self._sums = dict.fromkeys(self.names, 0.0)
        self._count = 0

    def add(self, step: int, dead_fraction: float | Callable[[], float], lr: float, **values: float) -> None:
        """Accumulate this step's ``values`` (one per name); record the window when it ends (with
        ``dead_fraction``, or its value if a function: then only called at a window's end).
        """
        for k in self.names:
            self._sums[k] += float(values[k])
        self._count += 1
        if step % self.log_every and step != self.total:
            return
        self.data["step"].append(step)
        for k in self.names:
            self.data[k].append(self._sums[k] / self._count)
        self.data["dead"].append(float(dead_fraction() if callable(dead_fraction) else dead_fraction))
        self.data["lr"].append(float(lr))
        self._sums, self._count = dict.fromkeys(self.names, 0.0), 0
        if self.bar is not None:
            self.bar.set_postfix({k: f"{self.data[k][-1]:.4g}" for k in (*self.names, "dead")}, refresh=False)
