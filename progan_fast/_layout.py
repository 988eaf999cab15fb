"""Memory-format, accumulation-dtype and autocast-dtype helpers shared by the reference ops and both kernel backends
(torch only, so the reference and the CUDA backend need not import Triton)."""
from __future__ import annotations

import torch


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last if `t` is stored NHWC (and not also plain-contiguous), else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_4d(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new 4-D tensor of `shape` stored in `like`'s memory format (used for resampled outputs)."""
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device,
                       memory_format=memory_format(like))


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on `device_type` when it is on there, else None (devices autocast
    does not know, such as meta, count as off: asking torch.is_autocast_enabled about them raises).
    Under torch.compile the availability check is skipped: Dynamo in torch 2.11 cannot trace it, and
    compiled code runs on devices autocast knows."""
    available = torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type)
    if available and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in: fp64 for fp64 tensors (checks), fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
