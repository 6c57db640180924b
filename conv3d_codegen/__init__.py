"""conv3d-codegen: CUDA kernels generated for each torch.nn.Conv3d configuration.

    from conv3d_codegen import Conv3d        # drop-in for torch.nn.Conv3d
    from conv3d_codegen import conv3d        # drop-in for torch.nn.functional.conv3d

Data flow, one module each: spec (ConvSpec) -> render (CUDA source) -> build + cache
(shared library) -> kernel (ctypes launch) -> dispatch (which kernel, and why) -> ops / nn.
"""
__version__ = "0.1.0"

from .build import KernelBuildError
from .dispatch import FallbackError, strict
from .nn import Conv3d
from .ops import conv3d
from .spec import ConvSpec

__all__ = ["Conv3d", "ConvSpec", "FallbackError", "KernelBuildError", "conv3d", "strict"]
