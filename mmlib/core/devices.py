"""Where and with how many threads torch runs: device resolution and a scoped torch thread count.

Training results are bit-identical for a fixed torch thread count on CPU, but 1 and 2 threads diverge after a
few dozen steps, so every trainer takes ``threads`` explicitly and records the effective count
(:func:`effective_threads`) in its artifact key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mmlib.core.errors import ConfigError

#: The device types mmlib runs on.
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")
_ADVICE = "use 'auto' (the best device available) or 'cpu'"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def parse_device(device: object, name: str = "device") -> str:
    """``device`` as a string if it is ``"auto"`` or names a cpu, cuda or mps device (syntax only: whether the
    device exists here is checked by :func:`resolve_device`).

    Raises
    ------
    ConfigError
        naming ``name`` (e.g. ``"EmbedConfig.device"``), for a non-string or a string torch cannot parse.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ConfigError(f"{name} must be a string ('auto', 'cpu', 'cuda', 'cuda:1' or 'mps'), got {device!r} "
                          f"({type(device).__name__}).")
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"{name} must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps', "
                          f"got {device!r} ({err}).") from None
    if parsed.type not in DEVICE_TYPES:
        raise ConfigError(f"{name} must be 'auto' or a device of type {', '.join(DEVICE_TYPES)}, got {device!r}.")
    return device


def resolve_device(device: str | torch.device = "auto", name: str = "device") -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; anything else -> that device, after checking that it
    exists on this machine.

    Raises
    ------
    ConfigError
        naming ``name``, for a malformed device or one this machine does not have (CUDA without a GPU, an index
        beyond the GPU count, MPS off a Mac).
    """
    device = parse_device(device, name)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{name} is {device!r} but torch sees no CUDA device here; {_ADVICE}.")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{name} is {device!r} but torch sees only {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1}); {_ADVICE}.")
    if dev.type == "mps" and not _mps_available():
        raise ConfigError(f"{name} is {device!r} but MPS is not available here; {_ADVICE}.")
    return dev


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
