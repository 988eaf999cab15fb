"""progan_fast: paper-exact Progressive Growing of GANs with fused Triton / CUDA kernels."""
from ._version import __version__
from . import ops

__all__ = ["__version__", "ops"]
