"""Where and with how many threads torch runs: device resolution and a scoped torch thread count.

Training results are bit-identical for a fixed torch thread count on CPU, but 1 and 2 threads diverge after a
few dozen steps, so every trainer takes ``threads`` explicitly and records the effective count
(:func:`effective_threads`) in its artifact key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; anything else -> ``torch.device(device)``."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: leave torch's setting), then restore it.

    One thread is often faster for these small matrices, and much faster on a machine whose cores are
    shared with other processes.
    """
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)



def effective_threads(threads: int | None) -> int:
    """The torch CPU thread count a block run under :func:`torch_threads` (``threads``) uses: ``threads``, or
    torch's current setting for ``None``. Trainers put it in their artifact keys.
    """
    if threads is None:
        return torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}")
    return int(threads)
