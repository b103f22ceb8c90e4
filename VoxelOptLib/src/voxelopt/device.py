"""Device selection: ``"auto"`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises :class:`ConfigError` when CUDA is requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); use 'cpu' or 'auto'")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def describe_device(name: str = "auto") -> str:
    """A human-readable description, e.g. ``"CPU (2 threads)"`` or ``"CUDA 0: NVIDIA A100 (40.0 GB)"``."""
    device = resolve_device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"CUDA {index}: {props.name} ({props.total_memory / 2**30:.1f} GB)"
    return f"CPU ({torch.get_num_threads()} threads)"


def make_clock(device: torch.device):
    """A wall-clock timer that waits for queued CUDA work first, so stage times are honest."""
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.perf_counter


@contextlib.contextmanager
def one_core_left(enabled: bool = True) -> Iterator[None]:
    """torch's CPU thread count lowered by one (to at least 1) inside the block, restored after:
    room for work that runs meanwhile on another thread (the affine stage). No-op when not
    ``enabled``."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
