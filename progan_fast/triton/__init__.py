"""Triton backend of progan_fast.ops.

Importing this module defines the operators `torch.ops.progan_fast.*` (schemas, autograd to second
order and fake functions in `library.py`, Triton kernels in `kernels.py` launched by
`launchers.py`) and registers them as the "triton" implementation of every public op. Kernels run
on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

from ..ops import register
from . import launchers
from .library import define_ops, public_ops

ops = define_ops("progan_fast", launchers)
PUBLIC = public_ops(ops)
globals().update(PUBLIC)  # progan_fast.triton.bias_act(...) etc.
for _name, _fn in PUBLIC.items():
    register("triton", _name, _fn)

# Two Triton paths for a whole conv layer: cuDNN conv + one fused Triton epilogue ("epilogue", the
# "triton" eq_conv2d by default), or the implicit-GEMM kernel with resampling and epilogue fused in
# (conv_op.py). The latter is also the "igemm" backend, so impl="auto" can pick it per conv-layer kind
# where the layer bench measured it faster; PROGAN_FAST_TRITON_CONV=igemm makes it "triton"'s too.
# A failure there costs only the igemm backend (ops._backend reports IGEMM_ERROR), never the ops.
IGEMM_ERROR: str | None = None
try:
    from .conv_op import eq_conv2d_triton as _igemm
except Exception as exc:  # noqa: BLE001  (a Triton version whose autotune/custom_op API differs, ...)
    IGEMM_ERROR = f"{type(exc).__name__}: {exc}"
else:
    register("igemm", "eq_conv2d", _igemm)
    if os.environ.get("PROGAN_FAST_TRITON_CONV", "epilogue") == "igemm":
        register("triton", "eq_conv2d", _igemm)

__all__ = ["ops", "PUBLIC", "launchers", *PUBLIC]
