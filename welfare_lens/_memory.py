"""Out-of-memory detection and back-off shared by capture and training."""

from __future__ import annotations

import gc
import warnings

import torch

__all__ = ["free_memory", "is_out_of_memory", "warn_back_off"]

_CPU_MESSAGES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA, MPS or a CPU allocator that raised).

    A CPU process that exceeds the machine's memory is usually killed by the kernel instead;
    nothing can catch that, which is why CPU defaults keep batches small.
    """
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _CPU_MESSAGES)


def free_memory() -> None:
    """Release cached allocator blocks after a failed allocation."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warn_back_off(what: str, old: int, new: int) -> None:
    """Tell the user a batch size was lowered (once per back-off)."""
    warnings.warn(
        f"Out of memory with {what} {old}; retrying with {new}. Pass {what}={new} (or lower) "
        "to skip the failed attempt next time.",
        RuntimeWarning,
        stacklevel=3,
    )
