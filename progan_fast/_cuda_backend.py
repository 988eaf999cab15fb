"""The compiled CUDA backend of progan_fast.ops ("cuda").

Importing this module loads `progan_fast._C` (`_cuda_build.load`: validated, or JIT-built, or an
ImportError that ops._backend records, so `import progan_fast` never fails because of it), defines
`torch.ops.progan_fast_cuda.*` with the library shared by every backend (same schemas, autograd to
second order and fake functions as the Triton ops; the kernel set is `_cuda_kernels`) and registers
the public wrappers as the "cuda" implementation of every public op.
"""
from __future__ import annotations

from . import _cuda_build, _cuda_kernels
from .ops import register

_C = _cuda_build.load()  # raises CudaExtensionUnavailable (an ImportError) when unusable
_cuda_kernels.bind(_C)

from .triton.library import define_ops, public_ops  # noqa: E402  (torch-only module; no Triton kernels run)

NAMESPACE = "progan_fast_cuda"
ops = define_ops(NAMESPACE, _cuda_kernels)
build_info = dict(_C.build_info())
PUBLIC = public_ops(ops)  # eq_conv2d: cuDNN conv, then one fused epilogue kernel (as the Triton backend)
globals().update(PUBLIC)
for _name, _fn in PUBLIC.items():
    register("cuda", _name, _fn)

__all__ = ["ops", "build_info", "NAMESPACE", "PUBLIC", *PUBLIC]
