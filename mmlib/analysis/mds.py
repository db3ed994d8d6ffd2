"""The Modality Dominance Score (MDS) of every feature, streamed over paired activations.

The paper defines MDS only as the share of a feature's activation that comes from the image side, averaged
over pairs. For a feature ``k`` with non-negative activations ``a_I[i, k]`` on image ``i`` and ``a_T[i, k]`` on
its caption, the book implements two forms ([ours], Method page `method-mds`; the default first):

* ``paired``: ``MDS_k = mean over P_k of a_I[i, k] / (a_I[i, k] + a_T[i, k])`` with
  ``P_k = {i : a_I[i, k] + a_T[i, k] > eps}`` (the pairs where the feature fires on either side);
* ``aggregate``: ``MDS_k = sum_i a_I[i, k] / (sum_i a_I[i, k] + sum_i a_T[i, k])``.

MDS 1 means the feature fires on images only, 0 on captions only. A feature that never fires on either side
(``P_k`` empty) is *dead*: its score is NaN and it is counted, never scored.

The pairs are streamed in chunks through a :class:`MDSAccumulator` (``O(K)`` sums and two reused block
buffers), so memory does not grow with the number of pairs; one pass yields both forms.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite, check_nonnegative

Form = Literal["paired", "aggregate"]
FORMS: tuple[str, ...] = ("paired", "aggregate")
ArrayLike = torch.Tensor | np.ndarray

TILE_BYTES = 1024 * 1024
"""Bytes of one ``(rows, K)`` tile of a block by default (see :func:`_tile_rows`)."""
GROUP = 64
"""Blocks whose sums (input dtype) are added into the float64 sums at once."""
_INF = float("inf")
#: Rows the fused kernel sums in the input dtype before adding into the float64 sums (as GROUP blocks do).
KERNEL_BLOCK = 256


def _tile_rows(n_features: int, itemsize: int) -> int:
    """Default pairs per block of :class:`MDSAccumulator`: ``TILE_BYTES // (K * itemsize)`` within ``[8, 4096]``.

    A block works on four ``(rows, K)`` tiles (the two inputs and two buffers), ``4 * TILE_BYTES`` (4 MiB), which
    stays in the last-level cache: the minimum of each input reads it from memory, the eight other operations find
    it in the cache. Measured on 2 cores of an AMD EPYC (1 MiB L2 per core, 32 MiB L3), one thread: tiles of
    1-2 MiB were fastest; smaller ones (in L2) pay the fixed cost of each operation (a few microseconds) more often
    than they gain, as an operation on cached data was at most ~1.5x as fast as one on data in memory.
    """
    return int(min(4096, max(8, TILE_BYTES // (n_features * itemsize))))


@functools.cache
def _fused_kernel() -> Callable[..., float]:
    """The fused one-pass kernel (numba, compiled on first use for each dtype and cached on disk).

    ``kernel(a_i, a_t, eps, out)`` reads C-contiguous ``(b, K)`` arrays of one float dtype once and adds into ``out``
    ``(4, K)`` float64 (sums of ``KERNEL_BLOCK`` rows at a time, taken in the input dtype): the ratio ``a_I / t`` on
    active pairs, the active count (``t = a_I + a_T > eps``, ``t`` and the ratio in the input dtype, as the blocked
    torch path computes them), and the image and text column sums; it returns the smallest entry seen (NaN is not a
    minimum: it shows in the column sums, as do infinities). The inner loop over features has no data-dependent
    branch (a select), so that LLVM vectorises it.
    """
    import numba

    # error_model="numpy": a division by zero gives inf / NaN instead of raising, so that the loop vectorises (the
    # quotient is discarded where t <= eps). Separate accumulator arrays and row views let LLVM see that they do not
    # overlap. Four rows per sweep over the features: each sweep loads and stores the five (K,) accumulators (in L1/L2)
    # once for four rows instead of once per row. Measured here (one thread, 10^5 x 4096 float32, against one read of
    # the same arrays): 1.3-1.5x with four rows, 1.6-2.0x with two, 2.2-2.5x with one; ~8x with numba's default
    # error model; tiling the features did not help.
    @numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
    def add_row(x, y, eps, ratio, active, image, text, low):  # pragma: no cover - compiled
        for j in range(len(ratio)):
            s = x[j] + y[j]
            image[j] += x[j]
            text[j] += y[j]
            active[j] += 1.0 if s > eps else 0.0
            ratio[j] += x[j] / s if s > eps else 0.0
            low[j] = min(low[j], min(x[j], y[j]))

    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def kernel(a_i, a_t, eps, out):  # pragma: no cover - compiled; its results are tested against the formula
        n, k = a_i.shape
        ratio, active = np.zeros(k, a_i.dtype), np.zeros(k, a_i.dtype)  # sums of <= KERNEL_BLOCK rows, input dtype
        image, text = np.zeros(k, a_i.dtype), np.zeros(k, a_i.dtype)
        low = np.full(k, np.inf, a_i.dtype)
        for start in range(0, n, KERNEL_BLOCK):
            stop = min(n, start + KERNEL_BLOCK)
            ratio[:] = 0.0
            active[:] = 0.0
            image[:] = 0.0
            text[:] = 0.0
            r = start
            while r + 4 <= stop:  # no value carried from one feature to the next: vectorised
                i0, t0, i1, t1 = a_i[r], a_t[r], a_i[r + 1], a_t[r + 1]
                i2, t2, i3, t3 = a_i[r + 2], a_t[r + 2], a_i[r + 3], a_t[r + 3]
                for j in range(k):
                    x0, y0, x1, y1, x2, y2, x3, y3 = i0[j], t0[j], i1[j], t1[j], i2[j], t2[j], i3[j], t3[j]
                    s0, s1, s2, s3 = x0 + y0, x1 + y1, x2 + y2, x3 + y3
                    image[j] += (x0 + x1) + (x2 + x3)
                    text[j] += (y0 + y1) + (y2 + y3)
                    active[j] += (((1.0 if s0 > eps else 0.0) + (1.0 if s1 > eps else 0.0))
                                  + ((1.0 if s2 > eps else 0.0) + (1.0 if s3 > eps else 0.0)))
                    ratio[j] += (((x0 / s0 if s0 > eps else 0.0) + (x1 / s1 if s1 > eps else 0.0))
                                 + ((x2 / s2 if s2 > eps else 0.0) + (x3 / s3 if s3 > eps else 0.0)))
                    low[j] = min(low[j], min(min(min(x0, y0), min(x1, y1)), min(min(x2, y2), min(x3, y3))))
                r += 4
            for rest in range(r, stop):
                add_row(a_i[rest], a_t[rest], eps, ratio, active, image, text, low)
            for j in range(k):
                out[0, j] += ratio[j]
                out[1, j] += active[j]
                out[2, j] += image[j]
                out[3, j] += text[j]
        return low.min()

    return kernel


def _fused_sums(a_image: torch.Tensor, a_text: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`MDSAccumulator._chunk_sums` in one fused pass on the CPU (see :func:`_fused_kernel`)."""
    out = np.zeros((4, a_image.shape[1]), dtype=np.float64)
    a_i, a_t = a_image.contiguous().numpy(), a_text.contiguous().numpy()
    low = _fused_kernel()(a_i, a_t, a_i.dtype.type(eps), out)
    return torch.from_numpy(out), torch.tensor(low, dtype=a_image.dtype)


class Encoder(Protocol):
    """Anything that maps embeddings ``(n, d)`` of a modality to non-negative activations ``(n, K)``."""

    def encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Non-negative activations ``(n, K)`` of embeddings ``z`` ``(n, d)`` of ``modality``."""


@dataclasses.dataclass(frozen=True, eq=False)
class MDSResult:
    """Per-feature Modality Dominance Scores.

    Attributes
    ----------
    scores : (K,) float64 array
        MDS in [0, 1]; NaN for dead features.
    alive : (K,) bool array
        Whether the feature fired (``a_I + a_T > eps``) on at least one pair.
    n_dead : int
    n_active_pairs : (K,) int64 array
        ``|P_k|``: pairs where the feature fired on either side.
    n_pairs : int
        Pairs seen.
    form : {"paired", "aggregate"}
    eps : float
    activation_mass : (K,) float64 array or None
        ``sum_i a_I[i, k] + a_T[i, k]``: the feature's total activation over the pairs (both sides); None when the
        result was built without it (:meth:`mass` then says so).
    """

    scores: np.ndarray
    alive: np.ndarray
    n_dead: int
    n_active_pairs: np.ndarray
    n_pairs: int
    form: str
    eps: float
    activation_mass: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """``K``, the number of features scored (dead ones included)."""
        return len(self.scores)

    @property
    def n_alive(self) -> int:
        """The number of features that fired on at least one pair."""
        return self.n_features - self.n_dead

    def support(self) -> np.ndarray:
        """The support ``(K,)`` int64 of every feature: the pairs on which it fires, on the image or the text side
        (``|P_k|``, a copy of :attr:`n_active_pairs`; 0 for a dead feature).
        """
        return np.asarray(self.n_active_pairs, dtype=np.int64).copy()

    def supported(self, min_support: int = 0) -> np.ndarray:
        """``(K,)`` bool: the alive features whose support is at least ``min_support`` pairs (0: every alive one).

        Raises
        ------
        InputError
            for a ``min_support`` that is not a non-negative integer.
        """
        return self.alive & (self.support() >= check_min_support(min_support))

    def mass(self) -> np.ndarray:
        """The activation mass ``(K,)`` float64 of every feature (``sum_i a_I + a_T``, see :attr:`activation_mass`).

        Raises
        ------
        InputError
            when this result carries no mass (built by hand without ``activation_mass``).
        """
        if self.activation_mass is None:
            raise InputError("this MDSResult carries no activation mass; compute it with modality_dominance or "
                             "MDSAccumulator.result, which record it, or pass activation_mass=(K,) sums")
        return np.asarray(self.activation_mass, dtype=np.float64).copy()

    def alive_scores(self) -> np.ndarray:
        """MDS ``(n_alive,)`` of the alive features."""
        return self.scores[self.alive]

    def to_frame(self) -> pd.DataFrame:
        """One row per feature: ``feature``, ``mds``, ``alive``, ``n_active_pairs``."""
        return pd.DataFrame({"feature": np.arange(self.n_features), "mds": self.scores, "alive": self.alive,
                             "n_active_pairs": self.n_active_pairs})

    def summary(self, low: float = 0.1, high: float = 0.9) -> dict[str, float]:
        """Counts and moments over alive features: ``n_features``, ``n_alive``, ``n_dead``, ``mean``, ``std``,
        the shares with MDS below ``low`` (``share_low``), above ``high`` (``share_high``), either
        (``share_extreme``) and above 0.5 (``share_image_side``); NaN where no feature is alive.
        """
        s = self.alive_scores()

        def share(mask: np.ndarray) -> float:
            return float(mask.mean()) if len(s) else np.nan
        return dict(form=self.form, n_features=self.n_features, n_alive=self.n_alive, n_dead=self.n_dead,
                    mean=float(s.mean()) if len(s) else np.nan, std=float(s.std()) if len(s) else np.nan,
                    share_low=share(s < low), share_high=share(s > high), share_extreme=share((s < low) | (s > high)),
                    share_image_side=share(s > 0.5))


class MDSAccumulator:
    """Streaming sums for both MDS forms over chunks of pairs.

    Parameters
    ----------
    n_features : int
        ``K``.
    eps : float
        A pair counts for feature ``k`` when ``a_I + a_T > eps`` (default 0: any activation), compared in the
        dtype of the activations.
    block_rows : int, optional
        ``None`` (default): on the CPU, each chunk is read once by a fused, compiled loop (numba,
        :func:`_fused_kernel`); elsewhere (a GPU) in blocks of ``TILE_BYTES // (K * itemsize)`` pairs within
        ``[8, 4096]`` (:func:`_tile_rows`). An integer (at most ``2^24``) always uses blocks of that many pairs, each
        summed with torch operations while it stays in the CPU cache. Memory is two
        ``(block_rows, K)`` buffers, ``(GROUP, 4, K)`` block sums and ``O(K)`` float64 sums. The sums are the
        same for any block size up to float rounding, and bit for bit the same for the same chunks (values and
        memory layout) and ``block_rows``, on one machine and thread count.

    Examples
    --------
    >>> acc = MDSAccumulator(4)
    >>> for a_image, a_text in chunks:   # each (b, 4), non-negative
    ...     acc.update(a_image, a_text)
    >>> acc.result("paired").scores
    """

    def __init__(self, n_features: int, eps: float = 0.0, block_rows: int | None = None) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise InputError(f"n_features must be a positive integer, got {n_features!r}")
        _check_eps(eps)
        self.n_features, self.eps = int(n_features), float(eps)
        self.ratio_sum = torch.zeros(self.n_features, dtype=torch.float64)
        self.n_active = torch.zeros(self.n_features, dtype=torch.int64)
        self.image_sum = torch.zeros(self.n_features, dtype=torch.float64)
        self.text_sum = torch.zeros(self.n_features, dtype=torch.float64)
        self.n_pairs = 0
        if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer))
                                       or not 1 <= block_rows <= 2 ** 24):
            # counts are summed in the input float dtype within a block: exact up to 2^24
            raise InputError(f"block_rows must lie in [1, 2^24] (or be None: chosen from K), got {block_rows}")
        self.block_rows = None if block_rows is None else int(block_rows)
        self._work: _Work | None = None

    def update(self, a_image: ArrayLike, a_text: ArrayLike, *, names: tuple[str, str] = ("a_image", "a_text")
               ) -> None:
        """Add a chunk of pairs: activations ``(b, K)`` of the images and of their captions (same order).

        ``names`` are how the two arguments are called in error messages (e.g. ``"a_image (chunk 3)"``): both
        must be finite, non-negative and of the same shape ``(b, K)``
        (:class:`~mmlib.core.errors.NonFiniteError` / :class:`~mmlib.core.errors.InputError` otherwise); a chunk
        that fails leaves the sums as they were.

        The chunk is read once, in blocks of ``block_rows`` pairs: each block is summed and checked while it is in
        the cache (see :meth:`_chunk_sums`). Sums within a block are taken in the input dtype (float32 or
        float64), across blocks in float64.
        """
        name_i, name_t = names
        a_image, a_text = _as_float(a_image, name_i), _as_float(a_text, name_t)
        if a_image.shape != a_text.shape:
            raise InputError(f"{name_i} {tuple(a_image.shape)} and {name_t} {tuple(a_text.shape)} differ in shape; "
                             "pass the activations of the same pairs, in the same order")
        if a_image.ndim != 2 or a_image.shape[1] != self.n_features:
            raise InputError(f"expected {name_i} and {name_t} of shape (b, {self.n_features}), got "
                             f"{tuple(a_image.shape)}; pass one row per pair and one column per feature")
        if a_image.shape[0] == 0:
            return
        dtype = torch.promote_types(a_image.dtype, a_text.dtype)
        a_image, a_text = a_image.detach().to(dtype), a_text.detach().to(dtype)
        sums, low = self._chunk_sums(a_image, a_text)
        # NaN or an infinity makes a column sum NaN or inf, a negative entry the minimum < 0; a column whose image
        # and text sums stay below half the dtype's largest number had no sum (a_I + a_T or a block sum) overflow
        if not (bool(low >= 0) and bool((sums[2] + sums[3] < torch.finfo(dtype).max / 2).all())):
            hint = "take |z| or ReLU(z) of raw dimensions first"
            check_nonnegative(a_image, name_i, hint=hint)        # finds and names the bad entry, if any
            check_nonnegative(a_text, name_t, hint=hint)
            if dtype != torch.float64:  # all finite and >= 0, but huge: a sum may have overflowed; redo in float64
                sums, _ = self._chunk_sums(a_image.double(), a_text.double())
        self.ratio_sum += sums[0]
        self.n_active += torch.round(sums[1]).to(torch.int64)
        self.image_sum += sums[2]
        self.text_sum += sums[3]
        self.n_pairs += a_image.shape[0]

    def _chunk_sums(self, a_image: torch.Tensor, a_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature sums ``(4, K)`` float64 of one chunk ``(b, K)`` (ratios, active pairs, image, text) and the
        smallest entry of either input (0-d; NaN if one is NaN).

        One pass over the chunk in blocks of ``rows`` pairs. The minimum of each input reads the block from
        memory; every later operation finds it in the cache: the column sums of the inputs (matrix-vector products
        with ones), ``t = a_I + a_T``, ``active = t > eps`` (``sign(t)`` when ``eps`` is 0), ``t`` replaced by
        ``inf`` where not active (:func:`torch.threshold_`), so that ``a_I / t`` is the ratio on active pairs and
        exactly 0 on the others (no ``0 / 0``; subnormal activations count like any other), and the column sums of
        ``active`` and of the ratios. The block sums (input dtype) are collected in a ``(GROUP, 4, K)`` buffer and
        added in float64 every ``GROUP`` blocks. Negative, NaN and infinite entries are not looked for here: they
        show in the minimum or in the column sums of the inputs, which the caller checks.
        """
        if a_image.device.type == "cpu" and self.block_rows is None:
            return _fused_sums(a_image, a_text, self.eps)  # one fused pass (numba); the blocks below elsewhere
        work = self._buffers(a_image.dtype)
        rows, eps = work.rows, self.eps
        total = torch.zeros(4, self.n_features, dtype=torch.float64)
        low = torch.zeros((), dtype=a_image.dtype)
        j = 0
        for a_i, a_t in zip(a_image.split(rows), a_text.split(rows)):
            b = a_i.shape[0]
            if b == rows:
                t, t_cols, active, active_cols, ones = work.full
            else:
                t, active, ones = work.total[:b], work.active[:b], work.ones[:b]
                t_cols, active_cols = t.T, active.T
            ratio_sum, active_sum, image_sum, text_sum, image_low, text_low = work.slots[j]
            torch.amin(a_i, out=image_low)                    # reads the block from memory
            torch.amin(a_t, out=text_low)
            torch.mv(a_i.T, ones, out=image_sum)              # from here on it is in the cache
            torch.mv(a_t.T, ones, out=text_sum)
            torch.add(a_i, a_t, out=t)
            if eps == 0:
                torch.sign(t, out=active)                     # 1.0 where the pair counts, else 0.0
            else:
                torch.gt(t, eps, out=active)
            torch.mv(active_cols, ones, out=active_sum)
            torch.threshold_(t, eps, _INF)                    # t where t > eps, else inf ...
            torch.div(a_i, t, out=t)                          # ... so the ratio is exactly 0 there
            torch.mv(t_cols, ones, out=ratio_sum)
            j += 1
            if j == GROUP:
                total += work.sums.sum(0, dtype=torch.float64)
                low = torch.minimum(low, work.low.amin())
                j = 0
        if j:
            total += work.sums[:j].sum(0, dtype=torch.float64)
            low = torch.minimum(low, work.low[:j].amin())
        return total, low

    def _buffers(self, dtype: torch.dtype) -> _Work:
        """Reused work buffers for ``dtype`` (reallocated only on a new dtype)."""
        if self._work is None or self._work.total.dtype != dtype:
            itemsize = torch.empty((), dtype=dtype).element_size()
            rows = self.block_rows if self.block_rows is not None else _tile_rows(self.n_features, itemsize)
            self._work = _Work.allocate(rows, self.n_features, dtype)
        return self._work

    def merge(self, other: MDSAccumulator) -> MDSAccumulator:
        """Add another accumulator's sums (e.g. from another shard) into this one; returns ``self``."""
        if not isinstance(other, MDSAccumulator):
            raise InputError(f"other must be an MDSAccumulator, got {type(other).__name__}")
        if other.n_features != self.n_features or other.eps != self.eps:
            raise InputError(f"can only merge accumulators with the same n_features and eps (got n_features "
                             f"{other.n_features} vs {self.n_features}, eps {other.eps} vs {self.eps})")
        self.ratio_sum += other.ratio_sum
        self.n_active += other.n_active
        self.image_sum += other.image_sum
        self.text_sum += other.text_sum
        self.n_pairs += other.n_pairs
        return self

    def result(self, form: Form = "paired") -> MDSResult:
        """The scores of the pairs seen so far, in ``form`` (``"paired"`` or ``"aggregate"``)."""
        _check_form(form)
        if self.n_pairs == 0:
            raise InputError("no pairs seen: cannot score any feature")
        alive = self.n_active > 0
        if form == "paired":
            scores = self.ratio_sum / self.n_active.clamp(min=1)
        else:
            scores = self.image_sum / (self.image_sum + self.text_sum).clamp(min=torch.finfo(torch.float64).tiny)
        scores = torch.where(alive, scores.clamp(0.0, 1.0), torch.nan)
        return MDSResult(scores=scores.numpy(), alive=alive.numpy(), n_dead=int((~alive).sum()),
                         n_active_pairs=self.n_active.numpy().copy(), n_pairs=self.n_pairs, form=form,
                         eps=self.eps, activation_mass=(self.image_sum + self.text_sum).numpy().copy())


@dataclasses.dataclass(frozen=True, eq=False)
class _Work:
    """Reused buffers of :meth:`MDSAccumulator._chunk_sums`, all in one dtype: two tiles ``(rows, K)`` (``total``,
    ``active``), ``ones`` ``(rows,)``, block sums ``sums`` ``(GROUP, 4, K)`` and block minima ``low`` ``(GROUP, 2)``;
    ``full`` and ``slots`` are views of them made once (per-call costs matter for small blocks).
    """

    rows: int
    total: torch.Tensor
    active: torch.Tensor
    ones: torch.Tensor
    sums: torch.Tensor
    low: torch.Tensor
    full: tuple[torch.Tensor, ...]
    slots: tuple[tuple[torch.Tensor, ...], ...]

    @classmethod
    def allocate(cls, rows: int, n_features: int, dtype: torch.dtype) -> _Work:
        """Buffers for blocks of ``rows`` pairs of ``n_features`` features."""
        total, active = torch.empty(rows, n_features, dtype=dtype), torch.empty(rows, n_features, dtype=dtype)
        sums, low = torch.empty(GROUP, 4, n_features, dtype=dtype), torch.empty(GROUP, 2, dtype=dtype)
        ones = torch.ones(rows, dtype=dtype)
        slots = tuple((*sums[j].unbind(0), *low[j].unbind(0)) for j in range(GROUP))
        return cls(rows=rows, total=total, active=active, ones=ones, sums=sums, low=low,
                   full=(total, total.T, active, active.T, ones), slots=slots)


def modality_dominance(a_image: ArrayLike | Iterable[tuple[ArrayLike, ArrayLike]], a_text: ArrayLike | None = None,
                       *, form: Form = "paired", eps: float = 0.0, chunk_size: int = 4096,
                       progress: bool = False) -> MDSResult:
    """Per-feature MDS of paired activations, streamed in chunks.

    Parameters
    ----------
    a_image : (n, K) tensor or array, or an iterable of ``(a_image_chunk (b, K), a_text_chunk (b, K))``
        Non-negative activations of the images (then ``a_text`` is required), or the chunks themselves
        (then ``a_text`` must be None), e.g. from :func:`paired_activations`.
    a_text : (n, K) tensor or array, optional
        Activations of the paired captions, same order as ``a_image``.
    form : {"paired", "aggregate"}
    eps : float
        Activity threshold on ``a_I + a_T``.
    chunk_size : int
        Pairs per chunk when tensors are given (arrays may be memory-mapped: only a chunk is materialised).
    progress : bool
        Show a tqdm bar over chunks.

    Returns
    -------
    MDSResult

    Raises
    ------
    NonFiniteError
        for NaN or an infinity in either input (naming the argument, or the chunk of the iterable form).
    InputError
        for negative activations, mismatched shapes, a malformed chunk, or no pairs at all.
    """
    _check_form(form)
    _check_eps(eps)
    tensors = a_text is not None or isinstance(a_image, (torch.Tensor, np.ndarray))
    chunks = _chunks(a_image, a_text, chunk_size)
    acc: MDSAccumulator | None = None
    for i, chunk in enumerate(tqdm(chunks, desc="MDS", unit="chunk", disable=not progress)):
        if tensors:
            names = ("a_image", "a_text")
        else:
            if not (isinstance(chunk, (tuple, list)) and len(chunk) == 2):
                raise InputError(f"a_image: chunk {i} of the iterable is a {type(chunk).__name__}, not a pair "
                                 "(a_image_chunk (b, K), a_text_chunk (b, K)); pass two tensors, or an iterable "
                                 "of such pairs")
            names = (f"a_image (chunk {i}, image side)", f"a_image (chunk {i}, text side)")
        a_i, a_t = chunk
        if acc is None:
            first = _as_float(a_i, names[0])
            if first.ndim != 2:
                raise InputError(f"expected {names[0]} of shape (n, K), got {tuple(first.shape)}; pass one row "
                                 "per pair and one column per feature")
            acc = MDSAccumulator(first.shape[-1], eps)
        acc.update(a_i, a_t, names=names)
    if acc is None or acc.n_pairs == 0:
        raise InputError("no pairs given: cannot compute MDS; pass at least one pair of activations")
    return acc.result(form)


@torch.inference_mode()
def paired_activations(feature_map: Encoder, z_image: ArrayLike, z_text: ArrayLike,
                       chunk_size: int = 4096) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(feature_map.encode(z_image chunk, "image"), feature_map.encode(z_text chunk, "text"))``.

    Parameters
    ----------
    z_image, z_text : (n, d)
        Paired embeddings (may be memory-mapped arrays: one chunk at a time is encoded).
    """
    if len(z_image) != len(z_text):
        raise InputError(f"{len(z_image)} image embeddings (z_image) but {len(z_text)} text embeddings (z_text); "
                         "pass paired embeddings")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    for start in range(0, len(z_image), chunk_size):
        stop = min(len(z_image), start + chunk_size)
        zi = check_finite(_as_float(z_image[start:stop], "z_image"), f"z_image (rows {start}..{stop - 1})")
        zt = check_finite(_as_float(z_text[start:stop], "z_text"), f"z_text (rows {start}..{stop - 1})")
        yield feature_map.encode(zi, "image"), feature_map.encode(zt, "text")


# ----------------------------------------------------------------------------------------------- helpers
def _as_float(x: ArrayLike, name: str = "activations") -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # e.g. a read-only memmap chunk: copy the chunk
        x = np.array(x)
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{name} is not a numeric tensor or array ({type(x).__name__}: {err}); pass activations "
                         "as a float tensor or array") from None
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"{name} has dtype {x.dtype}; pass real-valued activations")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise InputError(f"unknown MDS form {form!r}; choose one of {FORMS}")


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or \
            not (np.isfinite(eps) and eps >= 0):
        raise InputError(f"eps must be a finite non-negative number, got {eps!r}")


def check_min_support(min_support: int) -> int:
    """``min_support`` as an int, checked: a non-negative integer number of pairs (InputError otherwise)."""
    if isinstance(min_support, bool) or not isinstance(min_support, (int, np.integer)) or min_support < 0:
        raise InputError(f"min_support must be a non-negative integer number of pairs, got {min_support!r}; "
                         "pass 0 to keep every alive feature")
    return int(min_support)


def check_scores(scores: MDSResult | ArrayLike, name: str = "mds") -> np.ndarray:
    """MDS scores ``(K,)`` as a float array, checked: each NaN (a dead feature) or a number in ``[0, 1]``.

    Raises
    ------
    NonFiniteError
        for an infinity (NaN is the documented mark of a dead feature and passes).
    InputError
        for another shape, a non-numeric array, or a score outside ``[0, 1]`` (naming ``name`` and the index).
    """
    raw = scores.scores if isinstance(scores, MDSResult) else scores
    try:
        arr = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be MDS scores (K,) as numbers, got {type(raw).__name__} ({err})") from None
    if arr.ndim != 1:
        raise InputError(f"expected {name} of shape (K,), got {arr.shape}; pass one MDS score per feature")
    check_finite(np.where(np.isnan(arr), 0.0, arr), name, hint="MDS scores lie in [0, 1] (NaN marks a dead feature)")
    bad = ~np.isnan(arr) & ((arr < 0) | (arr > 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name} holds {int(bad.sum())} score(s) outside [0, 1] (first: {arr[i]} at index {i}); "
                         "pass MDS scores (NaN for dead features)")
    return arr


def _chunks(a_image, a_text, chunk_size: int) -> Iterable[tuple[ArrayLike, ArrayLike]]:
    if a_text is not None and isinstance(a_image, (list, tuple)):
        a_image = np.asarray(a_image)
    if isinstance(a_image, (torch.Tensor, np.ndarray)):
        if a_text is None:
            raise InputError("a_text is required when a_image is a tensor or array")
        if isinstance(a_text, (list, tuple)):
            a_text = np.asarray(a_text)
        if not isinstance(a_text, (torch.Tensor, np.ndarray)):
            raise InputError(f"a_text must be a tensor or array (n, K), got {type(a_text).__name__}")
        if a_image.ndim != 2:
            raise InputError(f"expected a_image of shape (n, K), got {tuple(a_image.shape)}; pass one row per pair "
                             "and one column per feature")
        if a_text.ndim == 0 or len(a_image) != len(a_text):
            n_text = len(a_text) if a_text.ndim else 0
            raise InputError(f"{len(a_image)} image activations but {n_text} text activations (a_image "
                             f"{tuple(a_image.shape)}, a_text {tuple(a_text.shape)}); pass the activations of the "
                             "same pairs, in the same order")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return ((a_image[s:s + chunk_size], a_text[s:s + chunk_size]) for s in range(0, len(a_image), chunk_size))
    if a_text is not None:
        raise InputError("give either two (n, K) tensors or one iterable of (a_image, a_text) chunks")
    if not isinstance(a_image, Iterable):
        raise InputError(f"a_image must be a tensor or array (n, K) or an iterable of (a_image, a_text) chunks, got "
                         f"{type(a_image).__name__}")
    return a_image
